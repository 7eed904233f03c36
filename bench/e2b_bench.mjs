#!/usr/bin/env node
// E2B benchmark: our E2B provider (build/provider-host worker --provider e2b,
// providers/e2b: REST + envd spoken directly) against upstream's E2B plugin as a
// Node worker on the real `e2b` SDK (bench/peer/e2b_worker.mjs), both on ONE fake
// E2B (spec/support/fake_e2b_main.lua) started for the run, on loopback. Each
// worker is driven as the Paperclip host drives it (NDJSON JSON-RPC 2.0 over
// stdio pipes, initialize first). Measured: wall time and the HTTP requests the
// fake saw, for sequential executes on one lease (with and without stdin) and
// for leases in parallel. It is a measurement, not a test: the exit status says
// only whether the driver itself ran.
//
//   node bench/e2b_bench.mjs [--quick] [--only=ours|peer] [--no-floor] [--delay=MS]
//        [--seq=200] [--stdin-execs=50] [--leases=50] [--out=FILE]
//
// PROVIDER_HOST overrides the path of our binary (relative to the repo root); it
// also runs the fake, so it is needed even for --only=peer.

import { spawn } from "node:child_process";
import { randomUUID } from "node:crypto";
import { existsSync, readFileSync } from "node:fs";
import path from "node:path";
import { performance } from "node:perf_hooks";
import {
  BENCH_DIR,
  CALL_TIMEOUT_MS,
  INIT_TIMEOUT_MS,
  ROOT,
  Worker,
  fmtKb,
  fmtMs,
  fmtRatio,
  hostEnv,
  initializeParams,
  killGroup,
  killWorkers,
  lineReader,
  log,
  machineInfo,
  machineLine,
  printColumns,
  quantile,
  runBench,
  showPath,
  sleep,
  withDeadline,
  writeReport,
} from "./lib.mjs";

const FAKE_SCRIPT = path.join(ROOT, "spec", "support", "fake_e2b_main.lua");
const PEER_SCRIPT = path.join(BENCH_DIR, "peer", "e2b_worker.mjs");

const FAKE_START_TIMEOUT_MS = 15_000;
const CONTROL_TIMEOUT_MS = 10_000; // one control request to the fake
const EXEC_TIMEOUT_MS = 30_000; // params.timeoutMs of every execute
const SERIES_TIMEOUT_MS = 180_000; // one series, or the parallel phase, of one candidate
const SETTLE_MS = 200; // after a series, before the fake's request log is read
const CANDIDATES = ["ours", "peer"];

// ---------------------------------------------------------------------------
// options

function parseArgs(argv) {
  const opts = { quick: false, only: null, floor: true, delayMs: 0, seq: null, stdinExecs: null, leases: null, out: null };
  for (const arg of argv) {
    const eq = arg.indexOf("=");
    const [key, value] = eq === -1 ? [arg, null] : [arg.slice(0, eq), arg.slice(eq + 1)];
    const num = () => {
      const v = Number(value);
      if (!Number.isInteger(v) || v < 1) usage(`${key} needs a positive integer`);
      return v;
    };
    switch (key) {
      case "--quick": opts.quick = true; break;
      case "--no-floor": opts.floor = false; break;
      case "--only":
        if (![...CANDIDATES, "shim"].includes(value)) usage("--only must be ours or peer");
        opts.only = value;
        break;
      case "--delay": {
        const v = Number(value);
        if (!Number.isFinite(v) || v < 0 || v > 1000) usage("--delay needs milliseconds, 0 to 1000");
        opts.delayMs = v;
        break;
      }
      case "--seq": opts.seq = num(); break;
      case "--stdin-execs": opts.stdinExecs = num(); break;
      case "--leases": opts.leases = num(); break;
      case "--out": opts.out = path.resolve(value || usage("--out needs a file")); break;
      case "-h": case "--help": usage(); break;
      default: usage(`unknown option ${arg}`);
    }
  }
  opts.seq ??= opts.quick ? 50 : 200;
  opts.stdinExecs ??= opts.quick ? 20 : 50;
  opts.leases ??= opts.quick ? 20 : 50;
  opts.out ??= path.join(BENCH_DIR, "results", "e2b.json");
  return opts;
}

function usage(problem) {
  if (problem) process.stderr.write(`e2b_bench: ${problem}\n`);
  process.stderr.write(
    "usage: node bench/e2b_bench.mjs [--quick] [--only=ours|peer] [--no-floor] [--delay=MS] [--seq=N] [--stdin-execs=N] [--leases=N] [--out=FILE]\n" +
      "  --seq          sequential executes of sh -c \"echo hi\" on one lease (200; 50 with --quick)\n" +
      "  --stdin-execs  then sequential executes of sh -c cat with a small stdin (50; 20 with --quick)\n" +
      "  --leases       concurrent acquire -> execute -> release flows (50; 20 with --quick)\n" +
      "  --delay        the fake waits MS before answering each request, as a network round trip would (0)\n" +
      "  --no-floor     skip the floor (the same process for one bare envd Start from the driver)\n",
  );
  process.exit(problem ? 2 : 0);
}

