// Peer for the e2b benchmark: upstream Paperclip's newest E2B sandbox provider
// (packages/plugins/sandbox-providers/e2b, "v-newest" in
// shared/reference/providers.md section 1), rebuilt hook for hook on the real
// `e2b` SDK from npm and @paperclipai/plugin-sdk (definePlugin + runWorker, which
// speaks NDJSON JSON-RPC 2.0 on stdin/stdout).
//
// What each hook sends is upstream's:
//   acquire  Sandbox.create(template, {apiKey, timeoutMs, metadata}), setTimeout,
//            `pwd`, `mkdir -p <pwd>/paperclip-workspace`; kill on a failed setup
//   execute  Sandbox.connect, best-effort setTimeout, stdin staged with
//            files.write(/tmp/paperclip-stdin-<uuid>), the clean-environment script
//            inside the exact-cancellation wrapper, commands.run(background, cwd,
//            timeoutMs) + wait, then files.remove of the staged stdin
//   release  Sandbox.connect, then kill (or pause when reuseLease, kill if that fails)
//
// Where the SDK is pointed: the `e2b` SDK reads E2B_API_URL, E2B_SANDBOX_URL and
// E2B_DOMAIN from the environment itself (ConnectionConfig), so, like upstream's
// plugin, this file passes no URLs; the benchmark sets those variables in this
// worker's environment to reach the fake E2B.
//
// The installed @paperclipai/plugin-sdk (2026.916.1) exports neither the
// execution registry nor the cancellation scripts that upstream's newest plugin
// imports from a later SDK, and its worker does not dispatch
// environmentCancelExecution. Both are written out below with the same
// behaviour and the same script text, so every execute runs exactly the command
// upstream runs; the cancel hook is kept for completeness (this SDK never calls it).

import { randomUUID } from "node:crypto";
import path from "node:path";
import { CommandExitError, Sandbox, SandboxNotFoundError, TimeoutError } from "e2b";
import { definePlugin, runWorker } from "@paperclipai/plugin-sdk";

const DEFAULT_TIMEOUT_MS = 3_600_000;
const MAX_EXECUTION_ID = 512;

// ---------------------------------------------------------------------------
// the SDK's exact-cancellation helpers (upstream: plugin-sdk, shared by the
// sandbox providers)

function checkExecutionId(executionId) {
  if (typeof executionId !== "string" || executionId.length === 0) {
    throw new Error("Environment executionId must be a non-empty opaque string.");
  }
  if (executionId.length > MAX_EXECUTION_ID) {
    throw new Error(`Environment executionId exceeds the ${MAX_EXECUTION_ID}-character limit.`);
  }
  return executionId;
}

function scopeKey(params) {
  return JSON.stringify([params.companyId, params.environmentId, params.lease.providerLeaseId, checkExecutionId(params.executionId)]);
}

// Active executions of this worker, keyed by company, environment, lease and
// execution id. An entry is registered before any provider work starts, so a
// cancel that arrives while the execute is still connecting finds it.
function executionRegistry() {
  const active = new Map();
  return {
    async execute(params, { execute, cancel }) {
      const executionId = checkExecutionId(params.executionId);
      const key = scopeKey(params);
      if (active.has(key)) throw new Error(`Environment execution "${executionId}" is already active.`);
      const entry = {
        companyId: params.companyId,
        environmentId: params.environmentId,
        providerLeaseId: params.lease.providerLeaseId,
        executionId,
        cancel,
        cancellation: null,
      };
      active.set(key, entry);
      try {
        return await execute();
      } finally {
        if (active.get(key) === entry) active.delete(key);
      }
    },
    async cancel(params, cancelUntracked) {
      const executionId = checkExecutionId(params.executionId);
      const entry = active.get(scopeKey(params));
      const matches =
        entry &&
        entry.companyId === params.companyId &&
        entry.environmentId === params.environmentId &&
        entry.providerLeaseId === params.lease.providerLeaseId &&
        entry.executionId === params.executionId;
      if (!matches) return { executionId, cancelled: (await cancelUntracked?.(params.reason)) ?? false };
      entry.cancellation ??= Promise.resolve().then(() => entry.cancel(params.reason));
      await entry.cancellation;
      return { executionId, cancelled: true };
    },
  };
}

