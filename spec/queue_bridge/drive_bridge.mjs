// spec/queue_bridge/drive_bridge.mjs: upstream's real queue_v1 callback bridge
// (@paperclipai/adapter-utils, pinned in package.json) over provider-host's worker.
//
// It plays the Paperclip server: spawns `provider-host worker --provider NAME` with the scrubbed
// env Paperclip gives a plugin worker (PATH and PAPERCLIP_* only), initializes it, acquires and
// realizes a lease, and builds the sandbox execution target the server builds
// (environment-execution-target.js), whose runner sends every command as a JSON-RPC
// `environmentExecute` request to the worker, exactly as the server's environment runtime does.
// Then it starts the bridge with upstream's own startAdapterExecutionTargetPaperclipBridge
// (gateway upload with sha skip, launch, readiness, host-side polling loop), runs an "agent"
// inside the sandbox with upstream's runAdapterExecutionTargetShellCommand (and, with the run-log
// tail, runAdapterExecutionTargetProcess) whose HTTP calls go through the gateway, the queue
// files, upstream's worker loop and forwarder to the Paperclip API, and stops everything.
//
// Usage: node drive_bridge.mjs --binary PATH --provider local|ssh [--config JSON]
//          [--api-url URL --api-key JWT] [--calls N] [--warmup K] [--no-tail]
//   --config   the provider's environment config (JSON object)
//   --api-url  the Paperclip API to forward to; it must want `Authorization: Bearer <api-key>`.
//              Without it a small fake API in this process answers (bench use).
//   --calls N  the agent makes N sequential GET /api/agents/me calls and reports each one's
//              latency (ms, measured inside the sandbox, from fetch() to the body read) as
//              `latenciesMs`, plus min/median/p90/max in `latency` (QUEUE_BRIDGE_CALLS=N too).
//   --warmup K untimed calls made first (default 1, QUEUE_BRIDGE_WARMUP=K): the agent's first
//              fetch() pays Node's HTTP client start-up, not the bridge.
//   --no-tail  skip the second agent run (runAdapterExecutionTargetProcess + run-log tail).
// Besides the timed calls the agent checks the response header allowlist (one GET), a POST
// with a non-ASCII JSON body, a route outside the allowlist (403) and a wrong token (401).
// Timing one API call through the queue bridge (bench/bridge_bench.lua does this):
//   node drive_bridge.mjs --binary build/provider-host --provider local --config '{}' \
//     --calls 50 --no-tail    -> report.latency {n,min,median,p90,max,mean}, report.latenciesMs
// Prints progress on stderr and ONE JSON report as the last line of stdout; exits 0 when every
// check passed, 1 otherwise. Everything it starts is stopped before it exits.
// Imported, it runs nothing and lends Worker and classify (bench/queue_bridge_idle.mjs).
import { spawn } from "node:child_process";
import { randomUUID } from "node:crypto";
import fs from "node:fs";
import http from "node:http";
import readline from "node:readline";
import { pathToFileURL } from "node:url";
import {
  runAdapterExecutionTargetProcess,
  runAdapterExecutionTargetShellCommand,
  startAdapterExecutionTargetPaperclipBridge,
} from "@paperclipai/adapter-utils/execution-target";

const started = Date.now();
// a comment body with 2-, 3- and 4-byte UTF-8, quotes, a backslash and a newline
const COMMENT = "h\u00e9llo \u2713 \ud83d\ude00 \"q\" back\\slash\nline2";
const report = { ok: false, checks: [], execs: {}, failedExecs: [], slowExecs: [], bridgeWarnings: [] };
const log = (msg) => process.stderr.write(`[drive_bridge +${Date.now() - started}ms] ${msg}\n`);

