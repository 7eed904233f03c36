#!/usr/bin/env node
// Worker benchmark: provider-host (ours: the binary alone; shim: the packaged
// plugin's dist/worker.js forked by Node, as Paperclip starts it) against a Node
// worker built on @paperclipai/plugin-sdk (peer), side by side in one run. It
// drives each worker the way the Paperclip host does (NDJSON JSON-RPC 2.0 over
// stdio pipes) and prints ratios. It is a measurement, not a test: the exit
// status says only whether the driver itself ran.
//
//   node bench/worker_bench.mjs [--quick] [--only=ours|shim|peer] [--no-floor]
//        [--n=20] [--calls=2000] [--warmup=100] [--execs=1000] [--direct] [--out=FILE]
//
// PROVIDER_HOST overrides the path of our binary (relative to the repo root).
// The shim candidate packages that binary into bench/results/pkg-local first.

import { execFileSync, fork } from "node:child_process";
import { randomUUID } from "node:crypto";
import { existsSync, readdirSync, readFileSync, readlinkSync, realpathSync, rmSync } from "node:fs";
import path from "node:path";
import { performance } from "node:perf_hooks";
import {
  BENCH_DIR,
  CALL_TIMEOUT_MS,
  INIT_TIMEOUT_MS,
  ROOT,
  Worker,
  clearError,
  fmtKb,
  fmtMs,
  fmtRatio,
  hostEnv,
  initializeParams,
  killWorkers,
  log,
  machineInfo,
  machineLine,
  printColumns,
  procStatus,
  quantile,
  runBench,
  showPath,
  sleep,
  withDeadline,
  writeReport,
} from "./lib.mjs";

const PHASE_TIMEOUT_MS = 30_000; // any one phase of one candidate
const IDLE_WAIT_MS = 500;
const RSS_SAMPLE_MS = 50;
const FD_WARN_BELOW = 4096;
const PACKAGE_TIMEOUT_MS = 60_000; // provider-host package, before measuring
const PKG_DIR = path.join(BENCH_DIR, "results", "pkg-local");
const CANDIDATES = ["ours", "shim", "peer"];

