-- spec/host/util_spec.lua: host.util through the real host (host.core.util in C).
local helpers = require("spec.helpers")
local util = require("host.util")

local R = "\xEF\xBF\xBD" -- U+FFFD

-- Misuse raises an argument error (not any error: a misspelt function would also raise).
local function assert_misuse(fn)
  local ok, err = pcall(fn)
  assert.is_false(ok)
  assert.matches("bad argument #%d", tostring(err))
end

local function shell_quote(s)
  return "'" .. s:gsub("'", "'\\''") .. "'"
end

local function sh(cmd)
  local ok = os.execute(cmd)
  assert(ok, "command failed: " .. cmd)
end

local function exists(path) -- lstat-like: true for a dangling symlink too
  return os.rename(path, path) ~= nil
end

local read_file, write_file = helpers.read_file, helpers.write_file

local function mode_of(path)
  local p = assert(io.popen("stat -c %a " .. shell_quote(path)))
  local mode = p:read("l")
  p:close()
  return mode
end

-- Random byte strings that exercise the UTF-8 decoder: ASCII, continuation and lead bytes,
-- invalid bytes, and valid characters that chunk boundaries will cut.
local interesting = {
  0x00, 0x41, 0x7F, 0x80, 0x8F, 0x90, 0x9F, 0xA0, 0xBF, 0xC0, 0xC1, 0xC2, 0xDF, 0xE0, 0xE1,
  0xEC, 0xED, 0xEE, 0xEF, 0xF0, 0xF1, 0xF3, 0xF4, 0xF5, 0xF7, 0xF8, 0xFC, 0xFE, 0xFF,
}