function shellQuote(value) {
  return `'${value.replace(/'/g, `'"'"'`)}'`;
}

// /tmp/.paperclip-execution-<hex of the id's UTF-8 bytes>
function controlDir(executionId) {
  const hex = Buffer.from(checkExecutionId(executionId), "utf8").toString("hex");
  return `/tmp/.paperclip-execution-${hex}`;
}

// The command in its own process group (setsid when present), its pid published
// in the control dir, a cancel marker honoured before and after launch.
function wrapCancellable(executionId, commandScript) {
  const dir = controlDir(executionId);
  const runner = (kind) =>
    [
      `paperclip_control=${shellQuote(dir)}`,
      `printf ${shellQuote(`${kind}:%s\\n`)} "$$" > "$paperclip_control/pid"`,
      'if [ -f "$paperclip_control/cancelled" ]; then exit 130; fi',
      `exec sh -c ${shellQuote(commandScript)}`,
    ].join("\n");
  return [
    `paperclip_control=${shellQuote(dir)}`,
    'mkdir -p "$paperclip_control"',
    'paperclip_cleanup() { rm -rf -- "$paperclip_control"; }',
    "trap paperclip_cleanup EXIT",
    'if [ -f "$paperclip_control/cancelled" ]; then exit 130; fi',
    "if command -v setsid >/dev/null 2>&1; then",
    `  setsid sh -c ${shellQuote(runner("group"))} &`,
    "else",
    `  sh -c ${shellQuote(runner("process"))} &`,
    "fi",
    "paperclip_pid=$!",
    'wait "$paperclip_pid"',
    "exit $?",
  ].join("\n");
}

// Mark the execution cancelled, wait up to 2 s for its pid, TERM it (the group
// when it has one), KILL it after the grace period.
function cancelScript(executionId, termGraceMs = 5_000) {
  const dir = controlDir(executionId);
  const graceTicks = Math.max(0, Math.ceil(termGraceMs / 100));
  return [
    `paperclip_control=${shellQuote(dir)}`,
    'mkdir -p "$paperclip_control"',
    ': > "$paperclip_control/cancelled"',
    "paperclip_wait=0",
    'while [ ! -s "$paperclip_control/pid" ] && [ "$paperclip_wait" -lt 100 ]; do',
    "  sleep 0.02",
    "  paperclip_wait=$((paperclip_wait + 1))",
    "done",
    'if [ ! -s "$paperclip_control/pid" ]; then exit 0; fi',
    'IFS=: read -r paperclip_kind paperclip_pid < "$paperclip_control/pid"',
    'case "$paperclip_pid" in ""|*[!0-9]*) exit 0 ;; esac',
    'paperclip_alive() { if [ "$paperclip_kind" = "group" ]; then kill -0 "-$paperclip_pid" 2>/dev/null; else kill -0 "$paperclip_pid" 2>/dev/null; fi; }',
    'paperclip_signal() { if [ "$paperclip_kind" = "group" ]; then kill "-$1" "-$paperclip_pid" 2>/dev/null || true; else kill "-$1" "$paperclip_pid" 2>/dev/null || true; fi; }',
    "if paperclip_alive; then paperclip_signal TERM; fi",
    "paperclip_wait=0",
    `while paperclip_alive && [ "$paperclip_wait" -lt ${graceTicks} ]; do`,
    "  sleep 0.1",
    "  paperclip_wait=$((paperclip_wait + 1))",
    "done",
    "if paperclip_alive; then paperclip_signal KILL; fi",
    "exit 0",
  ].join("\n");
}

// ---------------------------------------------------------------------------
// the E2B provider

const activeExecutions = executionRegistry();

function parseDriverConfig(raw) {
  const config = raw && typeof raw === "object" ? raw : {};
  const timeoutMs = Number(config.timeoutMs ?? DEFAULT_TIMEOUT_MS);
  return {
    template: typeof config.template === "string" && config.template.trim().length > 0 ? config.template.trim() : "base",
    apiKey: typeof config.apiKey === "string" && config.apiKey.trim().length > 0 ? config.apiKey.trim() : null,
    timeoutMs: Number.isFinite(timeoutMs) ? Math.trunc(timeoutMs) : DEFAULT_TIMEOUT_MS,
    reuseLease: config.reuseLease === true,
  };
}