const TARGETS = {
  initMedian: { text: ">= 30x faster", check: (o, p) => p / o >= 30 },
  idleRss: { text: ">= 15x smaller", check: (o, p) => p / o >= 15 },
  rttMedian: { text: ">= 5x faster", check: (o, p) => p / o >= 5 },
  sleepWall: { text: "< 1.5 s", check: (o) => o < 1500 },
  sleepHwm: { text: "< 64 MB", check: (o) => o < 64 * 1024 },
  sleepMaxRss: { text: "< 64 MB", check: (o) => o < 64 * 1024 },
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
        if (!CANDIDATES.includes(value)) usage("--only must be ours, shim or peer");
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
    "usage: node bench/worker_bench.mjs [--quick] [--only=ours|shim|peer] [--no-floor] [--n=N] [--calls=N] [--warmup=N] [--execs=N] [--direct] [--out=FILE]\n" +
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

function invocation() {
  return { id: randomUUID(), scope: { companyId: COMPANY_ID } };
}

// What every environment call carries.
function base() {
  return { driverKey: "local", companyId: COMPANY_ID, environmentId: ENVIRONMENT_ID, issueId: null, config: { ...DRIVER_CONFIG } };
}

function acquireParams() {
  return {
    ...base(),
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
    ...base(),
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
    ...base(),
    providerLeaseId: lease.providerLeaseId,
    leaseMetadata: storedLeaseMetadata(lease),
  };
}

// ---------------------------------------------------------------------------
// processes and their memory

// The packaged native binary (bench/results/pkg-local/bin/provider-host, as
// /proc/<pid>/exe shows it), set once the package is written. The shim's native
// worker is the shim's own pid once it has replaced itself (execve), else the
// shim's direct child that runs it.
let nativeExe = null;
// native workers seen behind a shim, killed on exit even if their shim is gone
const natives = new Set();

function exeOf(pid) {
  try {
    return readlinkSync(`/proc/${pid}/exe`);
  } catch {
    return null; // gone, a zombie, or not ours to read
  }
}

function childrenOf(pid) {
  const out = [];
  let tasks;
  try {
    tasks = readdirSync(`/proc/${pid}/task`);
  } catch {
    return out;
  }
  for (const tid of tasks) {
    try {
      for (const c of readFileSync(`/proc/${pid}/task/${tid}/children`, "utf8").split(" ")) if (c.trim()) out.push(Number(c));
    } catch {
      // the thread ended
    }
  }
  return out;
}

// The processes that make up one worker, found in its process tree: the worker's
// own pid and, unless that pid runs the packaged binary itself, any direct child
// running it (the native worker of a shim that spawned it). Everything else below
// it is not the worker: the commands it runs (bash, sleep) and its own forks
// before they exec (whose exe is still the worker's: the unpackaged binary for
// ours, node for the peer, the packaged binary for a shim that replaced itself,
// and for a spawning shim grandchildren). The same rule applies to every
// candidate; only a spawning shim has such a child.
function workerPids(pid) {
  const pids = [pid];
  if (nativeExe && exeOf(pid) !== nativeExe) {
    for (const c of childrenOf(pid)) if (exeOf(c) === nativeExe) pids.push(c);
  }
  return pids;
}

function killNative(pid) {
  if (exeOf(pid) !== nativeExe) {
    natives.delete(pid); // gone (or the pid is no longer ours)
    return false;
  }
  try {
    process.kill(pid, "SIGKILL");
  } catch {
    // already gone
  }
  return true;
}

// ---------------------------------------------------------------------------
// a spawned worker, spoken to like the host does

class WorkerProc extends Worker {
  // cand: { name, argv } spawned as is, or { name, argv, fork: module } started
  // with child_process.fork as Paperclip starts a plugin worker
  constructor(cand) {
    super(cand.name, cand.argv, hostEnv(PLUGIN_DB_ID));
    this.forkModule = cand.fork ?? null;
    this.nativePid = null;
  }

  spawnChild() {
    if (!this.forkModule) return super.spawnChild();
    // the host's call (worker-protocol.md 1.1) but for detached, which only
    // puts the shim in its own process group (its native child joins it), so
    // cleanup can kill both at once
    return fork(this.forkModule, [], {
      cwd: ROOT,
      env: this.env,
      stdio: ["pipe", "pipe", "pipe", "ipc"],
      execArgv: [],
      detached: true,
    });
  }

  // The shim's native worker: the shim's pid once it has replaced itself with the
  // packaged binary, else its direct child running it. Looked up once the worker
  // has answered (so it has started), kept for cleanup.
  findNative() {
    if (!this.forkModule || this.nativePid || this.exit || !nativeExe) return this.nativePid;
    const pid = this.replaced() ? this.pid : childrenOf(this.pid).find((c) => exeOf(c) === nativeExe);
    if (pid) {
      this.nativePid = pid;
      natives.add(pid);
    }
    return this.nativePid;
  }

  // The shim became the native worker (process.execve or the package's execve.node).
  replaced() {
    return Boolean(this.forkModule && nativeExe && exeOf(this.pid) === nativeExe);
  }

  // VmRSS, VmHWM and Threads summed over the worker's processes (workerPids).
  // Empty when the worker is gone.
  status() {
    const out = { VmRSS: 0, VmHWM: 0, Threads: 0, pids: [] };
    for (const pid of workerPids(this.pid)) {
      const st = procStatus(pid);
      if (st.VmRSS == null) continue;
      out.VmRSS += st.VmRSS;
      out.VmHWM += st.VmHWM ?? 0;
      out.Threads += st.Threads ?? 0;
      out.pids.push(pid);
    }
    return out.pids.length ? out : {};
  }

  // the limit of the process that runs the commands (for the shim: the native worker)
  openFilesLimit() {
    try {
      const pid = this.findNative() ?? this.pid;
      const m = /^Max open files\s+(\S+)\s+(\S+)/m.exec(readFileSync(`/proc/${pid}/limits`, "utf8"));
      return m ? { soft: m[1], hard: m[2] } : null;
    } catch {
      return null;
    }
  }

  // After the shim has exited its native worker must be gone too (the shim
  // waits for it; PR_SET_PDEATHSIG covers a killed shim). Wait up to 2 s for
  // it, then kill it and say so.
  async afterExit() {
    if (!this.forkModule) return {};
    if (!this.nativePid) return { nativeLeft: null };
    const until = performance.now() + 2_000;
    while (exeOf(this.nativePid) === nativeExe && performance.now() < until) await sleep(20);
    const left = killNative(this.nativePid);
    natives.delete(this.nativePid);
    return { nativeLeft: left };
  }

  // the worker's process group (the shim's native worker is in it), then the
  // native worker by pid
  kill() {
    if (!this.pid) return;
    if (!this.exit) this.findNative();
    super.kill();
    if (this.nativePid) killNative(this.nativePid);
  }
}

function killAll() {
  killWorkers();
  for (const pid of natives) killNative(pid);
}

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

function selfOpenFilesLimit() {
  try {
    const m = /^Max open files\s+(\S+)\s+(\S+)/m.exec(readFileSync("/proc/self/limits", "utf8"));
    return m ? { soft: m[1], hard: m[2] } : null;
  } catch {
    return null;
  }
}

// ---------------------------------------------------------------------------
// phases

// (a) spawn -> initialize reply, fresh process each time
async function measureInit(cand) {
  const w = new WorkerProc(cand).start();
  try {
    const { msg, t } = await w.call("initialize", initializeParams(MANIFEST), INIT_TIMEOUT_MS);
    if (msg.error || msg.result?.ok !== true) {
      throw new Error(`initialize failed: ${JSON.stringify(msg.error ?? msg.result)}`);
    }
    const ms = t - w.t0;
    w.findNative();
    const down = await w.shutdown();
    return { ms, shutdownCode: down.code, nativeLeft: down.nativeLeft };
  } catch (err) {
    w.kill();
    throw new Error(`${cand.name}: ${err.message}${w.stderr ? `\n--- worker stderr ---\n${w.stderr}` : ""}`);
  }
}

async function phaseInit(cands, n, results) {
  log(`\n(a) spawn -> initialize reply, ${n} fresh spawns each (alternating)`);
  for (const c of cands) results[c.name].init = { samples: [], failures: 0, badShutdowns: 0, streak: 0, ...(c.fork ? { nativesLeft: 0 } : {}) };
  for (let i = 0; i < n; i++) {
    const order = i % 2 === 0 ? cands : [...cands].reverse();
    for (const c of order) {
      const r = results[c.name].init;
      if (r.streak >= 3) continue; // three failures in a row: stop spawning it
      try {
        const { ms, shutdownCode, nativeLeft } = await withDeadline(measureInit(c), PHASE_TIMEOUT_MS, `${c.name} initialize #${i + 1}`);
        r.samples.push(ms);
        r.streak = 0;
        if (shutdownCode !== 0) r.badShutdowns++;
        if (nativeLeft) r.nativesLeft++;
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
    const extra = `${r.badShutdowns ? `  bad shutdowns ${r.badShutdowns}` : ""}${r.nativesLeft ? `  native workers left behind (killed) ${r.nativesLeft}` : ""}`;
    log(`  ${c.name.padEnd(5)} median ${fmtMs(r.medianMs)}  p90 ${fmtMs(r.p90Ms)}  min ${fmtMs(r.minMs)}  failures ${r.failures}${extra}`);
  }
}

// (b), (c), (d) on one long-lived worker
async function phaseLong(cand, opts, res) {
  const w = new WorkerProc(cand).start();
  try {
    await withDeadline(w.request("initialize", initializeParams(MANIFEST), INIT_TIMEOUT_MS), PHASE_TIMEOUT_MS, `${cand.name} initialize`);
    if (cand.fork && !w.findNative()) throw new Error(`no native worker (${nativeExe}) found as the shim (pid ${w.pid}) or its child`);
    if (cand.fork) res.shimReplaced = w.replaced();
    res.openFilesLimit = w.openFilesLimit();

    // (b) idle RSS, summed over the worker's processes
    await sleep(IDLE_WAIT_MS);
    const idle = w.status();
    const procs = (idle.pids ?? []).map((pid) => ({ pid, exe: exeOf(pid), rssKb: procStatus(pid).VmRSS ?? null }));
    res.idle = { rssKb: idle.VmRSS ?? null, threads: idle.Threads ?? null, processes: procs };
    const expected = res.shimReplaced ? 1 : 2;
    if (cand.fork && procs.length !== expected) {
      throw new Error(`idle: expected ${res.shimReplaced ? "the native worker alone" : "the shim and its native worker"}, found ${procs.length} process(es)`);
    }
    const split = procs.length > 1 ? ` (${procs.map((p) => `${path.basename(p.exe ?? "?")} ${fmtKb(p.rssKb)}`).join(" + ")})` : "";
    log(`  ${cand.name.padEnd(5)} (b) idle RSS ${fmtKb(res.idle.rssKb)}${split}  threads ${res.idle.threads ?? "?"}  open-files limit ${fmtLimit(res.openFilesLimit)}`);

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
    const native = res.shutdown.nativeLeft === undefined ? "" : res.shutdown.nativeLeft === null ? ", native worker never seen" : res.shutdown.nativeLeft ? ", native worker left behind (killed)" : ", native worker gone";
    log(
      `  ${cand.name.padEnd(5)} shutdown: reply ${res.shutdown.replied ? "ok" : `missing (${res.shutdown.replyError ?? "exited"})`}, exit code ${res.shutdown.code}${res.shutdown.signal ? `, signal ${res.shutdown.signal}` : ""}${res.shutdown.forced ? " (killed)" : ""}${native}`,
    );
  }
}

// floor: initialize already measured in (a); here only the round trips
async function phaseFloor(cand, opts, res) {
  const w = new WorkerProc(cand).start();
  try {
    await withDeadline(w.request("initialize", initializeParams(MANIFEST), INIT_TIMEOUT_MS), PHASE_TIMEOUT_MS, "floor initialize");
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

  const end = w.status(); // just before shutdown; VmHWM is each process's own peak, summed
  return {
    count: opts.execs,
    payloadBytes,
    wallMs: last - t0,
    firstReplyMs: Number.isFinite(first) ? first - t0 : null,
    hwmKb: end.VmHWM ?? null,
    hwmProcesses: end.pids?.length ?? 0,
    maxRssKb,
    failures,
    failureReasons: Object.fromEntries(reasons),
    releaseError,
    leaseDirLeft,
  };
}

// ---------------------------------------------------------------------------
// report

function fmtUs(ms) {
  if (ms == null) return "-";
  return ms >= 1 ? fmtMs(ms) : `${(ms * 1000).toFixed(0)} us`;
}
function fmtLimit(l) {
  return l ? `${l.soft}/${l.hard}` : "?";
}

function buildRows(results) {
  const f = results.floor ?? {};
  const row = (label, key, get, fmt, ratio = true, floor = false) => {
    const v = Object.fromEntries(CANDIDATES.map((c) => [c, results[c] ? get(results[c]) ?? null : null]));
    const target = TARGETS[key];
    // a target is about our worker: checked for ours and for shim, against the peer
    const met = (c) => (target && v[c] != null && (v.peer != null || key.startsWith("sleep")) ? target.check(v[c], v.peer) : null);
    const ratioOf = (c) => (ratio && v[c] != null && v.peer != null && v[c] > 0 ? v.peer / v[c] : null);
    const fv = floor ? get(f) ?? null : null;
    return {
      metric: label,
      key,
      ours: v.ours,
      shim: v.shim,
      peer: v.peer,
      floor: fv,
      ratio: ratioOf("ours"),
      ratioShim: ratioOf("shim"),
      oursText: results.ours ? fmt(v.ours) : "",
      shimText: results.shim ? fmt(v.shim) : "",
      peerText: results.peer ? fmt(v.peer) : "",
      floorText: floor ? fmt(fv) : "",
      ratioText: ratio ? fmtRatio(v.ours, v.peer) : "",
      ratioShimText: ratio ? fmtRatio(v.shim, v.peer) : "",
      target: target?.text ?? "",
      met: met("ours"),
      metShim: met("shim"),
    };
  };
  const count = (v) => (v == null ? "-" : String(v));
  return [
    row("initialize latency, median", "initMedian", (r) => r.init?.medianMs, fmtMs, true, true),
    row("initialize latency, p90", "initP90", (r) => r.init?.p90Ms, fmtMs, true, true),
    row("idle RSS (500 ms after init)", "idleRss", (r) => r.idle?.rssKb, fmtKb),
    row("validateConfig RTT, median", "rttMedian", (r) => r.rtt?.medianMs, fmtUs, true, true),
    row("validateConfig RTT, p90", "rttP90", (r) => r.rtt?.p90Ms, fmtUs, true, true),
    row("N x sleep 1: wall", "sleepWall", (r) => r.sleeps?.wallMs, fmtMs),
    row("N x sleep 1: VmHWM", "sleepHwm", (r) => r.sleeps?.hwmKb, fmtKb),
    row("N x sleep 1: max sampled VmRSS", "sleepMaxRss", (r) => r.sleeps?.maxRssKb, fmtKb),
    row("N x sleep 1: failures", "sleepFailures", (r) => r.sleeps?.failures, count, false),
    row("initialize failures", "initFailures", (r) => r.init?.failures, count, false),
    row("shutdown exit code", "shutdownCode", (r) => r.shutdown?.code, (v) => (v === undefined ? "-" : String(v)), false),
  ];
}

// What the shim did in this run: replaced itself with the binary (one process) or spawned it.
function shimFoot(r) {
  const how =
    r.shimReplaced === true
      ? "replaced itself with the binary (process.execve, else the package's execve.node): same pid, one process"
      : r.shimReplaced === false
        ? "spawned the binary (no way to execve, or PROVIDER_HOST_SHIM=spawn): a Node plus the native worker, memory summed"
        : "was not measured";
  const has = typeof process.execve === "function" ? "has" : "lacks";
  return `shim = the packaged dist/worker.js forked by Node as Paperclip forks it (this Node, ${process.version}, ${has} process.execve); it ${how}`;
}

function printTable(rows, execs, results) {
  const shown = CANDIDATES.filter((c) => results[c]);
  const verdict = (r) => {
    if (!r.target) return "";
    const parts = [];
    if (r.met != null) parts.push(`ours ${r.met ? "met" : "not met"}`);
    if (r.metShim != null) parts.push(`shim ${r.metShim ? "met" : "not met"}`);
    return parts.length ? `${r.target}  (${parts.join(", ")})` : r.target;
  };
  const cols = [
    { head: "metric", left: true, get: (r) => r.metric.replace("N x", `${execs} x`) },
    ...shown.map((c) => ({ head: c, get: (r) => r[`${c}Text`] })),
    ...(results.ours && results.peer ? [{ head: "peer/ours", get: (r) => r.ratioText }] : []),
    ...(results.shim && results.peer ? [{ head: "peer/shim", get: (r) => r.ratioShimText }] : []),
    ...(results.floor ? [{ head: "floor", get: (r) => r.floorText }] : []),
    { head: "target", left: true, get: verdict },
  ];
  printColumns(cols, rows);
  const foot = [
    results.ours && "ours = the native binary alone, spawned directly: what the shim turns into when it can execve",
    results.shim && shimFoot(results.shim),
    (results.ours || results.shim) && results.peer && `${[results.ours && "peer/ours", results.shim && "peer/shim"].filter(Boolean).join(", ")}: how many times faster or smaller than the peer`,
    results.shim && results.shim.shimReplaced === false && "VmHWM of the shim is the sum of each process's own peak",
  ].filter(Boolean);
  log("");
  for (const f of foot) log(`  ${f}`);
}

// ---------------------------------------------------------------------------
// main

// The shim candidate runs the plugin package as Paperclip installs it, written
// fresh for every run: `provider-host package local --out bench/results/pkg-local`.
function packageShim(binary) {
  rmSync(PKG_DIR, { recursive: true, force: true });
  try {
    execFileSync(binary, ["package", "local", "--out", PKG_DIR], { cwd: ROOT, stdio: ["ignore", "pipe", "pipe"], timeout: PACKAGE_TIMEOUT_MS, encoding: "utf8" });
  } catch (err) {
    const why = err.signal ? `killed by ${err.signal}${err.code === "ETIMEDOUT" ? ` after ${PACKAGE_TIMEOUT_MS} ms` : ""}` : err.status != null ? `exit code ${err.status}` : err.message;
    throw clearError(`shim: \`${showPath(binary)} package local --out ${path.relative(ROOT, PKG_DIR)}\` failed (${why})${err.stderr ? `\n${String(err.stderr).trimEnd()}` : ""}`);
  }
  const bin = path.join(PKG_DIR, "bin", "provider-host");
  for (const f of [path.join(PKG_DIR, "dist", "worker.js"), bin]) {
    if (!existsSync(f)) throw clearError(`shim: the package in ${path.relative(ROOT, PKG_DIR)} has no ${path.relative(PKG_DIR, f)}`);
  }
  nativeExe = realpathSync(bin);
}

async function main() {
  const opts = parseArgs(process.argv.slice(2));
  const oursPath = path.resolve(ROOT, process.env.PROVIDER_HOST || "build/provider-host");
  const shimModule = path.join(PKG_DIR, "dist", "worker.js");
  const all = [
    { name: "ours", argv: [oursPath, "worker", "--provider", "local"] },
    { name: "shim", argv: [process.execPath, shimModule], fork: shimModule },
    { name: "peer", argv: [process.execPath, path.join(BENCH_DIR, "peer", "worker.mjs")] },
  ];
  const cands = opts.only ? all.filter((c) => c.name === opts.only) : all;
  const notes = [];
  const needBinary = cands.filter((c) => c.name !== "peer").map((c) => c.name);
  if (needBinary.length && !existsSync(oursPath)) {
    process.stderr.write(
      `worker_bench: our binary ${showPath(oursPath)} does not exist: build it (or set PROVIDER_HOST); ${needBinary.join(" and ")} ${needBinary.length > 1 ? "need" : "needs"} it. To measure the peer alone: --only=peer\n`,
    );
    process.exit(2);
  }
  if (cands.some((c) => c.fork)) packageShim(oursPath);

  const limit = selfOpenFilesLimit();
  log(`worker benchmark  ${machineLine()}`);
  const rel = showPath;
  log(`candidates: ${cands.map((c) => `${c.name} = ${c.fork ? `node fork(${rel(c.fork)}) -> ${rel(nativeExe)} worker --provider local` : c.argv.map(rel).join(" ")}`).join(";  ")}`);
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
  printTable(rows, opts.execs, results);
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
    machine: machineInfo(),
    options: { quick: opts.quick, only: opts.only, n: opts.n, calls: opts.calls, warmup: opts.warmup, execs: opts.execs },
    openFilesLimit: limit,
    notes,
    candidates: results,
    rows: rows.map(({ metric, key, ours, shim, peer, ratio, ratioShim, floor, target, met, metShim }) => ({ metric, key, ours, shim, peer, ratio, ratioShim, floor, target, met, metShim })),
  };
  writeReport(opts.out, report);
}

runBench("worker_bench", "workers", killAll, main);
