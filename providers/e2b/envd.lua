-- providers/e2b/envd.lua: envd, the daemon in every E2B sandbox, spoken directly: Connect-RPC
-- with the JSON codec (process.Process/Start as a server stream, unary calls) and the files
-- upload endpoint (../shared/reference/e2b-wire.md section 3).
--
-- A sandbox here is {id, token, domain, envd_version} (an api.lua cache entry). Failures
-- return nil, message, kind with kind "unavailable" (the gateway does not reach the sandbox:
-- gone or paused), "auth" (the access token was refused), "timeout", "closed", "protocol",
-- "upstream", or a host.http transport code.
local api = require("providers.e2b.api")
local http = require("host.http")
local json = require("host.json")
local task = require("host.task")
local util = require("host.util")

local M = {}

local PORT = "49983"
local SHARED = { ["e2b.app"] = true, ["e2b.dev"] = true, ["e2b.pro"] = true }
SHARED["e2b-staging.dev"] = true
local MAX_ENVELOPE = 16 * 1024 * 1024
local STREAM_TYPE = "application/connect+json"

--- base_url(conn, sbx) -> the envd base URL: E2B_SANDBOX_URL when set, the shared sandbox
-- host for E2B's own domains (routed by headers, as the SDK does), else 49983-<id>.<domain>.
function M.base_url(conn, sbx)
  if conn.sandbox_url then
    return conn.sandbox_url
  end
  local domain = sbx.domain or conn.domain
  if SHARED[domain] then
    return "https://sandbox." .. domain
  end
  return ("https://%s-%s.%s"):format(PORT, sbx.id, domain)
end

local function headers(sbx, extra)
  local h = {
    ["E2b-Sandbox-Id"] = sbx.id,
    ["E2b-Sandbox-Port"] = PORT,
  }
  if sbx.token then
    h["X-Access-Token"] = sbx.token
  end
  for k, v in pairs(extra or {}) do
    h[k] = v
  end
  return h
end

-- envd before 0.4.0 runs commands as nobody unless a user is named: name the default, "user".
local function old_envd(sbx)
  return api.version_less(sbx.envd_version or "0.0.0", "0.4.0")
end