// ---------------------------------------------------------------------------
// what the host sends

const PLUGIN_DB_ID = randomUUID();
const COMPANY_ID = randomUUID();
const ENVIRONMENT_ID = randomUUID();
const PLUGIN_KEY = "paperclip.e2b-sandbox-provider";

// upstream's manifest (providers.md 1.1); the workers only read what they need
const MANIFEST = {
  id: PLUGIN_KEY,
  apiVersion: 1,
  version: "0.1.0",
  displayName: "E2B Cloud Sandbox",
  description: "Provisions E2B cloud sandboxes with configurable templates, timeouts, and lease reuse.",
  author: "Paperclip",
  categories: ["automation"],
  capabilities: ["environment.drivers.register"],
  entrypoints: { worker: "./dist/worker.js" },
  environmentDrivers: [
    {
      driverKey: "e2b",
      kind: "sandbox_provider",
      displayName: "E2B Cloud Sandbox",
      configSchema: {
        type: "object",
        properties: {
          template: { type: "string", default: "base" },
          apiKey: { type: "string", format: "secret-ref" },
          timeoutMs: { type: "number", default: 3600000 },
          reuseLease: { type: "boolean", default: false },
        },
      },
    },
  ],
};

let driverConfig = null; // set once the fake is up: its API key goes in config, as the host resolves the secret

// The host's minimal environment (worker-protocol.md 1.2), plus the E2B SDK's own
// variables that point a client at the fake. Both workers read the same ones:
// the `e2b` SDK (ConnectionConfig) and providers/e2b (api.lua) alike.
function workerEnv(fake) {
  return hostEnv(PLUGIN_DB_ID, { E2B_API_URL: fake.apiUrl, E2B_SANDBOX_URL: fake.sandboxUrl, E2B_DOMAIN: fake.domain });
}

function invocation() {
  return { paperclipInvocation: { id: randomUUID(), scope: { companyId: COMPANY_ID } } };
}

function base() {
  return { driverKey: "e2b", companyId: COMPANY_ID, environmentId: ENVIRONMENT_ID, issueId: null, config: { ...driverConfig } };
}

function acquireParams() {
  return { ...base(), runId: randomUUID(), workspaceMode: "isolated", agentId: randomUUID(), adapterType: "claude_local" };
}

// Lease metadata as the host stores it and sends it back on lease-bound calls.
function storedLeaseMetadata(lease) {
  return {
    driver: "sandbox",
    executionWorkspaceMode: "isolated",
    pluginId: PLUGIN_DB_ID,
    pluginKey: PLUGIN_KEY,
    sandboxProviderPlugin: true,
    provider: "e2b",
    ...(lease.metadata ?? {}),
  };
}

function executeParams(lease, command, args, stdin) {
  return {
    ...base(),
    lease: { providerLeaseId: lease.providerLeaseId, metadata: storedLeaseMetadata(lease), expiresAt: null },
    executionId: randomUUID(),
    command,
    args,
    cwd: lease.metadata?.remoteCwd,
    env: { PAPERCLIP_SANDBOX_EXEC_CHANNEL: "bench" },
    ...(stdin != null ? { stdin } : {}),
    timeoutMs: EXEC_TIMEOUT_MS,
  };
}

function releaseParams(lease) {
  return { ...base(), providerLeaseId: lease.providerLeaseId, leaseMetadata: storedLeaseMetadata(lease) };
}

// ---------------------------------------------------------------------------
// child processes: every one in its own process group, killed on exit

// Synchronous, for exit paths: true once pid has exited (gone, or a zombie).
function waitExitSync(pid, ms) {
  const tick = new Int32Array(new SharedArrayBuffer(4));
  for (const end = Date.now() + ms; Date.now() < end; Atomics.wait(tick, 0, 0, 20)) {
    try {
      if (readFileSync(`/proc/${pid}/stat`, "utf8").replace(/^.*\) /s, "").startsWith("Z")) return true;
    } catch {
      return true;
    }
  }
  return false;
}

// The workers first, then the fake: SIGTERM, so it kills its sandboxes'
// processes and removes their directories itself (up to 3 s), then SIGKILL to
// its group for anything left.
let fakeChild = null;
function killAll() {
  killWorkers();
  if (fakeChild && fakeChild.exitCode === null && fakeChild.signalCode === null) {
    try {
      process.kill(fakeChild.pid, "SIGTERM");
      waitExitSync(fakeChild.pid, 3_000);
    } catch {
      // already gone
    }
  }
  if (fakeChild) killGroup(fakeChild);
}

// ---------------------------------------------------------------------------
// the fake E2B: one for the whole run

class Fake {
  constructor(binary) {
    this.binary = binary;
    this.stderr = "";
    this.nextId = 0;
    this.pending = new Map();
    this.info = null;
    this.exit = null;
  }

