-- host.bridge_policy: what the sandbox callback bridge lets through (DESIGN.md section 5).
-- Pure policy, no I/O: the transport hands each request head over as received on the wire,
-- check_request says whether to forward it and what exactly to send, and filter_response
-- trims what goes back. Everything is decided here, on the host: the sandbox is untrusted
-- (reference/bridge-upstream.md 7.1). Upstream's status catalogue (2.6) is kept where sound.
--
-- The forwarder that uses a decision must send what was matched: URL = origin .. path, plus
-- "?" .. query when query is not empty; CURLOPT_PATH_AS_IS=1 (libcurl must not rewrite the
-- path); CURLOPT_FOLLOWLOCATION=0 (a 3xx goes back to the sandbox as it is); the real
-- Authorization and X-Paperclip-Run-Id added by the forwarder only; the body capped at
-- decision.max_body while it streams (a chunked body has no length to check up front).
local json = require("host.json")
local routes = require("host.bridge_routes")
local util = require("host.util")

local M = {}

local concat, lower, upper = table.concat, string.lower, string.upper
local trim = util.trim

--- Default body limit, both ways: 10 MiB + 64 KiB, as newer upstream (7.4).
M.DEFAULT_MAX_BODY = 10 * 1024 * 1024 + 64 * 1024

--- Request headers forwarded by default (lowercase names): upstream's inbound allowlist.
M.DEFAULT_REQUEST_HEADERS = { "accept", "content-type", "if-match", "if-none-match" }

--- Response headers returned by default (lowercase names): upstream's response allowlist.
M.DEFAULT_RESPONSE_HEADERS = { "content-type", "etag", "last-modified",
  "x-paperclip-bridge-outcome" }

--- The header that marks a response whose outcome is unknown ("indeterminate").
M.OUTCOME_HEADER = "x-paperclip-bridge-outcome"

--- The status catalogue: what the agent can see from the bridge itself. `message` is a
--- string.format template. `retry` says whether the agent may safely retry.
M.CATALOGUE = {
  bad_token = { status = 401, message = "Invalid bridge token.", retry = false },
  bad_target = { status = 400, message = "Bad request target: %s", retry = false },
  bad_framing = { status = 400, message = "Bad request framing.", retry = false },
  bad_header = { status = 400, message = "Bad header value: %s", retry = false },
  route_denied = { status = 403, message = "Route not allowed: %s %s", retry = false },
  too_large = { status = 413, message = "Bridge request body exceeds %d bytes.", retry = false },
  not_json = { status = 415, message = "Bridge only accepts JSON request bodies.", retry = false },
  -- The forward may have run (aborted or timed out after it started): never retry. Sent with
  -- the outcome header and {"error", "outcome": "indeterminate", "retryable": false}.
  -- Upstream's host answers 504 and its gateway turns that into 409; we answer 409 directly.
  indeterminate = { status = 409, message = "%s", retry = false },
  -- The forward did not complete (connection refused, DNS, ...): the API did not act.
  forward_failed = { status = 502, message = "Bridge forward failed: %s", retry = true },
  response_too_large = { status = 502, retry = false,
    message = "Bridge response body exceeded the configured size limit of %d bytes." },
  -- The bridge is closing and the request was never forwarded.
  closing = { status = 503, retry = true,
    message = "Bridge worker stopped before request could be handled." },
}

-- Messages --------------------------------------------------------------------------------

-- s with every byte outside printable ASCII written as \xNN, so that a message never carries
-- raw control bytes (or invalid UTF-8) from the wire.
local function show(s)
  return (s:gsub("[%z\1-\31\127-\255]", function(c)
    return ("\\x%02x"):format(c:byte())
  end))
end

local function fail(kind, ...)
  local entry = M.CATALOGUE[kind]
  return nil, entry.status, entry.message:format(...)
end

--- error_body(message [, fields]) -> JSON text {"error": message, ...fields}: the body of every
--- answer the bridge gives itself. Keys come out in the order error, outcome, retryable.
function M.error_body(message, fields)
  if type(message) ~= "string" then
    error("bad argument #1 to 'error_body' (string expected, got " .. type(message) .. ")", 2)
  end
  local t = { error = message }
  for k, v in pairs(fields or {}) do
    t[k] = v
  end
  return assert(json.encode(json.ordered(t, { "error", "outcome", "retryable" })))
end

--- reply(status, message) -> status, headers, body: a JSON error answer from the bridge
--- (headers a list of {name, value}).
function M.reply(status, message)
  return status, { { "content-type", "application/json" } }, M.error_body(message)
end