function apiKeyOf(config) {
  if (config.apiKey) return config.apiKey;
  const fromEnv = process.env.E2B_API_KEY?.trim() ?? "";
  if (!fromEnv) throw new Error("E2B sandbox environments require an API key in config or E2B_API_KEY.");
  return fromEnv;
}

function messageOf(error) {
  return error instanceof Error ? error.message : String(error);
}

function createSandbox(config) {
  return Sandbox.create(config.template, {
    apiKey: apiKeyOf(config),
    timeoutMs: config.timeoutMs,
    metadata: { paperclipProvider: "e2b" },
  });
}

function connectSandbox(config, sandboxId) {
  return Sandbox.connect(sandboxId, { apiKey: apiKeyOf(config), timeoutMs: config.timeoutMs });
}

async function connectForCleanup(config, sandboxId) {
  try {
    return await connectSandbox(config, sandboxId);
  } catch (error) {
    if (error instanceof SandboxNotFoundError) return null;
    throw error;
  }
}

async function ensureWorkspace(sandbox, remoteCwd) {
  await sandbox.commands.run(`mkdir -p ${shellQuote(remoteCwd)}`);
}

async function resolveWorkingDirectory(sandbox) {
  const result = await sandbox.commands.run("pwd");
  const cwd = result.stdout.trim();
  const remoteCwd = path.posix.join(cwd.length > 0 ? cwd : "/", "paperclip-workspace");
  await ensureWorkspace(sandbox, remoteCwd);
  return remoteCwd;
}

function leaseMetadata({ config, sandbox, remoteCwd, resumedLease }) {
  return {
    provider: "e2b",
    shellCommand: "bash",
    template: config.template,
    timeoutMs: config.timeoutMs,
    reuseLease: config.reuseLease,
    sandboxId: sandbox.sandboxId,
    sandboxDomain: sandbox.sandboxDomain,
    remoteCwd,
    resumedLease,
  };
}

// The v-newest command script: /etc/profile quietly, then the command under
// `env -i` with only PATH, HOME/USERPROFILE (a private temp HOME unless the
// caller gives one) and the caller's env.
function commandScript({ command, args, env }) {
  const vars = env ?? {};
  for (const key of Object.keys(vars)) {
    if (!/^[A-Za-z_][A-Za-z0-9_]*$/.test(key)) throw new Error(`Invalid sandbox environment variable key: ${key}`);
  }
  const home = vars.HOME?.trim() || vars.USERPROFILE?.trim() || null;
  const effective = { ...vars };
  if (home) {
    effective.HOME ??= home;
    effective.USERPROFILE ??= home;
  }
  const assignments = Object.entries(effective)
    .filter(([, value]) => typeof value === "string")
    .map(([key, value]) => `${key}=${shellQuote(value)}`);
  const argv = [command, ...args].map(shellQuote).join(" ");
  const homeArgs = home ? "" : ' HOME="$paperclip_provider_home" USERPROFILE="$paperclip_provider_home"';
  const execLine = `${home ? "exec " : ""}env -i PATH="$PATH"${homeArgs}${assignments.length ? ` ${assignments.join(" ")}` : ""} ${argv}`;
  const lines = ["if [ -f /etc/profile ]; then . /etc/profile >/dev/null 2>&1 || true; fi"];
  if (!home) {
    lines.push('paperclip_provider_home="$(mktemp -d /tmp/paperclip-provider-home.XXXXXX)"', `trap 'rm -rf -- "$paperclip_provider_home"' EXIT`);
  }
  lines.push(execLine);
  return lines.join(" && ");
}

// TimeoutError output: the error's own field when non-empty, else its result's.
function timeoutStream(error, key) {
  const direct = error[key];
  if (typeof direct === "string" && direct.length > 0) return direct;
  const nested = error.result?.[key];
  if (typeof nested === "string") return nested;
  return typeof direct === "string" ? direct : "";
}