  start() {
    const child = spawn(this.binary, [FAKE_SCRIPT], { cwd: ROOT, stdio: ["pipe", "pipe", "pipe"], detached: true });
    this.child = child;
    fakeChild = child;
    const ready = new Promise((resolve, reject) => {
      this.onInfo = resolve;
      this.onFail = reject;
    });
    lineReader(child.stdout, (line) => this.onLine(line));
    child.stderr.setEncoding("utf8");
    child.stderr.on("data", (chunk) => {
      this.stderr = (this.stderr + chunk).slice(-8000);
    });
    child.stdin.on("error", () => {});
    this.exited = new Promise((resolve) => {
      child.on("error", (err) => {
        this.exit = { error: err.message };
        this.onFail(new Error(`the fake E2B did not start: ${err.message}`));
        resolve(this.exit);
      });
      child.on("exit", (code, signal) => {
        this.exit = { code, signal };
        const why = `the fake E2B exited (code ${code}, signal ${signal})${this.stderr ? `\n--- fake stderr ---\n${this.stderr.trimEnd()}` : ""}`;
        this.onFail(new Error(why));
        for (const p of this.pending.values()) p.reject(new Error(why));
        this.pending.clear();
        resolve(this.exit);
      });
    });
    return withDeadline(ready, FAKE_START_TIMEOUT_MS, "the fake E2B's first line");
  }

  onLine(line) {
    let msg;
    try {
      msg = JSON.parse(line);
    } catch {
      return;
    }
    if (!this.info) {
      this.info = msg;
      this.onInfo(msg);
      return;
    }
    const p = this.pending.get(msg.id);
    if (!p) return;
    this.pending.delete(msg.id);
    if (msg.ok) p.resolve(msg.result);
    else p.reject(new Error(`fake control ${p.op}: ${msg.error}`));
  }

  control(op, fields = {}) {
    if (this.exit) return Promise.reject(new Error("the fake E2B is not running"));
    const id = ++this.nextId;
    const reply = new Promise((resolve, reject) => this.pending.set(id, { op, resolve, reject }));
    this.child.stdin.write(JSON.stringify({ id, op, ...fields }) + "\n");
    return withDeadline(reply, CONTROL_TIMEOUT_MS, `fake control ${op}`).finally(() => this.pending.delete(id));
  }

  // every request the fake has served so far: [{method, path, status, kind, sandbox_id}]
  requests() {
    return this.control("requests");
  }

  running() {
    return this.control("running");
  }

  // end of input stops it; SIGKILL to its group if it takes longer than 10 s
  async stop() {
    if (this.exit) return this.exit;
    this.child.stdin.end();
    const exit = await withDeadline(this.exited, 10_000, "fake exit").catch(() => null);
    if (exit) return exit;
    killGroup(this.child);
    return { code: null, signal: "SIGKILL", forced: true };
  }
}

// ---------------------------------------------------------------------------
// a worker, spoken to like the host does

class E2bWorker extends Worker {
  // every call carries the invocation, but initialize and shutdown
  request(method, params, timeoutMs = CALL_TIMEOUT_MS) {
    return super.request(method, params, timeoutMs, method === "initialize" || method === "shutdown" ? null : invocation());
  }
}

// ---------------------------------------------------------------------------
// helpers

// "POST /v2/sandboxes/{id}/connect": a request of the fake's log, its sandbox id generalised
function requestKey(r) {
  return `${r.method} ${r.path.replace(/\/sandboxes\/[^/]+/, (m) => (m === "/sandboxes/" ? m : "/sandboxes/{id}"))}`;
}

// How many requests of each kind, divided by `per` (executes, leases).
function breakdown(reqs, per) {
  const counts = new Map();
  for (const r of reqs) counts.set(requestKey(r), (counts.get(requestKey(r)) ?? 0) + 1);
  const out = {};
  for (const [k, n] of [...counts].sort((a, b) => b[1] - a[1] || a[0].localeCompare(b[0]))) out[k] = n / per;
  return out;
}

function fmtBreakdown(b) {
  const parts = Object.entries(b).map(([k, v]) => `${k} x${Number.isInteger(v) ? v : v.toFixed(2)}`);
  return parts.length ? parts.join(", ") : "none";
}

// Failures counted by reason.
class Failures {
  constructor() {
    this.count = 0;
    this.reasons = {};
  }
  add(why) {
    this.count++;
    const key = String(why).replace(/\(id \d+\)/, "(id N)").slice(0, 200);
    this.reasons[key] = (this.reasons[key] ?? 0) + 1;
  }
}

// Check one execute reply; returns the reason it is wrong, or null.
function checkExecute(msg, wantStdout) {
  if (msg.error) return `error ${msg.error.code}: ${msg.error.message}`;
  const r = msg.result;
  if (r?.exitCode !== 0 || r?.timedOut !== false) return `exitCode ${r?.exitCode} timedOut ${r?.timedOut} stderr ${JSON.stringify(String(r?.stderr ?? "").slice(0, 160))}`;
  if (r.stdout !== wantStdout) return `stdout ${JSON.stringify(String(r.stdout).slice(0, 80))}, expected ${JSON.stringify(wantStdout)}`;
  return null;
}

