// bench/queue_bridge_idle.mjs: what upstream's queue_v1 callback bridge (the real
// @paperclipai/adapter-utils installed in spec/queue_bridge/node_modules) costs a provider while
// the agent makes NO call: the environmentExecute requests its host-side loop sends to our
// worker during an idle window. The bridge bench (bench/bridge_bench.lua) runs it; the per-call
// latency comes from spec/queue_bridge/drive_bridge.mjs.
//
// It plays the Paperclip server as drive_bridge.mjs does (same worker start, initialize, config,
// lease, realize, execution target and runner; see that file for the details: its Worker and
// classify are the ones used here): it starts the bridge with upstream's
// startAdapterExecutionTargetPaperclipBridge, waits --settle seconds, then counts every
// environmentExecute for --idle seconds, by kind, then stops the bridge, releases the lease and
// shuts the worker down.
//
//   node bench/queue_bridge_idle.mjs --binary PATH --provider local|ssh --config JSON
//        --api-url URL --api-key KEY [--idle SECONDS] [--settle SECONDS]
//
// Prints ONE JSON report as the last line of stdout; exit 0 when it ran, 1 otherwise.
// Everything it starts is stopped before it exits (a 120 s deadline kills the worker).
import { spawn } from "node:child_process";
import { randomUUID } from "node:crypto";

const started = Date.now();
const report = { ok: false, execs: {}, idle: null, failedExecs: [] };
const log = (msg) => process.stderr.write(`[queue_bridge_idle +${Date.now() - started}ms] ${msg}\n`);
const MODULE = new URL(
  "../spec/queue_bridge/node_modules/@paperclipai/adapter-utils/dist/execution-target.js",
  import.meta.url,
);
// Imported in main, as MODULE is: upstream's package missing is a report, not a crash.
const DRIVER = new URL("../spec/queue_bridge/drive_bridge.mjs", import.meta.url);

function parseArgs(argv) {
  const o = { idle: 5, settle: 1, config: {} };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const next = () => {
      if (i + 1 >= argv.length) throw new Error(`${a} needs a value`);
      return argv[++i];
    };
    if (a === "--binary") o.binary = next();
    else if (a === "--provider") o.provider = next();
    else if (a === "--config") o.config = JSON.parse(next());
    else if (a === "--api-url") o.apiUrl = next();
    else if (a === "--api-key") o.apiKey = next();
    else if (a === "--idle") o.idle = Number(next());
    else if (a === "--settle") o.settle = Number(next());
    else throw new Error(`unknown argument ${a}`);
  }
  if (!o.binary || !o.provider || !o.apiUrl || !o.apiKey) {
    throw new Error("--binary, --provider, --api-url and --api-key are required");
  }
  if (!(o.idle > 0) || !(o.settle >= 0)) throw new Error("--idle must be > 0, --settle >= 0");
  return o;
}

let liveWorker = null;

