#!/usr/bin/env node
// Worker benchmark: provider-host (ours) against a Node worker built on
// @paperclipai/plugin-sdk (peer), side by side in one run. It drives each worker
// the way the Paperclip host does (NDJSON JSON-RPC 2.0 over stdio pipes) and
// prints ratios. It is a measurement, not a test: the exit status says only
// whether the driver itself ran.
//
//   node bench/worker_bench.mjs [--quick] [--only=ours|peer] [--no-floor]
//        [--n=20] [--calls=2000] [--warmup=100] [--execs=1000] [--direct] [--out=FILE]
//
// PROVIDER_HOST overrides the path of our binary (relative to the repo root).

import { spawn } from "node:child_process";
import { randomUUID } from "node:crypto";
import { existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { performance } from "node:perf_hooks";
import { fileURLToPath } from "node:url";

const BENCH_DIR = path.dirname(fileURLToPath(import.meta.url));
const ROOT = path.resolve(BENCH_DIR, "..");

const INIT_TIMEOUT_MS = 15_000; // the host's initialize deadline
const CALL_TIMEOUT_MS = 30_000; // the host's default per-call deadline
const PHASE_TIMEOUT_MS = 30_000; // any one phase of one candidate
const SHUTDOWN_TIMEOUT_MS = 10_000; // the host's shutdown drain
const IDLE_WAIT_MS = 500;
const RSS_SAMPLE_MS = 50;
const FD_WARN_BELOW = 4096;

const TARGETS = {
  initMedian: { text: ">= 30x faster", check: (o, p) => p / o >= 30 },
  idleRss: { text: ">= 15x smaller", check: (o, p) => p / o >= 15 },
  rttMedian: { text: ">= 5x faster", check: (o, p) => p / o >= 5 },
  sleepWall: { text: "ours < 1.5 s", check: (o) => o < 1500 },
  sleepHwm: { text: "ours < 64 MB", check: (o) => o < 64 * 1024 },
  sleepMaxRss: { text: "ours < 64 MB", check: (o) => o < 64 * 1024 },
};

// ---------------------------------------------------------------------------
// options

function parseArgs(argv) {
  const opts = { quick: false, only: null, floor: true, n: null, calls: null, warmup: null, execs: null, out: null };
  for (const arg of argv) {
    const [key, value] = arg.includes("=") ? [arg.slice(0, arg.indexOf("=")), arg.slice(arg.indexOf("=") + 1)] : [arg, null];
    const num = () => {
      const v = Number(value);
      if (!Number.isInteger(v) || v < 1) usage(`${key} needs a positive integer`);
      return v;
    };
    switch (key) {
      case "--quick": opts.quick = true; break;
      case "--no-floor": opts.floor = false; break;
      case "--only":
        if (value !== "ours" && value !== "peer") usage("--only must be ours or peer");
        opts.only = value;
        break;
      case "--n": opts.n = num(); break;
      case "--calls": opts.calls = num(); break;
      case "--warmup": opts.warmup = num(); break;
      case "--execs": opts.execs = num(); break;
      case "--direct": opts.direct = true; break;
      case "--out": opts.out = path.resolve(value ?? usage("--out needs a file")); break;
      case "-h": case "--help": usage(); break;
      default: usage(`unknown option ${arg}`);
    }
  }
  opts.n ??= opts.quick ? 5 : 20;
  opts.calls ??= opts.quick ? 500 : 2000;
  opts.warmup ??= opts.quick ? 50 : 100;
  opts.execs ??= 1000;
  opts.out ??= path.join(BENCH_DIR, "results", "worker.json");
  return opts;
}

function usage(problem) {
  if (problem) process.stderr.write(`worker_bench: ${problem}\n`);
  process.stderr.write(
    "usage: node bench/worker_bench.mjs [--quick] [--only=ours|peer] [--no-floor] [--n=N] [--calls=N] [--warmup=N] [--execs=N] [--direct] [--out=FILE]\n" +
      "  --direct  run the executes as command \"sleep\" args [\"1\"] instead of bash -c \"sleep 1\"\n",
  );
  process.exit(problem ? 2 : 0);
}

// ---------------------------------------------------------------------------
// what the host sends

const PLUGIN_DB_ID = randomUUID();
const COMPANY_ID = randomUUID();
const ENVIRONMENT_ID = randomUUID();
const PLUGIN_KEY = "paperclip.local-sandbox-provider";
const DRIVER_CONFIG = { timeoutMs: 300_000, reuseLease: false };

const MANIFEST = {
  id: PLUGIN_KEY,
  apiVersion: 1,
  version: "0.1.0",
  displayName: "Local Sandbox Provider",
  description: "Runs commands as local processes in a private per-lease workspace.",
  author: "Paperclip",
  categories: ["automation"],
  capabilities: ["environment.drivers.register"],
  entrypoints: { worker: "./dist/worker.js" },
  environmentDrivers: [
    {
      driverKey: "local",
      kind: "sandbox_provider",
      displayName: "Local processes",
      description: "Local processes in a private temp workspace.",
      configSchema: {
        type: "object",
        properties: {
          timeoutMs: { type: "number", default: 300000 },
          reuseLease: { type: "boolean", default: false },
        },
      },
    },
  ],
};

function initializeParams() {
  return {
    manifest: MANIFEST,
    config: {},
    instanceInfo: { instanceId: "default", hostVersion: "2026.916.1", deploymentMode: "authenticated" },
    apiVersion: 1,
    databaseNamespace: null,
  };
}

// The host does not pass its environment through (worker-protocol.md 1.2).
// PROVIDER_HOST_* is passed so a development build can be pointed at its files.
function workerEnv() {
  const env = {
    PATH: process.env.PATH ?? "",
    NODE_PATH: process.env.NODE_PATH ?? "",
    PAPERCLIP_PLUGIN_ID: PLUGIN_DB_ID,
    NODE_ENV: process.env.NODE_ENV ?? "production",
    TZ: process.env.TZ ?? "UTC",
    PAPERCLIP_DEPLOYMENT_MODE: "authenticated",
    PAPERCLIP_DEPLOYMENT_EXPOSURE: "",
  };
  for (const [k, v] of Object.entries(process.env)) if (k.startsWith("PROVIDER_HOST_")) env[k] = v;
  return env;
}

function invocation() {
  return { id: randomUUID(), scope: { companyId: COMPANY_ID } };
}

function acquireParams() {
  return {
    driverKey: "local",
    companyId: COMPANY_ID,
    environmentId: ENVIRONMENT_ID,
    issueId: null,
    config: { ...DRIVER_CONFIG, streamRunLogs: false },
    runId: randomUUID(),
    workspaceMode: "isolated",
    agentId: randomUUID(),
    adapterType: "claude_local",
  };
}

// Lease metadata as the host stores it and sends it back on lease-bound calls.
function storedLeaseMetadata(lease) {
  return {
    driver: "sandbox",
    executionWorkspaceMode: "isolated",
    pluginId: PLUGIN_DB_ID,
    pluginKey: PLUGIN_KEY,
    sandboxProviderPlugin: true,
    provider: "local",
    ...DRIVER_CONFIG,
    ...(lease.metadata ?? {}),
  };
}

function executeParams(lease, command, args) {
  return {
    driverKey: "local",
    companyId: COMPANY_ID,
    environmentId: ENVIRONMENT_ID,
    issueId: null,
    config: { ...DRIVER_CONFIG },
    lease: { providerLeaseId: lease.providerLeaseId, metadata: storedLeaseMetadata(lease), expiresAt: null },
    command,
    args,
    cwd: lease.metadata?.remoteCwd,
    env: { PAPERCLIP_SANDBOX_EXEC_CHANNEL: "bench" },
    timeoutMs: CALL_TIMEOUT_MS,
  };
}

function releaseParams(lease) {
  return {
    driverKey: "local",
    companyId: COMPANY_ID,
    environmentId: ENVIRONMENT_ID,
    issueId: null,
    config: { ...DRIVER_CONFIG },
    providerLeaseId: lease.providerLeaseId,
    leaseMetadata: storedLeaseMetadata(lease),
  };
}

// ---------------------------------------------------------------------------
// a spawned worker, spoken to like the host does

const live = new Set();

class WorkerProc {
  constructor(name, argv) {
    this.name = name;
    this.argv = argv;
    this.nextId = 0;
    this.pending = new Map();
    this.buf = "";
    this.stderr = "";
    this.badLines = 0;
    this.notifications = 0;
    this.exit = null;
    this.exited = new Promise((resolve) => (this.resolveExit = resolve));
  }

  start() {
    this.t0 = performance.now();
    const child = spawn(this.argv[0], this.argv.slice(1), {
      cwd: ROOT,
      env: workerEnv(),
      stdio: ["pipe", "pipe", "pipe"],
      detached: true, // own process group, so cleanup can kill it whole
    });
    this.child = child;
    this.pid = child.pid;
    live.add(this);
    child.stdout.setEncoding("utf8");
    child.stdout.on("data", (chunk) => this.onData(chunk));
    child.stderr.setEncoding("utf8");
    child.stderr.on("data", (chunk) => {
      this.stderr = (this.stderr + chunk).slice(-8000);
    });
    child.stdin.on("error", () => {}); // EPIPE after a crash is reported via exit
    child.on("error", (err) => this.onExit(null, null, err));
    child.on("exit", (code, signal) => this.onExit(code, signal, null));
    this.watchdog = setInterval(() => this.expire(), 100);
    return this;
  }

  onExit(code, signal, err) {
    if (this.exit) return;
    this.exit = { code, signal, error: err ? err.message : null, at: performance.now() };
    clearInterval(this.watchdog);
    live.delete(this);
    const why = err ? `spawn failed: ${err.message}` : `worker exited (code=${code}, signal=${signal})`;
    for (const [id, p] of this.pending) {
      this.pending.delete(id);
      p.reject(new Error(why));
    }
    this.resolveExit(this.exit);
  }

  onData(chunk) {
    this.buf += chunk;
    let start = 0;
    let nl;
    while ((nl = this.buf.indexOf("\n", start)) !== -1) {
      const line = this.buf.slice(start, nl);
      start = nl + 1;
      this.onLine(line);
    }
    this.buf = start === 0 ? this.buf : this.buf.slice(start);
  }

  onLine(line) {
    const t = performance.now();
    if (line.trim() === "") return;
    let msg;
    try {
      msg = JSON.parse(line);
    } catch {
      this.badLines++;
      return;
    }
    if (msg === null || typeof msg !== "object" || msg.jsonrpc !== "2.0") {
      this.badLines++;
      return;
    }
    if ("id" in msg && ("result" in msg || "error" in msg)) {
      const p = this.pending.get(msg.id);
      if (!p) {
        this.badLines++;
        return;
      }
      this.pending.delete(msg.id);
      p.resolve({ msg, t, sent: p.sent });
    } else if (typeof msg.method === "string" && "id" in msg && msg.id !== null) {
      // worker->host request: this bench offers no host services
      this.write(JSON.stringify({ jsonrpc: "2.0", id: msg.id, error: { code: -32601, message: `Unknown method: ${msg.method}` } }) + "\n");
    } else {
      this.notifications++;
    }
  }

  expire() {
    const now = performance.now();
    for (const [id, p] of this.pending) {
      if (now > p.deadline) {
        this.pending.delete(id);
        p.reject(new Error(`${this.name}: ${p.method} (id ${id}) got no reply within ${p.timeoutMs} ms`));
      }
    }
  }

  // Register a request and return its line without writing it (for batches).
  prepare(method, params, timeoutMs = CALL_TIMEOUT_MS, extra = null) {
    const id = ++this.nextId;
    const line = JSON.stringify({ jsonrpc: "2.0", id, method, params, ...(extra ?? {}) }) + "\n";
    const entry = { method, timeoutMs, deadline: performance.now() + timeoutMs, sent: 0 };
    const promise = new Promise((resolve, reject) => {
      entry.resolve = resolve;
      entry.reject = reject;
    });
    if (this.exit) entry.reject(new Error(`${this.name}: worker is not running`));
    else this.pending.set(id, entry);
    return { id, line, promise, entry };
  }

  write(data) {
    if (this.exit || !this.child.stdin.writable) return false;
    this.child.stdin.write(data);
    return true;
  }

  call(method, params, timeoutMs = CALL_TIMEOUT_MS, extra = null) {
    const req = this.prepare(method, params, timeoutMs, extra);
    req.entry.sent = performance.now();
    this.write(req.line);
    return req.promise;
  }

  // Call and unwrap: error replies become exceptions.
  async request(method, params, timeoutMs = CALL_TIMEOUT_MS, extra = null) {
    const { msg } = await this.call(method, params, timeoutMs, extra);
    if (msg.error) throw new Error(`${this.name}: ${method} failed: ${msg.error.code} ${msg.error.message}`);
    return msg.result;
  }

  status() {
    const out = {};
    try {
      for (const line of readFileSync(`/proc/${this.pid}/status`, "utf8").split("\n")) {
        const m = /^(VmRSS|VmHWM|Threads):\s+(\d+)/.exec(line);
        if (m) out[m[1]] = Number(m[2]);
      }
    } catch {
      // gone
    }
    return out;
  }

  openFilesLimit() {
    try {
      const m = /^Max open files\s+(\S+)\s+(\S+)/m.exec(readFileSync(`/proc/${this.pid}/limits`, "utf8"));
      return m ? { soft: m[1], hard: m[2] } : null;
    } catch {
      return null;
    }
  }

  // shutdown as the host does: request, then wait for exit; kill on deadline.
  async shutdown() {
    if (this.exit) return { replied: false, ...this.exit };
    let replied = false;
    let replyError = null;
    try {
      await this.request("shutdown", {}, SHUTDOWN_TIMEOUT_MS);
      replied = true;
    } catch (err) {
      replyError = err.message;
    }
    const exit = await withDeadline(this.exited, SHUTDOWN_TIMEOUT_MS, `${this.name}: exit after shutdown`).catch(() => null);
    if (!exit) {
      this.kill();
      await withDeadline(this.exited, 2_000, "exit after SIGKILL").catch(() => null);
      return { replied, replyError, code: null, signal: "SIGKILL", forced: true };
    }
    return { replied, replyError, code: exit.code, signal: exit.signal, forced: false };
  }

  kill() {
    if (this.exit || !this.pid) return;
    try {
      process.kill(-this.pid, "SIGKILL");
    } catch {
      try {
        this.child.kill("SIGKILL");
      } catch {
        // already gone
      }
    }
  }
}

function killAll() {
  for (const w of live) w.kill();
}

process.on("exit", killAll);
for (const sig of ["SIGINT", "SIGTERM", "SIGHUP"]) {
  process.on(sig, () => {
    process.stderr.write(`\nworker_bench: ${sig}, killing workers\n`);
    killAll();
    process.exit(130);
  });
}
process.on("uncaughtException", (err) => {
  process.stderr.write(`worker_bench: ${err.stack ?? err}\n`);
  killAll();
  process.exit(1);
});
process.on("unhandledRejection", (err) => {
  process.stderr.write(`worker_bench: unhandled rejection: ${err?.stack ?? err}\n`);
  killAll();
  process.exit(1);
});

// ---------------------------------------------------------------------------
// the harness floor: a trivial awk responder that answers every request with
// {"ok":true} and exits after replying to shutdown. It costs almost nothing
// itself, so its numbers are the price of process creation, the pipes and this
// driver: no worker can measure below them.

const FLOOR_AWK = String.raw`BEGIN { ORS = "" }
{
  if (!match($0, /"id":[0-9]+/)) next
  id = substr($0, RSTART + 5, RLENGTH - 5)
  if ($0 ~ /"method":"shutdown"/) { print "{\"jsonrpc\":\"2.0\",\"id\":" id ",\"result\":null}\n"; fflush(); exit 0 }
  print "{\"jsonrpc\":\"2.0\",\"id\":" id ",\"result\":{\"ok\":true}}\n"; fflush()
}`;

function findInPath(name) {
  for (const dir of (process.env.PATH ?? "").split(":")) {
    if (!dir) continue;
    const file = path.join(dir, name);
    if (existsSync(file)) return file;
  }
  return null;
}

function floorCandidate() {
  // mawk buffers pipe input unless interactive; interactive also makes stdout
  // unbuffered, so each reply is one print (printf would write byte by byte)
  // (ORS is empty so the newline goes out in the same write)
  const mawk = findInPath("mawk");
  if (mawk) return { name: "floor", argv: [mawk, "-W", "interactive", FLOOR_AWK] };
  const awk = findInPath("awk");
  return awk ? { name: "floor", argv: [awk, FLOOR_AWK] } : null;
}

// ---------------------------------------------------------------------------
// helpers

function withDeadline(promise, ms, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: no result within ${ms} ms`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

function quantile(values, q) {
  if (values.length === 0) return null;
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1))];
}

function selfOpenFilesLimit() {
  try {
    const m = /^Max open files\s+(\S+)\s+(\S+)/m.exec(readFileSync("/proc/self/limits", "utf8"));
    return m ? { soft: m[1], hard: m[2] } : null;
  } catch {
    return null;
  }
}

function log(msg) {
  process.stdout.write(`${msg}\n`);
}

// ---------------------------------------------------------------------------
// phases

// (a) spawn -> initialize reply, fresh process each time
async function measureInit(cand) {
  const w = new WorkerProc(cand.name, cand.argv).start();
  try {
    const { msg, t } = await w.call("initialize", initializeParams(), INIT_TIMEOUT_MS);
    if (msg.error || msg.result?.ok !== true) {
      throw new Error(`initialize failed: ${JSON.stringify(msg.error ?? msg.result)}`);
    }
    const ms = t - w.t0;
    const down = await w.shutdown();
    return { ms, shutdownCode: down.code };
  } catch (err) {
    w.kill();
    throw new Error(`${cand.name}: ${err.message}${w.stderr ? `\n--- worker stderr ---\n${w.stderr}` : ""}`);
  }
}

async function phaseInit(cands, n, results) {
  log(`\n(a) spawn -> initialize reply, ${n} fresh spawns each (alternating)`);
  for (const c of cands) results[c.name].init = { samples: [], failures: 0, badShutdowns: 0, streak: 0 };
  for (let i = 0; i < n; i++) {
    const order = i % 2 === 0 ? cands : [...cands].reverse();
    for (const c of order) {
      const r = results[c.name].init;
      if (r.streak >= 3) continue; // three failures in a row: stop spawning it
      try {
        const { ms, shutdownCode } = await withDeadline(measureInit(c), PHASE_TIMEOUT_MS, `${c.name} initialize #${i + 1}`);
        r.samples.push(ms);
        r.streak = 0;
        if (shutdownCode !== 0) r.badShutdowns++;
      } catch (err) {
        r.failures++;
        if (++r.streak === 3) process.stderr.write(`  ${c.name}: three failures in a row, giving up on it for (a)\n`);
        process.stderr.write(`  ${err.message}\n`);
      }
    }
  }
  for (const c of cands) {
    delete results[c.name].init.streak;
    const r = results[c.name].init;
    r.medianMs = quantile(r.samples, 0.5);
    r.p90Ms = quantile(r.samples, 0.9);
    r.minMs = r.samples.length ? Math.min(...r.samples) : null;
    log(`  ${c.name.padEnd(5)} median ${fmtMs(r.medianMs)}  p90 ${fmtMs(r.p90Ms)}  min ${fmtMs(r.minMs)}  failures ${r.failures}`);
  }
}

