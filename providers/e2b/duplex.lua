-- providers/e2b/duplex.lua: a duplex execution on envd (the provider contract's hooks.duplex):
-- process.Process/Start with stdin kept open, its output handed to on_stdout / on_stderr as it
-- arrives (nothing kept), its stdin written with SendInput (one request in flight, in call
-- order), CloseStdin for EOF, and SendSignal to end it (../shared/reference/e2b-wire.md 3.5).
--
-- Duplex: pid, and
--   :write(data) -> true | nil, message, code   yields until envd took the bytes
--   :close_stdin() -> true | nil, message, code EOF once every earlier write is in; idempotent
--   :wait([timeout]) -> {exit_code, signal} | nil, message, code ("timeout", "canceled",
--                       "closed" when the stream was lost or the duplex closed)
--   :close() -> true | nil, message, code        SIGTERM, then SIGKILL, then the stream goes;
--                                                idempotent; also __close; no callback after it
--   :pause_output() -> true    back-pressure: no on_stdout / on_stderr call after it until
--                              resume_output (callable inside the callbacks: what an envd event
--                              still carries for a callback then waits). The reader stops reading
--                              the stream meanwhile, so the stream's own bounded buffer (host.http
--                              pauses the transfer) is the only one. Idempotent
--   :resume_output() -> true   delivery restarts, in order. Idempotent
-- The end never overtakes the output: wait() reports the exit only once every byte before it
-- was delivered (never while paused). Paused past the duplex's deadline, wait() fails "timeout".
-- Once the stream is lost, writes fail with its error: output could no longer be read.
local api = require("providers.e2b.api")
local envd = require("providers.e2b.envd")
local json = require("host.json")
local log = require("host.log")
local task = require("host.task")
local util = require("host.util")

local M = {}

--- settings: knobs for specs.
M.settings = {
  max_input = 1024 * 1024, -- bytes per SendInput (its JSON carries them as base64)
  close_grace = 2, -- seconds close waits for the command to go after each signal
  close_timeout = 10, -- seconds close may spend on requests (its own budget)
}

local MAX_ENVELOPE = 16 * 1024 * 1024

-- Go's words for the signals that end a process ("signal: killed"), back to their names.
local SIGNAL_NAMES = {
  killed = "SIGKILL", terminated = "SIGTERM", interrupt = "SIGINT", hangup = "SIGHUP",
  quit = "SIGQUIT", ["broken pipe"] = "SIGPIPE", aborted = "SIGABRT",
  ["segmentation fault"] = "SIGSEGV", ["user defined signal 1"] = "SIGUSR1",
  ["user defined signal 2"] = "SIGUSR2", ["alarm clock"] = "SIGALRM", ["bus error"] = "SIGBUS",
  ["floating point exception"] = "SIGFPE", ["illegal instruction"] = "SIGILL",
}

local Duplex = { __name = "providers.e2b.Duplex" }
Duplex.__index = Duplex

local function describe(d)
  if not d.pid then
    return "the duplex command in sandbox " .. d.sbx.id
  end
  return ("the duplex command (pid %d) in sandbox %s"):format(d.pid, d.sbx.id)
end

-- The first protocol failure of the stream wins; it ends the reading.
local function bad(d, message)
  d.bad = d.bad or ("E2B envd stream of sandbox %s: %s"):format(d.sbx.id, message)
end

-- Output for a callback, queued in d.pending until it is delivered (see drain).
local function deliver(d, fn, name, b64)
  local bytes = util.base64_decode(b64)
  if not bytes then
    return bad(d, "undecodable output")
  end
  if bytes ~= "" and fn then
    local q = d.pending
    q.tail = q.tail + 1
    q[q.tail] = { fn, name, bytes }
  end
end

-- Hands the queued output to its callbacks (which may not yield; their errors are only logged)
-- in order, until a pause; after close() it is dropped. True when nothing is left.
local function drain(d)
  local q = d.pending
  while q.head <= q.tail do
    if d.closed then
      d.pending = { head = 1, tail = 0 }
      return true
    elseif d.paused then
      return false
    end
    local item = q[q.head]
    q[q.head] = nil
    q.head = q.head + 1
    local ok, err = pcall(item[1], item[3])
    if not ok then
      log.warn("E2B duplex: the %s callback failed: %s", item[2], tostring(err))
    end
  end
  return true
end

