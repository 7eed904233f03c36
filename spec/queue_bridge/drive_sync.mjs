// spec/queue_bridge/drive_sync.mjs: upstream's REAL host-side sandbox runtime
// (@paperclipai/adapter-utils, pinned in package.json: prepareAdapterExecutionTargetRuntime ->
// prepareCommandManagedRuntime -> prepareSandboxManagedRuntime, and its restoreWorkspace) over
// provider-host's worker, once with native sync and once with the runtime's own fallback, on
// the same host workspace. Issue 12 item 4: both must produce the same workspace.
//
// How upstream picks (command-managed-runtime.js, createCommandManagedRuntimeClient): the
// client's syncIn/syncOut delegate to the sandbox runner's `syncIn`/`syncOut` when the runner
// has BOTH; otherwise syncIn is its tar + base64 fallback (host tarball, writeFile as
// `base64 -d` on stdin, `tar -xf` as a shell command, all through environmentExecute) and
// there is no syncOut, so restoreWorkspace tars the sandbox workspace with a shell command and
// reads it back in base64 chunks (`dd | base64`). Paperclip's server gives the runner those two
// functions when the lease's effective capabilities say nativeSyncIn and nativeSyncOut. This
// driver plays the server: mode "native" builds the runner with syncIn/syncOut sending
// environmentSyncIn/environmentSyncOut to the worker, mode "fallback" builds it without them
// (what the server does for a provider whose manifest lacks the capabilities).
//
// Per mode, with a fresh lease of the provider (`local` unless --provider says otherwise) and a
// fresh copy of the same host workspace (built byte for byte the same, names and modes included):
//   1. prepareAdapterExecutionTargetRuntime syncs the workspace in (a host tarball as a file
//      mapping + post-upload extract command), one asset (a tarball, followSymlinks, exclude)
//      and one referenced project (additionalSources: a `directory` mapping with exclude globs,
//      the one place where a native transfer copies a tree itself);
//   2. a command in the sandbox (environmentExecute) adds, modifies, deletes, chmods, replaces
//      a file by a directory, plants links and writes into excluded paths;
//   3. restoreWorkspace syncs the sandbox workspace back out and merges it into the host copy.
// Report (ONE JSON line, the last on stdout): per mode a manifest of the sandbox workspace
// after sync-in, after the change, and of the host workspace after the round trip (relative
// path, type, mode bits, size, sha256, symlink target; non-UTF-8 names with \xNN escapes), the
// worker requests by method and phase, the sync results, timings; `differences` between the
// modes' manifests. Exit 0 when both modes ran; the spec judges the differences.
//
// Usage: node drive_sync.mjs --binary PATH [--provider NAME] [--config JSON | --config-env VAR]
//                            [--extra-files N [--extra-bytes B]]
//   --provider NAME  the worker's provider (`worker --provider NAME`, `manifest NAME`; the
//                    driverKey of every request): default local. The sandbox must be on this
//                    machine (local, or ssh to a loopback sshd running as this user): the
//                    driver reads lease paths (remoteCwd, providerLeaseId) directly.
//   --config JSON    the provider config (default for local: {root: <a dir in the driver's
//                    temp dir>, timeoutMs: 60000}); required for any other provider
//   --config-env VAR the config's JSON from the variable VAR (a config holding a key must
//                    not show on a command line)
//   --extra-files N  N more files of B bytes (default 4096) in the workspace (src/gen/) and N
//                    in the referenced project (gen/), for timings on a bigger tree
// The worker gets PATH and a private TMPDIR only; everything lives in one temp dir under
// $TMPDIR that is removed at the end; every wait is bounded (overall deadline 240 s).
import { spawn } from "node:child_process";
import { createHash, randomUUID } from "node:crypto";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import readline from "node:readline";
import { prepareAdapterExecutionTargetRuntime } from "@paperclipai/adapter-utils/execution-target";

const started = Date.now();
const report = { ok: false, modes: {}, differences: {}, notes: [] };
const log = (msg) => process.stderr.write(`[drive_sync +${Date.now() - started}ms] ${msg}\n`);

