--- host.bridge: the host side of the sandbox callback bridge (DESIGN.md section 5).
-- The relay (ph-sandbox-helper relay) runs in the sandbox as a duplex execution and
-- multiplexes the agent's loopback TCP connections as frames (bridge/frame.h) on its stdio.
-- Here every stream is parsed by the host's strict HTTP/1.1 parser, checked by the policy
-- (host.bridge_policy: token, canonical target, route, framing, JSON, size, headers) and
-- forwarded with libcurl to the Paperclip API with the real credential and the run id added;
-- the answer goes back filtered. The sandbox only ever sees its per-run token.
--
--   local b = assert(bridge.open({ duplex = opener, helper = path, api_url = url,
--     api_key = key, run_id = id }))
--   env.PAPERCLIP_API_URL, env.PAPERCLIP_API_KEY = b.url, b.token
--   ... run the agent ...
--   b:close()
local frame = require("host.core.frame")
local http = require("host.http")
local http_parse = require("host.core.http_parse")
local log = require("host.log")
local policy_mod = require("host.bridge_policy")
local task = require("host.task")

local M = {}

--- Defaults, read at each open (specs change them).
M.defaults = {
  hello_timeout = 30, -- seconds for the relay to start and say where it listens
  lifetime = 7 * 24 * 3600, -- seconds the relay may run at most (the execution closes it first)
  forward_timeout = 30, -- seconds per forwarded request (upstream's fixed fetch timeout)
  connect_timeout = 10, -- seconds to connect to the API
  request_timeout = 30, -- seconds from a request's first byte to its last
  idle_timeout = 120, -- seconds a connection may sit between requests
  send_timeout = 60, -- seconds an answer may wait for the agent to read it
  max_forwards = 64, -- requests forwarded at once; more wait for a slot
  close_timeout = 5, -- seconds the relay gets to exit after GOAWAY
}

local WINDOW, MAX_PAYLOAD = frame.WINDOW, frame.MAX_PAYLOAD
local CRLF = "\r\n"
local UNLIMITED = 1 << 40

------------------------------------------------------------------------------------------------
-- Streams: one agent TCP connection each, served by a task of its own

local Stream = {}
Stream.__index = Stream

local function new_stream(b, id)
  return setmetatable({
    bridge = b,
    id = id,
    raw = {}, -- DATA payloads not parsed yet
    events = {}, -- parser events not handled yet: events[first..last]
    first = 1,
    last = 0,
    check_parser = false, -- events came with the last feed: a refusal may follow
    -- no size limit in the parser: the policy's checks come first (a bad token is a 401 even
    -- with a huge Content-Length), and Stream:body counts a chunked body
    parser = http_parse.new({ max_body = UNLIMITED }),
    send_credit = WINDOW, -- bytes we may still send (the relay's grant)
    recv_credit = WINDOW, -- bytes the relay may still send us (our grant)
    signal = task.signal(),
  }, Stream)
end

-- The frame callback's view: what the relay sent about this stream.
function Stream:on_frame(f)
  if f.type == "DATA" then
    if #f.payload > self.recv_credit or self.peer_fin then
      return nil, ("DATA beyond credit or after FIN on stream %d"):format(self.id)
    end
    self.recv_credit = self.recv_credit - #f.payload
    self.raw[#self.raw + 1] = f.payload
  elseif f.type == "FIN" then
    if self.peer_fin then
      return nil, ("a second FIN on stream %d"):format(self.id)
    end
    self.peer_fin = true
  elseif f.type == "RESET" then
    self.reset = true
  elseif f.type == "CREDIT" then
    self.send_credit = self.send_credit + f.credit
  end
  self.signal:notify()
  return true
end

function Stream:send(type_name, payload)
  self.bridge:send(type_name, self.id, payload)
end

-- Parse what arrived, granting the relay credit for the bytes taken: the relay never has more
-- than a window of this stream in flight, so an agent cannot make the host buffer more.
function Stream:feed()
  local data = table.concat(self.raw)
  self.raw = {}
  if #data > 0 and not self.peer_fin and not self.closing then
    self.recv_credit = self.recv_credit + #data
    self:send("CREDIT", string.pack(">I4", #data))
  end
  local events, status, message = self.parser:feed(data)
  if not events then
    self.refused = { status = status, message = message }
    return
  end
  for _, e in ipairs(events) do
    self.last = self.last + 1
    self.events[self.last] = e
  end
  self.check_parser = #events > 0
end

-- The next parser event, waiting until the deadline (task.now() based). nil and why:
-- "refused" (self.refused says how), "eof", "timeout", "reset", "canceled".
function Stream:event(deadline)
  while true do
    if self.reset or self.bridge.closed then
      return nil, "reset"
    end
    if self.first <= self.last then
      local e = self.events[self.first]
      self.events[self.first] = nil
      self.first = self.first + 1
      return e
    end
    if self.refused then
      return nil, "refused"
    end
    if #self.raw > 0 then
      self:feed()
    elseif self.check_parser then
      self.check_parser = false
      self.raw[1] = "" -- feed("") gives a refusal found behind the last events
      self:feed()
    elseif self.peer_fin then
      return nil, "eof"
    else
      local left = deadline - task.now()
      if left <= 0 then
        return nil, "timeout"
      end
      local ok, _, code = self.signal:wait(left)
      if not ok and code ~= "timeout" then
        return nil, code
      end
    end
  end
end

-- Send bytes as DATA within the relay's credit. false when the stream or bridge went away or
-- the agent stopped reading for send_timeout.
function Stream:write(bytes)
  local deadline = task.now() + self.bridge.opts.send_timeout
  local at = 1
  while at <= #bytes do
    if self.reset or self.bridge.closed then
      return false
    end
    if self.send_credit <= 0 then
      local left = deadline - task.now()
      if left <= 0 then
        return false
      end
      local ok, _, code = self.signal:wait(left)
      if not ok and code == "canceled" then
        return false
      end
    else
      local n = math.min(#bytes - at + 1, self.send_credit, MAX_PAYLOAD)
      self:send("DATA", bytes:sub(at, at + n - 1))
      self.send_credit = self.send_credit - n
      at = at + n
    end
  end
  return true
end

local function response_bytes(status, headers, body, close, is_head)
  local out = { ("HTTP/1.1 %d %s"):format(status, http_parse.reason(status)) }
  for _, h in ipairs(headers) do
    out[#out + 1] = h[1] .. ": " .. h[2]
  end
  out[#out + 1] = "content-length: " .. #body
  if close then
    out[#out + 1] = "connection: close"
  end
  return table.concat(out, CRLF) .. CRLF .. CRLF .. (is_head and "" or body)
end

-- Answer one request. close: the connection ends after it.
function Stream:answer(status, headers, body, close, is_head)
  return self:write(response_bytes(status, headers, body, close, is_head))
end

function Stream:refuse(status, message)
  local st, headers, body = policy_mod.reply(status, message)
  self.bridge:count(st)
  self:answer(st, headers, body, true)
end

-- Collect a request's body. The policy refused a Content-Length over max_request_body from the
-- head; a chunked body is counted here. nil, why when it did not complete ("too_large" too).
function Stream:body(deadline)
  local parts, size, max = {}, 0, self.bridge.policy.max_request_body
  while true do
    local e, why = self:event(deadline)
    if not e then
      return nil, why
    end
    if e.type == "end" then
      return table.concat(parts)
    end
    size = size + #e.data
    if size > max then
      return nil, "too_large"
    end
    parts[#parts + 1] = e.data
  end
end

local function header_map(list, extra)
  local map = {}
  for _, h in ipairs(list) do
    map[h[1]] = h[2]
  end
  for k, v in pairs(extra) do
    map[k] = v
  end
  return map
end

-- What the agent gets when a forward failed: nothing reached the API (502, retry allowed), or
-- it may have (409 indeterminate: never retry).
local function forward_failure(b, err, code)
  if code == "protocol" and err:find("max_body", 1, true) then
    local st, headers, body = policy_mod.reply(502,
      policy_mod.CATALOGUE.response_too_large.message:format(b.policy.max_response_body))
    return st, headers, body
  end
  if http.ambiguous(code) then
    return policy_mod.indeterminate_reply(("Bridge forward did not complete (%s); the request "
      .. "may have been carried out."):format(code))
  end
  return policy_mod.reply(502, policy_mod.CATALOGUE.forward_failed.message:format(code))
end

-- One slot among max_forwards: concurrency toward the API is bounded.
function M._take_slot(b, deadline)
  while b.forwards >= b.opts.max_forwards do
    local left = deadline - task.now()
    if left <= 0 or b.closed then
      return false
    end
    b.slot_signal:wait(left)
  end
  b.forwards = b.forwards + 1
  return true
end

local function give_slot(b)
  b.forwards = b.forwards - 1
  b.slot_signal:notify()
end

-- Forward a checked request to the API; the answer as status, headers (filtered), body.
function Stream:forward(decision, body)
  local b = self.bridge
  local url = b.api_url .. decision.path .. (decision.query ~= "" and "?" .. decision.query or "")
  local extra = { authorization = "Bearer " .. b.api_key }
  if b.run_id then
    extra["x-paperclip-run-id"] = b.run_id
  end
  if not M._take_slot(b, task.now() + b.opts.forward_timeout) then
    return policy_mod.reply(503, policy_mod.CATALOGUE.closing.message)
  end
  local started = task.now()
  local res, err, code = http.request({
    url = url,
    method = decision.method,
    headers = header_map(decision.headers, extra),
    body = body ~= "" and body or nil,
    timeout = b.opts.forward_timeout,
    connect_timeout = b.opts.connect_timeout,
    max_body = b.policy.max_response_body,
    follow_redirects = false,
    path_as_is = true,
  })
  give_slot(b)
  if not res then
    log.debug("bridge: %s %s failed: %s", decision.method, decision.path, err)
    return forward_failure(b, err, code)
  end
  log.debug("bridge: %s %s -> %d (%.1f ms)", decision.method, decision.path, res.status,
    (task.now() - started) * 1000)
  local status, headers = b.policy:filter_response(res.status, res.headers)
  return status, headers, res.body
end

-- One request from its head: check, collect the body, forward, answer. Returns true when the
-- connection may carry another request.
function Stream:serve(head)
  local b = self.bridge
  local deadline = task.now() + b.opts.request_timeout
  local decision, status, message = b.policy:check_request({
    method = head.method,
    target = head.target,
    headers = head.header_list,
    body_length = head.content_length,
    chunked = head.chunked,
  })
  if not decision then
    self:refuse(status, message) -- the body is left unread: the connection must end
    return false
  end
  if head.expect_continue and not self:write("HTTP/1.1 100 Continue\r\n\r\n") then
    return false
  end
  local body, why = self:body(deadline)
  if not body then
    if why == "refused" then
      self:refuse(self.refused.status, self.refused.message)
    elseif why == "too_large" then
      local entry = policy_mod.CATALOGUE.too_large
      self:refuse(entry.status, entry.message:format(b.policy.max_request_body))
    elseif why == "timeout" then
      self:refuse(408, "Request not received in time.")
    end
    return false
  end
  local st, headers, rbody = self:forward(decision, body)
  b:count(st)
  local keep = head.keep_alive
  if not self:answer(st, headers, rbody, not keep, decision.method == "HEAD") then
    return false
  end
  return keep
end

-- The stream's task: requests one after the other until the agent or we end it.
function Stream:run()
  local b = self.bridge
  while true do
    local head, why = self:event(task.now() + b.opts.idle_timeout)
    if not head then
      if why == "refused" then
        self:refuse(self.refused.status, self.refused.message)
      elseif why == "timeout" and self.parser:pending() then
        self:refuse(408, "Request not received in time.")
      end
      break
    end
    if not self:serve(head) then
      break
    end
  end
  self:finish()
end

-- End the stream: FIN from us (the relay shuts the socket's write side once everything before
-- it is written), then the stream is forgotten here. A RESET needs nothing more.
function Stream:finish()
  local b = self.bridge
  self.closing = true
  if not self.reset and not b.closed then
    self:send("FIN")
  end
  b.streams[self.id] = nil
  b.finished = b.finished + 1
end

------------------------------------------------------------------------------------------------
-- The bridge: frames in (a callback that cannot yield), frames out (one writer task)

local Bridge = { __name = "host.bridge.Bridge" }
Bridge.__index = Bridge

function Bridge:count(status)
  self.counts.requests = self.counts.requests + 1
  local k = tostring(status)
  self.counts.by_status[k] = (self.counts.by_status[k] or 0) + 1
end

function Bridge:send(type_name, stream, payload)
  if self.closed then
    return
  end
  self.out[#self.out + 1] = frame.encode(type_name, stream, payload)
  self.out_signal:notify()
end

-- Frames out, in order, in as few writes as the duplex allows.
function Bridge:writer()
  while true do
    if #self.out == 0 then
      if self.closed then
        return
      end
      self.out_signal:wait()
    else
      local data = table.concat(self.out)
      self.out = {}
      self.writing = true
      local ok, err = self.duplex:write(data)
      self.writing = false
      if not ok then
        self.drained:notify() -- nothing more will be written
        self:lost("the relay's input failed: " .. tostring(err))
        return
      end
      if #self.out == 0 then
        self.drained:notify() -- close() waits for the GOAWAY to be written
      end
    end
  end
end

function Bridge:on_open(id)
  if self.streams[id] or id <= self.last_id or id % 2 == 0 then
    return nil, ("OPEN of stream %d, which is not new"):format(id)
  end
  self.last_id = id
  local s = new_stream(self, id)
  self.streams[id] = s
  self.counts.connections = self.counts.connections + 1
  s.task = task.spawn(function()
    local ok, err = pcall(s.run, s)
    if not ok then
      log.error("bridge: stream %d failed: %s", id, tostring(err))
      if self.streams[id] then
        self:send("RESET", id)
        self.streams[id] = nil
      end
    end
  end)
  return true
end

function Bridge:on_frame(f)
  local t = f.type
  if t == "HELLO" then
    if self.port then
      return nil, "a second HELLO"
    elseif f.magic ~= frame.MAGIC or not f.port then
      return nil, ("a HELLO of %q, not of a relay"):format(tostring(f.magic))
    end
    self.port = f.port
    self.hello_signal:notify()
    return true
  elseif t == "GOAWAY" then
    return nil, "the relay went away: " .. (f.payload or "")
  elseif t == "OPEN" then
    return self:on_open(f.stream)
  end
  local s = self.streams[f.stream]
  if not s then
    if f.stream <= self.last_id then
      return true -- a stream we already forgot: frames may have crossed on the wire
    end
    return nil, ("%s on stream %d, which was never opened"):format(t, f.stream)
  end
  if t == "RESET" then
    self.streams[f.stream] = nil
  end
  return s:on_frame(f)
end

-- The duplex's stdout: decode and dispatch. Runs outside any task: it must not yield.
function Bridge:on_output(chunk)
  if self.closed then
    return
  end
  local frames, err = self.decoder:feed(chunk)
  if not frames then
    return self:lost("relay protocol error: " .. err)
  end
  for _, f in ipairs(frames) do
    local ok, why = self:on_frame(f)
    if not ok then
      self.out[#self.out + 1] = frame.encode("GOAWAY", 0, "protocol error")
      return self:lost("relay protocol error: " .. why)
    end
  end
end

-- The transport is gone or unusable: close in the background (this may run in a callback).
function Bridge:lost(reason)
  if self.closed or self.closing_task then
    return
  end
  self.lost_reason = reason
  log.warn("bridge: %s", reason)
  task.spawn(function()
    self:close()
  end)
end

--- bridge:close(): GOAWAY to the relay, its stdin closed, the relay given close_timeout to
-- exit, then its execution closed; every stream ends (agents see their connections reset).
-- Idempotent; yields until everything is freed.
function Bridge:close()
  if self.closing_task then
    return self.closing_task:wait()
  end
  self.closing_task = task.spawn(function()
    if not self.closed then
      self.out[#self.out + 1] = frame.encode("GOAWAY", 0, "bridge closed")
      self.out_signal:notify()
    end
    local flushed = task.now() + self.opts.close_timeout
    while (#self.out > 0 or self.writing) and not self.writer_task:done()
      and task.now() < flushed do
      self.drained:wait(flushed - task.now())
    end
    self.closed = true
    self.out_signal:notify()
    self.hello_signal:notify()
    self.slot_signal:notify()
    for _, s in pairs(self.streams) do
      s.signal:notify()
    end
    self.duplex:close_stdin()
    self.duplex:wait(self.opts.close_timeout)
    self.duplex:close()
    for _, s in pairs(self.streams) do
      if s.task and not s.task:done() then
        s.task:cancel()
      end
    end
    self.streams = {}
    return true
  end)
  return self.closing_task:wait()
end
Bridge.__close = Bridge.close

--- bridge:env() -> { PAPERCLIP_API_URL = "http://127.0.0.1:<port>", PAPERCLIP_API_KEY = token }:
-- what the sandboxed command gets instead of the real URL and key.
function Bridge:env()
  return { PAPERCLIP_API_URL = self.url, PAPERCLIP_API_KEY = self.token }
end

--- bridge:stats() -> { connections, requests, by_status = { ["200"] = n, ... }, open }
function Bridge:stats()
  local open = 0
  for _ in pairs(self.streams) do
    open = open + 1
  end
  self.counts.open = open
  return self.counts
end

local function check_opts(opts)
  if type(opts) ~= "table" then
    error("bad argument #1 to 'open' (table expected, got " .. type(opts) .. ")", 3)
  end
  local function need(field, kind)
    if type(opts[field]) ~= kind then
      error(("bad argument #1 to 'open' (field '%s' must be a %s)"):format(field, kind), 4)
    end
  end
  need("duplex", "function")
  need("helper", "string")
  need("api_url", "string")
  need("api_key", "string")
  if not opts.api_url:match("^https?://[^/]") then
    error("bad argument #1 to 'open' (field 'api_url' must be an http(s) URL)", 3)
  end
  if opts.run_id ~= nil and (type(opts.run_id) ~= "string" or opts.run_id:find("[%c]")) then
    error("bad argument #1 to 'open' (field 'run_id' must be a string without controls)", 3)
  end
end

local function merged_opts(opts)
  local o = {}
  for k, v in pairs(M.defaults) do
    o[k] = opts[k] or v
  end
  return o
end

-- A bridge not started yet: its policy with a fresh token, its queues and signals.
local function new_bridge(opts)
  local token = assert(policy_mod.new_token())
  return setmetatable({
    opts = merged_opts(opts),
    policy = policy_mod.new({
      token = token,
      routes = opts.routes,
      max_request_body = opts.max_request_body,
      max_response_body = opts.max_response_body,
      request_headers = opts.request_headers,
      response_headers = opts.response_headers,
    }),
    token = token,
    api_url = opts.api_url:gsub("/+$", ""),
    api_key = opts.api_key,
    run_id = opts.run_id,
    decoder = frame.decoder(),
    streams = {},
    last_id = 0,
    finished = 0,
    forwards = 0,
    out = {},
    out_signal = task.signal(),
    drained = task.signal(), -- the writer emptied the queue
    hello_signal = task.signal(),
    slot_signal = task.signal(),
    counts = { connections = 0, requests = 0, by_status = {} },
  }, Bridge)
end

-- Start the relay's duplex, its writer and the watch on its end. stderr collects the first
-- chunks the relay writes there (its reasons when it cannot start).
function Bridge:start_relay(opts, stderr)
  local duplex, err, code = opts.duplex({
    command = opts.helper,
    args = { "relay", "--port", tostring(opts.port or 0) },
    timeout = self.opts.lifetime,
    on_stdout = function(chunk)
      self:on_output(chunk)
    end,
    on_stderr = function(chunk)
      if #stderr < 16 then
        stderr[#stderr + 1] = chunk
      end
    end,
  })
  if not duplex then
    return nil, "bridge: could not start the relay: " .. tostring(err), code
  end
  self.duplex = duplex
  self.writer_task = task.spawn(function()
    self:writer()
  end)
  self.watch_task = task.spawn(function() -- the relay ending by itself is a lost transport
    local r, werr = duplex:wait()
    self:lost(r and ("the relay exited (%s)"):format(r.signal or r.exit_code) or
      ("the relay's execution failed: " .. tostring(werr)))
  end)
  return true
end

-- Wait for the relay's HELLO: true, or the bridge closed and nil, message, code.
function Bridge:await_hello(stderr)
  local deadline = task.now() + self.opts.hello_timeout
  while not self.port and not self.closed and task.now() < deadline do
    local ok, _, code = self.hello_signal:wait(deadline - task.now())
    if not ok and code == "canceled" then
      self:close()
      return nil, "bridge: canceled while the relay started", "canceled"
    end
  end
  if self.port then
    return true
  end
  local why = self.lost_reason or ("no HELLO within %gs"):format(self.opts.hello_timeout)
  local said = table.concat(stderr):gsub("%s+$", "")
  self:close()
  return nil, ("bridge: the relay did not start: %s%s"):format(why,
    said ~= "" and (" (" .. said .. ")") or ""), "upstream"
end

--- open(opts) -> Bridge | nil, message, code
-- Starts the relay through opts.duplex and waits for its HELLO. opts:
--   duplex     fn(params) -> Duplex | nil, msg, code: opens a duplex execution in the sandbox
--              (params: command, args, on_stdout, on_stderr), as a provider's hooks.duplex
--   helper     the path of ph-sandbox-helper in the sandbox (hooks.sandbox_helper)
--   api_url    the Paperclip API base URL (the real one; never shown to the sandbox)
--   api_key    the real credential, injected as Authorization: Bearer on each forward
--   run_id     sent as x-paperclip-run-id on each forward
--   routes     extra route rules (host.bridge_policy.new's routes)
--   port       the loopback port in the sandbox (default: an ephemeral one)
--   max_request_body, max_response_body, request_headers, response_headers: the policy's
--   and any of M.defaults' names.
-- Bridge fields: url, token, port. Misuse raises.
function M.open(opts)
  check_opts(opts)
  local b, stderr = new_bridge(opts), {}
  local ok, err, code = b:start_relay(opts, stderr)
  if ok then
    ok, err, code = b:await_hello(stderr)
  end
  if not ok then
    return nil, err, code
  end
  b.url = ("http://127.0.0.1:%d"):format(b.port)
  return b
end

return M
