-- host.json: lua-cjson 2.1.0 with exact integers, marked arrays, key order and surrogate repair.
local cjson = require("cjson.safe").new()

local M = {}

--- The JSON null value (cjson's lightuserdata null).
M.null = cjson.null

-- JSON has no NaN, Infinity or hex numbers; cjson accepts them on decode unless told not to.
cjson.decode_invalid_numbers(false)
cjson.encode_invalid_numbers(false)

local MAX_DEPTH = 1000 -- cjson's own default for both directions
local SAFE = 2 ^ 53 -- floats above this are not integers a JS peer can hold exactly
local PLAIN = 1e14 -- cjson prints numbers with 14 significant digits: below this, exactly

local math_type, floor, tointeger = math.type, math.floor, math.tointeger
local concat, sort = table.concat, table.sort
local format, byte = string.format, string.byte

-- Marks live in weak-keyed tables so marked tables keep their own metatables (if any). They
-- are kept in the registry, so a second copy of this module (busted's insulation reloads
-- modules per spec file while helpers keep the first copy) sees the same marks.
local function shared_marks()
  local reg = debug and debug.getregistry and debug.getregistry()
  local m = reg and reg["host.json.marks"]
  if not m then
    m = { arrays = setmetatable({}, { __mode = "k" }), orders = setmetatable({}, { __mode = "k" }) }
    if reg then
      reg["host.json.marks"] = m
    end
  end
  return m
end
local marks = shared_marks()
local arrays, orders = marks.arrays, marks.orders

local function fail(msg)
  return nil, "json: " .. msg, "json"
end

--- Marks `t` (a new table when nil) as a JSON array, so that it encodes as `[]` when empty.
--- Returns `t`. Clears an `ordered` mark.
function M.array(t)
  if t == nil then
    t = {}
  elseif type(t) ~= "table" then
    error("bad argument #1 to 'array' (table expected, got " .. type(t) .. ")", 2)
  end
  arrays[t], orders[t] = true, nil
  return t
end

--- True when `t` carries an `array` mark.
function M.is_array(t)
  return arrays[t] == true
end

--- Marks `t` as a JSON object whose keys are emitted in the order of the list `keys`
--- (keys missing from `t` are skipped, keys of `t` not listed follow, sorted). Returns `t`.
--- Clears an `array` mark.
function M.ordered(t, keys)
  if type(t) ~= "table" then
    error("bad argument #1 to 'ordered' (table expected, got " .. type(t) .. ")", 2)
  end
  if type(keys) ~= "table" then
    error("bad argument #2 to 'ordered' (table expected, got " .. type(keys) .. ")", 2)
  end
  for i, k in ipairs(keys) do
    if type(k) ~= "string" then
      local what = "key " .. i .. " is a " .. type(k) .. ", not a string"
      error("bad argument #2 to 'ordered' (" .. what .. ")", 2)
    end
  end
  orders[t], arrays[t] = keys, nil
  return t
end

--- The key list given to `ordered` for `t`, or nil.
function M.order_of(t)
  return orders[t]
end

------------------------------------------------------------------------------------------------
-- Decoding

-- cjson hands back every number as a float; give integral ones back their integer subtype
-- (so "id=" .. id reads "id=1"). Floats beyond 2^53 were already rounded and stay floats.
local function integerize(v)
  if math_type(v) == "float" and v == floor(v) and v >= -SAFE and v <= SAFE then
    return tointeger(v)
  end
  return v
end

local function normalize(t)
  for k, v in pairs(t) do
    if type(v) == "table" then
      normalize(v)
    elseif math_type(v) == "float" then
      t[k] = integerize(v) -- assigning an existing field is allowed during traversal
    end
  end
end

-- Node's JSON.stringify writes lone surrogates as \ud800; cjson 2.1.0 rejects them. Replace
-- each escape that is not half of a proper high+low pair by \ufffd (what Node itself writes
-- when such a string reaches a UTF-8 stream). Escaped backslashes are skipped as pairs.
local function repair_surrogates(s)
  local out, n, pos = {}, 0, 1
  local i = s:find("\\", 1, true)
  while i do
    local nxt = i + 2
    if byte(s, i + 1) == 117 then -- \u
      local cp = tonumber(s:match("^%x%x%x%x", i + 2) or "", 16)
      if cp and cp >= 0xD800 and cp <= 0xDFFF then
        local lo = cp <= 0xDBFF and tonumber(s:match("^\\u(%x%x%x%x)", i + 6) or "", 16)
        if lo and lo >= 0xDC00 and lo <= 0xDFFF then
          nxt = i + 12
        else
          n = n + 1
          out[n] = s:sub(pos, i - 1) .. "\\ufffd"
          pos, nxt = i + 6, i + 6
        end
      end
    end
    i = s:find("\\", nxt, true)
  end
  if n == 0 then
    return nil
  end
  out[n + 1] = s:sub(pos)
  return concat(out)
end

-- Inside provider-host the walk is done in C; plain Lua (the pure specs) walks in Lua.
local has_core, core_util = pcall(require, "host.core.util")
local integers = has_core and core_util.json_integers or nil

--- Decodes the JSON text `s`. Returns value | nil, "json: ...", "json". Integral numbers up to
--- 2^53 come back as Lua integers, `null` as `M.null`; arrays and objects are plain tables.
function M.decode(s)
  if type(s) ~= "string" then
    error("bad argument #1 to 'decode' (string expected, got " .. type(s) .. ")", 2)
  end
  local v, err = cjson.decode(s)
  if v == nil and err and err:find("unicode escape", 1, true) then
    local fixed = repair_surrogates(s)
    if fixed then
      v, err = cjson.decode(fixed)
    end
  end
  if v == nil then
    return fail(err or "invalid JSON")
  end
  if integers then
    return integers(v)
  elseif type(v) == "table" then
    normalize(v)
    return v
  end
  return integerize(v)
end

------------------------------------------------------------------------------------------------
-- Encoding

-- True when cjson prints the number exactly and as JSON.stringify would.
local function plain_number(n)
  if math_type(n) == "integer" then
    return n > -PLAIN and n < PLAIN
  end
  return n == floor(n) and n > -PLAIN and n < PLAIN and (n ~= 0 or 1 / n > 0)
end

-- True when cjson alone encodes v as we want: no marks to honour, no number it would round,
-- nothing so deep that our own encoder should produce the error message.
local function plain(v, depth)
  local tv = type(v)
  if tv == "number" then
    return plain_number(v)
  elseif tv ~= "table" then
    return true
  elseif depth > MAX_DEPTH or orders[v] then
    return false
  end
  local marked = arrays[v]
  if marked and next(v) == nil then
    return false
  end
  for k, x in pairs(v) do
    if type(k) == "number" then
      if not plain_number(k) or (marked and (k < 1 or k ~= floor(k))) then
        return false
      end
    elseif marked then
      return false -- an array with a string key: let our encoder report it
    end
    if (type(x) == "table" or type(x) == "number") and not plain(x, depth + 1) then
      return false
    end
  end
  return true
end

local function format_number(n)
  if n ~= n or n == math.huge or n == -math.huge then
    local what = n ~= n and "NaN" or n > 0 and "Infinity" or "-Infinity"
    return nil, "cannot encode " .. what .. ": JSON has no NaN or Infinity"
  end
  if math_type(n) == "integer" then
    return format("%d", n)
  end
  if n == floor(n) and n > -2 ^ 63 and n < 2 ^ 63 then
    return format("%d", tointeger(n)) -- also turns -0.0 into 0, as JSON.stringify does
  end
  for p = 15, 16 do -- shortest form that reads back as the same float
    local s = format("%." .. p .. "g", n)
    if tonumber(s) == n then
      return s
    end
  end
  return format("%.17g", n)
end

local ESCAPES = { ['"'] = '\\"', ["\\"] = "\\\\", ["\b"] = "\\b", ["\f"] = "\\f",
  ["\n"] = "\\n", ["\r"] = "\\r", ["\t"] = "\\t" }
for c = 0, 31 do
  local ch = string.char(c)
  ESCAPES[ch] = ESCAPES[ch] or format("\\u%04x", c)
end

local function encode_string(s)
  return '"' .. s:gsub('[%z\1-\31"\\]', ESCAPES) .. '"'
end

local function key_string(k)
  local tk = type(k)
  if tk == "string" then
    return k
  elseif tk == "number" then
    return format_number(k)
  end
  return nil, "cannot encode a " .. tk .. " table key (keys must be strings or numbers)"
end

-- The length of t encoded as a list. Unmarked (how cjson lays out a table): a list when every
-- key is a positive integral number (holes become null), unless too sparse; otherwise an object,
-- and nil comes back. Marked as an array: any other key is an error, and {} is [].
local function list_length(t, marked)
  local max, items = 0, 0
  for k in pairs(t) do
    if type(k) ~= "number" or k < 1 or k ~= floor(k) then
      if marked then
        return nil, "cannot encode an array-marked table with the key " .. format("%q", tostring(k))
      end
      return nil
    end
    if k > max then
      max = k
    end
    items = items + 1
  end
  if items == 0 and not marked then
    return nil
  end
  if max > items * 2 and max > 10 then
    return nil, "cannot encode an excessively sparse array"
  end
  return tointeger(max)
end

local function object_keys(t)
  local keys, names, n = {}, {}, 0
  local order = orders[t]
  local seen = {}
  if order then
    for _, k in ipairs(order) do
      if not seen[k] and t[k] ~= nil then
        seen[k] = true
        n = n + 1
        keys[n], names[n] = k, k
      end
    end
  end
  local rest, m = {}, 0
  for k in pairs(t) do
    if not seen[k] then
      local name, err = key_string(k)
      if not name then
        return nil, err
      end
      m = m + 1
      rest[m] = { name, k }
    end
  end
  sort(rest, function(a, b)
    return a[1] < b[1]
  end)
  for i = 1, m do
    keys[n + i], names[n + i] = rest[i][2], rest[i][1]
  end
  return keys, names
end

-- One encoder for both layouts: `indent` nil is compact, a string is the step for `pretty`.
local function encode_value(v, out, depth, stack, indent)
  local tv = type(v)
  if tv == "string" then
    out[#out + 1] = encode_string(v)
  elseif tv == "number" then
    local s, err = format_number(v)
    if not s then
      return nil, err
    end
    out[#out + 1] = s
  elseif tv == "boolean" then
    out[#out + 1] = v and "true" or "false"
  elseif v == M.null then
    out[#out + 1] = "null"
  elseif tv ~= "table" then
    return nil, "cannot encode a " .. tv
  else
    if stack[v] then
      return nil, "cannot encode a table that contains itself"
    end
    if depth >= MAX_DEPTH then
      return nil, "cannot encode more than " .. MAX_DEPTH .. " nested tables"
    end
    stack[v] = true
    local nl = indent and "\n" .. indent:rep(depth + 1) or ""
    local close_nl = indent and "\n" .. indent:rep(depth) or ""
    local n, err
    if arrays[v] then
      n, err = list_length(v, true)
      if not n then
        return nil, err
      end
    elseif not orders[v] then
      n, err = list_length(v)
      if err then
        return nil, err
      end
    end
    if n then
      if n == 0 then
        out[#out + 1] = "[]"
      else
        out[#out + 1] = "["
        for i = 1, n do
          out[#out + 1] = (i > 1 and "," or "") .. nl
          local x = v[i]
          local ok, e = encode_value(x == nil and M.null or x, out, depth + 1, stack, indent)
          if not ok then
            return nil, e
          end
        end
        out[#out + 1] = close_nl .. "]"
      end
    else
      local keys, names = object_keys(v)
      if not keys then
        return nil, names
      end
      if #keys == 0 then
        out[#out + 1] = "{}"
      else
        out[#out + 1] = "{"
        local colon = indent and ": " or ":"
        for i, k in ipairs(keys) do
          out[#out + 1] = (i > 1 and "," or "") .. nl .. encode_string(names[i]) .. colon
          local ok, e = encode_value(v[k], out, depth + 1, stack, indent)
          if not ok then
            return nil, e
          end
        end
        out[#out + 1] = close_nl .. "}"
      end
    end
    stack[v] = nil
  end
  return true
end

local function encode_lua(v, indent)
  local out = {}
  local ok, err = encode_value(v, out, 0, {}, indent)
  if not ok then
    return fail(err)
  end
  return concat(out)
end

--- Encodes `v` as one line of JSON. Returns string | nil, "json: ...", "json".
--- Integers are exact; floats use the shortest form that reads back the same; NaN and
--- Infinity are errors. Tables marked with `array` or `ordered` are honoured; other objects
--- have no defined key order. Control characters (\r, \n, ...) are always escaped.
local plain_c = has_core and core_util.json_plain or nil

function M.encode(v)
  if plain_c and plain_c(v, arrays, orders) or not plain_c and plain(v, 0) then
    local s, err = cjson.encode(v)
    if s then
      return s
    end
    return fail(err)
  end
  return encode_lua(v, nil)
end

--- Encodes `v` as indented JSON (2 spaces, no trailing newline), for manifests and CLI output.
--- Honours `ordered` and `array` marks and sorts the keys of every other object; `/` and
--- non-ASCII UTF-8 are written as is. Returns string | nil, "json: ...", "json".
function M.pretty(v)
  return encode_lua(v, "  ")
end

return M