// ---- the worker: NDJSON JSON-RPC over stdio, every request counted by method ---------------
class Worker {
  constructor(binary, env, provider) {
    this.child = spawn(binary, ["worker", "--provider", provider], { stdio: ["pipe", "pipe", "pipe"], env });
    this.pid = this.child.pid;
    this.nextId = 1;
    this.pending = new Map();
    this.counts = {}; // phase -> method -> n
    this.phase = "setup";
    this.stderr = "";
    this.exited = new Promise((resolve) => {
      this.child.on("exit", (code, signal) => {
        this.exit = { code, signal };
        for (const p of this.pending.values()) {
          clearTimeout(p.timer);
          p.reject(new Error(`worker exited (code=${code}, signal=${signal})`));
        }
        this.pending.clear();
        resolve(this.exit);
      });
    });
    this.child.on("error", (err) => {
      this.spawnError = err.message;
    });
    this.child.stderr.on("data", (d) => {
      this.stderr = (this.stderr + d).slice(-6000);
    });
    readline.createInterface({ input: this.child.stdout }).on("line", (line) => {
      let msg;
      try {
        msg = JSON.parse(line);
      } catch {
        return;
      }
      const p = msg && msg.id !== undefined ? this.pending.get(msg.id) : null;
      if (!p || !("result" in msg || "error" in msg)) return;
      this.pending.delete(msg.id);
      clearTimeout(p.timer);
      if (msg.error) {
        const err = new Error(`${p.method}: ${msg.error.message}`);
        err.code = msg.error.code;
        err.data = msg.error.data;
        p.reject(err);
      } else {
        p.resolve(msg.result);
      }
    });
  }

  call(method, params, timeoutMs = 60_000) {
    const byPhase = (this.counts[this.phase] ??= {});
    byPhase[method] = (byPhase[method] ?? 0) + 1;
    const id = this.nextId++;
    const msg = { jsonrpc: "2.0", id, method, params };
    if (typeof params.companyId === "string") {
      msg.paperclipInvocation = { id: randomUUID(), scope: { companyId: params.companyId } };
    }
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new Error(`${method} timed out after ${timeoutMs} ms`));
      }, timeoutMs);
      this.pending.set(id, { resolve, reject, timer, method });
      this.child.stdin.write(JSON.stringify(msg) + "\n");
    });
  }

  async stop() {
    if (this.exit) return this.exit;
    const wait = (ms) => Promise.race([this.exited, new Promise((r) => setTimeout(r, ms))]);
    await Promise.race([this.call("shutdown", {}, 10_000).catch(() => undefined), this.exited]);
    await wait(2000);
    if (!this.exit) {
      this.child.kill("SIGTERM");
      await wait(5000);
    }
    if (!this.exit) {
      this.child.kill("SIGKILL");
      await wait(2000);
    }
    return this.exit;
  }
}

// ---- the host workspace --------------------------------------------------------------------
// Names as bytes: non-UTF-8 ones go through Buffer paths.
const LATIN1_CAFE = Buffer.from([0x63, 0x61, 0x66, 0xe9, 0x2e, 0x74, 0x78, 0x74]); // "caf\xe9.txt"
const BAD_UTF8 = Buffer.from([0x62, 0x61, 0x64, 0xff, 0xfe, 0x2d, 0x6e, 0x61, 0x6d, 0x65]); // "bad\xff\xfe-name"

function bytesOf(seed, n) {
  // deterministic binary content with every byte value (NULs included)
  const out = Buffer.alloc(n);
  let x = seed >>> 0;
  for (let i = 0; i < n; i++) {
    x = (Math.imul(x, 1103515245) + 12345) >>> 0;
    out[i] = i < 256 ? i : x >>> 24;
  }
  return out;
}

function put(root, rel, content, mode = 0o644) {
  const full = Buffer.isBuffer(rel) ? Buffer.concat([Buffer.from(root + "/"), rel]) : path.join(root, rel);
  const dir = Buffer.isBuffer(full) ? null : path.dirname(full);
  if (dir) fs.mkdirSync(dir, { recursive: true });
  fs.writeFileSync(full, content);
  fs.chmodSync(full, mode);
}

