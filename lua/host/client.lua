--- host.client: call a provider in-process exactly as Paperclip would, through the worker's
-- own JSON-RPC dispatch (used by `call`, `demo` and specs).
local json = require("host.json")
local util = require("host.util")
local worker = require("host.worker")

local M = {}

--- session(list, opts) -> Session with :call(method, params) -> result | nil, {code, message}
-- opts.on_log(stream, chunk) receives execute.log chunks; opts.company_id scopes calls.
function M.session(list, opts)
  opts = opts or {}
  local replies, next_id = {}, 0
  local w = worker.new({
    providers = list,
    write = function(line)
      local msg = assert(json.decode(line))
      if msg.method == "execute.log" and opts.on_log then
        opts.on_log(msg.params.stream, msg.params.chunk)
      elseif msg.id ~= nil and msg.method == nil then
        replies[msg.id] = msg
      end
    end,
  })
  w.initialized = true
  local s = { worker = w }

  function s.call(_, method, params)
    params = params or {}
    if params.driverKey == nil and #list == 1 then
      params.driverKey = list[1].driver_key
    end
    if method ~= "environmentValidateConfig" then
      params.companyId = params.companyId or opts.company_id or "cli"
      params.environmentId = params.environmentId or "cli"
    end
    next_id = next_id + 1
    local id = next_id
    local line = assert(json.encode({
      jsonrpc = "2.0",
      id = id,
      method = method,
      params = params,
      paperclipInvocation = { id = util.uuid(), scope = { companyId = params.companyId } },
    }))
    local t = w:handle_line(line)
    if t then
      t:wait()
    end
    local reply = replies[id]
    replies[id] = nil
    if reply == nil then
      return nil, { code = -32603, message = "no reply" }
    end
    if reply.error then
      return nil, reply.error
    end
    return reply.result
  end
  return s
end

--- call(provider, method, params, opts) -> result | nil, {code, message}
function M.call(p, method, params, opts)
  return M.session({ p }, opts):call(method, params)
end

return M