-- One process event: start (the pid), output, end (the exit), keepalive or empty.
local function event(d, ev)
  if not d.pid then
    if type(ev.start) ~= "table" or not math.tointeger(ev.start.pid) then
      return bad(d, "the stream did not begin with a start event")
    end
    d.pid = math.tointeger(ev.start.pid)
    return
  end
  if type(ev.data) == "table" then
    if type(ev.data.stdout) == "string" then
      deliver(d, d.on_stdout, "on_stdout", ev.data.stdout)
    end
    if type(ev.data.stderr) == "string" then
      deliver(d, d.on_stderr, "on_stderr", ev.data.stderr)
    end
  elseif type(ev["end"]) == "table" then
    d.exit = ev["end"]
  end
end

local function message(d, flags, text)
  local msg = json.decode(text)
  if type(msg) ~= "table" then
    return bad(d, "an unreadable stream message")
  end
  if flags & 2 == 2 then -- end of stream: {} or {"error": {code, message}}
    d.finished = true
    if type(msg.error) == "table" then
      d.stream_error = msg.error
    end
    return
  end
  return event(d, type(msg.event) == "table" and msg.event or {})
end

-- Decodes every complete envelope of d.buf .. chunk, until the stream finished or went bad,
-- delivering the output of each before the next is decoded; paused, the rest waits in d.buf.
local function feed(d, chunk)
  local buf = d.buf == "" and chunk or d.buf .. chunk
  local pos = 1
  while drain(d) and #buf - pos + 1 >= 5 and not d.finished and not d.bad do
    local flags, size = string.unpack(">BI4", buf, pos)
    if size > MAX_ENVELOPE then
      return bad(d, "an oversized stream message")
    elseif #buf - pos + 1 < 5 + size then
      break
    elseif flags & 1 == 1 then
      return bad(d, "a compressed stream message")
    end
    local text = buf:sub(pos + 5, pos + 4 + size)
    pos = pos + 5 + size
    message(d, flags, text)
  end
  d.buf = pos > #buf and "" or buf:sub(pos)
end

-- The end-of-stream error as (message, kind): envd's deadline is a timeout.
local function stream_failure(d)
  local e = d.stream_error
  local code = tostring(e.code or "unknown")
  local text = type(e.message) == "string" and api.redact(d.conn, e.message:sub(1, 500)) or ""
  local msg = ("E2B envd ended %s: [%s] %s"):format(describe(d), code, text)
  if code == "deadline_exceeded" then
    return msg, "timeout"
  elseif code == "unavailable" then
    return msg, d.pid and "closed" or "unavailable"
  elseif code == "unauthenticated" then
    return msg, "auth"
  end
  return msg, "upstream"
end

-- The exit of an end event: {exit_code = n} or {signal = "SIGKILL"} (exitCode -1, not exited).
local function exit_of(e)
  if e.exited == false or (math.tointeger(e.exitCode) or 0) < 0 then
    local word = type(e.status) == "string" and e.status:match("^signal: (.+)$")
    return { signal = word and (SIGNAL_NAMES[word] or word) or "SIGKILL" }
  end
  return { exit_code = math.tointeger(e.exitCode) or 0 }
end

-- A read failed: the stream is lost (or the duplex was closed, or its deadline passed).
local function lost(d, err, code)
  if d.closed then
    return nil, ("E2B %s was closed"):format(describe(d)), "closed"
  elseif code == "canceled" then
    return nil, ("E2B: reading %s was canceled"):format(describe(d)), "canceled"
  elseif code == "timeout" and not (err or ""):find("stalled", 1, true) then
    return nil, ("E2B %s outlived the duplex's deadline"):format(describe(d)), "timeout"
  end
  local why = code == "timeout"
      and ("no data for %gs (envd sends keepalives, so the connection is dead)"):format(
        api.settings.stream_stall)
    or api.redact(d.conn, err)
  return nil, ("E2B envd connection to sandbox %s was lost while reading %s: %s"):format(
    d.sbx.id, describe(d), why), "closed"
end

-- The reader task: follows the stream to its end; its results are wait()'s. Paused, it parks
-- on d.wake (resume_output and close notify it) and reads nothing.
local function follow(d)
  local res
  while not d.finished and not d.bad do
    local left = d.deadline - task.now()
    local chunk, err, code
    if left <= 0 then
      err, code = "deadline", "timeout"
    elseif d.paused and not d.closed then
      local ok, werr, wcode = d.wake:wait(left)
      if ok == nil and wcode ~= "timeout" then
        err, code = werr, wcode
      else
        chunk = "" -- once resumed, what waited goes out first
      end
    else
      chunk, err, code = d.stream:read(left)
    end
    if chunk then
      feed(d, chunk)
    elseif err == nil then -- the end of the body: an end event without end-of-stream will do
      if not d.exit then
        res = table.pack(nil, ("E2B envd stream of sandbox %s ended before %s did"):format(
          d.sbx.id, describe(d)), "closed")
      end
      break
    else
      res = table.pack(lost(d, err, code))
      break
    end
  end
  d.stream:close()
  if res then
    return table.unpack(res, 1, res.n)
  elseif d.bad then
    return nil, d.bad, "protocol"
  elseif d.stream_error then
    return nil, stream_failure(d)
  elseif not d.exit then
    return nil, ("E2B envd stream of sandbox %s ended without the result of %s"):format(
      d.sbx.id, describe(d)), "closed"
  end
  d.exited = true
  return exit_of(d.exit)
