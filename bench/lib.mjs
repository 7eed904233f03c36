// bench/lib.mjs: what the benchmarks share: a worker process spoken to as the
// Paperclip host speaks to it (the host's minimal environment and deadlines, NDJSON JSON-RPC
// 2.0 over stdio pipes, initialize first, shutdown last), its /proc status,
// killing every child on any way out, and the timing, formatting and report
// helpers.

import { spawn } from "node:child_process";
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { performance } from "node:perf_hooks";
import { fileURLToPath } from "node:url";

export const BENCH_DIR = path.dirname(fileURLToPath(import.meta.url));
export const ROOT = path.resolve(BENCH_DIR, "..");

export const INIT_TIMEOUT_MS = 15_000; // the host's initialize deadline
export const CALL_TIMEOUT_MS = 30_000; // the host's default per-call deadline
export const SHUTDOWN_TIMEOUT_MS = 10_000; // the host's shutdown drain

// ---------------------------------------------------------------------------
// what the host sends

// The host does not pass its environment through (worker-protocol.md 1.2): a
// worker gets this much, plus `extra`. PROVIDER_HOST_* is passed so a
// development build can be pointed at its files.
export function hostEnv(pluginId, extra = {}) {
  const env = {
    PATH: process.env.PATH ?? "",
    NODE_PATH: process.env.NODE_PATH ?? "",
    PAPERCLIP_PLUGIN_ID: pluginId,
    NODE_ENV: process.env.NODE_ENV ?? "production",
    TZ: process.env.TZ ?? "UTC",
    PAPERCLIP_DEPLOYMENT_MODE: "authenticated",
    PAPERCLIP_DEPLOYMENT_EXPOSURE: "",
    ...extra,
  };
  for (const [k, v] of Object.entries(process.env)) if (k.startsWith("PROVIDER_HOST_")) env[k] = v;
  return env;
}

export function initializeParams(manifest) {
  return {
    manifest,
    config: {},
    instanceInfo: { instanceId: "default", hostVersion: "2026.916.1", deploymentMode: "authenticated" },
    apiVersion: 1,
    databaseNamespace: null,
  };
}

// ---------------------------------------------------------------------------
// processes

// VmRSS, VmHWM and Threads of a process (kB, count); empty when it is gone.
export function procStatus(pid) {
  const out = {};
  try {
    for (const line of readFileSync(`/proc/${pid}/status`, "utf8").split("\n")) {
      const m = /^(VmRSS|VmHWM|Threads):\s+(\d+)/.exec(line);
      if (m) out[m[1]] = Number(m[2]);
    }
  } catch {
    // gone
  }
  return out;
}

// SIGKILL to a child's process group (every child is spawned detached, in its
// own group), or to the child alone when that fails.
export function killGroup(child) {
  if (!child?.pid || child.exitCode !== null || child.signalCode !== null) return;
  try {
    process.kill(-child.pid, "SIGKILL");
  } catch {
    try {
      child.kill("SIGKILL");
    } catch {
      // already gone
    }
  }
}

// Split a stream into lines, calling onLine for each complete one.
export function lineReader(stream, onLine) {
  let buf = "";
  stream.setEncoding("utf8");
  stream.on("data", (chunk) => {
    buf += chunk;
    let nl;
    let start = 0;
    while ((nl = buf.indexOf("\n", start)) !== -1) {
      onLine(buf.slice(start, nl));
      start = nl + 1;
    }
    buf = buf.slice(start);
  });
}

// ---------------------------------------------------------------------------
// a worker, spoken to like the host does

// the workers running now, for killWorkers
const live = new Set();

export class Worker {
  // argv spawned as is in its own process group, with env; a subclass may
  // start it otherwise (spawnChild)
  constructor(name, argv, env) {
    this.name = name;
    this.argv = argv;
    this.env = env;
    this.nextId = 0;
    this.pending = new Map();
    this.stderr = "";
    this.badLines = 0;
    this.notifications = 0;
    this.exit = null;
    this.exited = new Promise((resolve) => (this.resolveExit = resolve));
  }

  spawnChild() {
    return spawn(this.argv[0], this.argv.slice(1), {
      cwd: ROOT,
      env: this.env,
      stdio: ["pipe", "pipe", "pipe"],
      detached: true, // own process group, so cleanup can kill it whole
    });
  }

  start() {
    this.t0 = performance.now();
    const child = this.spawnChild();
    this.child = child;
    this.pid = child.pid;
    live.add(this);
    lineReader(child.stdout, (line) => this.onLine(line));
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
    const why = err ? `spawn failed: ${err.message}` : `worker exited (code ${code}, signal ${signal})`;
    for (const [id, p] of this.pending) {
      this.pending.delete(id);
      p.reject(new Error(`${this.name}: ${p.method}: ${why}`));
    }
    this.resolveExit(this.exit);
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
    } else if ("id" in msg && ("result" in msg || "error" in msg)) {
      const p = this.pending.get(msg.id);
      if (!p) {
        this.badLines++;
        return;
      }
      this.pending.delete(msg.id);
      p.resolve({ msg, t, sent: p.sent });
    } else if (typeof msg.method === "string" && "id" in msg && msg.id !== null) {
      // worker->host request: the benchmarks offer no host services
      this.write(JSON.stringify({ jsonrpc: "2.0", id: msg.id, error: { code: -32601, message: `Unknown method: ${msg.method}` } }) + "\n");
    } else {
      this.notifications++; // log, execute.log
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
    if (this.exit) entry.reject(new Error(`${this.name}: ${method}: the worker is not running`));
    else this.pending.set(id, entry);
    return { id, line, promise, entry };
  }

