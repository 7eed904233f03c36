// spec/support/fork_shim.mjs: start a generated plugin package the way Paperclip does.
// Imports dist/manifest.js, forks dist/worker.js with an IPC channel, speaks NDJSON to it,
// and prints one JSON report. Usage: node fork_shim.mjs PACKAGE_DIR MODE
// MODE: "shutdown" (initialize, health, execute, shutdown) or "sigterm" or "kill-shim".
import { fork } from "node:child_process";
import path from "node:path";
import readline from "node:readline";
import { pathToFileURL } from "node:url";

const [pkgDir, mode = "shutdown"] = process.argv.slice(2);
const report = { mode };
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
  env: { PATH: process.env.PATH },
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
