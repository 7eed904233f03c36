--- spec.support.fake_paperclip: a fake Paperclip API for the bridge specs. It records every
-- request exactly as it arrived (method, raw path and query, headers, body) and answers what
-- the spec set for a route, or by default 200 with a JSON echo of what it saw. It checks the
-- real credential like the server does: a request without `Authorization: Bearer <api_key>`
-- gets 401, so a spec can tell whether the bridge injected it.
local http = require("host.http")
local json = require("host.json")

local Fake = {}
Fake.__index = Fake

local M = {}

--- start({ api_key = "..." }) -> Fake: listening on an ephemeral loopback port (fake.url).
function M.start(opts)
  local self = setmetatable({ api_key = assert(opts and opts.api_key, "api_key"),
    requests = {}, answers = {} }, Fake)
  self.server = assert(http.serve({
    handler = function(req, res)
      return self:_handle(req, res)
    end,
  }))
  self.url = self.server.url
  return self
end

--- fake:answer(method, path, fn): fn(req) -> status, headers, body answers METHOD path (the
-- raw path, exact). fn may also call res-style streaming through the second argument.
function Fake:answer(method, path, fn)
  self.answers[method .. " " .. path] = fn
end

function Fake:_handle(req, res)
  self.requests[#self.requests + 1] = { method = req.method, path = req.path,
    query = req.query, headers = req.headers, header_list = req.header_list, body = req.body }
  if req.headers.authorization ~= "Bearer " .. self.api_key then
    return 401, { ["content-type"] = "application/json" },
      json.encode({ error = "Unauthorized" })
  end
  local fn = self.answers[req.method .. " " .. req.path]
  if fn then
    return fn(req, res)
  end
  return 200, { ["content-type"] = "application/json", ["set-cookie"] = "session=secret",
    ["x-secret-header"] = "hidden", etag = '"v1"' }, json.encode({
    method = req.method, path = req.path, query = req.query or json.null,
    runId = req.headers["x-paperclip-run-id"] or json.null, body = req.body })
end

--- fake:last() -> the last request it received, or nil.
function Fake:last()
  return self.requests[#self.requests]
end

--- fake:close(): stops listening and closes every connection (also <close>).
function Fake:close()
  self.server:close()
end
Fake.__close = Fake.close

return M