// (b), (c), (d) on one long-lived worker
async function phaseLong(cand, opts, res) {
  const w = new WorkerProc(cand.name, cand.argv).start();
  try {
    await withDeadline(w.request("initialize", initializeParams(), INIT_TIMEOUT_MS), PHASE_TIMEOUT_MS, `${cand.name} initialize`);
    res.openFilesLimit = w.openFilesLimit();

    // (b) idle RSS
    await sleep(IDLE_WAIT_MS);
    const idle = w.status();
    res.idle = { rssKb: idle.VmRSS ?? null, threads: idle.Threads ?? null };
    log(`  ${cand.name.padEnd(5)} (b) idle RSS ${fmtKb(res.idle.rssKb)}  threads ${res.idle.threads ?? "?"}  open-files limit ${fmtLimit(res.openFilesLimit)}`);

    // (c) environmentValidateConfig round trips
    res.rtt = await withDeadline(measureRtt(w, opts), PHASE_TIMEOUT_MS, `${cand.name} validateConfig round trips`);
    log(`  ${cand.name.padEnd(5)} (c) validateConfig RTT median ${fmtUs(res.rtt.medianMs)}  p90 ${fmtUs(res.rtt.p90Ms)}  failures ${res.rtt.failures}`);

    // (d) concurrent executes on one lease
    res.sleeps = await withDeadline(measureSleeps(w, opts), PHASE_TIMEOUT_MS + 5_000, `${cand.name} concurrent executes`);
    const s = res.sleeps;
    log(
      `  ${cand.name.padEnd(5)} (d) ${s.count} x sleep 1: wall ${fmtMs(s.wallMs)} (first reply ${fmtMs(s.firstReplyMs)})  VmHWM ${fmtKb(s.hwmKb)}  max sampled RSS ${fmtKb(s.maxRssKb)}  failures ${s.failures}`,
    );
  } catch (err) {
    res.error = err.message;
    process.stderr.write(`  ${cand.name}: ${err.message}${w.stderr ? `\n--- worker stderr ---\n${w.stderr}` : ""}\n`);
  } finally {
    res.shutdown = await w.shutdown();
    res.badLines = w.badLines;
    log(
      `  ${cand.name.padEnd(5)} shutdown: reply ${res.shutdown.replied ? "ok" : `missing (${res.shutdown.replyError ?? "exited"})`}, exit code ${res.shutdown.code}${res.shutdown.signal ? `, signal ${res.shutdown.signal}` : ""}${res.shutdown.forced ? " (killed)" : ""}`,
    );
  }
}

