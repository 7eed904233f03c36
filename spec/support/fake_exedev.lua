--- spec.support.fake_exedev: a fake exe.dev HTTPS API (`POST /exec`, the lobby CLI text in, JSON
-- out) whose VMs are REAL sshd processes on loopback ports (spec/support/sshd.lua), each with a
-- private HOME. Call everything inside a task (helpers.run).
--
--   local fake = require("spec.support.fake_exedev").start({ token = "exe1.test" })
--   -- point a config at fake.url with apiKey = fake.token and sshPrivateKey = fake.key.private
--   fake:stop()                                  -- stops every VM and removes every temp dir
--
-- What it speaks (providers.md 3.1, exe.dev's docs):
--   * POST only (405 otherwise), path /exec (404 otherwise), `Authorization: Bearer <token>`
--     (401), a body of at most 64 KiB (413), the body parsed with a shell lexer like the lobby.
--   * `new --json --no-email --name=N [--image= --command= --cpu= --memory= --disk= --comment=
--     --env=K=V... --integration=... --tag=... --setup-script= --prompt=]`: a VM record;
--     `cp SRC DST --json [--cpu= --memory= --disk=]`: a copy (its HOME copied too);
--     `ls --json [NAME]`: {"vms": [records]}; `rm --json NAME...`: stops the VMs' sshd.
--     Flags are --flag=value or --flag value.
--   * A command that fails answers 200 with {"error": "..."} (bad or taken names, names ending
--     in -<digits>, unknown VMs, unknown flags): exe.dev's JSON output of a failed command.
--   * opts.cmds (a list) plays a token whose permissions list commands: others get 403.
-- A VM record: {vm_name, ssh_dest = "127.0.0.1", ssh_port, https_url, status = "running",
-- region, region_display, image, cpu, memory, disk}. ssh_port is the VM's sshd port: the
-- provider honours a port in the record (real records have none).
--
-- The fake's fields: url (…/exec), token, key (the client key every VM authorizes: {private,
-- public, path}), vms (name -> vm), requests (every request: {method, path, headers, body,
-- argv, status, fault, at}), vm_options (sshd options for the VMs created from now on, plus
-- onboarding = true: the VM answers every command with exe.dev's registration prompt and exit 1).
-- A vm: {name, server (the sshd: pause, kill, restart...), home, dir, record, argv, flags
-- (name -> values), setup_script}.
-- Methods: fail(fault), create_vm(name, opts), vm(name), running(), count(cmd), commands(),
-- stop().
local fs = require("host.fs")
local helpers = require("spec.helpers")
local http = require("host.http")
local json = require("host.json")
local lost_answer = require("spec.support.lost_answer")
local proc = require("host.proc")
local sshd = require("spec.support.sshd")
local take_fault = require("spec.support.take_fault")
local task = require("host.task")
local util = require("host.util")

local M = {}

M.MAX_BODY = 64 * 1024

local VALUE_FLAGS = {
  new = { name = 1, image = 1, command = 1, cpu = 1, memory = 1, disk = 1, comment = 1,
    env = "many", integration = "many", tag = "many", ["setup-script"] = 1, prompt = 1 },
  cp = { cpu = 1, memory = 1, disk = 1 },
  ls = {},
  rm = {},
}
local BOOL_FLAGS = { json = true, ["no-email"] = true, l = true }

--- lex(text) -> argv | nil, error: the lobby's shell lexer (quotes, backslashes, no
-- expansion).
function M.lex(text)
  local argv, cur, have, i, n = {}, {}, false, 1, #text
  while i <= n do
    local c = text:sub(i, i)
    if c == "'" then
      local j = text:find("'", i + 1, true)
      if not j then
        return nil, "unterminated single quote"
      end
      cur[#cur + 1], have, i = text:sub(i + 1, j - 1), true, j + 1
    elseif c == '"' then
      i, have = i + 1, true
      while true do
        if i > n then
          return nil, "unterminated double quote"
        end
        local d = text:sub(i, i)
        if d == '"' then
          i = i + 1
          break
        elseif d == "\\" and text:sub(i + 1, i + 1):find('^["\\$`]') then
          cur[#cur + 1], i = text:sub(i + 1, i + 1), i + 2
        else
          cur[#cur + 1], i = d, i + 1
        end
      end
    elseif c == "\\" then
      if i < n then
        cur[#cur + 1] = text:sub(i + 1, i + 1)
      end
      have, i = true, i + 2
    elseif c:find("%s") then
      if have then
        argv[#argv + 1], cur, have = table.concat(cur), {}, false
      end
      i = i + 1
    else
      cur[#cur + 1], have, i = c, true, i + 1
    end
  end
  if have then
    argv[#argv + 1] = table.concat(cur)
  end
  return argv
end

-- argv -> command, flags (name -> list of values), positional | nil, error
local function parse(argv)
  local cmd = argv[1]
  local spec = VALUE_FLAGS[cmd or ""]
  if not spec then
    return nil, ("unknown command %q"):format(tostring(cmd))
  end
  local flags, positional, i = {}, {}, 2
  while i <= #argv do
    local a = argv[i]
    local name, value = a:match("^%-%-?([%w-]+)=(.*)$")
    if not name then
      name = a:match("^%-%-?([%w-]+)$")
    end
    if name then
      if BOOL_FLAGS[name] and value == nil then
        flags[name] = { "true" }
      elseif spec[name] then
        if value == nil then
          i = i + 1
          value = argv[i]
          if value == nil then
            return nil, ("flag --%s needs a value"):format(name)
          end
        end
        flags[name] = flags[name] or {}
        if spec[name] ~= "many" and #flags[name] > 0 then
          return nil, ("flag --%s given twice"):format(name)
        end
        table.insert(flags[name], value)
      else
        return nil, ("%s: unknown flag %s"):format(cmd, a)
      end
    else
      positional[#positional + 1] = a
    end
    i = i + 1
  end
  return cmd, flags, positional
end

local function one(flags, name)
  return flags[name] and flags[name][1] or nil
end

-- exe.dev's VM names: lowercase letters, digits and dashes, starting with a letter, at most
-- 63 characters, never ending in -<digits>.
local function name_error(name)
  if not name:find("^[a-z][a-z0-9-]*$") or #name > 63 or name:find("%-$") then
    return ("invalid VM name %q"):format(name)
  elseif name:find("%-%d+$") then
    return ("invalid VM name %q: names cannot end with a dash and digits"):format(name)
  end
end

local Fake = {}
Fake.__index = Fake

local function json_reply(status, value)
  return status, { ["content-type"] = "application/json" }, assert(json.encode(value))
end

local function failed(message)
  return json_reply(200, { error = message })
end

local function record(vm)
  return {
    vm_name = vm.name,
    ssh_dest = "127.0.0.1",
    ssh_port = vm.server.port,
    https_url = "https://" .. vm.name .. ".exe.xyz",
    status = "running",
    region = "lax",
    region_display = "Los Angeles",
    image = vm.image or "exeuntu",
    cpu = tonumber(vm.cpu) or 2,
    memory = vm.memory or "8GB",
    disk = vm.disk or "20GB",
  }
end

--- fake:create_vm(name [, opts]) -> vm: a running VM (opts: home_files = {name = text},
-- onboarding, sshd options). Used by `new` and `cp`, and by specs to seed a source VM.
function Fake:create_vm(name, opts)
  opts = opts or {}
  local vm_opts = helpers.merged(self.vm_options, opts)
  local dir = assert(util.mkdtemp("ph-exedev-vm-"))
  local home = dir .. "/home"
  assert(fs.mkdir(home, tonumber("755", 8)))
  for file, text in pairs(vm_opts.home_files or {}) do
    assert(fs.write(home .. "/" .. file, text))
  end
  local lines = {}
  for _, l in ipairs(vm_opts.config or {}) do
    lines[#lines + 1] = l
  end
  if vm_opts.onboarding then
    lines[#lines + 1] = "ForceCommand printf '%s\\n' 'Please complete registration by running: "
      .. "ssh exe.dev'; exit 1"
  else -- the VM's own HOME: sshd would use the real user's
    lines[#lines + 1] = "ForceCommand cd " .. home .. " && HOME=" .. home
      .. ' exec "$SHELL" -c "$SSH_ORIGINAL_COMMAND"'
  end
  local server = sshd.start({ config = lines, max_sessions = vm_opts.max_sessions,
    host_keys = self.tmp.path })
  server:authorize(self.key.public)
  for _, pub in ipairs(self.authorized or {}) do
    server:authorize(pub)
  end
  local vm = { name = name, server = server, dir = dir, home = home, flags = {} }
  self.vms[name] = vm
  self.created[#self.created + 1] = vm
  return vm
end

local function stop_vm(vm)
  vm.server:close()
  util.remove_tree(vm.dir)
  vm.stopped = true
end

function Fake:cmd_new(flags, argv)
  local name = one(flags, "name") or ("vm-" .. util.hex(assert(util.random(3))) .. "x")
  local err = name_error(name)
  if err then
    return failed(err)
  elseif self.vms[name] then
    return failed(("VM name %q is already taken"):format(name))
  end
  local vm = self:create_vm(name)
  vm.argv, vm.flags = argv, flags
  vm.image, vm.cpu = one(flags, "image"), one(flags, "cpu")
  vm.memory, vm.disk = one(flags, "memory"), one(flags, "disk")
  vm.setup_script = one(flags, "setup-script")
  return json_reply(200, record(vm))
end

function Fake:cmd_cp(flags, argv, positional)
  local src, dst = positional[1], positional[2]
  if not src or not dst or positional[3] then
    return failed("usage: cp SOURCE NEW-NAME [--cpu=N] [--memory=SIZE] [--disk=SIZE]")
  end
  local source = self.vms[src]
  if not source then
    return failed(("VM %q not found"):format(src))
  end
  local err = name_error(dst)
  if err then
    return failed(err)
  elseif self.vms[dst] then
    return failed(("VM name %q is already taken"):format(dst))
  end
  local vm = self:create_vm(dst)
  assert(proc.run({ argv = { "cp", "-a", source.home .. "/.", vm.home }, timeout = 30 }))
  vm.argv, vm.flags, vm.source = argv, flags, src
  vm.image, vm.setup_script = source.image, nil
  vm.cpu = one(flags, "cpu") or source.cpu
  vm.memory, vm.disk = one(flags, "memory") or source.memory, one(flags, "disk") or source.disk
  return json_reply(200, record(vm))
end

function Fake:cmd_ls(_flags, _argv, positional)
  local vms = json.array()
  local names = {}
  for name in pairs(self.vms) do
    names[#names + 1] = name
  end
  table.sort(names)
  for _, name in ipairs(names) do
    if not positional[1] or positional[1] == name then
      vms[#vms + 1] = record(self.vms[name])
    end
  end
  return json_reply(200, { vms = vms })
end

function Fake:cmd_rm(_flags, _argv, positional)
  if #positional == 0 then
    return failed("usage: rm NAME...")
  end
  for _, name in ipairs(positional) do
    if not self.vms[name] then
      return failed(("VM %q not found"):format(name))
    end
  end
  for _, name in ipairs(positional) do
    stop_vm(self.vms[name])
    self.vms[name] = nil
  end
  return json_reply(200, { deleted = json.array(positional) })
end

-- The next fault for a request running cmd, consumed.
local function next_fault(self, cmd)
  local function applies(f)
    return f.command == nil or f.command == cmd
  end
  return take_fault.take(self, applies)
end

local function handle(self, req, res)
  local entry = { method = req.method, path = req.path, headers = req.headers, body = req.body,
    at = task.now() }
  self.requests[#self.requests + 1] = entry
  local function reply(status, headers, body)
    entry.status = status
    return status, headers, body
  end
  if req.path ~= "/exec" then
    return reply(json_reply(404, { error = "not found" }))
  elseif req.method ~= "POST" then
    entry.status = 405
    return 405, { allow = "POST", ["content-type"] = "application/json" },
      json.encode({ error = "method not allowed" })
  elseif req.headers.authorization ~= "Bearer " .. self.token then
    return reply(json_reply(401, { error = "unauthorized" }))
  end
  local argv, lex_err = M.lex(req.body or "")
  entry.argv = argv
  local fault = next_fault(self, argv and argv[1])
  if fault and not fault.after then
    entry.fault = fault
    if fault.delay then
      task.sleep(fault.delay)
    end
    if fault.stall then
      task.sleep(3600) -- until the client gives up or the fake stops
      return reply(json_reply(504, { error = "stalled" }))
    elseif fault.drop then
      entry.status = "dropped"
      res:start(200, { ["content-length"] = "1000", ["content-type"] = "application/json" })
      res:write("{")
      res:abort()
    elseif fault.error then
      return reply(failed(fault.error))
    elseif fault.status then
      return reply(fault.status, { ["content-type"] = fault.content_type or "text/plain" },
        fault.body or "")
    end
  end
  if not argv then
    return reply(failed("cannot parse command: " .. lex_err))
  end
  if self.cmds and argv[1] then
    local allowed = false
    for _, c in ipairs(self.cmds) do
      allowed = allowed or c == argv[1]
    end
    if not allowed then
      return reply(json_reply(403, { error = ("token does not permit %q"):format(argv[1]) }))
    end
  end
  local cmd, flags, positional = parse(argv)
  if not cmd then
    return reply(failed(flags))
  end
  local status, headers, body = self["cmd_" .. cmd](self, flags, argv, positional)
  if fault then -- an `after` fault: the command ran, and its answer is lost, cut or replaced
    entry.fault = fault
    lost_answer(res, fault, entry, status, headers, body)
    return reply(fault.status or 502, { ["content-type"] = "text/plain" },
      fault.body or "upstream connect error or disconnect/reset before headers")
  end
  return reply(status, headers, body)
end

--- start([opts]) -> Fake. opts: token (default "exe1.fake-token"), cmds (the token's allowed
-- commands; nil: all), key (a client key from sshd.keygen; default: a fresh ed25519 key),
-- authorized (more public keys every VM accepts), vm_options.
function M.start(opts)
  opts = opts or {}
  local self = setmetatable({
    token = opts.token or "exe1.fake-token",
    cmds = opts.cmds,
    vms = {},
    created = {},
    requests = {},
    faults = {},
    authorized = opts.authorized,
    vm_options = opts.vm_options or {},
  }, Fake)
  self.tmp = helpers.tempdir("ph-exedev-") -- the client key's, the VMs' host keys
  self.key = opts.key or sshd.keygen(self.tmp.path, "id_client", "ed25519")
  -- one pair of host keys for every VM: a port one VM freed may come back to the next, and an
  -- account's known_hosts remembers a port's key (a rebuilt VM gets new ones: faults_spec)
  sshd.host_keys(self.tmp.path)
  self.server = assert(http.serve({
    host = "127.0.0.1",
    port = 0,
    max_body = M.MAX_BODY,
    handler = function(req, res)
      return handle(self, req, res)
    end,
  }))
  self.url = self.server.url .. "/exec"
  self.base_url = self.server.url
  return self
end

--- fake:fail(fault): the next request (or the next `fault.command` one) gets the fault, for
-- fault.times requests (default 1; math.huge: all). fault: status + body (+ content_type),
-- error (200 with {"error": ...}), delay (seconds before answering normally or faulting), stall
-- (never answer), drop (cut the connection mid-answer). With after = true the command RUNS
-- first (a VM is made, or removed) and then its answer is lost: drop (the connection closes
-- before any byte of it), cut (half the body, then the connection closes) or status (that
-- status instead, 502 by default: a proxy that lost the answer).
function Fake:fail(fault)
  self.faults[#self.faults + 1] = fault
end

--- fake:chaos([spec]): seeded faults on a share of the requests (spec.support.take_fault).
Fake.chaos = take_fault.chaos

--- fake:vm(name) -> the running vm or nil.
function Fake:vm(name)
  return self.vms[name]
end

--- fake:running() -> sorted names of the VMs still running.
function Fake:running()
  return helpers.sorted_keys(self.vms)
end

--- fake:commands() -> the request bodies, in order (authenticated POSTs to /exec only).
function Fake:commands()
  local out = {}
  for _, r in ipairs(self.requests) do
    if r.method == "POST" and r.path == "/exec" and r.status ~= 401 then
      out[#out + 1] = r.body
    end
  end
  return out
end

--- fake:count(cmd) -> how many requests ran that command (first word).
function Fake:count(cmd)
  local n = 0
  for _, r in ipairs(self.requests) do
    if r.argv and r.argv[1] == cmd then
      n = n + 1
    end
  end
  return n
end

------------------------------------------------------------------------------------------------
-- The harness the exe-dev and ssh provider specs share

local function restore(t, saved)
  for k in pairs(t) do
    t[k] = nil
  end
  for k, v in pairs(saved) do
    t[k] = v
  end
end

--- harness([opts]) -> h. h.run(fn) runs fn(h) as a spec (a task, bounded by helpers.deadline)
-- with: h.fake (a fresh fake exe.dev, started with opts.fake), h.dir (a private temp dir, also
-- the account's home as host.remote sees it: h.dir/.ssh/known_hosts is where host keys are
-- recorded and checked, and h.dir/.ssh holds the default identities, if a spec puts any),
-- h.env (what the provider reads as the environment, empty), h.logs (every log line as
-- "level: message"). Afterwards every pooled SSH session is closed, the fake and its VMs
-- stopped, the settings restored and h.dir removed. opts.ssh: the spec
-- needs a real sshd; without one it FAILS with a clear message (it never passes silently).
function M.harness(opts)
  opts = opts or {}
  local log = require("host.log")
  local remote = require("host.remote")
  local ssh = require("host.ssh")
  local luassert = require("luassert")
  local h = {}

  function h.run(fn)
    helpers.run(function()
      if opts.ssh and not sshd.available() then
        error("this spec needs a real sshd (" .. sshd.sshd .. " and ssh-keygen): install "
          .. "openssh-server, as .ci/run does", 0)
      end
      local api = require("providers.exe-dev.api")
      -- copies of the settings, put back afterwards
      local saved_api, saved_remote = helpers.merged(api.settings),
        helpers.merged(remote.settings)
      h.dir = assert(util.mkdtemp("ph-exedev-spec-"))
      -- h.dir plays the account's home: its .ssh/known_hosts, never the real one; no agent
      remote.settings.account = { name = sshd.user(), home = h.dir }
      remote.settings.agent = false
      remote.settings.known_hosts_dir = h.dir
      h.env = {}
      api.settings.getenv = function(name)
        return h.env[name]
      end
      h.logs = {}
      log.set_sink(function(level, message)
        h.logs[#h.logs + 1] = level .. ": " .. message
      end)
      h.fake = M.start(opts.fake)
      helpers.with_cleanup(fn, function()
        log.set_sink(nil)
        ssh.close_all()
        h.fake:stop()
        restore(api.settings, saved_api)
        restore(remote.settings, saved_remote)
        util.remove_tree(h.dir)
      end, h)
    end)
  end

  --- h.config(extra) -> an exe-dev config for the fake (API key, URL, the VMs' client key).
  function h.config(extra)
    return helpers.merged({ apiKey = h.fake.token, apiUrl = h.fake.base_url,
      sshPrivateKey = h.fake.key.private, timeoutMs = 30000 }, extra)
  end

  --- h.session([opts]) -> a client session on the exe-dev provider (host.client).
  function h.session(sopts)
    return require("host.client").session({ (require("providers.exe-dev")) }, sopts)
  end

  --- h.validate(config) -> environmentValidateConfig's answer for config (a new session).
  function h.validate(config)
    return h.session():call("environmentValidateConfig", { config = config })
  end

  --- h.acquire_params(cfg [, extra]) -> environmentAcquireLease's params as upstream's tests
  -- give them (environmentId env-1, runId run-1: VM paperclip-env1-run1), plus extra's fields.
  function h.acquire_params(cfg, extra)
    return helpers.merged({ config = cfg, environmentId = "env-1", runId = "run-1" }, extra)
  end

  --- h.acquire([cfg [, extra [, s]]]) -> environmentAcquireLease's answer for
  -- h.acquire_params(cfg (default h.config()), extra), on session s (default: a new one).
  function h.acquire(cfg, extra, s)
    return (s or h.session()):call("environmentAcquireLease",
      h.acquire_params(cfg or h.config(), extra))
  end

  --- h.execute(vm, params [, s]) -> environmentExecute's answer for params (command, args...)
  -- on vm, with config h.config() and lease h.lease(vm) unless params gives them, on session s
  -- (default: a new one).
  function h.execute(vm, params, s)
    return (s or h.session()):call("environmentExecute",
      helpers.merged({ config = h.config(), lease = h.lease(vm) }, params))
  end

  --- h.failed(ok, err) -> err.message: asserts that a call answered an error, not a result.
  function h.failed(ok, err)
    luassert.is_nil(ok)
    luassert.is_table(err, "no error reply: " .. tostring(err))
    return err.message
  end

  --- h.lease(vm [, meta]) -> {providerLeaseId, metadata} for a VM of the fake.
  function h.lease(vm, meta)
    return { providerLeaseId = vm.name,
      metadata = helpers.merged({ sshDest = "127.0.0.1", vmSshPort = vm.server.port }, meta) }
  end

  --- h.logged(text) -> true when some log line contains text.
  function h.logged(text)
    for _, l in ipairs(h.logs) do
      if l:find(text, 1, true) then
        return true
      end
    end
    return false
  end

  --- h.eventually(pred, what [, seconds]): spec.helpers' eventually, for the specs' use.
  h.eventually = helpers.eventually

  return h
end

--- fake:stop(): stop the API, every VM's sshd (those rm'd too) and remove every temp dir.
function Fake:stop()
  if self.server then
    self.server:close()
    self.server = nil
  end
  for _, vm in ipairs(self.created) do
    if not vm.stopped then
      stop_vm(vm)
    end
  end
  self.vms = {}
  self.tmp:remove()
end

return M