--- indeterminate_reply(message) -> 409, headers, body: the answer when a forward was cut off
--- after it may have reached the API (timeout, abort). The agent must not retry it.
function M.indeterminate_reply(message)
  return M.CATALOGUE.indeterminate.status,
    { { "content-type", "application/json" }, { M.OUTCOME_HEADER, "indeterminate" } },
    M.error_body(message, { outcome = "indeterminate", retryable = false })
end

-- Tokens ----------------------------------------------------------------------------------

--- new_token() -> 32 characters (24 CSPRNG bytes, base64url without padding) | nil, msg, "io"
function M.new_token()
  local bytes, err, code = util.random(24)
  if not bytes then
    return nil, err, code
  end
  return util.base64url_encode(bytes)
end

-- Targets ---------------------------------------------------------------------------------

local ESCAPED_NAMES = { [0x2f] = '"/"', [0x5c] = '"\\"', [0x2e] = '"."' }

-- The characters a path segment may hold besides %XX escapes (RFC 3986 pchar): unreserved,
-- sub-delims, ":" and "@".
local LITERAL = "^[%w%-%._~!%$&'%(%)%*%+,;=:@]+$"
local SEGMENT = "^[%w%-%._~!%$&'%(%)%*%+,;=:@%%]+$"

--- canonical_target(target) -> path, query | nil, reason
--- Accepts only a canonical origin-form request-target: one leading "/", no fragment, no byte
--- outside visible ASCII; in the path no "\", no malformed or forbidden %-escape (%2F %5C %2E,
--- %00-%1F, %7F, in any case), escapes that decode to valid UTF-8 only (no overlong forms),
--- no empty segment (so no "//" and no trailing "/", the root "/" aside) and no "." or "..".
--- Nothing is decoded: the path is matched and forwarded exactly as given. query is what
--- follows the first "?" ("" when none), verbatim. The reason never holds raw control bytes.
function M.canonical_target(target)
  if type(target) ~= "string" then
    error("bad argument #1 to 'canonical_target' (string expected, got " .. type(target) .. ")",
      2)
  end
  if target == "" then
    return nil, "empty"
  elseif target == "*" then
    return nil, "asterisk-form is not allowed"
  elseif target:byte(1) ~= 0x2f then
    return nil, 'not origin-form (must start with "/")'
  elseif target:byte(2) == 0x2f then
    return nil, 'starts with "//"'
  end
  local q = target:find("?", 1, true) or #target + 1
  local bad = target:find("[%z\1-\32\127-\255]")
  if bad then
    local c = target:byte(bad)
    local what = c == 0x20 and "space"
      or c >= 0x80 and ("non-ASCII byte 0x%02x"):format(c)
      or ("control byte 0x%02x"):format(c)
    return nil, what .. (bad < q and " in path" or " in query")
  end
  if target:find("#", 1, true) then
    return nil, 'fragment ("#") is not allowed'
  end
  local path, query = target:sub(1, q - 1), target:sub(q + 1)
  if path:find("\\", 1, true) then
    return nil, 'backslash ("\\") in path'
  end
  local pos = path:find("%", 1, true)
  while pos do
    local hex = path:match("^%x%x", pos + 1)
    if not hex then
      return nil, "malformed %-escape in path"
    end
    local c = tonumber(hex, 16)
    if ESCAPED_NAMES[c] then
      return nil, ("encoded %s (%%%s) in path"):format(ESCAPED_NAMES[c], hex)
    elseif c < 0x20 or c == 0x7f then
      return nil, ("encoded control byte (%%%s) in path"):format(hex)
    end
    pos = path:find("%", pos + 3, true)
  end
  local decoded = path:gsub("%%(%x%x)", function(h)
    return string.char(tonumber(h, 16))
  end)
  if not util.utf8_valid(decoded) then
    return nil, "%-escapes in path do not decode to valid UTF-8"
  end
  if path ~= "/" then
    for seg in path:sub(2):gmatch("[^/]*") do
      if seg == "" then
        return nil, "empty segment in path"
      elseif seg == "." or seg == ".." then
        return nil, "dot segment in path"
      end
    end
  end
  return path, query
end

-- Routes ----------------------------------------------------------------------------------

