--- spec.support.sshd: a real OpenSSH sshd on 127.0.0.1 for the host.ssh specs, and client keys.
-- Everything lives in a private temp dir: host keys, authorized_keys, config, pid file. sshd
-- runs in the foreground (-D -e) as a host.proc child, as the current user; its log is kept.
-- Call these inside a task (helpers.run).
local fs = require("host.fs")
local http = require("host.http")
local proc = require("host.proc")
local sys = require("host.core.sys")
local task = require("host.task")
local util = require("host.util")

local M = {
  sshd = "/usr/sbin/sshd", -- an absolute path: sshd re-executes itself
  keygen_bin = "ssh-keygen",
}

local function run(argv, what)
  local res, err = proc.run({ argv = argv, timeout = 60 })
  if not res then
    error((what or argv[1]) .. ": " .. tostring(err), 2)
  end
  if res.exit_code ~= 0 then
    error(("%s exited %s: %s"):format(what or argv[1], tostring(res.exit_code), res.stderr), 2)
  end
  return res
end

local function write(path, text, mode)
  assert(fs.write(path, text, mode or tonumber("600", 8)))
end

--- available() -> true when sshd and ssh-keygen can run here.
function M.available()
  local st = fs.stat(M.sshd)
  if not st then
    return false
  end
  local res = proc.run({ argv = { "sh", "-c", "command -v ssh-keygen" }, timeout = 10 })
  return res ~= nil and res.exit_code == 0
end

local whoami
--- user() -> the current user's name (the user sshd logs in).
function M.user()
  if not whoami then
    whoami = run({ "id", "-un" }).stdout:gsub("%s+$", "")
  end
  return whoami
end

