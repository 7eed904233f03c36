--- spec.support.fake_e2b: a fake E2B for specs: the control-plane REST API and envd (Connect
-- RPC over HTTP/1.1) on two loopback servers, answering byte for byte as the real service does
-- (shared/reference/e2b-wire.md), checked against the real `e2b` JS SDK by
-- spec/e2b_sdk/check_fake.mjs. Commands run as REAL local processes, one private temp dir per
-- sandbox standing for its file system.
--
--   local fake = require("spec.support.fake_e2b").start({ api_key = "e2b_test_key" })
--   -- inside a task; then point a client at fake.api_url, fake.sandbox_url, fake.domain
--   fake:stop()
--
-- The fake's fields: api_url, sandbox_url (envd, routed by the E2b-Sandbox-Id header), domain,
-- api_key; sandboxes (id -> sandbox; killed ones stay); requests (every request, API and envd:
-- {method, path, query, kind = "api"|"envd", sandbox_id, status, at = task.now(), fault});
-- commands (every process started: {sandbox_id, pid, cmd, args, envs, cwd, real_cwd, user,
-- stdin, tag, timeout_ms, then exit_code, signal, deadline_exceeded}). Methods: count, fail,
-- running, sandbox, create_sandbox, expire, stop (documented below).
-- A sandbox: {id, template, state = "running"|"paused"|"killed", timeout_ms, expires_at (in
-- task.now() seconds), metadata, env_vars, auto_pause, envd_access_token, root, home,
-- processes = {pid -> {pid, cmd, args, envs, cwd, tag, user, stdin_open, proc (host.proc)}}}.
--
-- Paths: a sandbox's "/" is its private dir `root`, "/home/user" is `home` (the default cwd and
-- HOME). Files directly in /tmp are the machine's real /tmp, so a file staged there with the
-- files API is readable by commands; deeper /tmp paths are refused by the files API. The real
-- path of the sandbox dir is accepted as is (commands print it, for example `pwd`). Commands
-- see real absolute paths: only cwd and the files API are mapped.
--
-- Deliberate differences from the real service: pausing kills the sandbox's processes (the real
-- one snapshots them); a stream in flight when its sandbox is killed or paused is cut, which the
-- host logs on stderr as "http handler failed: ... its process stream is cut (expected ...)".
local fs = require("host.fs")
local http = require("host.http")
local json = require("host.json")
local lost_answer = require("spec.support.lost_answer")
local proc = require("host.proc")
local helpers = require("spec.helpers")
local sorted_keys = helpers.sorted_keys
local sys = require("host.core.sys")
local take_fault = require("spec.support.take_fault")
local task = require("host.task")
local util = require("host.util")

local M = {}

M.ENVD_VERSION = "0.5.7" -- >= 0.5.2 (closeStdin) and >= 0.4.0 (no default Basic user)
M.ENVD_PORT = 49983
M.DEFAULT_TIMEOUT = 300 -- seconds, create and connect without a timeout (v2 endpoints)
M.LEGACY_TIMEOUT = 15 -- seconds, the legacy POST /sandboxes default
M.MAX_TIMEOUT = 86400 -- seconds: the real API refuses longer lifetimes
M.DATA_CHUNK = 32 * 1024 -- envd reads process output in chunks of at most 32 KiB
M.BUFFERED_CHUNKS = 64 -- chunks envd holds for a slow stream before it stops reading the output
M.PROCESS_TIMEOUT = 3600 -- seconds a command may run at most, whatever the sandbox says

local ENVD_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
local JSON_TYPE = "application/json; charset=utf-8"
local STREAM_TYPE = "application/connect+json"
local UNAUTHORIZED_ENVD = "unauthorized access, please provide a valid access token or method "
  .. "signing if supported"

-- Connect error codes and the HTTP status each maps to (connect-go).
local CONNECT_STATUS = {
  canceled = 499, unknown = 500, invalid_argument = 400, deadline_exceeded = 504,
  not_found = 404, already_exists = 409, permission_denied = 403, resource_exhausted = 429,
  failed_precondition = 400, aborted = 409, out_of_range = 400, unimplemented = 501,
  internal = 500, unavailable = 503, data_loss = 500, unauthenticated = 401,
}

-- Go's names for the signals that end a process ("signal: killed").
local SIGNAL_TEXT = {
  SIGKILL = "killed", SIGTERM = "terminated", SIGINT = "interrupt", SIGHUP = "hangup",
  SIGQUIT = "quit", SIGPIPE = "broken pipe", SIGABRT = "aborted", SIGSEGV = "segmentation fault",
  SIGUSR1 = "user defined signal 1", SIGUSR2 = "user defined signal 2", SIGALRM = "alarm clock",
  SIGBUS = "bus error", SIGFPE = "floating point exception", SIGILL = "illegal instruction",
  SIGTRAP = "trace/breakpoint trap", SIGXCPU = "CPU time limit exceeded",
  SIGXFSZ = "file size limit exceeded",
}

local RPC_SIGNALS = { SIGNAL_SIGKILL = "SIGKILL", SIGNAL_SIGTERM = "SIGTERM",
  [9] = "SIGKILL", [15] = "SIGTERM" }

-- Small helpers ---------------------------------------------------------------------------------

local ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789"

local function random_name(n)
  local bytes = assert(util.random(n))
  local out = {}
  for i = 1, n do
    local b = bytes:byte(i) % #ALPHABET + 1
    out[i] = ALPHABET:sub(b, b)
  end
  return table.concat(out)
end

local function url_decode(s)
  s = s:gsub("+", " ")
  return (s:gsub("%%(%x%x)", function(h)
    return string.char(tonumber(h, 16))
  end))
end

local function parse_query(q)
  local out = {}
  for pair in (q or ""):gmatch("[^&]+") do
    local k, v = pair:match("^([^=]*)=?(.*)$")
    out[url_decode(k)] = url_decode(v)
  end
  return out
end

local function rfc3339(t)
  return os.date("!%Y-%m-%dT%H:%M:%SZ", math.floor(t))
end

local function encode(v)
  return assert(json.encode(v))
end

local function json_reply(status, value, headers)
  return status, helpers.merged({ ["content-type"] = JSON_TYPE }, headers), encode(value)
end

-- A control-plane error: {code: <int>, message}. The SDK needs the numeric code (404, 409).
local function api_error(status, message)
  return json_reply(status, { code = status, message = message })
end

-- A Connect unary error: {code: "<name>", message}, with the status connect-go uses.
local function rpc_error(code, message)
  return json_reply(CONNECT_STATUS[code] or 500, { code = code, message = message })
end

-- What the gateway answers for a sandbox that is not running (unknown, paused, killed).
local function gateway_502(id, message, port)
  return json_reply(502, { sandboxId = id, message = message or "The sandbox was not found",
    code = 502, port = port })
end

