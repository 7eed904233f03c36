-- fuzz/fuzz_shell_quote.lua: fuzz_shell_quote's check: host.shell's quoting, read back by /bin/sh.
-- The input is split at NUL bytes into words (a shell word cannot hold NUL). Properties:
-- `printf %s <quote(word)>` prints the word exactly; `printf '%s\0' <join(words)>` prints
-- every word, in order; an export_script line sets a variable to exactly its value; quote
-- and join refuse a NUL byte (with their documented message) instead of truncating.
local proc = require("host.proc")
local shell = require("host.shell")

local M = {}

local MAX_WORDS = 8

local function fail(fmt, ...)
  error("property violated: " .. fmt:format(...), 0)
end

-- What /bin/sh prints for script: the project's own process primitive, no shell in between.
local function sh(script)
  local res, err = proc.run({ argv = { "/bin/sh", "-c", script }, env = { LC_ALL = "C" },
    timeout = 10 })
  if not res then
    fail("cannot run /bin/sh: %s", tostring(err))
  end
  if res.exit_code ~= 0 then
    fail("/bin/sh exited with %s (stderr %q) for %q", tostring(res.exit_code), res.stderr,
      script)
  end
  return res.stdout
end

local function split_words(data)
  local words = {}
  for w in (data .. "\0"):gmatch("([^%z]*)%z") do
    words[#words + 1] = w
    if #words == MAX_WORDS then
      break
    end
  end
  return words
end

function M.check(data)
  -- NUL is refused, never passed through truncated.
  if data:find("\0", 1, true) then
    local ok, err = pcall(shell.quote, data)
    if ok or not tostring(err):find("contains a NUL byte", 1, true) then
      fail("quote accepted a NUL byte: %s", tostring(err))
    end
    ok = pcall(shell.join, { "a", data })
    if ok then
      fail("join accepted a NUL byte")
    end
  end
  local words = split_words(data)

  local first = words[1]
  local got = sh("printf %s " .. shell.quote(first))
  if got ~= first then
    fail("quote(%q) reads back as %q", first, got)
  end

  local want = table.concat(words, "\0") .. "\0"
  got = sh("printf '%s\\0' " .. shell.join(words))
  if got ~= want then
    fail("join(%d words) reads back as %q, expected %q", #words, got, want)
  end

  -- Numbers are quoted in decimal.
  local n = 0
  for i = 1, math.min(#data, 8) do
    n = (n << 8) | data:byte(i)
  end
  got = sh("printf %s " .. shell.quote(n))
  if got ~= ("%d"):format(n) then
    fail("quote(%d) reads back as %q", n, got)
  end

  -- export_script: a variable sourced from it holds exactly its value.
  if #words >= 2 then
    local key = "FZ_" .. words[1]:gsub("[^%w_]", "_"):sub(1, 40)
    local script, err = shell.export_script({ [key] = words[2] })
    if not script then
      fail("export_script refused %q: %s", key, tostring(err))
    end
    got = sh(script .. 'printf %s "$' .. key .. '"')
    if got ~= words[2] then
      fail("export_script's %s reads back as %q, expected %q", key, got, words[2])
    end
  end
end

return M