// The workspace: a few dozen files, nested dirs, binary, 0600, 0664, executables, links inside,
// non-UTF-8 names, AppleDouble `._*` files, excluded globs and heavy dirs, an empty dir.
function buildWorkspace(root, extra) {
  fs.mkdirSync(root, { recursive: true });
  for (let i = 0; i < extra.files; i++) put(root, `src/gen/d${i % 50}/f${i}.dat`, bytesOf(i, extra.bytes));
  put(root, "README.md", "# demo workspace\n");
  put(root, ".env.example", "A=1\n");
  put(root, ".config/tool/settings.json", '{"x": true}\n');
  for (let i = 0; i < 12; i++) put(root, `src/mod${String(i).padStart(2, "0")}.js`, `export const v = ${i};\n`);
  put(root, "src/a/b/c/deep.txt", "deep\n");
  put(root, "src/delete-me.txt", "the sandbox deletes me\n");
  put(root, "src/becomes-dir", "the sandbox replaces me by a directory\n");
  put(root, "notes/readme.md", "notes\n");
  put(root, "notes/it's a \"quoted\" name.txt", "spaces and quotes\n");
  put(root, "data/blob.bin", bytesOf(7, 70_000));
  put(root, "data/empty.bin", Buffer.alloc(0));
  put(root, "conf/private.key", "-----BEGIN KEY-----\nsecret\n", 0o600);
  put(root, "conf/shared.txt", "group-writable\n", 0o664);
  put(root, "bin/run.sh", "#!/bin/sh\necho run\n", 0o755);
  put(root, "bin/tool", "#!/bin/sh\necho tool\n", 0o700);
  // no non-UTF-8 name here: upstream's restore (workspace-restore-merge.js) walks the workspace
  // with string names and fails on one (ENOENT on lstat of the U+FFFD-mangled name), in both
  // modes; the referenced project carries them instead
  put(root, "weird/\u00e9t\u00e9 \u2713.txt", "utf-8 name\n");
  fs.symlinkSync("src/mod00.js", path.join(root, "link-to-mod00"));
  fs.symlinkSync("../src", path.join(root, "notes/src-dir-link"));
  fs.symlinkSync("does-not-exist", path.join(root, "notes/dangling"));
  put(root, "._junk", "appledouble\n");
  put(root, "src/._mod00.js", "appledouble\n");
  put(root, "cache.skip", "excluded by glob\n");
  put(root, "src/a/tmp.skip", "excluded by glob\n");
  put(root, "private-notes/todo.txt", "excluded dir\n");
  put(root, "node_modules/pkg/index.js", "heavy dir\n");
  fs.mkdirSync(path.join(root, "empty-dir"));
}

// A referenced project (additionalSources): a `directory` mapping, synced as a tree.
function buildProject(root, extra) {
  fs.mkdirSync(root, { recursive: true });
  for (let i = 0; i < extra.files; i++) put(root, `gen/d${i % 50}/f${i}.dat`, bytesOf(i + 7, extra.bytes));
  put(root, "package.json", '{"name":"ref"}\n');
  for (let i = 0; i < 8; i++) put(root, `lib/part${i}.ts`, `export const p${i} = ${i};\n`);
  put(root, "lib/deep/er/x.txt", "x\n");
  put(root, "assets/logo.bin", bytesOf(11, 9000));
  put(root, "secret.pem", "pem\n", 0o600);
  put(root, "shared.txt", "group-writable\n", 0o664);
  put(root, "scripts/build.sh", "#!/bin/sh\n", 0o755);
  fs.mkdirSync(path.join(root, "names"), { recursive: true });
  put(path.join(root, "names"), LATIN1_CAFE, "latin-1 name\n");
  put(path.join(root, "names"), BAD_UTF8, "invalid utf-8 name\n");
  fs.symlinkSync("lib/part0.ts", path.join(root, "entry.ts"));
  fs.symlinkSync("../lib", path.join(root, "names/lib-link"));
  put(root, "._junk", "appledouble\n");
  put(root, "lib/._part0.ts", "appledouble\n");
  put(root, "node_modules/dep/index.js", "heavy\n");
  put(root, "dist/out.js", "heavy\n");
  put(root, ".git/HEAD", "ref: refs/heads/main\n");
  fs.mkdirSync(path.join(root, "empty"));
}

// An asset (a tarball made on the host, followSymlinks + exclude).
function buildAsset(root) {
  put(root, "skill.md", "skill\n");
  put(root, "sub/helper.sh", "#!/bin/sh\n", 0o755);
  put(root, "scratch.tmp", "excluded\n");
  fs.symlinkSync("skill.md", path.join(root, "skill-link.md"));
}

// ---- manifests -----------------------------------------------------------------------------
const utf8 = new TextDecoder("utf-8", { fatal: true });
function nameOf(buf) {
  try {
    return utf8.decode(buf);
  } catch {
    let s = "";
    for (const b of buf) s += b >= 0x20 && b < 0x7f && b !== 0x5c ? String.fromCharCode(b) : `\\x${b.toString(16).padStart(2, "0")}`;
    return s;
  }
}