// floor: initialize already measured in (a); here only the round trips
async function phaseFloor(cand, opts, res) {
  const w = new WorkerProc(cand.name, cand.argv).start();
  try {
    await withDeadline(w.request("initialize", initializeParams(), INIT_TIMEOUT_MS), PHASE_TIMEOUT_MS, "floor initialize");
    // same idle pause as the candidates get before (c): straight after a spawn,
    // round trips measure about 4x slower here (scheduler placement)
    await sleep(IDLE_WAIT_MS);
    res.rtt = await withDeadline(measureRtt(w, opts), PHASE_TIMEOUT_MS, "floor round trips");
    log(`  floor (c) validateConfig RTT median ${fmtUs(res.rtt.medianMs)}  p90 ${fmtUs(res.rtt.p90Ms)}  failures ${res.rtt.failures}`);
  } catch (err) {
    res.error = err.message;
    process.stderr.write(`  floor: ${err.message}\n`);
  } finally {
    res.shutdown = await w.shutdown();
  }
}

async function measureRtt(w, opts) {
  const params = { driverKey: "local", config: { ...DRIVER_CONFIG } };
  let failures = 0;
  const samples = [];
  for (let i = 0; i < opts.warmup + opts.calls; i++) {
    const { msg, t, sent } = await w.call("environmentValidateConfig", params);
    if (msg.error || msg.result?.ok !== true) failures++;
    if (i >= opts.warmup) samples.push(t - sent);
  }
  return {
    calls: opts.calls,
    warmup: opts.warmup,
    medianMs: quantile(samples, 0.5),
    p90Ms: quantile(samples, 0.9),
    p99Ms: quantile(samples, 0.99),
    failures,
  };
}

