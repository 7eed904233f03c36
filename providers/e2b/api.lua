-- providers/e2b/api.lua: E2B's REST control plane (../shared/reference/e2b-wire.md section 2),
-- the connection settings, and the worker-memory cache of envd credentials.
--
-- Failures return nil, message, code (host.errors): "not_found" (the sandbox is gone), "conflict",
-- "auth", "busy" (rate limited), "upstream" (any other HTTP error), "config" (no API key), or the
-- host.http code of a transport failure ("timeout", "connect", "closed", ...). Messages never
-- carry the API key or an envd access token.
local http = require("host.http")
local json = require("host.json")
local log = require("host.log")
local task = require("host.task")
local util = require("host.util")

local M = {}

--- settings: module-level knobs, for specs and self-hosted E2B. Each nil field falls back to
-- the SDK's own environment variable (read at call time through settings.getenv).
M.settings = {
  getenv = os.getenv, -- replaced by specs to fake E2B_API_KEY and friends
  api_url = nil, -- E2B_API_URL, else https://api.<domain>
  domain = nil, -- E2B_DOMAIN, else e2b.app
  sandbox_url = nil, -- E2B_SANDBOX_URL: one envd base URL for every sandbox (routed by headers)
  request_timeout = 60, -- seconds for one control-plane or unary envd request (SDK: 60 s)
  connect_timeout = 10, -- seconds to connect
  retries = 3, -- 429 answers retried (honouring Retry-After), as the SDK does
  keepalive = 50, -- Keepalive-Ping-Interval asked of envd on command streams (seconds)
  stream_stall = 190, -- seconds without a byte (not even a keepalive) before a stream is dead
  stream_grace = 5, -- seconds past a command's timeout before the client gives up on envd
  refresh_fraction = 0.1, -- refresh the lifetime once this much of timeoutMs has passed
  cache_size = 1024, -- sandboxes whose envd credentials are kept
}

local settings = M.settings

local function env(name)
  local ok, v = pcall(settings.getenv, name)
  return ok and util.nonblank(v) or nil
end

local API_KEY_MISSING = "E2B sandbox environments require an API key in config or E2B_API_KEY."

--- connection(ctx) -> conn | nil, message, "config"
-- The API key is config.apiKey, else E2B_API_KEY (trimmed, read now). conn.deadline bounds
-- every request made for this hook call.
function M.connection(ctx)
  local key = ctx.config.apiKey
  if type(key) ~= "string" or key == "" then
    key = env("E2B_API_KEY")
  end
  if not key then
    return nil, API_KEY_MISSING, "config"
  end
  log.add_secret(key)
  local domain = util.nonblank(settings.domain) or env("E2B_DOMAIN") or "e2b.app"
  local api_url = util.nonblank(settings.api_url) or env("E2B_API_URL")
    or ("https://api." .. domain)
  local sandbox_url = util.nonblank(settings.sandbox_url) or env("E2B_SANDBOX_URL")
  return {
    key = key,
    key_id = util.sha256_hex(key),
    domain = domain,
    api_url = (api_url:gsub("/+$", "")),
    sandbox_url = sandbox_url and (sandbox_url:gsub("/+$", "")) or nil,
    deadline = ctx.deadline,
  }
end

--- seconds(conn, cap) -> seconds left for a request: at most cap, never past conn.deadline.
function M.seconds(conn, cap)
  local left = cap or settings.request_timeout
  if conn.deadline then
    left = math.min(left, conn.deadline - task.now())
  end
  return left
end

-- Remove anything secret from text that came from a server.
function M.redact(conn, text)
  text = tostring(text)
  if conn and conn.key and #conn.key > 0 then
    text = text:gsub(conn.key:gsub("%p", "%%%0"), "[REDACTED]")
  end
  return log.redact(text)
end