local function segments(path) -- "/a/b" -> {"a", "b"}; "/" -> {}
  local out = {}
  if path ~= "/" then
    for seg in path:sub(2):gmatch("[^/]*") do
      out[#out + 1] = seg
    end
  end
  return out
end

-- pattern -> list of {literal = s} | {suffix = s} (a parameter) | nil, reason
local function compile_pattern(pattern)
  if type(pattern) ~= "string" then
    return nil, "pattern must be a string"
  elseif pattern:byte(1) ~= 0x2f then
    return nil, 'pattern must start with "/"'
  end
  local out = {}
  for i, seg in ipairs(segments(pattern)) do
    if seg == "" then
      return nil, "empty segment " .. i
    elseif seg == "." or seg == ".." then
      return nil, "dot segment " .. i
    elseif seg:byte(1) == 0x3a then -- ":"
      local suffix = seg:match("^:[%a_][%w_]*(.*)$")
      if not suffix or (suffix ~= "" and not suffix:find(LITERAL)) then
        return nil, ("segment %d: a parameter is :name (letters, digits, _) with an optional"
          .. " literal suffix"):format(i)
      end
      out[i] = { suffix = suffix }
    elseif seg:find(LITERAL) then
      out[i] = { literal = seg }
    else
      return nil, ("segment %d: a literal holds only letters, digits and -._~!$&'()*+,;=:@"
        .. " (no %%-escapes)"):format(i)
    end
  end
  return out
end

local function compile_rule(rule)
  if type(rule) ~= "table" then
    return nil, "a rule is a table {method = , pattern = }"
  end
  if type(rule.method) ~= "string" or not rule.method:find("^[A-Z]+$") then
    return nil, "method must be an uppercase token"
  end
  local segs, err = compile_pattern(rule.pattern)
  if not segs then
    return nil, err
  end
  return { method = rule.method, pattern = rule.pattern, segments = segs }
end

local function segment_matches(m, seg)
  if m.literal then
    return seg == m.literal
  end
  local n = #m.suffix
  return #seg > n and seg:find(SEGMENT) ~= nil and (n == 0 or seg:sub(-n) == m.suffix)
end

local function rule_matches(rule, segs)
  local want = rule.segments
  if #want ~= #segs then
    return false
  end
  for i = 1, #want do
    if not segment_matches(want[i], segs[i]) then
      return false
    end
  end
  return true
end

-- Options ---------------------------------------------------------------------------------

-- Never forwarded, whatever an allowlist says: credentials, identity, routing and framing.
local NEVER_IN = {
  authorization = true, ["proxy-authorization"] = true, cookie = true, host = true,
  ["x-paperclip-run-id"] = true, forwarded = true, ["x-real-ip"] = true,
  ["content-length"] = true, ["transfer-encoding"] = true, connection = true,
  ["keep-alive"] = true, te = true, trailer = true, upgrade = true, expect = true,
  ["proxy-connection"] = true,
}
-- Never returned: cookies and the framing of the hop.
local NEVER_OUT = {
  ["set-cookie"] = true, ["set-cookie2"] = true, ["content-length"] = true,
  ["transfer-encoding"] = true, connection = true, ["keep-alive"] = true, te = true,
  trailer = true, upgrade = true, ["proxy-authenticate"] = true, ["proxy-connection"] = true,
}

local function header_set(list, field, default, never)
  if list == nil then
    list = default
  elseif type(list) ~= "table" then
    return nil, ("field '%s' must be a list of header names"):format(field)
  end
  local set = {}
  for i, name in ipairs(list) do
    if type(name) ~= "string" or not name:find("^[%w!#%$%%&'%*%+%-%.%^_`|~]+$") then
      return nil, ("field '%s': entry %d is not a header name"):format(field, i)
    end
    name = lower(name)
    if never[name] or name:find("^x%-forwarded%-") then
      return nil, ("field '%s': %s may never be allowed"):format(field, name)
    end
    set[name] = true
  end
  return set
end

local function positive_integer(v, field, default)
  if v == nil then
    return default
  elseif math.type(v) ~= "integer" or v < 1 then
    return nil, ("field '%s' must be a positive integer"):format(field)
  end
  return v
end

local Policy = { __name = "host.bridge_policy.Policy" }
Policy.__index = Policy

--- new(opts) -> Policy; raises on misuse (the message names the bad field or rule). opts:
---   token              the per-run token the sandbox presents (required; >= 32 visible ASCII)
---   routes             extra rules {method = "GET", pattern = "/api/x/:id"} after the defaults
---   max_request_body   bytes (default DEFAULT_MAX_BODY)
---   max_response_body  bytes (default DEFAULT_MAX_BODY): for the forwarder to enforce
---   request_headers    names forwarded (replaces DEFAULT_REQUEST_HEADERS)
---   response_headers   names returned (replaces DEFAULT_RESPONSE_HEADERS)
function M.new(opts)
  local function bad(msg)
    error("bad argument #1 to 'new' (" .. msg .. ")", 3)
  end
  if type(opts) ~= "table" then
    bad("table expected, got " .. type(opts))
  end
  local token = opts.token
  if type(token) ~= "string" or #token < 32 or not token:find("^[\33-\126]+$") then
    bad("field 'token' must be a string of at least 32 visible ASCII characters")
  end
  local self = setmetatable({ token = token, rules = {}, by_method = {} }, Policy)
  local settings = {
    { "max_request_body", positive_integer, M.DEFAULT_MAX_BODY },
    { "max_response_body", positive_integer, M.DEFAULT_MAX_BODY },
    { "request_headers", header_set, M.DEFAULT_REQUEST_HEADERS, NEVER_IN },
    { "response_headers", header_set, M.DEFAULT_RESPONSE_HEADERS, NEVER_OUT },
  }
  for _, s in ipairs(settings) do
    local field, read = s[1], s[2]
    local value, err = read(opts[field], field, s[3], s[4])
    if value == nil then
      bad(err)
    end
    self[field] = value
  end

  if opts.routes ~= nil and type(opts.routes) ~= "table" then
    bad("field 'routes' must be a list of rules")
  end
  local all = {}
  for i, rule in ipairs(routes.rules) do
    all[#all + 1] = { rule, "default route " .. i }
  end
  for i, rule in ipairs(opts.routes or {}) do
    all[#all + 1] = { rule, "route " .. i }
  end
  for _, entry in ipairs(all) do
    local rule, label = entry[1], entry[2]
    local compiled, why = compile_rule(rule)
    if not compiled then
      local shown = type(rule) == "table"
        and (" (%s %s)"):format(show(tostring(rule.method)), show(tostring(rule.pattern))) or ""
      bad(label .. shown .. ": " .. why)
    end
    self.rules[#self.rules + 1] = compiled
    local list = self.by_method[compiled.method] or {}
    list[#list + 1] = compiled
    self.by_method[compiled.method] = list
  end
  return self
end

--- policy:allows(method, path) -> boolean: some rule has exactly this method (no HEAD to GET
--- mapping) and a pattern matching the canonical path.
function Policy:allows(method, path)
  local segs = segments(path)
  for _, rule in ipairs(self.by_method[method] or {}) do
    if rule_matches(rule, segs) then
      return true
    end
  end
  return false
end

-- Requests --------------------------------------------------------------------------------

-- The values of every header named `name` (lowercase), in order.
local function values_of(headers, name)
  local out = {}
  for _, h in ipairs(headers) do
    if lower(h[1]) == name then
      out[#out + 1] = h[2]
    end
  end
  return out
end

local function token_ok(self, headers)
  local auth = values_of(headers, "authorization")
  if #auth ~= 1 or auth[1]:sub(1, 7) ~= "Bearer " then
    return false
  end
  local presented = auth[1]:sub(8)
  return #presented == #self.token and util.constant_time_equal(presented, self.token)
end

-- -> length (integer or nil), chunked | nil: the body framing, or nil when it is ambiguous.
local function framing(req)
  local length
  for _, raw in ipairs(values_of(req.headers, "content-length")) do
    local v = trim(raw)
    if not v:find("^%d+$") or #v > 15 then
      return nil
    end
    local n = math.tointeger(tonumber(v))
    if length and n ~= length then
      return nil
    end
    length = n
  end
  local given = req.body_length
  if given ~= nil then
    given = math.tointeger(given)
    if not given or given < 0 or (length and given ~= length) then
      return nil
    end
    length = given
  end
  local chunked = req.chunked == true
  local te = values_of(req.headers, "transfer-encoding")
  if #te > 0 then
    if lower(trim(concat(te, ", "))) ~= "chunked" or req.chunked == false then
      return nil -- only a lone "chunked", read as such by the transport, is understood
    end
    chunked = true
  end
  if chunked and length then
    return nil
  end
  return length, chunked
end

-- True when the media type (before ";", trimmed, lowercased) is application/json or +json.
local function is_json(content_type)
  local media = lower(trim(content_type:match("^[^;]*")))
  if not media:find("^[%w!#%$&%^_%.%+%-]+/[%w!#%$&%^_%.%+%-]+$") then
    return false
  end
  return media == "application/json" or media:sub(-5) == "+json"
end

local function check_req(req)
  if type(req) ~= "table" then
    error("bad argument #1 to 'check_request' (table expected, got " .. type(req) .. ")", 3)
  end
  local function bad(msg)
    error("bad argument #1 to 'check_request' (" .. msg .. ")", 4)
  end
  if type(req.method) ~= "string" then bad("field 'method' must be a string") end
  if type(req.target) ~= "string" then bad("field 'target' must be a string") end
  if type(req.headers) ~= "table" then bad("field 'headers' must be a list") end
  for i, h in ipairs(req.headers) do
    if type(h) ~= "table" or type(h[1]) ~= "string" or type(h[2]) ~= "string" then
      bad(("header %d must be {name, value} strings"):format(i))
    end
  end
  if req.body_length ~= nil and type(req.body_length) ~= "number" then
    bad("field 'body_length' must be a number")
  end
end

--- policy:check_request(req) -> decision | nil, status, message
--- req = { method, target (raw request-target), headers = { {name, value}, ... } as received,
--- body_length (Content-Length, or nil), chunked (boolean) }. Checks, first failure answers:
--- token (401), target (400), route (403), body framing (400), JSON content type (415), size
--- (413), header values (400). decision = { method, path, query, headers (the allowlisted
--- ones, lowercase names, repeats joined with ", "), max_body, body_length, chunked }.
function Policy:check_request(req)
  check_req(req)
  local headers = req.headers
  if not token_ok(self, headers) then
    return fail("bad_token")
  end

  local path, query = M.canonical_target(req.target)
  if not path then
    return fail("bad_target", query)
  end

  local method = upper(req.method)
  if not self:allows(method, path) then
    return fail("route_denied", show(method), path)
  end

  local length, chunked = framing(req)
  if chunked == nil then
    return fail("bad_framing")
  end
  if chunked or (length or 0) > 0 then
    local types = values_of(headers, "content-type")
    if #types ~= 1 or not is_json(types[1]) then
      return fail("not_json")
    end
  end
  if length and length > self.max_request_body then
    return fail("too_large", self.max_request_body)
  end

  local out, at = {}, {}
  for _, h in ipairs(headers) do
    local name, value = h[1], h[2]
    if value:find("[%z\1-\8\10-\31\127]") then -- controls other than HTAB: CR, LF, NUL, ...
      return fail("bad_header", show(name))
    end
    name = lower(name)
    value = trim(value)
    if self.request_headers[name] and value ~= "" then
      if at[name] then
        out[at[name]][2] = out[at[name]][2] .. ", " .. value
      else
        out[#out + 1] = { name, value }
        at[name] = #out
      end
    end
  end

  return { method = method, path = path, query = query, headers = out,
    max_body = self.max_request_body, body_length = length, chunked = chunked }
end

-- Responses -------------------------------------------------------------------------------

-- headers as a list of {name, value}: a list is taken as it is, a map name -> value is sorted
-- by name (so the result does not depend on pairs order).
local function header_pairs(headers)
  if headers[1] ~= nil or next(headers) == nil then
    return headers
  end
  local list = {}
  for name, value in pairs(headers) do
    list[#list + 1] = { name, value }
  end
  table.sort(list, function(a, b)
    return a[1] < b[1]
  end)
  return list
end

--- policy:filter_response(status, headers) -> status, headers
--- Keeps only the allowlisted response headers (lowercase names, trimmed non-empty values
--- without CR, LF or NUL, repeats joined with ", "), as a list of {name, value}; headers may
--- be that list or a map name -> value. The status passes unchanged (a 3xx too: the forwarder
--- never follows redirects), except that a response marked x-paperclip-bridge-outcome:
--- indeterminate becomes 409, as upstream's gateway does: the agent must not retry it.
function Policy:filter_response(status, headers)
  if math.type(status) ~= "integer" then
    error("bad argument #1 to 'filter_response' (integer expected, got " .. type(status) .. ")",
      2)
  end
  if type(headers) ~= "table" then
    error("bad argument #2 to 'filter_response' (table expected, got " .. type(headers) .. ")",
      2)
  end
  local out, at, indeterminate = {}, {}, false
  for _, h in ipairs(header_pairs(headers)) do
    local name, value = h[1], h[2]
    if type(name) == "string" and type(value) == "string" then
      name, value = lower(name), trim(value)
      if name == M.OUTCOME_HEADER and value == "indeterminate" then
        indeterminate = true
      end
      if self.response_headers[name] and value ~= "" and not value:find("[%z\r\n]") then
        if at[name] then
          out[at[name]][2] = out[at[name]][2] .. ", " .. value
        else
          out[#out + 1] = { name, value }
          at[name] = #out
        end
      end
    end
  end
  if indeterminate then
    status = M.CATALOGUE.indeterminate.status
  end
  return status, out
end

M.Policy = Policy
return M