async function measureSleeps(w, opts) {
  const lease = await w.request("environmentAcquireLease", acquireParams(), CALL_TIMEOUT_MS, { paperclipInvocation: invocation() });
  if (!lease?.providerLeaseId) throw new Error(`acquire returned no lease: ${JSON.stringify(lease)}`);

  const reqs = [];
  for (let i = 0; i < opts.execs; i++) {
    reqs.push(w.prepare("environmentExecute", opts.direct ? executeParams(lease, "sleep", ["1"]) : executeParams(lease, "bash", ["-c", "sleep 1"]), CALL_TIMEOUT_MS, { paperclipInvocation: invocation() }));
  }
  const payload = reqs.map((r) => r.line).join("");

  let maxRssKb = 0;
  const sample = () => {
    const st = w.status();
    if (st.VmRSS > maxRssKb) maxRssKb = st.VmRSS;
  };
  const sampler = setInterval(sample, RSS_SAMPLE_MS);
  const t0 = performance.now();
  let settled;
  try {
    for (const r of reqs) r.entry.sent = t0;
    w.write(payload);
    settled = await Promise.allSettled(reqs.map((r) => r.promise));
  } finally {
    clearInterval(sampler);
  }
  sample();

  let last = t0;
  let first = Infinity;
  let failures = 0;
  const reasons = new Map();
  const fail = (why) => {
    failures++;
    reasons.set(why, (reasons.get(why) ?? 0) + 1);
  };
  for (const s of settled) {
    if (s.status === "rejected") {
      fail(s.reason.message.replace(/\(id \d+\)/, "(id N)"));
      continue;
    }
    const { msg, t } = s.value;
    if (t > last) last = t;
    if (t < first) first = t;
    if (msg.error) fail(`error ${msg.error.code}: ${msg.error.message}`);
    else if (msg.result?.exitCode !== 0 || msg.result?.timedOut !== false) {
      fail(`exitCode ${msg.result?.exitCode} timedOut ${msg.result?.timedOut} ${String(msg.result?.stderr ?? "").slice(0, 120)}`);
    }
  }
  const payloadBytes = Buffer.byteLength(payload);

  let releaseError = null;
  try {
    await w.request("environmentReleaseLease", releaseParams(lease), CALL_TIMEOUT_MS, { paperclipInvocation: invocation() });
  } catch (err) {
    releaseError = err.message;
  }
  const leaseDir = lease.metadata?.remoteCwd;
  const leaseDirLeft = typeof leaseDir === "string" && existsSync(leaseDir);

  const hwm = w.status().VmHWM ?? null; // just before shutdown
  return {
    count: opts.execs,
    payloadBytes,
    wallMs: last - t0,
    firstReplyMs: Number.isFinite(first) ? first - t0 : null,
    hwmKb: hwm,
    maxRssKb,
    failures,
    failureReasons: Object.fromEntries(reasons),
    releaseError,
    leaseDirLeft,
  };
}

