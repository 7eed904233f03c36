// Peer for the worker benchmark: a "local" sandbox provider written the way
// upstream writes its sandbox-provider plugins (packages/plugins/sandbox-providers/*):
// definePlugin() from @paperclipai/plugin-sdk with onEnvironment* hooks, started
// by the SDK's own runWorker(), which speaks NDJSON JSON-RPC 2.0 on stdin/stdout.
//
// A lease is a private temp directory. Execute spawns the command there with the
// caller's env over a minimal base, collects stdout/stderr, and kills it on timeout.
// Nothing here is tuned to be slow or fast: it is the ordinary SDK path.

import { spawn } from "node:child_process";
import { mkdtemp, rm } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { definePlugin, runWorker } from "@paperclipai/plugin-sdk";

const DRIVER_KEY = "local";
const LEASE_PREFIX = "paperclip-local-";
const DEFAULT_TIMEOUT_MS = 300_000;
const KILL_GRACE_MS = 2_000;

function parseDriverConfig(raw) {
  const config = raw && typeof raw === "object" ? raw : {};
  const timeoutMs = Number(config.timeoutMs ?? DEFAULT_TIMEOUT_MS);
  return {
    timeoutMs: Number.isFinite(timeoutMs) ? Math.trunc(timeoutMs) : DEFAULT_TIMEOUT_MS,
    reuseLease: config.reuseLease === true,
  };
}

function leaseRoot() {
  return os.tmpdir();
}

// Map a lease back to its directory from providerLeaseId + metadata alone (the
// worker keeps no state across restarts), refusing anything outside our prefix.
function leaseDir(providerLeaseId, metadata) {
  const fromMeta = typeof metadata?.remoteCwd === "string" ? metadata.remoteCwd : null;
  const dir = path.resolve(fromMeta ?? path.join(leaseRoot(), String(providerLeaseId)));
  const base = path.basename(dir);
  if (path.dirname(dir) !== path.resolve(leaseRoot()) || !base.startsWith(LEASE_PREFIX)) {
    throw new Error(`Lease directory ${dir} is not a local provider workspace.`);
  }
  if (providerLeaseId && base !== providerLeaseId) {
    throw new Error(`Lease directory ${dir} does not belong to lease ${providerLeaseId}.`);
  }
  return dir;
}

function baseEnv() {
  return {
    PATH: process.env.PATH || "/usr/local/bin:/usr/bin:/bin",
    HOME: os.homedir(),
    LANG: "C.UTF-8",
  };
}

function runCommand({ command, args, cwd, env, stdin, timeoutMs }) {
  return new Promise((resolve, reject) => {
    const child = spawn(command, args ?? [], {
      cwd,
      env: { ...baseEnv(), ...(env ?? {}) },
      stdio: [stdin != null ? "pipe" : "ignore", "pipe", "pipe"],
    });
    const stdout = [];
    const stderr = [];
    let timedOut = false;
    let killTimer = null;
    const timer = setTimeout(() => {
      timedOut = true;
      child.kill("SIGTERM");
      killTimer = setTimeout(() => child.kill("SIGKILL"), KILL_GRACE_MS);
    }, timeoutMs);

    // When spawn itself fails (EMFILE, ENOENT) the pipes are missing and
    // "error" follows instead of "close".
    child.stdout?.on("data", (chunk) => stdout.push(chunk));
    child.stderr?.on("data", (chunk) => stderr.push(chunk));
    child.on("error", (error) => {
      clearTimeout(timer);
      clearTimeout(killTimer);
      reject(error);
    });
    child.on("close", (code, signal) => {
      clearTimeout(timer);
      clearTimeout(killTimer);
      let errText = Buffer.concat(stderr).toString("utf8");
      if (timedOut) errText += `Command timed out after ${timeoutMs} ms\n`;
      resolve({
        exitCode: timedOut ? null : code,
        signal: signal ?? null,
        timedOut,
        stdout: Buffer.concat(stdout).toString("utf8"),
        stderr: errText,
      });
    });
    if (stdin != null && child.stdin) {
      child.stdin.on("error", () => {}); // EPIPE when the command ignores its stdin
      child.stdin.end(stdin);
    }
  });
}

async function removeLease(params) {
  if (!params.providerLeaseId) return;
  const dir = leaseDir(params.providerLeaseId, params.leaseMetadata);
  await rm(dir, { recursive: true, force: true });
  return { providerLeaseId: params.providerLeaseId, state: "destroyed" };
}

const plugin = definePlugin({
  async setup(ctx) {
    ctx.logger.info("Local sandbox provider plugin ready");
  },

  async onHealth() {
    return { status: "ok", message: "Local sandbox provider plugin healthy" };
  },

  async onEnvironmentValidateConfig(params) {
    const config = parseDriverConfig(params.config);
    if (config.timeoutMs < 1 || config.timeoutMs > 86_400_000) {
      return { ok: false, errors: ["timeoutMs must be between 1 and 86400000."] };
    }
    return { ok: true, normalizedConfig: { ...params.config, ...config } };
  },

  async onEnvironmentAcquireLease(params) {
    parseDriverConfig(params.config);
    const dir = await mkdtemp(path.join(leaseRoot(), LEASE_PREFIX));
    return {
      providerLeaseId: path.basename(dir),
      metadata: { provider: DRIVER_KEY, remoteCwd: dir, shellCommand: "bash" },
    };
  },

  async onEnvironmentRealizeWorkspace(params) {
    const dir = leaseDir(params.lease.providerLeaseId, params.lease.metadata);
    return { cwd: dir, metadata: { provider: DRIVER_KEY, remoteCwd: dir } };
  },

  async onEnvironmentExecute(params) {
    if (!params.lease?.providerLeaseId) {
      return {
        exitCode: 1,
        timedOut: false,
        stdout: "",
        stderr: "No provider lease ID available for execution.",
      };
    }
    const config = parseDriverConfig(params.config);
    const dir = leaseDir(params.lease.providerLeaseId, params.lease.metadata);
    return runCommand({
      command: params.command,
      args: params.args,
      cwd: params.cwd ?? dir,
      env: params.env,
      stdin: params.stdin,
      timeoutMs: params.timeoutMs ?? config.timeoutMs,
    });
  },

  async onEnvironmentReleaseLease(params) {
    return removeLease(params);
  },

  async onEnvironmentDestroyLease(params) {
    return removeLease(params);
  },
});

export default plugin;
runWorker(plugin, import.meta.url);