local function envelope(flags, value)
  local payload = encode(value)
  return string.pack(">BI4", flags, #payload) .. payload
end

local function decode_json_body(body)
  if body == nil or body == "" then
    return {}
  end
  local v, err = json.decode(body)
  if type(v) ~= "table" then
    return nil, err or "the body must be a JSON object"
  end
  return v
end

local function is_string_map(t)
  if t == nil then
    return true
  end
  if type(t) ~= "table" then
    return false
  end
  for k, v in pairs(t) do
    if type(k) ~= "string" or type(v) ~= "string" then
      return false
    end
  end
  return true
end

local copy = helpers.merged -- copy(t) -> a shallow copy of t ({} for nil)

-- Signal: one task waits (bounded) until another party, task or callback, notifies it.
local Signal = {}
Signal.__index = Signal

local function new_signal()
  return setmetatable({ pending = false }, Signal)
end

function Signal:notify()
  self.pending = true
  local s = self.sleeper
  if s then
    self.sleeper = nil
    s:cancel()
  end
end

-- wait(timeout) -> true when notified, false on timeout | nil, "canceled" when the waiting task
-- itself was canceled.
function Signal:wait(timeout)
  if not self.pending and timeout > 0 then
    local s = task.spawn(task.sleep, timeout)
    self.sleeper = s
    s:wait()
    self.sleeper = nil
    if not s:done() then -- we were canceled, not the sleeper
      s:cancel()
      return nil, "canceled"
    end
  end
  local was = self.pending
  self.pending = false
  return was
end

-- Processes on this machine ---------------------------------------------------------------------

-- pid -> {ppid, pgrp, zombie} for every process we can see in /proc.
local function process_table()
  local out = {}
  for _, name in ipairs(fs.list("/proc") or {}) do
    local pid = name:match("^%d+$") and tonumber(name)
    if pid then
      local s = fs.read("/proc/" .. name .. "/stat") or ""
      local state, ppid, pgrp = s:match("^.*%)%s+(%S+)%s+(%-?%d+)%s+(%-?%d+)")
      if state then
        out[pid] = { ppid = tonumber(ppid), pgrp = tonumber(pgrp), zombie = state == "Z" }
      end
    end
  end
  return out
end

-- True when the initial environment of pid names one of `ids` in E2B_SANDBOX_ID.
local function in_sandboxes(pid, ids)
  local env = fs.read("/proc/" .. pid .. "/environ")
  if not env then
    return false
  end
  for id in ("\0" .. env):gmatch("%zE2B_SANDBOX_ID=([^%z]*)") do
    if ids[id] then
      return true
    end
  end
  return false
end

-- SIGKILL, until none is left (bounded): every process in the group of, or descended from, one
-- of `leaders` (a set of pids), and every process started with E2B_SANDBOX_ID set to one of
-- `ids` (a set, or nil). Never this process nor its ancestors.
local function sweep(leaders, ids)
  local me = sys.getpid()
  for _ = 1, 5 do
    local procs = process_table()
    local spare, p = {}, me
    while p and p > 1 and not spare[p] do
      spare[p] = true
      p = procs[p] and procs[p].ppid
    end
    local children = {}
    for pid, info in pairs(procs) do
      children[info.ppid] = children[info.ppid] or {}
      table.insert(children[info.ppid], pid)
    end
    local doomed = {}
    local function add(pid)
      if doomed[pid] or spare[pid] then
        return
      end
      doomed[pid] = true
      for _, c in ipairs(children[pid] or {}) do
        add(c)
      end
    end
    for leader in pairs(leaders) do
      if procs[leader] then
        add(leader)
      end
    end
    for pid, info in pairs(procs) do
      if leaders[info.pgrp] then
        add(pid)
      end
    end
    if ids and next(ids) then
      for pid in pairs(procs) do
        if not doomed[pid] and not spare[pid] and in_sandboxes(pid, ids) then
          add(pid)
        end
      end
    end
    local any = false
    for pid in pairs(doomed) do
      if not procs[pid].zombie then
        any = true
        sys.kill(pid, "SIGKILL")
      end
    end
    if not any then
      return
    end
  end
end

-- Kill every process of the given sandboxes (an array), and everything they started.
local function kill_processes(list)
  local leaders, ids = {}, {}
  for _, sb in ipairs(list) do
    ids[sb.id] = true
    for pid in pairs(sb.processes) do
      leaders[pid] = true
    end
  end
  sweep(leaders, ids)
  for _, sb in ipairs(list) do
    for _, p in pairs(sb.processes) do
      for _, sub in ipairs(p.subs) do
        sub.cut = true -- the VM is gone: in-flight streams are cut, not ended
        sub.signal:notify()
      end
    end
  end
end

-- The fake --------------------------------------------------------------------------------------

local Fake = {}
Fake.__index = Fake

--- start(opts) -> Fake. Call inside a task. opts (all optional):
--   api_key       the only key the API accepts (default "e2b_test_key")
--   domain        the domain clients should configure; the SDK's sandboxDomain (default
--                 "e2b.localhost"). Responses carry "domain": null, as production does.
--   envd_version  advertised envd version (default M.ENVD_VERSION)
--   secure        false: sandboxes get no envd access token (default true)
--   host          listen address (default "127.0.0.1")
function M.start(opts)
  opts = opts or {}
  local self = setmetatable({
    api_key = opts.api_key or "e2b_test_key",
    domain = opts.domain or "e2b.localhost",
    envd_version = opts.envd_version or M.ENVD_VERSION,
    secure = opts.secure ~= false,
    team_id = util.uuid(),
    sandboxes = {}, -- id -> sandbox (killed ones stay, state "killed")
    requests = {}, -- {method, path, query, kind = "api"|"envd", sandbox_id, status, at, fault}
    commands = {}, -- every process started: {sandbox_id, pid, cmd, args, envs, cwd, user, ...}
    faults = {},
    tmp_files = {}, -- real /tmp paths written through the files API -> sandbox id
    tasks = {}, -- expiry timers, process waiters
    stopped = false,
  }, Fake)
  local host = opts.host or "127.0.0.1"
  local api, err = http.serve({
    host = host,
    handler = function(req, res)
      return self:_serve("api", req, res)
    end,
  })
  if not api then
    error("fake_e2b: cannot listen: " .. tostring(err), 2)
  end
  local envd, err2 = http.serve({
    host = host,
    max_body = 64 * 1024 * 1024,
    handler = function(req, res)
      return self:_serve("envd", req, res)
    end,
  })
  if not envd then
    api:close()
    error("fake_e2b: cannot listen: " .. tostring(err2), 2)
  end
  self.api_server, self.envd_server = api, envd
  self.api_url, self.sandbox_url = api.url, envd.url
  return self
end

--- fake:count(pattern [, method]) -> number of requests whose path (or "METHOD path") matches
-- the Lua pattern, optionally only with that method.
function Fake:count(pattern, method)
  local n = 0
  for _, r in ipairs(self.requests) do
    if (method == nil or r.method == method)
      and (r.path:find(pattern) or (r.method .. " " .. r.path):find(pattern)) then
      n = n + 1
    end
  end
  return n
end

