-- spec/providers/exe-dev/account_spec.lua: the worker as Paperclip starts it (only PATH and
-- PAPERCLIP_* in its environment: no HOME, USER or SSH_AUTH_SOCK) finds its SSH identity,
-- user and known_hosts the way `ssh` does, from the password database. The account is a
-- temporary one: the worker runs in a user and mount namespace (`unshare -Urm`) whose
-- /etc/passwd is bind-mounted from the spec's temp dir, so getpwuid() answers with a temp home.
local fake_exedev = require("spec.support.fake_exedev")
local fs = require("host.fs")
local helpers = require("spec.helpers")
local json = require("host.json")
local proc = require("host.proc")
local sshd = require("spec.support.sshd")
local worker_process = require("spec.support.worker_process")

local MODE_600, MODE_700 = tonumber("600", 8), tonumber("700", 8)

-- The worker in a namespace where uid 0 is `name` with home `home` in the password database.
local function start_worker(dir, name, home, extra_env)
  local passwd = dir .. "/passwd-" .. name
  assert(fs.write(passwd, ("%s:x:0:0:spec account:%s:/bin/sh\n"):format(name, home)))
  local env = helpers.merged({ PATH = os.getenv("PATH"), PAPERCLIP_PLUGIN_ID = "spec-plugin" },
    extra_env)
  local w = worker_process.start({ "-Urm", "sh", "-c",
    'mount --bind "$1" /etc/passwd && shift && exec "$@"', "sh", passwd, helpers.binary(),
    "worker", "--provider", "exe-dev" }, { binary = "unshare", env = env })
  assert(w:initialize())
  return w
end

local function call(w, id, method, params)
  w:request(id, method, params, { paperclipInvocation = { id = "inv-" .. id,
    scope = { companyId = "c1" } } })
  local msg = assert(w:reply_to(id, 60))
  return msg.result, msg.error
end

local function stop(w)
  w:close_stdin()
  assert.equal(0, assert(w:wait(10)).exit_code)
end