// ---------------------------------------------------------------------------
// report

function fmtMs(ms) {
  if (ms == null) return "-";
  if (ms >= 1000) return `${(ms / 1000).toFixed(2)} s`;
  if (ms >= 10) return `${ms.toFixed(1)} ms`;
  return `${ms.toFixed(2)} ms`;
}
function fmtUs(ms) {
  if (ms == null) return "-";
  return ms >= 1 ? fmtMs(ms) : `${(ms * 1000).toFixed(0)} us`;
}
function fmtKb(kb) {
  return kb == null ? "-" : `${(kb / 1024).toFixed(1)} MB`;
}
function fmtLimit(l) {
  return l ? `${l.soft}/${l.hard}` : "?";
}
function fmtRatio(o, p) {
  if (o == null || p == null || o <= 0) return "-";
  const r = p / o;
  return r >= 10 ? `${r.toFixed(0)}x` : `${r.toFixed(2)}x`;
}

function buildRows(results) {
  const o = results.ours ?? {};
  const p = results.peer ?? {};
  const f = results.floor ?? {};
  const row = (label, key, get, fmt, ratio = true, floor = false) => {
    const ov = get(o);
    const pv = get(p);
    const fv = floor ? get(f) : null;
    const target = TARGETS[key];
    let met = null;
    if (target && ov != null && (pv != null || key.startsWith("sleep"))) met = target.check(ov, pv);
    return {
      metric: label,
      key,
      ours: ov ?? null,
      peer: pv ?? null,
      floor: fv ?? null,
      ratio: ratio && ov != null && pv != null && ov > 0 ? pv / ov : null,
      oursText: fmt(ov),
      peerText: fmt(pv),
      floorText: floor ? fmt(fv) : "",
      ratioText: ratio ? fmtRatio(ov, pv) : "",
      target: target?.text ?? "",
      met,
    };
  };
  return [
    row("initialize latency, median", "initMedian", (r) => r.init?.medianMs, fmtMs, true, true),
    row("initialize latency, p90", "initP90", (r) => r.init?.p90Ms, fmtMs, true, true),
    row("idle RSS (500 ms after init)", "idleRss", (r) => r.idle?.rssKb, fmtKb),
    row("validateConfig RTT, median", "rttMedian", (r) => r.rtt?.medianMs, fmtUs, true, true),
    row("validateConfig RTT, p90", "rttP90", (r) => r.rtt?.p90Ms, fmtUs, true, true),
    row("N x sleep 1: wall", "sleepWall", (r) => r.sleeps?.wallMs, fmtMs),
    row("N x sleep 1: VmHWM", "sleepHwm", (r) => r.sleeps?.hwmKb, fmtKb),
    row("N x sleep 1: max sampled VmRSS", "sleepMaxRss", (r) => r.sleeps?.maxRssKb, fmtKb),
    row("N x sleep 1: failures", "sleepFailures", (r) => r.sleeps?.failures, (v) => (v == null ? "-" : String(v)), false),
    row("initialize failures", "initFailures", (r) => r.init?.failures, (v) => (v == null ? "-" : String(v)), false),
    row("shutdown exit code", "shutdownCode", (r) => r.shutdown?.code, (v) => (v === undefined ? "-" : String(v)), false),
  ];
}

