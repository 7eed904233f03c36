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
-- own, in a private control dir (mode 0700) that holds "group:<pgid>". A timeout, a cancel, or
-- a lost connection runs a second command on the pooled session that TERMs the group, waits,
-- then KILLs it. The control dir is named from the lease (scope) and the executionId, so a
-- restarted worker can still cancel an execution it never saw. A background child that keeps
-- stdout open delays the answer by at most 0.5 s after the command exits (host.proc's linger),
-- not until the child ends.
-- The runner is ph-sandbox-helper's `exec` (bridge/exec.c: one process), uploaded once per
-- machine into ~/.paperclip/bin under a name taken from its sha256 (install_helper), or, where
-- it cannot run (another architecture, a noexec home), a POSIX sh wrapper that does the same
-- with about ten processes (mkdir, two FIFOs and their `cat` relays, setsid, sh).
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
  local name
  if execution_id then
    name = util.sha256_hex(tostring(scope or "") .. "\0" .. execution_id):sub(1, 32)
  else
    name = util.hex(assert(util.random(16)))
  end
  return (base and quote(base) or DEFAULT_CONTROL) .. "/" .. name
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

-- The lines both install scripts start with: where the helper goes, paperclip_verify FILE
-- (its content is ours: sha256sum when the machine has it, else the size) and
-- paperclip_report, which runs `--version` and prints "present\n<path>\n<version>" or
-- "broken\n<path>\n<what it said>" (another architecture, a noexec mount), then exits 0.
local function helper_prelude(name, sha, size)
  return {
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
end

-- Is the helper there (and ours)? A file with other content is removed: "missing" then.
local function helper_check_script(name, sha, size)
  local lines = helper_prelude(name, sha, size)
  for _, l in ipairs({
    'if [ -f "$paperclip_p" ] && paperclip_verify "$paperclip_p"; then',
    '  [ -x "$paperclip_p" ] || chmod 755 "$paperclip_p" 2>/dev/null',
    "  paperclip_report",
    "fi",
    'rm -f "$paperclip_p" 2>/dev/null',
    "printf 'missing\\n%s\\n' \"$paperclip_p\"",
  }) do
    lines[#lines + 1] = l
  end
  return table.concat(lines, "\n")
end

-- The helper's bytes come on stdin: written to a temp name, checked, made 0755, renamed into
-- place (a concurrent install or a reader never sees half a file), then run once.
local function helper_install_script(name, sha, size)
  local lines = helper_prelude(name, sha, size)
  for _, l in ipairs({
    'paperclip_t="$paperclip_p.$$.tmp"',
    'mkdir -p "$paperclip_d" || exit 3',
    'if ! cat > "$paperclip_t"; then rm -f "$paperclip_t"; exit 3; fi',
    'if ! paperclip_verify "$paperclip_t"; then',
    '  rm -f "$paperclip_t"; echo "the upload arrived damaged (sha256 mismatch)" >&2; exit 4',
    "fi",
    'if ! { chmod 755 "$paperclip_t" && mv -f "$paperclip_t" "$paperclip_p"; }; then',
    '  rm -f "$paperclip_t"; exit 3',
    "fi",
    "paperclip_report",
  }) do
    lines[#lines + 1] = l
  end
  return table.concat(lines, "\n")
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
M.RUNNERS = { helper = "ph-sandbox-helper", wrapper = "sh-wrapper" }

--- runner(t, scope) -> M.RUNNERS word | nil, message, code: installs the helper for that lease
-- (install_helper) and says which runner its commands will use; nil only for a transport
-- failure.
function M.runner(t, scope)
  local path, err, code = M.install_helper(t, { scope = scope })
  if path then
    return M.RUNNERS.helper
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
  if opts.helper == false or not M.settings.sandbox_helper then
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

--- execute(ctx, t, params, opts) -> environmentExecute result | nil, message, code
-- params: the request's (command, args, env, stdin, cwd, timeoutMs, executionId). opts:
--   cwd          the working directory when params.cwd is absent (nil: the login directory)
--   home         HOME for the command (nil: the login user's $HOME)
--   scope        names the control dir with the executionId: the lease id
--   control_base the remote directory holding control dirs (nil: $HOME/.paperclip-executions)
--   timeout_ms   the default timeout (nil: ctx.config.timeoutMs)
--   metadata     the result's metadata
--   helper       ph-sandbox-helper's remote path, or false for the shell wrapper; nil:
--                install_helper(t, {scope = scope}) decides (kept per lease: free after once)
-- A transport failure (cannot connect, key refused, connection lost) gives host.ssh's nil,
-- message, code for the provider to word. Registers ctx.execution.cancel when the request has
-- an executionId (a cancel that comes while the helper is being installed leaves the
-- "cancelled" marker: the command then never starts).
function M.execute(ctx, t, params, opts)
  opts = opts or {}
  local p = execute_params(ctx, params, opts)
  local helper, herr, hcode = helper_for(t, opts)
  if herr then
    return nil, herr, hcode
  end
  local exec_id = params.executionId
  local ctl = M.control_dir(opts.control_base, opts.scope, exec_id)
  if ctx.execution then
    ctx.execution.cancel = function()
      local res, cerr = M.run(t, M.cancel_script(ctl, M.settings.cancel_grace),
        { timeout = M.settings.cancel_timeout })
      if not res then
        error("could not cancel the command: " .. tostring(cerr), 0)
      end
      return true
    end
  end
  -- nothing yields between registering the cancel and starting the command: a cancel that
  -- comes before the runner runs leaves the "cancelled" marker, and the runner exits 130
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
  local stdout, stderr = ctx:output(res.stdout), ctx:output(res.stderr)
  local out = {
    exitCode = res.exit_code or json.null,
    signal = res.signal and ("SIG" .. res.signal) or json.null,
    timedOut = false,
    stdout = stdout,
    stderr = stderr,
    metadata = opts.metadata,
  }
  if res.timed_out then
    reap(t, ctl, M.settings.reap_wait)
    out.exitCode, out.signal, out.timedOut = json.null, json.null, true
    out.stderr = with_message(stderr, ("Command timed out after %dms"):format(p.timeout_ms))
  end
  if res.truncated then
    local meta = {}
    for k, v in pairs(opts.metadata or {}) do
      meta[k] = v
    end
    meta.truncated = true
    out.metadata = meta
  end
  return out
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
-- close_stdin(), wait([timeout]) -> {exit_code, signal}, close(). Closing ends the channel:
-- sshd closes the command's stdin and output (the relay exits at its stdin's end).
function M.duplex(t, params, opts)
  opts = opts or {}
  local p = { command = params.command, args = params.args or {}, env = params.env or {},
    cwd = params.cwd or opts.cwd }
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
  local ok
  ok, err, code = ch:write(shell.stdin_env(env_block))
  if not ok then
    ch:close()
    return nil, err, code
  end
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
