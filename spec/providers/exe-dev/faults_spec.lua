-- spec/providers/exe-dev/faults_spec.lua: what goes wrong with a real exe.dev and its VMs (an
-- sshd killed mid-command, a wrong key, a changed host key, a server that stalls, a VM that
-- vanishes, API faults) gives a clear error within a deadline, never a hang; and no secret
-- ever reaches an error, a log line or lease metadata.
local api = require("providers.exe-dev.api")
local fake_exedev = require("spec.support.fake_exedev")
local json = require("host.json")
local remote = require("host.remote")
local sshd = require("spec.support.sshd")
local task = require("host.task")

local null = json.null


-- What an SSH failure noticed late would wait for: connecting and authenticating (15 s). The
-- specs below assert order against it, never an absolute time.
local CONNECT_TIMEOUT = remote.settings.connect_timeout

local helpers = require("spec.helpers")
local timed = helpers.timed

describe("providers.exe-dev faults #ssh", function()
  local h = fake_exedev.harness({ ssh = true })

  -- start_long(vm [, extra]) -> a task running "echo started; sleep 60" on vm (environmentExecute
  -- plus extra params), returned once "started" came back: the command runs.
  local function start_long(vm, extra)
    local started = false
    local s = h.session({ on_log = function()
      started = true
    end })
    local params = helpers.merged({ command = "sh", args = { "-c", "echo started; sleep 60" } },
      extra)
    local t = task.spawn(function()
      return h.execute(vm, params, s)
    end)
    h.eventually(function()
      return started
    end, "the command started", 10)
    return t
  end

  describe("SSH", function()
    it("sshd killed mid-command: a clear error within seconds", function()
      h.run(function()
        local vm = h.fake:create_vm("vm-1")
        local t = start_long(vm)
        vm.server:kill()
        -- the error comes from the kill: at most half way through the command's own 60 s
        local ok, err = t:wait(30)
        assert.is_nil(ok)
        assert.is_table(err, "no error in time: " .. tostring(err))
        assert.matches("^Failed to execute commands on exe.dev VM vm%-1: ", err.message)
      end)
    end)

    it("a key the VM does not accept: the acquire fails clearly and deletes the VM", function()
      h.run(function()
        local stranger = sshd.keygen(h.dir, "id_stranger", "ed25519")
        local secs, ok, err = timed(h.acquire, h.config({ sshPrivateKey = stranger.private }))
        assert.is_true(secs < CONNECT_TIMEOUT, secs) -- on the refusal, not by timing out
        assert.is_nil(ok)
        assert.matches("^Failed to inspect exe.dev VM paperclip%-env1%-run1: ", err.message)
        assert.truthy(err.message:find("refused the key", 1, true))
        assert.truthy(err.message:find("registered with exe.dev", 1, true))
        assert.same({}, h.fake:running())
      end)
    end)

    it("a changed host key is refused, never silently accepted", function()
      h.run(function()
        local s = h.session()
        local lease = assert(h.acquire(nil, nil, s))
        local vm = h.fake:vm(lease.providerLeaseId)
        vm.server:restart_with_new_host_key()
        require("host.ssh").close_all()
        local secs, ok, err = timed(s.call, s, "environmentExecute",
          { config = h.config(), lease = lease, command = "true" })
        assert.is_true(secs < CONNECT_TIMEOUT, secs) -- on the refusal, not by timing out
        assert.is_nil(ok)
        assert.matches("^Failed to execute commands on exe.dev VM paperclip%-env1%-run1: ",
          err.message)
        assert.truthy(err.message:find("changed", 1, true))
        -- with strictHostKeyChecking=no the rebuilt VM is reachable (and a warning logged)
        local r = assert(s:call("environmentExecute", { config = h.config({
          strictHostKeyChecking = "no" }), lease = lease, command = "true" }))
        assert.equal(0, r.exitCode)
        assert.is_true(h.logged("host key checking is off"))
      end)
    end)

    it("strictHostKeyChecking=yes needs the VM pinned in ~/.ssh/known_hosts", function()
      h.run(function()
        local vm = h.fake:create_vm("vm-1")
        local cfg = h.config({ strictHostKeyChecking = "yes" })
        local msg = h.failed(h.execute(vm, { config = cfg, command = "true" }))
        assert.matches("^Failed to execute commands on exe.dev VM vm%-1: ", msg)
        assert.truthy(msg:find(vm.server:fingerprint(), 1, true))
        local lines = {}
        for _, t in ipairs({ "ecdsa", "ed25519" }) do
          local pub = assert(require("host.fs").read(vm.server.dir .. "/host_" .. t .. ".pub"))
          lines[#lines + 1] = ("[127.0.0.1]:%d %s"):format(vm.server.port,
            pub:match("^(%S+ %S+)"))
        end
        assert(require("host.fs").mkdir(h.dir .. "/.ssh", tonumber("700", 8)))
        assert(require("host.fs").write(h.dir .. "/.ssh/known_hosts",
          table.concat(lines, "\n") .. "\n"))
        local r = assert(h.execute(vm, { config = cfg, command = "true" }))
        assert.equal(0, r.exitCode)
      end)
    end)

    it("a VM that never answers: the connection gives up after connect_timeout", function()
      h.run(function()
        remote.settings.connect_timeout = 1
        local vm = h.fake:create_vm("vm-1")
        vm.server:pause()
        local secs, ok, err = timed(h.session().call, h.session(), "environmentExecute",
          { config = h.config(), lease = h.lease(vm), command = "true" })
        vm.server:resume()
        -- it waited for connect_timeout (1 s), and gave up long before the default (15 s)
        assert.is_true(secs >= 0.9 and secs < CONNECT_TIMEOUT, secs)
        assert.is_nil(ok)
        assert.matches("^Failed to execute commands on exe.dev VM vm%-1: ", err.message)
        assert.truthy(err.message:find("connect", 1, true))
      end)
    end)

    it("a VM that stalls mid-command: a timed-out result, bounded", function()
      h.run(function()
        remote.settings.reap_wait = 1
        local vm = h.fake:create_vm("vm-1")
        local t = start_long(vm, { timeoutMs = 1500 })
        vm.server:pause()
        local r, err = t:wait(30)
        vm.server:resume()
        -- bounded by the timeout: half way through the command's own 60 s at most
        assert(r, "no result in time: " .. tostring(type(err) == "table" and err.message or err))
        assert.is_true(r.timedOut)
        assert.equal(null, r.exitCode)
        assert.equal("started\n", r.stdout)
      end)
    end)

    it("a VM that vanished: execute fails clearly, resume expires, destroy succeeds", function()
      h.run(function()
        local s = h.session()
        local lease = assert(h.acquire(nil, nil, s))
        assert(require("host.http").request({ method = "POST", url = h.fake.url,
          headers = { Authorization = "Bearer " .. h.fake.token },
          body = "rm --json " .. lease.providerLeaseId }))
        local secs, ok, err = timed(s.call, s, "environmentExecute",
          { config = h.config(), lease = lease, command = "true" })
        assert.is_true(secs < CONNECT_TIMEOUT, secs) -- refused at once, not timed out
        assert.is_nil(ok)
        assert.matches("^Failed to execute commands on exe.dev VM paperclip%-env1%-run1: ",
          err.message)
        assert.same({ providerLeaseId = null, metadata = { expired = true } },
          assert(s:call("environmentResumeLease", { config = h.config(),
            providerLeaseId = lease.providerLeaseId, leaseMetadata = lease.metadata })))
        assert.equal(null, s:call("environmentDestroyLease",
          { config = h.config(), providerLeaseId = lease.providerLeaseId }))
        assert.is_false(h.logged("warn:"))
      end)
    end)
  end)

  describe("the API", function()
    it("a stalled API fails within the request cap", function()
      h.run(function()
        local default = api.settings.request_cap
        api.settings.request_cap = 1
        h.fake:fail({ command = "new", stall = true, times = math.huge })
        local secs, ok, err = timed(h.acquire)
        -- it waited for the cap (1 s), and gave up long before the default cap (29 s)
        assert.is_true(secs >= 0.9 and secs < default / 2, secs)
        assert.is_nil(ok)
        assert.matches("^exe.dev API request failed for: new ", err.message)
      end)
    end)

    it("a dropped connection before `new` ran is an error, never a made-up VM", function()
      h.run(function()
        h.fake:fail({ drop = true, times = math.huge, command = "new" })
        local msg = h.failed(h.acquire())
        assert.matches("^exe.dev API request failed for: new ", msg)
        -- looked up, created again (the name makes that safe), and deleted by name at the end
        assert.same({}, h.fake:running())
        assert.equal("rm --json 'paperclip-env1-run1'", h.fake:commands()[#h.fake:commands()])
      end)
    end)

    it("a `new` whose answer is lost, cut or a 5xx: the VM is adopted, never made twice",
      function()
        h.run(function()
          local s = h.session()
          for i, fault in ipairs({ { drop = true }, { cut = true }, { status = 502 },
            { status = 500 } }) do
            h.fake.faults = {}
            fault.command, fault.after, fault.times = "new", true, math.huge
            h.fake:fail(fault)
            local news = h.fake:count("new")
            local lease = assert(h.acquire(nil, { runId = "run" .. i }, s))
            assert.equal(news + 1, h.fake:count("new")) -- never sent twice
            assert.same({ lease.providerLeaseId }, h.fake:running())
            local r = assert(s:call("environmentExecute", { config = h.config(),
              lease = { providerLeaseId = lease.providerLeaseId, metadata = lease.metadata },
              command = "echo", args = { "adopted" } }))
            assert.equal("adopted\n", r.stdout)
            -- a probe's VM is deleted whatever its create answered
            local p = assert(s:call("environmentProbe", { config = h.config() }))
            assert.is_true(p.ok, p.metadata and p.metadata.error)
            assert.same({ lease.providerLeaseId }, h.fake:running())
            assert.equal(null, s:call("environmentReleaseLease", { config = h.config(),
              providerLeaseId = lease.providerLeaseId }))
            assert.same({}, h.fake:running())
          end
        end)
      end)

    it("its own name taken after a lost answer means the VM exists: adopted", function()
      h.run(function()
        -- the answer is lost, the lookup misses the new VM, the second `new` is refused
        h.fake:fail({ command = "new", after = true, drop = true })
        h.fake:fail({ command = "ls", error = "no such VM" })
        h.fake:fail({ command = "new", status = 409, content_type = "application/json",
          body = '{"error":"VM name \\"paperclip-env1-run1\\" is already taken"}' })
        local lease = assert(h.acquire())
        assert.equal("paperclip-env1-run1", lease.providerLeaseId)
        assert.equal(2, h.fake:count("new"))
        assert.same({ "paperclip-env1-run1" }, h.fake:running())
        -- a taken name without a lost answer first is someone else's VM: an error
        h.fake:create_vm("paperclip-env1-run2")
        local msg = h.failed(h.acquire(nil, { runId = "run-2" }))
        assert.matches("already taken", msg)
        assert.is_not_nil(h.fake:vm("paperclip-env1-run2")) -- not ours to delete
      end)
    end)

    it("an acquire whose inspect step hangs past the deadline still deletes its VM", function()
      h.run(function()
        local worker = require("host.worker")
        local budget = worker.budget
        worker.budget = function()
          return 6 -- 4.5 s for the hook's steps, 1.5 s kept for its cleanup
        end
        local create_vm = h.fake.create_vm
        h.fake.create_vm = function(fake, name, opts) -- a VM whose sshd never answers
          local vm = create_vm(fake, name, opts)
          vm.server:pause()
          return vm
        end
        local secs, ok, err = timed(h.acquire)
        worker.budget = budget
        assert.same({}, h.fake:running()) -- deleted within the reserve
        assert.equal("rm --json 'paperclip-env1-run1'", h.fake:commands()[2])
        assert.is_nil(ok)
        -- the inspect ends at the steps' deadline, or is canceled there: a race either way
        assert.truthy(err.message:find("^Failed to inspect exe.dev VM paperclip%-env1%-run1: ")
          or err.message:find("did not finish within 4.5s", 1, true), err.message)
        -- the deadline ended it: the inspect alone would wait connect_timeout (15 s)
        assert.is_true(secs < CONNECT_TIMEOUT, secs)
      end)
    end)

    it("a refused token, a token without `cp` and a body over 64 KiB are clear", function()
      h.run(function()
        local msg = h.failed(h.acquire(h.config({ apiKey = "exe1.wrong" })))
        assert.matches("^exe.dev API command failed %(401%) for: new ", msg)
        assert.truthy(msg:find("API key was refused", 1, true))
        assert.is_nil(msg:find("exe1.wrong", 1, true))
        h.fake.cmds = { "new", "ls", "rm" }
        h.fake:create_vm("golden-vm")
        msg = h.failed(h.acquire(h.config({ sourceVm = "golden-vm" })))
        assert.matches("^exe.dev API command failed %(403%) for: cp 'golden%-vm'", msg)
        assert.truthy(msg:find("does not allow this command", 1, true))
        msg = h.failed(h.acquire(h.config({ comment = string.rep("x", 70000) })))
        assert.matches("^exe.dev API command failed %(413%)", msg)
      end)
    end)

    it("release and destroy: a failing rm is retried once, then an error reply", function()
      h.run(function()
        h.fake:create_vm("vm-1")
        h.fake:fail({ command = "rm", status = 502, body = "bad gateway" })
        assert.equal(null, h.session():call("environmentDestroyLease",
          { config = h.config(), providerLeaseId = "vm-1" }))
        assert.equal(2, h.fake:count("rm"))
        assert.same({}, h.fake:running())
        h.fake:create_vm("vm-1")
        h.fake:fail({ command = "rm", status = 502, body = "bad gateway", times = 2 })
        local msg = h.failed(h.session():call("environmentDestroyLease",
          { config = h.config(), providerLeaseId = "vm-1" }))
        assert.equal("exe.dev API command failed (502) for: rm --json 'vm-1': bad gateway", msg)
        assert.equal(4, h.fake:count("rm"))
        -- an `rm` exe.dev refuses (not "not found") is not retried: an error reply
        h.fake:fail({ command = "rm", error = "VM is locked" })
        msg = h.failed(h.session():call("environmentReleaseLease",
          { config = h.config(), providerLeaseId = "vm-1" }))
        assert.matches("VM is locked", msg)
        assert.equal(5, h.fake:count("rm"))
        -- a VM already gone counts as deleted
        assert.equal(null, h.session():call("environmentDestroyLease",
          { config = h.config(), providerLeaseId = "vm-1" }))
        assert.equal(null, h.session():call("environmentDestroyLease",
          { config = h.config(), providerLeaseId = "vm-1" }))
        assert.same({}, h.fake:running())
        -- without any API key nothing can be attempted: that is an error
        h.env.EXE_API_KEY = nil
        local cfg = h.config()
        cfg.apiKey = nil
        msg = h.failed(h.session():call("environmentDestroyLease",
          { config = cfg, providerLeaseId = "vm-1" }))
        assert.equal("exe.dev environments require an API key in config or EXE_API_KEY.", msg)
      end)
    end)
  end)

  it("never shows an env value in any process's command line on the VM", function()
    h.run(function()
      local vm = h.fake:create_vm("vm-1")
      require("spec.support.cmdline").check(function(on_log, params)
        return h.execute(vm, params, h.session({ on_log = on_log }))
      end)
    end)
  end)

  it("never lets a secret into an error, a log line, a result or lease metadata", function()
    h.run(function()
      local secrets = { h.fake.token, "super-secret-env-value", "a very secret prompt",
        "export TOKEN=secret-setup-token" }
      local cfg = h.config({ env = { TOKEN = secrets[2] }, prompt = secrets[3],
        setupScript = secrets[4] })
      local seen = {}
      local s = h.session({ on_log = function(_, chunk)
        seen[#seen + 1] = chunk
      end })
      local function call(method, params)
        local r, err = s:call(method, params)
        seen[#seen + 1] = json.encode(r or err)
        return r, err
      end
      local lease = assert(call("environmentAcquireLease", h.acquire_params(cfg)))
      call("environmentExecute", { config = cfg, lease = lease, command = "sh",
        args = { "-c", "echo hello; exit 4" } })
      h.fake:fail({ status = 500, body = "echo: " .. secrets[2] .. " " .. h.fake.token })
      call("environmentAcquireLease", h.acquire_params(cfg, { runId = "run-2" }))
      h.fake:fail({ command = "rm", error = "cannot delete: " .. secrets[3] })
      call("environmentDestroyLease", { config = cfg, providerLeaseId = lease.providerLeaseId })
      call("environmentProbe", { config = h.config({ env = { TOKEN = secrets[2] },
        sshPrivateKey = "-----BEGIN OPENSSH PRIVATE KEY-----\nnot-a-real-key-body\n"
          .. "-----END OPENSSH PRIVATE KEY-----" }) })
      for _, l in ipairs(h.logs) do
        seen[#seen + 1] = l
      end
      local all = table.concat(seen, "\n")
      for _, secret in ipairs(secrets) do
        assert.is_nil(all:find(secret, 1, true), "leaked: " .. secret)
      end
      assert.is_nil(all:find("not-a-real-key-body", 1, true))
      assert.is_nil(all:find(h.fake.key.private:match("\n([^\n]+)\n"), 1, true))
      for k in pairs(lease.metadata) do
        assert.is_nil(({ apiKey = 1, sshPrivateKey = 1, env = 1, prompt = 1 })[k])
      end
      assert.truthy(all:find("[REDACTED]", 1, true)) -- the errors did carry them, masked
    end)
  end)
end)