-- The message of an error body ({"code":..,"message":".."} or text), short and redacted.
local function body_message(conn, res)
  local body = res.body or ""
  local msg
  local decoded = body ~= "" and json.decode(body)
  if type(decoded) == "table" and type(decoded.message) == "string" then
    msg = decoded.message
  elseif body:find("%S") and not body:find("^%s*<") then
    msg = body
  end
  if not msg then
    return "", decoded
  end
  msg = util.trim(msg:gsub("%s+", " "))
  if #msg > 300 then
    msg = msg:sub(1, 300):gsub("[\192-\255][\128-\191]*$", "") .. "..."
  end
  return ": " .. M.redact(conn, msg), decoded
end

local function code_of(decoded)
  return type(decoded) == "table" and decoded.code or nil
end

-- An HTTP error response as (message, kind), in the SDK's terms (e2b-wire.md 2.2).
function M.http_error(conn, res, what, attempts)
  local msg, decoded = body_message(conn, res)
  local status = res.status
  if status == 401 then
    return ("E2B API authentication failed while trying to %s (HTTP 401): the API key is "
      .. "missing, invalid or revoked; check apiKey in the environment config or "
      .. "E2B_API_KEY%s"):format(what, msg),
      "auth"
  elseif status == 403 then
    return ("E2B API refused to %s (HTTP 403): the API key has no access%s"):format(what, msg),
      "auth"
  elseif status == 429 then
    return ("E2B API rate limit exceeded while trying to %s (HTTP 429, %d attempt%s)%s"):format(
      what,
      attempts or 1,
      (attempts or 1) == 1 and "" or "s",
      msg
    ),
      "busy"
  elseif status == 404 and code_of(decoded) == 404 then
    return ("E2B could not %s: not found%s"):format(what, msg), "not_found"
  elseif status == 409 and code_of(decoded) == 409 then
    return ("E2B could not %s (HTTP 409)%s"):format(what, msg), "conflict"
  end
  return ("E2B API error while trying to %s: HTTP %d%s"):format(what, status, msg), "upstream"
end