function printTable(rows, execs) {
  const header = ["metric", "ours", "peer", "peer/ours", "floor", "target"];
  const body = rows.map((r) => [
    r.metric.replace("N x", `${execs} x`),
    r.oursText,
    r.peerText,
    r.ratioText,
    r.floorText,
    r.target ? `${r.target}${r.met == null ? "" : r.met ? "  (met)" : "  (not met)"}` : "",
  ]);
  const widths = header.map((h, i) => Math.max(h.length, ...body.map((b) => b[i].length)));
  const line = (cols) => cols.map((c, i) => (i === 0 || i === 5 ? c.padEnd(widths[i]) : c.padStart(widths[i]))).join("  ").trimEnd();
  log("");
  log(line(header));
  log(widths.map((w) => "-".repeat(w)).join("  "));
  for (const b of body) log(line(b));
}

// ---------------------------------------------------------------------------
// main

async function main() {
  const opts = parseArgs(process.argv.slice(2));
  const oursPath = path.resolve(ROOT, process.env.PROVIDER_HOST || "build/provider-host");
  const all = [
    { name: "ours", argv: [oursPath, "worker", "--provider", "local"] },
    { name: "peer", argv: [process.execPath, path.join(BENCH_DIR, "peer", "worker.mjs")] },
  ];
  let cands = opts.only ? all.filter((c) => c.name === opts.only) : all;
  const notes = [];
  if (cands.some((c) => c.name === "ours") && !existsSync(oursPath)) {
    const msg = `our binary ${path.relative(ROOT, oursPath) || oursPath} does not exist (build it, or set PROVIDER_HOST); measuring the peer only`;
    log(`NOTE: ${msg}`);
    notes.push(msg);
    cands = cands.filter((c) => c.name !== "ours");
    if (cands.length === 0) {
      process.stderr.write("worker_bench: nothing to measure\n");
      process.exit(2);
    }
  }

  const limit = selfOpenFilesLimit();
  log(`worker benchmark  node ${process.version}  ${os.cpus().length} CPU  ${os.type()} ${os.release()}`);
  log(`candidates: ${cands.map((c) => `${c.name} = ${c.argv.map((a) => path.relative(ROOT, a).startsWith("..") ? a : path.relative(ROOT, a) || a).join(" ")}`).join(";  ")}`);
  log(`open-files limit (soft/hard), inherited by every worker: ${fmtLimit(limit)}`);
  if (limit && limit.soft !== "unlimited" && Number(limit.soft) < FD_WARN_BELOW) {
    const msg = `soft open-files limit ${limit.soft} is low: ${opts.execs} concurrent children need about ${2 * opts.execs} pipe fds in the worker; the peer will fail with EMFILE. Raise it (ulimit -n ${FD_WARN_BELOW} or more; bench/run does this).`;
    log(`WARNING: ${msg}`);
    notes.push(msg);
  }

  const floor = opts.floor ? floorCandidate() : null;
  if (opts.floor && !floor) notes.push("no awk in PATH: harness floor not measured");
  if (floor) log(`floor = ${path.basename(floor.argv[0])} responder answering {"ok":true} (process + pipe + driver cost only)`);

  const results = Object.fromEntries(cands.map((c) => [c.name, { argv: c.argv }]));
  if (floor) results.floor = { argv: floor.argv.map((a) => (a === FLOOR_AWK ? "<awk program>" : a)) };
  await phaseInit(floor ? [...cands, floor] : cands, opts.n, results);

  log(`\n(b) idle RSS, (c) ${opts.calls} sequential environmentValidateConfig after ${opts.warmup} warm-up, (d) ${opts.execs} concurrent executes of bash -c "sleep 1" on one lease`);
  for (const c of cands) await phaseLong(c, opts, results[c.name]);
  if (floor) await phaseFloor(floor, opts, results.floor);

  const rows = buildRows(results);
  printTable(rows, opts.execs);
  for (const c of cands) {
    const s = results[c.name].sleeps;
    if (s?.failures) log(`${c.name} execute failures: ${JSON.stringify(s.failureReasons)}`);
    if (s?.releaseError) log(`${c.name} release failed: ${s.releaseError}`);
    if (s?.leaseDirLeft) log(`${c.name} left its lease directory behind`);
    if (results[c.name].badLines) log(`${c.name} wrote ${results[c.name].badLines} unparseable or unmatched stdout lines`);
  }
  if (notes.length) log(`\nnotes:\n${notes.map((n) => `  - ${n}`).join("\n")}`);

  const report = {
    benchmark: "worker",
    date: new Date().toISOString(),
    machine: { node: process.version, cpus: os.cpus().length, cpuModel: os.cpus()[0]?.model, kernel: os.release(), totalMemMb: Math.round(os.totalmem() / 2 ** 20) },
    options: { quick: opts.quick, only: opts.only, n: opts.n, calls: opts.calls, warmup: opts.warmup, execs: opts.execs },
    openFilesLimit: limit,
    notes,
    candidates: results,
    rows: rows.map(({ metric, key, ours, peer, ratio, floor, target, met }) => ({ metric, key, ours, peer, ratio, floor, target, met })),
  };
  mkdirSync(path.dirname(opts.out), { recursive: true });
  writeFileSync(opts.out, JSON.stringify(report, null, 2) + "\n");
  log(`\nresults written to ${path.relative(process.cwd(), opts.out) || opts.out}`);
}

main().then(
  () => {
    killAll();
    process.exit(0);
  },
  (err) => {
    process.stderr.write(`worker_bench: ${err.stack ?? err}\n`);
    killAll();
    process.exit(1);
  },
);
