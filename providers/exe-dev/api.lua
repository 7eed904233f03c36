-- providers/exe-dev/api.lua: exe.dev's HTTPS API (`POST <apiUrl>`, the lobby CLI text in, JSON
-- out): upstream 0.1.2's command text and quoting, its redaction of the logged command, VM
-- names, VM record parsing, and the settings the specs change.
--
-- Failures return nil, message, code[, status], with code from host.errors: "config" (no API
-- key), "upstream" (a non-2xx answer, status its HTTP status; or a 2xx answer whose JSON
-- carries an `error` field), "not_found" (such an error that says the VM does not exist),
-- "conflict" (a 409, or an error that says the name is taken), or the host.http code of a
-- transport failure.
-- Messages never carry the API key, env values, the prompt or a custom setup script.
local http = require("host.http")
local json = require("host.json")
local log = require("host.log")
local task = require("host.task")
local util = require("host.util")

local M = {}

--- settings: module-level knobs for specs (the sandboxed loader gives each provider its own).
M.settings = {
  getenv = os.getenv, -- where EXE_API_KEY is read (at each call)
  request_cap = 29, -- seconds: upstream's AbortSignal cap, under exe.dev's 30 s limit
  connect_timeout = 10, -- seconds to connect to the API
}

-- The setup script supplied when the operator gives none (0.1.2: Node >= 24.11).
M.DEFAULT_SETUP_SCRIPT = "(command -v node >/dev/null 2>&1 && "
  .. "node -e 'const v=process.versions.node.split(\".\").map(Number);"
  .. "process.exit(v[0]>24||(v[0]===24&&v[1]>=11)?0:1)' >/dev/null 2>&1) || "
  .. "(curl -fsSL https://deb.nodesource.com/setup_24.x | sudo -E bash - && "
  .. "sudo apt-get install -y nodejs)"

M.DEFAULT_API_URL = "https://exe.dev/exec"
M.API_KEY_MISSING = "exe.dev environments require an API key in config or EXE_API_KEY."