// manifest(root) -> {relpath: {type, mode, size?, sha256?, target?}}, sorted by path; names
// read as bytes (a non-UTF-8 name keeps its bytes, shown with \xNN escapes).
function manifest(root, skip = () => false) {
  const out = {};
  const walk = (dirBuf, rel) => {
    for (const nameBuf of fs.readdirSync(dirBuf, { encoding: "buffer" })) {
      const full = Buffer.concat([dirBuf, Buffer.from("/"), nameBuf]);
      const r = rel ? `${rel}/${nameOf(nameBuf)}` : nameOf(nameBuf);
      if (skip(r)) continue;
      const st = fs.lstatSync(full);
      const e = { mode: (st.mode & 0o7777).toString(8).padStart(4, "0") };
      if (st.isSymbolicLink()) {
        e.type = "symlink";
        e.target = nameOf(fs.readlinkSync(full, { encoding: "buffer" }));
      } else if (st.isDirectory()) {
        e.type = "dir";
        walk(full, r);
      } else if (st.isFile()) {
        e.type = "file";
        e.size = st.size;
        e.sha256 = createHash("sha256").update(fs.readFileSync(full)).digest("hex");
      } else {
        e.type = "other";
      }
      out[r] = e;
    }
  };
  walk(Buffer.from(root), "");
  return Object.fromEntries(Object.entries(out).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)));
}

// diff(a, b) -> [{path, a, b}] for every path whose entry differs or exists on one side only.
function diff(a, b) {
  const out = [];
  for (const p of [...new Set([...Object.keys(a), ...Object.keys(b)])].sort()) {
    if (JSON.stringify(a[p] ?? null) !== JSON.stringify(b[p] ?? null)) {
      out.push({ path: p, native: a[p] ?? null, fallback: b[p] ?? null });
    }
  }
  return out;
}

// ---- one mode ------------------------------------------------------------------------------
// The command the "agent" runs in the sandbox between sync-in and sync-out.
const CHANGE_SCRIPT = [
  "set -e",
  "cd \"$WS\"",
  "printf 'changed in the sandbox\\n' >> notes/readme.md",
  "mkdir -p added/nested && printf 'new file\\n' > added/nested/new.txt",
  "printf '#!/bin/sh\\n' > added/new-tool && chmod 0750 added/new-tool",
  "rm src/delete-me.txt",
  "chmod 0640 conf/private.key",
  "rm src/becomes-dir && mkdir src/becomes-dir && printf 'inner\\n' > src/becomes-dir/inner.txt",
  "ln -s nested/new.txt added/new-link",
  "printf 'sandbox scratch\\n' > added/scratch.skip",
  "mkdir -p private-notes && printf 'x\\n' > private-notes/sandbox.txt",
  "mkdir -p dist && printf 'heavy\\n' > dist/bundle.js",
  "printf 'appledouble\\n' > added/._meta",
].join("\n");

