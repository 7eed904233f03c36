-- Specs for host.schema: definitions, normalization, secrets and the manifest JSON schema.
local json = require("host.json")
local schema = require("host.schema")

-- The example schema from the design brief (an E2B-like provider with extras).
local function example()
  return schema.new({
    { "template", "string", default = "base", trim = true, blank = "default",
      description = "E2B template name." },
    { "apiKey", "string", secret = true, trim = true, blank = "null", description = "API key." },
    { "timeoutMs", "integer", default = 3600000, between = { 1, 86400000 }, truncate = true,
      message = "timeoutMs must be between 1 and 86400000." },
    { "reuseLease", "boolean", default = false },
    { "sshPort", "integer", default = 22, between = { 1, 65535 },
      ui = { advanced = true, group = "SSH access" } },
    { "mode", "string", one_of = { "a", "b" } },
    { "tags", "array", elements = "string", comma_list = true },
    { "env", "map", elements = "string" },
  })
end

-- normalize() for a one-field schema; returns the field's value and the errors.
local function one(spec, value)
  local s = schema.new({ spec })
  local n, errors = s:normalize({ [spec[1]] = value })
  return n[spec[1]], errors
end

-- The message schema.new raises for a definition (and schema options), without the position
-- prefix.
local function def_error_with(fields, opts)
  local ok, err = pcall(schema.new, fields, opts)
  assert.is_false(ok, "schema.new accepted the definition")
  return (tostring(err):gsub("^[^:]*:%d+: ", ""))
end

local function def_error(fields)
  return def_error_with(fields, nil)
end