--- keygen(dir, name, kind [, passphrase]) -> { path, private, public, kind }
-- kind: "ed25519", "ecdsa", "rsa" (OpenSSH format), "rsa-pem" (BEGIN RSA PRIVATE KEY),
-- "ecdsa-pem" (BEGIN EC PRIVATE KEY). Generated fresh; nothing is committed.
function M.keygen(dir, name, kind, passphrase)
  local pem_type = kind:match("^(%w+)%-pem$")
  local t, pem = pem_type or kind, pem_type ~= nil
  local path = dir .. "/" .. name
  local argv = { M.keygen_bin, "-q", "-t", t, "-N", passphrase or "", "-C", "spec-" .. name }
  if t == "rsa" then
    argv[#argv + 1], argv[#argv + 2] = "-b", "2048"
  end
  if pem then
    argv[#argv + 1], argv[#argv + 2] = "-m", "PEM"
  end
  argv[#argv + 1], argv[#argv + 2] = "-f", path
  run(argv, "ssh-keygen")
  return {
    path = path,
    private = assert(fs.read(path)),
    public = assert(fs.read(path .. ".pub")),
    kind = kind,
  }
end

-- An ephemeral port nobody listens on: bind one through the HTTP server and let it go.
local function free_port()
  local srv = assert(http.serve({ port = 0, handler = function() end }))
  local port = srv.port
  srv:close()
  return port
end

local Server = {}
Server.__index = Server

local HOST_KEY_TYPES = { "ed25519", "ecdsa" }

--- host_keys(dir): a fresh pair of host keys in dir (host_ed25519, host_ecdsa and their .pub),
-- for servers that must share them (start's opts.host_keys).
function M.host_keys(dir)
  for _, t in ipairs(HOST_KEY_TYPES) do
    local path = dir .. "/host_" .. t
    os.remove(path)
    os.remove(path .. ".pub")
    run({ M.keygen_bin, "-q", "-t", t, "-N", "", "-C", "spec-host", "-f", path }, "ssh-keygen")
  end
end

-- The server's host keys: copies of opts.host_keys' (a fleet whose machines share them), or
-- fresh ones (always when fresh: a rebuilt host).
local function host_keys(self, fresh)
  local from = not fresh and self.opts.host_keys
  if not from then
    return M.host_keys(self.dir)
  end
  for _, t in ipairs(HOST_KEY_TYPES) do
    for _, ext in ipairs({ "", ".pub" }) do
      local name = "/host_" .. t .. ext
      assert(fs.write(self.dir .. name, assert(fs.read(from .. name)), tonumber("600", 8)))
    end
  end
end

local function config(self)
  local lines = {
    "Port " .. self.port,
    "ListenAddress 127.0.0.1",
    "HostKey " .. self.dir .. "/host_ed25519",
    "HostKey " .. self.dir .. "/host_ecdsa",
    "AuthorizedKeysFile " .. self.dir .. "/authorized_keys",
    "PidFile " .. self.dir .. "/sshd.pid",
    "UsePAM no",
    "StrictModes no",
    "PasswordAuthentication no",
    "KbdInteractiveAuthentication no",
    "PubkeyAuthentication yes",
    "PermitRootLogin prohibit-password",
    "LogLevel VERBOSE",
    "MaxStartups 100:30:200",
    "Subsystem sftp internal-sftp",
  }
  -- Commands get a HOME of the server's own (removed with it): what they write there
  -- (ph-sandbox-helper, control dirs) never lands in the real user's home.
  local setenv = { "HOME=" .. self.home }
  if self.opts.rc ~= true then
    -- Debian's bash sources ~/.bashrc for every command run by sshd (SSH_CLIENT is set and
    -- SHLVL is below 2); a heavy one (pyenv, nvm) costs 100 ms per command and would be all
    -- the specs measure. SHLVL=1 makes bash skip it; opts.rc = true keeps the real behaviour.
    setenv[#setenv + 1] = "SHLVL=1"
  end
  lines[#lines + 1] = "SetEnv " .. table.concat(setenv, " ")
  if self.opts.allow_rsa then -- libssh2 1.10 signs RSA keys with ssh-rsa (SHA-1) only
    lines[#lines + 1] = "PubkeyAcceptedAlgorithms +ssh-rsa"
  end
  if self.opts.accept_env then
    lines[#lines + 1] = "AcceptEnv " .. self.opts.accept_env
  end
  if self.opts.max_sessions then
    lines[#lines + 1] = "MaxSessions " .. self.opts.max_sessions
  end
  for _, l in ipairs(self.opts.config or {}) do
    lines[#lines + 1] = l
  end
  write(self.dir .. "/sshd_config", table.concat(lines, "\n") .. "\n")
end

local function listening(self)
  return table.concat(self.stderr):find("Server listening on 127.0.0.1 port " .. self.port, 1, true)
end

local function launch(self)
  config(self)
  self.stderr = {}
  local argv = { M.sshd, "-D", "-e", "-f", self.dir .. "/sshd_config" }
  if fs.stat("/usr/bin/setpriv") then
    -- If the host dies without closing the server (a crash, a killed spec run), sshd gets
    -- SIGKILL too instead of lingering on its port.
    table.insert(argv, 1, "/usr/bin/setpriv")
    table.insert(argv, 2, "--pdeathsig")
    table.insert(argv, 3, "KILL")
    table.insert(argv, 4, "--")
  end
  local p = assert(proc.spawn({
    argv = argv,
    timeout = 3600,
    kill_grace = 1,
    on_stderr = function(chunk)
      self.stderr[#self.stderr + 1] = chunk
      self.log_all[#self.log_all + 1] = chunk
    end,
  }))
  self.process = p
  self.pid = p.pid
  local deadline = task.now() + 10
  while not listening(self) do
    if p:done() or task.now() > deadline then
      p:close()
      error("sshd did not start: " .. table.concat(self.stderr), 0)
    end
    task.sleep(0.01)
  end
end

--- start([opts]) -> Server on 127.0.0.1 at a free port.
-- opts: allow_rsa (PubkeyAcceptedAlgorithms +ssh-rsa), accept_env ("PH_*"), max_sessions,
-- rc (true: let bash read ~/.bashrc as usual), config (extra sshd_config lines), host_keys (a
-- directory made by host_keys(dir): its keys are this server's, as every server given it).
-- Server: host, port, user, dir, pid, home (the HOME its commands get: a private dir).
function M.start(opts)
  -- As root, sshd insists on its privilege separation directory (Debian makes it at boot).
  if M.user() == "root" and not fs.stat("/run/sshd") then
    fs.mkdir("/run/sshd", tonumber("755", 8))
  end
  local dir = assert(util.mkdtemp("ph-sshd-"))
  local self = setmetatable({
    opts = opts or {},
    dir = dir,
    host = "127.0.0.1",
    user = M.user(),
    log_all = {},
  }, Server)
  self.home = dir .. "/home"
  assert(fs.mkdir(self.home, tonumber("700", 8)))
  write(dir .. "/authorized_keys", "")
  host_keys(self)
  for attempt = 1, 5 do
    self.port = free_port()
    local ok, err = pcall(launch, self)
    if ok then
      return self
    end
    if attempt == 5 or not tostring(err):find("Address already in use", 1, true) then
      error(err, 0)
    end
  end
end

--- server:authorize(public_key_text): let that key log in.
function Server:authorize(public)
  local f = assert(io.open(self.dir .. "/authorized_keys", "ab"))
  f:write(public:gsub("%s+$", ""), "\n")
  f:close()
end

--- server:fingerprint() -> "SHA256:..." of the host key clients negotiate (ECDSA: libssh2
-- prefers it over ed25519).
function Server:fingerprint(kind)
  local res = run({ M.keygen_bin, "-l", "-f", self.dir .. "/host_" .. (kind or "ecdsa") .. ".pub" })
  return res.stdout:match("(SHA256:%S+)")
end

-- Every live descendant of pid, read from /proc (sshd forks a monitor and a session process
-- per connection, in sessions of their own: killing the listener's group misses them).
local function descendants(pid)
  local children = {}
  for _, name in ipairs(fs.list("/proc") or {}) do
    local n = tonumber(name)
    if n then
      local stat = fs.read("/proc/" .. name .. "/stat")
      local ppid = stat and tonumber(stat:match("%) %S+ (%d+)"))
      if ppid then
        children[ppid] = children[ppid] or {}
        table.insert(children[ppid], n)
      end
    end
  end
  local out, queue = {}, { pid }
  while #queue > 0 do
    local p = table.remove(queue)
    for _, c in ipairs(children[p] or {}) do
      out[#out + 1] = c
      queue[#queue + 1] = c
    end
  end
  return out
end

local function wait_gone(self, seconds)
  local ok = self.process:wait(seconds)
  return ok ~= nil
end

--- server:kill(): SIGKILL to sshd and every process it forked (the connections die at once,
-- as when a VM is powered off).
function Server:kill()
  if not self.process or self.process:done() then
    return
  end
  local pids = descendants(self.pid)
  sys.kill(self.pid, "SIGKILL")
  for _, pid in ipairs(pids) do
    sys.kill(pid, "SIGKILL")
  end
  wait_gone(self, 10)
end

--- server:kill_connections(): SIGKILL every connection's processes; the listener lives on.
function Server:kill_connections()
  for _, pid in ipairs(descendants(self.pid)) do
    sys.kill(pid, "SIGKILL") -- works on stopped processes too; never let them run first
  end
end

-- The processes whose environment has HOME=home: what commands run through this server left
-- behind once their connection went (a remote `sleep 30` whose connection was killed runs on,
-- reparented, in no tree of sshd's).
local function strays(home)
  local out, want = {}, "HOME=" .. home .. "\0"
  for _, name in ipairs(fs.list("/proc") or {}) do
    if name:find("^%d+$") then
      local env = fs.read("/proc/" .. name .. "/environ")
      if env and (env:sub(1, #want) == want or env:find("\0" .. want, 1, true)) then
        out[#out + 1] = tonumber(name)
      end
    end
  end
  return out
end

--- server:stop(): stop sshd and its connections (SIGTERM, then SIGKILL), and whatever its
-- commands left running.
function Server:stop()
  if not self.process or self.process:done() then
    return
  end
  local pids = descendants(self.pid)
  self.process:terminate()
  for _, pid in ipairs(pids) do
    sys.kill(pid, "SIGTERM")
  end
  if not wait_gone(self, 5) then
    self:kill()
  end
  for _, pid in ipairs(strays(self.home)) do
    sys.kill(pid, "SIGKILL")
  end
end

--- server:pause() / server:resume(): SIGSTOP / SIGCONT sshd and its connections. While
-- paused the kernel still completes TCP handshakes (the listen backlog) but nothing answers:
-- a stalled server (a frozen VM).
function Server:pause()
  self.paused = { self.pid }
  for _, pid in ipairs(descendants(self.pid)) do
    self.paused[#self.paused + 1] = pid
  end
  for _, pid in ipairs(self.paused) do
    sys.kill(pid, "SIGSTOP")
  end
end

function Server:resume()
  for _, pid in ipairs(self.paused or {}) do
    sys.kill(pid, "SIGCONT")
  end
  self.paused = nil
end

--- server:restart([new_host_key]): stop, then start again on the same port.
function Server:restart(new_host_key)
  self:stop()
  if new_host_key then
    host_keys(self, true)
  end
  launch(self)
end

--- server:restart_with_new_host_key(): a rebuilt host: same address, new host keys.
function Server:restart_with_new_host_key()
  self:restart(true)
end

--- server:log() -> everything sshd logged so far (all runs).
function Server:log()
  return table.concat(self.log_all)
end

--- server:count(text) -> how often text occurs in the log (e.g. "Accepted publickey").
function Server:count(text)
  local n, from, log = 0, 1, self:log()
  while true do
    local a, b = log:find(text, from, true)
    if not a then
      return n
    end
    n, from = n + 1, b + 1
  end
end

--- server:close(): stop sshd and remove its directory (idempotent).
function Server:close()
  if self.process then
    self:resume()
    self:stop()
    self.process:close()
  end
  if self.dir then
    util.remove_tree(self.dir)
    self.dir = nil
  end
end

return M
