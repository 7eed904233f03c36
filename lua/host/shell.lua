-- host.shell: POSIX shell quoting, environment-key checks and command-line building.
local M = {}

local sort, concat = table.sort, table.concat

-- Shows a key inside a message without letting control bytes (NUL, newlines) through.
local SHOWN = { ["\0"] = "\\0", ["\n"] = "\\n", ["\r"] = "\\r", ["\t"] = "\\t" }
local function show(s)
  return (s:gsub("[%z\1-\31\127]", function(c)
    return SHOWN[c] or string.format("\\x%02x", c:byte())
  end))
end

--- Quotes `s` as one POSIX shell word: always single-quoted, `'` written as `'\''`, the empty
--- string as `''`. Numbers are accepted and written in decimal. A NUL byte raises: a shell word
--- cannot hold one, and the command would silently get a truncated argument.
function M.quote(s)
  local ts = type(s)
  if ts == "number" then
    s = math.type(s) == "integer" and string.format("%d", s) or tostring(s)
  elseif ts ~= "string" then
    error("bad argument #1 to 'quote' (string expected, got " .. ts .. ")", 2)
  elseif s:find("\0", 1, true) then
    error("bad argument #1 to 'quote' (string contains a NUL byte)", 2)
  end
  return "'" .. s:gsub("'", "'\\''") .. "'"
end

--- Quotes every element of the list `argv` and joins them with spaces (`{}` gives "").
function M.join(argv)
  if type(argv) ~= "table" then
    error("bad argument #1 to 'join' (table expected, got " .. type(argv) .. ")", 2)
  end
  local out = {}
  for i = 1, #argv do
    local s = argv[i]
    if type(s) ~= "string" and type(s) ~= "number" then
      error("bad argument #1 to 'join' (element " .. i .. " is a " .. type(s) .. ")", 2)
    end
    if type(s) == "string" and s:find("\0", 1, true) then
      error("bad argument #1 to 'join' (element " .. i .. " contains a NUL byte)", 2)
    end
    out[i] = M.quote(s)
  end
  return concat(out, " ")
end

--- True when `k` is a string usable as a shell variable name: `^[A-Za-z_][A-Za-z0-9_]*$`.
function M.is_env_key(k)
  return type(k) == "string" and k:find("^[A-Za-z_][A-Za-z0-9_]*$") ~= nil
end

local function sorted_keys(env)
  local keys = {}
  for k in pairs(env) do
    keys[#keys + 1] = k
  end
  sort(keys, function(a, b)
    if type(a) == type(b) and (type(a) == "string" or type(a) == "number") then
      return a < b
    end
    return type(a) < type(b)
  end)
  return keys
end

--- Checks an environment table: every key a valid name (`is_env_key`), every value a string
--- without NUL bytes. Returns true | nil, message, "protocol". The message never shows a value.
--- `label` names the environment in messages, as upstream does: with "sandbox" a bad key gives
--- "Invalid sandbox environment variable key: BAD-KEY".
function M.check_env(env, label)
  if type(env) ~= "table" then
    return nil, "environment must be an object, got " .. type(env), "protocol"
  end
  local what = label and label .. " environment variable" or "environment variable"
  local What = what:sub(1, 1):upper() .. what:sub(2)
  for _, k in ipairs(sorted_keys(env)) do
    if type(k) ~= "string" then
      return nil, "Invalid " .. what .. " key: " .. tostring(k) .. " (a " .. type(k) .. ")",
        "protocol"
    end
    if k:find("\0", 1, true) then
      return nil, "Invalid " .. what .. " key: " .. show(k) .. " (contains a NUL byte)",
        "protocol"
    end
    if not M.is_env_key(k) then
      return nil, "Invalid " .. what .. " key: " .. show(k), "protocol"
    end
    local v = env[k]
    if type(v) ~= "string" then
      return nil, What .. " " .. k .. " must be a string, got " .. type(v), "protocol"
    end
    if v:find("\0", 1, true) then
      return nil, What .. " " .. k .. " contains a NUL byte", "protocol"
    end
  end
  return true
end

-- Each checked variable of env (keys sorted) through each(key, quoted value), joined by sep.
local function build(env, label, each, sep)
  local ok, err, code = M.check_env(env, label)
  if not ok then
    return nil, err, code
  end
  local out = {}
  for i, k in ipairs(sorted_keys(env)) do
    out[i] = each(k, M.quote(env[k]))
  end
  return concat(out, sep)
end

--- Builds `K='v' K2='v2'` (keys sorted) for a command prefix such as `env -i ...`.
--- Returns string | nil, message, "protocol" (see `check_env`; `label` as there).
function M.env_assignments(env, label)
  return build(env, label, function(k, v)
    return k .. "=" .. v
  end, " ")
end

--- Builds `export K='v'` lines (keys sorted, each line ending in a newline) for a shell to
--- source. Values delivered this way never appear in any process's command line, unlike
--- `env K=v cmd`, whose arguments stay readable in /proc/*/cmdline while the command runs.
--- Returns string | nil, message, "protocol" (see `check_env`; `label` as there).
function M.export_script(env, label)
  return build(env, label, function(k, v)
    return "export " .. k .. "=" .. v .. "\n"
  end, "")
end

-- What the shells below run before `exec "$@"`: dash exports the shell's own PWD; the
-- command gets exactly the base plus the caller's variables (a /bin/sh that is bash still
-- adds SHLVL).
local FORGET = "unset PWD OLDPWD; "

--- The command words `words` (already quoted) run by a shell that first sources the export
--- script at `file` (a shell word: quoted, or an expansion in double quotes) and removes it,
--- then replaces itself with the command: put it after `env -i BASE...` so the command gets
--- the base plus the sourced variables, none of them on a command line.
function M.source_then_exec(file, words)
  return "sh -c '" .. FORGET .. '. "$1" && rm -f -- "$1" && shift && exec "$@"'
    .. "' sh " .. file .. " " .. words
end

--- stdin_env(script) -> what goes before the command's stdin for `read_then_exec`: the number
--- of lines of the export script, then the script.
function M.stdin_env(script)
  local _, lines = script:gsub("\n", "")
  return lines .. "\n" .. script
end

--- The command words `words` (already quoted) run by a shell that first reads `stdin_env`'s
--- block from its stdin (line by line with the `read` builtin, which never reads past a
--- line's end, so the rest of stdin is the command's) and evaluates it: no file, no extra
--- process, no value on a command line. Put it after `env -i BASE...`.
function M.read_then_exec(words)
  return "sh -c '" .. FORGET .. 'IFS= read -r paperclip_n || exit 125; case "$paperclip_n" in '
    .. '""|*[!0-9]*) exit 125 ;; esac; paperclip_env=; while [ "$paperclip_n" -gt 0 ]; do '
    .. "IFS= read -r paperclip_line || exit 125; paperclip_env=\"$paperclip_env$paperclip_line\n"
    .. '"; paperclip_n=$((paperclip_n - 1)); done; eval "$paperclip_env" || exit 125; '
    .. "unset paperclip_env paperclip_line paperclip_n; exec \"$@\"' sh " .. words
end

--- source_quietly(path) -> a line that sources the file at path when it is there, its output
--- and failure discarded: how the wrappers read /etc/profile (as upstream's newest E2B wrapper
--- does), so its PATH additions and /etc/profile.d apply.
function M.source_quietly(path)
  local p = path:find("^[%w/._-]+$") and path or M.quote(path)
  return "if [ -f " .. p .. " ]; then . " .. p .. " >/dev/null 2>&1 || true; fi"
end

return M
