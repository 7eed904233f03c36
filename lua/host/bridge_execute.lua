--- host.bridge_execute: an environmentExecute whose params carry
-- `bridge = { apiUrl, apiKey, runId, routes? }` (our documented extension) runs with a bridge
-- for its lifetime: the relay starts in the sandbox through the provider's duplex execution,
-- the command sees PAPERCLIP_API_URL at the relay and a fresh per-run PAPERCLIP_API_KEY, and
-- the bridge closes when the execution ends. The real key never enters the sandbox.

local M = {}

local function fail(msg)
  return nil, "environmentExecute: bridge" .. msg
end

-- params.bridge as the host sent it -> the bridge.open options it asks for | nil, message.
-- routes: an array of {method, pattern} (or {method = , pattern = }), added to the defaults.
function M.check(spec)
  if type(spec) ~= "table" then
    return fail(" must be an object { apiUrl, apiKey, runId }")
  end
  if type(spec.apiUrl) ~= "string" or not spec.apiUrl:match("^https?://[^/%s]+[^%s]*$") then
    return fail(".apiUrl must be an http(s) URL")
  end
  if type(spec.apiKey) ~= "string" or not spec.apiKey:find("^%g+$") then
    return fail(".apiKey must be a non-empty string of visible characters")
  end
  if spec.runId ~= nil and (type(spec.runId) ~= "string" or not spec.runId:find("^%g+$")) then
    return fail(".runId must be a string of visible characters")
  end
  local routes
  if spec.routes ~= nil then
    if type(spec.routes) ~= "table" then
      return fail(".routes must be an array of { method, pattern }")
    end
    routes = {}
    for i, r in ipairs(spec.routes) do
      local method = type(r) == "table" and (r.method or r[1])
      local pattern = type(r) == "table" and (r.pattern or r[2])
      if type(method) ~= "string" or type(pattern) ~= "string" then
        return fail((".routes[%d] must be { method, pattern }"):format(i))
      end
      routes[i] = { method = method, pattern = pattern }
    end
  end
  return { api_url = spec.apiUrl, api_key = spec.apiKey, run_id = spec.runId, routes = routes }
end

-- Open the bridge for this execution through the provider's hooks.
local function open(ctx, provider, params, opts)
  local hooks = provider.hooks
  if not hooks.duplex or not hooks.sandbox_helper then
    return nil, ("environmentExecute: the %s provider cannot carry a bridge (it has no duplex "
      .. "execution)"):format(provider.driver_key), "unsupported"
  end
  local helper, err, code = hooks.sandbox_helper(ctx, { lease = params.lease })
  if not helper then
    return nil, "environmentExecute: the bridge needs ph-sandbox-helper in the sandbox: "
      .. tostring(err), code
  end
  opts.helper = helper
  opts.duplex = function(dp)
    dp.lease = params.lease
    dp.env = dp.env or {}
    return hooks.duplex(ctx, dp)
  end
  -- required here, not at load: host.bridge brings the network module (libcurl, libssh2,
  -- OpenSSL: ~6 MB), which a worker whose executes carry no bridge never needs
  local ok, b, oerr, ocode = pcall(require("host.bridge").open, opts)
  if not ok then -- a bad route rule, named by the policy
    return nil, "environmentExecute: bridge: " .. tostring(b):gsub("^[^\n]-%.lua:%d+: ", "")
  end
  if not b then
    return nil, "environmentExecute: " .. tostring(oerr), ocode
  end
  return b
end

--- run(ctx, provider, params, call) -> call()'s results. Without params.bridge, just call().
-- With it: open the bridge, give the command its env, call(), close the bridge (in a cleanup
-- task of its own, so a request canceled at its deadline still frees everything).
function M.run(ctx, provider, params, call)
  local spec = params.bridge
  params.bridge = nil
  if spec == nil then
    return call()
  end
  local opts, err = M.check(spec)
  if not opts then
    return nil, err
  end
  local b, oerr, code = open(ctx, provider, params, opts)
  if not b then
    return nil, oerr, code
  end
  for k, v in pairs(b:env()) do
    params.env[k] = v
  end
  ctx.bridge = b
  local res = table.pack(call())
  ctx:cleanup(function()
    b:close()
  end)
  ctx.bridge = nil
  return table.unpack(res, 1, res.n)
end

return M
