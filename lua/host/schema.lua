-- host.schema: provider config schemas: definition checks, normalization, manifest JSON schema.
local json = require("host.json")
local util = require("host.util")

local M = {}

local Schema = {}
Schema.__index = Schema

local math_type, floor, ceil, huge = math.type, math.floor, math.ceil, math.huge
local format, concat, sort = string.format, table.concat, table.sort

local MAX_SAFE = 9007199254740991 -- Number.MAX_SAFE_INTEGER: what a JS peer holds exactly
local MAX_ITEM_ERRORS = 10 -- per field, so a huge bad array does not flood the reply

local TYPES = { "string", "integer", "number", "boolean", "array", "map" }
local ELEMENT_TYPES = { "string", "integer", "number", "boolean" }
local OPTIONS = {
  "required",
  "default",
  "between",
  "min_length",
  "max_length",
  "one_of",
  "elements",
  "secret",
  "trim",
  "blank",
  "truncate",
  "comma_list",
  "pattern",
  "message",
  "check",
  "title",
  "description",
  "ui",
  "loose",
  "fill",
  "form_default",
  "normalize",
}
local BLANK = { "default", "null", "error" }

local function set_of(list)
  local s = {}
  for _, v in ipairs(list) do
    s[v] = true
  end
  return s
end
local IS_TYPE, IS_ELEMENT_TYPE = set_of(TYPES), set_of(ELEMENT_TYPES)
local IS_OPTION, IS_BLANK = set_of(OPTIONS), set_of(BLANK)

local ARTICLE = {
  string = "a string",
  integer = "an integer",
  number = "a number",
  boolean = "a boolean",
  array = "an array",
  map = "an object",
}

------------------------------------------------------------------------------------------------
-- Small helpers

local trim = util.trim

local function is_blank(s)
  return s:find("%S") == nil
end

local function show_number(n)
  if n ~= n then
    return "NaN"
  elseif n == huge or n == -huge then
    return n > 0 and "Infinity" or "-Infinity"
  end
  return (json.encode(n))
end

-- A value as it would read in JSON, for messages; long strings are cut short.
local function show_value(v)
  if v == nil then
    return "nothing"
  elseif type(v) == "number" then
    return show_number(v)
  elseif type(v) == "string" and #v > 60 then
    v = v:sub(1, 60):gsub("[\192-\255][\128-\191]*$", "") .. "..."
  end
  return (json.pretty(v)) or tostring(v)
end

-- True when every key of t is 1..n with no holes (an empty table counts).
local function is_list(t)
  local n = 0
  for k in pairs(t) do
    if math_type(k) ~= "integer" or k < 1 then
      return false
    end
    n = n + 1
  end
  return n == #t
end

-- The JSON-ish name of a value's type, for "expected ..., got <what>".
local function describe(v)
  if v == json.null then
    return "null"
  elseif type(v) == "table" then
    if json.is_array(v) or (next(v) ~= nil and is_list(v)) then
      return "array"
    end
    return "object"
  end
  return type(v)
end

-- JavaScript's Number(string), which upstream applies before Math.trunc: whitespace trimmed,
-- "" is 0, decimal with exponent, [+-]Infinity, 0x/0o/0b. nil where JS gives NaN.
local RADIX = { x = 16, o = 8, b = 2 }
local function js_number(s)
  s = trim(s)
  if s == "" then
    return 0
  end
  local sign = s:match("^([+-]?)Infinity$")
  if sign then
    return sign == "-" and -huge or huge
  end
  local prefix, digits = s:match("^0([xXoObB])(%w+)$")
  if prefix then
    local base, n = RADIX[prefix:lower()], 0.0 -- a float, so long inputs cannot wrap around
    for c in digits:gmatch(".") do
      local d = tonumber(c, base)
      if not d then
        return nil
      end
      n = n * base + d
    end
    return n
  end
  local mantissa = s:match("^[+-]?([%d.]+)[eE][+-]?%d+$") or s:match("^[+-]?([%d.]+)$")
  if not mantissa or not (mantissa:find("^%d+%.?%d*$") or mantissa:find("^%.%d+$")) then
    return nil
  end
  return tonumber(s)
end

-- Math.trunc for a finite number, as a Lua integer when it fits.
local function trunc(n)
  if math_type(n) == "integer" then
    return n
  end
  return n >= 0 and floor(n) or ceil(n)
end

local function deep_copy(v)
  if type(v) ~= "table" then
    return v
  end
  local t = {}
  for k, x in pairs(v) do
    t[k] = deep_copy(x)
  end
  if json.is_array(v) then
    json.array(t)
  end
  return t
