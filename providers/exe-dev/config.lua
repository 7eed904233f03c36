-- providers/exe-dev/config.lua: upstream 0.1.2's config parse (parseDriverConfig), its
-- validation (errors and warnings in upstream's order and words) and its SSH private-key
-- validator (validateSshPrivateKey). Every hook parses the raw config here, so a field's value
-- is exactly what upstream would use (the host.schema in schema.lua only feeds the manifest).
local json = require("host.json")
local schema = require("host.schema")
local remote = require("host.remote")
local shell = require("host.shell")

local M = {}

M.DEFAULT_API_URL = "https://exe.dev/exec"
M.DEFAULT_TIMEOUT_MS = 300000

M.WARN_SSH = "The Paperclip host must have SSH access to the created exe.dev VM, and its SSH key "
  .. "must be registered with exe.dev. The API token only covers provisioning."
M.WARN_REUSE = "reuseLease keeps the VM alive between runs; this provider does not suspend "
  .. "retained VMs."
M.API_KEY_MISSING = "exe.dev environments require an API key in config or EXE_API_KEY."

-- The order of upstream's normalized config (JSON key order of `{ ...config }`).
M.KEYS = {
  "apiKey", "apiUrl", "namePrefix", "sourceVm", "image", "command", "cpu", "memory", "disk",
  "comment", "env", "integrations", "tags", "setupScript", "prompt", "timeoutMs", "reuseLease",
  "sshUser", "sshPrivateKey", "sshIdentityFile", "sshPort", "strictHostKeyChecking",
}

local function trim(s)
  return (s:gsub("^%s+", ""):gsub("%s+$", ""))
end

-- JavaScript's String(n) for a finite number.
local function js_string(n)
  if math.type(n) == "integer" then
    return ("%d"):format(n)
  end
  return (json.encode(n))
end

--- optional_string(v) -> trimmed non-blank string | nil (upstream's parseOptionalString:
-- finite numbers become strings).
function M.optional_string(v)
  if type(v) == "number" and v == v and v ~= math.huge and v ~= -math.huge then
    return js_string(v)
  end
  if type(v) == "string" and v:find("%S") then
    return trim(v)
  end
  return nil
end
local optional_string = M.optional_string

-- JavaScript's Number(v): nil for NaN. Strings are parsed by host.schema's own copy of the rule.
local function js_number(v)
  if type(v) == "number" then
    return v == v and v or nil
  elseif type(v) == "boolean" then
    return v and 1 or 0
  elseif v == json.null then
    return 0
  elseif type(v) ~= "string" then
    return nil
  end
  return schema.js_number(v)
end

local function finite(n)
  return n ~= nil and n == n and n ~= math.huge and n ~= -math.huge
end

local function trunc(n)
  local t = n >= 0 and math.floor(n) or math.ceil(n)
  return math.tointeger(t) or t
end

-- Number(raw ?? default), truncated; NaN or infinite gives the default.
local function number_or(raw, default)
  if raw == nil or raw == json.null then
    return default
  end
  local n = js_number(raw)
  return finite(n) and trunc(n) or default
end

local function optional_integer(v)
  if v == nil or v == json.null or v == "" then
    return nil
  end
  local n = js_number(v)
  return finite(n) and trunc(n) or nil
end

local function is_list(t)
  if json.is_array(t) then
    return true
  end
  local n = 0
  for _ in pairs(t) do
    n = n + 1
  end
  return n > 0 and #t == n
end

local function string_array(v)
  local out = json.array()
  if type(v) == "table" and v ~= json.null and is_list(v) then
    for _, entry in ipairs(v) do
      out[#out + 1] = optional_string(entry)
    end
  elseif type(v) == "string" then
    for part in (v .. ","):gmatch("([^,]*),") do
      part = trim(part)
      if part ~= "" then
        out[#out + 1] = part
      end
    end
  end
  return out
end

-- Keys trimmed, values through optional_string, empties dropped. Lua tables have no order:
-- entries come out sorted by key (upstream kept the JSON order).
local function env_map(v)
  local env = {}
  if type(v) ~= "table" or v == json.null or is_list(v) then
    return env
  end
  for k, raw in pairs(v) do
    if type(k) == "string" then
      local key, value = trim(k), optional_string(raw)
      if key ~= "" and value ~= nil then
        env[key] = value
      end
    end
  end
  return env
end

--- env_keys(env) -> the keys of env, sorted.
function M.env_keys(env)
  local keys = {}
  for k in pairs(env) do
    keys[#keys + 1] = k
  end
  table.sort(keys)
  return keys
end

------------------------------------------------------------------------------------------------
-- URLs

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

--- api_url(s) -> upstream's normalizeApiUrl: <base>/exec, "/exec" kept once; unparseable
-- input comes back trimmed (and then fails validation).
function M.api_url(s)
  if not s then
    return M.DEFAULT_API_URL
  end
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
-- Parse and validate

--- parse(raw) -> config: upstream's parseDriverConfig, every field present (nil fields are
-- json.null in `normalized(config)`).
function M.parse(raw)
  raw = type(raw) == "table" and raw or {}
  return {
    apiKey = optional_string(raw.apiKey),
    apiUrl = M.api_url(optional_string(raw.apiUrl)),
    namePrefix = M.name_prefix(optional_string(raw.namePrefix)),
    sourceVm = optional_string(raw.sourceVm),
    image = optional_string(raw.image),
    command = optional_string(raw.command),
    cpu = optional_integer(raw.cpu),
    memory = optional_string(raw.memory),
    disk = optional_string(raw.disk),
    comment = optional_string(raw.comment),
    env = env_map(raw.env),
    integrations = string_array(raw.integrations),
    tags = string_array(raw.tags),
    setupScript = optional_string(raw.setupScript),
    prompt = optional_string(raw.prompt),
    timeoutMs = number_or(raw.timeoutMs, M.DEFAULT_TIMEOUT_MS),
    reuseLease = raw.reuseLease == true,
    sshUser = optional_string(raw.sshUser),
    sshPrivateKey = optional_string(raw.sshPrivateKey),
    sshIdentityFile = optional_string(raw.sshIdentityFile),
    sshPort = number_or(raw.sshPort, 22),
    strictHostKeyChecking = optional_string(raw.strictHostKeyChecking) or "accept-new",
  }
end

--- normalized(config) -> the JSON object upstream returns as normalizedConfig (key-ordered).
function M.normalized(c)
  local out = {}
  for _, k in ipairs(M.KEYS) do
    local v = c[k]
    if v == nil then
      v = json.null
    end
    out[k] = v
  end
  return json.ordered(out, M.KEYS)
end

local UUID = "^%x%x%x%x%x%x%x%x%-%x%x%x%x%-%x%x%x%x%-%x%x%x%x%-%x%x%x%x%x%x%x%x%x%x%x%x$"

--- is_secret_ref(s): a secret UUID as the host stores secret-ref fields (upstream 0.1.1+).
function M.is_secret_ref(s)
  return s:find(UUID) ~= nil
end

--- errors(config, raw, getenv, opts) -> upstream's validation errors, in its order. opts.key:
-- include the sshPrivateKey format check (validate does, the lifecycle hooks do not).
-- Beyond upstream: a strictHostKeyChecking that OpenSSH itself would refuse is an error here
-- (upstream accepted it and then every ssh call failed).
function M.errors(c, raw, getenv, opts)
  local errors = json.array()
  local function add(msg)
    errors[#errors + 1] = msg
  end
  if c.apiUrl and not M.valid_url(c.apiUrl) then
    add("apiUrl must be a valid URL.")
  end
  if c.timeoutMs < 1 or c.timeoutMs > 86400000 then
    add("timeoutMs must be between 1 and 86400000.")
  end
  if c.cpu ~= nil and c.cpu <= 0 then
    add("cpu must be greater than 0 when provided.")
  end
  if c.sshPort < 1 or c.sshPort > 65535 then
    add("sshPort must be between 1 and 65535.")
  end
  local env_key = getenv("EXE_API_KEY")
  if not c.apiKey and not (type(env_key) == "string" and env_key:find("%S")) then
    add(M.API_KEY_MISSING)
  end
  for _, k in ipairs(M.env_keys(c.env)) do
    if not shell.is_env_key(k) then
      add("env contains an invalid key: " .. k)
    end
  end
  local shkc = type(raw) == "table" and raw.strictHostKeyChecking
  if type(shkc) == "string" and not shkc:find("%S") then
    add("strictHostKeyChecking cannot be empty.")
  elseif not remote.POLICIES[c.strictHostKeyChecking] then
    add("strictHostKeyChecking must be accept-new, yes or no (OpenSSH's ask, off, true and "
      .. "false are accepted too).")
  end
  if opts and opts.key and c.sshPrivateKey and not M.is_secret_ref(c.sshPrivateKey) then
    local err = M.validate_key(c.sshPrivateKey)
    if err then
      add(err)
    end
  end
  return errors
end

--- warnings(config) -> upstream's warnings, in its order.
function M.warnings(c)
  local warnings = json.array({ M.WARN_SSH })
  if c.sourceVm then
    local ignored = {}
    for _, pair in ipairs({
      { "image", c.image },
      { "command", c.command },
      { "comment", c.comment },
      { "env", next(c.env) ~= nil },
      { "integrations", #c.integrations > 0 },
      { "tags", #c.tags > 0 },
      { "setupScript", c.setupScript },
      { "prompt", c.prompt },
    }) do
      if pair[2] then
        ignored[#ignored + 1] = pair[1]
      end
    end
    if #ignored > 0 then
      warnings[#warnings + 1] = ("sourceVm copies an existing VM with `exe.dev cp`, which does "
        .. "not accept %s; these settings are ignored."):format(table.concat(ignored, ", "))
    end
  end
  if c.reuseLease then
    warnings[#warnings + 1] = M.WARN_REUSE
  end
  return warnings
end

------------------------------------------------------------------------------------------------
-- The SSH private-key validator (upstream's validateSshPrivateKey, same texts)

local PUBLIC_PREFIXES = {
  "^ssh%-rsa%s+%S", "^ssh%-dss%s+%S", "^ssh%-ed25519%s+%S", "^ecdsa%-sha2%-[a-z0-9-]+%s+%S",
  "^sk%-ssh%-ed25519@openssh%.com%s+%S", "^sk%-ecdsa%-sha2%-[a-z0-9-]+@openssh%.com%s+%S",
}

local function lines_of(s)
  local out = {}
  for line in (s .. "\n"):gmatch("([^\n]*)\n") do
    out[#out + 1] = line
  end
  return out
end

--- validate_key(text) -> nil when plausible (or blank) | the error text
function M.validate_key(raw)
  local key = trim(raw)
  if key == "" then
    return nil
  end
  local lines = lines_of(key)
  for _, l in ipairs(lines) do
    if l:find("^PuTTY%-User%-Key%-File%-%d") then
      return "sshPrivateKey looks like a PuTTY .ppk file. Convert it to OpenSSH format (PuTTYgen "
        .. "→ Conversions → Export OpenSSH key) and paste the resulting PEM."
    end
  end
  for _, p in ipairs(PUBLIC_PREFIXES) do
    if key:find(p) then
      return "sshPrivateKey looks like a PUBLIC key. Paste the matching private key (the file "
        .. "without the .pub extension)."
    end
  end
  local header_line, header_label, footer_line, footer_label
  for i, l in ipairs(lines) do
    local label = l:match("^%-%-%-%-%-BEGIN ([A-Z0-9 ]*)PRIVATE KEY%-%-%-%-%-")
    if label and not header_line then
      header_line, header_label = i, label
    end
  end
  if not header_line then
    return "sshPrivateKey must be a PEM-encoded private key starting with a line like "
      .. "'-----BEGIN OPENSSH PRIVATE KEY-----'."
  end
  for i, l in ipairs(lines) do
    local label = l:gsub("\r$", ""):match("^%-%-%-%-%-END ([A-Z0-9 ]*)PRIVATE KEY%-%-%-%-%-%s*$")
    if label and not footer_line then
      footer_line, footer_label = i, label
    end
  end
  if not footer_line then
    return "sshPrivateKey is missing its '-----END … PRIVATE KEY-----' footer. Make sure you "
      .. "copied the whole file, including the final line."
  end
  header_label, footer_label = trim(header_label), trim(footer_label)
  if header_label ~= footer_label then
    return ("sshPrivateKey header/footer mismatch (BEGIN %s vs END %s). The file is likely "
      .. "truncated or two keys are concatenated."):format(
      header_label ~= "" and header_label or "(none)",
      footer_label ~= "" and footer_label or "(none)"
    )
  end
  -- upstream takes the body up to the last occurrence of the footer line
  local last_footer = footer_line
  for i = #lines, footer_line, -1 do
    if lines[i]:find(lines[footer_line], 1, true) then
      last_footer = i
      break
    end
  end
  if header_line >= #lines or last_footer <= header_line then
    return "sshPrivateKey appears to be empty between its BEGIN and END markers."
  end
  local body = {}
  for i = header_line + 1, last_footer - 1 do
    local l = trim(lines[i])
    if l ~= "" then
      body[#body + 1] = l
    end
  end
  if #body == 0 then
    return "sshPrivateKey appears to be empty between its BEGIN and END markers."
  end
  for _, l in ipairs(body) do
    if not l:find("^[A-Za-z0-9+/=]+$") and not l:find("^[A-Za-z][A-Za-z0-9-]*:%s.+$") then
      return "sshPrivateKey body contains non-base64 characters. The key may have been "
        .. "corrupted by line-wrapping or copy-paste."
    end
  end
  return nil
end

return M
