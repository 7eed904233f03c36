// spec/support/fork_shim.mjs: start a generated plugin package the way Paperclip does.
// Imports dist/manifest.js, forks dist/worker.js with an IPC channel, speaks NDJSON to it,
// and prints one JSON report. Usage: node fork_shim.mjs PACKAGE_DIR MODE [SHIM]
// MODE: "shutdown" (initialize, health, execute, shutdown) or "sigterm" or "kill-shim".
// SHIM, when given, goes to the shim as PROVIDER_HOST_SHIM (test-only: "addon" or "spawn").
// After initialize the report's `tree` describes the forked process: its exe, comm, VmRSS
// and its child processes.
import { fork } from "node:child_process";
import { readdirSync, readFileSync, readlinkSync } from "node:fs";
import path from "node:path";
import readline from "node:readline";
import { pathToFileURL } from "node:url";

const [pkgDir, mode = "shutdown", shim] = process.argv.slice(2);
const report = { mode, shim: shim ?? null, nodeHasExecve: typeof process.execve === "function" };
const deadline = setTimeout(() => {
  report.error = "deadline exceeded";
  finish(1);
}, 20000);
let child;

function finish(code) {
  clearTimeout(deadline);
  if (child && child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
  process.stdout.write(JSON.stringify(report) + "\n");
  process.exit(code);
}

const manifest = (await import(pathToFileURL(path.join(pkgDir, "dist/manifest.js")).href)).default;
report.manifestId = manifest.id;
report.driverKey = manifest.environmentDrivers[0].driverKey;
report.worker = manifest.entrypoints.worker;

child = fork(path.resolve(pkgDir, manifest.entrypoints.worker), [], {
  stdio: ["pipe", "pipe", "pipe", "ipc"],
  env: { PATH: process.env.PATH, ...(shim ? { PROVIDER_HOST_SHIM: shim } : {}) },
});
const pending = new Map();
readline.createInterface({ input: child.stdout }).on("line", (line) => {
  const msg = JSON.parse(line);
  if (msg.id !== undefined && pending.has(msg.id)) {
    pending.get(msg.id)(msg);
    pending.delete(msg.id);
  }
});
let stderr = "";
child.stderr.on("data", (d) => (stderr += d));
const exited = new Promise((resolve) =>
  child.on("exit", (code, signal) => resolve({ code, signal })),
);
// /proc facts about pid: exe, comm, VmRSS and its children (each with exe and comm).
function processInfo(pid) {
  const read = (f) => {
    try {
      return f === "exe" ? readlinkSync(`/proc/${pid}/exe`) : readFileSync(`/proc/${pid}/${f}`, "utf8");
    } catch {
      return null;
    }
  };
  const rss = /^VmRSS:\s+(\d+) kB/m.exec(read("status") ?? "");
  let tasks = [];
  try {
    tasks = readdirSync(`/proc/${pid}/task`);
  } catch {
    // gone
  }
  const kids = tasks.flatMap((tid) => (read(`task/${tid}/children`) ?? "").split(" ").filter(Boolean));
  return {
    pid,
    exe: read("exe"),
    comm: read("comm")?.trim() ?? null,
    rssKb: rss ? Number(rss[1]) : null,
    children: kids.map((c) => processInfo(Number(c))),
  };
}

let nextId = 1;
function call(method, params) {
  const id = nextId++;
  child.stdin.write(JSON.stringify({ jsonrpc: "2.0", id, method, params }) + "\n");
  return new Promise((resolve) => pending.set(id, resolve));
}

const init = await call("initialize", {
  manifest,
  config: {},
  instanceInfo: { instanceId: "default", hostVersion: "0.0.0" },
  apiVersion: 1,
  databaseNamespace: null,
});
report.initialize = init.result;
report.tree = processInfo(child.pid);
report.health = (await call("health", {})).result;
const driverKey = report.driverKey;
const lease = (await call("environmentAcquireLease", { driverKey, companyId: "c", environmentId: "e", config: {}, runId: "r" })).result;
const exec = await call("environmentExecute", {
  driverKey,
  companyId: "c",
  environmentId: "e",
  config: {},
  lease,
  command: "sh",
  args: ["-c", "echo from-package"],
});
report.stdout = exec.result && exec.result.stdout;
await call("environmentReleaseLease", { driverKey, companyId: "c", environmentId: "e", config: {}, providerLeaseId: lease.providerLeaseId });

const t0 = Date.now();
if (mode === "shutdown") {
  report.shutdown = (await call("shutdown", {})).result;
} else if (mode === "sigterm") {
  child.kill("SIGTERM");
} else if (mode === "kill-shim") {
  // Find the native worker (the shim's child) before killing the shim.
  const { execFileSync } = await import("node:child_process");
  const kids = execFileSync("sh", ["-c", `cat /proc/${child.pid}/task/*/children`]).toString().trim();
  report.nativePid = kids ? Number(kids.split(/\s+/)[0]) : child.pid;
  child.kill("SIGKILL");
}
report.exit = await exited;
report.exitMs = Date.now() - t0;
if (mode === "kill-shim") {
  const gone = await new Promise((resolve) => {
    const start = Date.now();
    const poll = () => {
      let alive = true;
      try {
        process.kill(report.nativePid, 0);
      } catch {
        alive = false;
      }
      if (!alive) return resolve(true);
      if (Date.now() - start > 5000) return resolve(false);
      setTimeout(poll, 20);
    };
    poll();
  });
  report.nativeGone = gone;
}
report.stderr = stderr.slice(-2000);
finish(0);
