--- host.remote: sandbox commands on a remote machine over host.ssh, with the execution
-- semantics every provider-host provider shares (DESIGN.md section 4): the caller's env over a
-- minimal base after /etc/profile (never user profiles or nvm), no env value on any command
-- line, stdin delivered in full, a non-zero exit is a result, a timeout gives exitCode null
-- with the partial output and kills the remote process group, output is streamed live, and
-- environmentCancelExecution stops exactly that command. Identities, user and known_hosts are
-- found as OpenSSH finds them (see target()).
-- Used by the exe-dev and ssh providers; an operator's SSH-based provider needs only this.
--
--   local t = assert(remote.target({ host = "h", user = "me", key = key_text }))
--   local res = remote.run(t, "uname -a", { timeout = 30 })         -- a management script
--   return remote.execute(ctx, t, params, { cwd = "/work", scope = lease_id })
--
-- How a command runs (libssh2 1.10 cannot send a remote signal, and closing the channel kills
-- a command only at its next write): a runner starts it with setsid in a process group of its
-- own, in a private control dir (mode 0700) that holds "group:<pgid>". With the exec and
-- wrapper runners, a timeout, a cancel, or a lost connection runs a second command on the
-- pooled session that TERMs the group, waits, then KILLs it (the server does it itself on a
-- SIGNAL frame). The control dir is named from the lease (scope) and the executionId, so a
-- restarted worker can still cancel an execution it never saw (the cancel script, any
-- runner). A background child that keeps stdout open delays the answer by at most 0.5 s after
-- the command exits (host.proc's linger), not until the child ends.
-- The runner (settings.runner) is, by default, ph-sandbox-helper's `serve` (bridge/serve.c):
-- ONE long-lived process per lease, started on the lease's first execute as a duplex over one
-- SSH channel of the pooled session (M.duplex, so /etc/profile is read once per lease, when it
-- starts, not per command) and shared by the lease's concurrent executes. Each execute is then
-- one stream of frames on it (bridge/frame.h: EXEC, stdin as DATA and FIN; DATA, STDERR and
-- EXIT back), one network round trip, no new SSH channel, no shell: the server forks the
-- command into its own process group, published in the same control dir, so a cancel and a
-- timeout are a SIGNAL frame, and host.remote's cancel script still works from any worker.
-- close_server ends it (providers call it at release and destroy); when the worker exits, the
-- SSH connection closes, and the server stops every command of its own when its stdin ends.
-- Otherwise (runner "exec", or when the server cannot start) the runner is the helper's `exec`
-- (bridge/exec.c: one process per command, on an SSH channel of its own). The helper is
-- uploaded once per machine into ~/.paperclip/bin under a name taken from its sha256
-- (install_helper). Where it cannot run (another architecture, a noexec home), or with runner
-- "wrapper", a POSIX sh wrapper does the same with about ten processes (mkdir, two FIFOs and
-- their `cat` relays, setsid, sh).
local frame = require("host.core.frame")
local fs = require("host.fs")
local json = require("host.json")
local log = require("host.log")
local sandbox_helper = require("host.sandbox_helper")
local shell = require("host.shell")
local ssh = require("host.ssh")
local sys = require("host.core.sys")
local task = require("host.task")
local util = require("host.util")

local M = {}

--- settings: module-level knobs (specs change them; the loader gives each provider its own).
M.settings = {
  connect_timeout = 15, -- seconds to connect and authenticate (OpenSSH's ConnectTimeout=15)
  -- Who we are, as OpenSSH sees it: nil reads the password database entry of this process
  -- (OpenSSH ignores $USER and $HOME, and Paperclip sets neither); specs give {name=, home=}.
  account = nil,
  agent = nil, -- the ssh-agent socket: nil reads $SSH_AUTH_SOCK; false: never an agent
  known_hosts = nil, -- nil: the account's ~/.ssh/known_hosts, read and recorded as ssh does
  -- The default identities in ~/.ssh, in OpenSSH 9.2's order (`ssh -G` lists id_rsa, id_ecdsa,
  -- id_ecdsa_sk, id_ed25519, ...): the kinds libssh2 1.10 can use.
  identity_files = { "id_rsa", "id_ecdsa", "id_ed25519" },
  known_hosts_dir = nil, -- the fallback when ~/.ssh cannot be written: nil makes a private dir
  cancel_grace = 5, -- seconds between TERM and KILL when a command is canceled
  reap_grace = 2, -- the same after a timeout
  reap_wait = 3, -- seconds execute waits for a timed-out command's group to be stopped
  cancel_timeout = 15, -- seconds a cancel or reap command may take
  duplex_lifetime = 7 * 24 * 3600, -- seconds a duplex command may run when params give none
  -- ph-sandbox-helper: false runs every command through the shell wrapper (never uploads)
  sandbox_helper = true,
  helper_dir = '"${HOME:-/tmp}/.paperclip/bin"', -- where it is installed, as a shell word
  helper_timeout = 120, -- seconds an install may take, the upload (about 1 MB) included
  helper_margin = 5, -- seconds the helper's own --timeout adds to the command's (a backstop)
  -- How commands run where the helper runs: "serve" (one ph-sandbox-helper serve per lease),
  -- "exec" (ph-sandbox-helper exec per command) or "wrapper" (the sh wrapper: never uploads)
  runner = "serve",
  server_commands = 256, -- commands sent to a server at once until its HELLO says its limit
  close_wait = 3, -- seconds close_server waits for a server to stop its commands and exit
  default_max_output = 16 * 1024 * 1024, -- bytes kept per stream when ctx.max_output is nil
}

local quote = shell.quote

--- POLICIES: OpenSSH's StrictHostKeyChecking words -> host.ssh's host_key_policy.
-- "ask" is "yes" here, as it is for ssh in BatchMode.
M.POLICIES = {
  ["accept-new"] = "accept-new",
  yes = "yes",
  ask = "yes",
  ["true"] = "yes",
  no = "no",
  off = "no",
  ["false"] = "no",
}

--- SHELL_DETECT: prints "bash" when bash is on the PATH, else "sh".
M.SHELL_DETECT = "if command -v bash >/dev/null 2>&1; then echo bash; else echo sh; fi"

------------------------------------------------------------------------------------------------
-- Targets

local private_dir -- this worker's known_hosts directory, made on first use
local PRIVATE_PREFIX = "provider-host-known-hosts-"

-- Remove the private known_hosts dirs of workers that are gone (same owner, dead pid): a
-- worker exits without running Lua finalizers, so it cannot remove its own.
local function sweep(mine)
  local base, own = mine:match("^(.*)/[^/]+$"), fs.stat(mine, false)
  for _, name in ipairs(fs.list(base) or {}) do
    local pid = tonumber(name:match("^" .. PRIVATE_PREFIX:gsub("%-", "%%-") .. "(%d+)%-"))
    local path = base .. "/" .. name
    if pid and path ~= mine and not fs.stat("/proc/" .. pid) then
      local st = fs.stat(path, false)
      if st and own and st.type == "directory" and st.uid == own.uid then
        util.remove_tree(path)
      end
    end
  end
end

--- known_hosts_file() -> path of this worker's private known_hosts | nil, message, "io"
-- The directory is <TMPDIR>/provider-host-known-hosts-<pid>-XXXXXX (mode 0700).
function M.known_hosts_file()
  local dir = M.settings.known_hosts_dir
  if not dir then
    if not private_dir then
      local d, err, code = util.mkdtemp(PRIVATE_PREFIX .. sys.getpid() .. "-")
      if not d then
        return nil, "cannot create a private known_hosts directory: " .. tostring(err), code
      end
      private_dir = d
      pcall(sweep, d)
    end
    dir = private_dir
  end
  return dir .. "/known_hosts"
end

--- forget_known_hosts(): remove this worker's private known_hosts (a fresh one is made next).
function M.forget_known_hosts()
  if private_dir then
    util.remove_tree(private_dir)
    private_dir = nil
  end
end

local cached_account

--- account() -> {name, home} | nil, message: the account this worker runs as, from the
-- password database as OpenSSH takes it (settings.account overrides). Only a uid without an
-- entry (some containers) falls back to $USER/$LOGNAME and $HOME.
function M.account()
  if M.settings.account then
    return M.settings.account
  end
  if not cached_account then
    local entry, err = sys.account()
    if entry then
      cached_account = { name = entry.name, home = entry.home }
    else
      local name, home = os.getenv("USER") or os.getenv("LOGNAME"), os.getenv("HOME")
      if not (name and home and home:find("^/")) then
        return nil, "cannot tell which account this worker runs as: " .. tostring(err)
      end
      cached_account = { name = name, home = home }
    end
  end
  return cached_account
end

local function ssh_dir(account)
  return account.home:gsub("/+$", "") .. "/.ssh"
end

-- The agent socket to offer, or nil; says why not in `tried`.
local function agent_socket(tried)
  local path = M.settings.agent
  if path == false then
    return nil
  elseif path == nil then
    path = os.getenv("SSH_AUTH_SOCK")
  end
  if path == nil or path == "" then
    tried[#tried + 1] = "no ssh-agent (SSH_AUTH_SOCK is not set)"
    return nil
  end
  local st = fs.stat(path)
  if not st or st.type ~= "socket" then
    tried[#tried + 1] = ("ssh-agent at %s: not a socket"):format(path)
    return nil
  end
  return path
end

-- The default identity files OpenSSH would offer, read now: {key=, label=} each, or a reason
-- in `tried` (missing, permissions too open, encrypted: ssh in batch mode cannot ask).
local function default_keys(account, tried)
  local keys = {}
  for _, name in ipairs(M.settings.identity_files) do
    local path = ssh_dir(account) .. "/" .. name
    local st = fs.stat(path)
    if not st then
      tried[#tried + 1] = path .. ": missing"
    elseif st.mode & tonumber("077", 8) ~= 0 then
      tried[#tried + 1] = ("%s: permissions %04o are too open (ssh ignores it)"):format(path,
        st.mode)
    else
      local text, err = fs.read(path)
      local info, ierr = nil, err
      if text then
        info, ierr = ssh.key_info(text)
      end
      if not info then
        tried[#tried + 1] = ("%s: unusable (%s)"):format(path, ierr)
      elseif info.encrypted then
        tried[#tried + 1] = path .. ": encrypted (no passphrase can be asked for)"
      else
        log.add_secret(text)
        keys[#keys + 1] = { key = text, label = path }
      end
    end
  end
  return keys
end

-- Where host keys are checked and (accept-new) recorded: opts.known_hosts, settings, else
-- ~/.ssh/known_hosts of the account, as ssh. When ~/.ssh cannot be made, "accept-new" falls
-- back to this worker's private file (ssh itself would connect and only warn).
local function known_hosts_for(opts, policy, account)
  local path = opts.known_hosts or M.settings.known_hosts
  if path or policy == "no" then
    return path
  end
  if not account then
    return M.known_hosts_file()
  end
  local dir = ssh_dir(account)
  if policy == "accept-new" and not fs.stat(dir) then
    local ok, err = fs.mkdir(dir, tonumber("700", 8))
    if not ok then
      log.warn("cannot create %s to record SSH host keys (%s): using a private known_hosts "
        .. "for this worker", dir, err)
      return M.known_hosts_file()
    end
  end
  return dir .. "/known_hosts"
end

--- target(opts) -> target | nil, message, code
-- opts: host, port (22), user (default: the account's name, as ssh), passphrase,
-- host_key_policy (a POLICIES word, default "accept-new"), known_hosts (a local path; default
-- the account's ~/.ssh/known_hosts, where "accept-new" records new hosts), connect_timeout,
-- and the identity: key (private key text, kept in memory) or key_file (a local path, read
-- now and never copied); with neither, what ssh would offer: the ssh-agent at
-- $SSH_AUTH_SOCK, then the account's ~/.ssh/id_rsa, id_ecdsa and id_ed25519 (the message says
-- what was tried when there is none). Key texts are registered with host.log as secrets.
function M.target(opts)
  local account, aerr = M.account()
  local user = opts.user or (account and account.name)
  if not user then
    return nil, aerr, "config"
  end
  local t = {
    host = opts.host,
    port = opts.port or 22,
    user = user,
    passphrase = opts.passphrase,
    connect_timeout = opts.connect_timeout,
  }
  if opts.key ~= nil then
    if type(opts.key) ~= "string" or not opts.key:find("%S") then
      return nil, "no SSH private key given", "config"
    end
    t.key = opts.key
  elseif opts.key_file ~= nil then
    local text, err = fs.read(opts.key_file)
    if not text then
      return nil, ("cannot read the SSH identity file %s: %s"):format(opts.key_file, err), "config"
    end
    t.keys = { { key = text, label = opts.key_file } }
  else
    if not account then
      return nil, aerr, "config"
    end
    local tried = {}
    t.agent = agent_socket(tried)
    t.keys = default_keys(account, tried)
    if not t.agent and #t.keys == 0 then
      return nil, "no SSH identity to offer (tried: " .. table.concat(tried, "; ") .. ")", "config"
    end
  end
  log.add_secret(t.key)
  for _, k in ipairs(t.keys or {}) do
    log.add_secret(k.key)
  end
  local policy = M.POLICIES[opts.host_key_policy or "accept-new"]
  if not policy then
    return nil,
      ("unknown host key policy %q (use accept-new, yes or no)"):format(
        tostring(opts.host_key_policy)
      ),
      "config"
  end
  local known_hosts, err, code = known_hosts_for(opts, policy, account)
  if policy ~= "no" and not known_hosts then
    return nil, err, code
  end
  t.host_key_policy, t.known_hosts = policy, known_hosts
  return t
end

-- host.ssh options for target t and one call (extra: cmd, timeout, stdin, callbacks).
local function ssh_opts(t, extra)
  local o = {
    host = t.host,
    port = t.port,
    user = t.user,
    key = t.key,
    keys = t.keys,
    agent = t.agent,
    passphrase = t.passphrase,
    host_key_policy = t.host_key_policy,
    known_hosts = t.known_hosts,
  }
  for k, v in pairs(extra) do
    o[k] = v
  end
  o.timeout = math.max(0.001, o.timeout)
  o.connect_timeout = math.max(0.001,
    math.min(t.connect_timeout or M.settings.connect_timeout, o.timeout))
  return o
end

--- run(t, script, opts) -> host.ssh result | nil, message, code
-- Runs script with `sh -c` (whatever the login shell is). opts: timeout (seconds, required),
-- stdin. A non-zero exit is a result.
function M.run(t, script, opts)
  return ssh.exec(ssh_opts(t, { cmd = "sh -c " .. quote(script), timeout = opts.timeout,
    stdin = opts.stdin }))
end

------------------------------------------------------------------------------------------------
-- Scripts

local DEFAULT_CONTROL = '"${HOME:-/tmp}/.paperclip-executions"'

--- control_dir(base, scope, execution_id) -> the control dir, as a shell word. base: a remote
-- directory (nil: $HOME/.paperclip-executions); scope: the lease id. Without an executionId
-- the name is random (such a command cannot be canceled by a restarted worker).
function M.control_dir(base, scope, execution_id)
  return M.control_base(base) .. "/" .. M.control_name(scope, execution_id)
end

--- control_base(base) -> the directory of control dirs, as a shell word (nil: the default).
function M.control_base(base)
  return base and quote(base) or DEFAULT_CONTROL
end

--- control_name(scope, execution_id) -> a control dir's name: 32 hex digits (control_dir).
function M.control_name(scope, execution_id)
  if execution_id then
    return util.sha256_hex(tostring(scope or "") .. "\0" .. execution_id):sub(1, 32)
  end
  return util.hex(assert(util.random(16)))
end

-- The wrapper: a control dir, the command in its own process group (setsid when there is
-- one) with the wrapper's stdin, "group:<pgid>" (or "process:<pid>") in the control dir, the
-- command's exit status as the wrapper's. A "cancelled" marker stops it before it starts.
-- Output goes through two FIFOs relayed by `cat`, so only the relays hold the channel: when
-- the command has exited but left processes in its group (a background child still holding
-- stdout), relaying stops 0.5 s later and the call returns, as host.proc's linger does.
-- The command script is the wrapper's "$1" (command_line), so it is on the line only once.
local function wrapper(ctl)
  local runner = 'printf "%s:%s\\n" "$1" "$$" > "$2/pid"; '
    .. 'if [ -f "$2/cancelled" ]; then exit 130; fi; exec sh -c "$3"'
  local redirects = ' 0<&3 3<&- >"$paperclip_ctl/out" 2>"$paperclip_ctl/err" &'
  return table.concat({
    "paperclip_ctl=" .. ctl,
    'mkdir -p -m 700 "$paperclip_ctl" || exit 125',
    'if [ -f "$paperclip_ctl/cancelled" ]; then rm -rf "$paperclip_ctl"; exit 130; fi',
    'mkfifo "$paperclip_ctl/out" "$paperclip_ctl/err" || exit 125',
    'cat "$paperclip_ctl/out" & paperclip_out=$!',
    'cat "$paperclip_ctl/err" >&2 & paperclip_err=$!',
    "exec 3<&0",
    "if command -v setsid >/dev/null 2>&1; then",
    "  paperclip_kind=group",
    "  setsid sh -c " .. quote(runner) .. ' sh group "$paperclip_ctl" "$1"' .. redirects,
    "else",
    "  paperclip_kind=process",
    "  sh -c " .. quote(runner) .. ' sh process "$paperclip_ctl" "$1"' .. redirects,
    "fi",
    "paperclip_pid=$!",
    "exec 0</dev/null 3<&-",
    'wait "$paperclip_pid"',
    "paperclip_status=$?",
    'if [ "$paperclip_kind" != group ] || kill -0 "-$paperclip_pid" 2>/dev/null; then',
    "  paperclip_n=0",
    '  while [ "$paperclip_n" -lt 10 ] && { kill -0 "$paperclip_out" 2>/dev/null || '
      .. 'kill -0 "$paperclip_err" 2>/dev/null; }; do',
    "    sleep 0.05; paperclip_n=$((paperclip_n + 1))",
    "  done",
    '  kill "$paperclip_out" "$paperclip_err" 2>/dev/null',
    "fi",
    'wait "$paperclip_out" "$paperclip_err" 2>/dev/null',
    'rm -rf "$paperclip_ctl"',
    'exit "$paperclip_status"',
  }, "\n")
end

--- cancel_script(ctl, grace, remove) -> leave the "cancelled" marker, wait up to 2 s for the
-- pid file, TERM the group, wait up to grace seconds, KILL it. remove: also delete the dir.
-- Exits 0 in every case.
function M.cancel_script(ctl, grace, remove)
  local waits = math.max(0, math.ceil((grace or 5) * 10))
  local done = remove and 'rm -rf "$paperclip_ctl"; exit 0' or "exit 0"
  return table.concat({
    "paperclip_ctl=" .. ctl,
    'mkdir -p -m 700 "$paperclip_ctl" && : > "$paperclip_ctl/cancelled"',
    "paperclip_n=0",
    'while [ ! -s "$paperclip_ctl/pid" ] && [ "$paperclip_n" -lt 100 ]; do',
    "  sleep 0.02; paperclip_n=$((paperclip_n + 1))",
    "done",
    'if [ ! -s "$paperclip_ctl/pid" ]; then ' .. done .. "; fi",
    'IFS=: read -r paperclip_kind paperclip_pid < "$paperclip_ctl/pid"',
    'case "$paperclip_pid" in ""|*[!0-9]*) ' .. done .. " ;; esac",
    'if [ "$paperclip_kind" = group ]; then paperclip_t="-$paperclip_pid"; '
      .. 'else paperclip_t="$paperclip_pid"; fi',
    'kill -TERM "$paperclip_t" 2>/dev/null',
    "paperclip_n=0",
    ('while kill -0 "$paperclip_t" 2>/dev/null && [ "$paperclip_n" -lt %d ]; do'):format(waits),
    "  sleep 0.1; paperclip_n=$((paperclip_n + 1))",
    "done",
    'kill -KILL "$paperclip_t" 2>/dev/null',
    done,
  }, "\n")
end

--- system_profile: the profile every command reads first, quietly (shell.source_quietly);
-- never user profiles or nvm (Paperclip's sandbox rule). Specs point it at a file of their own.
M.system_profile = "/etc/profile"

-- The command line: /etc/profile, cd, then `env -i` with the minimal base, and a shell that
-- reads the caller's env from the head of its stdin (shell.read_then_exec) before it execs
-- the command: no value on any command line, no file, no extra process.
local function command_script(params, opts)
  local words = { quote(params.command) }
  for _, a in ipairs(params.args or {}) do
    words[#words + 1] = quote(a)
  end
  for _, w in ipairs(params.words or {}) do -- ours only: shell words expanded there ($HOME)
    words[#words + 1] = w
  end
  local base = table.concat({
    'PATH="$PATH"',
    "HOME=" .. (opts.home and quote(opts.home) or '"$HOME"'),
    'USER="$USER"',
    'LOGNAME="$LOGNAME"',
    "LANG=C.UTF-8",
  }, " ")
  local line = "exec env -i " .. base .. " " .. shell.read_then_exec(table.concat(words, " "))
  if params.cwd then
    line = "cd " .. quote(params.cwd) .. " && " .. line
  end
  return shell.source_quietly(M.system_profile) .. "\n" .. line
end

------------------------------------------------------------------------------------------------
-- ph-sandbox-helper

-- An install script: body (lines) after what both start with: where the helper goes,
-- paperclip_verify FILE (its content is ours: sha256sum when the machine has it, else size) and
-- paperclip_report, which runs `--version` and prints "present\n<path>\n<version>" or
-- "broken\n<path>\n<what it said>" (another architecture, a noexec mount), then exits 0.
local function helper_script(name, sha, size, body)
  local lines = {
    "paperclip_d=" .. M.settings.helper_dir,
    'paperclip_p="$paperclip_d/' .. name .. '"',
    "paperclip_verify() {",
    "  if command -v sha256sum >/dev/null 2>&1; then",
    '    case "$(sha256sum < "$1" 2>/dev/null)" in ' .. sha .. "*) return 0 ;; *) return 1 ;; esac",
    "  fi",
    '  paperclip_n=$(wc -c < "$1" 2>/dev/null) && [ $paperclip_n -eq ' .. size .. " ]",
    "}",
    "paperclip_report() {",
    '  if paperclip_v=$("$paperclip_p" --version 2>&1); then',
    '    case "$paperclip_v" in "' .. sandbox_helper.NAME .. ' "*)',
    "      printf 'present\\n%s\\n%s\\n' \"$paperclip_p\" \"$paperclip_v\"; exit 0 ;;",
    "    esac",
    "  fi",
    "  printf 'broken\\n%s\\n%s\\n' \"$paperclip_p\" \"$paperclip_v\"; exit 0",
    "}",
  }
  table.move(body, 1, #body, #lines + 1, lines)
  return table.concat(lines, "\n")
end

-- Is the helper there (and ours)? A file with other content is removed: "missing" then.
local function helper_check_script(name, sha, size)
  return helper_script(name, sha, size, {
    'if [ -f "$paperclip_p" ] && paperclip_verify "$paperclip_p"; then',
    '  [ -x "$paperclip_p" ] || chmod 755 "$paperclip_p" 2>/dev/null',
    "  paperclip_report",
    "fi",
    'rm -f "$paperclip_p" 2>/dev/null',
    "printf 'missing\\n%s\\n' \"$paperclip_p\"",
  })
end

-- The helper's bytes come on stdin: written to a temp name, checked, made 0755, renamed into
-- place (a concurrent install or a reader never sees half a file), then run once.
local function helper_install_script(name, sha, size)
  return helper_script(name, sha, size, {
    'paperclip_t="$paperclip_p.$$.tmp"',
    -- a cut upload leaves no temp file: removed on every exit a shell can see, and what a
    -- SIGKILL left behind is swept by the next install once it is clearly abandoned
    'trap \'rm -f "$paperclip_t"\' EXIT',
    "trap 'exit 1' HUP INT TERM PIPE",
    'mkdir -p "$paperclip_d" || exit 3',
    'find "$paperclip_d" -maxdepth 1 -name "' .. sandbox_helper.NAME
      .. '-*.tmp" -mmin +10 -exec rm -f {} + 2>/dev/null',
    'if ! cat > "$paperclip_t"; then rm -f "$paperclip_t"; exit 3; fi',
    'if ! paperclip_verify "$paperclip_t"; then',
    '  rm -f "$paperclip_t"; echo "the upload arrived damaged (sha256 mismatch)" >&2; exit 4',
    "fi",
    'if ! { chmod 755 "$paperclip_t" && mv -f "$paperclip_t" "$paperclip_p"; }; then',
    '  rm -f "$paperclip_t"; exit 3',
    "fi",
    "paperclip_report",
  })
end

-- A check or install answer -> path | false (missing) | nil, message, "unsupported".
local function helper_answer(res)
  local state, path, rest = res.stdout:match("^(%a+)\n([^\n]*)\n?(.*)$")
  if res.timed_out then
    return nil, "timed out", "timeout"
  elseif res.exit_code ~= 0 or not state then
    local why = util.trim(res.stderr)
    return nil, ("exit %s: %s"):format(tostring(res.exit_code), why ~= "" and why or "no output"),
      "unsupported"
  elseif state == "present" then
    return path
  elseif state == "missing" then
    return false
  end
  local said = util.trim(rest)
  return nil, "it does not run there: " .. (said ~= "" and said or "no output"), "unsupported"
end

-- One install: a check (one round trip); when missing, the upload (a second one).
local function install(t)
  local sha, err = sandbox_helper.sha256()
  if not sha then
    return nil, err, "unsupported"
  end
  local size = assert(sandbox_helper.size())
  local name = sandbox_helper.NAME .. "-" .. sha:sub(1, 16)
  local opts = { timeout = M.settings.helper_timeout }
  local res, code
  res, err, code = M.run(t, helper_check_script(name, sha, size), opts)
  if not res then
    return nil, err, code
  end
  local path
  path, err, code = helper_answer(res)
  if path ~= false then
    return path, err, code
  end
  local data
  data, err = sandbox_helper.read()
  if not data or util.sha256_hex(data) ~= sha then -- gone or rebuilt since we looked
    return nil, err or "the local helper changed while it was being installed", "unsupported"
  end
  opts.stdin = data
  res, err, code = M.run(t, helper_install_script(name, sha, size), opts)
  if not res then
    return nil, err, code
  end
  path, err, code = helper_answer(res)
  if path == false then
    return nil, "installed, then not found", "unsupported"
  end
  if path then
    log.debug("host.remote: installed %s on %s at %s", sandbox_helper.NAME, t.host, path)
  end
  return path, err, code
end

-- target + scope -> {path=} | {err=, code="unsupported"} | {pending = Signal} while installing.
local helpers, helper_entries = {}, 0
local HELPER_ENTRIES_MAX = 4096 -- a worker's leases come and go: forget them all beyond this

local function helper_key(t, scope)
  return table.concat({ t.host, tostring(t.port), t.user, tostring(scope or "") }, "\0")
end

--- install_helper(t, opts) -> remote path | nil, message, code
-- Makes ph-sandbox-helper runnable on target t and gives its absolute path there:
-- <settings.helper_dir>/ph-sandbox-helper-<first 16 hex of its sha256>, mode 0755. One round
-- trip when it is already there (checked against the sha256 and run once with --version),
-- two when it must be uploaded (about 1 MB, through the command's stdin). The answer is kept
-- per target and opts.scope (the lease), so later calls cost nothing; concurrent calls share
-- one install. code "unsupported" (kept too): it cannot run there (another architecture, a
-- noexec mount, a read-only home), it is missing on this host, or settings.sandbox_helper is
-- false; the caller falls back to the shell wrapper. Transport failures are host.ssh's, not
-- kept.
function M.install_helper(t, opts)
  opts = opts or {}
  if not M.settings.sandbox_helper then
    return nil, sandbox_helper.NAME .. " is disabled (host.remote.settings.sandbox_helper)",
      "unsupported"
  end
  local key = helper_key(t, opts.scope)
  local entry = helpers[key]
  if entry and entry.pending then -- another task installs it: wait for its answer
    local deadline = task.now() + M.settings.helper_timeout
    while entry.pending and task.now() < deadline do
      local _, err, code = entry.pending:wait(deadline - task.now())
      if code == "canceled" then
        return nil, err, code
      end
    end
    if entry.pending then
      return nil, sandbox_helper.NAME .. ": another install is still running", "timeout"
    end
  end
  if entry and helpers[key] == entry then
    return entry.path, entry.err, entry.code
  end
  if helper_entries >= HELPER_ENTRIES_MAX then
    helpers, helper_entries = {}, 0
  end
  entry = { pending = task.signal() }
  helpers[key], helper_entries = entry, helper_entries + 1
  local ok, path, err, code = pcall(install, t)
  local pending = entry.pending
  entry.pending = nil
  if ok and (path or code == "unsupported") then
    entry.path, entry.err, entry.code = path, err, code
    if not path then
      log.info("host.remote: %s cannot be used on %s (%s): commands use the shell wrapper",
        sandbox_helper.NAME, t.host, err)
    end
  elseif helpers[key] == entry then -- a transport failure: try again next time
    helpers[key], helper_entries = nil, helper_entries - 1
  end
  pending:notify()
  if not ok then
    error(path, 0)
  end
  return path, err, code
end

--- forget_helper(t, scope): drop what install_helper keeps for that lease (on release); t nil:
-- on whichever target (a deleted VM's name).
function M.forget_helper(t, scope)
  local tail = "\0" .. tostring(scope or "")
  for key, entry in pairs(helpers) do
    local match = t and key == helper_key(t, scope) or (not t and key:sub(-#tail) == tail)
    if match and not entry.pending then
      helpers[key], helper_entries = nil, helper_entries - 1
    end
  end
end

--- forget_helpers(): drop everything install_helper keeps (specs: machines come and go).
function M.forget_helpers()
  helpers, helper_entries = {}, 0
end

--- RUNNERS: the words providers put in metadata (commandRunner).
M.RUNNERS = { serve = "ph-sandbox-helper serve", helper = "ph-sandbox-helper",
  wrapper = "sh-wrapper" }

local RUNNER_SETTINGS = { serve = true, exec = true, wrapper = true }

local function runner_setting()
  local r = M.settings.runner
  if not RUNNER_SETTINGS[r] then
    error(("host.remote.settings.runner must be \"serve\", \"exec\" or \"wrapper\", got %s")
      :format(tostring(r)), 3)
  end
  return r
end

--- runner(t, scope) -> M.RUNNERS word | nil, message, code: installs the helper for that lease
-- (install_helper) and says which runner its commands will use (settings.runner: serve, exec,
-- or the wrapper; serve starts on the first execute); nil only for a transport failure.
function M.runner(t, scope)
  local setting = runner_setting()
  if setting == "wrapper" then
    return M.RUNNERS.wrapper
  end
  local path, err, code = M.install_helper(t, { scope = scope })
  if path then
    return setting == "serve" and M.RUNNERS.serve or M.RUNNERS.helper
  elseif code == "unsupported" then
    return M.RUNNERS.wrapper
  end
  return nil, err, code
end

-- Failures that mean the machine cannot be reached at all: execute reports them at once
-- instead of trying again with the wrapper.
local UNREACHABLE = { dns = true, connect = true, auth = true, protocol = true, canceled = true }

-- The helper path for this execute, or nil for the wrapper; nil, message, code when the
-- machine cannot be reached.
local function helper_for(t, opts)
  if opts.helper == false or not M.settings.sandbox_helper or runner_setting() == "wrapper" then
    return nil
  elseif type(opts.helper) == "string" then
    return opts.helper
  end
  local path, err, code = M.install_helper(t, { scope = opts.scope })
  if not path and UNREACHABLE[code] then
    return nil, err, code
  end
  return path
end

-- The command line: `sh -c BODY sh SCRIPT`, the command script as "$1" (once, whichever
-- runner). With a helper: its exec when it is still there (else the wrapper: a helper removed
-- since it was installed costs nothing but speed), with its own --timeout a little after ours
-- as a backstop for a host that went silent without closing the channel.
local function command_line(helper, ctl, script, timeout_ms)
  local body = wrapper(ctl)
  if helper then
    local limit = math.ceil(timeout_ms / 1000) + M.settings.helper_margin
    body = ('if [ -x %s ]; then exec %s exec --ctl %s --timeout %d -- sh -c "$1"; fi\n'):format(
      quote(helper), quote(helper), ctl, limit) .. body
  end
  return "sh -c " .. quote(body) .. " sh " .. quote(script)
end

------------------------------------------------------------------------------------------------
-- Execute

-- The execute params as this module uses them: the worker checked them (host.params); the
-- defaults make a direct call from a script or a bench work too.
local function execute_params(ctx, params, opts)
  return {
    command = params.command,
    args = params.args or {},
    env = params.env or {},
    stdin = params.stdin,
    cwd = params.cwd or opts.cwd,
    timeout_ms = params.timeoutMs or opts.timeout_ms or ctx.config.timeoutMs or 300000,
  }
end

-- Stop the group of a command that outlived its channel and remove its control dir, in the
-- background; wait up to `wait` seconds for that.
local function reap(t, ctl, wait)
  local r = task.spawn(function()
    local res, err = M.run(t, M.cancel_script(ctl, M.settings.reap_grace, true),
      { timeout = M.settings.cancel_timeout })
    if not res then
      log.debug("host.remote: could not stop a command's processes on %s: %s", t.host, err)
    end
    return true
  end)
  if wait and wait > 0 then
    r:wait(wait)
  end
end

local function with_message(stderr, message)
  if stderr ~= "" and stderr:sub(-1) ~= "\n" then
    stderr = stderr .. "\n"
  end
  return stderr .. message .. "\n"
end

-- The result of a command that ran: exit_code (or nil), signal ("TERM"... or nil), stdout,
-- stderr, timed_out, truncated.
local function execute_result(ctx, p, opts, r)
  local out = {
    exitCode = r.exit_code or json.null,
    signal = r.signal and ("SIG" .. r.signal) or json.null,
    timedOut = false,
    stdout = ctx:output(r.stdout),
    stderr = ctx:output(r.stderr),
    metadata = opts.metadata,
  }
  if r.timed_out then
    out.exitCode, out.signal, out.timedOut = json.null, json.null, true
    out.stderr = with_message(out.stderr, ("Command timed out after %dms"):format(p.timeout_ms))
  end
  if r.truncated then
    local meta = {}
    for k, v in pairs(opts.metadata or {}) do
      meta[k] = v
    end
    meta.truncated = true
    out.metadata = meta
  end
  return out
end

-- The cancel of a command that no server runs (yet, or any more): the cancel script, which
-- leaves the "cancelled" marker (a command not started yet never starts) and stops the group.
local function cancel_by_script(t, ctl)
  local res, cerr = M.run(t, M.cancel_script(ctl, M.settings.cancel_grace),
    { timeout = M.settings.cancel_timeout })
  if not res then
    error("could not cancel the command: " .. tostring(cerr), 0)
  end
  return true
end

------------------------------------------------------------------------------------------------
-- The command server: ph-sandbox-helper serve, one per lease (bridge/serve.c, bridge/frame.h)

local WINDOW, MAX_PAYLOAD = frame.WINDOW, frame.MAX_PAYLOAD
local GRANT_AT = WINDOW // 4 -- output credit goes back in pieces of at least this much

local Server = { __name = "host.remote.Server" }
Server.__index = Server

-- server_key(t, scope) -> Server (running or starting), or {unsupported = why} once serve
-- could not start for that lease (its executes use exec then)
local servers = {}

local open_duplex -- (t, p, opts, params) -> Duplex: M.duplex with p.words (below)

-- The request of bridge/frame.h: the control dir's name, cwd, argv, env (sorted), timeout.
local function request_bytes(name, p, timeout_ms)
  local parts = { string.pack(">I4s4s4I4", timeout_ms, name, p.cwd or "", 1 + #p.args),
    string.pack(">s4", p.command) }
  for _, a in ipairs(p.args) do
    parts[#parts + 1] = string.pack(">s4", a)
  end
  local names = {}
  for k in pairs(p.env) do
    names[#names + 1] = k
  end
  table.sort(names)
  parts[#parts + 1] = string.pack(">I4", #names)
  for _, k in ipairs(names) do
    parts[#parts + 1] = string.pack(">s4s4", k, p.env[k])
  end
  local body = table.concat(parts)
  return string.pack(">I4", 4 + #body) .. body
end

function Server:send(type_name, id, payload)
  if self.dead then
    return
  end
  self.out[#self.out + 1] = frame.encode(type_name, id, payload)
  self.out_signal:notify()
end

-- Frames out, in order, in as few writes as the channel allows; once closing, and everything
-- is written, its stdin's end.
function Server:writer()
  while true do
    if #self.out > 0 then
      local data = table.concat(self.out)
      self.out = {}
      local ok, err, code = self.duplex:write(data)
      if not ok then
        return self:lost("could not write to it: " .. tostring(err), code)
      end
    elseif self.dead then
      return
    elseif self.closing then
      self.duplex:close_stdin()
      return
    else
      self.out_signal:wait()
    end
  end
end

-- The server is gone or unusable: every call in flight fails, the channel is closed in the
-- background (this may run in a callback), and the next execute starts a new server. Before
-- its HELLO nothing ran: an exit then means serve cannot run there ("unsupported").
function Server:lost(reason, code)
  if self.dead then
    return
  end
  local unstarted = not self.max_commands
  self.dead = ("the command server on %s %s"):format(self.host, reason)
  self.dead_code = unstarted and code ~= "closed" and "unsupported" or "closed"
  if servers[self.key] == self then
    if self.dead_code == "unsupported" and not self.closing then -- exec from now on, for the lease
      servers[self.key] = { unsupported = self.dead, scope = self.scope, target = self.target }
      log.info("host.remote: %s: commands use ph-sandbox-helper exec", self.dead)
    else
      servers[self.key] = nil
    end
  end
  if not self.closing then
    log.debug("host.remote: %s", self.dead)
  end
  for _, call in pairs(self.calls) do
    call.signal:notify()
  end
  self.calls = {}
  self.out_signal:notify()
  self.slot_signal:notify()
  task.spawn(function()
    self.duplex:close()
  end)
end

-- A call's output: kept up to max_output (the rest dropped: truncated), streamed as it comes;
-- after a timeout, or once its execute gave it up, only its credit goes back.
local function keep_output(call, which, payload)
  call.owed = call.owed + #payload
  if call.done then
    return
  end
  local kept = call[which]
  local room = call.max_output - kept.size
  if #payload > room then
    call.truncated = true
    payload = room > 0 and payload:sub(1, room) or ""
  end
  if payload ~= "" then
    kept[#kept + 1] = payload
    kept.size = kept.size + #payload
    local emit = call.emit[which]
    if emit then
      emit(payload)
    end
  end
end

-- One frame from the server; nil, why for a protocol error.
function Server:on_frame(f, touched)
  local t = f.type
  if t == "HELLO" then
    if self.max_commands or f.magic ~= frame.SERVE_MAGIC then
      return nil, self.max_commands and "a second HELLO" or "a HELLO that is not a server's"
    end
    self.max_commands = f.max_commands
    self.slot_signal:notify()
    return true
  elseif t == "GOAWAY" then
    return nil, "went away: " .. f.payload
  elseif t ~= "DATA" and t ~= "STDERR" and t ~= "CREDIT" and t ~= "EXIT" then
    return nil, t .. " from the server"
  elseif f.stream > self.last_id then
    return nil, ("%s on stream %d, which was never opened"):format(t, f.stream)
  end
  local call = self.calls[f.stream]
  if not call then
    return true -- one we already forgot (its RESET crossed this frame)
  end
  if t == "EXIT" then
    self.calls[f.stream] = nil
    self.running = self.running - 1
    call.exit = f
    self.slot_signal:notify()
  elseif t == "CREDIT" then
    call.credit = call.credit + f.credit
  else
    keep_output(call, t == "DATA" and "stdout" or "stderr", f.payload)
    touched[call] = true
  end
  call.signal:notify()
  return true
end

-- The channel's stdout: decode, dispatch, give credit back. Runs outside any task.
function Server:on_stdout(chunk)
  if self.dead then
    return
  end
  local frames, err = self.decoder:feed(chunk)
  if not frames then
    return self:lost("broke the protocol: " .. err, "protocol")
  end
  local touched = {}
  for _, f in ipairs(frames) do
    local ok, why = self:on_frame(f, touched)
    if not ok then
      self:send("GOAWAY", 0, "protocol error")
      return self:lost(why:find("^went away") and why or ("broke the protocol: " .. why),
        "protocol")
    end
  end
  for call in pairs(touched) do
    if call.owed >= GRANT_AT and self.calls[call.id] then
      self:send("CREDIT", call.id, string.pack(">I4", call.owed))
      call.owed = 0
    end
  end
end

-- A server is the lease's for one identity, as host.ssh's pooled sessions are: an execute
-- with another key (or known_hosts, or policy) never rides on a channel it did not open.
local function server_key(t, scope)
  local id = { t.key or "", t.agent or "", t.passphrase or "", t.host_key_policy or "",
    t.known_hosts or "" }
  for _, k in ipairs(t.keys or {}) do
    id[#id + 1] = k.key
  end
  return helper_key(t, scope) .. "\0" .. util.sha256_hex(table.concat(id, "\0"))
end

-- The server for the lease of opts.scope on t, started when there is none (or it died):
-- Server | nil, message, code ("unsupported": serve cannot run there; nothing ran).
local function server_for(t, opts, helper)
  local key = server_key(t, opts.scope)
  local s = servers[key]
  if s and s.unsupported then
    return nil, s.unsupported, "unsupported"
  end
  if s and s.starting then -- another execute starts it: wait for that
    local deadline = task.now() + M.settings.connect_timeout + 60
    while s.starting and task.now() < deadline do
      local _, err, code = s.start_signal:wait(deadline - task.now())
      if code == "canceled" then
        return nil, err, code
      end
    end
    if s.starting then
      return nil, "the command server did not start in time", "timeout"
    end
    return server_for(t, opts, helper)
  end
  if s and not s.dead then
    return s
  end
  s = setmetatable({ key = key, scope = tostring(opts.scope or ""),
    target = helper_key(t, opts.scope), host = t.host, decoder = frame.decoder(), calls = {},
    last_id = 0, running = 0, out = {}, out_signal = task.signal(), slot_signal = task.signal(),
    start_signal = task.signal(), starting = true, stderr = {} }, Server)
  servers[key] = s
  -- as every duplex (/etc/profile, `env -i` over the minimal base): what its commands inherit;
  -- --ctl-base is expanded there, so that it is where the cancel script looks
  local d, err, code = open_duplex(t, { command = helper, args = { "serve" }, env = {},
    words = { "--ctl-base", M.control_base(opts.control_base) } }, { home = opts.home }, {
    on_stdout = function(chunk)
      s:on_stdout(chunk)
    end,
    on_stderr = function(chunk) -- what it says before it dies: kept for the message, bounded
      if #s.stderr < 8 then
        s.stderr[#s.stderr + 1] = chunk:sub(1, 512)
      end
    end,
  })
  s.starting = false
  s.start_signal:notify()
  if not d then
    if servers[key] == s then
      servers[key] = nil
    end
    return nil, err, code
  end
  s.duplex = d
  s.writer_task = task.spawn(function()
    s:writer()
  end)
  s.watch_task = task.spawn(function() -- the server ending by itself (or its channel) is lost
    local r, werr, wcode = d:wait()
    local said = util.trim(table.concat(s.stderr))
    said = said ~= "" and (": " .. said) or ""
    if r then
      s:lost(("exited (%s)%s"):format(r.signal or ("exit " .. tostring(r.exit_code)), said),
        r.exit_code and "exit" or "closed")
    else
      s:lost("was lost: " .. tostring(werr), wcode == "closed" and "closed" or wcode)
    end
  end)
  return s
end

-- Stop the command servers for which match(s) is true: taken out of the table first, closed
-- after (a close yields).
local function close_where(match)
  local list = {}
  for key, s in pairs(servers) do
    if match(s) then
      servers[key] = nil
      if getmetatable(s) == Server then
        list[#list + 1] = s
      end
    end
  end
  for _, s in ipairs(list) do
    s:close()
  end
end

--- close_server(t, scope): stop the command server of that lease, if one runs (its commands
-- are stopped: TERM, KILL 2 s later), waiting up to settings.close_wait seconds for it to exit;
-- t nil: on whichever target (a deleted VM's name). Providers call it at release and destroy.
function M.close_server(t, scope)
  close_where(function(s)
    return s.scope == tostring(scope or "") and (not t or s.target == helper_key(t, scope))
  end)
end

--- close_servers(): stop every command server this worker runs (specs, benches).
function M.close_servers()
  close_where(function()
    return true
  end)
end

--- servers_running() -> how many command servers this worker keeps (specs).
function M.servers_running()
  local n = 0
  for _, s in pairs(servers) do
    n = n + ((getmetatable(s) == Server and not s.dead) and 1 or 0)
  end
  return n
end

-- Its stdin's end once the writer sent what it holds: the server stops its commands and
-- exits; then the channel is closed.
function Server:close()
  if self.closing then
    return
  end
  self.closing = true
  local deadline = task.now() + M.settings.close_wait
  while self.starting and task.now() < deadline do
    self.start_signal:wait(deadline - task.now())
  end
  if self.duplex and not self.dead then
    self.out_signal:notify()
    self.writer_task:wait(math.max(0, deadline - task.now()))
    self.duplex:close_stdin()
    self.duplex:wait(math.max(0, deadline - task.now()))
  end
  if self.duplex then
    self:lost("was closed", "closed")
  end
end

-- A free slot on the server (its HELLO's limit, settings.server_commands before it came).
local function wait_slot(s, deadline)
  while not s.dead and s.running >= (s.max_commands or M.settings.server_commands) do
    local _, err, code = s.slot_signal:wait(math.max(0, deadline - task.now()))
    if code == "canceled" then
      return nil, err, code
    elseif task.now() >= deadline then
      return nil, "no free slot on the command server before the command's timeout", "timeout"
    end
  end
  return true
end

-- stdin as DATA frames within the stream's credit, then FIN once it is all sent.
local function feed_stdin(s, call, stdin)
  while call.stdin_pos <= #stdin and call.credit > 0 do
    local n = math.min(call.credit, MAX_PAYLOAD, #stdin - call.stdin_pos + 1)
    s:send("DATA", call.id, stdin:sub(call.stdin_pos, call.stdin_pos + n - 1))
    call.credit = call.credit - n
    call.stdin_pos = call.stdin_pos + n
  end
  if call.stdin_pos > #stdin and not call.fin then
    call.fin = true
    s:send("FIN", call.id)
  end
end

-- A new call on server s: its stream opened with the request (EXEC frames).
local function start_call(s, ctx, p, params, opts)
  s.last_id = s.last_id + 1
  local call = { id = s.last_id, credit = WINDOW, owed = 0, stdin_pos = 1,
    signal = task.signal(), stdout = { size = 0 }, stderr = { size = 0 },
    max_output = ctx.max_output or M.settings.default_max_output,
    emit = { stdout = ctx:emitter("stdout"), stderr = ctx:emitter("stderr") } }
  s.calls[call.id], s.running = call, s.running + 1
  local limit = (math.ceil(p.timeout_ms / 1000) + M.settings.helper_margin) * 1000
  local req = request_bytes(M.control_name(opts.scope, params.executionId), p,
    math.min(limit, 0xffffffff))
  for i = 1, #req, MAX_PAYLOAD do
    s:send("EXEC", call.id, req:sub(i, i + MAX_PAYLOAD - 1))
  end
  call.sent = true
  return call
end

-- TERM to the call's group, KILL after grace seconds (the server does both).
local function signal_call(s, call, grace)
  s:send("SIGNAL", call.id, string.pack(">BI4", 15, math.floor(grace * 1000)))
end

-- From now on a cancel is a SIGNAL on the stream (or the cancel script once it is gone).
local function register_cancel(ctx, t, s, call, ctl)
  if not ctx.execution then
    return
  end
  ctx.execution.cancel = function()
    if s.dead or call.exit then
      return cancel_by_script(t, ctl)
    end
    signal_call(s, call, M.settings.cancel_grace)
    return true
  end
end

-- Feed stdin and wait for the call's EXIT until the deadline. -> timed_out | nil, msg, code
-- when the calling task was canceled (the command is stopped: RESET, or the script).
local function await_call(t, s, call, stdin, deadline, ctl)
  while not call.exit and not s.dead do
    feed_stdin(s, call, stdin)
    if task.now() >= deadline then
      return true
    end
    local _, werr, wcode = call.signal:wait(deadline - task.now())
    if wcode == "canceled" then
      call.done = true
      if s.dead then
        reap(t, ctl, nil)
      else
        s:send("RESET", call.id)
      end
      return nil, werr, wcode
    end
  end
  return false
end

-- A call past its deadline: the output so far is the result; its group is stopped (waited for
-- up to reap_wait) before we answer.
local function stop_timed_out(t, s, call, ctl)
  call.done = true
  signal_call(s, call, M.settings.reap_grace)
  local until_ = task.now() + M.settings.reap_wait
  while not call.exit and not s.dead and task.now() < until_ do
    call.signal:wait(until_ - task.now())
  end
  if s.dead and not call.exit then
    reap(t, ctl, M.settings.reap_wait)
  end
end

-- The execute through the lease's server: the same result as the other runners give.
-- nil, message, code: "unsupported" when serve cannot run there (nothing ran: the caller uses
-- exec), "closed" when the server died with the command (it is stopped in the background).
local function serve_execute(ctx, t, p, params, opts, helper, ctl)
  for _, v in ipairs({ p.command, p.cwd or "", table.unpack(p.args) }) do
    if v:find("\0", 1, true) then
      return nil, "the command, its arguments and cwd cannot hold a NUL byte", "protocol"
    end
  end
  assert(shell.check_env(p.env))
  local deadline = task.now() + p.timeout_ms / 1000
  local s, err, code = server_for(t, opts, helper)
  if not s then
    return nil, err, code
  end
  local ok
  ok, err, code = wait_slot(s, deadline)
  if not ok then
    return nil, err, code
  elseif s.dead then
    return nil, s.dead, s.dead_code
  elseif task.now() >= deadline then -- as host.ssh's exec: its time passed before it started
    return nil, ("the command did not start within %dms"):format(p.timeout_ms), "timeout"
  end
  local call = start_call(s, ctx, p, params, opts)
  register_cancel(ctx, t, s, call, ctl)
  local timed_out
  timed_out, err, code = await_call(t, s, call, p.stdin or "", deadline, ctl)
  if timed_out == nil then
    return nil, err, code
  elseif timed_out then
    stop_timed_out(t, s, call, ctl)
  elseif not call.exit then -- the server died with the command: it may run on, stop it
    call.done = true
    if s.dead_code ~= "unsupported" then
      reap(t, ctl, nil)
    end
    return nil, s.dead, s.dead_code
  end
  local f = call.exit or {}
  return execute_result(ctx, p, opts, {
    -- as sh's wait (and the other runners) gives it: 128 + N for a signal N
    exit_code = f.exit_code or (f.signal and 128 + f.signal),
    stdout = table.concat(call.stdout),
    stderr = table.concat(call.stderr),
    timed_out = timed_out or f.timed_out,
    truncated = call.truncated,
  })
end

------------------------------------------------------------------------------------------------
-- Execute: the runner

-- The command through ph-sandbox-helper exec (one SSH channel and process per command) or the
-- shell wrapper (helper nil).
local function exec_execute(ctx, t, p, opts, helper, ctl)
  -- nothing yields between registering the cancel and starting the command: a cancel that
  -- comes before the runner runs leaves the "cancelled" marker, and the runner exits 130
  if ctx.execution then
    ctx.execution.cancel = function()
      return cancel_by_script(t, ctl)
    end
  end
  local res, err, code = ssh.exec(ssh_opts(t, {
    cmd = command_line(helper, ctl, command_script(p, opts), p.timeout_ms),
    stdin = shell.stdin_env(assert(shell.export_script(p.env))) .. (p.stdin or ""),
    timeout = p.timeout_ms / 1000,
    max_output = ctx.max_output,
    on_stdout = ctx:emitter("stdout"),
    on_stderr = ctx:emitter("stderr"),
  }))
  if not res then
    if code == "closed" or code == "canceled" then -- it may run on: stop it
      reap(t, ctl, nil)
    end
    return nil, err, code
  end
  if res.timed_out then
    reap(t, ctl, M.settings.reap_wait)
  end
  return execute_result(ctx, p, opts, res)
end

--- execute(ctx, t, params, opts) -> environmentExecute result | nil, message, code
-- params: the request's (command, args, env, stdin, cwd, timeoutMs, executionId). opts:
--   cwd          the working directory when params.cwd is absent (nil: the login directory)
--   home         HOME for the command (nil: the login user's $HOME)
--   scope        names the control dir with the executionId: the lease id (and the server)
--   control_base the remote directory holding control dirs (nil: $HOME/.paperclip-executions)
--   timeout_ms   the default timeout (nil: ctx.config.timeoutMs)
--   metadata     the result's metadata
--   helper       ph-sandbox-helper's remote path, or false for the shell wrapper; nil:
--                install_helper(t, {scope = scope}) decides (kept per lease: free after once)
-- With the helper and settings.runner "serve", the command runs on the lease's command server
-- (started on the first execute: see close_server); where it cannot start, through `exec`.
-- A transport failure (cannot connect, key refused, connection lost, the server lost with the
-- command) gives nil, message, code for the provider to word. Registers ctx.execution.cancel
-- when the request has an executionId (a cancel that comes while the helper is being
-- installed or the server started leaves the "cancelled" marker: the command never starts).
function M.execute(ctx, t, params, opts)
  opts = opts or {}
  local p = execute_params(ctx, params, opts)
  local ctl = M.control_dir(opts.control_base, opts.scope, params.executionId)
  if ctx.execution then -- until a runner takes over: the cancel script
    ctx.execution.cancel = function()
      return cancel_by_script(t, ctl)
    end
  end
  local helper, herr, hcode = helper_for(t, opts)
  if herr then
    return nil, herr, hcode
  end
  if helper and runner_setting() == "serve" then
    local res, err, code = serve_execute(ctx, t, p, params, opts, helper, ctl)
    if res or code ~= "unsupported" then
      return res, err, code
    end
  end
  return exec_execute(ctx, t, p, opts, helper, ctl)
end

------------------------------------------------------------------------------------------------
-- Duplex

local Duplex = { __name = "host.remote.Duplex" }
Duplex.__index = Duplex

--- duplex(t, params, opts) -> Duplex | nil, message, code
-- The provider contract's duplex execution over one SSH channel of the pooled session: a
-- long-lived command whose stdin the host writes at any time and whose stdout it reads as a
-- stream (host.ssh.open). params: command, args, env, cwd, on_stdout, on_stderr (nothing is
-- kept), timeout (seconds; nil: until closed). The command runs as execute runs one
-- (/etc/profile, `env -i` over the minimal base, the caller's env read from the head of its
-- stdin: never on a command line). opts: cwd and home as for execute. Duplex: write(data),
-- close_stdin(), wait([timeout]) -> {exit_code, signal}, pause_output(), resume_output(),
-- close(). pause_output/resume_output are the channel's (host.ssh.open): a consumer whose sink
-- is slow pauses from inside on_stdout/on_stderr and resumes from a task once it drained; the
-- output kept meanwhile comes first, and wait() never returns the end before it. Closing ends
-- the channel: sshd closes the command's stdin and output (the relay exits at its stdin's end).
function M.duplex(t, params, opts)
  opts = opts or {}
  local p = { command = params.command, args = params.args or {}, env = params.env or {},
    cwd = params.cwd or opts.cwd }
  return open_duplex(t, p, opts, params)
end

-- M.duplex's work, for p (command, args, env, cwd, and words: shell words of ours, unquoted).
open_duplex = function(t, p, opts, params)
  local env_block, err = shell.export_script(p.env)
  if not env_block then
    return nil, err, "internal"
  end
  local o = ssh_opts(t, { cmd = "sh -c " .. quote(command_script(p, opts)),
    on_stdout = params.on_stdout, on_stderr = params.on_stderr,
    timeout = params.timeout or M.settings.duplex_lifetime })
  local ch, code
  ch, err, code = ssh.open(o)
  if not ch then
    return nil, err, code
  end
  -- No callback before our caller holds the Duplex (a callback may pause it): the output
  -- kept meanwhile comes once the caller's task yields.
  ch:pause_output()
  local ok
  ok, err, code = ch:write(shell.stdin_env(env_block))
  if not ok then
    ch:close()
    return nil, err, code
  end
  ch:resume_output()
  return setmetatable({ channel = ch }, Duplex)
end

function Duplex:write(data)
  return self.channel:write(data)
end

function Duplex:close_stdin()
  self.channel:close_stdin()
end

function Duplex:wait(timeout)
  local r, err, code = self.channel:wait(timeout)
  if not r then
    return nil, err, code
  end
  if r.timed_out then
    return nil, "the duplex command reached its time limit", "timeout"
  end
  return { exit_code = r.exit_code, signal = r.signal and ("SIG" .. r.signal) or nil }
end

function Duplex:pause_output()
  return self.channel:pause_output()
end

function Duplex:resume_output()
  return self.channel:resume_output()
end

function Duplex:close()
  self.channel:close()
end
Duplex.__close = Duplex.close

--- cancel(t, opts) -> true | nil, message, code: the cancel script for an execution this
-- worker does not track (e.g. after a restart). opts: execution_id (required), scope,
-- control_base (as for execute).
function M.cancel(t, opts)
  local ctl = M.control_dir(opts.control_base, opts.scope, opts.execution_id)
  local res, err, code = M.run(t, M.cancel_script(ctl, M.settings.cancel_grace),
    { timeout = M.settings.cancel_timeout })
  if not res then
    return nil, err, code
  end
  if res.timed_out or res.exit_code ~= 0 then
    return nil,
      ("exact command cancellation failed (%s): %s"):format(
        res.timed_out and "timed out" or ("exit code " .. tostring(res.exit_code)),
        (res.stderr:gsub("%s+$", ""))
      ),
      "upstream"
  end
  return true
end

return M