// ---- arguments -------------------------------------------------------------------------------
function parseArgs(argv) {
  const opts = { calls: Number(process.env.QUEUE_BRIDGE_CALLS || 3),
    warmup: Number(process.env.QUEUE_BRIDGE_WARMUP ?? 1), tail: true, config: {} };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const next = () => {
      if (i + 1 >= argv.length) throw new Error(`${a} needs a value`);
      return argv[++i];
    };
    if (a === "--binary") opts.binary = next();
    else if (a === "--provider") opts.provider = next();
    else if (a === "--config") opts.config = JSON.parse(next());
    else if (a === "--api-url") opts.apiUrl = next();
    else if (a === "--api-key") opts.apiKey = next();
    else if (a === "--calls") opts.calls = Number(next());
    else if (a === "--warmup") opts.warmup = Number(next());
    else if (a === "--no-tail") opts.tail = false;
    else throw new Error(`unknown argument ${a}`);
  }
  if (!opts.binary || !opts.provider) throw new Error("--binary and --provider are required");
  if (!Number.isInteger(opts.calls) || opts.calls < 1) throw new Error("--calls must be >= 1");
  if (!Number.isInteger(opts.warmup) || opts.warmup < 0) throw new Error("--warmup must be >= 0");
  return opts;
}

function check(name, ok, detail) {
  report.checks.push({ name, ok: Boolean(ok), ...(ok ? {} : { detail }) });
  if (!ok) log(`CHECK FAILED: ${name}: ${JSON.stringify(detail)}`);
}

// ---- the worker, spoken to as Paperclip's plugin-worker-manager does -------------------------
export class Worker {
  constructor(binary, provider) {
    // Paperclip never passes its own env through: PATH plus its own PAPERCLIP_* variables.
    const env = {
      PATH: process.env.PATH ?? "",
      PAPERCLIP_PLUGIN_ID: randomUUID(),
      PAPERCLIP_DEPLOYMENT_MODE: "authenticated",
      PAPERCLIP_DEPLOYMENT_EXPOSURE: "",
    };
    for (const [k, v] of Object.entries(process.env)) {
      if (k.startsWith("PAPERCLIP_") && !(k in env)) env[k] = v;
    }
    this.envKeys = Object.keys(env).sort();
    this.child = spawn(binary, ["worker", "--provider", provider], {
      stdio: ["pipe", "pipe", "pipe"],
      env,
    });
    this.pid = this.child.pid;
    this.nextId = 1;
    this.pending = new Map();
    this.invocations = new Map(); // paperclipInvocation id -> onLog
    this.logs = [];
    this.badLines = [];
    this.stderr = "";
    this.exited = new Promise((resolve) => {
      this.child.on("exit", (code, signal) => {
        this.exit = { code, signal };
        for (const { reject } of this.pending.values()) {
          reject(new Error(`Worker process exited (code=${code}, signal=${signal})`));
        }
        this.pending.clear();
        resolve(this.exit);
      });
    });
    this.child.stderr.on("data", (d) => {
      this.stderr = (this.stderr + d).slice(-8000);
    });
    readline.createInterface({ input: this.child.stdout }).on("line", (line) => this.onLine(line));
  }

  onLine(line) {
    if (!line.trim()) return;
    let msg;
    try {
      msg = JSON.parse(line);
    } catch {
      this.badLines.push(line.slice(0, 200));
      return;
    }
    if (msg.id !== undefined && ("result" in msg || "error" in msg)) {
      const p = this.pending.get(msg.id);
      if (!p) return;
      this.pending.delete(msg.id);
      clearTimeout(p.timer);
      if (msg.error) {
        const err = new Error(msg.error.message);
        err.code = msg.error.code;
        p.reject(err);
      } else {
        p.resolve(msg.result);
      }
    } else if (msg.method === "execute.log") {
      const onLog = this.invocations.get(msg.paperclipInvocationId);
      if (onLog) onLog(msg.params.stream, msg.params.chunk);
    } else if (msg.method === "log") {
      this.logs.push(msg.params);
    }
  }

