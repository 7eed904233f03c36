--- host.cli.scaffold: `provider-host new NAME`, a one-file provider an operator can start from.
local fs = require("host.fs")

local M = {}

local TEMPLATE = [==[
-- %s: a provider-host sandbox provider. Check it: provider-host check %s
-- Try it:  provider-host call %s environmentAcquireLease '{"config":{}}' --providers DIR
-- As written, a lease is a private directory on this machine and commands run there (like the
-- built-in `local` provider): replace the TODOs with calls to your sandbox service.
-- The contract is docs/providers.md in provider-host's repository: "Conventions" (params,
-- errors, ctx), one section per hook (named in the comment above each one here) and "Host
-- API" (every host.* function; timeouts are in seconds, protocol fields in milliseconds).
-- Every hook gets (ctx, params) and returns a result, or nil, a message and a host.errors
-- code (Paperclip gets a -32002 error with the message). The worker has checked params
-- already: JSON null is nil, params.lease is a table with providerLeaseId (nil when absent)
-- and metadata, and an execute's command, args, env, stdin, cwd and timeoutMs are valid.
-- Hooks run as tasks: host.http, host.proc and friends read sequentially and never block
-- the worker. Paperclip calls validate, probe, acquire, realize and execute whether or not
-- a hook is here; release, destroy and resume only when they are.
local fs = require("host.fs")
local json = require("host.json")
local host_params = require("host.params")
local proc = require("host.proc")
local schema = require("host.schema")

local M = {
  driver_key = %q,
  display_name = %q,
  description = "Describe what this provider gives Paperclip.",
  version = "0.1.0",
  -- The config form Paperclip shows; the manifest's configSchema is generated from it.
  schema = schema.new({
    { "apiKey", "string", secret = true, trim = true, blank = "null",
      description = "Credential for your sandbox service (redacted from every log)." },
    { "timeoutMs", "integer", default = 300000, between = { 1, 86400000 },
      description = "Default command timeout in milliseconds." },
    { "reuseLease", "boolean", default = false,
      description = "Keep the sandbox on release so a later run can resume it." },
  }),
  -- The manifest's sandboxCapabilities (docs/providers.md, "Conventions"): without
  -- reusableLeases Paperclip never calls resume_lease.
  capabilities = { reusableLeases = true },
  hooks = {},
}
local hooks = M.hooks

local PREFIX = %q -- the name of this provider's lease directories (TODO: your sandboxes)

-- A lease id this provider made: one of its directories (never touch anything else).
local function lease_dir(id)
  local st = id and id:find("/" .. PREFIX, 1, true) and fs.stat(id, false)
  return st and st.type == "directory" and id or nil
end

--- environmentValidateConfig (docs/providers.md: `validate_config`): returning nothing lets
-- the schema answer {ok, errors?, warnings?, normalizedConfig}; ctx.errors holds its errors.
-- Add checks the schema cannot express here, or delete the hook.
function hooks.validate_config(_ctx, _params)
  return nil
end

--- environmentProbe (docs/providers.md: `probe`): can a sandbox be made? Answer ok = false,
-- not an error, when it cannot. Paperclip calls it whether or not it is here.
function hooks.probe(_ctx, _params)
  local dir, err = fs.mkdtemp(PREFIX) -- TODO: create a throwaway sandbox, and delete it
  if not dir then
    return { ok = false, summary = "Cannot make a sandbox.", metadata = { error = err } }
  end
  fs.remove_tree(dir)
  return { ok = true, summary = "Sandboxes can be made." }
end

--- environmentAcquireLease (docs/providers.md: `acquire_lease`): a new sandbox; its id and
-- metadata come back on every later call (metadata keys also come back inside ctx.config).
function hooks.acquire_lease(ctx, _params)
  -- TODO: create a sandbox with your service, for example
  --   local res = require("host.http").request({ method = "POST", url = "...",
  --     headers = { Authorization = "Bearer " .. ctx.config.apiKey }, json = { ... } })
  local dir, err = fs.mkdtemp(PREFIX)
  if not dir then
    return nil, err
  end
  return { providerLeaseId = dir, metadata = { remoteCwd = dir, shellCommand = "sh",
    timeoutMs = ctx.config.timeoutMs, reuseLease = ctx.config.reuseLease } }
end

--- environmentResumeLease (docs/providers.md: `resume_lease`): the sandbox again, or
-- {providerLeaseId = null, expired} when gone (Paperclip then destroys it and acquires anew).
function hooks.resume_lease(_ctx, params)
  local dir = lease_dir(params.providerLeaseId)
  if not dir then
    return { providerLeaseId = json.null, metadata = { expired = true } }
  end
  return { providerLeaseId = dir, metadata = { remoteCwd = dir, shellCommand = "sh" } }
end

--- environmentReleaseLease (docs/providers.md: `release_lease`): the run is over: delete the
-- sandbox unless it is reused. Missing is success; the reply is null.
function hooks.release_lease(ctx, params)
  local dir = lease_dir(params.providerLeaseId)
  if ctx.config.reuseLease or not dir then
    return true
  end
  return fs.remove_tree(dir)
end

--- environmentDestroyLease (docs/providers.md: `destroy_lease`): delete the sandbox; one that
-- is gone already is fine.
function hooks.destroy_lease(_ctx, params)
  local dir = lease_dir(params.providerLeaseId)
  return not dir or fs.remove_tree(dir)
end

--- environmentRealizeWorkspace (docs/providers.md: `realize_workspace`): where commands run,
-- made to exist. Paperclip calls it whether or not it is here.
function hooks.realize_workspace(_ctx, params)
  local cwd = params.lease.metadata.remoteCwd or params.workspace.remotePath
  if not cwd then
    return nil, "no workspace path to realize"
  end
  local ok, err = fs.mkdir(cwd, tonumber("700", 8))
  if not ok then
    return nil, err
  end
  return { cwd = cwd, metadata = { remoteCwd = cwd } }
end

--- environmentExecute (docs/providers.md: `execute`, and "Worked example: a cancellable
-- execute"): run params.command with params.args in the sandbox. A non-zero exit is a
-- result; output goes to Paperclip live through ctx:emit; a timeout is exitCode null with
-- timedOut true. With an executionId, ctx.execution.cancel stops exactly this command.
function hooks.execute(ctx, params)
  local dir = lease_dir(params.lease.providerLeaseId)
  if not dir then
    return host_params.no_lease_result()
  end
  local env = { PATH = os.getenv("PATH") or "/usr/bin:/bin", HOME = dir }
  for k, v in pairs(params.env) do
    env[k] = v
  end
  -- TODO: run it in your sandbox instead (host.http, host.ssh or host.remote.execute); an HTTP call
  -- that waits for the command needs timeout = timeoutMs / 1000 + a margin (host.http's default
  -- is 30 s), and ctx.execution.cancel should call your service's kill
  local p, err, code = proc.spawn({
    argv = { params.command, table.unpack(params.args) }, env = env, stdin = params.stdin,
    cwd = params.cwd or dir,
    timeout = (params.timeoutMs or ctx.config.timeoutMs) / 1000, -- seconds
    max_output = ctx.max_output,
    on_stdout = ctx:emitter("stdout"),
    on_stderr = ctx:emitter("stderr"),
  })
  if not p then
    return nil, err, code
  end
  if ctx.execution then -- environmentCancelExecution of this executionId: TERM, then KILL
    ctx.execution.cancel = function()
      p:terminate()
    end
  end
  local r
  r, err, code = p:wait()
  if not r then
    return nil, err, code
  end
  return { exitCode = (not r.timed_out and r.exit_code) or json.null,
           signal = r.signal or json.null, timedOut = r.timed_out,
           stdout = ctx:output(r.stdout), stderr = ctx:output(r.stderr) }
end

--- environmentCancelExecution (docs/providers.md: `cancel_execution`): the worker cancels the
-- executions it runs itself through ctx.execution.cancel; this hook only sees the others
-- (started before a restart). Without it those get `cancelled = false`.
-- TODO: stop the execution through your service when you can.
function hooks.cancel_execution(_ctx, params)
  return { executionId = params.executionId, cancelled = false }
end

-- Not written here (docs/providers.md): sync_in and sync_out (optional, both or neither),
-- and the extensions duplex and sandbox_helper (for the callback bridge).

return M
]==]

--- write(name, dir) -> path | nil, message
function M.write(name, dir)
  if type(name) ~= "string" or not name:match("^[a-z0-9][a-z0-9._-]*$") then
    return nil, ("invalid provider name %q: use lowercase letters, digits, '.', '_' and '-'")
      :format(tostring(name))
  end
  local path = dir .. "/" .. name .. ".lua"
  if fs.stat(path) then
    return nil, path .. " already exists"
  end
  local display = name:gsub("^%l", string.upper) .. " Sandbox"
  local prefix = "paperclip-" .. name .. "-"
  local ok, err = fs.write(path, TEMPLATE:format(name, path, name, name, display, prefix))
  if not ok then
    return nil, err
  end
  return path
end

return M
