-- providers/local: sandboxes as private directories on this machine (the demo and test default).
-- Not a security boundary unless isolateNetwork is on, and even then only for the network.
local duplex = require("host.duplex")
local fs = require("host.fs")
local json = require("host.json")
local host_params = require("host.params")
local proc = require("host.proc")
local sandbox_helper = require("host.sandbox_helper")
local sync_tar = require("host.sync_tar")
local task = require("host.task")
local util = require("host.util")
local workspace = require("providers.local.workspace")

local M = {
  driver_key = "local",
  display_name = "Local Sandbox",
  description = "Runs commands in a private workspace directory on the worker's own machine.",
  version = "0.1.0",
  schema = require("providers.local.schema"),
  capabilities = { reusableLeases = true, incrementalSessionOutput = true, nativeSyncIn = true,
    nativeSyncOut = true },
  hooks = {},
}

local hooks = M.hooks

-- The argv a command runs with: behind unshare when the network is isolated. A command that
-- has a bridge joins the namespaces of its relay (started by hooks.duplex below), so that the
-- relay's 127.0.0.1 is the command's, and nothing else is reachable.
local function isolated(ctx, argv)
  if not ctx.config.isolateNetwork then
    return argv
  end
  local relay = ctx.bridge and ctx.bridge.duplex.pid
  local out = relay and { "nsenter", "--target", tostring(relay), "--user", "--net", "--" }
    or { "unshare", "--net", "--map-root-user", "--" }
  table.move(argv, 1, #argv, #out + 1, out)
  return out
end

local function lease_metadata(ctx, dir, resumed)
  return {
    provider = "local",
    shellCommand = ctx.config.shell,
    remoteCwd = workspace.cwd(dir),
    timeoutMs = ctx.config.timeoutMs,
    reuseLease = ctx.config.reuseLease,
    resumedLease = resumed,
  }
end

--- environmentProbe: can we make a workspace and run the shell there?
function hooks.probe(ctx, _params)
  local meta = { provider = "local", shellCommand = ctx.config.shell, root = workspace.root(ctx) }
  local dir, err = workspace.create(ctx)
  if dir then
    local res
    res, err = proc.run({
      argv = isolated(ctx, { ctx.config.shell, "-c", "pwd" }),
      cwd = workspace.cwd(dir),
      env = workspace.base_env(dir),
      timeout = 10,
    })
    workspace.remove(dir)
    if res and res.exit_code == 0 then
      return {
        ok = true,
        summary = ("Local sandbox ready: %s runs in private workspaces under %s."):format(
          ctx.config.shell,
          meta.root
        ),
        metadata = meta,
      }
    end
    err = err or ("%s exited with %s: %s"):format(ctx.config.shell, res.exit_code,
      util.trim(res.stderr))
  end
  meta.error = err
  return { ok = false, summary = "Local sandbox probe failed.", metadata = meta }
end

--- environmentAcquireLease: a new private (0700) workspace.
function hooks.acquire_lease(ctx, _params)
  local dir, err, code = workspace.create(ctx)
  if not dir then
    return nil, err, code
  end
  return { providerLeaseId = dir, metadata = lease_metadata(ctx, dir, false) }
end

--- environmentResumeLease: the workspace if it still exists, else "expired".
function hooks.resume_lease(ctx, params)
  local dir = workspace.check(ctx, params.providerLeaseId)
  if not dir then
    return { providerLeaseId = json.null, metadata = { expired = true } }
  end
  return { providerLeaseId = dir, metadata = lease_metadata(ctx, dir, true) }
end

--- environmentReleaseLease: delete the workspace unless the lease is reused.
function hooks.release_lease(ctx, params)
  if ctx.config.reuseLease then
    return true
  end
  return workspace.delete(ctx, params.providerLeaseId)
end

--- environmentDestroyLease: always delete; a missing workspace is success. Only a lease
-- directory this provider made under the configured root is deleted: any other existing path
-- is refused with an error (workspace.lua, "Containment").
function hooks.destroy_lease(ctx, params)
  return workspace.delete(ctx, params.providerLeaseId)
end

--- environmentRealizeWorkspace: upstream's cwd order, then make sure it exists. The path must
-- lie inside the lease directory (a relative one is taken from the lease's workspace): one
-- outside is refused, never created, and so is one that passes through a symlink.
function hooks.realize_workspace(ctx, params)
  local lease, ws = params.lease, params.workspace
  local meta = lease.metadata
  local dir, err, code = workspace.lease(ctx, lease.providerLeaseId)
  if not dir then
    return nil, err, code
  end
  local path = util.nonblank(meta.remoteCwd)
    or util.nonblank(ws.remotePath)
    or util.nonblank(ws.localPath)
    or workspace.cwd(dir)
  local cwd
  cwd, err, code = workspace.inside(dir, path, "workspace path")
  if not cwd then
    return nil, err, code
  end
  local ok
  ok, err, code = workspace.mkdir_under(dir, cwd)
  if not ok then
    return nil, err, code
  end
  return { cwd = cwd, metadata = { provider = "local", remoteCwd = cwd } }
end

-- The directory an execute runs in: its cwd (relative ones from the lease's workspace, never
-- the worker's cwd), checked to exist first: a missing cwd is an error reply, as upstream's
-- local runs (Node's spawn) reject with ENOENT, not the spawn's ENOENT that would read as
-- "command not found".
local function execute_cwd(dir, params)
  local cwd = params.cwd or util.nonblank(params.lease.metadata.remoteCwd) or workspace.cwd(dir)
  if not cwd:match("^/") then
    local err, code
    cwd, err, code = workspace.inside(dir, cwd, "cwd")
    if not cwd then
      return nil, err, code
    end
  end
  local st, serr = fs.stat(cwd, true)
  if not st and serr and serr:find("No such file", 1, true) then
    return nil, ("local: cwd %s does not exist"):format(cwd), "not_found"
  elseif not st then
    return nil, ("local: cwd %s: %s"):format(cwd, serr), "io"
  elseif st.type ~= "directory" then
    return nil, ("local: cwd %s is not a directory"):format(cwd), "not_found"
  end
  return cwd
end

-- The execute result of a finished process.
local function execute_result(ctx, r, timeout_ms, started)
  local stderr = ctx:output(r.stderr)
  if r.timed_out then
    local msg = ("Command timed out after %dms"):format(timeout_ms)
    if stderr ~= "" and stderr:sub(-1) ~= "\n" then
      stderr = stderr .. "\n"
    end
    stderr = stderr .. msg .. "\n"
  end
  return {
    exitCode = (not r.timed_out and r.exit_code) or json.null,
    signal = r.signal or json.null,
    timedOut = r.timed_out,
    stdout = ctx:output(r.stdout),
    stderr = stderr,
    metadata = {
      durationMs = math.floor((task.now() - started) * 1000 + 0.5),
      truncated = r.truncated or nil,
    },
  }
end

--- environmentExecute: run the command with exactly the caller's env over a minimal base.
function hooks.execute(ctx, params)
  if not params.lease.providerLeaseId then
    return host_params.no_lease_result()
  end
  local dir, err, code = workspace.lease(ctx, params.lease.providerLeaseId)
  if not dir then
    return nil, err, code
  end
  local cwd
  cwd, err, code = execute_cwd(dir, params)
  if not cwd then
    return nil, err, code
  end
  local env = workspace.base_env(dir)
  for k, v in pairs(params.env) do
    env[k] = v
  end
  local timeout_ms = params.timeoutMs or ctx.config.timeoutMs
  local started = task.now()
  local p
  p, err, code = proc.spawn({
    argv = isolated(ctx, { params.command, table.unpack(params.args) }),
    env = env,
    cwd = cwd,
    stdin = params.stdin,
    timeout = timeout_ms / 1000,
    max_output = ctx.max_output,
    max_encoded = ctx.max_encoded,
    on_stdout = ctx:emitter("stdout"),
    on_stderr = ctx:emitter("stderr"),
  })
  if not p then
    if code == "timeout" then -- its deadline passed while it waited for a process slot
      local r = execute_result(ctx, { timed_out = true, stdout = "", stderr = err }, timeout_ms,
        started)
      r.metadata.queued = true
      return r
    end
    if code == "exit" or (err and err:find("ENOENT", 1, true)) then
      -- what a shell would say: the command is missing, a result rather than an error
      return { exitCode = 127, timedOut = false, stdout = "",
        stderr = ("%s: %s\n"):format(params.command, err) }
    end
    return nil, err, code
  end
  if ctx.execution then -- environmentCancelExecution stops exactly this process group
    ctx.execution.cancel = function()
      p:terminate()
    end
  end
  local r
  r, err, code = p:wait()
  if not r then
    return nil, err, code
  end
  return execute_result(ctx, r, timeout_ms, started)
end

--- duplex (extension): a long-lived command with its stdin and stdout as pipes, in the lease's
-- workspace, with the same env rules as execute (README, "Duplex execution").
function hooks.duplex(ctx, params)
  local dir, err, code = workspace.lease(ctx, params.lease.providerLeaseId)
  if not dir then
    return nil, err, code
  end
  local cwd = params.cwd or workspace.cwd(dir)
  if not cwd:match("^/") then -- relative: from the lease's workspace, never the worker's cwd
    cwd, err, code = workspace.inside(dir, cwd, "cwd")
    if not cwd then
      return nil, err, code
    end
  end
  local env = workspace.base_env(dir)
  for k, v in pairs(params.env or {}) do
    env[k] = v
  end
  return duplex.process({
    argv = isolated(ctx, { params.command, table.unpack(params.args or {}) }),
    env = env,
    cwd = cwd,
    on_stdout = params.on_stdout,
    on_stderr = params.on_stderr,
    timeout = params.timeout,
  })
end

--- environmentSyncIn / environmentSyncOut: the same tar streams as the remote providers
-- (host.sync_tar), through hooks.duplex on this machine: the lease directory's tar on one end,
-- the host's on the other, every sandbox path inside the lease directory.
hooks.sync_in, hooks.sync_out = sync_tar.hooks(function(ctx, params)
  local dir, err, code = workspace.lease(ctx, params.lease.providerLeaseId)
  if not dir then
    return nil, err, code
  end
  return { name = "local", duplex = hooks.duplex, confine = dir, workspace = workspace.cwd(dir) }
end)

--- sandbox_helper (extension): the sandbox is this machine, so the host's own helper.
function hooks.sandbox_helper(_ctx, _params)
  return sandbox_helper.path()
end

--- environmentCancelExecution: the worker stops the commands it runs itself (through
-- ctx.execution.cancel); one it does not know (started before a restart) is gone already.
function hooks.cancel_execution(_ctx, params)
  return { executionId = params.executionId, cancelled = false }
end

return M