// ---------------------------------------------------------------------------
// phases

// Requests the fake sees while fn runs (read SETTLE_MS after it ends, so that a
// request still in flight is counted), fn's result, and fn's wall time.
async function measured(fake, fn) {
  const before = (await fake.requests()).length;
  const t0 = performance.now();
  const value = await fn();
  const wallMs = performance.now() - t0;
  await sleep(SETTLE_MS);
  const reqs = (await fake.requests()).slice(before);
  return { value, wallMs, reqs };
}

// What n sequential calls came to: wall time, latencies, requests, failures.
function seriesResult(n, wallMs, latencies, reqs, failures) {
  return {
    count: n,
    wallMs,
    medianMs: quantile(latencies, 0.5),
    p90Ms: quantile(latencies, 0.9),
    requests: reqs.length,
    requestsPerExecute: reqs.length / n,
    breakdown: breakdown(reqs, n),
    failures: failures.count,
    failureReasons: failures.reasons,
  };
}

// n sequential executes on one lease; stdinOf(i) null: none
async function series(w, fake, lease, n, command, args, stdinOf, wantOf) {
  const failures = new Failures();
  const latencies = [];
  const { wallMs, reqs } = await measured(fake, () =>
    withDeadline(
      (async () => {
        for (let i = 0; i < n; i++) {
          const t = performance.now();
          let msg;
          try {
            ({ msg } = await w.call("environmentExecute", executeParams(lease, command, args, stdinOf(i)), CALL_TIMEOUT_MS, invocation()));
          } catch (err) {
            failures.add(err.message);
            if (w.exit) throw err;
            continue;
          }
          latencies.push(performance.now() - t);
          const bad = checkExecute(msg, wantOf(i));
          if (bad) failures.add(bad);
        }
      })(),
      SERIES_TIMEOUT_MS,
      `${w.name}: ${n} sequential executes`,
    ),
  );
  return seriesResult(n, wallMs, latencies, reqs, failures);
}

// (1) one lease: acquire, the plain series, the stdin series, release
async function phaseSequential(w, fake, opts, res) {
  const acq = await measured(fake, () => w.request("environmentAcquireLease", acquireParams()));
  const lease = acq.value;
  if (!lease?.providerLeaseId) throw new Error(`${w.name}: acquire returned no lease: ${JSON.stringify(lease)}`);
  res.acquire = { wallMs: acq.wallMs, requests: acq.reqs.length, breakdown: breakdown(acq.reqs, 1) };
  log(`  ${w.name.padEnd(4)} acquire: ${fmtMs(acq.wallMs)}, ${acq.reqs.length} requests (${fmtBreakdown(res.acquire.breakdown)})`);

  res.seq = await series(w, fake, lease, opts.seq, "sh", ["-c", "echo hi"], () => null, () => "hi\n");
  // the process the last one started (for the floor): the fake's command log
  const started = (await fake.control("commands")).filter((c) => c.sandboxId === lease.providerLeaseId);
  const last = started[started.length - 1];
  if (last) res.seqProcess = { cmd: last.cmd, args: last.args };
  log(`  ${w.name.padEnd(4)} ${opts.seq} x sh -c "echo hi": wall ${fmtMs(res.seq.wallMs)}, median ${fmtMs(res.seq.medianMs)}, p90 ${fmtMs(res.seq.p90Ms)}, ${fmtNum(res.seq.requestsPerExecute)} requests/execute, failures ${res.seq.failures}`);

  const input = (i) => `bench stdin ${i}\n`;
  res.stdin = await series(w, fake, lease, opts.stdinExecs, "sh", ["-c", "cat"], input, input);
  log(`  ${w.name.padEnd(4)} ${opts.stdinExecs} x sh -c cat with stdin: wall ${fmtMs(res.stdin.wallMs)}, median ${fmtMs(res.stdin.medianMs)}, p90 ${fmtMs(res.stdin.p90Ms)}, ${fmtNum(res.stdin.requestsPerExecute)} requests/execute, failures ${res.stdin.failures}`);

  const rel = await measured(fake, () => w.request("environmentReleaseLease", releaseParams(lease)));
  res.release = { wallMs: rel.wallMs, requests: rel.reqs.length, breakdown: breakdown(rel.reqs, 1) };
  const st = await fake.control("sandbox", { sandboxId: lease.providerLeaseId });
  res.release.sandboxState = st?.state ?? null;
  log(`  ${w.name.padEnd(4)} release: ${fmtMs(rel.wallMs)}, ${rel.reqs.length} requests (${fmtBreakdown(res.release.breakdown)}), sandbox ${res.release.sandboxState}`);
}