describe("host.schema", function()
  describe("new", function()
    it("returns a schema", function()
      assert.is_true(schema.is_schema(example()))
    end)

    it("accepts an empty field list", function()
      local s = schema.new({})
      assert.same({}, s.fields)
    end)

    it("keeps the fields in order", function()
      local names = {}
      for i, f in ipairs(example().fields) do
        names[i] = f.name
      end
      assert.same({ "template", "apiKey", "timeoutMs", "reuseLease", "sshPort", "mode", "tags",
        "env" }, names)
    end)

    it("exposes the options of a field", function()
      local f = example():field("timeoutMs")
      assert.equal("timeoutMs", f.name)
      assert.equal("integer", f.type)
      assert.equal(3600000, f.default)
      assert.same({ 1, 86400000 }, f.between)
      assert.is_true(f.truncate)
    end)

    it("returns nil for an unknown field", function()
      assert.is_nil(example():field("nope"))
    end)

    it("blames the caller's line", function()
      local ok, err = pcall(function()
        schema.new({ { "x", "strin" } })
      end)
      assert.is_false(ok)
      assert.matches("^spec/lua/schema_spec%.lua:%d+: bad schema: ", err)
    end)

    it("rejects a non-table field list", function()
      assert.matches("expects a list of field specs", def_error("x"))
    end)

    it("rejects a field list keyed by name", function()
      assert.matches("expects a list of field specs", def_error({ x = { "x", "string" } }))
    end)

    it("rejects a field spec that is not a table", function()
      assert.equal("bad schema: field 1: expected a table { name, type, ... }, got string",
        def_error({ "x" }))
    end)

    it("rejects a missing name", function()
      assert.matches("^bad schema: field 1: the name %(first value%) must be a string",
        def_error({ {} }))
    end)

    it("rejects a name that is not an identifier", function()
      assert.matches('got "a b"', def_error({ { "a b", "string" } }))
      assert.matches('got "a.b"', def_error({ { "a.b", "string" } }))
    end)

    it("rejects an unknown type and suggests the right one", function()
      assert.equal('bad schema: field 1 (x): the type (second value) must be one of string, '
        .. 'integer, number, boolean, array, map, got "strng" (did you mean "string"?)',
        def_error({ { "x", "strng" } }))
    end)

    it("rejects a missing type", function()
      assert.matches("the type %(second value%) must be one of .*, got nothing",
        def_error({ { "x" } }))
    end)

    it("rejects an unknown option and suggests the right one", function()
      assert.equal('bad schema: field 2 (y): unknown option "betwen" (did you mean "between"?)',
        def_error({ { "x", "string" }, { "y", "integer", betwen = { 1, 2 } } }))
    end)

    it("rejects an unknown option with no close match", function()
      assert.equal('bad schema: field 1 (x): unknown option "colour"',
        def_error({ { "x", "string", colour = "red" } }))
    end)

    it("rejects an extra positional value", function()
      assert.matches("unexpected positional value at %[3%]",
        def_error({ { "x", "string", "default" } }))
    end)

    it("rejects a duplicate name", function()
      assert.equal("bad schema: field 3 (x): duplicate name (also field 1)",
        def_error({ { "x", "string" }, { "y", "string" }, { "x", "integer" } }))
    end)

    it("rejects a default of the wrong type", function()
      assert.equal("bad schema: field 1 (n): default must be an integer, got string",
        def_error({ { "n", "integer", default = "5" } }))
      assert.equal("bad schema: field 1 (b): default must be a boolean, got string",
        def_error({ { "b", "boolean", default = "false" } }))
      assert.equal("bad schema: field 1 (a): default must be an array, got string",
        def_error({ { "a", "array", elements = "string", default = "x" } }))
    end)

    it("rejects a non-integral default for an integer field", function()
      assert.equal("bad schema: field 1 (n): default must be an integer, got 1.5",
        def_error({ { "n", "integer", default = 1.5, truncate = true } }))
    end)

    it("rejects a default outside between", function()
      assert.equal("bad schema: field 1 (n): invalid default: must be between 1 and 10",
        def_error({ { "n", "integer", default = 0, between = { 1, 10 } } }))
    end)

    it("rejects a default not in one_of", function()
      assert.matches('invalid default: must be one of "a", "b"',
        def_error({ { "m", "string", default = "c", one_of = { "a", "b" } } }))
    end)

    it("rejects an array default with an element of the wrong type", function()
      assert.matches("invalid default: item 2: expected a string, got number",
        def_error({ { "t", "array", elements = "string", default = { "a", 1 } } }))
    end)

    it("rejects a default on a required field", function()
      assert.matches("a required field cannot have a default",
        def_error({ { "x", "string", required = true, default = "a" } }))
    end)

    it("rejects a default on a secret field", function()
      assert.matches("a secret field cannot have a default",
        def_error({ { "x", "string", secret = true, default = "a" } }))
    end)

    it("rejects blank = null together with a default", function()
      assert.matches('blank = "null" and a default exclude each other',
        def_error({ { "x", "string", blank = "null", default = "a" } }))
    end)

    it("rejects blank = null together with required", function()
      assert.matches('blank = "null" and required exclude each other',
        def_error({ { "x", "string", blank = "null", required = true } }))
    end)

    it("rejects a blank default when blank is set", function()
      assert.matches('default is blank, which blank = "default" does not allow',
        def_error({ { "x", "string", blank = "default", default = " " } }))
    end)

    it("rejects an unknown blank mode", function()
      assert.matches('blank must be one of "default", "null", "error", got "empty"',
        def_error({ { "x", "string", blank = "empty" } }))
    end)

    it("rejects between on a string field", function()
      assert.equal("bad schema: field 1 (x): between applies only to integer and number values, "
        .. "not to string", def_error({ { "x", "string", between = { 1, 2 } } }))
    end)

    it("rejects a malformed between", function()
      assert.matches("between must be a list of two numbers",
        def_error({ { "x", "integer", between = { 1 } } }))
      assert.matches("between must be a list of two finite numbers",
        def_error({ { "x", "number", between = { 1, "9" } } }))
      assert.matches("between must be a list of two finite numbers",
        def_error({ { "x", "number", between = { 0 / 0, 1 } } }))
      assert.matches("between must be a list of two finite numbers",
        def_error({ { "x", "number", between = { 1, math.huge } } }))
    end)

    it("rejects between with min above max", function()
      assert.matches("between minimum 10 is greater than maximum 1",
        def_error({ { "x", "integer", between = { 10, 1 } } }))
    end)

    it("rejects non-integral between bounds on an integer field", function()
      assert.matches("between bounds must be integers for an integer field, got 0.5",
        def_error({ { "x", "integer", between = { 0.5, 1 } } }))
    end)

    it("accepts float bounds on a number field", function()
      local s = schema.new({ { "x", "number", between = { 0.5, 1.5 } } })
      assert.same({ 0.5, 1.5 }, s:field("x").between)
    end)

    it("rejects length limits on non-strings", function()
      assert.matches("max_length applies only to string values, not to integer",
        def_error({ { "x", "integer", max_length = 3 } }))
    end)

    it("rejects negative or fractional length limits", function()
      assert.matches("min_length must be a non%-negative integer, got %-1",
        def_error({ { "x", "string", min_length = -1 } }))
      assert.matches("max_length must be a non%-negative integer, got 1.5",
        def_error({ { "x", "string", max_length = 1.5 } }))
    end)

    it("rejects min_length above max_length", function()
      assert.matches("min_length 5 is greater than max_length 2",
        def_error({ { "x", "string", min_length = 5, max_length = 2 } }))
    end)

    it("rejects an empty one_of", function()
      assert.matches("one_of must be a non%-empty list",
        def_error({ { "x", "string", one_of = {} } }))
    end)

    it("rejects a one_of value of the wrong type", function()
      assert.matches('one_of value 2 %(1%) is not a string',
        def_error({ { "x", "string", one_of = { "a", 1 } } }))
    end)

    it("rejects a duplicate one_of value", function()
      assert.matches('one_of lists "a" twice',
        def_error({ { "x", "string", one_of = { "a", "a" } } }))
    end)

    it("rejects one_of on a boolean field", function()
      assert.matches("one_of applies only to string, integer and number values",
        def_error({ { "x", "boolean", one_of = { true } } }))
    end)

    it("rejects an array without elements", function()
      assert.matches("a array field needs elements = one of string, integer, number, boolean",
        def_error({ { "x", "array" } }))
    end)

    it("rejects an unknown element type", function()
      assert.matches('elements must be one of .*, got "strings" %(did you mean "string"%?%)',
        def_error({ { "x", "map", elements = "strings" } }))
    end)

    it("rejects elements on a scalar field", function()
      assert.matches("elements applies only to array and map fields, not to string",
        def_error({ { "x", "string", elements = "string" } }))
    end)

    it("rejects secret on a non-string field", function()
      assert.matches("secret applies only to string fields, not to integer",
        def_error({ { "x", "integer", secret = true } }))
    end)

    it("rejects truncate on a string field", function()
      assert.matches("truncate applies only to integer values, not to string",
        def_error({ { "x", "string", truncate = true } }))
    end)

    it("rejects comma_list on anything but an array of strings", function()
      assert.matches("comma_list applies only to arrays of strings",
        def_error({ { "x", "array", elements = "integer", comma_list = true } }))
      assert.matches("comma_list applies only to arrays of strings",
        def_error({ { "x", "string", comma_list = true } }))
    end)

    it("rejects a non-boolean flag", function()
      assert.matches("required must be a boolean, got string",
        def_error({ { "x", "string", required = "yes" } }))
    end)

    it("rejects an empty message", function()
      assert.matches("message must be a non%-empty string",
        def_error({ { "x", "string", message = "" } }))
    end)

    it("rejects a malformed Lua pattern", function()
      assert.matches('pattern "%[a" is not a valid Lua pattern: malformed pattern',
        def_error({ { "x", "string", pattern = "[a" } }))
    end)

    it("rejects a check that is not a function", function()
      assert.matches("check must be a function%(value, config, mode%), got string",
        def_error({ { "x", "string", check = "nonempty" } }))
    end)

    it("rejects an unknown ui key", function()
      assert.matches('ui has an unknown key "hidden"',
        def_error({ { "x", "string", ui = { hidden = true } } }))
    end)

    it("rejects a ui group that is not a string", function()
      assert.matches("group must be a non%-empty string",
        def_error({ { "x", "string", ui = { group = 1 } } }))
    end)

    it("applies trim and one_of to array elements", function()
      local s = schema.new({ { "x", "array", elements = "string", trim = true,
        one_of = { "a", "b" } } })
      local n, errors = s:normalize({ x = { " a ", "b" } })
      assert.same({}, errors)
      assert.same({ "a", "b" }, n.x)
    end)
  end)

  describe("normalize", function()
    it("fills defaults and keeps the declared shape", function()
      local n, errors, warnings = example():normalize({})
      assert.same({}, errors)
      assert.same({}, warnings)
      assert.same({ template = "base", apiKey = json.null, timeoutMs = 3600000,
        reuseLease = false, sshPort = 22 }, n)
    end)

    it("produces upstream's e2b normalizedConfig shape", function()
      local s = schema.new({
        { "template", "string", default = "base", trim = true, blank = "default" },
        { "apiKey", "string", secret = true, trim = true, blank = "null" },
        { "timeoutMs", "integer", default = 3600000, between = { 1, 86400000 }, truncate = true },
        { "reuseLease", "boolean", default = false },
      })
      local n = s:normalize({ provider = "e2b", streamRunLogs = true })
      assert.same(
        { template = "base", apiKey = json.null, timeoutMs = 3600000, reuseLease = false },
        json.decode(json.encode(n))
      )
    end)

    it("returns errors and warnings that encode as empty arrays", function()
      local _, errors, warnings = example():normalize({})
      assert.equal("[]", json.encode(errors))
      assert.equal("[]", json.encode(warnings))
    end)

    it("drops unknown keys", function()
      local n = example():normalize({ provider = "e2b", other = 1 })
      assert.is_nil(n.provider)
      assert.is_nil(n.other)
    end)

    it("leaves absent optional fields without a default absent", function()
      local n = example():normalize({})
      assert.is_nil(n.mode)
      assert.is_nil(n.tags)
      assert.is_nil(n.env)
    end)

    it("treats json.null like an absent value", function()
      local n, errors = example():normalize({ timeoutMs = json.null, mode = json.null })
      assert.same({}, errors)
      assert.equal(3600000, n.timeoutMs)
      assert.is_nil(n.mode)
    end)

    it("does not modify the input config", function()
      local config = { template = "  t  ", tags = "a,b" }
      example():normalize(config)
      assert.same({ template = "  t  ", tags = "a,b" }, config)
    end)

    it("returns a fresh copy of table defaults each time", function()
      local s = schema.new({ { "t", "array", elements = "string", default = { "a" } } })
      local first = s:normalize({})
      first.t[2] = "changed"
      local second = s:normalize({})
      assert.same({ "a" }, second.t)
      assert.is_true(json.is_array(second.t))
    end)

    it("rejects a nil config", function()
      local n, errors = example():normalize(nil)
      assert.same({ "config must be an object" }, errors)
      assert.same({}, n)
    end)

    it("rejects a non-table config", function()
      for _, c in ipairs({ "x", 1, true, json.null }) do
        local _, errors = example():normalize(c)
        assert.same({ "config must be an object" }, errors)
      end
    end)

    it("rejects an array config", function()
      local _, errors = example():normalize({ 1, 2 })
      assert.same({ "config must be an object" }, errors)
    end)

    it("lists errors in field order", function()
      local _, errors = example():normalize({ env = 1, tags = 2, mode = "c", sshPort = 0,
        reuseLease = "yes", timeoutMs = 0, apiKey = 5, template = 7 })
      assert.same({
        "template: expected a string, got number",
        "apiKey: expected a string, got number",
        "timeoutMs must be between 1 and 86400000.",
        "reuseLease: expected a boolean, got string",
        "sshPort: must be between 1 and 65535",
        'mode: must be one of "a", "b"',
        "tags: expected an array, got number",
        "env: expected an object, got number",
      }, errors)
    end)

    it("reports a missing required field", function()
      local s = schema.new({ { "sshPort", "integer", required = true } })
      local _, errors = s:normalize({})
      assert.same({ "sshPort: is required" }, errors)
    end)

    it("reports a required field given null as missing", function()
      local s = schema.new({ { "sshPort", "integer", required = true } })
      local _, errors = s:normalize({ sshPort = json.null })
      assert.same({ "sshPort: is required" }, errors)
    end)

    it("leaves a field with an error out of the normalized config", function()
      local n = example():normalize({ sshPort = "x" })
      assert.is_nil(n.sshPort)
      assert.equal("base", n.template)
    end)

    it("replaces the built-in error texts with message, but not a wrong type's", function()
      local s = schema.new({ { "n", "integer", required = true, between = { 1, 2 },
        message = "n is wrong." } })
      local _, e1 = s:normalize({ n = 3 })
      local _, e2 = s:normalize({})
      assert.same({ "n is wrong." }, e1)
      assert.same({ "n is wrong." }, e2)
      local _, e3 = s:normalize({ n = "x" })
      local _, e4 = s:normalize({ n = 1.5 })
      assert.same({ "n: expected an integer, got string" }, e3)
      assert.same({ "n: expected an integer, got 1.5" }, e4)
    end)

    it("replaces element errors with message once", function()
      local s = schema.new({ { "t", "array", elements = "integer", message = "t is wrong." } })
      local _, errors = s:normalize({ t = { "a", "b", "c" } })
      assert.same({ "t is wrong." }, errors)
    end)

    it("never raises on odd values", function()
      local odd = { 0 / 0, math.huge, -0.0, "", string.rep("x", 100000), {}, { 1 }, { a = 1 },
        true, json.null, print, math.maxinteger, math.mininteger, "\0", "\xff\xfe" }
      local s = example()
      for _, v in ipairs(odd) do
        for _, f in ipairs(s.fields) do
          local ok, n, errors = pcall(s.normalize, s, { [f.name] = v })
          assert.is_true(ok, tostring(n))
          assert.equal("table", type(errors))
        end
      end
    end)

    describe("string", function()
      it("keeps a string", function()
        assert.equal("x y", one({ "s", "string" }, "x y"))
      end)

      it("rejects a number", function()
        local _, errors = one({ "apiKey", "string" }, 5)
        assert.same({ "apiKey: expected a string, got number" }, errors)
      end)

      it("rejects a boolean", function()
        local _, errors = one({ "s", "string" }, true)
        assert.same({ "s: expected a string, got boolean" }, errors)
      end)

      it("names objects and arrays in type errors", function()
        local _, e1 = one({ "s", "string" }, { a = 1 })
        local _, e2 = one({ "s", "string" }, { 1, 2 })
        assert.same({ "s: expected a string, got object" }, e1)
        assert.same({ "s: expected a string, got array" }, e2)
      end)

      it("trims when trim is set", function()
        assert.equal("a b", one({ "s", "string", trim = true }, " \t a b \n"))
      end)

      it("does not trim without trim", function()
        assert.equal(" a ", one({ "s", "string" }, " a "))
      end)

      it("trims in time linear in the length, even across a long inner run of spaces", function()
        -- The usual s:match("^%s*(.-)%s*$") rescans the inner run once per space: about 40
        -- times slower than one linear pass over this string. The bound is relative to such a
        -- pass, timed here on the same string (CPU time), so a slow or busy machine scales
        -- both sides alike.
        local inner = string.rep(" ", 40000)
        local big = string.rep(" ", 4 * 1024 * 1024) .. "x" .. inner .. "y"
          .. string.rep(" \t", 2 * 1024 * 1024)
        local c0 = os.clock()
        local _, spaces = big:gsub("%s", "%0") -- one linear pass: every byte visited and copied
        local c1 = os.clock()
        assert.equal("x" .. inner .. "y", one({ "s", "string", trim = true }, big))
        local c2 = os.clock()
        assert.equal(#big - 2, spaces)
        local linear, trim = c1 - c0, c2 - c1
        assert.is_true(trim < 5 * linear + 0.1, ("trim %.3f s, a linear pass %.3f s"):format(
          trim, linear))
      end)

      it("keeps a blank string when blank is not set", function()
        assert.equal("", one({ "s", "string", trim = true }, "   "))
      end)

      it("takes the default for a blank string with blank = default", function()
        assert.equal("base", one({ "t", "string", default = "base", blank = "default" }, "  "))
      end)

      it("leaves a blank string absent with blank = default and no default", function()
        local v, errors = one({ "t", "string", blank = "default" }, "")
        assert.is_nil(v)
        assert.same({}, errors)
      end)

      it("makes a blank string null with blank = null", function()
        assert.equal(json.null, one({ "k", "string", trim = true, blank = "null" }, "  "))
      end)

      it("makes an absent field null with blank = null", function()
        local s = schema.new({ { "k", "string", blank = "null" } })
        assert.equal(json.null, s:normalize({}).k)
      end)

      it("rejects a blank string with blank = error", function()
        local _, errors = one({ "t", "string", blank = "error" }, " ")
        assert.same({ "t: must not be blank" }, errors)
      end)

      it("uses message for a blank string with blank = error", function()
        local _, errors = one({ "template", "string", trim = true, blank = "error",
          message = "E2B sandbox environments require a template." }, "  ")
        assert.same({ "E2B sandbox environments require a template." }, errors)
      end)

      it("enforces min_length and max_length in characters", function()
        local spec = { "s", "string", min_length = 2, max_length = 3 }
        assert.equal("éé", one(spec, "éé"))
        local _, e1 = one(spec, "a")
        local _, e2 = one(spec, "abcd")
        assert.same({ "s: must be at least 2 characters long" }, e1)
        assert.same({ "s: must be at most 3 characters long" }, e2)
      end)

      it("counts bytes for invalid UTF-8", function()
        local _, errors = one({ "s", "string", max_length = 3 }, "\xff\xff\xff\xff")
        assert.same({ "s: must be at most 3 characters long" }, errors)
      end)

      it("rejects a huge string over max_length", function()
        local _, errors = one({ "k", "string", max_length = 8192 }, string.rep("k", 1e6))
        assert.same({ "k: must be at most 8192 characters long" }, errors)
      end)

      it("checks one_of", function()
        assert.equal("b", one({ "m", "string", one_of = { "a", "b" } }, "b"))
        local _, errors = one({ "m", "string", one_of = { "a", "b" } }, "B")
        assert.same({ 'm: must be one of "a", "b"' }, errors)
      end)

      it("checks one_of after trimming", function()
        assert.equal("a", one({ "m", "string", trim = true, one_of = { "a" } }, " a "))
      end)

      it("checks pattern", function()
        local spec = { "u", "string", pattern = "^[%l_][%w_]*$" }
        assert.equal("root", one(spec, "root"))
        local _, errors = one(spec, "Root;")
        assert.same({ 'u: does not match the pattern "^[%l_][%w_]*$"' }, errors)
      end)

      it("keeps NUL bytes", function()
        assert.equal("a\0b", one({ "s", "string" }, "a\0b"))
      end)

      it("does not show the rejected value in errors", function()
        local _, errors = one({ "k", "string", one_of = { "a" } }, "s3cr3t")
        assert.is_nil(errors[1]:find("s3cr3t", 1, true))
      end)
    end)

    describe("integer", function()
      it("keeps an integer", function()
        local v = one({ "n", "integer" }, 5)
        assert.equal(5, v)
        assert.equal("integer", math.type(v))
      end)

      it("turns an integral float into an integer", function()
        local v = one({ "n", "integer" }, 5.0)
        assert.equal("integer", math.type(v))
      end)

      it("turns negative zero into 0", function()
        local v = one({ "n", "integer" }, -0.0)
        assert.equal("integer", math.type(v))
        assert.equal("0", tostring(v))
      end)

      it("rejects a non-integral number without truncate", function()
        local _, errors = one({ "sshPort", "integer" }, 22.5)
        assert.same({ "sshPort: expected an integer, got 22.5" }, errors)
      end)

      it("rejects a numeric string without truncate", function()
        local _, errors = one({ "n", "integer" }, "22")
        assert.same({ "n: expected an integer, got string" }, errors)
      end)

      it("rejects NaN", function()
        local _, errors = one({ "n", "integer", truncate = true }, 0 / 0)
        assert.same({ "n: expected an integer, got NaN" }, errors)
      end)

      it("rejects infinity", function()
        local _, errors = one({ "n", "integer" }, -math.huge)
        assert.same({ "n: expected an integer, got -Infinity" }, errors)
      end)

      it("rejects a boolean, also with truncate", function()
        local _, errors = one({ "n", "integer", truncate = true }, true)
        assert.same({ "n: expected an integer, got boolean" }, errors)
      end)

      it("rejects integers beyond 2^53", function()
        local _, errors = one({ "n", "integer" }, math.maxinteger)
        assert.same({ "n: must be between -9007199254740991 and 9007199254740991" }, errors)
        local _, e2 = one({ "n", "integer" }, 1e300)
        assert.same(errors, e2)
      end)

      it("truncates a non-integral number toward zero with truncate", function()
        assert.equal(450000, one({ "n", "integer", truncate = true }, 450000.9))
        assert.equal(-3, one({ "n", "integer", truncate = true }, -3.7))
      end)

      it("parses numeric strings like JS Number with truncate", function()
        local spec = { "n", "integer", truncate = true }
        assert.equal(450000, one(spec, "450000.9"))
        assert.equal(450000, one(spec, " 450000 "))
        assert.equal(1000, one(spec, "1e3"))
        assert.equal(16, one(spec, "0x10"))
        assert.equal(5, one(spec, "0b101"))
        assert.equal(8, one(spec, "0o10"))
        assert.equal(0, one(spec, ".5"))
        assert.equal(-2, one(spec, "-2.9"))
        assert.equal(7, one(spec, "+7"))
        assert.equal(0, one(spec, ""))
      end)

      it("gives an integer subtype for truncated strings", function()
        assert.equal("integer", math.type(one({ "n", "integer", truncate = true }, "7.5")))
      end)

      it("rejects a non-numeric string with truncate", function()
        local spec = { "n", "integer", truncate = true }
        for _, s in ipairs({ "abc", "1a", "0x", "1e", "--1", "1 2", "nan", "-0x10", "1_000" }) do
          local _, errors = one(spec, s)
          assert.same({ "n: expected an integer, got a non-numeric string" }, errors, s)
        end
      end)

      it("rejects an infinite numeric string with truncate", function()
        local _, e1 = one({ "n", "integer", truncate = true }, "Infinity")
        local _, e2 = one({ "n", "integer", truncate = true }, "1e400")
        assert.same({ "n: expected an integer, got Infinity" }, e1)
        assert.same({ "n: expected an integer, got Infinity" }, e2)
      end)

      it("checks between after truncating, as upstream does", function()
        local spec = { "timeoutMs", "integer", between = { 1, 86400000 }, truncate = true,
          message = "timeoutMs must be between 1 and 86400000." }
        local _, e1 = one(spec, 0.9)
        local _, e2 = one(spec, "")
        local _, e3 = one(spec, 86400000.5)
        assert.same({ "timeoutMs must be between 1 and 86400000." }, e1)
        assert.same(e1, e2)
        assert.same({}, e3)
      end)

      it("keeps the built-in text for a value of the wrong type, whatever `message` says",
        function()
        local spec = { "timeoutMs", "integer", between = { 1, 86400000 }, truncate = true,
          message = "timeoutMs must be between 1 and 86400000." }
        local _, e1 = one(spec, "abc")
        local _, e2 = one(spec, true)
        local _, e3 = one(spec, 1e300)
        local _, e4 = one(spec, "0")
        assert.same({ "timeoutMs: expected an integer, got a non-numeric string" }, e1)
        assert.same({ "timeoutMs: expected an integer, got boolean" }, e2)
        -- out of range (even past what a JS peer holds) is the message's business
        assert.same({ "timeoutMs must be between 1 and 86400000." }, e3)
        assert.same({ "timeoutMs must be between 1 and 86400000." }, e4)
        local _, e5 = one({ "root", "string", pattern = "^/", message = "root: must be absolute" },
          7)
        assert.same({ "root: expected a string, got number" }, e5)
      end)

      it("checks both ends of between", function()
        local spec = { "p", "integer", between = { 1, 65535 } }
        assert.equal(1, one(spec, 1))
        assert.equal(65535, one(spec, 65535))
        local _, e1 = one(spec, 0)
        local _, e2 = one(spec, 65536)
        assert.same({ "p: must be between 1 and 65535" }, e1)
        assert.same(e1, e2)
      end)

      it("checks one_of with integers", function()
        local spec = { "n", "integer", one_of = { 1, 2 } }
        assert.equal(2, one(spec, 2.0))
        local _, errors = one(spec, 3)
        assert.same({ "n: must be one of 1, 2" }, errors)
      end)
    end)

    describe("number", function()
      it("keeps floats and integers", function()
        assert.equal(1.5, one({ "x", "number" }, 1.5))
        assert.equal("integer", math.type(one({ "x", "number" }, 2)))
      end)

      it("turns negative zero into zero", function()
        assert.equal("0.0", tostring(one({ "x", "number" }, -0.0)))
      end)

      it("rejects NaN and infinities", function()
        local _, e1 = one({ "x", "number" }, 0 / 0)
        local _, e2 = one({ "x", "number" }, math.huge)
        assert.same({ "x: expected a finite number, got NaN" }, e1)
        assert.same({ "x: expected a finite number, got Infinity" }, e2)
      end)

      it("rejects numeric strings", function()
        local _, errors = one({ "x", "number" }, "1.5")
        assert.same({ "x: expected a number, got string" }, errors)
      end)

      it("checks float bounds", function()
        local _, errors = one({ "x", "number", between = { 0.5, 1.5 } }, 2)
        assert.same({ "x: must be between 0.5 and 1.5" }, errors)
      end)
    end)

    describe("boolean", function()
      it("keeps booleans", function()
        assert.is_true(one({ "b", "boolean" }, true))
        assert.is_false(one({ "b", "boolean", default = true }, false))
      end)

      it("rejects booleans given as strings", function()
        for _, s in ipairs({ "true", "false", "1", "" }) do
          local _, errors = one({ "reuseLease", "boolean" }, s)
          assert.same({ "reuseLease: expected a boolean, got string" }, errors)
        end
      end)

      it("rejects numbers", function()
        local _, errors = one({ "b", "boolean" }, 1)
        assert.same({ "b: expected a boolean, got number" }, errors)
      end)
    end)

    describe("array", function()
      it("keeps a list and marks it as an array", function()
        local v = one({ "t", "array", elements = "string" }, { "a", "b" })
        assert.same({ "a", "b" }, v)
        assert.is_true(json.is_array(v))
      end)

      it("keeps an empty list as an array that encodes as []", function()
        local v = one({ "t", "array", elements = "string" }, {})
        assert.equal("[]", json.encode(v))
      end)

      it("returns a new table", function()
        local input = { "a" }
        assert.are_not.equal(input, one({ "t", "array", elements = "string" }, input))
      end)

      it("splits a comma string with comma_list, trimming and dropping empties", function()
        local v = one({ "tags", "array", elements = "string", comma_list = true }, " a, b ,,c ,")
        assert.same({ "a", "b", "c" }, v)
      end)

      it("trims and drops empty elements of a list with comma_list", function()
        local v = one({ "tags", "array", elements = "string", comma_list = true },
          { " a ", "", "  ", "b" })
        assert.same({ "a", "b" }, v)
      end)

      it("gives an empty array for a blank comma string", function()
        local v = one({ "tags", "array", elements = "string", comma_list = true }, "  ")
        assert.equal("[]", json.encode(v))
      end)

      it("rejects a string without comma_list", function()
        local _, errors = one({ "tags", "array", elements = "string" }, "a,b")
        assert.same({ "tags: expected an array, got string" }, errors)
      end)

      it("rejects an object", function()
        local _, errors = one({ "tags", "array", elements = "string" }, { a = "x" })
        assert.same({ "tags: expected an array, got object" }, errors)
      end)

      it("rejects a list with holes", function()
        local _, errors = one({ "tags", "array", elements = "string" }, { "a", nil, "c" })
        assert.equal(1, #errors)
      end)

      it("names each bad element", function()
        local _, errors = one({ "tags", "array", elements = "string" }, { "a", 2, true })
        assert.same({ "tags: item 2: expected a string, got number",
          "tags: item 3: expected a string, got boolean" }, errors)
      end)

      it("rejects null elements", function()
        local _, errors = one({ "tags", "array", elements = "string" }, { json.null })
        assert.same({ "tags: item 1: expected a string, got null" }, errors)
      end)

      it("normalizes integer elements", function()
        local v = one({ "n", "array", elements = "integer", truncate = true }, { 1.9, "2" })
        assert.same({ 1, 2 }, v)
      end)

      it("caps the errors for a huge bad array", function()
        local big = {}
        for i = 1, 100000 do
          big[i] = i
        end
        local _, errors = one({ "t", "array", elements = "string" }, big)
        assert.equal(11, #errors)
        assert.equal("t: 99990 more invalid items", errors[11])
      end)
    end)

    describe("map", function()
      it("keeps an object of the element type", function()
        assert.same({ A = "1", B = "" }, one({ "env", "map", elements = "string" },
          { A = "1", B = "" }))
      end)

      it("accepts an empty table", function()
        assert.same({}, one({ "env", "map", elements = "string" }, {}))
      end)

      it("rejects an array", function()
        local _, errors = one({ "env", "map", elements = "string" }, { "a" })
        assert.same({ "env: expected an object, got array" }, errors)
      end)

      it("rejects a string", function()
        local _, errors = one({ "env", "map", elements = "string" }, "A=1")
        assert.same({ "env: expected an object, got string" }, errors)
      end)

      it("names each bad value by key, in key order", function()
        local _, errors = one({ "env", "map", elements = "string" }, { B = 1, A = false })
        assert.same({ 'env: key "A": expected a string, got boolean',
          'env: key "B": expected a string, got number' }, errors)
      end)

      it("applies trim to values", function()
        assert.same({ A = "x" }, one({ "env", "map", elements = "string", trim = true },
          { A = " x " }))
      end)
    end)

    describe("check", function()
      it("receives the normalized value and the normalized config", function()
        local seen
        local s = schema.new({
          { "a", "string", trim = true, check = function(v, config)
            seen = { v, config.b }
          end },
          { "b", "integer", default = 3 },
        })
        s:normalize({ a = " x " })
        assert.same({ "x", 3 }, seen)
      end)

      it("adds a returned error verbatim", function()
        local s = schema.new({ { "k", "string", check = function()
          return "sshPrivateKey must be a PEM-encoded private key."
        end } })
        local _, errors = s:normalize({ k = "x" })
        assert.same({ "sshPrivateKey must be a PEM-encoded private key." }, errors)
      end)

      it("adds every error of a returned list", function()
        local s = schema.new({ { "env", "map", elements = "string", check = function(env)
          local out = {}
          for _, k in ipairs({ "A-1", "B-2" }) do
            if env[k] then
              out[#out + 1] = "env contains an invalid key: " .. k
            end
          end
          return out
        end } })
        local _, errors = s:normalize({ env = { ["A-1"] = "x", ["B-2"] = "y" } })
        assert.same({ "env contains an invalid key: A-1", "env contains an invalid key: B-2" },
          errors)
      end)

      it("adds a returned warning", function()
        local s = schema.new({ { "reuseLease", "boolean", default = false, check = function(v)
          if v then
            return nil, "reuseLease keeps the VM alive between runs."
          end
        end } })
        local _, errors, warnings = s:normalize({ reuseLease = true })
        assert.same({}, errors)
        assert.same({ "reuseLease keeps the VM alive between runs." }, warnings)
      end)

      it("runs on a default value", function()
        local called = false
        local s = schema.new({ { "n", "integer", default = 1, check = function()
          called = true
        end } })
        s:normalize({})
        assert.is_true(called)
      end)

      it("does not run when the value is absent or null", function()
        local called = false
        local s = schema.new({ { "k", "string", blank = "null", check = function()
          called = true
        end } })
        s:normalize({})
        s:normalize({ k = " " })
        assert.is_false(called)
      end)

      it("does not run when the value is invalid", function()
        local called = false
        local s = schema.new({ { "n", "integer", check = function()
          called = true
        end } })
        local _, errors = s:normalize({ n = "x" })
        assert.is_false(called)
        assert.equal(1, #errors)
      end)

      it("keeps check errors in field order", function()
        local s = schema.new({
          { "a", "string", check = function()
            return "a is bad"
          end },
          { "b", "integer" },
        })
        local _, errors = s:normalize({ a = "x", b = "y" })
        assert.same({ "a is bad", "b: expected an integer, got string" }, errors)
      end)

      it("turns a raising check into an error instead of raising", function()
        local s = schema.new({ { "a", "string", check = function(v)
          return v.no.such
        end } })
        local ok, _, errors = pcall(s.normalize, s, { a = "x" })
        assert.is_true(ok)
        assert.equal(1, #errors)
        assert.matches("^a: check failed: ", errors[1])
      end)

      it("lists a repeated error once", function()
        local s = schema.new({ { "a", "string", check = function()
          return { "same", "same" }
        end } })
        local _, errors = s:normalize({ a = "x" })
        assert.same({ "same" }, errors)
      end)
    end)
  end)

  describe("loose fields (upstream's JavaScript reading)", function()
    it("read strings as String(v): numbers become strings, other types are absent", function()
      local spec = { "name", "string", loose = true, trim = true, blank = "null" }
      assert.equal("42", (one(spec, 42)))
      assert.equal("4.5", (one(spec, 4.5)))
      assert.equal("x", (one(spec, "  x  ")))
      assert.equal(json.null, (one(spec, "   ")))
      local v, errors = one(spec, { 1 })
      assert.equal(json.null, v)
      assert.same({}, errors)
      assert.equal(json.null, (one(spec, true)))
    end)

    it("read numbers as Number(v), truncated; NaN is absent (then the default)", function()
      local spec = { "n", "integer", loose = true, default = 7 }
      assert.equal(450000, (one(spec, "450000.9")))
      assert.equal(1, (one(spec, true)))
      assert.equal(7, (one(spec, "not a number")))
      assert.equal(7, (one(spec, {})))
      assert.equal(-3, (one(spec, -3.7)))
      local v = one({ "cpu", "integer", loose = true }, "")
      assert.equal(0, v) -- Number("") is 0, as in JavaScript
    end)

    it("read booleans as === true", function()
      local spec = { "b", "boolean", loose = true, default = false }
      assert.is_true((one(spec, true)))
      assert.is_false((one(spec, "true")))
      assert.is_false((one(spec, 1)))
    end)

    it("drop what upstream's parse drops from lists and maps, never failing", function()
      local list = { "tags", "array", elements = "string", comma_list = true, loose = true }
      assert.same({ "a", "2", "b" }, (one(list, { " a ", 2, "", false, "b" })))
      assert.same({ "x", "y" }, (one(list, "x, ,y")))
      assert.same({}, (one(list, { k = "v" })))
      local map = { "env", "map", elements = "string", loose = true }
      assert.same({ FOO = "bar", N = "1" }, (one(map, { [" FOO "] = " bar ", N = 1, E = " " })))
      assert.same({}, (one(map, { "list" })))
      -- absent: empty, not null
      local s = schema.new({ list, map })
      local n = s:normalize({})
      assert.same({}, n.tags)
      assert.same({}, n.env)
    end)
  end)

  describe("fill, form_default and normalize", function()
    it("fill applies a default the manifest does not show; form_default the reverse", function()
      local s = schema.new({
        { "url", "string", loose = true, fill = "https://x/exec", trim = true,
          blank = "default" },
        { "cpu", "integer", loose = true, form_default = 4 },
      })
      local n = s:normalize({})
      assert.equal("https://x/exec", n.url)
      assert.equal(json.null, n.cpu)
      local props = s:json_schema().properties
      assert.is_nil(props.url.default)
      assert.equal(4, props.cpu.default)
    end)

    it("normalize transforms a present value before the constraints", function()
      local s = schema.new({ { "p", "string", normalize = string.lower, one_of = { "ab" } } })
      local n, errors = s:normalize({ p = "AB" })
      assert.equal("ab", n.p)
      assert.same({}, errors)
    end)
  end)

  describe("checks", function()
    it("field checks and schema checks see the mode: validate or call", function()
      local seen = {}
      local s = schema.new({
        { "key", "string", check = function(v, _, mode)
          seen[#seen + 1] = mode
          if mode == "validate" and v == "bad" then
            return "key is bad"
          end
        end },
      }, { checks = { { name = "needs key", fn = function(c, mode)
        if mode == "validate" and c.key == nil then
          return "a key is needed", "keys are nice"
        end
      end } } })
      local _, errors = s:normalize({ key = "bad" }, "call")
      assert.same({}, errors)
      _, errors = s:normalize({ key = "bad" })
      assert.same({ "key is bad" }, errors)
      local warnings
      _, errors, warnings = s:normalize({}, "validate")
      assert.same({ "a key is needed" }, errors)
      assert.same({ "keys are nice" }, warnings)
      assert.same({ "call", "validate" }, seen)
    end)

    it("report errors in error_order, then field order", function()
      local s = schema.new({
        { "a", "integer", between = { 1, 2 } },
        { "b", "integer", between = { 1, 2 } },
      }, { checks = { { name = "c", fn = function()
        return "c failed"
      end } }, error_order = { "c", "b" } })
      local _, errors = s:normalize({ a = 5, b = 5 })
      assert.same({ "c failed", "b: must be between 1 and 2", "a: must be between 1 and 2" },
        errors)
    end)

    it("refuse an order that names nothing, and checks that are not tables", function()
      assert.matches("error_order names \"zz\"", def_error_with({ { "a", "string" } },
        { error_order = { "zz" } }))
      assert.matches("check 1 must be a table", def_error_with({ { "a", "string" } },
        { checks = { 1 } }))
    end)
  end)

  describe("output and config", function()
    it("output orders normalizedConfig by output_order; config drops null", function()
      local s = schema.new({
        { "b", "string", blank = "null" },
        { "a", "string", blank = "null" },
      }, { output_order = { "a", "b" } })
      local n = s:normalize({ b = "x" })
      assert.equal('{"a":null,"b":"x"}', json.encode(s:output(n)))
      assert.same({ b = "x" }, s:config(n))
    end)
  end)

  describe("secrets", function()
    it("returns the non-empty values of secret fields", function()
      local s = schema.new({
        { "apiKey", "string", secret = true },
        { "sshPrivateKey", "string", secret = true },
        { "template", "string" },
      })
      assert.same({ "k1", "pem" }, s:secrets({ apiKey = "k1", sshPrivateKey = "pem",
        template = "t" }))
    end)

    it("includes the trimmed form of a padded secret", function()
      local s = schema.new({ { "apiKey", "string", secret = true } })
      assert.same({ " k ", "k" }, s:secrets({ apiKey = " k " }))
    end)

    it("skips empty, blank, absent, null and non-string values", function()
      local s = schema.new({
        { "a", "string", secret = true },
        { "b", "string", secret = true },
        { "c", "string", secret = true },
        { "d", "string", secret = true },
        { "e", "string", secret = true },
      })
      assert.same({}, s:secrets({ a = "", b = "  ", d = json.null, e = 5 }))
    end)

    it("returns an array that encodes as []", function()
      local s = schema.new({ { "a", "string", secret = true } })
      assert.equal("[]", json.encode(s:secrets({})))
    end)

    it("returns an empty array for a non-table config", function()
      assert.same({}, example():secrets(nil))
      assert.same({}, example():secrets("x"))
    end)
  end)

  describe("json_schema", function()
    it("describes every field for the manifest", function()
      local expected = [[
{
  "type": "object",
  "properties": {
    "template": {
      "type": "string",
      "description": "E2B template name.",
      "default": "base"
    },
    "apiKey": {
      "type": "string",
      "format": "secret-ref",
      "description": "API key."
    },
    "timeoutMs": {
      "type": "number",
      "default": 3600000,
      "minimum": 1,
      "maximum": 86400000
    },
    "reuseLease": {
      "type": "boolean",
      "default": false
    },
    "sshPort": {
      "type": "number",
      "default": 22,
      "minimum": 1,
      "maximum": 65535,
      "x-paperclip-advanced": true,
      "x-paperclip-group": "SSH access"
    },
    "mode": {
      "type": "string",
      "enum": [
        "a",
        "b"
      ]
    },
    "tags": {
      "type": "array",
      "items": {
        "type": "string"
      }
    },
    "env": {
      "type": "object",
      "additionalProperties": {
        "type": "string"
      }
    }
  }
}]]
      assert.equal(expected, json.pretty(example():json_schema()))
    end)

    it("encodes compactly in the same order", function()
      local s = schema.new({
        { "template", "string", default = "base" },
        { "apiKey", "string", secret = true },
        { "timeoutMs", "integer", default = 3600000 },
        { "reuseLease", "boolean", default = false },
      })
      assert.equal('{"type":"object","properties":{"template":{"type":"string","default":"base"},'
        .. '"apiKey":{"type":"string","format":"secret-ref"},'
        .. '"timeoutMs":{"type":"number","default":3600000},'
        .. '"reuseLease":{"type":"boolean","default":false}}}', json.encode(s:json_schema()))
    end)

    it("lists required fields only when there are some", function()
      local s = schema.new({ { "a", "string", required = true }, { "b", "string" },
        { "c", "integer", required = true } })
      assert.same({ "a", "c" }, s:json_schema().required)
      assert.is_nil(example():json_schema().required)
    end)

    it("includes title, lengths and element constraints", function()
      local s = schema.new({
        { "sshPrivateKey", "string", secret = true, max_length = 8192, min_length = 1,
          title = "SSH key" },
        { "ports", "array", elements = "integer", between = { 1, 65535 } },
        { "levels", "map", elements = "string", one_of = { "low", "high" } },
      })
      assert.equal('{"type":"object","properties":{"sshPrivateKey":{"type":"string",'
        .. '"format":"secret-ref","title":"SSH key","minLength":1,"maxLength":8192},'
        .. '"ports":{"type":"array","items":{"type":"number","minimum":1,"maximum":65535}},'
        .. '"levels":{"type":"object","additionalProperties":{"type":"string",'
        .. '"enum":["low","high"]}}}}', json.encode(s:json_schema()))
    end)

    it("writes an empty array default as []", function()
      local s = schema.new({ { "tags", "array", elements = "string", default = {} } })
      assert.matches('"default":%[%]', json.encode(s:json_schema()))
    end)

    it("writes a group without the advanced flag", function()
      local s = schema.new({ { "a", "string", ui = { group = "VM", advanced = false } } })
      local p = s:json_schema().properties.a
      assert.equal("VM", p["x-paperclip-group"])
      assert.is_nil(p["x-paperclip-advanced"])
    end)

    it("gives an empty schema an empty properties object", function()
      assert.equal('{"type":"object","properties":{}}', json.encode(schema.new({}):json_schema()))
    end)
  end)
end)