async function runMode(mode, ctx) {
  const { worker, root, manifestJson } = ctx;
  const m = { mode, timings: {}, syncResults: { in: [], out: [] } };
  Object.defineProperty(m, "fallbackDownload", { value: [], enumerable: false });
  report.modes[mode] = m;
  const companyId = "company-1";
  const environmentId = `env-${randomUUID()}`;
  const driverKey = ctx.provider;
  const hostDir = path.join(root, `host-${mode}`);
  const projectDir = path.join(root, `project-${mode}`);
  const assetDir = path.join(root, `asset-${mode}`);
  buildWorkspace(hostDir, ctx.extra);
  buildProject(projectDir, ctx.extra);
  buildAsset(assetDir);
  m.hostBefore = manifest(hostDir);

  worker.phase = `${mode}:lease`;
  const validated = await worker.call("environmentValidateConfig", { driverKey, config: ctx.config });
  if (!validated?.ok) throw new Error(`config invalid: ${JSON.stringify(validated)}`);
  const savedConfig = { ...(validated.normalizedConfig ?? ctx.config) };
  const lease = await worker.call("environmentAcquireLease", {
    driverKey, companyId, environmentId, issueId: "issue-1", config: savedConfig, runId: `run-${mode}`,
    workspaceMode: "isolated", agentId: "agent-1", executionWorkspaceId: `ew-${mode}`, adapterType: "claude_local",
  });
  m.providerLeaseId = lease.providerLeaseId;
  const leaseMetadata = { ...savedConfig, ...(lease.metadata ?? {}) };
  const leaseConfig = { ...leaseMetadata };
  for (const k of ["providerMetadata", "remoteCwd", "shellCommand"]) delete leaseConfig[k];
  const leaseParam = { providerLeaseId: lease.providerLeaseId, metadata: leaseMetadata, expiresAt: null };
  const base = { driverKey, companyId, environmentId, issueId: "issue-1", config: leaseConfig, lease: leaseParam };
  try {
    const realized = await worker.call("environmentRealizeWorkspace", {
      ...base, workspace: { remotePath: lease.metadata?.remoteCwd, mode: "isolated" },
    });
    const remoteCwd = realized?.cwd || lease.metadata?.remoteCwd;
    m.remoteCwd = remoteCwd;
    m.capabilities = manifestJson.environmentDrivers?.[0]?.sandboxCapabilities ?? null;

    // the server's runner: every command an environmentExecute; native sync only in "native"
    const runner = {
      supportsSingleStreamStdinProgress: false,
      execute: async (input) => {
        const t0 = Date.now();
        const r = await worker.call("environmentExecute", {
          ...base, command: input.command, args: input.args, cwd: input.cwd ?? remoteCwd, env: input.env,
          stdin: input.stdin, timeoutMs: input.timeoutMs, bypassSession: true,
        }, (input.timeoutMs ?? 60_000) + 30_000);
        // the fallback's read-back of its sandbox tarball (`dd ... | base64` chunks): kept, so
        // what it transferred can be compared with what the native syncOut made
        const script = input.args?.[1] ?? "";
        if (worker.phase.endsWith(":syncOut") && script.startsWith("dd if=") && script.includes("workspace-download.tar")) {
          m.fallbackDownload.push(Buffer.from(r.stdout.replace(/\s+/g, ""), "base64"));
        }
        return { exitCode: r.exitCode, signal: r.signal ?? null, timedOut: r.timedOut, stdout: r.stdout,
          stderr: r.stderr, pid: null, startedAt: new Date(t0).toISOString(),
          finishedAt: new Date().toISOString(), durationMs: Date.now() - t0 };
      },
    };
    if (mode === "native") {
      runner.syncIn = async (operations) => {
        const r = await worker.call("environmentSyncIn", { ...base, operations }, 120_000);
        m.syncResults.in.push({ operations: operations.map(describeOp), result: r });
        return r;
      };
      runner.syncOut = async (operations) => {
        const r = await worker.call("environmentSyncOut", { ...base, operations }, 120_000);
        m.syncResults.out.push({ operations: operations.map(describeOp), result: r });
        m.syncOutTree = manifest(operations[0].files[0].targetPath);
        return r;
      };
    }
    const target = {
      kind: "remote", transport: "sandbox", providerKey: driverKey,
      shellCommand: lease.metadata?.shellCommand === "sh" ? "sh" : "bash",
      remoteCwd, environmentId, leaseId: `lease-${randomUUID()}`, timeoutMs: 60_000,
      streamRunLogs: false, runner,
    };

    // 1. sync in (workspace tarball + asset tarball + referenced project tree)
    worker.phase = `${mode}:syncIn`;
    let t0 = Date.now();
    const prepared = await prepareAdapterExecutionTargetRuntime({
      runId: `run-${mode}`, target, adapterKey: "claude_local", workspaceLocalDir: hostDir,
      workspaceExclude: ["*.skip", "private-notes"],
      assets: [{ key: "skills", localDir: assetDir, followSymlinks: true, exclude: ["*.tmp"] }],
      additionalSources: [{ localPath: projectDir, projectId: "ref1" }],
      timeoutSec: 60,
    });
    m.timings.syncInMs = Date.now() - t0;
    m.additionalSourceFailures = prepared.additionalSourceFailures;
    m.runtimeRootDir = path.relative(remoteCwd, prepared.runtimeRootDir);
    m.sandboxAfterSyncIn = manifest(remoteCwd);

    // 2. the sandbox changes things
    worker.phase = `${mode}:change`;
    t0 = Date.now();
    const changed = await runner.execute({ command: "/bin/sh", args: ["-c", `WS=${shq(remoteCwd)}\n${CHANGE_SCRIPT}`], timeoutMs: 30_000 });
    m.timings.changeMs = Date.now() - t0;
    if (changed.exitCode !== 0) throw new Error(`change command failed: ${changed.stderr}`);
    m.sandboxAfterChange = manifest(remoteCwd);

    // 3. sync out and merge into the host workspace
    worker.phase = `${mode}:syncOut`;
    t0 = Date.now();
    await prepared.restoreWorkspace();
    m.timings.syncOutMs = Date.now() - t0;
    m.hostAfter = manifest(hostDir);
    if (m.fallbackDownload.length > 0) {
      // what the fallback brought back, unpacked as its extractTarballToDirectory does
      const tarPath = path.join(root, `download-${mode}.tar`);
      const outDir = path.join(root, `download-${mode}`);
      fs.writeFileSync(tarPath, Buffer.concat(m.fallbackDownload));
      fs.mkdirSync(outDir);
      await run("tar", ["-xf", tarPath, "-C", outDir], 30_000);
      m.syncOutTree = manifest(outDir);
    }
    m.sandboxAfterSyncOut = manifest(remoteCwd);
  } finally {
    worker.phase = `${mode}:release`;
    try {
      await worker.call("environmentReleaseLease", { driverKey, companyId, environmentId, issueId: "issue-1",
        config: leaseConfig, providerLeaseId: lease.providerLeaseId, leaseMetadata });
      m.released = true;
    } catch (err) {
      m.releaseError = err.message;
    }
    // a lease id of local and ssh is its lease directory (on this machine for both here)
    m.leaseGone = !fs.existsSync(lease.providerLeaseId);
    ctx.leaseRoots.add(path.dirname(lease.providerLeaseId));
  }
  m.requests = {};
  for (const phase of ["syncIn", "change", "syncOut"]) m.requests[phase] = worker.counts[`${mode}:${phase}`] ?? {};
  return m;
}