// (2) n concurrent flows: acquire -> one execute -> release
async function phaseParallel(w, fake, opts, res) {
  const failures = new Failures();
  const flowMs = [];
  const ids = [];
  const flow = async () => {
    const t = performance.now();
    let lease;
    try {
      lease = await w.request("environmentAcquireLease", acquireParams());
      if (!lease?.providerLeaseId) throw new Error(`acquire returned no lease: ${JSON.stringify(lease)}`);
      ids.push(lease.providerLeaseId);
      const { msg } = await w.call("environmentExecute", executeParams(lease, "sh", ["-c", "echo hi"], null), CALL_TIMEOUT_MS, invocation());
      const bad = checkExecute(msg, "hi\n");
      if (bad) failures.add(bad);
    } catch (err) {
      failures.add(err.message);
    }
    try {
      if (lease?.providerLeaseId) await w.request("environmentReleaseLease", releaseParams(lease));
      flowMs.push(performance.now() - t);
    } catch (err) {
      failures.add(`release: ${err.message}`);
    }
  };
  const { wallMs, reqs } = await measured(fake, () =>
    withDeadline(Promise.all(Array.from({ length: opts.leases }, flow)), SERIES_TIMEOUT_MS, `${w.name}: ${opts.leases} parallel leases`),
  );
  const running = new Set(await fake.running());
  const left = ids.filter((id) => running.has(id));
  res.parallel = {
    leases: opts.leases,
    acquired: ids.length,
    wallMs,
    flowMedianMs: quantile(flowMs, 0.5),
    flowP90Ms: quantile(flowMs, 0.9),
    requests: reqs.length,
    requestsPerLease: reqs.length / opts.leases,
    breakdown: breakdown(reqs, opts.leases),
    failures: failures.count,
    failureReasons: failures.reasons,
    leftRunning: left.length,
  };
  const p = res.parallel;
  log(`  ${w.name.padEnd(4)} ${opts.leases} parallel leases (acquire, execute, release): wall ${fmtMs(p.wallMs)}, flow median ${fmtMs(p.flowMedianMs)}, p90 ${fmtMs(p.flowP90Ms)}, ${fmtNum(p.requestsPerLease)} requests/lease, failures ${p.failures}, left running ${p.leftRunning}`);
}

async function runCandidate(cand, fake, opts, res) {
  const w = new E2bWorker(cand.name, cand.argv, workerEnv(fake.info)).start();
  try {
    try {
      await w.request("initialize", initializeParams(MANIFEST), INIT_TIMEOUT_MS);
      res.initMs = performance.now() - w.t0;
    } catch (err) {
      await withDeadline(w.exited, 1_000, "exit").catch(() => null);
      res.unavailable = true;
      res.error = `${err.message}${w.stderr ? `\n--- worker stderr ---\n${w.stderr.trimEnd()}` : ""}`;
      return;
    }
    await phaseSequential(w, fake, opts, res);
    await phaseParallel(w, fake, opts, res);
    res.hwmKb = w.status().VmHWM ?? null;
  } catch (err) {
    res.error = `${err.message}${w.stderr ? `\n--- worker stderr ---\n${w.stderr.trimEnd()}` : ""}`;
    process.stderr.write(`  ${cand.name}: ${res.error}\n`);
  } finally {
    res.shutdown = await w.shutdown();
    res.notifications = w.notifications;
    res.badLines = w.badLines;
    const s = res.shutdown;
    log(`  ${cand.name.padEnd(4)} shutdown: reply ${s.replied ? "ok" : `missing (${s.replyError ?? "exited"})`}, exit code ${s.code}${s.signal ? `, signal ${s.signal}` : ""}${s.forced ? " (killed)" : ""}`);
    // the fake must show no sandbox left running by this candidate
    res.runningAfter = await fake.running().catch((err) => `unknown (${err.message})`);
  }
}