end

-- Edit distance, for "did you mean" hints on misspelt options and types.
local function distance(a, b)
  local prev = {}
  for j = 0, #b do
    prev[j] = j
  end
  for i = 1, #a do
    local cur = { [0] = i }
    for j = 1, #b do
      local cost = a:byte(i) == b:byte(j) and 0 or 1
      cur[j] = math.min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + cost)
    end
    prev = cur
  end
  return prev[#b]
end

local function suggest(word, list)
  local best, best_d = nil, 3
  for _, cand in ipairs(list) do
    local d = distance(word:lower(), cand)
    if d < best_d then
      best, best_d = cand, d
    end
  end
  return best and format(' (did you mean "%s"?)', best) or ""
end

local function quoted_list(list)
  local out = {}
  for i, v in ipairs(list) do
    out[i] = show_value(v)
  end
  return concat(out, ", ")
end

------------------------------------------------------------------------------------------------
-- Values: coerce (type and conversions) then constrain (ranges, lengths, enums, patterns).
-- Both return nil, "path: text" on failure. `f` is a field; `vtype` the type being checked
-- (the field's own type, or its element type inside an array or map).

-- JavaScript's String(n) for a finite number.
local function js_string(n)
  if math_type(n) == "integer" then
    return format("%d", n)
  end
  return (json.encode(n))
end

-- `loose` fields read a value as upstream's JavaScript did, and never fail on its type: a
-- string field takes a finite number as its String() and treats any other non-string as
-- absent; a number field takes Number(v) (numeric strings, booleans as 1 and 0) and treats
-- NaN as absent; a boolean field is true only for true itself. nil means absent.
local function loose_scalar(vtype, v)
  local t = type(v)
  if vtype == "string" then
    if t == "number" and v == v and v ~= huge and v ~= -huge then
      return js_string(v)
    end
    return t == "string" and v or nil
  elseif vtype == "boolean" then
    return v == true
  end
  local n = (t == "number" and v) or (t == "string" and js_number(v))
    or (t == "boolean" and (v and 1 or 0)) or nil
  if n == nil or n ~= n or n == huge or n == -huge then
    return nil
  end
  return n
end

local function coerce_scalar(f, vtype, v, path)
  local t = type(v)
  if f.loose then
    v = loose_scalar(vtype, v)
    if v == nil then
      return nil
    elseif vtype == "string" then
      return f.trim and trim(v) or v
    elseif vtype == "boolean" then
      return v
    end
    t = "number"
  end
  if vtype == "string" then
    if t ~= "string" then
      return nil, path .. ": expected a string, got " .. describe(v)
    end
    return f.trim and trim(v) or v
  elseif vtype == "boolean" then
    if t ~= "boolean" then
      return nil, path .. ": expected a boolean, got " .. describe(v)
    end
    return v
  elseif vtype == "number" then
    if t ~= "number" then
      return nil, path .. ": expected a number, got " .. describe(v)
    elseif v ~= v or v == huge or v == -huge then
      return nil, path .. ": expected a finite number, got " .. show_number(v)
    end
    if v == 0 then
      return math_type(v) == "float" and 0.0 or 0 -- no negative zero
    end
    return v
  end
  -- integer
  if t == "string" and f.truncate then
    local n = js_number(v)
    if not n then
      return nil, path .. ": expected an integer, got a non-numeric string"
    end
    v = n
  elseif t ~= "number" then
    return nil, path .. ": expected an integer, got " .. describe(v)
  end
  if v ~= v or v == huge or v == -huge then
    return nil, path .. ": expected an integer, got " .. show_number(v)
  end
  if math_type(v) == "float" and v ~= floor(v) then
    if not (f.truncate or f.loose) then
      return nil, path .. ": expected an integer, got " .. show_number(v)
    end
    v = trunc(v)
  end
  if v < -MAX_SAFE or v > MAX_SAFE then
    return nil, format("%s: must be between %d and %d", path, -MAX_SAFE, MAX_SAFE), true -- range
  end
  return math.tointeger(v)
end

local function constrain(f, vtype, v, path)
  if f.between and (vtype == "integer" or vtype == "number") then
    local lo, hi = f.between[1], f.between[2]
    if v < lo or v > hi then
      return nil, format("%s: must be between %s and %s", path, show_number(lo), show_number(hi))
    end
  end
  if vtype == "string" then
    local len = (f.min_length or f.max_length) and (utf8.len(v) or #v)
    if f.min_length and len < f.min_length then
      return nil, format("%s: must be at least %d characters long", path, f.min_length)
    end
    if f.max_length and len > f.max_length then
      return nil, format("%s: must be at most %d characters long", path, f.max_length)
    end
    if f.pattern and not v:find(f.pattern) then
      return nil, format("%s: does not match the pattern %s", path, show_value(f.pattern))
    end
  end
  if f.one_of then
    for _, x in ipairs(f.one_of) do
      if x == v then
        return v
      end
    end
    return nil, format("%s: must be one of %s", path, quoted_list(f.one_of))
  end
  return v
end

local function element(f, v, path)
  local x, err = coerce_scalar(f, f.elements, v, path)
  if x == nil then
    return nil, err
  end
  return constrain(f, f.elements, x, path)
end

-- Arrays and maps collect one error per bad item (up to MAX_ITEM_ERRORS) into errs.
local function item_error(errs, err)
  if #errs < MAX_ITEM_ERRORS then
    errs[#errs + 1] = err
  else
    errs.extra = (errs.extra or 0) + 1
  end
end

-- A loose collection drops what upstream's parse drops: items that are not strings (numbers
-- become strings), blank ones, and a whole value of the wrong shape (then empty).
local function loose_item(f, item)
  local x = loose_scalar(f.elements, item)
  if f.elements == "string" and x ~= nil then
    x = trim(x)
    return x ~= "" and x or nil
  end
  return x
end

local function coerce_array(f, v, path, errs)
  local items
  if f.loose and not (type(v) == "string" and f.comma_list)
    and not (type(v) == "table" and v ~= json.null and is_list(v)) then
    return json.array()
  end
  if type(v) == "string" and f.comma_list then
    items = {}
    for part in (v .. ","):gmatch("([^,]*),") do
      items[#items + 1] = part
    end
  elseif type(v) == "table" and v ~= json.null and is_list(v) then
    items = v
  else
    return nil, path .. ": expected an array, got " .. describe(v)
  end
  local out, n = json.array(), 0
  for i = 1, #items do
    local item = items[i]
    if f.comma_list and type(item) == "string" then
      item = trim(item)
    end
    if f.loose then
      item = loose_item(f, item)
    end
    if item ~= nil and not (f.comma_list and item == "") then
      local x, err = element(f, item, path .. ": item " .. i)
      if x == nil then
        item_error(errs, err)
      else
        n = n + 1
        out[n] = x
      end
    end
  end
  return out
end

local function coerce_map(f, v, path, errs)
  if f.loose and (type(v) ~= "table" or v == json.null or (next(v) ~= nil and is_list(v))) then
    return {}
  end
  if type(v) ~= "table" or v == json.null then
    return nil, path .. ": expected an object, got " .. describe(v)
  end
  local keys = {}
  for k in pairs(v) do
    if type(k) ~= "string" then
      local what = describe(v)
      if what == "object" then
        return nil, path .. ": expected an object with string keys"
      end
      return nil, path .. ": expected an object, got " .. what
    end
    keys[#keys + 1] = k
  end
  sort(keys)
  local out = {}
  for _, k in ipairs(keys) do
    if f.loose then
      local key, x = trim(k), loose_item(f, v[k])
      if key ~= "" and x ~= nil then
        out[key] = x
      end
    else
      local x, err = element(f, v[k], path .. ": key " .. show_value(k))
      if x == nil then
        item_error(errs, err)
      else
        out[k] = x
      end
    end
  end
  return out
end

-- The value a field takes when it is absent (nil or null) or blank with blank = "default".
local function absent(f, path)
  if f.fill ~= nil then
    return deep_copy(f.fill)
  elseif f.default ~= nil then
    return deep_copy(f.default)
  elseif f.loose and f.type == "array" then
    return json.array()
  elseif f.loose and f.type == "map" then
    return {}
  elseif f.blank == "null" or f.loose then
    return json.null
  elseif f.required then
    return nil, path .. ": is required"
  end
  return nil
end

local NO_ERRORS = {} -- shared by every success: never written to

-- Normalizes one present value. Returns value (nil = absent) and a list of error texts
-- (NO_ERRORS when there are none, so the common case allocates nothing).
local function normalize_value(f, v, path)
  local x, err
  if f.type == "array" or f.type == "map" then
    local errs = {}
    if f.type == "array" then
      x, err = coerce_array(f, v, path, errs)
    else
      x, err = coerce_map(f, v, path, errs)
    end
    if err then
      errs[#errs + 1] = err
    end
    if errs.extra and errs.extra > 0 then
      errs[#errs + 1] = format("%s: %d more invalid items", path, errs.extra)
    end
    errs.extra = nil
    return x, #errs > 0 and errs or NO_ERRORS
  end
  local range
  x, err, range = coerce_scalar(f, f.type, v, path)
  if x == nil and err == nil then -- a loose field read it as absent
    x, err = absent(f, path)
    return x, err and { err } or NO_ERRORS
  elseif x == nil then
    -- a value of the wrong type: the field's `message` (about its range, pattern, ...) would
    -- not say what is wrong, so the built-in text stays
    return nil, { err, type_error = not range }
  end
  if x ~= nil and f.blank and f.type == "string" and is_blank(x) then
    if f.blank == "error" then
      return nil, { path .. ": must not be blank" }
    elseif f.blank == "null" then
      return json.null, NO_ERRORS
    end
    x, err = absent(f, path)
    return x, err and { err } or NO_ERRORS
  end
  if x ~= nil and f.normalize then
    x = f.normalize(x)
  end
  if x ~= nil then
    x, err = constrain(f, f.type, x, path)
  end
  return x, err and { err } or NO_ERRORS
end

------------------------------------------------------------------------------------------------
-- Definitions

local DefError = {}

local function bad(fmt, ...)
  error(setmetatable({ msg = format(fmt, ...) }, DefError), 0)
end

local function is_integral(n)
  return type(n) == "number" and n == n and n ~= huge and n ~= -huge and n == floor(n)
end

local function check_bool(spec, key)
  if spec[key] ~= nil and type(spec[key]) ~= "boolean" then
    bad("%s must be a boolean, got %s", key, type(spec[key]))
  end
end

local function check_string(spec, key)
  if spec[key] ~= nil and (type(spec[key]) ~= "string" or spec[key] == "") then
    bad("%s must be a non-empty string, got %s", key, describe(spec[key]))
  end
end

-- An option that only makes sense for some value types.
local function only_for(spec, key, vtype, allowed, what)
  if spec[key] ~= nil and not allowed[vtype] then
    bad("%s applies only to %s, not to %s", key, what, vtype)
  end
end

local function check_between(spec, vtype)
  local b = spec.between
  if b == nil then
    return
  end
  if type(b) ~= "table" or #b ~= 2 or not is_list(b) then
    bad("between must be a list of two numbers { min, max }")
  end
  for i = 1, 2 do
    if type(b[i]) ~= "number" or b[i] ~= b[i] or b[i] == huge or b[i] == -huge then
      bad(
        "between must be a list of two finite numbers { min, max }, got %s at %d",
        show_value(b[i]),
        i
      )
    end
    if vtype == "integer" and not is_integral(b[i]) then
      bad("between bounds must be integers for an integer field, got %s", show_number(b[i]))
    end
  end
  if b[1] > b[2] then
    bad("between minimum %s is greater than maximum %s", show_number(b[1]), show_number(b[2]))
  end
  if vtype == "integer" then
    return { math.tointeger(b[1]), math.tointeger(b[2]) }
  end
  return { b[1], b[2] }
end

local function check_lengths(spec)
  for _, key in ipairs({ "min_length", "max_length" }) do
    local n = spec[key]
    if n ~= nil and (not is_integral(n) or n < 0) then
      bad("%s must be a non-negative integer, got %s", key, show_value(n))
    end
  end
  if spec.min_length and spec.max_length and spec.min_length > spec.max_length then
    bad("min_length %d is greater than max_length %d", spec.min_length, spec.max_length)
  end
end

local function check_one_of(spec, vtype)
  local list = spec.one_of
  if list == nil then
    return
  end
  if type(list) ~= "table" or #list == 0 or not is_list(list) then
    bad("one_of must be a non-empty list of allowed values")
  end
  local seen = {}
  for i, v in ipairs(list) do
    local ok = (vtype == "string" and type(v) == "string")
      or (vtype == "number" and type(v) == "number" and v == v)
      or (vtype == "integer" and is_integral(v))
    if not ok then
      bad("one_of value %d (%s) is not %s", i, show_value(v), ARTICLE[vtype])
    end
    if seen[v] then
      bad("one_of lists %s twice", show_value(v))
    end
    seen[v] = true
  end
  local copy = {}
  for i, v in ipairs(list) do
    copy[i] = vtype == "integer" and math.tointeger(v) or v
  end
  return copy
end

local function check_ui(spec)
  local ui = spec.ui
  if ui == nil then
    return
  end
  if type(ui) ~= "table" then
    bad("ui must be a table { advanced = boolean, group = string }, got %s", type(ui))
  end
  for k in pairs(ui) do
    if k ~= "advanced" and k ~= "group" then
      bad("ui has an unknown key %s (known: advanced, group)", show_value(tostring(k)))
    end
  end
  check_bool(ui, "advanced")
  check_string(ui, "group")
end

-- default, fill (applied, not published) or form_default (published, not applied).
local function check_default(f, key)
  key = key or "default"
  local d = f[key]
  if d == nil then
    return
  end
  if f.required then
    bad("a required field cannot have a %s (it would make it optional)", key)
  elseif f.secret and key ~= "fill" then
    bad("a secret field cannot have a %s (defaults are published in the manifest)", key)
  elseif f.blank == "null" and key ~= "form_default" then
    bad('blank = "null" and a %s exclude each other (an absent value becomes the %s)', key, key)
  end
  local lua_type = ({ integer = "number", array = "table", map = "table" })[f.type] or f.type
  if type(d) ~= lua_type or d == json.null then
    bad("%s must be %s, got %s", key, ARTICLE[f.type], describe(d))
  end
  if f.type == "integer" and not is_integral(d) then
    bad("%s must be an integer, got %s", key, show_number(d))
  end
  if f.type == "string" and f.blank and is_blank(d) then
    bad('%s is blank, which blank = "%s" does not allow', key, f.blank)
  end
  local v, errs = normalize_value(f, d, key)
  if #errs > 0 then
    bad("invalid %s", errs[1])
  end
  return v
end

-- The name and type a field spec starts with, and no option this module does not know.
local function check_head(spec)
  if type(spec) ~= "table" then
    bad("expected a table { name, type, ... }, got %s", type(spec))
  end
  local name, ftype = spec[1], spec[2]
  if type(name) ~= "string" or not name:find("^[%a_][%w_%-]*$") then
    bad('the name (first value) must be a string like "timeoutMs", got %s', show_value(name))
  end
  if type(ftype) ~= "string" or not IS_TYPE[ftype] then
    local hint = type(ftype) == "string" and suggest(ftype, TYPES) or ""
    bad("the type (second value) must be one of %s, got %s%s", concat(TYPES, ", "),
      show_value(ftype), hint)
  end
  for k in pairs(spec) do
    if type(k) ~= "string" then
      if k ~= 1 and k ~= 2 then
        bad("unexpected positional value at [%s] (options are written name = value)", tostring(k))
      end
    elseif not IS_OPTION[k] then
      bad("unknown option %s%s", show_value(k), suggest(k, OPTIONS))
    end
  end
  return name, ftype
end

-- The type of the values a field checks: its elements' for an array or a map.
local function value_type(f)
  local collection = f.type == "array" or f.type == "map"
  if collection then
    if f.elements == nil then
      bad("a %s field needs elements = one of %s", f.type, concat(ELEMENT_TYPES, ", "))
    elseif type(f.elements) ~= "string" or not IS_ELEMENT_TYPE[f.elements] then
      local hint = type(f.elements) == "string" and suggest(f.elements, ELEMENT_TYPES) or ""
      bad("elements must be one of %s, got %s%s", concat(ELEMENT_TYPES, ", "),
        show_value(f.elements), hint)
    end
  elseif f.elements ~= nil then
    bad("elements applies only to array and map fields, not to %s", f.type)
  end
  return collection and f.elements or f.type
end

local NUMBERS = { integer = true, number = true }
local STRINGS = { string = true }
-- Options that apply to some types only: of the values (value) or of the field itself (field).
local APPLIES_TO = {
  { "between", "value", NUMBERS, "integer and number values" },
  { "min_length", "value", STRINGS, "string values" },
  { "max_length", "value", STRINGS, "string values" },
  { "pattern", "value", STRINGS, "string values" },
  { "trim", "value", STRINGS, "string values" },
  { "one_of", "value", { string = true, integer = true, number = true },
    "string, integer and number values" },
  { "truncate", "value", { integer = true }, "integer values" },
  { "secret", "field", STRINGS, "string fields" },
  { "blank", "field", STRINGS, "string fields" },
}

-- Each option's own type, and only on the types it applies to.
local function check_option_types(f, vtype)
  for _, k in ipairs({ "required", "secret", "trim", "truncate", "comma_list", "loose" }) do
    check_bool(f, k)
  end
  for _, k in ipairs({ "message", "title", "description" }) do
    check_string(f, k)
  end
  for _, a in ipairs(APPLIES_TO) do
    only_for(f, a[1], a[2] == "value" and vtype or f.type, a[3], a[4])
  end
  if f.comma_list ~= nil and not (f.type == "array" and f.elements == "string") then
    bad("comma_list applies only to arrays of strings")
  end
  if f.blank ~= nil and not IS_BLANK[f.blank] then
    bad("blank must be one of %s, got %s", quoted_list(BLANK), show_value(f.blank))
  end
  if f.pattern ~= nil then
    if type(f.pattern) ~= "string" then
      bad("pattern must be a Lua pattern string, got %s", type(f.pattern))
    end
    local ok, err = pcall(string.find, "", f.pattern)
    if not ok then
      bad("pattern %s is not a valid Lua pattern: %s", show_value(f.pattern),
        tostring(err):gsub("^.-:%d+: ", ""))
    end
  end
  if f.check ~= nil and type(f.check) ~= "function" then
    bad("check must be a function(value, config, mode), got %s", type(f.check))
  end
  if f.normalize ~= nil and type(f.normalize) ~= "function" then
    bad("normalize must be a function(value) -> value, got %s", type(f.normalize))
  end
end

-- Options that exclude each other.
local function check_exclusions(f)
  if f.blank == "null" and f.required then
    bad('blank = "null" and required exclude each other (a blank value becomes null)')
  end
  if f.fill ~= nil and f.default ~= nil then
    bad("fill and default exclude each other (fill is a default the manifest does not show)")
  end
  if f.loose and f.required then
    bad("a loose field cannot be required (a value of the wrong type reads as absent)")
  end
end

local function build_field(spec)
  local name, ftype = check_head(spec)
  local f = { name = name, type = ftype }
  for _, k in ipairs(OPTIONS) do
    f[k] = spec[k]
  end
  local vtype = value_type(f)
  check_option_types(f, vtype)
  check_exclusions(f)
  f.between = check_between(f, vtype)
  check_lengths(f)
  f.one_of = check_one_of(f, vtype)
  check_ui(f)
  f.default = check_default(f)
  f.fill = check_default(f, "fill")
  f.form_default = check_default(f, "form_default")
  return f
end

-- A list of field names (error_order, output_order): every name a field or a check.
local function check_order(self, key, list)
  if list == nil then
    return nil
  end
  if type(list) ~= "table" or not is_list(list) then
    bad("%s must be a list of field and check names", key)
  end
  for _, name in ipairs(list) do
    if not (self.by_name[name] or self.check_by_name[name]) then
      bad("%s names %s, which is neither a field nor a check", key, show_value(name))
    end
  end
  return list
end

local function build_checks(self, checks)
  self.checks, self.check_by_name = {}, {}
  if checks == nil then
    return
  end
  if type(checks) ~= "table" or not is_list(checks) then
    bad("checks must be a list of { name =, fn = function(config, mode) } tables")
  end
  for i, c in ipairs(checks) do
    if type(c) ~= "table" or type(c.name) ~= "string" or type(c.fn) ~= "function" then
      bad("check %d must be a table { name = string, fn = function(config, mode) }", i)
    elseif self.by_name[c.name] or self.check_by_name[c.name] then
      bad("check %d: the name %s is taken", i, show_value(c.name))
    end
    self.checks[i] = { name = c.name, fn = c.fn }
    self.check_by_name[c.name] = self.checks[i]
  end
end

local function build(fields, opts)
  if type(fields) ~= "table" or not is_list(fields) then
    bad("schema.new expects a list of field specs { { name, type, ... }, ... }")
  end
  if opts ~= nil and type(opts) ~= "table" then
    bad("schema.new's options must be a table { checks, error_order, output_order }")
  end
  opts = opts or {}
  for k in pairs(opts) do
    if k ~= "checks" and k ~= "error_order" and k ~= "output_order" then
      bad("unknown schema option %s (known: checks, error_order, output_order)", show_value(k))
    end
  end
  local self = setmetatable({ fields = {}, names = {}, by_name = {} }, Schema)
  for i, spec in ipairs(fields) do
    local ok, f = pcall(build_field, spec)
    if not ok then
      if getmetatable(f) == DefError then
        local name = type(spec) == "table" and type(spec[1]) == "string" and spec[1]
        f.msg = format("field %d%s: %s", i, name and " (" .. name .. ")" or "", f.msg)
      end
      error(f, 0)
    end
    local first = self.by_name[f.name]
    if first then
      bad("field %d (%s): duplicate name (also field %d)", i, f.name, first.index)
    end
    f.index = i
    self.fields[i], self.names[i], self.by_name[f.name] = f, f.name, f
    self.has_checks = self.has_checks or f.check ~= nil
    self.has_secrets = self.has_secrets or f.secret == true
  end
  build_checks(self, opts.checks)
  self.error_order = check_order(self, "error_order", opts.error_order)
  self.output_order = check_order(self, "output_order", opts.output_order)
  return self
end

--- Builds a schema from a list of field specs `{ name, type, option = value, ... }` and
--- options: checks (cross-field rules: { { name =, fn = function(config, mode) -> errors?,
--- warnings? }, ... }, run after the fields, in order), error_order (names of fields and
--- checks: the order errors are reported in; others follow in field order) and output_order
--- (the key order of normalizedConfig). Raises "bad schema: field N (name): problem" on a bad
--- definition (unknown type or option, default of the wrong type, duplicate name, ...),
--- blamed on the caller's line.
function M.new(fields, opts)
  local ok, res = pcall(build, fields, opts)
  if not ok then
    if getmetatable(res) == DefError then
      error("bad schema: " .. res.msg, 2)
    end
    error(res, 0)
  end
  return res
end

--- js_number(s) -> number | nil: JavaScript's Number(s) for a string (whitespace trimmed, ""
--- is 0, exponents, [+-]Infinity, 0x/0o/0b); nil where JavaScript gives NaN. Providers that
--- mirror an upstream's `Number(raw)` parsing use it.
M.js_number = js_number

--- True when `v` is a schema made by `new`.
function M.is_schema(v)
  return getmetatable(v) == Schema
end

--- The field named `name` (a table with name, type and the options), or nil.
function Schema:field(name)
  return self.by_name[name]
end

------------------------------------------------------------------------------------------------
-- Normalization

local function add_texts(list, v)
  if type(v) == "string" then
    list[#list + 1] = v
  elseif type(v) == "table" then
    for _, s in ipairs(v) do
      list[#list + 1] = tostring(s)
    end
  end
end

local function dedupe(list)
  local seen, out = {}, {}
  for _, s in ipairs(list) do
    if not seen[s] then
      seen[s] = true
      out[#out + 1] = s
    end
  end
  return out
end

--- Validates and normalizes a config table. Returns normalized, errors, warnings: errors and
--- warnings are json.array lists of strings. `normalized` has every declared field that has a
--- value (defaults and fills applied; blank = "null" and loose fields absent or blank are
--- json.null); unknown keys are dropped. It is a plain table (no key order), so replies
--- carrying it stay on json.encode's fast path; `Schema:output` orders it for a reply and
--- `Schema:config` gives the view hooks read (nil for null). It is meaningful only when
--- errors is empty. A field's `check(value, config, mode)` runs after every field is
--- normalized, only when the value is present (not nil or null) and valid; the schema's
--- checks `fn(config, mode)` run after those. mode is "validate" in environmentValidateConfig
--- and "call" otherwise (default "validate"), so a rule can apply to one of them only. A check
--- returns nothing when fine, or an error (string or list), optionally followed by a warning
--- (string or list). Errors come in error_order, then field order; warnings in field order,
--- then check order. A field's `message` replaces the built-in error texts for that field,
--- except that a scalar of the wrong type (a non-numeric string for an integer, a number for a
--- string, ...) keeps the built-in "name: expected ..." text: a range message would mislead.
--- Never raises on bad input.
function Schema:normalize(config, mode)
  mode = mode or "validate"
  local normalized = {}
  local errors, warnings = json.array(), json.array()
  if type(config) ~= "table" or config == json.null or next(config) ~= nil and is_list(config) then
    errors[1] = "config must be an object"
    return normalized, errors, warnings
  end
  local fields = self.fields
  local found_errors, found_warnings = {}, {} -- name -> list, only for names that have some
  local function add(list, name, v)
    if v ~= nil then
      list[name] = list[name] or {}
      add_texts(list[name], v)
    end
  end
  for i = 1, #fields do
    local f = fields[i]
    local raw = config[f.name]
    local value, errs
    if raw == nil or raw == json.null then
      local err
      value, err = absent(f, f.name)
      errs = err and { err } or NO_ERRORS
    else
      value, errs = normalize_value(f, raw, f.name)
    end
    if #errs > 0 then
      found_errors[f.name] = f.message and not errs.type_error and { f.message } or errs
    else
      normalized[f.name] = value
    end
  end
  for i = 1, self.has_checks and #fields or 0 do
    local f = fields[i]
    local value = normalized[f.name]
    if f.check and not found_errors[f.name] and value ~= nil and value ~= json.null then
      local ok, err, warn = pcall(f.check, value, normalized, mode)
      if not ok then
        err, warn = f.name .. ": check failed: " .. tostring(err), nil
      end
      add(found_errors, f.name, err)
      add(found_warnings, f.name, warn)
    end
  end
  for _, c in ipairs(self.checks) do
    local ok, err, warn = pcall(c.fn, normalized, mode)
    if not ok then
      err, warn = c.name .. ": check failed: " .. tostring(err), nil
    end
    add(found_errors, c.name, err)
    add(found_warnings, c.name, warn)
  end
  local function collect(found, out, first)
    if next(found) == nil then
      return
    end
    local seen = {}
    local function take(name)
      if not seen[name] then
        seen[name] = true
        for _, text in ipairs(found[name] and dedupe(found[name]) or NO_ERRORS) do
          out[#out + 1] = text
        end
      end
    end
    for _, name in ipairs(first or NO_ERRORS) do
      take(name)
    end
    for _, name in ipairs(self.names) do
      take(name)
    end
    for _, c in ipairs(self.checks) do
      take(c.name)
    end
  end
  collect(found_errors, errors, self.error_order)
  collect(found_warnings, warnings, nil)
  return normalized, errors, warnings
end

--- output(normalized) -> normalizedConfig as a reply carries it: every field of the schema
--- that has a value or is null, key-ordered by output_order when the schema has one (an
--- unordered table otherwise: the fast path of json.encode).
function Schema:output(normalized)
  return self.output_order and json.ordered(normalized, self.output_order) or normalized
end

--- config(normalized) -> the view hooks read as ctx.config: a copy in which null is nil.
function Schema.config(_, normalized)
  local out = {}
  for k, v in pairs(normalized) do
    if v ~= json.null then
      out[k] = v
    end
  end
  return out
end

--- The string values of secret fields in `config` (raw and trimmed; blank ones skipped), as a
--- json.array list, for log redaction.
function Schema:secrets(config)
  local out, seen = json.array(), {}
  if type(config) ~= "table" or not self.has_secrets then
    return out
  end
  for _, f in ipairs(self.fields) do
    local v = f.secret and config[f.name]
    if type(v) == "string" and not is_blank(v) then
      for _, s in ipairs({ v, trim(v) }) do
        if s ~= "" and not seen[s] then
          seen[s] = true
          out[#out + 1] = s
        end
      end
    end
  end
  return out
end

------------------------------------------------------------------------------------------------
-- Manifest

-- Upstream declares integer fields (timeoutMs, sshPort) as "number"; so do we.
local JSON_TYPE = {
  string = "string",
  integer = "number",
  number = "number",
  boolean = "boolean",
  array = "array",
  map = "object",
}

local function ordered_builder()
  local t, keys = {}, {}
  return t,
    keys,
    function(k, v)
      if v ~= nil then
        t[k] = v
        keys[#keys + 1] = k
      end
    end
end

-- The value constraints, on the property itself or on its items / additionalProperties.
local function put_constraints(put, f)
  put("enum", f.one_of and json.array(deep_copy(f.one_of)))
  put("minimum", f.between and f.between[1])
  put("maximum", f.between and f.between[2])
  put("minLength", f.min_length)
  put("maxLength", f.max_length)
end

local function property(f)
  local p, keys, put = ordered_builder()
  put("type", JSON_TYPE[f.type])
  put("format", f.secret and "secret-ref" or nil)
  put("title", f.title)
  put("description", f.description)
  put("default", deep_copy(f.form_default ~= nil and f.form_default or f.default))
  if f.type == "array" or f.type == "map" then
    local items, item_keys, put_item = ordered_builder()
    put_item("type", JSON_TYPE[f.elements])
    put_constraints(put_item, f)
    put(f.type == "array" and "items" or "additionalProperties", json.ordered(items, item_keys))
  else
    put_constraints(put, f)
  end
  if f.ui then
    put("x-paperclip-advanced", f.ui.advanced or nil)
    put("x-paperclip-group", f.ui.group)
  end
  return json.ordered(p, keys)
end

--- The configSchema for the Paperclip manifest: { type = "object", properties, required? },
--- every object key-ordered (properties in field order) so the output is stable.
function Schema:json_schema()
  local props = {}
  local required = json.array()
  for _, f in ipairs(self.fields) do
    props[f.name] = property(f)
    if f.required then
      required[#required + 1] = f.name
    end
  end
  local out = { type = "object", properties = json.ordered(props, self.names) }
  if #required > 0 then
    out.required = required
  end
  return json.ordered(out, { "type", "properties", "required" })
end

return M
