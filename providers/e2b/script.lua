-- providers/e2b/script.lua: the shell scripts the E2B provider runs in a sandbox.
--   command(): upstream v-newest's clean-environment script (env -i, private HOME, /etc/profile),
--              with the caller's env sourced from a private file instead of a command line
--   wrap(): the exact-cancellation wrapper (control dir, setsid process group, pid file)
--   cancel(): the exact-cancellation script for one execution (TERM, grace, KILL)
--   reap(): cancel() plus removal of the control dir, for a command whose wrapper was killed
--   workspace(support): pwd + mkdir -p <pwd>/paperclip-workspace in one command, and whether
--                       native sync can run
--   duplex(): a duplex execution's command: the same clean environment, exec'd all the way down
--   helper_probe(), helper_install(): find or install ph-sandbox-helper in the sandbox
-- Every script is plain POSIX sh run by `bash -l -c`, as upstream's SDK runs commands.
local shell = require("host.shell")
local util = require("host.util")

local M = {}

--- PROFILE: /etc/profile read quietly first, as upstream's newest wrapper does.
M.PROFILE = shell.source_quietly("/etc/profile")

--- ENV_VAR: the envd process variable that carries the caller's env script to the wrapper.
M.ENV_VAR = "PAPERCLIP_EXEC_ENV"

--- quote(s) -> s as one single-quoted shell word, ' written as '"'"' (upstream's shellQuote).
function M.quote(s)
  return "'" .. s:gsub("'", "'\"'\"'") .. "'"
end

local quote = M.quote