// The floor: the fake running the very process a worker's execute started (its
// cmd and args from the fake's command log: the wrapper, the clean-environment
// script, `sh -c "echo hi"`), for one bare process.Process/Start request per
// execute sent by this driver with Node's fetch, on a sandbox it creates over
// REST. No worker, no connect, no setTimeout: about the least a client can
// spend on this command with this fake (Node's fetch included, so a cheaper
// HTTP client can come in under it). What a worker spends above it is its own.
async function phaseFloor(fake, info, proc, n, res) {
  const api = (method, p, body) =>
    fetch(`${info.apiUrl}${p}`, {
      method,
      headers: { "X-API-KEY": info.apiKey, ...(body ? { "Content-Type": "application/json" } : {}) },
      body: body ? JSON.stringify(body) : undefined,
      signal: AbortSignal.timeout(CALL_TIMEOUT_MS),
    });
  const created = await api("POST", "/v2/sandboxes", { templateID: "base", timeout: 600, metadata: { paperclipProvider: "bench-floor" } });
  if (created.status !== 201) throw new Error(`floor: create answered ${created.status}: ${await created.text()}`);
  const sb = await created.json();
  const payload = Buffer.from(JSON.stringify({ process: { cmd: proc.cmd, args: proc.args }, stdin: false }));
  const frame = Buffer.alloc(5 + payload.length);
  frame.writeUInt32BE(payload.length, 1); // flags 0: one message
  payload.copy(frame, 5);
  const headers = {
    "E2b-Sandbox-Id": sb.sandboxID,
    "E2b-Sandbox-Port": "49983",
    ...(sb.envdAccessToken ? { "X-Access-Token": sb.envdAccessToken } : {}),
    "Connect-Protocol-Version": "1",
    "Content-Type": "application/connect+json",
    "Connect-Timeout-Ms": String(EXEC_TIMEOUT_MS),
  };
  const start = async () => {
    const r = await fetch(`${info.sandboxUrl}/process.Process/Start`, { method: "POST", headers, body: frame, signal: AbortSignal.timeout(CALL_TIMEOUT_MS) });
    const buf = Buffer.from(await r.arrayBuffer());
    if (r.status !== 200) return `Start answered ${r.status}`;
    let stdout = "";
    let end = null;
    let trailer = null;
    for (let at = 0; at + 5 <= buf.length; ) {
      const flags = buf[at];
      const len = buf.readUInt32BE(at + 1);
      const msg = JSON.parse(buf.subarray(at + 5, at + 5 + len).toString("utf8"));
      at += 5 + len;
      if (flags & 2) trailer = msg;
      else if (msg.event?.data?.stdout) stdout += Buffer.from(msg.event.data.stdout, "base64").toString("utf8");
      else if (msg.event?.end) end = msg.event.end;
    }
    if (!trailer || trailer.error) return `stream ended ${trailer ? `with ${JSON.stringify(trailer.error)}` : "without its end-of-stream message"}`;
    if (!end || (end.exitCode ?? 0) !== 0) return `end ${JSON.stringify(end)}`;
    return stdout === "hi\n" ? null : `stdout ${JSON.stringify(stdout.slice(0, 80))}`;
  };
  const failures = new Failures();
  const latencies = [];
  try {
    const { wallMs, reqs } = await measured(fake, () =>
      withDeadline(
        (async () => {
          for (let i = 0; i < n; i++) {
            const t = performance.now();
            const bad = await start().catch((err) => `Start failed: ${err.message}`);
            latencies.push(performance.now() - t);
            if (bad) failures.add(bad);
          }
        })(),
        SERIES_TIMEOUT_MS,
        `floor: ${n} sequential Starts`,
      ),
    );
    res.seq = seriesResult(n, wallMs, latencies, reqs, failures);
  } finally {
    const killed = await api("DELETE", `/sandboxes/${sb.sandboxID}`).catch((err) => ({ status: err.message }));
    res.killStatus = killed.status;
  }
  log(`  floor ${n} x the same process, one bare Start each: wall ${fmtMs(res.seq.wallMs)}, median ${fmtMs(res.seq.medianMs)}, p90 ${fmtMs(res.seq.p90Ms)}, ${fmtNum(res.seq.requestsPerExecute)} requests/execute, failures ${res.seq.failures}`);
}

// ---------------------------------------------------------------------------
// report

function fmtNum(v) {
  if (v == null) return "-";
  return Number.isInteger(v) ? String(v) : v.toFixed(2);
}

function buildRows(results, opts) {
  const row = (metric, key, get, fmt, { ratio = true, floor = false } = {}) => {
    const v = Object.fromEntries(CANDIDATES.map((c) => [c, results[c] ? get(results[c]) ?? null : null]));
    const fv = floor && results.floor ? get(results.floor) ?? null : null;
    return {
      metric,
      key,
      ours: v.ours,
      peer: v.peer,
      floor: fv,
      ratio: ratio && v.ours != null && v.peer != null && v.ours > 0 ? v.peer / v.ours : null,
      oursText: fmt(v.ours),
      peerText: fmt(v.peer),
      floorText: floor ? fmt(fv) : "",
      ratioText: ratio ? fmtRatio(v.ours, v.peer) : "",
    };
  };
  const count = (v) => (v == null ? "-" : String(v));
  const failures = (r) => (r.seq || r.stdin || r.parallel ? (r.seq?.failures ?? 0) + (r.stdin?.failures ?? 0) + (r.parallel?.failures ?? 0) : null);
  const floorMedian = results.floor?.seq?.medianMs;
  const aboveFloor = (r) => (floorMedian != null && r.seq?.medianMs != null ? r.seq.medianMs - floorMedian : null);
  return [
    row("worker start: spawn -> initialize reply (one)", "initMs", (r) => r.initMs, fmtMs),
    row("acquire (one lease, the first call): wall", "acquireWall", (r) => r.acquire?.wallMs, fmtMs),
    row("  HTTP requests", "acquireRequests", (r) => r.acquire?.requests, fmtNum),
    row(`${opts.seq} sequential executes: wall`, "seqWall", (r) => r.seq?.wallMs, fmtMs, { floor: true }),
    row("  per execute, median", "seqMedian", (r) => r.seq?.medianMs, fmtMs, { floor: true }),
    row("  per execute, p90", "seqP90", (r) => r.seq?.p90Ms, fmtMs, { floor: true }),
    ...(floorMedian != null ? [row("  per execute above the floor, median", "seqAboveFloor", aboveFloor, fmtMs, { ratio: false })] : []),
    row("  HTTP requests per execute", "seqRequests", (r) => r.seq?.requestsPerExecute, fmtNum, { floor: true }),
    row(`${opts.stdinExecs} sequential executes with stdin: wall`, "stdinWall", (r) => r.stdin?.wallMs, fmtMs),
    row("  per execute, median", "stdinMedian", (r) => r.stdin?.medianMs, fmtMs),
    row("  HTTP requests per execute", "stdinRequests", (r) => r.stdin?.requestsPerExecute, fmtNum),
    row("release (one lease): wall", "releaseWall", (r) => r.release?.wallMs, fmtMs),
    row("  HTTP requests", "releaseRequests", (r) => r.release?.requests, fmtNum),
    row(`${opts.leases} leases in parallel: wall`, "parWall", (r) => r.parallel?.wallMs, fmtMs),
    row("  per lease (acquire, execute, release), median", "parFlowMedian", (r) => r.parallel?.flowMedianMs, fmtMs),
    row("  HTTP requests per lease", "parRequests", (r) => r.parallel?.requestsPerLease, fmtNum),
    row("worker VmHWM at the end", "hwm", (r) => r.hwmKb, fmtKb),
    row("failed executes or flows", "failures", failures, count, { ratio: false, floor: true }),
    row("sandboxes left running", "leftRunning", (r) => (Array.isArray(r.runningAfter) ? r.runningAfter.length : null), count, { ratio: false }),
  ];
}