--- fake:fail(spec): inject a fault for the next request(s) matching it; faults are consumed in
-- order, the first matching one wins. spec:
--   method, path (Lua pattern on the path), kind ("api"|"envd"): what it matches (nil: any)
--   times     how many requests it applies to (default 1; math.huge: all)
--   delay     seconds to wait first; alone, the request is then handled normally
--   hold      a function: wait first until hold() is true (polled; or the fake stops), then go
--             on as with delay: lets a spec decide when a request may be answered
--   status, body (table: JSON; string: as is), headers: the answer (body default:
--             {code = status, message = "injected fault"})
--   drop      close the connection after the response head (for a process stream: after the
--             start event; the command keeps running)
--   truncate  true: a body cut short (process stream: no end event, no end-of-stream
--             message); "end": a process stream without its end event but properly closed
--   stall     never answer (until the fake stops, or for `stall` seconds when a number; then 504)
--   after     true: the API request is CARRIED OUT first (a sandbox made, killed...), then its
--             answer is lost: drop (the connection closes before any byte of it), cut (half
--             the body, then the connection closes) or status (that status instead, default
--             502: a proxy that lost the answer)
function Fake:fail(spec)
  assert(type(spec) == "table", "fail: table expected")
  local f = copy(spec)
  f.times = f.times or 1
  self.faults[#self.faults + 1] = f
  return f
end

--- fake:chaos([spec]): seeded faults on a share of the requests (spec.support.take_fault).
Fake.chaos = take_fault.chaos

--- fake:running() -> sorted ids of the sandboxes in state "running"
function Fake:running()
  local ids = {}
  for _, id in ipairs(sorted_keys(self.sandboxes)) do
    if self.sandboxes[id].state == "running" then
      ids[#ids + 1] = id
    end
  end
  return ids
end

--- fake:sandbox(id) -> the sandbox record or nil
function Fake:sandbox(id)
  return self.sandboxes[id]
end

--- fake:create_sandbox(opts) -> sandbox: as POST /v2/sandboxes would, without HTTP.
-- opts: template (default "base"), timeout (seconds, default 300), metadata, env_vars,
-- auto_pause.
function Fake:create_sandbox(o)
  o = o or {}
  local id = random_name(20)
  local root = assert(util.mkdtemp("fake-e2b-"))
  local home = root .. "/home/user"
  assert(fs.mkdir(root .. "/home"))
  assert(fs.mkdir(home))
  local sb = {
    id = id,
    template = o.template or "base",
    client_id = random_name(8),
    state = "running",
    metadata = o.metadata or {},
    env_vars = o.env_vars or {},
    auto_pause = o.auto_pause == true,
    envd_access_token = self.secure and util.hex(assert(util.random(24))) or nil,
    root = root,
    home = home,
    processes = {},
    started_at = os.time(),
  }
  self.sandboxes[id] = sb
  self:_set_timeout(sb, o.timeout or M.DEFAULT_TIMEOUT)
  return sb
end

--- fake:expire(id): the sandbox's lifetime ends now (killed, or paused with autoPause).
function Fake:expire(id)
  local sb = self.sandboxes[id]
  if sb and sb.state == "running" then
    self:_end(sb, sb.auto_pause and "paused" or "killed")
  end
end

--- fake:stop(): kill every process the fake started, close both servers, remove every temp dir
-- and every /tmp file it wrote. Idempotent. Inside a task it also waits (bounded) for the
-- killed processes to be reaped.
function Fake:stop()
  if self.stopped then
    return
  end
  self.stopped = true
  self.faults = {}
  self.chaos_pick = nil
  local all = {}
  for _, sb in pairs(self.sandboxes) do
    if sb.expiry then
      sb.expiry:cancel()
      sb.expiry = nil
    end
    all[#all + 1] = sb
  end
  kill_processes(all)
  self.api_server:close()
  self.envd_server:close()
  if task.current() then
    local deadline = task.now() + 5
    for _, t in ipairs(self.tasks) do
      local left = deadline - task.now()
      if left > 0 and not t:done() then
        t:wait(left)
      end
    end
  end
  for _, t in ipairs(self.tasks) do
    if not t:done() then
      t:cancel()
    end
  end
  for _, sb in pairs(self.sandboxes) do
    self:_remove_files(sb)
  end
end

-- Sandbox life ----------------------------------------------------------------------------------

function Fake:_spawn(fn)
  local t = task.spawn(fn)
  local list = self.tasks
  for i = #list, 1, -1 do -- forget finished ones so the list stays short
    if list[i]:done() then
      table.remove(list, i)
    end
  end
  list[#list + 1] = t
  return t
end

-- The sandbox lives `seconds` more from now (a timer ends it then).
function Fake:_set_timeout(sb, seconds)
  sb.timeout_ms = seconds * 1000
  sb.expires_at = task.now() + seconds
  self:_arm(sb)
end

function Fake:_arm(sb)
  if sb.expiry then
    sb.expiry:cancel()
  end
  sb.expiry = self:_spawn(function()
    while sb.state == "running" and not self.stopped do
      local left = sb.expires_at - task.now()
      if left <= 0 then
        sb.expiry = nil
        self:_end(sb, sb.auto_pause and "paused" or "killed")
        return
      end
      if not task.sleep(math.min(left, 60)) then
        return -- canceled: re-armed or stopped
      end
    end
  end)
end

function Fake:_remove_files(sb)
  if sb.root then
    util.remove_tree(sb.root)
  end
  for path, owner in pairs(self.tmp_files) do
    if owner == sb.id then
      os.remove(path)
      self.tmp_files[path] = nil
    end
  end
end

-- The sandbox stops running: "paused" (its files are kept) or "killed" (all gone).
function Fake:_end(sb, state)
  if sb.expiry and sb.expiry ~= task.current() then
    sb.expiry:cancel()
  end
  sb.expiry = nil
  sb.state = state
  kill_processes({ sb })
  if state == "killed" then
    self:_remove_files(sb)
  end
end

-- Request plumbing ------------------------------------------------------------------------------

function Fake:_take_fault(kind, req)
  local function applies(f)
    return (f.kind == nil or f.kind == kind) and (f.method == nil or f.method == req.method)
      and (f.path == nil or req.path:find(f.path))
  end
  return take_fault.take(self, applies)
end

-- Answer a fault that replaces the response; returns nothing when the request goes on.
function Fake:_apply_fault(f, req, res, entry)
  if f.delay then
    task.sleep(f.delay)
  end
  while f.hold and not self.stopped and not f.hold() do
    if not task.sleep(0.02) then
      return "done"
    end
  end
  if f.stall then
    local deadline = task.now() + (type(f.stall) == "number" and f.stall or 600)
    while not self.stopped and task.now() < deadline do
      if not task.sleep(math.min(0.25, deadline - task.now())) then
        return "done"
      end
    end
    entry.status = 504
    return "done", api_error(504, "injected stall ended")
  end
  if f.status == nil and not f.drop and not f.truncate then
    return nil -- a delay or hold only
  end
  if (f.drop or f.truncate) and req.path:find("^/process%.Process/") then
    return nil -- process streams handle these themselves
  end
  local status = f.status or 200
  local body = f.body
  if body == nil then
    body = { code = status, message = "injected fault" }
  end
  if type(body) ~= "string" then
    body = encode(body)
  end
  local headers = { ["content-type"] = JSON_TYPE }
  for k, v in pairs(f.headers or {}) do
    headers[k:lower()] = v
  end
  entry.status = status
  if f.drop or f.truncate then
    headers["content-length"] = tostring(f.drop and #body + 1 or #body)
    res:start(status, headers)
    if f.truncate and not f.drop then
      res:write(body:sub(1, #body // 2))
    end
    return "done" -- the handler returns without finishing: the connection is closed
  end
  return "done", status, headers, body
end

function Fake:_serve(kind, req, res)
  local entry = { method = req.method, path = req.path, query = req.query, kind = kind,
    at = task.now() }
  self.requests[#self.requests + 1] = entry
  local f = self:_take_fault(kind, req)
  if f and not f.after then
    entry.fault = true
    local r = table.pack(self:_apply_fault(f, req, res, entry))
    if r[1] then
      return table.unpack(r, 2, r.n)
    end
  end
  local status, headers, body
  if kind == "api" then
    status, headers, body = self:_api(req, entry)
  else
    status, headers, body = self:_envd(req, res, entry, f)
  end
  if status then
    entry.status = status
  end
  if f and f.after and status then -- the request was carried out; its answer is not
    entry.fault = true
    lost_answer(res, f, entry, status, headers, body)
    entry.status = f.status or 502
    return api_error(entry.status, "injected fault after the request was carried out")
  end
  return status, headers, body
end

-- Control plane ---------------------------------------------------------------------------------

-- The live sandbox for a path id (running or paused), accepting the old "id-clientID" form.
function Fake:_lookup(id)
  local sb = self.sandboxes[id]
  if not sb and id:find("-", 1, true) then
    sb = self.sandboxes[id:match("^([^-]+)")]
  end
  if sb and sb.state ~= "killed" then
    return sb
  end
end

local function not_found(id)
  return api_error(404, ('Sandbox "%s" doesn\'t exist or you don\'t have access to it'):format(id))
end

function Fake:_sandbox_json(sb)
  return {
    sandboxID = sb.id,
    templateID = sb.template,
    alias = sb.template,
    clientID = sb.client_id,
    envdVersion = self.envd_version,
    envdAccessToken = sb.envd_access_token,
    domain = json.null,
    trafficAccessToken = json.null,
  }
end

function Fake:_detail_json(sb)
  local d = self:_sandbox_json(sb)
  d.trafficAccessToken = nil
  d.cpuCount, d.memoryMB, d.diskSizeMB = 2, 512, 1024
  d.startedAt = rfc3339(sb.started_at)
  d.endAt = rfc3339(os.time() + math.max(0, sb.expires_at - task.now()))
  d.state = sb.state
  d.metadata = next(sb.metadata) and sb.metadata or nil
  d.lifecycle = { onTimeout = sb.auto_pause and "pause" or "kill", autoResume = false }
  return d
end

-- {timeout} in seconds from a body: default when absent; nil, message when invalid.
local function body_timeout(body, default)
  local t = body.timeout
  if t == nil or t == json.null then
    return default
  end
  if math.type(t) ~= "integer" then
    return nil, "timeout must be an integer number of seconds"
  end
  if t > M.MAX_TIMEOUT then
    return nil, "Timeout cannot be greater than 24 hours"
  end
  return math.max(t, 0)
end

function Fake:_create(req, legacy)
  local body, err = decode_json_body(req.body)
  if not body then
    return api_error(400, "Error when parsing request: " .. tostring(err))
  end
  if type(body.templateID) ~= "string" or body.templateID == "" then
    return api_error(400, "Error when parsing request: templateID is required")
  end
  local timeout, terr = body_timeout(body, legacy and M.LEGACY_TIMEOUT or M.DEFAULT_TIMEOUT)
  if not timeout then
    return api_error(400, terr)
  end
  if not is_string_map(body.metadata) or not is_string_map(body.envVars) then
    return api_error(400, "Error when parsing request: metadata and envVars map strings to "
      .. "strings")
  end
  local sb = self:create_sandbox({
    template = body.templateID,
    timeout = timeout,
    metadata = body.metadata,
    env_vars = body.envVars,
    auto_pause = body.autoPause == true,
  })
  sb.secure_requested = body.secure
  return json_reply(201, self:_sandbox_json(sb))
end

-- Connect (v2 and old 2.x) and resume (1.x): resumes a paused sandbox; a running one only gets
-- its lifetime extended.
function Fake:_connect(id, req, resume)
  local sb = self:_lookup(id)
  if not sb then
    return not_found(id)
  end
  local body, err = decode_json_body(req.body)
  if not body then
    return api_error(400, "Error when parsing request: " .. tostring(err))
  end
  local timeout, terr = body_timeout(body, M.DEFAULT_TIMEOUT)
  if not timeout then
    return api_error(400, terr)
  end
  if sb.state == "paused" then
    sb.state = "running"
    if resume and body.autoPause ~= nil then
      sb.auto_pause = body.autoPause == true
    end
    self:_set_timeout(sb, timeout)
    return json_reply(201, self:_sandbox_json(sb))
  end
  if resume then
    return api_error(409, ("Sandbox %s is already running"):format(id))
  end
  if task.now() + timeout > sb.expires_at then
    self:_set_timeout(sb, timeout) -- only ever extended
  end
  return json_reply(200, self:_sandbox_json(sb))
end

function Fake:_list(req, v2)
  local q = parse_query(req.query)
  local states = {}
  for s in (q.state or (v2 and "running,paused" or "running")):gmatch("[^,]+") do
    states[s] = true
  end
  local want = parse_query(q.metadata)
  local out = json.array()
  for _, id in ipairs(sorted_keys(self.sandboxes)) do
    local sb = self.sandboxes[id]
    local ok = states[sb.state] == true
    for k, v in pairs(want) do
      ok = ok and sb.metadata[k] == v
    end
    if ok then
      local d = self:_detail_json(sb)
      d.envdAccessToken, d.domain, d.lifecycle = nil, nil, nil
      out[#out + 1] = d
    end
  end
  return json_reply(200, out)
end

function Fake:_api(req, _entry)
  local key = req.headers["x-api-key"]
  if key == nil or not util.constant_time_equal(key, self.api_key) then
    return api_error(401, "Invalid API key")
  end
  local m, p = req.method, req.path
  if p == "/v2/sandboxes" or p == "/sandboxes" then
    if m == "POST" then
      return self:_create(req, p == "/sandboxes")
    elseif m == "GET" then
      return self:_list(req, p == "/v2/sandboxes")
    end
    return api_error(405, "Method not allowed")
  end
  local id, action = p:match("^/v2/sandboxes/([^/]+)/(connect)$")
  if not id then
    id, action = p:match("^/sandboxes/([^/]+)/([%a]+)$")
  end
  if not id then
    id = p:match("^/sandboxes/([^/]+)$")
  end
  if not id then
    return api_error(404, "Not found")
  end
  id = url_decode(id)
  if action == nil then
    local sb = self:_lookup(id)
    if m == "GET" then
      if not sb then
        return not_found(id)
      end
      return json_reply(200, self:_detail_json(sb))
    elseif m == "DELETE" then
      if not sb then
        return not_found(id)
      end
      self:_end(sb, "killed")
      return 204
    end
    return api_error(405, "Method not allowed")
  end
  if m ~= "POST" then
    return api_error(405, "Method not allowed")
  end
  if action == "connect" or action == "resume" then
    return self:_connect(id, req, action == "resume")
  end
  local sb = self:_lookup(id)
  if action == "timeout" or action == "refreshes" then
    if not sb or sb.state ~= "running" then
      return not_found(id)
    end
    local body, err = decode_json_body(req.body)
    if not body then
      return api_error(400, "Error when parsing request: " .. tostring(err))
    end
    if action == "refreshes" then -- the old keep-alive: extends only
      local d = body.duration
      d = math.type(d) == "integer" and d or M.DEFAULT_TIMEOUT
      if task.now() + d > sb.expires_at then
        self:_set_timeout(sb, d)
      end
      return 204
    end
    local timeout, terr = body_timeout(body, nil)
    if not timeout then
      return api_error(400, terr or "timeout is required")
    end
    self:_set_timeout(sb, timeout)
    return 204
  elseif action == "pause" then
    if not sb then
      return not_found(id)
    end
    if sb.state == "paused" then
      return api_error(409, ("Error pausing sandbox - sandbox '%s' is already paused"):format(id))
    end
    self:_end(sb, "paused")
    return 204
  end
  return api_error(404, "Not found")
end

-- envd: routing, auth ---------------------------------------------------------------------------

-- The sandbox id and port of an envd request: E2b-Sandbox-Id / -Port headers, or a Host of the
-- form "<port>-<id>.<domain>".
local function envd_route(req)
  local id, port = req.headers["e2b-sandbox-id"], req.headers["e2b-sandbox-port"]
  if id == nil then
    local p, i = (req.headers["host"] or ""):match("^(%d+)%-([%w]+)%.")
    port, id = p, i
  end
  return id, tonumber(port or M.ENVD_PORT)
end

function Fake:_envd(req, res, entry, fault)
  local id, port = envd_route(req)
  entry.sandbox_id = id
  if id == nil then
    return json_reply(400, { code = 400, message = "missing E2b-Sandbox-Id header" })
  end
  local sb = self.sandboxes[id]
  if not sb or sb.state ~= "running" then
    return gateway_502(id)
  end
  if port ~= M.ENVD_PORT then
    return gateway_502(id, "The sandbox is running but port is not open", port)
  end
  local m, p = req.method, req.path
  if m == "GET" and p == "/health" then
    return 204
  end
  local token = req.headers["x-access-token"]
  local ok_token = sb.envd_access_token == nil
    or (token ~= nil and util.constant_time_equal(token, sb.envd_access_token))
  if p == "/files" and (m == "GET" or m == "POST") then
    if sb.envd_access_token and not ok_token then -- the files API's own check (signing)
      local msg = token and "access token present in header but does not match"
        or "missing signature query parameter"
      return json_reply(401, { code = 401, message = msg })
    end
    if m == "GET" then
      return self:_read_file(sb, req)
    end
    return self:_write_files(sb, req)
  end
  if not ok_token then
    return json_reply(401, { code = 401, message = UNAUTHORIZED_ENVD })
  end
  local service, method = p:match("^/([%w%.]+)/(%w+)$")
  if m ~= "POST" or not service then
    return json_reply(404, { code = 404, message = "404 page not found" })
  end
  if service == "process.Process" and (method == "Start" or method == "Connect") then
    return self:_stream(sb, req, res, entry, method, fault)
  end
  local handler = (service == "process.Process" and self.rpc_process[method])
    or (service == "filesystem.Filesystem" and self.rpc_filesystem[method])
  if not handler then
    return rpc_error("unimplemented", ("%s/%s is not implemented"):format(service, method))
  end
  local ctype = (req.headers["content-type"] or ""):lower()
  if not ctype:find("^application/json") then
    return 415, { ["content-type"] = "text/plain" }, "unsupported content type\n"
  end
  local body, err = decode_json_body(req.body)
  if not body then
    return rpc_error("invalid_argument", "unmarshal message: " .. tostring(err))
  end
  return handler(self, sb, body, req)
end

-- Paths -----------------------------------------------------------------------------------------

-- Components of an absolute sandbox path (after ~ and relative resolution), or nil, message.
local function sandbox_components(sb_path)
  local comps = {}
  for c in sb_path:gmatch("[^/]+") do
    if c == ".." then
      return nil, "path must not contain '..'"
    elseif c ~= "." then
      comps[#comps + 1] = c
    end
  end
  return comps
end

-- Where sandbox path `path` is on this machine: real, virtual (the sandbox's absolute path),
-- kind ("root": inside the sandbox dir; "tmp": the real /tmp) | nil, message.
local function map_path(sb, path, for_cwd)
  if type(path) ~= "string" or path == "" or path:find("%z") then
    return nil, "invalid path"
  end
  local home_v = "/home/user"
  if path == "~" then
    path = home_v
  elseif path:sub(1, 2) == "~/" then
    path = home_v .. path:sub(2)
  elseif path:sub(1, 1) ~= "/" then
    path = home_v .. "/" .. path
  end
  local comps, err = sandbox_components(path)
  if not comps then
    return nil, err
  end
  local abs = "/" .. table.concat(comps, "/")
  local root = sb.root
  if abs == root or abs:sub(1, #root + 1) == root .. "/" then
    local v = abs:sub(#root + 1)
    return abs, v == "" and "/" or v, "root"
  end
  if comps[1] == "tmp" and (#comps >= 2 or for_cwd) then
    if #comps > 2 and not for_cwd then
      return nil, "only files directly in /tmp are shared with this machine"
    end
    return abs, abs, "tmp"
  end
  return root .. (abs == "/" and "" or abs), abs, "root"
end

-- Refuses a path whose existing components under the sandbox dir include a symbolic link.
local function check_no_links(root, real)
  local p = root
  for c in real:sub(#root + 2):gmatch("[^/]+") do
    p = p .. "/" .. c
    local st = fs.stat(p, false)
    if st and st.type == "link" then
      return nil, "path goes through a symbolic link: " .. p
    end
  end
  return true
end

local function mkdir_p(root, dir)
  local p = root
  for c in dir:sub(#root + 2):gmatch("[^/]+") do
    p = p .. "/" .. c
    local ok, err = fs.mkdir(p)
    if not ok then
      return nil, err
    end
  end
  return true
end

-- One file written through the files API; returns the EntryInfo or nil, status, message.
function Fake:_write_one(sb, path, data)
  local real, virtual, kind = map_path(sb, path)
  if not real then
    return nil, 400, "error resolving path: " .. virtual
  end
  if kind == "tmp" then
    local st = fs.stat(real, false)
    if st and (self.tmp_files[real] ~= sb.id or st.type ~= "file") then
      return nil, 403, ("fake e2b: %s exists on this machine and is not this sandbox's file"
        ):format(virtual)
    end
  else
    if real == sb.root then
      return nil, 400, "path is a directory: " .. virtual
    end
    local ok, err = check_no_links(sb.root, real)
    if not ok then
      return nil, 403, err
    end
    local dir = real:match("^(.*)/[^/]+$")
    ok, err = mkdir_p(sb.root, dir)
    if not ok then
      return nil, 500, "error ensuring directories: " .. tostring(err)
    end
    local st = fs.stat(real, false)
    if st and st.type == "directory" then
      return nil, 400, "path is a directory: " .. virtual
    end
  end
  local ok, err = fs.write(real, data, tonumber("644", 8))
  if not ok then
    return nil, 500, "error writing file: " .. tostring(err)
  end
  if kind == "tmp" then
    self.tmp_files[real] = sb.id
  end
  return { path = virtual, name = virtual:match("([^/]*)$"), type = "file" }
end

-- Parts of a multipart/form-data body: {name, filename, data} | nil, message
local function parse_multipart(body, ctype)
  local boundary = ctype:match('boundary="([^"]+)"') or ctype:match("boundary=([^;%s]+)")
  if not boundary then
    return nil, "no multipart boundary"
  end
  local delim = "--" .. boundary
  local pos = body:find(delim, 1, true)
  if not pos then
    return nil, "multipart: NextPart: EOF"
  end
  pos = pos + #delim
  local parts = {}
  while body:sub(pos, pos + 1) ~= "--" do
    if body:sub(pos, pos + 1) ~= "\r\n" then
      return nil, "multipart: bad delimiter line"
    end
    local head_end = body:find("\r\n\r\n", pos + 2, true)
    if not head_end then
      return nil, "multipart: part head not terminated"
    end
    local head = body:sub(pos + 2, head_end - 1)
    local next_delim = body:find("\r\n" .. delim, head_end + 4, true)
    if not next_delim then
      return nil, "multipart: part not terminated"
    end
    local disp = ""
    for line in (head .. "\r\n"):gmatch("(.-)\r\n") do
      local k, v = line:match("^([^:]+):%s*(.*)$")
      if k and k:lower() == "content-disposition" then
        disp = v
      end
    end
    local filename = disp:match('filename="([^"]*)"')
    parts[#parts + 1] = {
      name = disp:match('[;%s]name="([^"]*)"'),
      filename = filename and url_decode((filename:gsub("%+", "%%2B"))),
      data = body:sub(head_end + 4, next_delim - 1),
    }
    pos = next_delim + 2 + #delim
  end
  return parts
end

function Fake:_write_files(sb, req)
  local q = parse_query(req.query)
  local ctype = req.headers["content-type"] or ""
  local media = ctype:match("^%s*([^;%s]+)") or ""
  media = media:lower()
  local written = json.array()
  if media == "application/octet-stream" then
    if not q.path then
      return api_error(400, "path query parameter is required for raw body upload")
    end
    local e, status, msg = self:_write_one(sb, q.path, req.body or "")
    if not e then
      return api_error(status, msg)
    end
    written[1] = e
  elseif media:find("^multipart/") then
    local parts, err = parse_multipart(req.body or "", ctype)
    if not parts then
      return api_error(500, "error parsing multipart form: " .. err)
    end
    local seen = {}
    for _, part in ipairs(parts) do
      if part.name == "file" then
        local target = q.path or part.filename
        if not target or target == "" then
          return api_error(400, "error resolving path: no file name")
        end
        if seen[target] then
          return api_error(400, ("you cannot upload multiple files to the same path '%s' in "
            .. "one upload request, only the first specified file was uploaded"):format(target))
        end
        seen[target] = true
        local e, status, msg = self:_write_one(sb, target, part.data)
        if not e then
          return api_error(status, msg)
        end
        written[#written + 1] = e
      end
    end
  else
    return api_error(400, ("unsupported content type: %s, expected multipart/form-data or "
      .. "application/octet-stream"):format(ctype))
  end
  return json_reply(200, written)
end

function Fake:_read_file(sb, req)
  local q = parse_query(req.query)
  local real, virtual, kind = map_path(sb, q.path or "")
  if not real then
    return api_error(400, "error resolving path: " .. virtual)
  end
  if kind == "tmp" then
    local st = fs.stat(real, false)
    if self.tmp_files[real] ~= sb.id or not st or st.type ~= "file" then
      return api_error(404, ("path '%s' does not exist"):format(virtual))
    end
  end
  if kind == "root" and not check_no_links(sb.root, real) then
    return api_error(403, "path goes through a symbolic link")
  end
  local st = fs.stat(real)
  if not st then
    return api_error(404, ("path '%s' does not exist"):format(virtual))
  end
  if st.type == "directory" then
    return api_error(400, ("path '%s' is a directory"):format(virtual))
  end
  local data, err = fs.read(real)
  if not data then
    return api_error(500, "error reading file: " .. tostring(err))
  end
  return 200, { ["content-type"] = "application/octet-stream" }, data
end

-- envd: process RPCs ----------------------------------------------------------------------------

local function select_process(sb, selector)
  if type(selector) ~= "table" then
    return nil
  end
  if selector.pid ~= nil then
    return sb.processes[tonumber(selector.pid)]
  end
  if selector.tag ~= nil then
    for _, p in pairs(sb.processes) do
      if p.tag == selector.tag then
        return p
      end
    end
  end
end

local function selector_text(selector)
  if type(selector) == "table" and selector.tag ~= nil then
    return "process with tag " .. tostring(selector.tag) .. " not found"
  end
  return ("process with pid %s not found"):format(
    tostring(type(selector) == "table" and selector.pid or 0))
end

-- on_process(handler) -> an RPC handler that answers not_found unless body.process selects a
-- process of the sandbox, and otherwise handler(p, body).
local function on_process(handler)
  return function(_self, sb, body)
    local p = select_process(sb, body.process)
    if not p then
      return rpc_error("not_found", selector_text(body.process))
    end
    return handler(p, body)
  end
end

local function config_json(p)
  return { cmd = p.cmd, args = json.array(copy(p.args)), envs = p.envs, cwd = p.cwd }
end

Fake.rpc_process = {
  SendInput = on_process(function(p, body)
    local input = type(body.input) == "table" and body.input or {}
    local b64 = input.stdin or input.pty
    if input.pty ~= nil or not p.stdin_open then
      return rpc_error("internal", "error writing to stdin: stdin not enabled or closed")
    end
    local data = util.base64_decode(type(b64) == "string" and b64 or "")
    if not data then
      return rpc_error("invalid_argument", "invalid base64 in input")
    end
    local ok, err = p.proc:write(data)
    if not ok then
      return rpc_error("internal", "error writing to stdin: " .. tostring(err))
    end
    return json_reply(200, {})
  end),
  CloseStdin = on_process(function(p)
    if p.stdin_open then
      p.stdin_open = false
      p.proc:close_stdin()
    end
    return json_reply(200, {})
  end),
  SendSignal = on_process(function(p, body)
    local sig = RPC_SIGNALS[body.signal]
    if not sig then
      return rpc_error("invalid_argument", "invalid signal: " .. tostring(body.signal))
    end
    p.proc:kill(sig) -- the whole group; an exited leader is no error
    return json_reply(200, {})
  end),
  List = function(_self, sb)
    local list = json.array()
    for _, pid in ipairs(sorted_keys(sb.processes)) do
      local p = sb.processes[pid]
      list[#list + 1] = { pid = pid, config = config_json(p), tag = p.tag }
    end
    return json_reply(200, { processes = list })
  end,
  Update = on_process(function()
    return rpc_error("failed_precondition", "process has no pty")
  end),
}

Fake.rpc_filesystem = {
  Remove = function(self, sb, body)
    local real, virtual, kind = map_path(sb, body.path or "")
    if not real then
      return rpc_error("invalid_argument", "error resolving path: " .. virtual)
    end
    if kind == "tmp" then
      if not fs.stat(real, false) then
        return rpc_error("not_found", ("file not found: %s"):format(virtual))
      end
      if self.tmp_files[real] ~= sb.id then
        return rpc_error("permission_denied", ("fake e2b: %s is not this sandbox's"):format(
          virtual))
      end
      os.remove(real)
      self.tmp_files[real] = nil
      return json_reply(200, {})
    end
    if real == sb.root then
      return rpc_error("permission_denied", "fake e2b: refusing to remove /")
    end
    local ok, err = check_no_links(sb.root, real:match("^(.*)/[^/]+$"))
    if not ok then
      return rpc_error("permission_denied", err)
    end
    local st = fs.stat(real, false)
    if not st then
      return rpc_error("not_found", ("file not found: %s"):format(virtual))
    end
    if st.type == "directory" then
      util.remove_tree(real)
    else
      os.remove(real)
    end
    return json_reply(200, {})
  end,
  MakeDir = function(_self, sb, body)
    local real, virtual, kind = map_path(sb, body.path or "")
    if not real or kind ~= "root" then
      return rpc_error("invalid_argument", "error resolving path: " .. tostring(virtual))
    end
    local ok, err = check_no_links(sb.root, real)
    if not ok then
      return rpc_error("permission_denied", err)
    end
    local st = fs.stat(real, false)
    if st then
      if st.type == "directory" then
        return rpc_error("already_exists", ("directory already exists: %s"):format(virtual))
      end
      return rpc_error("invalid_argument", ("path already exists: %s"):format(virtual))
    end
    ok, err = mkdir_p(sb.root, real)
    if not ok then
      return rpc_error("internal", "error creating directory: " .. tostring(err))
    end
    return json_reply(200, { entry = { name = virtual:match("([^/]*)$"),
      type = "FILE_TYPE_DIRECTORY", path = virtual } })
  end,
}

-- envd: process streams (Start, Connect) --------------------------------------------------------

-- Back-pressure as envd's: once a stream holds BUFFERED_CHUNKS unsent chunks, the process's
-- output is no longer read (it blocks on a full pipe) until every stream is below that again.
local function full(p)
  for _, sub in ipairs(p.subs) do
    if sub.tail - sub.head + 1 >= M.BUFFERED_CHUNKS then
      return true
    end
  end
  return false
end

local function hold(p)
  if not p.held and p.proc and not p.exited and full(p) then
    p.held = true
    p.proc:pause_output()
  end
end

local function release(p)
  if p.held and not full(p) then
    p.held = false
    p.proc:resume_output()
  end
end

-- Send an item to every stream attached to the process.
local function broadcast(p, item)
  for _, sub in ipairs(p.subs) do
    sub.tail = sub.tail + 1
    sub.queue[sub.tail] = item
    sub.signal:notify()
  end
  if item.kind ~= "end" then
    hold(p)
  end
end

local function subscribe(p)
  local sub = { queue = {}, head = 1, tail = 0, signal = new_signal() }
  p.subs[#p.subs + 1] = sub
  return sub
end

local function unsubscribe(p, sub)
  for i, s in ipairs(p.subs) do
    if s == sub then
      table.remove(p.subs, i)
      break
    end
  end
  release(p)
end

-- The end event for a host.proc result, as envd (Go's exec.Cmd) fills it.
local function end_event(r)
  if r.exit_code ~= nil then
    local status = "exit status " .. r.exit_code
    if r.exit_code == 0 then
      return { exited = true, status = status }
    end
    return { exitCode = r.exit_code, exited = true, status = status, error = status }
  end
  local sig = r.signal or "SIGKILL"
  local status = "signal: " .. (SIGNAL_TEXT[sig] or sig:lower())
  return { exitCode = -1, exited = false, status = status, error = status }
end

-- Basic auth user of a Start ("Basic base64(user:)"), or nil.
local function basic_user(req)
  local b64 = (req.headers["authorization"] or ""):match("^[Bb]asic%s+(%S+)")
  local plain = b64 and util.base64_decode(b64)
  return plain and plain:match("^([^:]*)")
end

-- Start a command as a real process: p | nil, connect code, message.
function Fake:_start_process(sb, msg, req, deadline_ms)
  local cfg = msg.process
  if type(cfg) ~= "table" or type(cfg.cmd) ~= "string" or cfg.cmd == "" then
    return nil, "invalid_argument", "process.cmd is required"
  end
  local args = {}
  for i, a in ipairs(type(cfg.args) == "table" and cfg.args or {}) do
    if type(a) ~= "string" then
      return nil, "invalid_argument", "process.args must be strings"
    end
    args[i] = a
  end
  if not is_string_map(cfg.envs) then
    return nil, "invalid_argument", "process.envs must map strings to strings"
  end
  local user = basic_user(req) or "user"
  local home, home_v = sb.home, "/home/user"
  if user == "root" then
    home, home_v = sb.root .. "/root", "/root"
    fs.mkdir(home, tonumber("700", 8))
  end
  local cwd = home
  if cfg.cwd ~= nil and cfg.cwd ~= "" then
    local path = tostring(cfg.cwd)
    if path == "~" or path:sub(1, 2) == "~/" then
      path = home_v .. path:sub(2)
    end
    local real = map_path(sb, path, true)
    local st = real and fs.stat(real)
    if not st or st.type ~= "directory" then
      return nil, "invalid_argument", ("cwd '%s' does not exist"):format(cfg.cwd)
    end
    cwd = real
  end
  local env = {
    PATH = ENVD_PATH .. ":" .. (os.getenv("PATH") or ""),
    HOME = home,
    USER = user,
    LOGNAME = user,
    E2B_SANDBOX = "true",
    E2B_SANDBOX_ID = sb.id, -- also how the fake finds the processes a command left behind
    E2B_TEAM_ID = self.team_id,
    E2B_TEMPLATE_ID = sb.template,
  }
  env = helpers.merged(env, sb.env_vars, cfg.envs)
  env.E2B_SANDBOX_ID = sb.id
  local argv = { cfg.cmd }
  for _, a in ipairs(args) do
    argv[#argv + 1] = a
  end
  -- envd keeps a stdin pipe unless stdin is false: absent (old clients) means open, as there
  local stdin = msg.stdin ~= false
  local p = { sandbox_id = sb.id, cmd = cfg.cmd, args = args, envs = cfg.envs or {},
    cwd = cfg.cwd, tag = msg.tag, user = user, subs = {}, stdin_open = stdin }
  local function on_output(stream)
    return function(chunk)
      for i = 1, #chunk, M.DATA_CHUNK do
        broadcast(p, { kind = stream, data = chunk:sub(i, i + M.DATA_CHUNK - 1) })
      end
    end
  end
  local child, err = proc.spawn({
    argv = argv,
    env = env,
    cwd = cwd,
    stdin = stdin or nil,
    timeout = M.PROCESS_TIMEOUT,
    keep_output = false, -- envd streams output and keeps none: a duplex may move gigabytes
    on_stdout = on_output("stdout"),
    on_stderr = on_output("stderr"),
  })
  if not child then
    return nil, "internal", "error starting process: " .. tostring(err)
  end
  p.proc, p.pid = child, child.pid
  sb.processes[p.pid] = p
  local record = { sandbox_id = sb.id, pid = p.pid, cmd = p.cmd, args = args, envs = p.envs,
    cwd = cfg.cwd, real_cwd = cwd, user = user, stdin = stdin, tag = msg.tag,
    timeout_ms = deadline_ms }
  self.commands[#self.commands + 1] = record
  p.record = record
  if deadline_ms then -- envd runs the process under the request's deadline: SIGKILL then
    p.deadline = self:_spawn(function()
      if task.sleep(deadline_ms / 1000) and not p.exited then
        p.deadline_hit = true
        sweep({ [p.pid] = true })
      end
    end)
  end
  self:_spawn(function()
    local r = child:wait()
    if not r then -- canceled (the fake stopped): make sure it is gone
      child:kill("SIGKILL")
      r = child:wait(5) or { signal = "SIGKILL" }
    end
    p.exited, p.result = true, r
    record.exit_code, record.signal = r.exit_code, r.signal
    record.deadline_exceeded = p.deadline_hit
    if p.deadline and not p.deadline:done() then
      p.deadline:cancel()
    end
    if sb.processes[p.pid] == p then
      sb.processes[p.pid] = nil
    end
    broadcast(p, { kind = "end", result = r })
  end)
  return p
end

-- Stream a process's events to one client until the end, the deadline, or the client leaves.
-- o: deadline (monotonic seconds or nil), keepalive (seconds or nil), start (the Start call:
-- the deadline is the process's), fault.
function Fake:_pump(p, sub, res, o)
  local fault = o.fault or {}
  local last = task.now()
  local function send(flags, value)
    last = task.now()
    local ok = res:write(envelope(flags, value))
    if not ok then
      unsubscribe(p, sub)
    end
    return ok
  end
  local function deadline_exceeded()
    unsubscribe(p, sub)
    send(2, { error = { code = "deadline_exceeded", message = "context deadline exceeded" } })
  end
  while true do
    if self.stopped then
      unsubscribe(p, sub)
      return
    end
    while sub.head <= sub.tail and not sub.cut do
      local item = sub.queue[sub.head]
      sub.queue[sub.head] = nil
      sub.head = sub.head + 1
      release(p)
      if item.kind == "end" then
        unsubscribe(p, sub)
        if o.start and p.deadline_hit then
          return send(2, { error = { code = "deadline_exceeded",
            message = "context deadline exceeded" } })
        end
        if fault.truncate == true then
          return -- no end event, no end of stream: a clean EOF the client cannot accept
        end
        if fault.truncate ~= "end" and not send(0, { event = { ["end"] = end_event(item.result) } })
        then
          return
        end
        return send(2, {})
      end
      if not send(0, { event = { data = { [item.kind] = util.base64_encode(item.data) } } }) then
        return
      end
    end
    if sub.cut then
      unsubscribe(p, sub)
      error("fake e2b: sandbox " .. p.sandbox_id .. " stopped: its process stream is cut "
        .. "(expected, as with the real service)", 0)
    end
    local now = task.now()
    if o.deadline and now >= o.deadline then
      return deadline_exceeded()
    end
    local wait = 1
    if o.deadline then
      wait = math.min(wait, o.deadline - now)
    end
    if o.keepalive then
      local due = last + o.keepalive - now
      if due <= 0 then
        if not send(0, { event = { keepalive = {} } }) then
          return
        end
        due = o.keepalive
      end
      wait = math.min(wait, due)
    end
    if sub.signal:wait(math.max(wait, 0)) == nil then
      unsubscribe(p, sub)
      return -- this handler was canceled
    end
  end
end

function Fake:_stream(sb, req, res, entry, method, fault)
  local ctype = (req.headers["content-type"] or ""):lower()
  if not ctype:find("^application/connect%+json") then
    return 415, { ["content-type"] = "text/plain" }, "unsupported content type\n"
  end
  local body = req.body or ""
  local function fail_stream(code, message)
    entry.status = 200
    return 200, { ["content-type"] = STREAM_TYPE },
      envelope(2, { error = { code = code, message = message } })
  end
  if #body < 5 then
    return fail_stream("invalid_argument", "protocol error: incomplete envelope")
  end
  local flags, len = string.unpack(">BI4", body)
  if flags ~= 0 or #body ~= 5 + len then
    return fail_stream("invalid_argument", "protocol error: bad request envelope")
  end
  local msg = json.decode(body:sub(6))
  if type(msg) ~= "table" then
    return fail_stream("invalid_argument", "unmarshal message: invalid JSON")
  end
  local tms = tonumber(req.headers["connect-timeout-ms"] or "")
  local deadline_ms = tms and tms > 0 and math.floor(tms) or nil
  local keepalive = tonumber(req.headers["keepalive-ping-interval"] or "")
  keepalive = keepalive and keepalive > 0 and keepalive or nil
  local started = task.now()
  local p, sub
  if method == "Start" then
    local code, message
    p, code, message = self:_start_process(sb, msg, req, deadline_ms)
    if not p then
      return fail_stream(code, message)
    end
  else
    local selector = type(msg.process) == "table" and msg.process or nil
    p = select_process(sb, selector)
    if not p then
      return fail_stream("not_found", selector_text(selector))
    end
  end
  sub = subscribe(p)
  entry.status = 200
  fault = fault or {}
  local headers = { ["content-type"] = STREAM_TYPE }
  if fault.drop then
    headers["content-length"] = tostring(1 << 40) -- returning early then cuts the connection
  end
  if not res:start(200, headers) then
    unsubscribe(p, sub)
    return
  end
  if not res:write(envelope(0, { event = { start = { pid = p.pid } } })) then
    unsubscribe(p, sub)
    return
  end
  if fault.drop then
    unsubscribe(p, sub)
    return
  end
  self:_pump(p, sub, res, {
    deadline = deadline_ms and started + deadline_ms / 1000 or nil,
    keepalive = keepalive,
    start = method == "Start",
    fault = fault,
  })
end

return M