--- request(conn, method, path, body, what) -> response | nil, message, kind
-- One control-plane call with X-API-KEY. A 429 with an integer Retry-After is retried up to
-- settings.retries times while the sleep fits the request budget (the SDK's rule). Any other
-- status is returned for the caller to interpret.
function M.request(conn, method, path, body, what)
  local started = task.now()
  local budget = M.seconds(conn)
  local attempts = 0
  while true do
    attempts = attempts + 1
    local left = budget - (task.now() - started)
    if left <= 0 then
      return nil, ("E2B API did not answer in time while trying to %s"):format(what), "timeout"
    end
    local res, err, code = http.request({
      method = method,
      url = conn.api_url .. path,
      headers = { ["X-API-KEY"] = conn.key },
      json = body,
      timeout = left,
      connect_timeout = math.min(settings.connect_timeout, left),
    })
    if not res then
      local why = code == "timeout" and "no answer within " .. math.floor(left + 0.5) .. "s"
        or M.redact(conn, err)
      return nil, ("E2B API request failed while trying to %s: %s"):format(what, why), code
    end
    if res.status ~= 429 or attempts > settings.retries then
      return res, nil, nil, attempts
    end
    local after = res:header("retry-after")
    local wait = after and after:match("^%s*(%d+)%s*$") and tonumber(after)
    if not wait or (task.now() - started) + wait >= budget then
      return res, nil, nil, attempts
    end
    log.debug("E2B API rate limited (%s); retrying in %ds", what, wait)
    local ok, serr, scode = task.sleep(wait)
    if not ok then
      return nil, serr, scode
    end
  end
end

------------------------------------------------------------------------------------------------
-- Sandboxes

local SAFE_ID = "^[A-Za-z0-9][A-Za-z0-9_.-]*$"

--- valid_id(id) -> true when id can be an E2B sandbox id (and so goes safely into a URL).
function M.valid_id(id)
  return type(id) == "string" and #id <= 256 and id:match(SAFE_ID) ~= nil
end

-- A sandbox from a create or connect answer: {id, token, domain, envd_version}.
local function sandbox_of(conn, res, id, what)
  local data = res:json()
  if type(data) ~= "table" then
    return nil, ("E2B API sent an unreadable answer while trying to %s"):format(what), "upstream"
  end
  id = id or data.sandboxID
  if not M.valid_id(id) then
    return nil, ("E2B API answer has no valid sandboxID while trying to %s"):format(what),
      "upstream"
  end
  local token = type(data.envdAccessToken) == "string" and data.envdAccessToken ~= ""
      and data.envdAccessToken
    or nil
  if token then
    log.add_secret(token)
  end
  local domain = util.nonblank(data.domain) or conn.domain
  return {
    id = id,
    token = token,
    domain = domain,
    envd_version = type(data.envdVersion) == "string" and data.envdVersion or "0.0.0",
  }
end

--- version_less(a, b) -> true when semver a < b (numeric major.minor.patch; the rest ignored)
function M.version_less(a, b)
  local function parts(v)
    local x, y, z = tostring(v):match("^v?(%d+)%.?(%d*)%.?(%d*)")
    return tonumber(x) or 0, tonumber(y) or 0, tonumber(z) or 0
  end
  local a1, a2, a3 = parts(a)
  local b1, b2, b3 = parts(b)
  if a1 ~= b1 then
    return a1 < b1
  elseif a2 ~= b2 then
    return a2 < b2
  end
  return a3 < b3
end

local function ceil_seconds(ms)
  return math.ceil(ms / 1000)
end

-- The statuses a call expects: created (create, connect) and done (set_timeout, pause, kill).
local CREATED = { [200] = true, [201] = true }
local DONE = { [200] = true, [204] = true }

-- call(conn, method, path, body, what, ok) -> response | nil, message, kind: M.request, with an
-- answer whose status is not in ok turned into M.http_error's message and kind.
-- The failure's HTTP status comes fourth, when there was an answer.
local function call(conn, method, path, body, what, ok)
  local res, err, kind, attempts = M.request(conn, method, path, body, what)
  if not res then
    return nil, err, kind
  end
  if not ok[res.status] then
    local msg, hkind = M.http_error(conn, res, what, attempts)
    return nil, msg, hkind, res.status
  end
  return res
end

--- ambiguous(kind, status) -> true when a failed call may have been carried out all the same:
-- the request went out and its answer was lost or cut, or a 5xx came back (host.http never
-- re-sends such a request; the caller looks before it acts again).
function M.ambiguous(kind, status)
  return http.ambiguous(kind) or (kind == "upstream" and (status or 0) >= 500)
end

--- create(conn, template, timeout_ms, metadata) -> sandbox | nil, message, kind, status
-- Sent once: after an ambiguous failure (M.ambiguous) the sandbox may exist; tag the create
-- with a unique metadata value and look it up with M.list.
function M.create(conn, template, timeout_ms, metadata)
  local what = ("create a sandbox from template %s"):format(template)
  local res, err, kind, status = call(conn, "POST", "/v2/sandboxes", {
    templateID = template,
    timeout = ceil_seconds(timeout_ms),
    metadata = metadata,
  }, what, CREATED)
  if not res then
    return nil, err, kind, status
  end
  local sbx
  sbx, err, kind = sandbox_of(conn, res, nil, what)
  if sbx and M.version_less(sbx.envd_version, "0.1.0") then
    M.kill(conn, sbx.id)
    return nil,
      ("E2B template %s is too old (envd %s); rebuild it with a current E2B CLI"):format(
        template,
        sbx.envd_version
      ),
      "upstream"
  end
  return sbx, err, kind
end

local function url_encode(v)
  return (v:gsub("[^%w%-%._~]", function(ch)
    return ("%%%02X"):format(ch:byte())
  end))
end

--- list(conn, key, value) -> array of sandbox ids (running or paused) whose metadata has
-- key = value | nil, message, kind
function M.list(conn, key, value)
  local what = "list the sandboxes"
  local res, err, kind = call(conn, "GET", "/v2/sandboxes?state=running,paused&metadata="
    .. url_encode(url_encode(key) .. "=" .. url_encode(value)), nil, what, { [200] = true })
  if not res then
    return nil, err, kind
  end
  local data = res:json()
  if type(data) ~= "table" then
    return nil, ("E2B API sent an unreadable answer while trying to %s"):format(what), "upstream"
  end
  local ids = {}
  for _, item in ipairs(data) do
    if type(item) == "table" and M.valid_id(item.sandboxID) then
      ids[#ids + 1] = item.sandboxID
    end
  end
  return ids
end

--- connect(conn, id, timeout_ms) -> sandbox | nil, message, kind
-- Resumes a paused sandbox; on a running one it only ever extends the lifetime.
function M.connect(conn, id, timeout_ms)
  local what = ("connect to sandbox %s"):format(id)
  if not M.valid_id(id) then
    return nil, ("E2B could not %s: not a sandbox id"):format(what), "not_found"
  end
  local res, err, kind = call(conn, "POST", "/v2/sandboxes/" .. id .. "/connect",
    { timeout = ceil_seconds(timeout_ms) }, what, CREATED)
  if not res then
    return nil, err, kind
  end
  return sandbox_of(conn, res, id, what)
end

--- set_timeout(conn, id, timeout_ms) -> true | nil, message, kind (the new lifetime is now
-- plus timeout_ms; it may shorten the current one)
function M.set_timeout(conn, id, timeout_ms)
  local what = ("set the lifetime of sandbox %s"):format(id)
  local res, err, kind = call(conn, "POST", "/sandboxes/" .. id .. "/timeout",
    { timeout = ceil_seconds(timeout_ms) }, what, DONE)
  if not res then
    return nil, err, kind
  end
  return true
end

--- pause(conn, id) -> true | false (already paused) | nil, message, kind, status
function M.pause(conn, id)
  local what = ("pause sandbox %s"):format(id)
  if not M.valid_id(id) then
    return nil, ("E2B could not %s: not a sandbox id"):format(what), "not_found"
  end
  local res, err, kind, status =
    call(conn, "POST", "/sandboxes/" .. id .. "/pause", json.ordered({}, {}), what, DONE)
  if res then
    return true
  elseif kind == "conflict" then -- HTTP 409: paused already
    return false
  end
  return nil, err, kind, status
end

--- kill(conn, id) -> true | false (no such sandbox) | nil, message, kind, status
-- By id, without connecting: a paused sandbox is deleted without being resumed first.
function M.kill(conn, id)
  local what = ("kill sandbox %s"):format(id)
  if not M.valid_id(id) then
    return false
  end
  local res, err, kind, status = call(conn, "DELETE", "/sandboxes/" .. id, nil, what, DONE)
  if res then
    return true
  elseif kind == "not_found" then -- HTTP 404: gone already
    return false
  end
  return nil, err, kind, status
end

------------------------------------------------------------------------------------------------
-- envd credentials, kept in worker memory only (never on disk, never in lease metadata).
-- Keyed by API URL, a hash of the API key and the sandbox id: a caller with another key
-- misses and must connect (and so prove access) itself.

local cache, order = {}, {}

local function cache_key(conn, id)
  return conn.api_url .. "\0" .. conn.key_id .. "\0" .. id
end

--- remember(conn, sandbox) -> the cache entry for it (refreshed_at: now)
function M.remember(conn, sbx)
  local key = cache_key(conn, sbx.id)
  local entry = cache[key]
  if not entry then
    entry = {}
    cache[key] = entry
    order[#order + 1] = key
    while #order > settings.cache_size do
      cache[table.remove(order, 1)] = nil
    end
  end
  entry.id, entry.token, entry.domain = sbx.id, sbx.token, sbx.domain
  entry.envd_version = sbx.envd_version
  entry.refreshed_at = task.now()
  return entry
end

--- cached(conn, id) -> entry | nil
function M.cached(conn, id)
  return cache[cache_key(conn, id)]
end

--- forget(conn, id): drop the entry (the sandbox was paused, killed or is unreachable).
function M.forget(conn, id)
  local key = cache_key(conn, id)
  if cache[key] then
    cache[key] = nil
    for i, k in ipairs(order) do
      if k == key then
        table.remove(order, i)
        break
      end
    end
  end
end

--- forget_all(): empty the cache (specs: a restarted worker).
function M.forget_all()
  cache, order = {}, {}
end

return M