local function random_utf8ish(n)
  local out = {}
  while #out < n do
    local kind = math.random(4)
    if kind == 1 then
      out[#out + 1] = string.char(math.random(0, 255))
    elseif kind == 2 then
      out[#out + 1] = string.char(interesting[math.random(#interesting)])
    else
      local top = ({ 0x7F, 0x7FF, 0xFFFF, 0x10FFFF })[math.random(4)]
      local cp = math.random(0, top)
      if cp >= 0xD800 and cp <= 0xDFFF then
        cp = 0xFFFD
      end
      for _, c in utf8.codes(utf8.char(cp)) do
        local enc = utf8.char(c)
        for i = 1, #enc do
          out[#out + 1] = enc:sub(i, i)
        end
      end
    end
  end
  return table.concat(out, "", 1, n)
end

-- random_texts(seed, count, max_len): iterates over count random_utf8ish strings of 0 to
-- max_len bytes, seeding the generator first (the same strings every run).
local function random_texts(seed, count, max_len)
  math.randomseed(seed)
  local i = 0
  return function()
    i = i + 1
    if i <= count then
      return random_utf8ish(math.random(0, max_len))
    end
  end
end

-- Clean s cut at the given sorted positions, carrying rest forward; final on the last chunk.
local function clean_in_chunks(s, cuts)
  local pieces, rest, prev = {}, "", 0
  for i = 1, #cuts + 1 do
    local stop = cuts[i] or #s
    local out
    out, rest = util.utf8_clean(rest .. s:sub(prev + 1, stop), i > #cuts)
    assert(util.utf8_valid(out), "a piece is not valid UTF-8")
    assert(#rest <= 3, "rest longer than a cut character")
    pieces[#pieces + 1] = out
    prev = stop
  end
  assert(rest == "", "final chunk left a rest")
  return table.concat(pieces)
end

describe("host.util", function()
  describe("random", function()
    it("returns exactly n bytes", function()
      assert.equal("", util.random(0))
      assert.equal(1, #util.random(1))
      assert.equal(32, #util.random(32))
      assert.equal(1048576, #util.random(1048576))
    end)

    it("returns different bytes on each call", function()
      assert.not_equal(util.random(16), util.random(16))
    end)

    it("raises on a bad n", function()
      assert_misuse(function() util.random(-1) end)
      assert_misuse(function() util.random(1048577) end)
      assert_misuse(function() util.random(1.5) end)
      assert_misuse(function() util.random("x") end)
      assert_misuse(function() util.random() end)
    end)
  end)

  describe("uuid", function()
    it("returns lowercase RFC 4122 version 4 uuids", function()
      local pattern = "^" .. ("%x"):rep(8) .. "%-" .. ("%x"):rep(4) .. "%-4" .. ("%x"):rep(3)
        .. "%-[89ab]" .. ("%x"):rep(3) .. "%-" .. ("%x"):rep(12) .. "$"
      for _ = 1, 100 do
        local id = util.uuid()
        assert.matches(pattern, id)
        assert.equal(id:lower(), id)
      end
    end)

    it("does not repeat", function()
      local seen = {}
      for _ = 1, 1000 do
        local id = util.uuid()
        assert.is_nil(seen[id])
        seen[id] = true
      end
    end)
  end)

  describe("sha256", function()
    it("matches the FIPS 180-4 vectors", function()
      assert.equal("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        util.sha256_hex(""))
      assert.equal("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
        util.sha256_hex("abc"))
      assert.equal("248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1",
        util.sha256_hex("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"))
      assert.equal("cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0",
        util.sha256_hex(("a"):rep(1000000)))
    end)

    it("returns 32 raw bytes whose hex is sha256_hex", function()
      local d = util.sha256("abc")
      assert.equal(32, #d)
      assert.equal(util.sha256_hex("abc"), util.hex(d))
    end)

    it("hashes bytes, NULs included", function()
      assert.not_equal(util.sha256("a\0b"), util.sha256("a"))
    end)

    it("raises on a non-string, numbers included", function()
      assert_misuse(function() util.sha256(1) end)
      assert_misuse(function() util.sha256(nil) end)
      assert_misuse(function() util.sha256_hex(1.0) end)
      assert_misuse(function() util.sha256_hex({}) end)
    end)
  end)

  describe("hmac_sha256", function()
    it("matches the RFC 4231 vectors", function()
      local function h(key, msg) return util.hex(util.hmac_sha256(key, msg)) end
      assert.equal("b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7",
        h(("\x0b"):rep(20), "Hi There"))
      assert.equal("5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843",
        h("Jefe", "what do ya want for nothing?"))
      assert.equal("60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54",
        h(("\xaa"):rep(131), "Test Using Larger Than Block-Size Key - Hash Key First"))
      assert.equal("9b09ffa71b942fcb27635fbcd5b0e944bfdc63644f0713938a7f51535c3a35e2",
        h(("\xaa"):rep(131), "This is a test using a larger than block-size key and a larger "
          .. "than block-size data. The key needs to be hashed before being used by the HMAC "
          .. "algorithm."))
    end)

    it("raises on a non-string key or message", function()
      assert_misuse(function() util.hmac_sha256(nil, "m") end)
      assert_misuse(function() util.hmac_sha256("k", 5) end)
    end)
  end)

  describe("hex", function()
    it("encodes two lowercase digits per byte", function()
      assert.equal("", util.hex(""))
      assert.equal("00ff10ab", util.hex("\0\255\16\171"))
    end)

    it("raises on a non-string", function()
      assert_misuse(function() util.hex(12) end)
    end)
  end)

  describe("base64", function()
    local vectors = { -- RFC 4648 section 10
      { "", "" }, { "f", "Zg==" }, { "fo", "Zm8=" }, { "foo", "Zm9v" },
      { "foob", "Zm9vYg==" }, { "fooba", "Zm9vYmE=" }, { "foobar", "Zm9vYmFy" },
    }

    it("encodes and decodes the RFC 4648 vectors", function()
      for _, v in ipairs(vectors) do
        assert.equal(v[2], util.base64_encode(v[1]))
        assert.equal(v[1], util.base64_decode(v[2]))
      end
    end)

    it("decodes unpadded input", function()
      assert.equal("f", util.base64_decode("Zg"))
      assert.equal("fo", util.base64_decode("Zm8"))
      assert.equal("fooba", util.base64_decode("Zm9vYmE"))
    end)

    it("returns nil, message, protocol on invalid input", function()
      local bad = {
        "Z", "Zm9vY", "Zg=", "Zg===", "=", "====", "Zg==Zg==", "Zm=v", "Zm9v Yg==",
        "Zm9v\nYg==", "Zm9vYg==\n", "Zm-v", "Zm_v", "Zh==", "Zm9=", "Zm\0v", "Zm\128v",
      }
      for _, s in ipairs(bad) do
        local res, err, code = util.base64_decode(s)
        assert.is_nil(res, s)
        assert.equal("protocol", code)
        assert.matches("base64", err)
      end
    end)

    it("round-trips random bytes of every length up to 100", function()
      for n = 0, 100 do
        local bytes = util.random(n)
        assert.equal(bytes, util.base64_decode(util.base64_encode(bytes)))
      end
    end)

    it("raises on a non-string", function()
      assert_misuse(function() util.base64_encode(nil) end)
      assert_misuse(function() util.base64_decode(42) end)
    end)

    it("has a URL-safe, unpadded form", function()
      assert.equal("-_8", util.base64url_encode("\251\255"))
      assert.equal("\251\255", util.base64url_decode("-_8"))
      assert.equal("\251\255", util.base64url_decode("-_8="))
      assert.equal(32, #util.base64url_encode(util.random(24)))
      local res, _, code = util.base64url_decode("+/8")
      assert.is_nil(res)
      assert.equal("protocol", code)
      for n = 0, 40 do
        local bytes = util.random(n)
        local text = util.base64url_encode(bytes)
        assert.is_nil(text:find("[+/=]"))
        assert.equal(bytes, util.base64url_decode(text))
      end
    end)
  end)

  describe("constant_time_equal", function()
    it("compares contents and lengths", function()
      assert.is_true(util.constant_time_equal("", ""))
      assert.is_true(util.constant_time_equal("token", "token"))
      assert.is_false(util.constant_time_equal("token", "tokeN"))
      assert.is_false(util.constant_time_equal("token", "Token"))
      assert.is_false(util.constant_time_equal("token", "token2"))
      assert.is_false(util.constant_time_equal("token2", "token"))
      assert.is_false(util.constant_time_equal("", "\0"))
      assert.is_false(util.constant_time_equal("a\0", "a"))
    end)

    it("raises on a non-string", function()
      assert_misuse(function() util.constant_time_equal("a", nil) end)
      assert_misuse(function() util.constant_time_equal(1, "1") end)
    end)
  end)

  describe("utf8_clean", function()
    it("returns valid text unchanged with an empty rest", function()
      for _, s in ipairs({ "", "plain", "a\0b", "\xC3\xA9t\xC3\xA9", "\xF0\x9F\x98\x80",
        "\xF4\x8F\xBF\xBF", "\xEF\xBF\xBF", R }) do
        local out, rest = util.utf8_clean(s)
        assert.equal(s, out)
        assert.equal("", rest)
        assert.is_true(util.utf8_valid(s))
      end
    end)

    it("replaces each maximal subpart with one U+FFFD", function()
      local cases = {
        { "\x80", R }, { "a\x80\xBFz", "a" .. R .. R .. "z" },
        { "\xC0\xAF", R .. R }, { "\xE0\x80\xAF", R .. R .. R },
        { "\xF0\x80\x80\xAF", R:rep(4) }, -- overlongs
        { "\xED\xA0\x80", R:rep(3) }, { "\xED\xBF\xBF", R:rep(3) }, -- surrogates
        { "\xF4\x90\x80\x80", R:rep(4) }, { "\xF5\x80\x80\x80", R:rep(4) }, -- > U+10FFFF
        { "\xF8\x88\x80\x80\x80", R:rep(5) }, { "\xFC\x84\x80\x80\x80\x80", R:rep(6) },
        { "\xFE", R }, { "\xFF", R },
        { "\xE2\x82", R }, { "\xF0\x9F\x98", R }, { "\xE2\x82A", R .. "A" },
        { "\xC3\xC3\xA9", R .. "\xC3\xA9" },
        { "\x61\xF1\x80\x80\xE1\x80\xC2\x62\x80\x63\x80\xBF\x64", -- Unicode table 3-8
          "a" .. R .. R .. R .. "b" .. R .. "c" .. R .. R .. "d" },
      }
      for _, c in ipairs(cases) do
        local out, rest = util.utf8_clean(c[1], true)
        assert.equal(c[2], out)
        assert.equal("", rest)
        assert.is_false(util.utf8_valid(c[1]))
      end
    end)

    it("defaults final to true", function()
      assert.equal(R, (util.utf8_clean("\xE2\x82")))
      assert.equal(R, (util.utf8_clean("\xE2\x82", nil)))
    end)

    it("leaves a cut character as rest when not final", function()
      local out, rest = util.utf8_clean("ab\xE2\x82", false)
      assert.equal("ab", out)
      assert.equal("\xE2\x82", rest)
      out, rest = util.utf8_clean(rest .. "\xAC!", false)
      assert.equal("\xE2\x82\xAC!", out)
      assert.equal("", rest)
    end)

    it("replaces what is already invalid even when not final", function()
      local out, rest = util.utf8_clean("ab\xE0\x80", false)
      assert.equal("ab" .. R .. R, out)
      assert.equal("", rest)
      out, rest = util.utf8_clean("\xED\xA0", false)
      assert.equal(R .. R, out)
      assert.equal("", rest)
    end)

    it("gives the same text whatever the chunking (two chunks, every cut)", function()
      for s in random_texts(20240601, 400, 40) do
        local whole = util.utf8_clean(s, true)
        assert.is_true(util.utf8_valid(whole))
        for k = 0, #s do
          assert.equal(whole, clean_in_chunks(s, { k }))
        end
      end
    end)

    it("gives the same text whatever the chunking (random many-way cuts)", function()
      for s in random_texts(7, 400, 60) do
        local whole = util.utf8_clean(s, true)
        for _ = 1, 5 do
          local cuts = {}
          for i = 1, math.random(1, 8) do
            cuts[i] = math.random(0, #s)
          end
          table.sort(cuts)
          assert.equal(whole, clean_in_chunks(s, cuts))
        end
        local bytewise = {}
        for i = 1, #s - 1 do
          bytewise[i] = i
        end
        assert.equal(whole, clean_in_chunks(s, bytewise))
      end
    end)

    it("raises on a non-string or a non-boolean final", function()
      assert_misuse(function() util.utf8_clean(nil) end)
      assert_misuse(function() util.utf8_clean(12) end)
      assert_misuse(function() util.utf8_clean("x", "yes") end)
      assert_misuse(function() util.utf8_clean("x", 0) end)
      assert_misuse(function() util.utf8_valid(true) end)
    end)
  end)

  describe("utf8_stream", function()
    it("cleans chunk by chunk to the same text as the whole", function()
      for s in random_texts(99, 200, 60) do
        local stream, pieces, prev = util.utf8_stream(), {}, 0
        while prev < #s do
          local stop = math.min(#s, prev + math.random(0, 5))
          local piece = stream:push(s:sub(prev + 1, stop))
          assert.is_true(util.utf8_valid(piece))
          pieces[#pieces + 1] = piece
          prev = stop
        end
        pieces[#pieces + 1] = stream:finish()
        assert.equal(util.utf8_clean(s, true), table.concat(pieces))
      end
    end)

    it("holds a cut character until the next push, and flushes it at finish", function()
      local stream = util.utf8_stream()
      assert.equal("a", stream:push("a\xF0\x9F"))
      assert.equal("", stream:push("\x98"))
      assert.equal("\xF0\x9F\x98\x80b", stream:push("\x80b"))
      assert.equal("", stream:push("\xE2\x82"))
      assert.equal(R, stream:finish())
      assert.equal("", stream:finish())
    end)

    it("raises on a non-string chunk", function()
      local stream = util.utf8_stream()
      assert_misuse(function() stream:push(nil) end)
    end)
  end)

  describe("json_clip", function()
    local cjson = require("cjson") -- what host.json encodes with
    local function encoded_size(s)
      return #cjson.encode(s) - 2
    end

    it("sizes the cleaned text exactly as cjson encodes it", function()
      local escaped = { '"', "\\", "/", "\b", "\t", "\n", "\f", "\r", "\0", "\31", "\127" }
      for raw in random_texts(7, 300, 60) do
        local s = raw:gsub(".", function(c)
          return math.random(4) == 1 and escaped[math.random(#escaped)] or c
        end)
        local text, used, size, cut = util.json_clip(s, math.maxinteger)
        assert.equal(util.utf8_clean(s), text)
        assert.equal(encoded_size(text), size)
        assert.equal(#s, used)
        assert.is_false(cut)
      end
    end)

    it("keeps the longest run of whole characters within the budget", function()
      local s = "a\0\xF0\x9F\x98\x80\xFF\n"
      local want = { -- budget -> text kept
        [0] = "", "a", "a", "a", "a", "a", "a", "a\0", "a\0", "a\0", "a\0",
        "a\0\xF0\x9F\x98\x80", "a\0\xF0\x9F\x98\x80", "a\0\xF0\x9F\x98\x80",
        "a\0\xF0\x9F\x98\x80" .. R, "a\0\xF0\x9F\x98\x80" .. R,
        "a\0\xF0\x9F\x98\x80" .. R .. "\n",
      }
      for budget = 0, #want do
        local text, _, size, cut = util.json_clip(s, budget)
        assert.equal(want[budget], text, "budget " .. budget)
        assert.equal(encoded_size(text), size)
        assert.equal(budget < 16, cut)
      end
    end)

    it("returns valid text that fits as the very same string", function()
      local s = ("x"):rep(100000)
      local text = util.json_clip(s, #s)
      assert.equal(s, text)
      assert.equal(#s - 1, #util.json_clip(s, #s - 1))
    end)

    it("clips chunk by chunk exactly as the whole", function()
      for s in random_texts(11, 200, 60) do
        local budget = math.random(0, 200)
        local whole, _, _, whole_cut = util.json_clip(s, budget)
        local pieces, rest, left, prev = {}, "", budget, 0
        local cut
        repeat
          local stop = math.min(#s, prev + math.random(0, 5))
          local chunk = rest .. s:sub(prev + 1, stop)
          local text, used, size
          text, used, size, cut = util.json_clip(chunk, left, stop == #s)
          pieces[#pieces + 1], left, rest = text, left - size, chunk:sub(used + 1)
          prev = stop
        until cut or stop == #s
        assert.equal(whole, table.concat(pieces))
        assert.equal(whole_cut, cut)
      end
    end)

    it("looks at the first n bytes only when given n", function()
      assert.equal("ab", (util.json_clip("abcd", 100, true, 2)))
      assert.equal(R, (util.json_clip("a\xE2\x82\xAC", 100, true, 3):sub(2)))
      assert.equal("abcd", (util.json_clip("abcd", 100, true, 10)))
    end)

    it("raises on misuse", function()
      assert_misuse(function() util.json_clip(nil, 1) end)
      assert_misuse(function() util.json_clip("a", -1) end)
      assert_misuse(function() util.json_clip("a", 1.5) end)
      assert_misuse(function() util.json_clip("a", 1, "yes") end)
      assert_misuse(function() util.json_clip("a", 1, true, -1) end)
    end)
  end)

  describe("json_quote", function()
    local cjson = require("cjson")

    it("gives cjson's encoding in parts of at most the given size", function()
      for raw in random_texts(13, 200, 80) do
        local s = util.utf8_clean(raw)
        local piece = math.random(8, 20)
        local parts = util.json_quote(s, piece)
        for _, p in ipairs(parts) do
          assert.is_true(#p <= piece)
        end
        assert.equal(cjson.encode(s), table.concat(parts))
      end
      assert.same({ '""' }, util.json_quote(""))
      assert.same({ '"\\u0000\\/"' }, util.json_quote("\0/"))
    end)

    it("cuts a big string into 1 MiB parts by default", function()
      local s = ("\0"):rep(400000) -- 2.4 MB encoded
      local parts = util.json_quote(s)
      assert.equal(3, #parts)
      assert.equal(1 + 174762 * 6, #parts[1]) -- the quote, then whole escapes only
      assert.equal(cjson.encode(s), table.concat(parts))
    end)

    it("raises on misuse", function()
      assert_misuse(function() util.json_quote(1) end)
      assert_misuse(function() util.json_quote("a", 7) end)
    end)
  end)

  describe("mkdtemp", function()
    local made = {}
    after_each(function()
      for _, p in ipairs(made) do
        util.remove_tree(p)
      end
      made = {}
    end)

    it("creates a new private directory under $TMPDIR or /tmp", function()
      local path = assert(util.mkdtemp("ph-spec-"))
      made[#made + 1] = path
      local base = os.getenv("TMPDIR")
      if not (base and base:sub(1, 1) == "/" and io.open(base)) then
        base = "/tmp"
      end
      base = base:gsub("(.)/+$", "%1")
      assert.equal(base, path:match("^(.*)/ph%-spec%-[^/]+$"))
      assert.equal(#"ph-spec-" + 6, #path:match("[^/]+$"))
      assert.equal("700", mode_of(path))
      write_file(path .. "/f", "x")
      assert.equal("x", read_file(path .. "/f"))
    end)

    it("makes a different directory each time, with a default prefix", function()
      local a, b = assert(util.mkdtemp()), assert(util.mkdtemp())
      made[#made + 1], made[#made + 2] = a, b
      assert.not_equal(a, b)
      assert.matches("/provider%-host%-[^/]+$", a)
    end)

    it("raises on a prefix holding / or NUL, too long, or not a string", function()
      assert_misuse(function() util.mkdtemp("a/b") end)
      assert_misuse(function() util.mkdtemp("../x") end)
      assert_misuse(function() util.mkdtemp("a\0b") end)
      assert_misuse(function() util.mkdtemp(("x"):rep(201)) end)
      assert_misuse(function() util.mkdtemp(5) end)
    end)
  end)

  describe("remove_tree", function()
    local root, outside
    before_each(function()
      root = assert(util.mkdtemp("ph-spec-tree-"))
      outside = assert(util.mkdtemp("ph-spec-outside-"))
    end)
    after_each(function()
      util.remove_tree(root)
      util.remove_tree(outside)
    end)

    it("removes a tree and never follows its symlinks", function()
      write_file(outside .. "/target.txt", "keep me")
      sh("mkdir -p " .. shell_quote(outside .. "/dir"))
      write_file(outside .. "/dir/inner.txt", "keep me too")

      local tree = root .. "/tree"
      sh("mkdir -p " .. shell_quote(tree .. "/a/b/c") .. " " .. shell_quote(tree .. "/empty"))
      write_file(tree .. "/a/b/c/deep.txt", "deep")
      write_file(tree .. "/top.txt", "top")
      for i = 1, 200 do
        write_file(("%s/a/file-%03d"):format(tree, i), "x")
      end
      sh("ln -s " .. shell_quote(outside .. "/target.txt") .. " " .. shell_quote(tree .. "/a/lf"))
      sh("ln -s " .. shell_quote(outside .. "/dir") .. " " .. shell_quote(tree .. "/ld"))
      sh("ln -s /nonexistent/ph-spec " .. shell_quote(tree .. "/a/b/dangling"))
      sh("chmod 0400 " .. shell_quote(tree .. "/top.txt"))

      assert.is_true(util.remove_tree(tree))

      assert.is_false(exists(tree))
      assert.is_true(exists(root))
      assert.equal("keep me", read_file(outside .. "/target.txt"))
      assert.equal("keep me too", read_file(outside .. "/dir/inner.txt"))
    end)

    it("removes a symlink given as the path, not its target", function()
      sh("ln -s " .. shell_quote(outside) .. " " .. shell_quote(root .. "/link"))
      write_file(outside .. "/f", "kept")
      assert.is_true(util.remove_tree(root .. "/link"))
      assert.is_false(exists(root .. "/link"))
      assert.equal("kept", read_file(outside .. "/f"))
    end)

    it("removes a plain file, and accepts a trailing slash on a directory", function()
      write_file(root .. "/f", "x")
      assert.is_true(util.remove_tree(root .. "/f"))
      assert.is_false(exists(root .. "/f"))
      sh("mkdir " .. shell_quote(root .. "/d"))
      assert.is_true(util.remove_tree(root .. "/d/"))
      assert.is_false(exists(root .. "/d"))
    end)

    it("treats a missing path as success", function()
      assert.is_true(util.remove_tree(root .. "/missing"))
      assert.is_true(util.remove_tree(root .. "/missing/deeper"))
    end)

    it("returns nil, message, io when it cannot remove", function()
      write_file(root .. "/file", "x")
      local ok, err, code = util.remove_tree(root .. "/file/below")
      assert.is_nil(ok)
      assert.equal("io", code)
      assert.matches("remove_tree", err)
    end)

    it("raises on a relative, empty, root, dotted or non-string path", function()
      assert_misuse(function() util.remove_tree("relative/path") end)
      assert_misuse(function() util.remove_tree("") end)
      assert_misuse(function() util.remove_tree("/") end)
      assert_misuse(function() util.remove_tree("//") end)
      assert_misuse(function() util.remove_tree(root .. "/..") end)
      assert_misuse(function() util.remove_tree(root .. "/./x") end)
      assert_misuse(function() util.remove_tree(root .. "\0x") end)
      assert_misuse(function() util.remove_tree(nil) end)
      assert.is_true(exists(root))
    end)
  end)

  describe("tempdir", function()
    it("is removed when its variable goes out of scope", function()
      local path
      do
        local dir <close> = assert(util.tempdir("ph-spec-close-"))
        path = dir.path
        write_file(path .. "/f", "x")
        assert.is_true(exists(path))
      end
      assert.is_false(exists(path))
    end)

    it("is removed once by remove(), which is idempotent", function()
      local dir = assert(util.tempdir())
      local path = dir.path
      assert.is_true(dir:remove())
      assert.is_nil(dir.path)
      assert.is_false(exists(path))
      assert.is_true(dir:remove())
    end)

    it("raises on a bad prefix", function()
      assert_misuse(function() util.tempdir("a/b") end)
      assert_misuse(function() util.tempdir(1) end)
    end)
  end)
end)