  write(data) {
    if (this.exit || !this.child.stdin.writable) return false;
    this.child.stdin.write(data);
    return true;
  }

  // { msg: the reply, t: when it was read, sent: when the request was written };
  // rejects on no reply within timeoutMs or the worker's exit
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

  // /proc status of the worker (procStatus)
  status() {
    return procStatus(this.pid);
  }

  // shutdown as the host does: request, then wait for exit; kill on deadline.
  async shutdown() {
    if (this.exit) return { replied: false, ...this.exit, ...(await this.afterExit()) };
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
      return { replied, replyError, code: null, signal: "SIGKILL", forced: true, ...(await this.afterExit()) };
    }
    return { replied, replyError, code: exit.code, signal: exit.signal, forced: false, ...(await this.afterExit()) };
  }

  // what shutdown adds to its report once the worker is gone (nothing here)
  async afterExit() {
    return {};
  }

  kill() {
    if (!this.exit) killGroup(this.child);
  }
}

// Kill every worker still running.
export function killWorkers() {
  for (const w of live) w.kill();
}

// Run a benchmark's main, calling killAll on every way out: the end of main,
// exit, SIGINT, SIGTERM, SIGHUP, an uncaught error. The exit status is
// process.exitCode once main resolves, 1 when it fails, 130 on a signal.
export function runBench(name, killing, killAll, main) {
  process.on("exit", killAll);
  for (const sig of ["SIGINT", "SIGTERM", "SIGHUP"]) {
    process.on(sig, () => {
      process.stderr.write(`\n${name}: ${sig}, killing ${killing}\n`);
      killAll();
      process.exit(130);
    });
  }
  process.on("uncaughtException", (err) => {
    process.stderr.write(`${name}: ${err.stack ?? err}\n`);
    killAll();
    process.exit(1);
  });
  process.on("unhandledRejection", (err) => {
    process.stderr.write(`${name}: unhandled rejection: ${err?.stack ?? err}\n`);
    killAll();
    process.exit(1);
  });
  main().then(
    () => {
      killAll();
      process.exit(process.exitCode ?? 0);
    },
    (err) => {
      process.stderr.write(`${name}: ${err?.clear ? err.message : err?.stack ?? err}\n`);
      killAll();
      process.exit(1);
    },
  );
}

// an error whose message says it all: reported without a stack
export function clearError(message) {
  const err = new Error(message);
  err.clear = true;
  return err;
}

// ---------------------------------------------------------------------------
// helpers

export function withDeadline(promise, ms, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: no result within ${ms} ms`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

export function quantile(values, q) {
  if (values.length === 0) return null;
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1))];
}

// a path relative to the repository root when inside it, else absolute
export function showPath(p) {
  const rel = path.relative(ROOT, p);
  return rel.startsWith("..") || path.isAbsolute(rel) ? p : rel || p;
}

export function log(msg) {
  process.stdout.write(`${msg}\n`);
}

// ---------------------------------------------------------------------------
// report

export function fmtMs(ms) {
  if (ms == null) return "-";
  if (ms >= 1000) return `${(ms / 1000).toFixed(2)} s`;
  if (ms >= 10) return `${ms.toFixed(1)} ms`;
  return `${ms.toFixed(2)} ms`;
}
export function fmtKb(kb) {
  return kb == null ? "-" : `${(kb / 1024).toFixed(1)} MB`;
}
export function fmtRatio(o, p) {
  if (o == null || p == null || o <= 0) return "-";
  const r = p / o;
  return r >= 10 ? `${r.toFixed(0)}x` : `${r.toFixed(2)}x`;
}

// "node v22.0.0  8 CPU  Linux 6.8.0": the machine, for the first line of a run
export function machineLine() {
  return `node ${process.version}  ${os.cpus().length} CPU  ${os.type()} ${os.release()}`;
}

// the machine, for a report
export function machineInfo() {
  return { node: process.version, cpus: os.cpus().length, cpuModel: os.cpus()[0]?.model, kernel: os.release(), totalMemMb: Math.round(os.totalmem() / 2 ** 20) };
}

// The rows as a table of aligned columns ({head, left, get(row)}): a blank
// line, the heads, a rule, one line a row.
export function printColumns(cols, rows) {
  const body = rows.map((r) => cols.map((c) => c.get(r)));
  const widths = cols.map((c, i) => Math.max(c.head.length, ...body.map((b) => b[i].length)));
  const line = (vals) => vals.map((v, i) => (cols[i].left ? v.padEnd(widths[i]) : v.padStart(widths[i]))).join("  ").trimEnd();
  log("");
  log(line(cols.map((c) => c.head)));
  log(widths.map((w) => "-".repeat(w)).join("  "));
  for (const b of body) log(line(b));
}

export function writeReport(out, report) {
  mkdirSync(path.dirname(out), { recursive: true });
  writeFileSync(out, JSON.stringify(report, null, 2) + "\n");
  log(`\nresults written to ${path.relative(process.cwd(), out) || out}`);
}