end

-- Runs fn after every stdin operation queued before it (a chain of tasks: one request in
-- flight, in call order). Returns its task.
local function enqueue(d, fn)
  local prev = d.tail
  local t = task.spawn(function()
    if prev and not prev:done() then
      prev:wait()
    end
    return fn()
  end)
  d.tail = t
  return t
end

-- enqueue, then wait for it. A caller canceled meanwhile abandons the operation, which breaks
-- the stdin: later bytes could not keep their order.
local function queued(d, fn)
  local t = enqueue(d, fn)
  local res = table.pack(t:wait())
  if res[1] == nil and not t:done() then
    d.broken = d.broken or { ("E2B: a write to %s was abandoned midway"):format(describe(d)),
      "canceled" }
    t:cancel()
  end
  return table.unpack(res, 1, res.n)
end

-- Why the stdin cannot be written (message, code): closed, broken by an earlier failure, or
-- the reading ended; nil when it can.
local function unwritable(d)
  if d.closed then
    return ("E2B %s was closed"):format(describe(d)), "closed"
  elseif d.broken then
    return d.broken[1], d.broken[2]
  elseif d.reader:done() then
    local res = table.pack(d.reader:wait())
    if res[1] == nil then
      return res[2], res[3] == "timeout" and "timeout" or "closed"
    end
    return ("E2B %s has exited"):format(describe(d)), "closed"
  end
end

-- A failed stdin request: the stdin is broken from now on (a later write would reorder).
local function stdin_failed(d, err, kind)
  local code = (kind == "not_found" or kind == "unavailable") and "closed" or kind
  d.broken = d.broken or { err, code }
  return nil, err, code
end

local function send(d, data)
  local why, code = unwritable(d)
  if why then
    return nil, why, code
  end
  local step = M.settings.max_input
  for i = 1, #data, step do
    local piece = #data <= step and data or data:sub(i, i + step - 1)
    local ok, uerr, kind = envd.unary(d.conn, d.sbx, "process.Process/SendInput", {
      process = { pid = d.pid },
      input = { stdin = util.base64_encode(piece) },
    }, "write to the stdin of " .. describe(d))
    if ok == nil then
      return stdin_failed(d, uerr, kind)
    end
  end
  return true
end

--- duplex:write(data) -> true | nil, message, code
function Duplex:write(data)
  if type(data) ~= "string" then
    error(("bad argument #1 to 'write' (string expected, got %s)"):format(type(data)), 2)
  end
  if self.closed then
    return nil, ("E2B %s was closed"):format(describe(self)), "closed"
  elseif self.stdin_closed then
    return nil, ("E2B: the stdin of %s is closed"):format(describe(self)), "closed"
  elseif data == "" then
    return true
  end
  return queued(self, function()
    return send(self, data)
  end)
end

--- duplex:close_stdin() -> true | nil, message, code
function Duplex:close_stdin()
  if self.stdin_closed or self.closed then
    return true
  end
  local version = self.sbx.envd_version or "0.0.0"
  if api.version_less(version, "0.5.2") then -- CloseStdin came with envd 0.5.2 (as the SDK says)
    return nil, ("E2B envd %s of sandbox %s cannot close a command's stdin (envd 0.5.2 or later "
      .. "can): rebuild the template with a current E2B CLI"):format(version, self.sbx.id),
      "unsupported"
  end
  self.stdin_closed = true
  return queued(self, function()
    if self.closed or self.reader:done() then
      return true -- it is gone (or cannot be reached): EOF is moot
    end
    local ok, err, kind = envd.unary(self.conn, self.sbx, "process.Process/CloseStdin",
      { process = { pid = self.pid } }, "close the stdin of " .. describe(self))
    if ok == nil and kind ~= "not_found" then
      return stdin_failed(self, err, kind)
    end
    return true
  end)
end

--- duplex:pause_output() -> true
function Duplex:pause_output()
  self.paused = true
  return true
end

--- duplex:resume_output() -> true
function Duplex:resume_output()
  if self.paused then
    self.paused = false
    self.wake:notify()
  end
  return true
end