local function envelope(flags, payload)
  return string.pack(">BI4", flags, #payload) .. payload
end

-- A non-2xx envd answer as (message, kind). A 502 is the gateway's "sandbox not found".
local function status_error(conn, sbx, status, body, what)
  local msg = ""
  local decoded = body and body ~= "" and json.decode(body)
  if type(decoded) == "table" and type(decoded.message) == "string" then
    msg = ": " .. api.redact(conn, decoded.message:sub(1, 300))
  end
  if status == 502 then
    return ("E2B sandbox %s is not running (paused, killed or past its lifetime)%s"):format(
      sbx.id,
      msg
    ),
      "unavailable"
  elseif status == 401 then
    return ("E2B envd of sandbox %s refused its access token (HTTP 401)"):format(sbx.id), "auth"
  end
  return ("E2B envd error while trying to %s in sandbox %s: HTTP %d%s"):format(
    what,
    sbx.id,
    status,
    msg
  ),
    "upstream"
end

local function transport_error(conn, sbx, what, err, code, seconds)
  local why = code == "timeout" and seconds and ("no answer within %gs"):format(seconds)
    or api.redact(conn, err)
  return ("E2B envd request failed while trying to %s in sandbox %s: %s"):format(
    what,
    sbx.id,
    why
  ),
    code
end

--- unary(conn, sbx, method, message, what) -> decoded answer | nil, message, kind
-- A Connect unary call, e.g. "process.Process/SendSignal" or "filesystem.Filesystem/Remove".
function M.unary(conn, sbx, method, message, what)
  local left = api.seconds(conn)
  if left <= 0 then
    return nil, ("no time left to %s in sandbox %s"):format(what, sbx.id), "timeout"
  end
  local res, err, code = http.request({
    method = "POST",
    url = M.base_url(conn, sbx) .. "/" .. method,
    headers = headers(sbx, { ["Connect-Protocol-Version"] = "1" }),
    json = message,
    timeout = left,
    connect_timeout = math.min(api.settings.connect_timeout, left),
  })
  if not res then
    return nil, transport_error(conn, sbx, what, err, code, left)
  end
  if res.status ~= 200 then
    local decoded = json.decode(res.body or "")
    if type(decoded) == "table" and type(decoded.code) == "string" then
      local text = type(decoded.message) == "string" and decoded.message:sub(1, 300) or ""
      return nil,
        ("E2B envd error while trying to %s in sandbox %s: [%s] %s"):format(
          what,
          sbx.id,
          decoded.code,
          api.redact(conn, text)
        ),
        decoded.code == "not_found" and "not_found" or "upstream"
    end
    return nil, status_error(conn, sbx, res.status, res.body, what)
  end
  return res:json()
end

local function url_encode(s)
  return (s:gsub("[^A-Za-z0-9_.~/-]", function(c)
    return ("%%%02X"):format(c:byte())
  end))
end

--- upload(conn, sbx, path, data [, what]) -> true | nil, message, kind
-- POST /files?path=... with one multipart/form-data file, as the SDK writes a string. what
-- words messages (default "stage stdin").
function M.upload(conn, sbx, path, data, what)
  what = what or "stage stdin"
  local boundary
  repeat
    boundary = "paperclip-" .. util.hex(assert(util.random(12)))
  until not data:find(boundary, 1, true)
  local body = table.concat({
    "--",
    boundary,
    "\r\n",
    'Content-Disposition: form-data; name="file"; filename="',
    path,
    '"\r\n',
    "Content-Type: application/octet-stream\r\n\r\n",
    data,
    "\r\n--",
    boundary,
    "--\r\n",
  })
  local url = M.base_url(conn, sbx) .. "/files?path=" .. url_encode(path)
  if old_envd(sbx) then
    url = url .. "&username=user"
  end
  -- a large stdin may take a while to send: allow 1 s per MiB above the request timeout
  local left = api.seconds(conn, api.settings.request_timeout + #data / 1048576)
  if left <= 0 then
    return nil, ("no time left to %s in sandbox %s"):format(what, sbx.id), "timeout"
  end
  local res, err, code = http.request({
    method = "POST",
    url = url,
    headers = headers(sbx, { ["Content-Type"] = "multipart/form-data; boundary=" .. boundary }),
    body = body,
    timeout = left,
    connect_timeout = math.min(api.settings.connect_timeout, left),
  })
  if not res then
    return nil, transport_error(conn, sbx, what, err, code, left)
  end
  if res.status ~= 200 and res.status ~= 201 and res.status ~= 204 then
    return nil, status_error(conn, sbx, res.status, res.body, what)
  end
  return true
end

--- remove(conn, sbx, path) -> true | nil, message, kind (filesystem.Filesystem/Remove)
function M.remove(conn, sbx, path)
  local ok, err, kind = M.unary(conn, sbx, "filesystem.Filesystem/Remove", { path = path },
    "remove " .. path)
  if ok == nil then
    return nil, err, kind
  end
  return true
end

-- Reads the whole (small) body of a failed stream, for its error message.
local function drain(stream)
  local parts, size = {}, 0
  while size < 65536 do
    local chunk = stream:read(5)
    if not chunk then
      break
    end
    parts[#parts + 1] = chunk
    size = size + #chunk
  end
  stream:close()
  return table.concat(parts)
end

local function opener(opts)
  return function()
    return http.open(opts)
  end
end

-- The Process/Start request as (body, headers): `/bin/bash -l -c <script>` in one Connect
-- envelope, without stdin unless opts.stdin (then envd keeps a pipe open for SendInput), with
-- the command's deadline (none when opts.timeout_ms is nil or 0) and envd's keepalive interval.
local function start_request(sbx, opts)
  local process = { cmd = "/bin/bash", args = json.array({ "-l", "-c", opts.script }) }
  if opts.cwd ~= nil then
    process.cwd = opts.cwd
  end
  if opts.envs ~= nil and next(opts.envs) ~= nil then
    process.envs = opts.envs
  end
  local payload = assert(json.encode({ process = process, stdin = opts.stdin == true }))
  local extra = {
    ["Content-Type"] = STREAM_TYPE,
    ["Connect-Protocol-Version"] = "1",
    ["Keepalive-Ping-Interval"] = tostring(api.settings.keepalive),
  }
  if opts.timeout_ms and opts.timeout_ms > 0 then
    extra["Connect-Timeout-Ms"] = tostring(math.floor(opts.timeout_ms))
  end
  if old_envd(sbx) then
    extra.Authorization = "Basic " .. util.base64_encode("user:")
  end
  return envelope(0, payload), headers(sbx, extra)
end

-- When the client gives up: a little after the command's own deadline if envd has not ended
-- the stream by then; never past the hook's deadline.
local function client_deadline(conn, timeout_ms)
  local deadline = task.now() + timeout_ms / 1000 + api.settings.stream_grace
  if conn.deadline then
    deadline = math.min(deadline, conn.deadline - 1)
  end
  return deadline
end

-- open_stream(conn, sbx, what, body, hdrs, deadline) -> stream | nil, message, kind: the
-- Process/Start POST within the handshake budget, answered 200 with a Connect stream.
local function open_stream(conn, sbx, what, body, hdrs, deadline)
  local settings = api.settings
  local handshake = api.seconds(conn)
  if handshake <= 0 or deadline <= task.now() then
    return nil, ("no time left to %s in sandbox %s"):format(what, sbx.id), "timeout"
  end
  local stream, err, code = task.with_timeout(
    handshake,
    opener({
      method = "POST",
      url = M.base_url(conn, sbx) .. "/process.Process/Start",
      headers = hdrs,
      body = body,
      timeout = math.max(1, deadline - task.now() + 1),
      connect_timeout = math.min(settings.connect_timeout, handshake),
      stall_timeout = settings.stream_stall,
    })
  )
  if not stream then
    return nil, transport_error(conn, sbx, what, err, code, handshake)
  end
  local ctype = stream.headers and stream.headers["content-type"] or ""
  if stream.status ~= 200 or ctype:sub(1, #STREAM_TYPE) ~= STREAM_TYPE then
    local text = drain(stream)
    if stream.status == 200 then
      return nil,
        ("E2B envd answered %s in sandbox %s with an unexpected content type %q"):format(
          what,
          sbx.id,
          ctype
        ),
        "protocol"
    end
    return nil, status_error(conn, sbx, stream.status, text, what)
  end
  return stream
end

-- A followed stream's state: run.result is run's result under construction (kept counts the
-- bytes kept per stream), buf the bytes not yet decoded, ended whether the end event came,
-- finished whether the end-of-stream message came, failure the first {message, kind}.
local function new_run(conn, sbx, what, opts)
  return {
    conn = conn,
    sbx = sbx,
    what = what,
    opts = opts,
    max_output = opts.max_output or math.huge,
    result = {
      stdout = {},
      stderr = {},
      kept = { stdout = 0, stderr = 0 },
      exit_code = nil,
      started = false,
    },
    buf = "",
    ended = false,
    finished = false,
    failure = nil,
  }
end

-- Records a failure; the first one wins, and it stops the stream.
local function fail(run, message, kind)
  run.failure = run.failure or { message, kind }
end

-- The client's own deadline passed: a timeout result (no error). Returns false: stop reading.
local function client_timed_out(run)
  run.result.timed_out = true
  run.result.timeout_message = "[deadline_exceeded] the operation timed out"
  return false
end

-- Output bytes of stream name ("stdout" or "stderr"), base64 on the wire: kept up to
-- max_output bytes per stream (more sets truncated), and always passed live to on_output.
local function output(run, name, b64)
  local bytes = util.base64_decode(b64)
  if not bytes then
    return fail(run, "E2B envd sent undecodable output", "protocol")
  end
  if bytes == "" then
    return
  end
  local result, max_output = run.result, run.max_output
  local kept = result.kept[name]
  if kept < max_output then
    local piece = kept + #bytes > max_output and bytes:sub(1, max_output - kept) or bytes
    result[name][#result[name] + 1] = piece
    result.kept[name] = kept + #piece
    if #piece < #bytes then
      result.truncated = true
    end
  else
    result.truncated = true
  end
  if run.opts.on_output then
    run.opts.on_output(name, bytes)
  end
end

-- The end-of-stream message's error, if any ({code, message}): envd's own deadline is a
-- timeout result, anything else a failure.
local function end_of_stream(run, e)
  if type(e) ~= "table" then
    return
  end
  local result, sbx = run.result, run.sbx
  local ecode = tostring(e.code or "unknown")
  local emsg = type(e.message) == "string" and api.redact(run.conn, e.message:sub(1, 500)) or ""
  if ecode == "deadline_exceeded" then
    result.timed_out = true
    result.timeout_message = ("[deadline_exceeded] %s"):format(emsg)
  elseif ecode == "unavailable" and not result.started then
    fail(run, ("E2B sandbox %s is not running: [unavailable] %s"):format(sbx.id, emsg),
      "unavailable")
  else
    fail(
      run,
      ("E2B envd error while trying to %s in sandbox %s: [%s] %s"):format(
        run.what,
        sbx.id,
        ecode,
        emsg
      ),
      ecode == "unauthenticated" and "auth" or "upstream"
    )
  end
end

-- A process event: the first must be the start (pid, on_start); then output data and the
-- end (exit code, status, error). Keepalive and empty events carry nothing.
local function event(run, ev)
  local result = run.result
  if not result.started then
    if type(ev.start) ~= "table" then
      return fail(run, "E2B envd stream did not begin with a start event", "protocol")
    end
    result.started = true
    result.pid = math.tointeger(ev.start.pid)
    if run.opts.on_start then
      run.opts.on_start(result.pid)
    end
    return
  end
  if type(ev.data) == "table" then
    if type(ev.data.stdout) == "string" then
      output(run, "stdout", ev.data.stdout)
    end
    if type(ev.data.stderr) == "string" then
      output(run, "stderr", ev.data.stderr)
    end
  elseif type(ev["end"]) == "table" then
    local e = ev["end"]
    run.ended = true
    result.exit_code = math.tointeger(e.exitCode) or 0
    result.status = type(e.status) == "string" and e.status or nil
    result.error = type(e.error) == "string" and e.error or nil
  end
end

-- One stream message (JSON): the end-of-stream message (flag 2) or a process event.
local function message(run, flags, text)
  local msg = json.decode(text)
  if type(msg) ~= "table" then
    return fail(run, "E2B envd sent an unreadable stream message", "protocol")
  end
  if flags & 2 == 2 then -- end of stream: {} or {"error":{code, message}}
    run.finished = true
    return end_of_stream(run, msg.error)
  end
  return event(run, type(msg.event) == "table" and msg.event or {})
end

-- Hands every complete envelope in run.buf to message, until the stream finished or failed;
-- an oversized or compressed envelope is a protocol failure.
local function decode(run)
  while #run.buf >= 5 and not run.failure and not run.finished do
    local flags, size = string.unpack(">BI4", run.buf)
    if size > MAX_ENVELOPE then
      return fail(run, "E2B envd sent an oversized stream message", "protocol")
    end
    if #run.buf < 5 + size then
      return
    end
    if flags & 1 == 1 then
      return fail(run, "E2B envd sent a compressed stream message", "protocol")
    end
    local text = run.buf:sub(6, 5 + size)
    run.buf = run.buf:sub(6 + size)
    message(run, flags, text)
  end
end

-- A read that failed before the client's deadline: the connection is lost.
local function lost(run, err, code)
  local why = api.redact(run.conn, err)
  if code == "timeout" then
    why = ("no data for %gs (envd sends keepalives, so the connection is dead)"):format(
      api.settings.stream_stall
    )
  end
  fail(
    run,
    ("E2B envd connection to sandbox %s was lost while trying to %s: %s"):format(
      run.sbx.id,
      run.what,
      why
    ),
    code == "canceled" and "canceled" or "closed"
  )
end

-- read_more(run, stream, deadline) -> true when bytes were added to run.buf; false when the
-- reading is over: the body's end, the client's deadline (timed_out) or a lost connection.
local function read_more(run, stream, deadline)
  local left = deadline - task.now()
  if left <= 0 then
    return client_timed_out(run)
  end
  local chunk, err, code = stream:read(left)
  if chunk then
    run.buf = run.buf .. chunk
    return true
  elseif err == nil then -- end of body
    if not run.ended then
      fail(
        run,
        ("E2B envd stream of sandbox %s ended before the command finished (truncated "
          .. "stream: no end event)"):format(run.sbx.id),
        "closed"
      )
    end
    return false -- an end event without the end-of-stream message: the result is complete
  elseif code == "timeout"
    and not (err or ""):find("stalled", 1, true)
    and task.now() >= deadline - 0.05
  then
    return client_timed_out(run) -- envd never ended the stream: the client's own deadline
  end
  lost(run, err, code)
  return false
end

-- outcome(run) -> result | nil, message, kind, result: the followed stream's answer; a stream
-- that neither timed out nor ended properly is an error that still carries the result.
local function outcome(run)
  local result, sbx = run.result, run.sbx
  result.stdout = table.concat(result.stdout)
  result.stderr = table.concat(result.stderr)
  result.kept = nil
  if run.failure then
    return nil, run.failure[1], run.failure[2], result
  end
  if not result.started and not result.timed_out then
    return nil, ("E2B envd stream of sandbox %s ended without starting the command"):format(
      sbx.id
    ),
      "protocol",
      result
  end
  if not run.ended and not result.timed_out then
    return nil, ("E2B envd stream of sandbox %s ended without the command's result"):format(
      sbx.id
    ),
      "closed",
      result
  end
  return result
end

--- open(conn, sbx, opts) -> stream, deadline | nil, message, kind
-- Starts `/bin/bash -l -c <opts.script>` with process.Process/Start (opts as for run, plus
-- stdin = true to keep its stdin open for SendInput) and returns the Connect stream once envd
-- answered 200, for the caller to read and decode (a duplex); deadline is when the client
-- gives up on it (task.now() seconds).
function M.open(conn, sbx, opts)
  local body, hdrs = start_request(sbx, opts)
  local deadline = client_deadline(conn, opts.timeout_ms)
  local stream, err, kind = open_stream(conn, sbx, opts.what or "run a command", body, hdrs,
    deadline)
  if not stream then
    return nil, err, kind
  end
  return stream, deadline
end

--- run(conn, sbx, opts) -> result | nil, message, kind
-- Starts `/bin/bash -l -c <opts.script>` (the SDK's command form) with process.Process/Start
-- and follows its stream. opts:
--   script, cwd       the command and its working directory (nil: envd's default, the home)
--   envs              variables added to the process's environment (never on its command line)
--   timeout_ms        the command's own deadline (Connect-Timeout-Ms; envd kills at it)
--   on_start(pid)     called when envd reports the process started
--   on_output(stream, bytes)   live output, "stdout" or "stderr"
--   max_output        bytes kept per stream in the result (the rest is still passed live)
--   what              words for messages ("run the command")
-- result: {pid, exit_code, status, stdout, stderr, truncated, timed_out, timeout_message,
-- started}. A command that outlives its timeout gives timed_out = true with the output so
-- far (no error). A failure after the start event still reports result.started via the
-- fourth return value, so the caller can clean up the process.
function M.run(conn, sbx, opts)
  local what = opts.what or "run a command"
  local body, hdrs = start_request(sbx, opts)
  local deadline = client_deadline(conn, opts.timeout_ms)
  local stream, err, kind = open_stream(conn, sbx, what, body, hdrs, deadline)
  if not stream then
    return nil, err, kind
  end
  local run = new_run(conn, sbx, what, opts)
  repeat
    decode(run)
  until run.finished or run.failure or not read_more(run, stream, deadline)
  stream:close()
  return outcome(run)
end

return M