async function main() {
  const o = parseArgs(process.argv.slice(2));
  const { startAdapterExecutionTargetPaperclipBridge } = await import(MODULE.href);
  const { Worker, classify } = await import(DRIVER.href);
  report.provider = o.provider;
  const driverKey = o.provider;
  const companyId = "company-1";
  const environmentId = `env-${randomUUID()}`;
  const runId = `run-${randomUUID()}`;
  const worker = new Worker(o.binary, o.provider);
  liveWorker = worker;
  let lease = null;
  let leaseConfig = null;
  let leaseMetadata = null;
  let bridge = null;
  // idle window bookkeeping: null outside it
  let window = null;
  try {
    const manifest = await new Promise((resolve, reject) => {
      const p = spawn(o.binary, ["manifest", o.provider], { env: { PATH: process.env.PATH } });
      let out = "";
      p.stdout.on("data", (d) => (out += d));
      p.on("error", reject);
      p.on("exit", (code) => (code === 0 ? resolve(JSON.parse(out)) : reject(new Error(`manifest exited ${code}`))));
    });
    const init = await worker.call("initialize", { manifest, config: {},
      instanceInfo: { instanceId: "default", hostVersion: "2026.824.1", deploymentMode: "authenticated" },
      apiVersion: 1, databaseNamespace: null }, 15_000);
    if (!init?.ok) throw new Error(`initialize failed: ${JSON.stringify(init)}`);
    const validated = await worker.call("environmentValidateConfig", { driverKey, config: o.config });
    if (!validated?.ok) throw new Error(`config invalid: ${JSON.stringify(validated)}`);
    const savedConfig = { ...(validated.normalizedConfig ?? o.config), provider: driverKey, streamRunLogs: true };
    const { provider: _p, ...acquireConfig } = savedConfig;
    lease = await worker.call("environmentAcquireLease", { driverKey, companyId, environmentId,
      issueId: "issue-1", config: acquireConfig, runId, workspaceMode: "isolated", agentId: "agent-1",
      executionWorkspaceId: "ew-1", adapterType: "claude_local" }, 60_000);
    leaseMetadata = { agentId: "agent-1", driver: "sandbox", executionWorkspaceMode: "isolated",
      pluginId: "plugin-uuid", pluginKey: manifest.id, sandboxProviderPlugin: true,
      ...savedConfig, ...(lease.metadata ?? {}) };
    leaseConfig = { ...leaseMetadata };
    for (const k of ["driver", "executionWorkspaceMode", "pluginId", "pluginKey", "providerMetadata",
      "remoteCwd", "shellCommand", "sandboxProviderPlugin", "provider"]) delete leaseConfig[k];
    const leaseParam = { providerLeaseId: lease.providerLeaseId, metadata: leaseMetadata, expiresAt: null };
    const realized = await worker.call("environmentRealizeWorkspace", { driverKey, companyId, environmentId,
      issueId: "issue-1", config: leaseConfig, lease: leaseParam,
      workspace: { remotePath: lease.metadata?.remoteCwd, mode: "isolated" } }, 60_000);
    const remoteCwd = (typeof realized?.cwd === "string" && realized.cwd.trim()) || lease.metadata?.remoteCwd || "/tmp";
    report.commandRunner = lease.metadata?.commandRunner ?? null;

    const runner = {
      supportsSingleStreamStdinProgress: false,
      execute: async (input) => {
        const kind = classify(input.command, input.args);
        const stat = (report.execs[kind] ??= { count: 0, totalMs: 0 });
        const w = window;
        const t0 = Date.now();
        let result;
        try {
          result = await worker.call("environmentExecute", { driverKey, companyId, environmentId,
            issueId: "issue-1", config: leaseConfig, lease: leaseParam, command: input.command,
            args: input.args, cwd: input.cwd ?? remoteCwd, env: input.env, stdin: input.stdin,
            timeoutMs: input.timeoutMs, bypassSession: true },
          (input.timeoutMs ?? leaseConfig.timeoutMs ?? 0) + 30_000);
        } catch (err) {
          report.failedExecs.push({ kind, error: err.message });
          throw err;
        } finally {
          const ms = Date.now() - t0;
          stat.count++;
          stat.totalMs += ms;
          if (w && !w.closed) { // started inside the window
            w.count++;
            w.busyMs += ms;
            w.byKind[kind] = (w.byKind[kind] ?? 0) + 1;
          }
        }
        if (result.exitCode !== 0 || result.timedOut) report.failedExecs.push({ kind, exitCode: result.exitCode });
        return { exitCode: result.exitCode, signal: result.signal ?? null, timedOut: result.timedOut,
          stdout: result.stdout, stderr: result.stderr, pid: null, startedAt: new Date(t0).toISOString(),
          finishedAt: new Date().toISOString(), durationMs: Date.now() - t0 };
      },
    };
    const shellCommand = lease.metadata?.shellCommand === "bash" || lease.metadata?.shellCommand === "sh"
      ? lease.metadata.shellCommand : null;
    const target = { kind: "remote", transport: "sandbox", providerKey: driverKey, shellCommand, remoteCwd,
      environmentId, leaseId: `lease-${randomUUID()}`,
      timeoutMs: "timeoutMs" in leaseConfig ? leaseConfig.timeoutMs : null, streamRunLogs: true, runner };

    const t0 = Date.now();
    bridge = await startAdapterExecutionTargetPaperclipBridge({ runId, target, adapterKey: "claude_local",
      hostApiToken: o.apiKey, hostApiUrl: o.apiUrl, onLog: async () => {} });
    report.bridgeStartMs = Date.now() - t0;
    report.bridgeMode = bridge.env.PAPERCLIP_API_BRIDGE_MODE;
    log(`bridge up in ${report.bridgeStartMs} ms; settling ${o.settle} s, then idle ${o.idle} s`);
    await new Promise((r) => setTimeout(r, o.settle * 1000));
    window = { count: 0, busyMs: 0, byKind: {}, closed: false, t0: Date.now() };
    await new Promise((r) => setTimeout(r, o.idle * 1000));
    window.closed = true;
    const seconds = (Date.now() - window.t0) / 1000;
    report.idle = { seconds, execs: window.count, perSecond: window.count / seconds,
      byKind: window.byKind, busyMs: window.busyMs };
    log(`idle: ${window.count} environmentExecute requests in ${seconds.toFixed(2)} s`);
  } catch (err) {
    report.error = err.stack ?? String(err);
    log(`ERROR: ${report.error}`);
  } finally {
    if (bridge) {
      try {
        await bridge.stop();
      } catch (err) {
        report.stopError = err.message;
      }
    }
    if (lease?.providerLeaseId) {
      try {
        await worker.call("environmentReleaseLease", { driverKey, companyId, environmentId,
          issueId: "issue-1", config: leaseConfig, providerLeaseId: lease.providerLeaseId,
          leaseMetadata }, 60_000);
      } catch (err) {
        report.releaseError = err.message;
      }
    }
    report.workerExit = await worker.stop();
    if (report.workerExit?.code !== 0) report.workerStderr = worker.stderr.slice(-2000);
  }
  report.ok = !report.error && report.idle !== null && report.failedExecs.length === 0;
  report.totalMs = Date.now() - started;
  process.stdout.write(JSON.stringify(report) + "\n");
  process.exit(report.ok ? 0 : 1);
}

const deadline = setTimeout(() => {
  report.error = "queue_bridge_idle.mjs: overall deadline (120 s) exceeded";
  if (liveWorker && !liveWorker.exit) liveWorker.child.kill("SIGKILL");
  process.stdout.write(JSON.stringify(report) + "\n");
  process.exit(1);
}, 120_000);
deadline.unref();
// the bench stops us with SIGTERM: stop the worker with us (its lease's gateway dies with it
// only when the bridge was stopped; the bench removes the lease directories itself)
for (const sig of ["SIGTERM", "SIGINT", "SIGHUP"]) {
  process.on(sig, () => {
    if (liveWorker && !liveWorker.exit) liveWorker.child.kill("SIGKILL");
    process.exit(130);
  });
}

main().catch((err) => {
  report.error = err.stack ?? String(err);
  process.stdout.write(JSON.stringify(report) + "\n");
  process.exit(1);
});
