-- Specs for host.shell: POSIX quoting, env-key validation and env assignments.
local shell = require("host.shell")

-- What /bin/sh makes of a command line: printf each word in brackets.
local function sh_words(line)
  local p = assert(io.popen("sh -c " .. shell.quote("printf '[%s]' " .. line), "r"))
  local out = p:read("a")
  p:close()
  return out
end

describe("host.shell", function()
  describe("quote", function()
    it("wraps a plain word in single quotes", function()
      assert.equal("'abc'", shell.quote("abc"))
    end)

    it("quotes the empty string as ''", function()
      assert.equal("''", shell.quote(""))
    end)

    it("writes a single quote as '\\''", function()
      assert.equal("'it'\\''s'", shell.quote("it's"))
    end)

    it("writes a string made only of quotes", function()
      assert.equal("''\\'''\\'''", shell.quote("''"))
    end)

    it("leaves shell metacharacters inert inside the quotes", function()
      assert.equal("'$HOME `id` \"x\" \\ ; | & * ?'", shell.quote('$HOME `id` "x" \\ ; | & * ?'))
    end)

    it("keeps newlines inside the quotes", function()
      assert.equal("'a\nb'", shell.quote("a\nb"))
    end)

    it("writes integers in decimal", function()
      assert.equal("'22'", shell.quote(22))
      assert.equal("'-9223372036854775808'", shell.quote(math.mininteger))
    end)

    it("writes floats", function()
      assert.equal("'1.5'", shell.quote(1.5))
    end)

    it("produces words that sh reads back unchanged", function()
      local nasty = { "", "a b", "it's", "''", "$(id)", "`id`", "a\nb", "\\", '"', "*", "-n",
        "é 世", "!x", "a\tb", "${x:-y}" }
      for _, s in ipairs(nasty) do
        assert.equal("[" .. s .. "]", sh_words(shell.quote(s)), s)
      end
    end)

    it("raises on a NUL byte", function()
      assert.has_error(function()
        shell.quote("a\0b")
      end, "bad argument #1 to 'quote' (string contains a NUL byte)")
    end)

    it("raises on a non-string", function()
      assert.has_error(function()
        shell.quote(nil)
      end, "bad argument #1 to 'quote' (string expected, got nil)")
      assert.has_error(function()
        shell.quote({})
      end, "bad argument #1 to 'quote' (string expected, got table)")
    end)

    it("quotes a large string", function()
      local big = string.rep("a'b", 100000)
      local q = shell.quote(big)
      assert.equal(#big + 2 + 100000 * 3, #q)
    end)
  end)

  describe("join", function()
    it("quotes each element and joins with spaces", function()
      assert.equal("'ls' '-la' 'my dir'", shell.join({ "ls", "-la", "my dir" }))
    end)

    it("returns the empty string for an empty list", function()
      assert.equal("", shell.join({}))
    end)

    it("keeps empty elements as ''", function()
      assert.equal("'a' '' 'b'", shell.join({ "a", "", "b" }))
    end)

    it("accepts numbers", function()
      assert.equal("'sleep' '5'", shell.join({ "sleep", 5 }))
    end)

    it("produces a command line sh splits back into the same words", function()
      assert.equal("[a b][it's][][$x]", sh_words(shell.join({ "a b", "it's", "", "$x" })))
    end)

    it("raises on a non-table", function()
      assert.has_error(function()
        shell.join("ls")
      end, "bad argument #1 to 'join' (table expected, got string)")
    end)

    it("raises on a non-string element", function()
      assert.has_error(function()
        shell.join({ "a", true })
      end, "bad argument #1 to 'join' (element 2 is a boolean)")
    end)

    it("raises on an element with a NUL byte", function()
      assert.has_error(function()
        shell.join({ "a", "b\0" })
      end, "bad argument #1 to 'join' (element 2 contains a NUL byte)")
    end)
  end)

  describe("is_env_key", function()
    it("accepts shell identifiers", function()
      for _, k in ipairs({ "A", "_", "PATH", "a_b1", "_X9", "lower" }) do
        assert.is_true(shell.is_env_key(k), k)
      end
    end)

    it("rejects names that are not shell identifiers", function()
      for _, k in ipairs({ "", "1X", "BAD-KEY", "A B", "A=B", "é", "A.B", "A\0", " A", "A\n" }) do
        assert.is_false(shell.is_env_key(k), k)
      end
    end)

    it("rejects non-strings", function()
      assert.is_false(shell.is_env_key(nil))
      assert.is_false(shell.is_env_key(1))
      assert.is_false(shell.is_env_key({}))
    end)
  end)

  describe("check_env", function()
    it("accepts string values under valid keys", function()
      assert.is_true(shell.check_env({ A = "1", B_2 = "", _c = "x y" }))
    end)

    it("accepts an empty table", function()
      assert.is_true(shell.check_env({}))
    end)

    it("names a bad key in upstream's words", function()
      local ok, err, code = shell.check_env({ ["1X"] = "v" })
      assert.is_nil(ok)
      assert.equal("Invalid environment variable key: 1X", err)
      assert.equal("protocol", code)
    end)

    it("puts the label into the message as upstream providers do", function()
      local _, err = shell.check_env({ ["BAD-KEY"] = "v" }, "sandbox")
      assert.equal("Invalid sandbox environment variable key: BAD-KEY", err)
      local _, err2 = shell.check_env({ X = "1", ["A B"] = "v" }, "exe.dev")
      assert.equal("Invalid exe.dev environment variable key: A B", err2)
    end)

    it("reports the first bad key in sorted order", function()
      local _, err = shell.check_env({ ["Z-1"] = "v", ["A-1"] = "v" })
      assert.equal("Invalid environment variable key: A-1", err)
    end)

    it("shows a NUL byte in a key as \\0", function()
      local _, err, code = shell.check_env({ ["A\0B"] = "v" })
      assert.equal("Invalid environment variable key: A\\0B (contains a NUL byte)", err)
      assert.equal("protocol", code)
    end)

    it("shows control characters in a key escaped", function()
      local _, err = shell.check_env({ ["A\nB\27"] = "v" })
      assert.equal("Invalid environment variable key: A\\nB\\x1b", err)
    end)

    it("rejects a non-string key", function()
      local _, err, code = shell.check_env({ "v" })
      assert.matches("^Invalid environment variable key: 1 %(a number%)$", err)
      assert.equal("protocol", code)
    end)

    it("rejects a non-string value without showing it", function()
      local _, err, code = shell.check_env({ A = 1 })
      assert.equal("Environment variable A must be a string, got number", err)
      assert.equal("protocol", code)
    end)

    it("rejects a boolean value", function()
      local _, err = shell.check_env({ A = true }, "sandbox")
      assert.equal("Sandbox environment variable A must be a string, got boolean", err)
    end)

    it("rejects a NUL byte in a value without showing the value", function()
      local _, err, code = shell.check_env({ TOKEN = "sec\0ret" })
      assert.equal("Environment variable TOKEN contains a NUL byte", err)
      assert.is_nil(err:find("sec", 1, true))
      assert.equal("protocol", code)
    end)

    it("rejects a non-table", function()
      local ok, err, code = shell.check_env("A=1")
      assert.is_nil(ok)
      assert.equal("environment must be an object, got string", err)
      assert.equal("protocol", code)
    end)

    it("rejects nil", function()
      local ok, _, code = shell.check_env(nil)
      assert.is_nil(ok)
      assert.equal("protocol", code)
    end)
  end)

  describe("env_assignments", function()
    it("writes quoted assignments with keys sorted", function()
      assert.equal("A='1' B='x y' C=''", shell.env_assignments({ C = "", B = "x y", A = "1" }))
    end)

    it("quotes single quotes in values", function()
      assert.equal("Q='it'\\''s'", shell.env_assignments({ Q = "it's" }))
    end)

    it("returns the empty string for an empty table", function()
      assert.equal("", shell.env_assignments({}))
    end)

    it("returns nil, the message and protocol for a bad key", function()
      local s, err, code = shell.env_assignments({ ["BAD-KEY"] = "x" }, "sandbox")
      assert.is_nil(s)
      assert.equal("Invalid sandbox environment variable key: BAD-KEY", err)
      assert.equal("protocol", code)
    end)

    it("returns nil for a non-string value", function()
      local s, _, code = shell.env_assignments({ A = {} })
      assert.is_nil(s)
      assert.equal("protocol", code)
    end)

    it("produces assignments that sh applies exactly", function()
      local env = { A = "it's $HOME", B = "line1\nline2", C = "" }
      local line = shell.env_assignments(env)
      local script = shell.quote('printf "[%s]" "$A" "$B" "$C"')
      local p = assert(io.popen("env -i " .. line .. " sh -c " .. script))
      local out = p:read("a")
      p:close()
      assert.equal("[it's $HOME][line1\nline2][]", out)
    end)
  end)

  describe("source_quietly", function()
    local helpers = require("spec.helpers")

    local function run(line)
      local p = assert(io.popen("sh -c " .. shell.quote(line .. '\necho "[$FROM_PROFILE]"')
        .. " 2>&1"))
      local out = p:read("a")
      p:close()
      return out
    end

    it("applies what the file sets, without its output or its failure", function()
      local dir <close> = helpers.tempdir("shell-profile-")
      local path = dir.path .. "/profile"
      helpers.write_file(path, "export FROM_PROFILE=yes\necho noisy; echo noisy >&2\nfalse\n")
      assert.equal("[yes]\n", run(shell.source_quietly(path)))
    end)

    it("is nothing when the file is not there", function()
      assert.equal("[]\n", run(shell.source_quietly("/nonexistent/ph-profile")))
    end)

    it("quotes a path that needs it, and leaves /etc/profile readable as upstream writes it",
      function()
      local dir <close> = helpers.tempdir("shell profile's $dir-")
      local path = dir.path .. "/pro file"
      helpers.write_file(path, "FROM_PROFILE=spaced\n")
      assert.equal("[spaced]\n", run(shell.source_quietly(path)))
      assert.equal("if [ -f /etc/profile ]; then . /etc/profile >/dev/null 2>&1 || true; fi",
        shell.source_quietly("/etc/profile"))
    end)
  end)
end)