function printTable(rows, results) {
  const shown = CANDIDATES.filter((c) => results[c] && !results[c].unavailable);
  const cols = [
    { head: "metric", left: true, get: (r) => r.metric },
    ...shown.map((c) => ({ head: c, get: (r) => r[`${c}Text`] })),
    ...(shown.length === 2 ? [{ head: "peer/ours", get: (r) => r.ratioText }] : []),
    ...(results.floor?.seq ? [{ head: "floor", get: (r) => r.floorText }] : []),
  ];
  printColumns(cols, rows);
  log("");
  if (shown.length === 2) log("  peer/ours: how many times slower (or more requests) the peer is than ours");
  log("  requests: HTTP requests the fake E2B saw (REST API and envd), counted over the whole series");
  if (results.floor?.seq) {
    log(`  floor: the same process (${results.floor.from}'s last plain execute) run for one bare envd Start request from this driver, no worker`);
  }
}

function printBreakdowns(results) {
  log("\nrequests by kind (per execute, per acquire or release, per parallel lease):");
  for (const c of CANDIDATES) {
    const r = results[c];
    if (!r || r.unavailable) continue;
    if (r.seq) log(`  ${c.padEnd(4)} execute:            ${fmtBreakdown(r.seq.breakdown)}`);
    if (r.stdin) log(`  ${c.padEnd(4)} execute with stdin: ${fmtBreakdown(r.stdin.breakdown)}`);
    if (r.acquire) log(`  ${c.padEnd(4)} acquire:            ${fmtBreakdown(r.acquire.breakdown)}`);
    if (r.release) log(`  ${c.padEnd(4)} release:            ${fmtBreakdown(r.release.breakdown)}`);
    if (r.parallel) log(`  ${c.padEnd(4)} parallel lease:     ${fmtBreakdown(r.parallel.breakdown)}`);
  }
}

// ---------------------------------------------------------------------------
// main