function timeoutResult(error) {
  const stdout = timeoutStream(error, "stdout");
  const output = timeoutStream(error, "stderr");
  const message = error.message.trim();
  let stderr;
  if (output.length > 0) {
    stderr = message.length > 0 && !output.includes(message) ? `${output}${output.endsWith("\n") ? "" : "\n"}${message}\n` : output;
  } else {
    stderr = message.length > 0 ? `${message}\n` : "";
  }
  return { exitCode: null, timedOut: true, stdout, stderr };
}

async function killBestEffort(sandbox, reason) {
  await sandbox.kill().catch((error) => {
    console.warn(`Failed to kill E2B sandbox during ${reason}: ${messageOf(error)}`);
  });
}

async function releaseBestEffort(sandbox, reuseLease) {
  if (!reuseLease) {
    await killBestEffort(sandbox, "lease release");
    return;
  }
  try {
    await sandbox.pause();
  } catch (error) {
    console.warn(`Failed to pause E2B sandbox during lease release: ${messageOf(error)}. Attempting kill instead.`);
    await killBestEffort(sandbox, "lease release fallback cleanup");
  }
}

const CANCELLED = { exitCode: 130, timedOut: false, stdout: "", stderr: "" };

const plugin = definePlugin({
  async setup(ctx) {
    ctx.logger.info("E2B sandbox provider plugin ready");
  },

  async onHealth() {
    return { status: "ok", message: "E2B sandbox provider plugin healthy" };
  },

  async onEnvironmentValidateConfig(params) {
    const config = parseDriverConfig(params.config);
    const errors = [];
    if (typeof params.config?.template === "string" && params.config.template.trim().length === 0) {
      errors.push("E2B sandbox environments require a template.");
    }
    if (config.timeoutMs < 1 || config.timeoutMs > 86_400_000) errors.push("timeoutMs must be between 1 and 86400000.");
    if (errors.length > 0) return { ok: false, errors };
    return { ok: true, normalizedConfig: { ...config } };
  },

  async onEnvironmentProbe(params) {
    const config = parseDriverConfig(params.config);
    const base = { provider: "e2b", template: config.template, timeoutMs: config.timeoutMs, reuseLease: config.reuseLease };
    try {
      const sandbox = await createSandbox(config);
      try {
        await sandbox.setTimeout(config.timeoutMs);
        const remoteCwd = await resolveWorkingDirectory(sandbox);
        return {
          ok: true,
          summary: `Connected to E2B sandbox template ${config.template}.`,
          metadata: { ...base, sandboxId: sandbox.sandboxId, sandboxDomain: sandbox.sandboxDomain, remoteCwd },
        };
      } finally {
        await sandbox.kill().catch(() => undefined);
      }
    } catch (error) {
      return { ok: false, summary: `E2B sandbox probe failed for template ${config.template}.`, metadata: { ...base, error: messageOf(error) } };
    }
  },

  async onEnvironmentAcquireLease(params) {
    const config = parseDriverConfig(params.config);
    const sandbox = await createSandbox(config);
    try {
      await sandbox.setTimeout(config.timeoutMs);
      const remoteCwd = await resolveWorkingDirectory(sandbox);
      return { providerLeaseId: sandbox.sandboxId, metadata: leaseMetadata({ config, sandbox, remoteCwd, resumedLease: false }) };
    } catch (error) {
      await sandbox.kill().catch(() => undefined);
      throw error;
    }
  },

  async onEnvironmentResumeLease(params) {
    const config = parseDriverConfig(params.config);
    try {
      const sandbox = await connectSandbox(config, params.providerLeaseId);
      try {
        await sandbox.setTimeout(config.timeoutMs);
        const remoteCwd = await resolveWorkingDirectory(sandbox);
        return { providerLeaseId: sandbox.sandboxId, metadata: leaseMetadata({ config, sandbox, remoteCwd, resumedLease: true }) };
      } catch (error) {
        await sandbox.kill().catch(() => undefined);
        throw error;
      }
    } catch (error) {
      if (error instanceof SandboxNotFoundError) return { providerLeaseId: null, metadata: { expired: true } };
      throw error;
    }
  },

  async onEnvironmentReleaseLease(params) {
    if (!params.providerLeaseId) return;
    const config = parseDriverConfig(params.config);
    const sandbox = await connectForCleanup(config, params.providerLeaseId);
    if (!sandbox) return;
    await releaseBestEffort(sandbox, config.reuseLease);
  },

  async onEnvironmentDestroyLease(params) {
    if (!params.providerLeaseId) return;
    const config = parseDriverConfig(params.config);
    const sandbox = await connectForCleanup(config, params.providerLeaseId);
    if (!sandbox) return;
    await killBestEffort(sandbox, "lease destroy");
  },

  async onEnvironmentRealizeWorkspace(params) {
    const config = parseDriverConfig(params.config);
    const fromLease = params.lease.metadata?.remoteCwd;
    const remoteCwd =
      typeof fromLease === "string" && fromLease.trim().length > 0
        ? fromLease.trim()
        : params.workspace.remotePath ?? params.workspace.localPath ?? "/paperclip-workspace";
    if (params.lease.providerLeaseId) {
      const sandbox = await connectSandbox(config, params.lease.providerLeaseId);
      await ensureWorkspace(sandbox, remoteCwd);
    }
    return { cwd: remoteCwd, metadata: { provider: "e2b", remoteCwd } };
  },

  async onEnvironmentExecute(params) {
    let handle = null;
    let cancelRequested = false;
    return await activeExecutions.execute(params, {
      cancel: async () => {
        cancelRequested = true;
        await handle?.kill();
      },
      execute: async () => {
        if (!params.lease.providerLeaseId) {
          return { exitCode: 1, timedOut: false, stdout: "", stderr: "No provider lease ID available for execution." };
        }
        const config = parseDriverConfig(params.config);
        const sandbox = await connectSandbox(config, params.lease.providerLeaseId);
        try {
          await sandbox.setTimeout(config.timeoutMs);
        } catch {
          // best effort: the sandbox keeps its current lifetime
        }
        if (cancelRequested) return CANCELLED;
        const script = commandScript({ command: params.command, args: params.args ?? [], env: params.env });
        const timeoutMs = params.timeoutMs ?? config.timeoutMs;
        let stdinPath = null;
        if (params.stdin != null) {
          stdinPath = `/tmp/paperclip-stdin-${randomUUID()}`;
          try {
            await sandbox.files.write(stdinPath, params.stdin);
          } catch (error) {
            await sandbox.files.remove(stdinPath).catch(() => undefined);
            throw error;
          }
        }
        const command = wrapCancellable(params.executionId, stdinPath ? `${script} < ${shellQuote(stdinPath)}` : script);
        try {
          if (cancelRequested) return CANCELLED;
          // background: the handle has the command's pid, so a cancel can kill
          // exactly this command
          handle = await sandbox.commands.run(command, { background: true, cwd: params.cwd, timeoutMs });
          if (cancelRequested) await handle.kill();
          const result = await handle.wait();
          return { exitCode: result.exitCode, timedOut: false, stdout: result.stdout, stderr: result.stderr };
        } catch (error) {
          if (error instanceof CommandExitError) {
            return { exitCode: error.exitCode, timedOut: false, stdout: error.stdout, stderr: error.stderr };
          }
          if (error instanceof TimeoutError) return timeoutResult(error);
          throw error;
        } finally {
          if (stdinPath) await sandbox.files.remove(stdinPath).catch(() => undefined);
        }
      },
    });
  },

  async onEnvironmentCancelExecution(params) {
    return await activeExecutions.cancel(params, async () => {
      if (!params.lease.providerLeaseId) return false;
      const config = parseDriverConfig(params.config);
      const sandbox = await connectSandbox(config, params.lease.providerLeaseId);
      let result;
      try {
        result = await sandbox.commands.run(cancelScript(params.executionId), { cwd: "/", timeoutMs: Math.min(config.timeoutMs, 10_000) });
      } catch (error) {
        if (error instanceof CommandExitError) throw new Error(`E2B exact command cancellation failed with exit code ${error.exitCode}.`);
        throw error;
      }
      if (result.exitCode !== 0) throw new Error(`E2B exact command cancellation failed with exit code ${result.exitCode}.`);
      return true;
    });
  },
});

export default plugin;
runWorker(plugin, import.meta.url);