--- duplex:wait([timeout]) -> {exit_code, signal} | nil, message, code
function Duplex:wait(timeout)
  local res = table.pack(self.reader:wait(timeout))
  if res[1] == nil and res[3] == "timeout" and not self.reader:done() then
    return nil, ("E2B %s still runs after %gs"):format(describe(self), timeout), "timeout"
  end
  return table.unpack(res, 1, res.n)
end

-- SendSignal with close's own budget; a process already gone is no error.
local function signal(d, conn, name)
  local ok, err, kind = envd.unary(conn, d.sbx, "process.Process/SendSignal",
    { process = { pid = d.pid }, signal = name }, "stop " .. describe(d))
  if ok == nil and kind ~= "not_found" then
    return nil, err, kind
  end
  return true
end

--- duplex:close() -> true | nil, message, code: the command is ended (SIGTERM; SIGKILL when it
-- is still there after close_grace, or when the stream is lost and nothing would show it
-- went), pending writes abandoned, the stream closed. Never waits past close_timeout plus
-- twice close_grace.
function Duplex:close()
  if self.closed then
    return true
  end
  self.closed = true
  self.wake:notify() -- a paused reader goes on, dropping the output, to see the command go
  local settings = M.settings
  local conn = setmetatable({ deadline = task.now() + settings.close_timeout },
    { __index = self.conn })
  if self.tail and not self.tail:done() then
    self.tail:cancel()
  end
  local ok, err, kind = true, nil, nil
  if not self.reader:done() then
    ok, err, kind = signal(self, conn, "SIGNAL_SIGTERM")
    self.reader:wait(settings.close_grace)
  end
  if not self.exited then -- still running, or lost from sight
    local kok, kerr, kkind = signal(self, conn, "SIGNAL_SIGKILL")
    if not self.reader:done() then
      self.reader:wait(settings.close_grace)
    end
    ok, err, kind = kok, kerr or err, kkind or kind
  end
  if not self.reader:done() then
    self.reader:cancel()
    self.reader:wait(1)
  end
  self.stream:close()
  if not ok then
    log.debug("E2B: could not stop %s: %s", describe(self), err)
    return nil, err, kind
  end
  return true
end

Duplex.__close = Duplex.close

-- open's failure after the start event: the command goes (best effort), and partial.started
-- tells with_sandbox not to start it again.
local function abandon(d, err, kind)
  d:close()
  return nil, err, kind, { started = true }
end

--- open(conn, sbx, opts) -> Duplex | nil, message, kind, partial
-- opts: script (run by `bash -l -c`), cwd, life (seconds the command may run: envd kills it
-- then), stdin_prefix (written before anything else: the env), on_stdout, on_stderr, what.
-- Returns once envd reported the start (and the prefix was written). partial.started: the
-- command did start.
function M.open(conn, sbx, opts)
  local life = opts.life
  -- its requests may run until a little after envd's own deadline for the command
  local dconn = setmetatable({ deadline = task.now() + life + api.settings.stream_grace + 1 },
    { __index = conn })
  local stream, deadline, kind = envd.open(dconn, sbx, {
    script = opts.script,
    cwd = opts.cwd,
    stdin = true,
    timeout_ms = math.floor(life * 1000),
    what = opts.what,
  })
  if not stream then
    return nil, deadline, kind
  end
  local d = setmetatable({
    conn = dconn,
    sbx = sbx,
    stream = stream,
    deadline = deadline,
    buf = "",
    pending = { head = 1, tail = 0 }, -- output decoded, not delivered yet (paused)
    wake = task.signal(),
    on_stdout = opts.on_stdout,
    on_stderr = opts.on_stderr,
  }, Duplex)
  local handshake = task.now() + api.seconds(dconn)
  while not d.pid and not d.bad and not d.finished do
    local left = math.min(handshake, deadline) - task.now()
    if left <= 0 then
      stream:close()
      return nil, ("E2B envd did not start the duplex command in sandbox %s in time"):format(
        sbx.id), "timeout"
    end
    local chunk, err, code = stream:read(left)
    if chunk then
      feed(d, chunk)
    elseif err == nil then
      break
    else
      stream:close()
      return lost(d, err, code)
    end
  end
  if not d.pid then
    stream:close()
    if d.stream_error then
      return nil, stream_failure(d)
    end
    return nil, d.bad or ("E2B envd stream of sandbox %s ended without starting the duplex "
      .. "command"):format(sbx.id), "protocol"
  end
  d.reader = task.spawn(follow, d)
  if opts.stdin_prefix then
    local ok, err, wkind = d:write(opts.stdin_prefix)
    if not ok then
      return abandon(d, err, wkind)
    end
  end
  return d
end

M.Duplex = Duplex
return M