--- sorted_keys(t) -> the keys of t, sorted.
function M.sorted_keys(t)
  local keys = {}
  for k in pairs(t) do
    keys[#keys + 1] = k
  end
  table.sort(keys)
  return keys
end

------------------------------------------------------------------------------------------------
-- The API URL (upstream's normalizeApiUrl) and the name prefix (normalizeNamePrefix)

local DEFAULT_PORTS = { http = "80", https = "443", ws = "80", wss = "443", ftp = "21" }

-- A WHATWG-style parse of the URLs that matter here: scheme://[userinfo@]host[:port]/path?q#f
-- for the special schemes, lowercase scheme and host, the default port dropped. Other schemes
-- pass as opaque "scheme:rest". nil when JavaScript's `new URL` would throw.
local function parse_url(s)
  local scheme, rest = s:match("^([%a][%w+.-]*):(.*)$")
  if not scheme or s:find("[%s%c]") then
    return nil
  end
  scheme = scheme:lower()
  if not DEFAULT_PORTS[scheme] then
    return { scheme = scheme, opaque = rest }
  end
  rest = rest:gsub("\\", "/"):gsub("^/*", "")
  local authority, tail = rest:match("^([^/?#]*)(.*)$")
  local userinfo, hostport = authority:match("^(.*)@([^@]*)$")
  hostport = hostport or authority
  local host, port = hostport:match("^(%[[%x:.]+%])(.*)$")
  if not host then
    host, port = hostport:match("^([^:]*)(.*)$")
  end
  if host == "" or host:find("[<>^|%%]") then
    return nil
  end
  if port ~= "" then
    port = port:match("^:(%d*)$")
    if not port or (port ~= "" and tonumber(port) > 65535) then
      return nil
    end
    port = port:gsub("^0+(%d)", "%1")
    if port == DEFAULT_PORTS[scheme] then
      port = ""
    end
  end
  local path, query = tail:match("^([^?#]*)(.*)$")
  return {
    scheme = scheme,
    userinfo = userinfo,
    host = host:lower(),
    port = port,
    path = path == "" and "/" or path,
    suffix = query, -- ?query#fragment, kept as given
  }
end

local function format_url(u)
  if u.opaque then
    return u.scheme .. ":" .. u.opaque
  end
  return u.scheme .. "://" .. (u.userinfo and u.userinfo .. "@" or "") .. u.host
    .. (u.port ~= "" and ":" .. u.port or "") .. u.path .. u.suffix
end

--- valid_url(s) -> boolean: whether `new URL(s)` would accept it.
function M.valid_url(s)
  return parse_url(s) ~= nil
end

--- normalize_url(s) -> upstream's normalizeApiUrl: <base>/exec, "/exec" kept once;
-- unparseable input comes back as it is (and then fails validation).
function M.normalize_url(s)
  local u = parse_url(s)
  if not u then
    return s
  end
  if not u.opaque then
    local path = u.path:gsub("/+$", "")
    if path == "" then
      path = "/"
    end
    if path == "/exec" then
      u.path = "/exec"
    else
      u.path = ((path == "/" and "" or path) .. "/exec"):gsub("//+", "/")
    end
  end
  return format_url(u)
end

--- name_prefix(s) -> upstream's normalizeNamePrefix.
function M.name_prefix(s)
  local n = (s or "paperclip"):lower():gsub("[^a-z0-9-]+", "-"):gsub("^%-+", "")
    :gsub("%-+$", ""):gsub("%-%-+", "-")
  return n ~= "" and n:sub(1, 24) or "paperclip"
end

------------------------------------------------------------------------------------------------
-- Commands

--- quote(s): upstream's shellQuote: '...' with ' written as '"'"'.
function M.quote(s)
  return "'" .. tostring(s):gsub("'", "'\"'\"'") .. "'"
end
local quote = M.quote

local function flag(out, name, value)
  if value ~= nil then
    out[#out + 1] = ("--%s=%s"):format(name, quote(value))
  end
end

--- setup_script(config) -> the script `new` passes: the default when none is configured.
function M.setup_script(c)
  return c.setupScript or M.DEFAULT_SETUP_SCRIPT
end

--- create_command(config, name) -> `new --json --no-email --name=...` (or `cp` with sourceVm)
function M.create_command(c, name)
  local out
  if c.sourceVm then
    out = { "cp", quote(c.sourceVm), quote(name), "--json" }
    flag(out, "cpu", c.cpu)
    flag(out, "memory", c.memory)
    flag(out, "disk", c.disk)
    return table.concat(out, " ")
  end
  out = { "new", "--json", "--no-email" }
  flag(out, "name", name)
  flag(out, "image", c.image)
  flag(out, "command", c.command)
  flag(out, "cpu", c.cpu)
  flag(out, "memory", c.memory)
  flag(out, "disk", c.disk)
  flag(out, "comment", c.comment)
  local keys = {}
  for k in pairs(c.env) do
    keys[#keys + 1] = k
  end
  table.sort(keys)
  for _, k in ipairs(keys) do
    flag(out, "env", k .. "=" .. c.env[k])
  end
  for _, v in ipairs(c.integrations) do
    flag(out, "integration", v)
  end
  for _, v in ipairs(c.tags) do
    flag(out, "tag", v)
  end
  flag(out, "setup-script", M.setup_script(c))
  flag(out, "prompt", c.prompt)
  return table.concat(out, " ")
end

local function replace_all(s, find, repl)
  local out, from = {}, 1
  while true do
    local a, b = s:find(find, from, true)
    if not a then
      break
    end
    out[#out + 1] = s:sub(from, a - 1)
    out[#out + 1] = repl
    from = b + 1
  end
  out[#out + 1] = s:sub(from)
  return table.concat(out)
end

--- redact_command(command, config) -> upstream's redactCreateCommand: --env='K=[REDACTED]',
-- --prompt='[REDACTED]' and a custom --setup-script='[REDACTED]' (the default stays visible).
function M.redact_command(command, c)
  for k, v in pairs(c.env) do
    command = replace_all(command, "--env=" .. quote(k .. "=" .. v),
      "--env=" .. quote(k .. "=[REDACTED]"))
  end
  if c.prompt then
    command = replace_all(command, "--prompt=" .. quote(c.prompt), "--prompt='[REDACTED]'")
  end
  if c.setupScript then
    command = replace_all(command, "--setup-script=" .. quote(c.setupScript),
      "--setup-script='[REDACTED]'")
  end
  return command
end

--- register_secrets(config): every secret the config holds is redacted from logs and errors
-- from now on (API key, private key, env values, prompt, a custom setup script).
function M.register_secrets(c)
  for _, v in pairs(c.env) do
    log.add_secret(v)
  end
  log.add_secret(c.apiKey)
  log.add_secret(c.sshPrivateKey)
  log.add_secret(c.prompt)
  log.add_secret(c.setupScript)
end

------------------------------------------------------------------------------------------------
-- VM names

local function alnum8(s)
  return (tostring(s or ""):gsub("[^%w]+", ""):sub(1, 8):lower())
end

-- exe.dev refuses names ending in -<digits> (upstream's bug with a numeric runId): such a
-- last part gets a letter in front.
local function last_part(s)
  return s:find("^%d+$") and "r" .. s or s
end

--- vm_name(config, params) -> <prefix>-<env8>-<run8> (acquire) or <prefix>-probe-<uuid8>
function M.vm_name(c, params, probe)
  local name
  if probe then
    name = c.namePrefix .. "-probe-" .. last_part(util.uuid():sub(1, 8))
  else
    local env = alnum8(params.environmentId)
    local run = alnum8(params.runId)
    if run == "" then
      run = util.uuid():sub(1, 8)
    end
    name = c.namePrefix .. "-" .. (env ~= "" and env or "env") .. "-" .. last_part(run)
  end
  return name:sub(1, 63)
end

------------------------------------------------------------------------------------------------
-- VM records

local function str(v)
  if type(v) == "number" and v == v and v ~= math.huge and v ~= -math.huge then
    return math.type(v) == "integer" and ("%d"):format(v) or tostring(v)
  end
  if type(v) == "string" and v:find("%S") then
    return (v:gsub("^%s+", ""):gsub("%s+$", ""))
  end
  return nil
end

local function first(...)
  for i = 1, select("#", ...) do
    local v = select(i, ...)
    if v ~= nil and v ~= json.null then
      return v
    end
  end
  return nil
end

local function port_of(v)
  local n = tonumber(type(v) == "string" and v:match("^%s*(%d+)%s*$") or v)
  n = n and math.tointeger(n)
  return n and n >= 1 and n <= 65535 and n or nil
end

local function is_object(v)
  return type(v) == "table" and v ~= json.null and not json.is_array(v) and v[1] == nil
end

--- vm_record(value) -> {name, sshDest, sshPort?, httpsUrl, status, region, regionDisplay} |
-- nil: upstream's parseVmRecord (recursing into .vm and .data, depth <= 4). sshPort is read
-- from ssh_port/sshPort when the record has one (the fake exe.dev's loopback VMs do).
function M.vm_record(value, depth)
  depth = depth or 0
  if depth > 4 or not is_object(value) then
    return nil
  end
  local nested = M.vm_record(value.vm, depth + 1) or M.vm_record(value.data, depth + 1)
  if nested then
    return nested
  end
  local name = str(first(value.vm_name, value.name, value.vmName))
  local dest = str(first(value.ssh_dest, value.sshDest)) or (name and name .. ".exe.xyz")
  if not name or not dest then
    return nil
  end
  return {
    name = name,
    sshDest = dest,
    sshPort = port_of(first(value.ssh_port, value.sshPort)),
    httpsUrl = str(first(value.https_url, value.httpsUrl)),
    status = str(value.status),
    region = str(value.region),
    regionDisplay = str(first(value.region_display, value.regionDisplay)),
  }
end

--- from_lease(id, metadata) -> the VM record a lease's metadata describes (upstream's
-- metadataVmRecord), or nil without an id.
function M.from_lease(id, meta)
  if type(id) ~= "string" or id == "" then
    return nil
  end
  meta = type(meta) == "table" and meta or {}
  return {
    name = id,
    sshDest = str(meta.sshDest) or (id .. ".exe.xyz"),
    sshPort = port_of(meta.vmSshPort),
    httpsUrl = str(meta.httpsUrl),
    status = str(meta.status),
    region = str(meta.region),
    regionDisplay = str(meta.regionDisplay),
  }
end

------------------------------------------------------------------------------------------------
-- The API call

--- env_api_key() -> EXE_API_KEY (trimmed) | nil, read now
function M.env_api_key()
  local ok, v = pcall(M.settings.getenv, "EXE_API_KEY")
  v = ok and str(v) or nil
  if v then
    log.add_secret(v)
  end
  return v
end

--- api_key(config) -> key | nil, message, "config": config.apiKey, else EXE_API_KEY.
function M.api_key(c)
  local key = c.apiKey or M.env_api_key()
  if not key then
    return nil, M.API_KEY_MISSING, "config"
  end
  return key
end

local function short(text)
  text = text:gsub("%s+", " "):gsub("^ ", ""):gsub(" $", "")
  if #text > 500 then
    text = text:sub(1, 500):gsub("[\192-\255][\128-\191]*$", "") .. "..."
  end
  return text
end

local NOT_FOUND = { "not found", "no such", "does not exist", "doesn't exist", "unknown vm" }

local TAKEN = { "already taken", "already exists", "already in use" }

local function says(text, phrases)
  text = text:lower()
  for _, s in ipairs(phrases) do
    if text:find(s, 1, true) then
      return true
    end
  end
  return false
end

--- call(ctx, config, command, log_command) -> decoded body (nil for an empty one, the raw text
-- when it is not JSON) | nil, message, kind. One POST, capped at min(timeoutMs, 29 s) and the
-- request's deadline.
function M.call(ctx, c, command, log_command)
  log_command = log_command or command
  local key, err, kind = M.api_key(c)
  if not key then
    return nil, err, kind
  end
  local seconds = math.min(c.timeoutMs / 1000, M.settings.request_cap)
  if ctx and ctx.deadline then
    seconds = math.min(seconds, math.max(0.001, ctx.deadline - task.now()))
  end
  local res, code
  res, err, code = http.request({
    method = "POST",
    url = c.apiUrl,
    headers = {
      Authorization = "Bearer " .. key,
      ["Content-Type"] = "text/plain; charset=utf-8",
    },
    body = command,
    timeout = seconds,
    connect_timeout = math.min(M.settings.connect_timeout, seconds),
  })
  if not res then
    return nil,
      log.redact(("exe.dev API request failed for: %s: %s"):format(log_command, err)),
      code
  end
  local body = res.body or ""
  if not res:ok() then
    local detail = body:find("%S") and ": " .. short(body) or ""
    if res.status == 401 then
      detail = ": the API key was refused (check apiKey or EXE_API_KEY)" .. detail
    elseif res.status == 403 then
      detail = ": the API token does not allow this command (tokens list their commands)"
        .. detail
    end
    return nil,
      log.redact(("exe.dev API command failed (%d) for: %s%s"):format(
        res.status,
        log_command,
        detail
      )),
      res.status == 409 and "conflict" or "upstream",
      res.status
  end
  local trimmed = body:gsub("^%s+", ""):gsub("%s+$", "")
  if trimmed == "" then
    return nil
  end
  local decoded = json.decode(trimmed)
  if decoded == nil then
    return body
  end
  -- exe.dev answers a failed command with {"error": "..."} (upstream 0.1.x missed this)
  if is_object(decoded) and decoded.error ~= nil and decoded.error ~= json.null
    and decoded.error ~= false then
    local e = decoded.error
    local text = type(e) == "string" and e or (json.encode(e) or tostring(e))
    return nil,
      log.redact(("exe.dev API command failed for: %s: %s"):format(log_command, short(text))),
      says(text, NOT_FOUND) and "not_found" or says(text, TAKEN) and "conflict" or "upstream"
  end
  return decoded
end

--- lookup(ctx, config, name) -> record | false (no such VM) | nil, message, kind
-- `ls --json '<name>'`; the list is .vms, a bare array, or a single object.
function M.lookup(ctx, c, name)
  local res, err, kind = M.call(ctx, c, "ls --json " .. quote(name))
  if err then
    if kind == "not_found" then
      return false
    end
    return nil, err, kind
  end
  local list
  if is_object(res) and type(res.vms) == "table" then
    list = res.vms
  elseif type(res) == "table" and not is_object(res) then
    list = res
  elseif res ~= nil then
    list = { res }
  else
    list = {}
  end
  for _, candidate in ipairs(list) do
    local vm = M.vm_record(candidate)
    if vm and (vm.name == name or vm.sshDest == name) then
      return vm
    end
  end
  return false
end

--- create(ctx, config, name) -> record | nil, message, kind, status: `new` (or `cp`), then
-- `ls` when the answer carries no VM record. Sent once: after a transport failure or a 5xx
-- the VM may or may not exist (the caller reconciles by name).
function M.create(ctx, c, name)
  local command = M.create_command(c, name)
  local res, err, kind, status = M.call(ctx, c, command, M.redact_command(command, c))
  if err then
    return nil, err, kind, status
  end
  local vm = M.vm_record(res)
  if vm then
    return vm
  end
  vm, err, kind = M.lookup(ctx, c, name)
  if vm then
    return vm
  elseif vm == nil then
    return nil, err, kind
  end
  return nil, ("exe.dev did not return VM metadata for %s."):format(name), "upstream"
end

--- delete(ctx, config, name) -> true | nil, message, kind, status: `rm --json '<name>'`; a
-- VM that is already gone counts as deleted.
function M.delete(ctx, c, name)
  local _, err, kind, status = M.call(ctx, c, "rm --json " .. quote(name))
  if err and kind ~= "not_found" then
    return nil, err, kind, status
  end
  return true
end

return M
