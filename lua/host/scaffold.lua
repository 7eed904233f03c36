--- host.scaffold: `provider-host new NAME`, a one-file provider an operator can start from.
local fs = require("host.fs")

local M = {}

local TEMPLATE = [==[
-- %s: a provider-host sandbox provider. Check it: provider-host check %s
-- Try it:  provider-host call %s environmentAcquireLease '{"config":{}}' --providers DIR
-- Every hook gets (ctx, params) and returns a result, or nil and a message. Hooks run as
-- tasks: host.http, host.proc and friends read sequentially and never block the worker.
local fs = require("host.fs")
local json = require("host.json")
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
    { "reuseLease", "boolean", default = false },
  }),
  hooks = {},
}

-- TODO: replace the local directory below with a call to your service, for example
--   local res = require("host.http").request({ method = "POST", url = "...",
--     headers = { Authorization = "Bearer " .. ctx.config.apiKey }, json = { ... } })
function M.hooks.acquire_lease(_ctx, _params)
  local dir, err = fs.mkdtemp(%q)
  if not dir then
    return nil, err
  end
  return { providerLeaseId = dir, metadata = { remoteCwd = dir, shellCommand = "sh" } }
end

function M.hooks.execute(ctx, params)
  local lease = params.lease or {}
  if type(lease.providerLeaseId) ~= "string" then
    return { exitCode = 1, timedOut = false, stdout = "",
             stderr = "No provider lease ID available for execution." }
  end
  local argv = { params.command }
  for _, a in ipairs(params.args or {}) do
    argv[#argv + 1] = a
  end
  local env = { PATH = os.getenv("PATH") or "/usr/bin:/bin", HOME = lease.providerLeaseId }
  for k, v in pairs(params.env or {}) do
    env[k] = v
  end
  local r, err = proc.run({
    argv = argv, env = env, stdin = params.stdin,
    cwd = params.cwd or lease.providerLeaseId,
    timeout = (params.timeoutMs or ctx.config.timeoutMs) / 1000,
    on_stdout = function(chunk) ctx:emit("stdout", chunk) end,
    on_stderr = function(chunk) ctx:emit("stderr", chunk) end,
  })
  if not r then
    return nil, err
  end
  return { exitCode = r.exit_code or json.null, timedOut = r.timed_out,
           stdout = ctx:output(r.stdout), stderr = ctx:output(r.stderr) }
end

function M.hooks.release_lease(ctx, params)
  if ctx.config.reuseLease or type(params.providerLeaseId) ~= "string" then
    return true
  end
  return fs.remove_tree(params.providerLeaseId)
end

function M.hooks.destroy_lease(_ctx, params)
  if type(params.providerLeaseId) ~= "string" then
    return true
  end
  return fs.remove_tree(params.providerLeaseId)
end

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
  local ok, err = fs.write(path, TEMPLATE:format(name, path, name, name, display,
    "paperclip-" .. name .. "-"))
  if not ok then
    return nil, err
  end
  return path
end

return M