// run(cmd, args, timeoutMs): resolves when it exits 0, rejects otherwise (bounded).
function run(cmd, args, timeoutMs) {
  return new Promise((resolve, reject) => {
    const p = spawn(cmd, args, { stdio: ["ignore", "ignore", "pipe"] });
    let err = "";
    const timer = setTimeout(() => p.kill("SIGKILL"), timeoutMs);
    p.stderr.on("data", (d) => (err += d));
    p.on("error", (e) => {
      clearTimeout(timer);
      reject(e);
    });
    p.on("exit", (code, signal) => {
      clearTimeout(timer);
      code === 0 ? resolve() : reject(new Error(`${cmd} exited ${code ?? signal}: ${err}`));
    });
  });
}

function shq(s) {
  return `'${String(s).replace(/'/g, "'\\''")}'`;
}

function describeOp(op) {
  return { operationId: op.operationId,
    files: op.files.map((f) => ({ kind: f.kind, sourcePath: f.sourcePath, targetPath: f.targetPath,
      exclude: f.exclude, followSymlinks: f.followSymlinks, mode: f.mode })),
    postUploadCommands: (op.postUploadCommands ?? []).map((c) => c.command) };
}

// ---- main ----------------------------------------------------------------------------------
let liveWorker = null;
let liveRoot = null;