-- The command as quoted words, and a copy of env where a HOME or USERPROFILE given fills the
-- other (home: that value, or nil when env gives neither).
local function words_and_env(cmd, args, env)
  local words = { quote(cmd) }
  for _, a in ipairs(args) do
    words[#words + 1] = quote(a)
  end
  local vars = {}
  for k, v in pairs(env) do
    vars[k] = v
  end
  local home = util.nonblank(vars.HOME) or util.nonblank(vars.USERPROFILE)
  if home then
    vars.HOME = vars.HOME or home
    vars.USERPROFILE = vars.USERPROFILE or home
  end
  return table.concat(words, " "), vars, home
end

--- command(cmd, args, env, env_file) -> script, env_script
-- Upstream's buildLoginShellScript (v-newest): source /etc/profile quietly, make a private
-- HOME with mktemp unless env gives HOME (or USERPROFILE), then run the command under
-- `env -i` with only PATH, HOME/USERPROFILE and the caller's env. Unlike upstream, the caller's
-- env is not on the `env -i` command line (where every value would sit in /proc/*/cmdline):
-- env_script holds it as `export` lines, delivered through envd's envs (see wrap) into the
-- file env_file (a path), which a shell sources and removes before it execs the command. The
-- worker has checked cmd, args and env (host.params).
function M.command(cmd, args, env, env_file)
  local command, vars, home = words_and_env(cmd, args, env)
  local exec_line = (home and "exec " or "")
    .. 'env -i PATH="$PATH"'
    .. (home and "" or ' HOME="$paperclip_provider_home" USERPROFILE="$paperclip_provider_home"')
    .. " "
    .. shell.source_then_exec(quote(env_file), command)
  local lines = { M.PROFILE }
  if not home then
    lines[#lines + 1] =
      'paperclip_provider_home="$(mktemp -d /tmp/paperclip-provider-home.XXXXXX)"'
    lines[#lines + 1] = "trap 'rm -rf -- \"$paperclip_provider_home\"' EXIT"
    -- a canceled or timed-out command still removes its private HOME (upstream leaks it)
    lines[#lines + 1] = "trap 'exit 143' HUP INT TERM"
  end
  lines[#lines + 1] = exec_line
  return table.concat(lines, " && "), assert(shell.export_script(vars))
end

--- control_dir(execution_id) -> /tmp/.paperclip-execution-<hex of the id's bytes>
function M.control_dir(execution_id)
  return "/tmp/.paperclip-execution-"
    .. execution_id:gsub(".", function(c)
      return ("%02x"):format(c:byte())
    end)
end

--- env_file(execution_id) -> where wrap() puts the caller's env script: in the control dir.
function M.env_file(execution_id)
  return M.control_dir(execution_id) .. "/env"
end

--- wrap(execution_id, script, extra_cleanup) -> the exact-cancellation wrapper (upstream's
-- wrapCancellableEnvironmentShellCommand): the command runs in its own process group (setsid
-- when present) and publishes "group:<pid>" in the control dir; a "cancelled" marker stops it
-- before launch. The control dir is private (0700); the env script the process got in
-- $PAPERCLIP_EXEC_ENV is written there (0600, by the shell's printf builtin: no command line
-- holds it) and the variable unset. extra_cleanup (a path, e.g. the staged stdin file) is
-- removed with the control dir when the wrapper exits.
function M.wrap(execution_id, script, extra_cleanup)
  local dir = quote(M.control_dir(execution_id))
  local function runner(kind)
    return table.concat({
      "paperclip_control=" .. dir,
      "printf " .. quote(kind .. ":%s\\n") .. ' "$$" > "$paperclip_control/pid"',
      'if [ -f "$paperclip_control/cancelled" ]; then exit 130; fi',
      "exec sh -c " .. quote(script),
    }, "\n")
  end
  return table.concat({
    "paperclip_control=" .. dir,
    'mkdir -p -m 700 "$paperclip_control"',
    'paperclip_cleanup() { rm -rf -- "$paperclip_control"'
      .. (extra_cleanup and " " .. quote(extra_cleanup) or "")
      .. "; }",
    "trap paperclip_cleanup EXIT",
    'if [ -f "$paperclip_control/cancelled" ]; then exit 130; fi',
    '(umask 077 && printf \'%s\' "$' .. M.ENV_VAR .. '" > "$paperclip_control/env") || exit 125',
    "unset " .. M.ENV_VAR,
    "if command -v setsid >/dev/null 2>&1; then",
    "  setsid sh -c " .. quote(runner("group")) .. " &",
    "else",
    "  sh -c " .. quote(runner("process")) .. " &",
    "fi",
    "paperclip_pid=$!",
    'wait "$paperclip_pid"',
    "exit $?",
  }, "\n")
end

--- cancel(execution_id, grace_ms) -> upstream's buildCancelEnvironmentShellCommand: leave the
-- "cancelled" marker, wait up to 2 s for the pid file, TERM the group (or process), wait up
-- to grace_ms (default 5000) for it to go, then KILL. Exits 0 in every one of those cases.
function M.cancel(execution_id, grace_ms)
  local waits = math.max(0, math.ceil((grace_ms or 5000) / 100))
  return table.concat({
    "paperclip_control=" .. quote(M.control_dir(execution_id)),
    'mkdir -p "$paperclip_control"',
    ': > "$paperclip_control/cancelled"',
    "paperclip_wait=0",
    'while [ ! -s "$paperclip_control/pid" ] && [ "$paperclip_wait" -lt 100 ]; do',
    "  sleep 0.02",
    "  paperclip_wait=$((paperclip_wait + 1))",
    "done",
    'if [ ! -s "$paperclip_control/pid" ]; then exit 0; fi',
    'IFS=: read -r paperclip_kind paperclip_pid < "$paperclip_control/pid"',
    'case "$paperclip_pid" in ""|*[!0-9]*) exit 0 ;; esac',
    'paperclip_alive() { if [ "$paperclip_kind" = "group" ]; then '
      .. 'kill -0 "-$paperclip_pid" 2>/dev/null; else kill -0 "$paperclip_pid" 2>/dev/null; fi; }',
    'paperclip_signal() { if [ "$paperclip_kind" = "group" ]; then '
      .. 'kill "-$1" "-$paperclip_pid" 2>/dev/null || true; else '
      .. 'kill "-$1" "$paperclip_pid" 2>/dev/null || true; fi; }',
    "if paperclip_alive; then paperclip_signal TERM; fi",
    "paperclip_wait=0",
    ('while paperclip_alive && [ "$paperclip_wait" -lt %d ]; do'):format(waits),
    "  sleep 0.1",
    "  paperclip_wait=$((paperclip_wait + 1))",
    "done",
    "if paperclip_alive; then paperclip_signal KILL; fi",
    "exit 0",
  }, "\n")
end

--- reap(execution_id, extra_cleanup) -> cancel() then remove the control dir (and
-- extra_cleanup): for a command whose wrapper died without its EXIT trap (a timeout kills
-- the wrapper, not the setsid group) or whose stream was lost.
function M.reap(execution_id, extra_cleanup)
  return "sh -c "
    .. quote(M.cancel(execution_id, 2000))
    .. "; rm -rf -- "
    .. quote(M.control_dir(execution_id))
    .. (extra_cleanup and " " .. quote(extra_cleanup) or "")
end

--- workspace(support) -> upstream's resolveSandboxWorkingDirectory in one command: <pwd> (or
-- "/") joined with paperclip-workspace, created with mkdir -p and printed; then "tar" or
-- "no-tar": whether the script `support` (host.sync_tar's check for native sync) exits 0.
function M.workspace(support)
  return table.concat({
    'paperclip_cwd="$(pwd)"',
    'case "$paperclip_cwd" in */) ;; *) paperclip_cwd="$paperclip_cwd/" ;; esac',
    'paperclip_cwd="${paperclip_cwd}paperclip-workspace"',
    'mkdir -p "$paperclip_cwd" && printf \'%s\\n\' "$paperclip_cwd" && { if ' .. support
      .. "; then echo tar; else echo no-tar; fi; }",
  }, "; ")