  // call(method, params, timeoutMs, onLog): the reply's result; an error reply rejects.
  call(method, params, timeoutMs = 30_000, onLog) {
    const id = this.nextId++;
    const msg = { jsonrpc: "2.0", id, method, params };
    let invocationId = null;
    if (typeof params.companyId === "string" && params.companyId.length > 0) {
      invocationId = randomUUID();
      msg.paperclipInvocation = { id: invocationId, scope: { companyId: params.companyId } };
      if (onLog) this.invocations.set(invocationId, onLog);
    }
    return new Promise((resolve, reject) => {
      const done = (fn) => (v) => {
        if (invocationId) this.invocations.delete(invocationId);
        fn(v);
      };
      const timer = setTimeout(() => {
        this.pending.delete(id);
        if (invocationId) this.invocations.delete(invocationId);
        const err = new Error(`Worker RPC ${method} timed out after ${timeoutMs}ms`);
        err.code = -32003;
        reject(err);
      }, timeoutMs);
      this.pending.set(id, { resolve: done(resolve), reject: done(reject), timer });
      this.child.stdin.write(JSON.stringify(msg) + "\n");
    });
  }

  // Paperclip's stop: shutdown (10 s), then SIGTERM (5 s), then SIGKILL.
  async stop() {
    if (this.exit) return this.exit;
    const race = (ms) => Promise.race([this.exited, new Promise((r) => setTimeout(r, ms))]);
    try {
      await Promise.race([this.call("shutdown", {}, 10_000), this.exited]);
    } catch (err) {
      report.shutdownError = err.message;
    }
    await race(500);
    if (!this.exit) {
      this.child.kill("SIGTERM");
      await race(5000);
    }
    if (!this.exit) {
      this.child.kill("SIGKILL");
      await race(2000);
    }
    return this.exit;
  }
}

// ---- a fake Paperclip API (only when no --api-url: bench use) --------------------------------
async function startFakeApi(apiKey) {
  const seen = [];
  const server = http.createServer((req, res) => {
    let body = "";
    req.on("data", (d) => (body += d));
    req.on("end", () => {
      seen.push({ method: req.method, url: req.url, runId: req.headers["x-paperclip-run-id"] });
      res.setHeader("content-type", "application/json");
      if (req.headers.authorization !== `Bearer ${apiKey}`) {
        res.statusCode = 401;
        res.end(JSON.stringify({ error: "Unauthorized" }));
        return;
      }
      res.end(JSON.stringify({ method: req.method, path: req.url.split("?")[0],
        runId: req.headers["x-paperclip-run-id"] ?? null, body }));
    });
  });
  await new Promise((r) => server.listen(0, "127.0.0.1", r));
  return { url: `http://127.0.0.1:${server.address().port}`, seen,
    close: () => new Promise((r) => { server.closeAllConnections?.(); server.close(() => r()); }) };
}

// ---- exec bookkeeping: what upstream's bridge asked our worker to run ------------------------
export function classify(command, args) {
  const script = args && args[0] === "-c" ? args[1] ?? "" : [command, ...(args ?? [])].join(" ");
  if (script.includes("__PAPERCLIP_RUN_LOG_STDOUT__")) return "runLogTick";
  if (script.includes("tee -a")) return "agentWrapped";
  if (script.includes("PAPERCLIP_API_URL")) return "agent";
  if (script.includes("paperclip-write.lock")) return "writeResponse";
  if (script.includes("for file in")) return "list";
  if (script.startsWith("base64 < ")) return "read";
  if (script.startsWith("rm -rf ")) return "remove";
  if (script.includes("sha256sum")) return "syncEntrypoint";
  if (script.includes("nohup")) return "launch";
  if (script.includes("Timed out waiting for bridge readiness")) return "readiness";
  if (script.includes('kill "$pid"')) return "stop";
  if (script.startsWith("mkdir -p ")) return "mkdir";
  return "other";
}