async function main() {
  const argv = process.argv.slice(2);
  let binary = null;
  let provider = "local";
  let config = null;
  const extra = { files: 0, bytes: 4096 };
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === "--binary") binary = argv[++i];
    else if (argv[i] === "--provider") provider = argv[++i];
    else if (argv[i] === "--config") config = JSON.parse(argv[++i]);
    else if (argv[i] === "--config-env") config = JSON.parse(process.env[argv[++i]] ?? "null");
    else if (argv[i] === "--extra-files") extra.files = Number(argv[++i]);
    else if (argv[i] === "--extra-bytes") extra.bytes = Number(argv[++i]);
    else throw new Error(`unknown argument ${argv[i]}`);
  }
  if (!Number.isInteger(extra.files) || extra.files < 0 || !Number.isInteger(extra.bytes) || extra.bytes < 0) {
    throw new Error("--extra-files and --extra-bytes must be integers >= 0");
  }
  report.extra = extra;
  if (!binary) throw new Error("--binary is required");
  if (typeof provider !== "string" || !/^[a-z][a-z0-9-]*$/.test(provider)) throw new Error("bad --provider");
  if (config !== null && (typeof config !== "object" || Array.isArray(config))) {
    throw new Error("--config must be a JSON object");
  }
  if (config === null && provider !== "local") throw new Error(`--config is required for --provider ${provider}`);
  report.provider = provider;
  binary = path.resolve(binary);
  report.adapterUtilsVersion = JSON.parse(fs.readFileSync(new URL(
    "./node_modules/@paperclipai/adapter-utils/package.json", import.meta.url))).version;
  report.node = process.version;

  const root = fs.realpathSync(fs.mkdtempSync(path.join(os.tmpdir(), "ph-drive-sync-")));
  liveRoot = root;
  report.root = root;
  const workerTmp = path.join(root, "worker-tmp");
  const leases = path.join(root, "leases");
  fs.mkdirSync(workerTmp, { mode: 0o700 });
  fs.mkdirSync(leases, { mode: 0o700 });
  const env = { PATH: process.env.PATH ?? "/usr/bin:/bin", TMPDIR: workerTmp };
  report.workerEnvKeys = Object.keys(env).sort();
  try {
    const manifestJson = await new Promise((resolve, reject) => {
      const p = spawn(binary, ["manifest", provider], { env });
      let out = "";
      const timer = setTimeout(() => p.kill("SIGKILL"), 15_000);
      p.stdout.on("data", (d) => (out += d));
      p.on("error", reject);
      p.on("exit", (code) => {
        clearTimeout(timer);
        code === 0 ? resolve(JSON.parse(out)) : reject(new Error(`manifest exited ${code}`));
      });
    });
    report.capabilities = manifestJson.environmentDrivers?.[0]?.sandboxCapabilities ?? null;
    const worker = new Worker(binary, env, provider);
    liveWorker = worker;
    report.workerPid = worker.pid;
    try {
      const init = await worker.call("initialize", {
        manifest: manifestJson, config: {},
        instanceInfo: { instanceId: "default", hostVersion: "2026.824.1", deploymentMode: "authenticated" },
        apiVersion: 1, databaseNamespace: null,
      }, 15_000);
      report.supportedMethods = init?.supportedMethods ?? null;
      const leaseRoots = new Set();
      const ctx = { worker, root, manifestJson, provider, config: config ?? { root: leases, timeoutMs: 60_000 }, extra,
        leaseRoots };
      for (const mode of ["native", "fallback"]) {
        log(`mode ${mode}`);
        await runMode(mode, ctx);
        const t = report.modes[mode].timings;
        log(`mode ${mode}: sync in ${t.syncInMs} ms, change ${t.changeMs} ms, sync out ${t.syncOutMs} ms`);
      }
      const n = report.modes.native;
      const f = report.modes.fallback;
      for (const key of ["hostBefore", "sandboxAfterSyncIn", "sandboxAfterChange", "syncOutTree", "hostAfter",
        "sandboxAfterSyncOut"]) {
        report.differences[key] = diff(n[key], f[key]);
      }
      // what is left where the leases were made (the driver's leases dir for local; the
      // config's workspaceRoot, as resolved, for ssh)
      report.leaseRoots = [...leaseRoots].sort();
      report.leftInLeases = [];
      for (const dir of [leases, ...report.leaseRoots]) {
        if (fs.existsSync(dir)) report.leftInLeases.push(...fs.readdirSync(dir).map((n) => path.join(dir, n)));
      }
      report.leftInLeases = [...new Set(report.leftInLeases)].sort();
    } finally {
      report.workerExit = await worker.stop();
      report.workerStderr = worker.stderr.slice(-3000);
    }
    report.ok = true;
  } finally {
    fs.rmSync(root, { recursive: true, force: true });
    report.rootRemoved = !fs.existsSync(root);
  }
}

// The report can exceed a pipe's 64 KiB: exit only once it is written (process.exit right
// after an async pipe write would cut it).
function finish(code) {
  process.stdout.write(JSON.stringify(report) + "\n", () => process.exit(code));
}

const deadline = setTimeout(() => {
  report.error = "drive_sync.mjs: overall deadline (240 s) exceeded";
  if (liveWorker && !liveWorker.exit) liveWorker.child.kill("SIGKILL");
  if (liveRoot) fs.rmSync(liveRoot, { recursive: true, force: true });
  finish(1);
}, 240_000);
deadline.unref();

main().then(() => {
  report.totalMs = Date.now() - started;
  finish(report.ok ? 0 : 1);
}, (err) => {
  report.error = err.stack ?? String(err);
  report.totalMs = Date.now() - started;
  finish(1);
});