end

--- mkdir(path) -> upstream's ensureSandboxWorkspace: mkdir -p '<path>'
function M.mkdir(path)
  return "mkdir -p " .. quote(path)
end

--- duplex(cmd, args, env) -> script, stdin_prefix | nil, message, "internal"
-- A duplex execution's command, with command()'s clean environment: /etc/profile read quietly,
-- then `env -i` with only PATH, HOME/USERPROFILE and the caller's env. Unlike command(), every
-- step execs the next, so the process envd started IS the command (SendSignal reaches it, and
-- no shell stays behind): HOME is therefore the sandbox user's home unless env gives one (a
-- private HOME would need a shell left to remove it). The caller's env is never on a command
-- line nor in a file: it is stdin_prefix, the first bytes the duplex writes to the command's
-- stdin, which a shell reads line by line and evaluates before it execs the command
-- (host.shell's read_then_exec; the rest of stdin is the command's). No env: no prefix.
function M.duplex(cmd, args, env)
  local command, vars, home = words_and_env(cmd, args, env)
  local base = 'exec env -i PATH="$PATH"' .. (home and "" or ' HOME="$HOME" USERPROFILE="$HOME"')
  if next(vars) == nil then
    return M.PROFILE .. " && " .. base .. " sh -c 'unset PWD OLDPWD; exec \"$@\"' sh " .. command
  end
  local exports, err = shell.export_script(vars, "sandbox")
  if not exports then
    return nil, err, "internal"
  end
  return M.PROFILE .. " && " .. base .. " " .. shell.read_then_exec(command),
    shell.stdin_env(exports)
end

--- HELPER_DIR: where ph-sandbox-helper is installed, under the sandbox user's home.
M.HELPER_DIR = ".paperclip"

local function helper_vars(name)
  return 'paperclip_dir="$HOME/' .. M.HELPER_DIR .. '"; paperclip_helper="$paperclip_dir/'
    .. name .. '"'
end

-- A shell condition: the file named by shell variable var has this sha256 (or the sandbox has
-- no sha256sum to tell).
local function sha_check(var, sha)
  return '{ ! command -v sha256sum >/dev/null 2>&1 || [ "$(sha256sum < "$' .. var
    .. '" | cut -d " " -f 1)" = ' .. quote(sha) .. " ]; }"
end

--- helper_probe(name, sha) -> a script printing "ready <path>" then the helper's --version
-- line when ~/.paperclip/<name> is already there, with that sha256 and runnable (made 0755 on
-- the way); otherwise "absent".
function M.helper_probe(name, sha)
  return table.concat({
    helper_vars(name),
    'if [ -f "$paperclip_helper" ] && command -v sha256sum >/dev/null 2>&1 && '
      .. sha_check("paperclip_helper", sha)
      .. ' && chmod 0755 "$paperclip_helper" && paperclip_v="$("$paperclip_helper" --version '
      .. '2>&1)"; then printf \'ready %s\\n%s\\n\' "$paperclip_helper" "$paperclip_v"; '
      .. "else echo absent; fi",
  }, "\n")
end

--- helper_install(upload, name, sha) -> a script installing the file uploaded to
-- ~/.paperclip/<upload> as ~/.paperclip/<name>: sha256 checked (exit 3), made 0755 and moved
-- into place in one rename (exit 4), then run with --version (exit 5 when it cannot run here:
-- another architecture, a noexec mount); prints "ready <path>" then the version line.
function M.helper_install(upload, name, sha)
  return table.concat({
    helper_vars(name),
    'paperclip_upload="$paperclip_dir/' .. upload .. '"',
    "if ! " .. sha_check("paperclip_upload", sha) .. "; then",
    '  rm -f -- "$paperclip_upload"',
    "  echo 'the uploaded ph-sandbox-helper does not have the expected sha256' >&2",
    "  exit 3",
    "fi",
    'chmod 0755 "$paperclip_upload" && mv -f -- "$paperclip_upload" "$paperclip_helper" || '
      .. '{ rm -f -- "$paperclip_upload"; exit 4; }',
    'paperclip_v="$("$paperclip_helper" --version 2>&1)" || { printf \'%s\\n\' "$paperclip_v" >&2; '
      .. "exit 5; }",
    "printf 'ready %s\\n%s\\n' \"$paperclip_helper\" \"$paperclip_v\"",
  }, "\n")
end

return M
