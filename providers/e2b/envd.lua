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

--- upload(conn, sbx, path, data) -> true | nil, message, kind
-- POST /files?path=... with one multipart/form-data file, as the SDK writes a string.
function M.upload(conn, sbx, path, data)
  local what = "stage stdin"
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
  local process = { cmd = "/bin/bash", args = json.array({ "-l", "-c", opts.script }) }
  if opts.cwd ~= nil then
    process.cwd = opts.cwd
  end
  if opts.envs ~= nil and next(opts.envs) ~= nil then
    process.envs = opts.envs
  end
  local payload = assert(json.encode({ process = process, stdin = false }))
  local extra = {
    ["Content-Type"] = STREAM_TYPE,
    ["Connect-Protocol-Version"] = "1",
    ["Connect-Timeout-Ms"] = tostring(math.floor(opts.timeout_ms)),
    ["Keepalive-Ping-Interval"] = tostring(api.settings.keepalive),
  }
  if old_envd(sbx) then
    extra.Authorization = "Basic " .. util.base64_encode("user:")
  end
  local settings = api.settings
  local started_at = task.now()
  -- The client gives up a little after the command's own deadline if envd has not ended the
  -- stream by then; never past the hook's deadline.
  local client_deadline = started_at + opts.timeout_ms / 1000 + settings.stream_grace
  if conn.deadline then
    client_deadline = math.min(client_deadline, conn.deadline - 1)
  end
  local handshake = api.seconds(conn)
  if handshake <= 0 or client_deadline <= task.now() then
    return nil, ("no time left to %s in sandbox %s"):format(what, sbx.id), "timeout"
  end
  local stream, err, code = task.with_timeout(
    handshake,
    opener({
      method = "POST",
      url = M.base_url(conn, sbx) .. "/process.Process/Start",
      headers = headers(sbx, extra),
      body = envelope(0, payload),
      timeout = math.max(1, client_deadline - task.now() + 1),
      connect_timeout = math.min(settings.connect_timeout, handshake),
      stall_timeout = settings.stream_stall,
    })
  )
  if not stream then
    return nil, transport_error(conn, sbx, what, err, code, handshake)
  end
  local ctype = stream.headers and stream.headers["content-type"] or ""
  if stream.status ~= 200 or ctype:sub(1, #STREAM_TYPE) ~= STREAM_TYPE then
    local body = drain(stream)
    if stream.status == 200 then
      return nil,
        ("E2B envd answered %s in sandbox %s with an unexpected content type %q"):format(
          what,
          sbx.id,
          ctype
        ),
        "protocol"
    end
    return nil, status_error(conn, sbx, stream.status, body, what)
  end

  local result = {
    stdout = {},
    stderr = {},
    kept = { stdout = 0, stderr = 0 },
    exit_code = nil,
    started = false,
  }
  local max_output = opts.max_output or math.huge
  local buf, ended, finished = "", false, false
  local failure -- {message, kind}

  local function fail(message, kind)
    failure = failure or { message, kind }
  end

  local function output(name, b64)
    local bytes = util.base64_decode(b64)
    if not bytes then
      return fail("E2B envd sent undecodable output", "protocol")
    end
    if bytes == "" then
      return
    end
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
    if opts.on_output then
      opts.on_output(name, bytes)
    end
  end

  local function message(flags, text)
    local msg = json.decode(text)
    if type(msg) ~= "table" then
      return fail("E2B envd sent an unreadable stream message", "protocol")
    end
    if flags & 2 == 2 then -- end of stream: {} or {"error":{code, message}}
      finished = true
      local e = msg.error
      if type(e) == "table" then
        local ecode = tostring(e.code or "unknown")
        local emsg = type(e.message) == "string" and api.redact(conn, e.message:sub(1, 500)) or ""
        if ecode == "deadline_exceeded" then
          result.timed_out = true
          result.timeout_message = ("[deadline_exceeded] %s"):format(emsg)
        elseif ecode == "unavailable" and not result.started then
          fail(
            ("E2B sandbox %s is not running: [unavailable] %s"):format(sbx.id, emsg),
            "unavailable"
          )
        else
          fail(
            ("E2B envd error while trying to %s in sandbox %s: [%s] %s"):format(
              what,
              sbx.id,
              ecode,
              emsg
            ),
            ecode == "unauthenticated" and "auth" or "upstream"
          )
        end
      end
      return
    end
    local event = type(msg.event) == "table" and msg.event or {}
    if not result.started then
      if type(event.start) ~= "table" then
        return fail("E2B envd stream did not begin with a start event", "protocol")
      end
      result.started = true
      result.pid = math.tointeger(event.start.pid)
      if opts.on_start then
        opts.on_start(result.pid)
      end
      return
    end
    if type(event.data) == "table" then
      if type(event.data.stdout) == "string" then
        output("stdout", event.data.stdout)
      end
      if type(event.data.stderr) == "string" then
        output("stderr", event.data.stderr)
      end
    elseif type(event["end"]) == "table" then
      local e = event["end"]
      ended = true
      result.exit_code = math.tointeger(e.exitCode) or 0
      result.status = type(e.status) == "string" and e.status or nil
      result.error = type(e.error) == "string" and e.error or nil
    end -- keepalive and empty events carry nothing
  end

  while not finished and not failure do
    while #buf >= 5 and not failure and not finished do
      local flags, size = string.unpack(">BI4", buf)
      if size > MAX_ENVELOPE then
        fail("E2B envd sent an oversized stream message", "protocol")
        break
      end
      if #buf < 5 + size then
        break
      end
      if flags & 1 == 1 then
        fail("E2B envd sent a compressed stream message", "protocol")
        break
      end
      local text = buf:sub(6, 5 + size)
      buf = buf:sub(6 + size)
      message(flags, text)
    end
    if finished or failure then
      break
    end
    local left = client_deadline - task.now()
    if left <= 0 then
      result.timed_out = true
      result.timeout_message = "[deadline_exceeded] the operation timed out"
      break
    end
    local chunk, rerr, rcode = stream:read(left)
    if chunk then
      buf = buf .. chunk
    elseif rerr == nil then -- end of body
      if not ended then
        fail(
          ("E2B envd stream of sandbox %s ended before the command finished (truncated "
            .. "stream: no end event)"):format(sbx.id),
          "closed"
        )
      end
      break -- an end event without the end-of-stream message: the result is complete
    elseif rcode == "timeout"
      and not (rerr or ""):find("stalled", 1, true)
      and task.now() >= client_deadline - 0.05
    then
      result.timed_out = true -- envd never ended the stream: the client's own deadline
      result.timeout_message = "[deadline_exceeded] the operation timed out"
      break
    else
      local why = api.redact(conn, rerr)
      if rcode == "timeout" then
        why = ("no data for %gs (envd sends keepalives, so the connection is dead)"):format(
          settings.stream_stall
        )
      end
      fail(
        ("E2B envd connection to sandbox %s was lost while trying to %s: %s"):format(
          sbx.id,
          what,
          why
        ),
        rcode == "canceled" and "canceled" or "closed"
      )
      break
    end
  end
  stream:close()
  result.stdout = table.concat(result.stdout)
  result.stderr = table.concat(result.stderr)
  result.kept = nil
  if failure then
    return nil, failure[1], failure[2], result
  end
  if not result.started and not result.timed_out then
    return nil, ("E2B envd stream of sandbox %s ended without starting the command"):format(
      sbx.id
    ),
      "protocol",
      result
  end
  if not ended and not result.timed_out then
    return nil, ("E2B envd stream of sandbox %s ended without the command's result"):format(
      sbx.id
    ),
      "closed",
      result
  end
  return result
end

return M
