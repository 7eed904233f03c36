-- fuzz/fuzz_schema.lua: fuzz_schema's check: host.schema and host.params on arbitrary JSON.
-- The input is JSON (anything else is skipped). Its value is validated as a config by every
-- built-in provider's schema and as params of every provider method by host.params, and, when
-- it looks like a list of field specs, built into a schema of its own. Properties: nothing
-- raises (schema.new only with "bad schema: ..."), results have the documented shapes, the
-- input is not modified, and the same call twice gives the same answer.
local json = require("host.json")
local params = require("host.params")
local providers = require("host.providers")
local schema = require("host.schema")

local M = {}

local fixed = {} -- { name =, schema =, provider = }

local function fail(fmt, ...)
  error("property violated: " .. fmt:format(...), 0)
end

-- A canonical text of a value (keys sorted, types tagged): equal texts, equal values.
local function canon(v, depth)
  depth = depth or 0
  if depth > 200 then
    return "<deep>"
  end
  local t = type(v)
  if v == json.null then
    return "null"
  elseif t == "number" then
    return (math.type(v) == "integer" and "i" or "f") .. ("%.17g"):format(v)
  elseif t == "string" then
    return ("%q"):format(v)
  elseif t ~= "table" then
    return t .. ":" .. tostring(v)
  end
  local keys = {}
  for k in pairs(v) do
    keys[#keys + 1] = k
  end
  table.sort(keys, function(a, b)
    return canon(a) < canon(b)
  end)
  local out = {}
  for _, k in ipairs(keys) do
    out[#out + 1] = canon(k) .. "=" .. canon(v[k], depth + 1)
  end
  return "{" .. table.concat(out, ",") .. "}"
end

local function deep_copy(v)
  if type(v) ~= "table" or v == json.null then
    return v
  end
  local out = {}
  for k, x in pairs(v) do
    out[k] = deep_copy(x)
  end
  return out
end

local function strings_list(list, what)
  if type(list) ~= "table" then
    fail("%s is a %s, not a list", what, type(list))
  end
  for i, s in ipairs(list) do
    if type(s) ~= "string" then
      fail("%s[%d] is a %s, not a string", what, i, type(s))
    end
  end
  local n = 0
  for _ in pairs(list) do
    n = n + 1
  end
  if n ~= #list then
    fail("%s is not a plain list", what)
  end
end

-- One normalize call, checked; returns the canonical text of its answer.
local function normalize_once(name, s, config, mode)
  local before = canon(config)
  local ok, n, errors, warnings = pcall(s.normalize, s, config, mode)
  if not ok then
    fail("%s: normalize(%s) raised: %s", name, mode, tostring(n))
  end
  if canon(config) ~= before then
    fail("%s: normalize changed its input", name)
  end
  if type(n) ~= "table" then
    fail("%s: normalize returned a %s", name, type(n))
  end
  strings_list(errors, name .. " errors")
  strings_list(warnings, name .. " warnings")
  for _, f in ipairs({ "output", "config", "secrets" }) do
    local fok, res = pcall(s[f], s, f == "secrets" and config or n)
    if not fok then
      fail("%s: %s raised: %s", name, f, tostring(res))
    end
    if f == "secrets" then
      strings_list(res, name .. " secrets")
    end
  end
  if #errors == 0 and json.encode(s:output(n)) == nil then
    fail("%s: a valid config's normalizedConfig does not encode", name)
  end
  return canon({ n, errors, warnings })
end

local function check_schema(name, s, config)
  for _, mode in ipairs({ "validate", "call" }) do
    local a = normalize_once(name, s, config, mode)
    local b = normalize_once(name, s, config, mode)
    if a ~= b then
      fail("%s: normalize(%s) answered differently twice", name, mode)
    end
  end
end

local function check_params(v)
  if type(v) ~= "table" then
    return
  end
  for _, pair in ipairs(providers.HOOKS) do
    local method = pair[2]
    for _, f in ipairs(fixed) do
      local answers = {}
      for i = 1, 2 do
        local copy = deep_copy(v)
        local ok, res, msg = pcall(params.normalize, method, copy, f.provider)
        if not ok then
          fail("params.normalize(%s) raised: %s", method, tostring(res))
        end
        if res == nil and type(msg) ~= "string" then
          fail("params.normalize(%s) returned nil without a message", method)
        end
        answers[i] = canon({ res or false, msg or false })
      end
      if answers[1] ~= answers[2] then
        fail("params.normalize(%s) answered differently twice", method)
      end
    end
  end
end

-- A field spec from JSON: [name, type, {options}] becomes { name, type, option = value }.
local function spec_of(v)
  if type(v) ~= "table" then
    return v
  end
  local spec = { v[1], v[2] }
  if type(v[3]) == "table" then
    for k, x in pairs(v[3]) do
      spec[k] = x
    end
  end
  return spec
end

local function check_built(v)
  local fields = type(v) == "table" and (v.fields or v) or v
  local candidates = { fields }
  if type(fields) == "table" then
    local converted = {}
    for i, f in ipairs(fields) do
      converted[i] = spec_of(f)
    end
    candidates[2] = converted
  end
  local opts = type(v) == "table" and v.opts or nil
  for _, c in ipairs(candidates) do
    local ok, s = pcall(schema.new, c, opts)
    if not ok then
      if type(s) ~= "string" or not s:find("bad schema: ", 1, true) then
        fail("schema.new raised something other than a bad schema: %s", tostring(s))
      end
    else
      local jok, js = pcall(s.json_schema, s)
      if not jok then
        fail("json_schema raised: %s", tostring(js))
      end
      if json.encode(js) == nil then
        fail("json_schema does not encode")
      end
      local config = type(v) == "table" and v.config
      check_schema("built", s, config == nil and {} or config)
      check_schema("built/self", s, v)
    end
  end
end

function M.init()
  local dirs = providers.search_path()
  for _, name in ipairs({ "local", "e2b", "exe-dev", "ssh" }) do
    local p, problems = providers.load(name, dirs)
    assert(p, problems and table.concat(problems, "\n"))
    fixed[#fixed + 1] = { name = name, schema = p.schema, provider = p }
  end
  local stub, problems = providers.load_file(FUZZ_DIR .. "/providers/fuzzstub.lua", "fuzzstub")
  assert(stub, problems and table.concat(problems, "\n"))
  fixed[#fixed + 1] = { name = "fuzzstub", schema = stub.schema, provider = stub }
end

function M.check(data)
  local v = json.decode(data)
  if v == nil then
    return
  end
  for _, f in ipairs(fixed) do
    check_schema(f.name, f.schema, v)
    if type(v) == "table" and v.config ~= nil then
      check_schema(f.name, f.schema, v.config)
    end
  end
  check_params(v)
  check_built(v)
end

return M
