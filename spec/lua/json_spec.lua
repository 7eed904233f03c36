-- Specs for host.json: the lua-cjson wrapper (decode fixes, exact encode, marks, pretty).
local json = require("host.json")

describe("host.json", function()
  describe("decode", function()
    it("returns integral numbers as Lua integers", function()
      local v = json.decode('{"id":1}')
      assert.equal("integer", math.type(v.id))
      assert.equal("id=1", "id=" .. v.id)
    end)

    it("returns integers written with an exponent or fraction as integers", function()
      local v = json.decode("[1e2, 2.0, -3E0]")
      assert.same({ 100, 2, -3 }, v)
      for i = 1, 3 do
        assert.equal("integer", math.type(v[i]))
      end
    end)

    it("keeps non-integral numbers as floats", function()
      local v = json.decode("[1.5, -0.25, 1e-7]")
      assert.equal(1.5, v[1])
      assert.equal(-0.25, v[2])
      assert.equal(1e-7, v[3])
      assert.equal("float", math.type(v[1]))
    end)

    it("returns 2^53 as an integer", function()
      local v = json.decode("9007199254740992")
      assert.equal("integer", math.type(v))
      assert.equal(9007199254740992, v)
    end)

    it("keeps numbers beyond 2^53 as floats", function()
      assert.equal("float", math.type(json.decode("9007199254740994")))
      assert.equal("float", math.type(json.decode("1e300")))
      assert.equal("float", math.type(json.decode("-12345678901234567890")))
    end)

    it("turns negative zero into the integer 0", function()
      local v = json.decode("-0")
      assert.equal("integer", math.type(v))
      assert.equal("0", tostring(v))
    end)

    it("normalizes numbers in nested arrays and objects", function()
      local v = json.decode('{"a":[1,{"b":[2,3.5]}],"c":{"d":4}}')
      assert.equal("integer", math.type(v.a[1]))
      assert.equal("integer", math.type(v.a[2].b[1]))
      assert.equal("float", math.type(v.a[2].b[2]))
      assert.equal("integer", math.type(v.c.d))
    end)

    it("decodes top-level scalars", function()
      assert.equal("integer", math.type(json.decode("7")))
      assert.equal("x", json.decode('"x"'))
      assert.is_true(json.decode("true"))
      assert.is_false(json.decode("false"))
    end)

    it("decodes null as json.null", function()
      assert.equal(json.null, json.decode("null"))
      assert.equal(json.null, json.decode('{"a":null}').a)
      assert.equal(json.null, json.decode("[null]")[1])
    end)

    it("decodes \\u escapes to UTF-8", function()
      assert.equal("é\0A", json.decode('"\\u00e9\\u0000\\u0041"'))
    end)

    it("decodes a surrogate pair to one 4-byte UTF-8 character", function()
      assert.equal("\xF0\x9F\x98\x80", json.decode('"\\ud83d\\ude00"'))
    end)

    it("decodes surrogate pairs written in upper case hex", function()
      assert.equal("\u{1F600}", json.decode('"\\uD83D\\uDE00"'))
    end)

    it("replaces a lone high surrogate with U+FFFD", function()
      assert.equal("a\u{FFFD}b", json.decode('"a\\ud800b"'))
    end)

    it("replaces a lone low surrogate with U+FFFD", function()
      assert.equal("\u{FFFD}", json.decode('"\\udc00"'))
    end)

    it("replaces a high surrogate followed by a non-surrogate escape", function()
      assert.equal("\u{FFFD}A", json.decode('"\\ud800\\u0041"'))
    end)

    it("replaces a reversed surrogate pair with two U+FFFD", function()
      assert.equal("\u{FFFD}\u{FFFD}", json.decode('"\\udc00\\ud800"'))
    end)

    it("replaces a lone surrogate at the end of a string", function()
      assert.same({ "x\u{FFFD}" }, json.decode('["x\\ud83d"]'))
    end)

    it("keeps valid pairs next to lone surrogates", function()
      assert.equal("\u{1F600}\u{FFFD}", json.decode('"\\ud83d\\ude00\\ud83d"'))
    end)

    it("does not treat an escaped backslash before u as an escape", function()
      assert.equal("\\ud800 \u{FFFD}", json.decode('"\\\\ud800 \\ud800"'))
    end)

    it("repairs lone surrogates inside object keys", function()
      local v = json.decode('{"k\\udfff":1}')
      assert.equal(1, v["k\u{FFFD}"])
    end)

    it("passes raw UTF-8 through", function()
      assert.equal("héllo 世界", json.decode('"héllo 世界"'))
    end)

    it("returns nil, a message and the json code on invalid JSON", function()
      local v, err, code = json.decode("{")
      assert.is_nil(v)
      assert.matches("^json: ", err)
      assert.equal("json", code)
    end)

    it("fails on an empty string", function()
      local v, _, code = json.decode("")
      assert.is_nil(v)
      assert.equal("json", code)
    end)

    it("fails on trailing garbage", function()
      local _, _, code = json.decode('{"a":1} x')
      assert.equal("json", code)
    end)

    it("fails on a trailing comma", function()
      local _, _, code = json.decode("[1,]")
      assert.equal("json", code)
    end)

    it("rejects NaN, Infinity and hex numbers, which JSON does not have", function()
      for _, text in ipairs({ "NaN", "nan", "Infinity", "-Infinity", "0x10", "[inf]" }) do
        local v, _, code = json.decode(text)
        assert.is_nil(v, text)
        assert.equal("json", code)
      end
    end)

    it("fails on a malformed \\u escape even after the surrogate repair", function()
      local v, err, code = json.decode('"\\u12"')
      assert.is_nil(v)
      assert.matches("unicode escape", err)
      assert.equal("json", code)
    end)

    it("fails on a malformed escape next to a lone surrogate", function()
      local _, _, code = json.decode('"\\ud800\\q"')
      assert.equal("json", code)
    end)

    it("fails on nesting deeper than 1000", function()
      local _, _, code = json.decode(string.rep("[", 1001) .. string.rep("]", 1001))
      assert.equal("json", code)
    end)

    it("decodes nesting of 1000", function()
      local v = json.decode(string.rep("[", 1000) .. string.rep("]", 1000))
      assert.equal("table", type(v))
    end)

    it("decodes a large string", function()
      local big = string.rep("x", 1024 * 1024)
      assert.equal(big, json.decode('"' .. big .. '"'))
    end)

    it("raises when given a non-string", function()
      assert.has_error(function()
        json.decode(nil)
      end, "bad argument #1 to 'decode' (string expected, got nil)")
    end)
  end)

  describe("encode", function()
    it("encodes integers up to 2^53 exactly", function()
      assert.equal("123456789012345", json.encode(123456789012345))
      assert.equal("9007199254740992", json.encode(9007199254740992))
      assert.equal("-9007199254740992", json.encode(-9007199254740992))
    end)

    it("encodes 64-bit integers exactly", function()
      assert.equal("9223372036854775807", json.encode(math.maxinteger))
      assert.equal("-9223372036854775808", json.encode(math.mininteger))
    end)

    it("encodes large integers inside tables exactly", function()
      assert.equal('{"n":123456789012345}', json.encode({ n = 123456789012345 }))
      assert.equal("[99999999999999,100000000000000]", json.encode({ 99999999999999, 1e14 }))
    end)

    it("encodes integral floats without a fraction", function()
      assert.equal("3", json.encode(3.0))
      assert.equal("[3]", json.encode({ 3.0 }))
      assert.equal("1000000000000000", json.encode(1e15))
    end)

    it("encodes negative zero as 0", function()
      assert.equal("0", json.encode(-0.0))
      assert.equal("[0]", json.encode({ -0.0 }))
    end)

    it("encodes floats in the shortest form that reads back the same", function()
      assert.equal("0.1", json.encode(0.1))
      assert.equal("1.5", json.encode(1.5))
      assert.equal("0.30000000000000004", json.encode(0.1 + 0.2))
      assert.equal(1e-7, tonumber(json.encode(1e-7)))
      assert.equal(1e300, tonumber(json.encode(1e300)))
    end)

    it("round-trips floats with 17 significant digits", function()
      local x = 1234.5678901234567
      assert.equal(x, json.decode(json.encode({ x }))[1])
    end)

    it("returns a json error for NaN", function()
      local s, err, code = json.encode(0 / 0)
      assert.is_nil(s)
      assert.matches("NaN", err)
      assert.equal("json", code)
    end)

    it("returns a json error for infinities, also when nested", function()
      for _, v in ipairs({ math.huge, -math.huge, { a = { math.huge } }, { -math.huge } }) do
        local s, _, code = json.encode(v)
        assert.is_nil(s)
        assert.equal("json", code)
      end
    end)

    it("returns a json error for a NaN deep inside a plain table", function()
      local s, _, code = json.encode({ a = { b = { 1, 2, 0 / 0 } } })
      assert.is_nil(s)
      assert.equal("json", code)
    end)

    it("escapes control characters so one message is one line", function()
      local s = json.encode({ s = "a\r\nb\tc\0d\1e" })
      assert.equal('{"s":"a\\r\\nb\\tc\\u0000d\\u0001e"}', s)
      assert.is_nil(s:find("[\r\n]"))
    end)

    it("escapes control characters in ordered tables too", function()
      local s = json.encode(json.ordered({ s = "a\r\nb" }, { "s" }))
      assert.equal('{"s":"a\\r\\nb"}', s)
    end)

    it("escapes quotes and backslashes", function()
      assert.equal('"a\\"b\\\\c"', json.encode('a"b\\c'))
    end)

    it("passes non-ASCII UTF-8 through", function()
      assert.equal('"é世😀"', json.encode("é世😀"))
    end)

    it("encodes json.null, booleans and strings", function()
      assert.equal("null", json.encode(json.null))
      assert.equal("[true,false,null]", json.encode({ true, false, json.null }))
      assert.equal('"x"', json.encode("x"))
    end)

    it("encodes an unmarked empty table as an object", function()
      assert.equal("{}", json.encode({}))
    end)

    it("encodes a marked empty array as []", function()
      assert.equal("[]", json.encode(json.array({})))
    end)

    it("encodes marked arrays nested in plain tables", function()
      assert.equal('{"a":{"b":[]}}', json.encode({ a = { b = json.array() } }))
      assert.equal("[[],[[]]]", json.encode(json.array({ json.array(), { json.array() } })))
    end)

    it("encodes a marked non-empty array as an array", function()
      assert.equal('["a","b"]', json.encode(json.array({ "a", "b" })))
    end)

    it("encodes holes in arrays as null", function()
      assert.equal("[1,null,3]", json.encode({ 1, nil, 3 }))
      assert.equal("[1,null,3]", json.encode(json.array({ 1, nil, 3, nil })))
    end)

    it("fails on an excessively sparse array", function()
      local _, _, code = json.encode({ [1] = 1, [100] = 2 })
      assert.equal("json", code)
      local _, _, code2 = json.encode(json.array({ [1] = 1, [100] = 2 }))
      assert.equal("json", code2)
    end)

    it("fails on a marked array with a string key", function()
      local s, err, code = json.encode(json.array({ 1, x = 2 }))
      assert.is_nil(s)
      assert.matches("array", err)
      assert.equal("json", code)
    end)

    it("encodes a table with mixed keys as an object", function()
      assert.same({ ["1"] = "a", x = "b" }, json.decode(json.encode({ "a", x = "b" })))
    end)

    it("returns a json error for functions", function()
      local s, _, code = json.encode({ f = print })
      assert.is_nil(s)
      assert.equal("json", code)
    end)

    it("returns a json error for boolean table keys", function()
      local _, _, code = json.encode({ [true] = 1 })
      assert.equal("json", code)
    end)

    it("returns a json error for a table that contains itself", function()
      local t = {}
      t.self = t
      local s, err, code = json.encode(t)
      assert.is_nil(s)
      assert.matches("contains itself", err)
      assert.equal("json", code)
    end)

    it("returns a json error for a cycle through an array", function()
      local t = { 1 }
      t[2] = t
      local _, _, code = json.encode({ x = t })
      assert.equal("json", code)
    end)

    it("returns a json error beyond 1000 levels of nesting", function()
      local deep = {}
      local cur = deep
      for _ = 1, 1100 do
        cur[1] = {}
        cur = cur[1]
      end
      local s, _, code = json.encode(deep)
      assert.is_nil(s)
      assert.equal("json", code)
    end)

    it("encodes a large string", function()
      local big = string.rep("ab", 512 * 1024)
      assert.equal('"' .. big .. '"', json.encode(big))
    end)

    it("round-trips a decoded message", function()
      local text = '{"jsonrpc":"2.0","id":17,"params":{"a":[1,2.5,"x",null,true]}}'
      assert.same(json.decode(text), json.decode(json.encode(json.decode(text))))
      assert.matches('"id":17[,}]', json.encode(json.decode(text)))
    end)
  end)

  describe("array", function()
    it("returns the table it marks", function()
      local t = {}
      assert.equal(t, json.array(t))
    end)

    it("creates a marked table when given nil", function()
      local t = json.array()
      assert.same({}, t)
      assert.is_true(json.is_array(t))
    end)

    it("reports unmarked tables and non-tables as not arrays", function()
      assert.is_false(json.is_array({}))
      assert.is_false(json.is_array({ 1, 2 }))
      assert.is_false(json.is_array("x"))
      assert.is_false(json.is_array(nil))
    end)

    it("leaves the table's metatable alone", function()
      local mt = {}
      local t = setmetatable({}, mt)
      json.array(t)
      assert.equal(mt, getmetatable(t))
    end)

    it("raises for a non-table", function()
      assert.has_error(function()
        json.array("x")
      end, "bad argument #1 to 'array' (table expected, got string)")
    end)

    it("is seen by a second copy of the module", function()
      local first = package.loaded["host.json"]
      package.loaded["host.json"] = nil
      local ok, second = pcall(require, "host.json")
      package.loaded["host.json"] = first
      assert.is_true(ok)
      assert.are_not.equal(first, second)
      assert.equal("[]", json.encode(second.array()))
      assert.equal("[]", second.encode(json.array()))
      assert.equal('{"b":1,"a":2}', second.encode(json.ordered({ a = 2, b = 1 }, { "b", "a" })))
    end)

    it("clears an ordered mark", function()
      local t = json.array(json.ordered({}, { "a" }))
      assert.is_nil(json.order_of(t))
      assert.equal("[]", json.encode(t))
    end)
  end)

  describe("ordered", function()
    it("emits keys in the given order", function()
      local t = json.ordered({ b = 2, a = 1, c = 3 }, { "c", "a", "b" })
      assert.equal('{"c":3,"a":1,"b":2}', json.encode(t))
    end)

    it("skips listed keys that are absent", function()
      local t = json.ordered({ a = 1 }, { "z", "a", "y" })
      assert.equal('{"a":1}', json.encode(t))
    end)

    it("emits unlisted keys after the listed ones, sorted", function()
      local t = json.ordered({ a = 1, z = 2, m = 3, b = 4 }, { "z" })
      assert.equal('{"z":2,"a":1,"b":4,"m":3}', json.encode(t))
    end)

    it("emits a key listed twice once", function()
      local t = json.ordered({ a = 1, b = 2 }, { "b", "a", "b" })
      assert.equal('{"b":2,"a":1}', json.encode(t))
    end)

    it("encodes an empty ordered table as {}", function()
      assert.equal("{}", json.encode(json.ordered({}, {})))
    end)

    it("encodes an ordered table with integer keys as an object", function()
      assert.equal('{"1":"x"}', json.encode(json.ordered({ "x" }, {})))
    end)

    it("is honoured inside plain tables and arrays", function()
      local inner = json.ordered({ y = 1, x = 2 }, { "y", "x" })
      assert.equal('{"o":[{"y":1,"x":2}]}', json.encode({ o = { inner } }))
    end)

    it("encodes json.null values", function()
      local t = json.ordered({ a = json.null, b = 1 }, { "a", "b" })
      assert.equal('{"a":null,"b":1}', json.encode(t))
    end)

    it("records the key list", function()
      local keys = { "a" }
      assert.equal(keys, json.order_of(json.ordered({}, keys)))
    end)

    it("clears an array mark", function()
      local t = json.ordered(json.array({}), {})
      assert.is_false(json.is_array(t))
    end)

    it("raises for a non-table", function()
      assert.has_error(function()
        json.ordered(nil, {})
      end, "bad argument #1 to 'ordered' (table expected, got nil)")
    end)

    it("raises for a missing key list", function()
      assert.has_error(function()
        json.ordered({})
      end, "bad argument #2 to 'ordered' (table expected, got nil)")
    end)

    it("raises for a non-string key in the list", function()
      assert.has_error(function()
        json.ordered({}, { "a", 2 })
      end, "bad argument #2 to 'ordered' (key 2 is a number, not a string)")
    end)
  end)

  describe("pretty", function()
    it("indents with two spaces", function()
      local v = json.ordered({ a = 1, b = { 1, 2 }, c = { d = true } }, { "a", "b", "c" })
      local expected = table.concat({
        "{",
        '  "a": 1,',
        '  "b": [',
        "    1,",
        "    2",
        "  ],",
        '  "c": {',
        '    "d": true',
        "  }",
        "}",
      }, "\n")
      assert.equal(expected, json.pretty(v))
    end)

    it("sorts the keys of unmarked objects", function()
      assert.equal('{\n  "a": 2,\n  "b": 1\n}', json.pretty({ b = 1, a = 2 }))
    end)

    it("writes empty objects and arrays inline", function()
      local v = json.ordered({ o = {}, a = json.array() }, { "o", "a" })
      assert.equal('{\n  "o": {},\n  "a": []\n}', json.pretty(v))
    end)

    it("encodes top-level scalars", function()
      assert.equal("1", json.pretty(1))
      assert.equal('"x"', json.pretty("x"))
      assert.equal("null", json.pretty(json.null))
    end)

    it("does not escape slashes", function()
      assert.equal('"https://exe.dev/exec"', json.pretty("https://exe.dev/exec"))
    end)

    it("passes non-ASCII UTF-8 through and escapes control characters", function()
      assert.equal('"é\\n\\u001b\\""', json.pretty('é\n\27"'))
    end)

    it("writes numeric keys as strings", function()
      assert.equal('{\n  "1": "a",\n  "x": 1\n}', json.pretty({ "a", x = 1 }))
    end)

    it("writes large integers exactly", function()
      assert.equal("[\n  123456789012345\n]", json.pretty({ 123456789012345 }))
    end)

    it("produces JSON that decodes to the same value", function()
      local v = { a = { 1, 2.5, "x\ty" }, b = { c = json.null, d = false } }
      assert.same(v, json.decode(json.pretty(v)))
    end)

    it("returns a json error for NaN", function()
      local s, _, code = json.pretty({ x = 0 / 0 })
      assert.is_nil(s)
      assert.equal("json", code)
    end)

    it("returns a json error for a cycle", function()
      local t = {}
      t[1] = t
      local _, _, code = json.pretty(t)
      assert.equal("json", code)
    end)
  end)
end)
