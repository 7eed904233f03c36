-- providers/local: sandboxes as private directories on this machine (the demo and test default).
-- Not a security boundary unless isolateNetwork is on, and even then only for the network.
local json = require("host.json")
local proc = require("host.proc")
local shell = require("host.shell")
local task = require("host.task")
local workspace = require("providers.local.workspace")

local M = {
  driver_key = "local",
  display_name = "Local Sandbox",
  description = "Runs commands in a private workspace directory on the worker's own machine.",
  version = "0.1.0",
  schema = require("providers.local.schema"),
  capabilities = { reusableLeases = true, incrementalSessionOutput = true },
  hooks = {},
}

local hooks = M.hooks

-- The argv a command runs with: behind unshare when the network is isolated.
local function isolated(ctx, argv)
  if not ctx.config.isolateNetwork then
    return argv
  end
  local out = { "unshare", "--net", "--map-root-user", "--" }
  table.move(argv, 1, #argv, 5, out)
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
    err = err or ("%s exited with %s: %s"):format(ctx.config.shell, res.exit_code, res.stderr)
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
  local dir = workspace.check(params.providerLeaseId)
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
  return workspace.remove(workspace.check(params.providerLeaseId))
end

--- environmentDestroyLease: always delete; a missing workspace is success.
function hooks.destroy_lease(_ctx, params)
  return workspace.remove(workspace.check(params.providerLeaseId))
end

local function nonblank(v)
  return type(v) == "string" and v:match("%S") and (v:gsub("^%s+", ""):gsub("%s+$", "")) or nil
end

--- environmentRealizeWorkspace: upstream's cwd order, then make sure it exists.
function hooks.realize_workspace(_ctx, params)
  local lease = type(params.lease) == "table" and params.lease or {}
  local meta = type(lease.metadata) == "table" and lease.metadata or {}
  local ws = type(params.workspace) == "table" and params.workspace or {}
  local dir = workspace.check(lease.providerLeaseId)
  local cwd = nonblank(meta.remoteCwd)
    or nonblank(ws.remotePath)
    or nonblank(ws.localPath)
    or (dir and workspace.cwd(dir))
  if not cwd then
    return nil, "local: no workspace path to realize (the lease has no remoteCwd)"
  end
  local ok, err, code = workspace.mkdir_p(cwd)
  if not ok then
    return nil, err, code
  end
  return { cwd = cwd, metadata = { provider = "local", remoteCwd = cwd } }
end

--- environmentExecute: run the command with exactly the caller's env over a minimal base.
function hooks.execute(ctx, params)
  local lease = type(params.lease) == "table" and params.lease or {}
  if lease.providerLeaseId == nil or lease.providerLeaseId == json.null then
    return {
      exitCode = 1,
      timedOut = false,
      stdout = "",
      stderr = "No provider lease ID available for execution.",
    }
  end
  local dir = workspace.check(lease.providerLeaseId)
  if not dir then
    return nil, ("local sandbox %s no longer exists"):format(tostring(lease.providerLeaseId))
  end
  if type(params.command) ~= "string" or params.command == "" then
    return nil, "environmentExecute: command must be a non-empty string"
  end
  local env = workspace.base_env(dir)
  if params.env ~= nil then
    if type(params.env) ~= "table" then
      return nil, "environmentExecute: env must be an object of strings"
    end
    for k, v in pairs(params.env) do
      if type(k) ~= "string" or not shell.is_env_key(k) then
        return nil, "Invalid sandbox environment variable key: " .. tostring(k)
      end
      if type(v) ~= "string" or v:find("\0", 1, true) then
        return nil, ("environment variable %s must be a string without NUL bytes"):format(k)
      end
      env[k] = v
    end
  end
  local argv = { params.command }
  for i, a in ipairs(type(params.args) == "table" and params.args or {}) do
    if type(a) ~= "string" then
      return nil, ("environmentExecute: args[%d] must be a string"):format(i)
    end
    argv[#argv + 1] = a
  end
  argv = isolated(ctx, argv)
  local timeout_ms = type(params.timeoutMs) == "number"
      and params.timeoutMs > 0
      and params.timeoutMs
    or ctx.config.timeoutMs
  if params.stdin ~= nil and type(params.stdin) ~= "string" then
    return nil, "environmentExecute: stdin must be a string"
  end
  local cwd = nonblank(params.cwd)
    or nonblank(type(lease.metadata) == "table" and lease.metadata.remoteCwd)
    or workspace.cwd(dir)
  local started = task.now()
  local p, err, code = proc.spawn({
    argv = argv,
    env = env,
    cwd = cwd,
    stdin = params.stdin,
    timeout = timeout_ms / 1000,
    max_output = ctx.max_output,
    on_stdout = function(chunk)
      ctx:emit("stdout", chunk)
    end,
    on_stderr = function(chunk)
      ctx:emit("stderr", chunk)
    end,
  })
  if not p then
    if code == "exit" or (err and err:find("ENOENT", 1, true)) then
      -- what a shell would say: the command is missing, a result rather than an error
      return {
        exitCode = 127,
        timedOut = false,
        stdout = "",
        stderr = ("%s: %s\n"):format(params.command, err),
      }
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

--- environmentCancelExecution: stop one running command, found by its exact scope.
function hooks.cancel_execution(ctx, params)
  local active = ctx.active
  if active and active.cancel then
    active.cancel()
    return { executionId = params.executionId, cancelled = true }
  end
  return { executionId = params.executionId, cancelled = false }
end

return M