function percentile(sorted, p) {
  if (sorted.length === 0) return null;
  const i = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return sorted[i];
}

// ---- the run ---------------------------------------------------------------------------------
async function main() {
  const opts = parseArgs(process.argv.slice(2));
  report.provider = opts.provider;
  report.calls = opts.calls;
  report.warmup = opts.warmup;
  report.adapterUtilsVersion = JSON.parse(fs.readFileSync(new URL(
    "./node_modules/@paperclipai/adapter-utils/package.json", import.meta.url))).version;
  report.node = process.version;

  // Upstream logs worker failures with console.warn; keep them for the report.
  const warn = console.warn;
  console.warn = (...a) => {
    report.bridgeWarnings.push(a.map(String).join(" ").slice(0, 2000));
    warn(...a);
  };

  const apiKey = opts.apiKey ?? `real-run-jwt-${randomUUID()}`;
  const fakeApi = opts.apiUrl ? null : await startFakeApi(apiKey);
  const apiUrl = opts.apiUrl ?? fakeApi.url;
  const runId = `run-${randomUUID()}`;
  const companyId = "company-1";
  const environmentId = `env-${randomUUID()}`;
  const driverKey = opts.provider;
  report.runId = runId;

  const worker = new Worker(opts.binary, opts.provider);
  liveWorker = worker;
  report.workerPid = worker.pid;
  report.workerEnvKeys = worker.envKeys;
  let lease = null;
  let leaseConfig = null;
  let leaseMetadata = null;
  let bridge = null;
  try {
    // initialize as Paperclip does (the stored manifest, config {}, instanceInfo)
    const manifest = await new Promise((resolve, reject) => {
      const p = spawn(opts.binary, ["manifest", opts.provider], { env: { PATH: process.env.PATH } });
      let out = "";
      p.stdout.on("data", (d) => (out += d));
      p.on("error", reject);
      p.on("exit", (code) => (code === 0 ? resolve(JSON.parse(out)) : reject(new Error(`manifest exited ${code}`))));
    });
    const init = await worker.call("initialize", {
      manifest,
      config: {},
      instanceInfo: { instanceId: "default", hostVersion: "2026.824.1", deploymentMode: "authenticated" },
      apiVersion: 1,
      databaseNamespace: null,
    }, 15_000);
    check("initialize ok", init?.ok === true, init);
    check("initialize advertises environmentExecute",
      init?.supportedMethods?.includes("environmentExecute"), init?.supportedMethods);

    // validate (its normalizedConfig becomes the stored config), then acquire
    const validated = await worker.call("environmentValidateConfig", { driverKey, config: opts.config });
    check("config valid", validated?.ok === true, validated);
    const savedConfig = { ...(validated.normalizedConfig ?? opts.config), provider: driverKey, streamRunLogs: true };
    const { provider: _p, ...acquireConfig } = savedConfig;
    const rpcTimeout = (cfg) => (Number(cfg.timeoutMs) > 0 ? Number(cfg.timeoutMs) : 0) + 30_000;
    lease = await worker.call("environmentAcquireLease", {
      driverKey, companyId, environmentId, issueId: "issue-1", config: acquireConfig, runId,
      workspaceMode: "isolated", agentId: "agent-1", executionWorkspaceId: "ew-1",
      adapterType: "claude_local",
    }, rpcTimeout(acquireConfig));
    report.providerLeaseId = lease.providerLeaseId;
    check("lease acquired", typeof lease.providerLeaseId === "string" && lease.providerLeaseId, lease);
    // The stored lease metadata, and the config the server rebuilds from it for every
    // lease-bound call (host keys dropped).
    leaseMetadata = {
      agentId: "agent-1", driver: "sandbox", executionWorkspaceMode: "isolated",
      pluginId: "plugin-uuid", pluginKey: manifest.id, sandboxProviderPlugin: true,
      ...savedConfig, ...(lease.metadata ?? {}),
    };
    leaseConfig = { ...leaseMetadata };
    for (const k of ["driver", "executionWorkspaceMode", "pluginId", "pluginKey", "providerMetadata",
      "remoteCwd", "shellCommand", "sandboxProviderPlugin", "provider"]) delete leaseConfig[k];
    const leaseParam = { providerLeaseId: lease.providerLeaseId, metadata: leaseMetadata, expiresAt: null };
    const realized = await worker.call("environmentRealizeWorkspace", {
      driverKey, companyId, environmentId, issueId: "issue-1", config: leaseConfig, lease: leaseParam,
      workspace: { remotePath: lease.metadata?.remoteCwd, mode: "isolated" },
    }, rpcTimeout(leaseConfig));
    const remoteCwd = (typeof realized?.cwd === "string" && realized.cwd.trim()) ||
      lease.metadata?.remoteCwd || "/tmp";
    report.remoteCwd = remoteCwd;

    // The server's sandbox execution target (environment-execution-target.js) and its runner.
    const runner = {
      supportsSingleStreamStdinProgress: false,
      execute: async (input) => {
        const kind = classify(input.command, input.args);
        const stat = (report.execs[kind] ??= { count: 0, totalMs: 0, maxMs: 0 });
        const t0 = Date.now();
        let result;
        try {
          result = await worker.call("environmentExecute", {
            driverKey, companyId, environmentId, issueId: "issue-1", config: leaseConfig,
            lease: leaseParam, command: input.command, args: input.args,
            cwd: input.cwd ?? remoteCwd, env: input.env, stdin: input.stdin,
            timeoutMs: input.timeoutMs,
            // no active run step here, so the server sets bypassSession on every command
            bypassSession: true,
          }, (input.timeoutMs ?? leaseConfig.timeoutMs ?? 0) + 30_000, input.onLog);
        } catch (err) {
          report.failedExecs.push({ kind, command: input.command, args: input.args,
            error: err.message, code: err.code });
          throw err;
        } finally {
          const ms = Date.now() - t0;
          stat.count++;
          stat.totalMs += ms;
          stat.maxMs = Math.max(stat.maxMs, ms);
          if (ms > 1000 && !kind.startsWith("agent") && kind !== "stop") {
            report.slowExecs.push({ kind, ms, at: t0 - started, script: input.args?.[1]?.slice(0, 300),
              result: result ? { exitCode: result.exitCode, timedOut: result.timedOut,
                stdoutBytes: result.stdout?.length, stderr: result.stderr?.slice(0, 500),
                metadata: result.metadata } : "no result (error reply)" });
          }
        }
        if (kind === "launch") {
          report.gatewayPid = Number(/"pid":(\d+)/.exec(result.stdout ?? "")?.[1]) || null;
        }
        if (result.exitCode !== 0 || result.timedOut) {
          report.failedExecs.push({ kind, command: input.command, args: input.args,
            env: input.env ? Object.keys(input.env) : undefined, result });
        }
        return {
          exitCode: result.exitCode, signal: result.signal ?? null, timedOut: result.timedOut,
          stdout: result.stdout, stderr: result.stderr, pid: null,
          startedAt: new Date(t0).toISOString(), finishedAt: new Date().toISOString(),
          durationMs: Date.now() - t0,
        };
      },
    };
    const shellCommand = lease.metadata?.shellCommand === "bash" || lease.metadata?.shellCommand === "sh"
      ? lease.metadata.shellCommand : null;
    const target = {
      kind: "remote", transport: "sandbox", providerKey: driverKey, shellCommand, remoteCwd,
      environmentId, leaseId: `lease-${randomUUID()}`,
      timeoutMs: "timeoutMs" in leaseConfig ? leaseConfig.timeoutMs : null,
      streamRunLogs: true, runner,
    };
    report.shellCommand = shellCommand;

    // upstream's bridge start: queue dirs, gateway upload (sha skip), launch, readiness
    const bridgeLog = [];
    const t0 = Date.now();
    bridge = await startAdapterExecutionTargetPaperclipBridge({
      runId, target, adapterKey: "claude_local", hostApiToken: apiKey, hostApiUrl: apiUrl,
      onLog: async (stream, chunk) => bridgeLog.push(chunk),
    });
    report.bridgeStartMs = Date.now() - t0;
    report.bridgeLog = bridgeLog.join("");
    report.bridgeEnv = { ...bridge.env, PAPERCLIP_API_KEY: bridge.env.PAPERCLIP_API_KEY ? "<token>" : null };
    check("bridge started with a loopback URL", /^http:\/\/127\.0\.0\.1:\d+$/.test(bridge.env.PAPERCLIP_API_URL), bridge.env.PAPERCLIP_API_URL);
    check("bridge mode queue_v1", bridge.env.PAPERCLIP_API_BRIDGE_MODE === "queue_v1", bridge.env);
    check("gateway pid known", report.gatewayPid > 0, report.gatewayPid);
    log(`bridge up at ${bridge.env.PAPERCLIP_API_URL} in ${report.bridgeStartMs}ms (gateway pid ${report.gatewayPid})`);

    // the agent: N timed calls through the gateway, a denied route, a wrong token
    const agentScript = [
      "const url = process.env.PAPERCLIP_API_URL, key = process.env.PAPERCLIP_API_KEY;",
      `const n = ${opts.calls}, warmup = ${opts.warmup}; const out = { calls: [], warmup: [] };`,
      `const COMMENT = ${JSON.stringify(COMMENT)};`,
      "const get = async (path, token) => { const t0 = performance.now();",
      "  const r = await fetch(url + path, { headers: { authorization: 'Bearer ' + token, accept: 'application/json' } });",
      "  const text = await r.text(); return { status: r.status, ms: performance.now() - t0, body: text,",
      "    contentType: r.headers.get('content-type') }; };",
      "for (let i = 0; i < warmup; i++) out.warmup.push((await get('/api/agents/me?warmup=' + i, key)).status);",
      "for (let i = 0; i < n; i++) out.calls.push(await get('/api/agents/me?i=' + i, key));",
      "out.headers = await fetch(url + '/api/agents/me', { headers: { authorization: 'Bearer ' + key } })",
      "  .then(async (r) => { await r.text(); return { etag: r.headers.get('etag'),",
      "    setCookie: r.headers.get('set-cookie'), secret: r.headers.get('x-secret-header') }; });",
      "out.post = await fetch(url + '/api/issues/issue-1/comments', { method: 'POST', body: JSON.stringify({ body: COMMENT }),",
      "  headers: { authorization: 'Bearer ' + key, 'content-type': 'application/json' } })",
      "  .then(async (r) => ({ status: r.status, body: await r.text() }));",
      "out.denied = await get('/api/secrets', key);",
      "out.badToken = await get('/api/agents/me', 'x' + key);",
      "out.mode = process.env.PAPERCLIP_API_BRIDGE_MODE;",
      "console.log(JSON.stringify(out));",
    ].join("\n");
    const agentCommand = `node -e ${"'" + agentScript.replace(/'/g, "'\"'\"'") + "'"}`;
    const agentEnv = { ...bridge.env };
    const agent = await runAdapterExecutionTargetShellCommand(runId, target, agentCommand, {
      env: agentEnv, timeoutSec: 120,
    });
    report.agent = { exitCode: agent.exitCode, timedOut: agent.timedOut, stderr: agent.stderr.slice(-2000) };
    check("agent exited 0", agent.exitCode === 0, report.agent);
    let out = null;
    try {
      out = JSON.parse(agent.stdout.trim().split("\n").pop());
    } catch (err) {
      check("agent printed its result", false, { stdout: agent.stdout.slice(-2000), error: err.message });
    }
    if (out) {
      const latencies = out.calls.map((c) => Math.round(c.ms * 100) / 100);
      report.latenciesMs = latencies;
      const sorted = [...latencies].sort((a, b) => a - b);
      report.latency = { n: sorted.length, min: sorted[0], median: percentile(sorted, 50),
        p90: percentile(sorted, 90), max: sorted[sorted.length - 1],
        mean: Math.round((sorted.reduce((a, b) => a + b, 0) / sorted.length) * 100) / 100 };
      report.agentMode = out.mode;
      check("warm-up calls answered 200", out.warmup.every((s) => s === 200), out.warmup);
      check("agent saw PAPERCLIP_API_BRIDGE_MODE=queue_v1", out.mode === "queue_v1", out.mode);
      out.calls.forEach((c, i) => {
        let body = null;
        try {
          body = JSON.parse(c.body);
        } catch { /* reported below */ }
        report.firstAnswer ??= body ?? c.body;
        const ok = c.status === 200 && body && body.method === "GET" && body.path === "/api/agents/me" &&
          body.runId === runId && (body.query === `?i=${i}` || body.query === `i=${i}` || body.query === undefined);
        check(`call ${i + 1}: 200 from the API with the run id`, ok, { status: c.status, body: c.body });
      });
      report.answerHeaders = out.headers;
      let posted = null;
      try {
        posted = JSON.parse(out.post.body);
      } catch { /* reported below */ }
      check("a POST with a non-ASCII JSON body reaches the API intact and its echo comes back",
        out.post.status === 200 && posted?.method === "POST" &&
        posted?.path === "/api/issues/issue-1/comments" &&
        posted?.body === JSON.stringify({ body: COMMENT }), out.post);
      report.answers = { denied: { status: out.denied.status, body: out.denied.body },
        badToken: { status: out.badToken.status, body: out.badToken.body } };
      check("a route outside the allowlist gets upstream's 403", out.denied.status === 403 &&
        out.denied.body === JSON.stringify({ error: "Route not allowed: GET /api/secrets" }), out.denied);
      check("a wrong bridge token gets the gateway's 401", out.badToken.status === 401 &&
        out.badToken.body === JSON.stringify({ error: "Invalid bridge token." }), out.badToken);
      check("neither the JWT nor the bridge token in agent output",
        !agent.stdout.includes(apiKey) && !agent.stdout.includes(bridge.env.PAPERCLIP_API_KEY), null);
    }

    // the agent again, as adapters launch it: runAdapterExecutionTargetProcess with the
    // bridge's run-log tail (tee wrapper, 250 ms tail ticks through environmentExecute)
    if (opts.tail && bridge.runLogTail) {
      const tailed = [];
      const tailScript = "fetch(process.env.PAPERCLIP_API_URL + '/api/agents/me', { headers: { authorization: " +
        "'Bearer ' + process.env.PAPERCLIP_API_KEY } }).then(async (r) => { console.log('tail-call', r.status, " +
        "JSON.parse(await r.text()).path); await new Promise((res) => setTimeout(res, 600)); console.error('tail-done'); })";
      const proc = await runAdapterExecutionTargetProcess(runId, target, "node", ["-e", tailScript], {
        cwd: remoteCwd, env: agentEnv, timeoutSec: 120, graceSec: 5,
        onLog: async (stream, chunk) => tailed.push([stream, chunk]),
        runLogTail: bridge.runLogTail,
      });
      const streamed = (s) => tailed.filter(([st]) => st === s).map(([, c]) => c).join("");
      report.tailRun = { exitCode: proc.exitCode, stdout: proc.stdout, stderr: proc.stderr,
        streamedStdout: streamed("stdout"), streamedStderr: streamed("stderr") };
      check("tailed agent run: exit 0 and a 200 through the bridge", proc.exitCode === 0 &&
        proc.stdout === "tail-call 200 /api/agents/me\n", report.tailRun);
      check("tailed agent run: the run-log tail delivered stdout and stderr",
        streamed("stdout") === "tail-call 200 /api/agents/me\n" && streamed("stderr") === "tail-done\n",
        report.tailRun);
    }

    // what the API saw (only when the fake is ours; the spec checks its own fake)
    if (fakeApi) {
      check("the API saw every forwarded call with the run id",
        fakeApi.seen.filter((r) => r.runId === runId).length >= opts.calls, fakeApi.seen.length);
    }
  } catch (err) {
    report.error = err.stack ?? String(err);
    log(`ERROR: ${report.error}`);
  } finally {
    // stop the bridge (gateway SIGTERM, worker drain), then release the lease, then the worker
    if (bridge) {
      const t0 = Date.now();
      try {
        await bridge.stop();
      } catch (err) {
        report.stopError = err.message;
      }
      report.bridgeStopMs = Date.now() - t0;
      if (report.gatewayPid) {
        let alive = true;
        for (let i = 0; i < 100 && alive; i++) {
          try {
            process.kill(report.gatewayPid, 0);
            await new Promise((r) => setTimeout(r, 50));
          } catch {
            alive = false;
          }
        }
        report.gatewayGoneAfterStop = !alive;
        check("the gateway exited on bridge stop", !alive, report.gatewayPid);
      }
    }
    if (lease?.providerLeaseId) {
      try {
        await worker.call("environmentReleaseLease", {
          driverKey, companyId, environmentId, issueId: "issue-1", config: leaseConfig,
          providerLeaseId: lease.providerLeaseId, leaseMetadata,
        }, 60_000);
        report.released = true;
      } catch (err) {
        report.releaseError = err.message;
        check("lease released", false, err.message);
      }
    }
    report.workerExit = await worker.stop();
    check("worker exited 0 on shutdown", report.workerExit?.code === 0, report.workerExit);
    report.workerStderr = worker.stderr.slice(-3000);
    report.workerBadLines = worker.badLines;
    if (fakeApi) await fakeApi.close();
    console.warn = warn;
  }
  const failedBridgeExecs = report.failedExecs.filter((f) => f.kind !== "agent" && f.kind !== "agentWrapped");
  check("every bridge command succeeded through environmentExecute", failedBridgeExecs.length === 0,
    failedBridgeExecs.slice(0, 5));
  check("no bridge worker failure was logged", report.bridgeWarnings.length === 0, report.bridgeWarnings);
  report.passed = report.checks.filter((c) => c.ok).length;
  report.ok = !report.error && report.checks.every((c) => c.ok);
  report.totalMs = Date.now() - started;
  if (report.latency) {
    log(`per-call latency through the queue bridge (${opts.provider}, ${report.latency.n} calls): ` +
      `median ${report.latency.median} ms, min ${report.latency.min}, p90 ${report.latency.p90}, max ${report.latency.max}`);
  }
  process.stdout.write(JSON.stringify(report) + "\n");
  process.exit(report.ok ? 0 : 1);
}

let liveWorker = null;

// Run as a program (node drive_bridge.mjs ...), not when imported.
if (process.argv[1] && import.meta.url === pathToFileURL(fs.realpathSync(process.argv[1])).href) {
  const deadline = setTimeout(() => {
    report.error = "drive_bridge.mjs: overall deadline (240 s) exceeded";
    // the worker's commands (the gateway too, for local leases) die with it only if they were
    // stopped; what is left is reported by the spec's leftover count
    if (liveWorker && !liveWorker.exit) liveWorker.child.kill("SIGKILL");
    process.stdout.write(JSON.stringify(report) + "\n");
    process.exit(1);
  }, 240_000);
  deadline.unref();

  main().catch((err) => {
    report.error = err.stack ?? String(err);
    process.stdout.write(JSON.stringify(report) + "\n");
    process.exit(1);
  });
}