async function main() {
  const opts = parseArgs(process.argv.slice(2));
  if (opts.only === "shim") {
    log("e2b benchmark: no shim candidate here (the shim's cost is the same for every provider: see the worker benchmark); skipped");
    return;
  }
  const binary = path.resolve(ROOT, process.env.PROVIDER_HOST || "build/provider-host");
  if (!existsSync(binary)) {
    process.stderr.write(`e2b_bench: our binary ${showPath(binary)} does not exist: build it (or set PROVIDER_HOST). It also runs the fake E2B, so every candidate needs it.\n`);
    process.exit(2);
  }
  const all = [
    { name: "ours", argv: [binary, "worker", "--provider", "e2b"] },
    { name: "peer", argv: [process.execPath, PEER_SCRIPT] },
  ];
  const cands = opts.only ? all.filter((c) => c.name === opts.only) : all;
  const notes = [];
  const sdkPkg = path.join(BENCH_DIR, "node_modules", "e2b", "package.json");
  let sdkVersion = null;
  if (cands.some((c) => c.name === "peer")) {
    if (!existsSync(sdkPkg)) {
      process.stderr.write("e2b_bench: the peer needs the e2b SDK in bench/node_modules: run `npm ci` in bench (bench/run does)\n");
      process.exit(2);
    }
    sdkVersion = JSON.parse(readFileSync(sdkPkg, "utf8")).version;
  }

  const fake = new Fake(binary);
  const info = await fake.start();
  driverConfig = { template: "base", apiKey: info.apiKey, timeoutMs: 3_600_000, reuseLease: false };
  // a delay on every request, API and envd alike, for as long as the fake runs
  if (opts.delayMs > 0) await fake.control("fail", { spec: { delay: opts.delayMs / 1000, times: -1 } });

  log(`e2b benchmark  ${machineLine()}`);
  log(`candidates: ${cands.map((c) => `${c.name} = ${c.argv.map(showPath).join(" ")}`).join(";  ")}`);
  if (sdkVersion) log(`peer: upstream's newest E2B plugin on e2b ${sdkVersion} (npm) and @paperclipai/plugin-sdk`);
  log(`fake E2B: ${showPath(binary)} ${showPath(FAKE_SCRIPT)}  api ${info.apiUrl}  envd ${info.sandboxUrl}  domain ${info.domain}`);
  log(opts.delayMs > 0 ? `added latency: the fake waits ${opts.delayMs} ms before answering each request (--delay)` : "added latency: none (loopback; --delay=MS adds a wait per request)");
  log(`workers get E2B_API_URL, E2B_SANDBOX_URL and E2B_DOMAIN; config {template: "base", apiKey, timeoutMs: 3600000, reuseLease: false}`);
  log(`\n(1) one lease: acquire, ${opts.seq} sequential executes of sh -c "echo hi", ${opts.stdinExecs} of sh -c cat with a small stdin, release; (2) ${opts.leases} concurrent acquire -> execute -> release flows`);

  const results = Object.fromEntries(cands.map((c) => [c.name, { argv: c.argv.map(showPath) }]));
  let fakeStop;
  try {
    for (const c of cands) {
      await runCandidate(c, fake, opts, results[c.name]);
      const r = results[c.name];
      if (r.unavailable) {
        const msg =
          c.name === "ours"
            ? `ours is NOT measured: \`${c.argv.map(showPath).join(" ")}\` did not initialize (providers/e2b missing or broken in this build).${cands.length > 1 ? " Only the peer was measured." : ""}`
            : "the peer is NOT measured: it did not initialize.";
        log(`  ${msg}`);
        process.stderr.write(`  ${r.error}\n`);
        notes.push(msg);
      }
      if (Array.isArray(r.runningAfter) && r.runningAfter.length) {
        notes.push(`${c.name}: the fake shows ${r.runningAfter.length} sandbox(es) still running after it shut down: ${r.runningAfter.join(", ")}`);
      }
    }
    // the floor replays upstream's process (the peer's) when there is one
    const from = ["peer", "ours"].find((c) => results[c]?.seqProcess);
    if (opts.floor && from) {
      results.floor = { from, process: results[from].seqProcess };
      try {
        await phaseFloor(fake, info, results[from].seqProcess, opts.seq, results.floor);
      } catch (err) {
        results.floor.error = err.message;
        process.stderr.write(`  floor: ${err.message}\n`);
        notes.push(`floor not measured: ${err.message}`);
      }
    }
  } finally {
    fakeStop = await fake.stop();
  }

  const measuredAny = cands.some((c) => !results[c.name].unavailable);
  const rows = buildRows(results, opts);
  if (measuredAny) {
    printTable(rows, results);
    printBreakdowns(results);
  }
  for (const c of cands) {
    const r = results[c.name];
    for (const [what, s] of [["sequential", r.seq], ["stdin", r.stdin], ["parallel", r.parallel]]) {
      if (s?.failures) log(`${c.name} ${what} failures: ${JSON.stringify(s.failureReasons)}`);
    }
    if (r.error && !r.unavailable) log(`${c.name} stopped early: ${r.error.split("\n")[0]}`);
    if (r.release && r.release.sandboxState !== "killed") log(`${c.name}: after release the lease's sandbox is ${r.release.sandboxState}`);
    if (r.badLines) log(`${c.name} wrote ${r.badLines} unparseable or unmatched stdout lines`);
  }
  if (fakeStop?.forced) notes.push("the fake E2B did not exit within 10 s of its stdin closing: killed");
  if (notes.length) log(`\nnotes:\n${notes.map((n) => `  - ${n}`).join("\n")}`);

  const report = {
    benchmark: "e2b",
    date: new Date().toISOString(),
    machine: machineInfo(),
    options: { quick: opts.quick, only: opts.only, floor: opts.floor, delayMs: opts.delayMs, seq: opts.seq, stdinExecs: opts.stdinExecs, leases: opts.leases },
    e2bSdkVersion: sdkVersion,
    fake: { apiUrl: info.apiUrl, sandboxUrl: info.sandboxUrl, domain: info.domain, exit: fakeStop },
    notes,
    candidates: results,
    rows: rows.map(({ metric, key, ours, peer, floor, ratio }) => ({ metric: metric.trim(), key, ours, peer, floor, ratio })),
  };
  writeReport(opts.out, report);
  if (!measuredAny) process.exitCode = 1;
}

runBench("e2b_bench", "the workers and the fake", killAll, main);