describe("providers.exe-dev in Paperclip's environment #ssh", function()
  local h = fake_exedev.harness({ ssh = true })

  local function namespaces_work()
    local res = proc.run({ argv = { "unshare", "-Urm", "true" }, timeout = 10 })
    if not (res and res.exit_code == 0) then
      error("this spec needs user and mount namespaces (unshare -Urm): "
        .. tostring(res and res.stderr), 0)
    end
  end

  it("uses ~/.ssh of the password database's account, its user name and known_hosts", function()
    h.run(function()
      namespaces_work()
      local home = h.dir .. "/account"
      assert(fs.mkdir(home, MODE_700))
      assert(fs.mkdir(home .. "/.ssh", MODE_700))
      assert(fs.write(home .. "/.ssh/id_ed25519", h.fake.key.private, MODE_600))
      local cfg = { apiKey = h.fake.token, apiUrl = h.fake.base_url, timeoutMs = 30000 }

      -- the user name comes from the password database, never a guessed one: sshd sees it
      local w = start_worker(h.dir, "paperclip-spec-nobody", home)
      local res, err = call(w, 1, "environmentAcquireLease", { driverKey = "exe-dev",
        companyId = "c1", environmentId = "env-1", runId = "run-1", config = cfg })
      assert.is_nil(res)
      assert.matches("refused the key", err.message)
      local vm = h.fake:vm("paperclip-env1-run1")
      assert.is_nil(vm) -- the failed acquire deleted it
      assert.truthy(h.fake.created[1].server:log():find("Invalid user paperclip-spec-nobody", 1,
        true))
      stop(w)

      -- as the account sshd knows: the key in ~/.ssh, the host recorded in ~/.ssh/known_hosts
      w = start_worker(h.dir, sshd.user(), home)
      local lease = assert(call(w, 2, "environmentAcquireLease", { driverKey = "exe-dev",
        companyId = "c1", environmentId = "env-1", runId = "run-2", config = cfg }))
      vm = assert(h.fake:vm(lease.providerLeaseId))
      local known = assert(fs.read(home .. "/.ssh/known_hosts"))
      assert.truthy(known:find(("[127.0.0.1]:%d "):format(vm.server.port), 1, true))
      local lp = { providerLeaseId = lease.providerLeaseId, metadata = lease.metadata }
      local r = assert(call(w, 3, "environmentExecute", { driverKey = "exe-dev", companyId = "c1",
        environmentId = "env-1", config = cfg, lease = lp, command = "echo",
        args = { "hello" } }))
      assert.equal("hello\n", r.stdout)

      -- strictHostKeyChecking=yes reads the same file: a recorded VM passes, a new one not
      local strict = { apiKey = cfg.apiKey, apiUrl = cfg.apiUrl, timeoutMs = 30000,
        strictHostKeyChecking = "yes" }
      r = assert(call(w, 4, "environmentExecute", { driverKey = "exe-dev", companyId = "c1",
        environmentId = "env-1", config = strict, lease = lp, command = "true" }))
      assert.equal(0, r.exitCode)
      local stranger = h.fake:create_vm("vm-unknown")
      res, err = call(w, 5, "environmentExecute", { driverKey = "exe-dev", companyId = "c1",
        environmentId = "env-1", config = strict, lease = h.lease(stranger), command = "true" })
      assert.is_nil(res)
      assert.truthy(err.message:find(home .. "/.ssh/known_hosts", 1, true))

      res, err = call(w, 6, "environmentReleaseLease", { driverKey = "exe-dev",
        companyId = "c1", environmentId = "env-1", config = cfg,
        providerLeaseId = lease.providerLeaseId, leaseMetadata = lease.metadata })
      assert.is_nil(err)
      assert.equal(json.null, res)
      assert.is_nil(h.fake:vm(lease.providerLeaseId))
      stop(w)
    end)
  end)

  it("offers the ssh-agent's keys when SSH_AUTH_SOCK is set", function()
    h.run(function()
      namespaces_work()
      local home = h.dir .. "/empty-account" -- no ~/.ssh at all: only the agent can help
      assert(fs.mkdir(home, MODE_700))
      local sock = h.dir .. "/agent.sock"
      local agent = assert(proc.spawn({ argv = { "ssh-agent", "-D", "-a", sock }, timeout = 120 }))
      local ok, err = pcall(function()
        h.eventually(function()
          return fs.stat(sock) ~= nil
        end, "the agent's socket", 10)
        local added = assert(proc.run({ argv = { "ssh-add", h.fake.key.path }, timeout = 10,
          env = { PATH = os.getenv("PATH"), SSH_AUTH_SOCK = sock } }))
        assert.equal(0, added.exit_code)
        local cfg = { apiKey = h.fake.token, apiUrl = h.fake.base_url, timeoutMs = 30000 }
        local w = start_worker(h.dir, sshd.user(), home, { SSH_AUTH_SOCK = sock })
        local lease = assert(call(w, 1, "environmentAcquireLease", { driverKey = "exe-dev",
          companyId = "c1", environmentId = "env-1", runId = "run-1", config = cfg }))
        assert.equal(MODE_700, fs.stat(home .. "/.ssh").mode) -- made for known_hosts, as ssh
        assert(call(w, 2, "environmentDestroyLease", { driverKey = "exe-dev", companyId = "c1",
          environmentId = "env-1", config = cfg, providerLeaseId = lease.providerLeaseId }))
        stop(w)

        -- without the agent and without keys: the error says what was tried
        w = start_worker(h.dir, sshd.user(), home)
        local res, cerr = call(w, 3, "environmentAcquireLease", { driverKey = "exe-dev",
          companyId = "c1", environmentId = "env-1", runId = "run-2", config = cfg })
        assert.is_nil(res)
        assert.truthy(cerr.message:find("SSH_AUTH_SOCK is not set", 1, true))
        assert.truthy(cerr.message:find(home .. "/.ssh/id_ed25519: missing", 1, true))
        stop(w)
      end)
      agent:kill("SIGTERM")
      agent:wait(10)
      assert(ok, err)
      assert.same({}, h.fake:running())
    end)
  end)
end)
