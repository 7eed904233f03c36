--- host.params: a request's params checked and normalized once, before any hook runs (Kong's
-- schema-before-handler rule: a hook only sees checked input). JSON null becomes nil in every
-- object (inside arrays it stays json.null, so a list keeps its length and a check can name
-- the bad element); a lease comes ready to use; environmentExecute's fields are checked with
-- one rule for every provider.
local json = require("host.json")
local shell = require("host.shell")

local M = {}

--- MAX_TIMEOUT_MS: the longest environmentExecute timeoutMs taken (24 h, the bound the
-- providers' config schemas put on their timeoutMs); a longer one is refused.
M.MAX_TIMEOUT_MS = 86400000

local null = json.null

-- Objects lose their null fields, recursively; arrays keep their elements. json.decode does
-- not mark the arrays it makes, but only they have number keys (an object's are strings).
local function strip(v)
  if type(v) ~= "table" then
    return v
  end
  local array = json.is_array(v) or type(next(v)) == "number"
  for k, x in pairs(v) do
    if x == null and not array then
      v[k] = nil -- assigning nil to an existing field is allowed during traversal
    elseif type(x) == "table" then
      strip(x)
    end
  end
  return v
end

--- lease_id(v) -> v when it is a non-empty string, else nil (a lease id as hooks take it).
function M.lease_id(v)
  return type(v) == "string" and v ~= "" and v or nil
end

--- no_lease_result(extra) -> upstream's execute result for a lease without a providerLeaseId,
-- with extra's fields added (exe.dev's upstream also says signal = json.null).
function M.no_lease_result(extra)
  local r = { exitCode = 1, timedOut = false, stdout = "" }
  for k, v in pairs(extra or {}) do
    r[k] = v
  end
  r.stderr = "No provider lease ID available for execution."
  return r
end

local function object(v)
  return type(v) == "table" and not json.is_array(v) and v or {}
end

-- Methods whose params carry a lease ({providerLeaseId, metadata}), and those that carry the
-- lease's fields at the top level (providerLeaseId, leaseMetadata).
local LEASE = { environmentExecute = true, environmentRealizeWorkspace = true,
  environmentCancelExecution = true, environmentSyncIn = true, environmentSyncOut = true }
local LEASE_FIELDS = { environmentResumeLease = true, environmentReleaseLease = true,
  environmentDestroyLease = true }

local function has_nul(s)
  return s:find("\0", 1, true) ~= nil
end

--- execution_id(v) -> v | nil, message: an executionId as upstream's registry takes it.
function M.execution_id(v)
  if type(v) ~= "string" or not v:find("%S") then
    return nil, "Environment executionId must be a non-empty opaque string."
  elseif #v > 512 then
    return nil, "Environment executionId exceeds the 512-character limit."
  end
  return v
end

-- A value's JSON type, for "got ...".
local function json_type(v)
  if type(v) == "table" then
    return (json.is_array(v) or (next(v) ~= nil and #v > 0)) and "an array" or "an object"
  elseif type(v) == "boolean" then
    return "a boolean"
  elseif type(v) == "number" then
    return "a number"
  end
  return "a " .. type(v)
end

local function fail(msg)
  return nil, "environmentExecute: " .. msg
end

-- environmentExecute's own fields, in place: command, args (a list), env (a table of strings;
-- values that are not strings are left out, as upstream does), stdin, cwd (nil when blank),
-- timeoutMs (an integer from 1 to MAX_TIMEOUT_MS, a fraction rounded down; or nil: the
-- provider's default; a longer one is refused).
local function execute(p, label)
  if type(p.command) ~= "string" or p.command == "" then
    return fail("command must be a non-empty string")
  elseif has_nul(p.command) then
    return fail("command contains a NUL byte")
  end
  local args = p.args
  if args == nil then
    args = {}
  elseif type(args) ~= "table" or (next(args) ~= nil and #args == 0) then
    return fail("args must be an array of strings, got " .. json_type(args))
  end
  for i = 1, #args do
    if type(args[i]) ~= "string" then
      return fail(("args[%d] must be a string"):format(i))
    elseif has_nul(args[i]) then
      return fail(("args[%d] contains a NUL byte"):format(i))
    end
  end
  p.args = args
  local env = p.env
  if env == nil then
    env = {}
  elseif type(env) ~= "table" or json.is_array(env) then
    return fail("env must be an object of strings")
  end
  local kept = {}
  for k, v in pairs(env) do
    if not shell.is_env_key(k) then
      return nil, ("Invalid %s environment variable key: %s"):format(label, tostring(k))
    end
    if type(v) == "string" then
      if has_nul(v) then
        return nil, ("Sandbox environment variable %s contains a NUL byte"):format(k)
      end
      kept[k] = v
    end
  end
  p.env = kept
  if p.stdin ~= nil and type(p.stdin) ~= "string" then
    return fail("stdin must be a string")
  end
  if p.cwd ~= nil and type(p.cwd) ~= "string" then
    return fail("cwd must be a string, got " .. json_type(p.cwd))
  elseif p.cwd ~= nil and not p.cwd:find("%S") then
    p.cwd = nil -- blank: the provider's default, as upstream's `cwd || default`
  end
  local t = p.timeoutMs
  if t ~= nil and type(t) ~= "number" then
    -- upstream passes params.timeoutMs on as it is (`params.timeoutMs ?? config.timeoutMs`):
    -- a string would reach the sandbox API. Say so rather than run with another deadline.
    return fail("timeoutMs must be a number of milliseconds, got " .. json_type(t))
  end
  if type(t) == "number" and t > M.MAX_TIMEOUT_MS then
    -- 1e15 (or 1e400, infinity) is no deadline a command could keep: say so, do not clamp it
    return fail(("timeoutMs must be at most %d (24 hours), got %s"):format(M.MAX_TIMEOUT_MS,
      t == math.huge and "a number beyond any limit" or ("%.17g"):format(t)))
  end
  if type(t) == "number" and t == t and t >= 1 then
    p.timeoutMs = math.tointeger(math.floor(t)) -- a fraction (100.5) rounds down: 100 ms
  else
    p.timeoutMs = nil -- below 1 (or NaN, which JSON cannot carry): the provider's default
  end
  return p
end

--- normalize(method, params, provider) -> params | nil, message
-- params must be a table; it is normalized in place. provider.env_label names the environment
-- in a bad env key's message ("sandbox" by default: "Invalid sandbox environment variable
-- key: K").
function M.normalize(method, params, provider)
  strip(params)
  if LEASE[method] then
    local lease = object(params.lease)
    lease.providerLeaseId = M.lease_id(lease.providerLeaseId)
    lease.metadata = object(lease.metadata)
    params.lease = lease
  elseif LEASE_FIELDS[method] then
    params.providerLeaseId = M.lease_id(params.providerLeaseId)
    params.leaseMetadata = object(params.leaseMetadata)
  end
  if method == "environmentRealizeWorkspace" then
    params.workspace = object(params.workspace)
  end
  if (method == "environmentExecute" and params.executionId ~= nil)
    or method == "environmentCancelExecution" then
    local _, err = M.execution_id(params.executionId)
    if err then
      return nil, err
    end
  end
  if method == "environmentExecute" then
    return execute(params, provider and provider.env_label or "sandbox")
  end
  return params
end

return M
