-- spec/providers/ssh/lifecycle_spec.lua: the generic ssh provider against a real sshd on
-- loopback (a VM of the fake exe.dev: an sshd with a private HOME, the client key authorized).
local client = require("host.client")
local fake_exedev = require("spec.support.fake_exedev")
local fs = require("host.fs")
local helpers = require("spec.helpers")
local json = require("host.json")
local provider = require("providers.ssh")
local remote = require("host.remote")
local sandbox_helper = require("host.sandbox_helper")
local ssh = require("host.ssh")
local sshd = require("spec.support.sshd")
local task = require("host.task")
local worker_process = require("spec.support.worker_process")

local null = json.null

local SERVE = "\0serve\0--ctl-base\0" -- in the command line of ph-sandbox-helper serve

-- Processes whose command line contains text (zombies have none); servers = true: only the
-- lease's command servers, false: everything else.
local function processes_with(text, servers)
  local found = {}
  for _, name in ipairs(fs.list("/proc") or {}) do
    local cmdline = name:find("^%d+$") and helpers.read_file("/proc/" .. name .. "/cmdline")
    if cmdline and cmdline:find(text, 1, true)
      and (servers == nil or (cmdline:find(SERVE, 1, true) ~= nil) == servers) then
      found[#found + 1] = tonumber(name)
    end
  end
  return found
end

-- The command that prints the command line of its parent: the runner that started it.
local PARENT = { command = "sh", args = { "-c", 'tr "\\0" " " < /proc/$PPID/cmdline' } }

describe("providers.ssh #ssh", function()
  local h = fake_exedev.harness({ ssh = true })
  local box -- the machine: a fake VM

  local function session(opts)
    return client.session({ provider }, opts)
  end

  local function config(extra)
    return helpers.merged({ host = "127.0.0.1", port = box.server.port, user = box.server.user,
      privateKey = h.fake.key.private, timeoutMs = 30000 }, extra)
  end

  -- h.run with a machine in `box`.
  local function run(fn)
    h.run(function()
      box = h.fake:create_vm("box")
      fn()
    end)
  end

  local function acquire(s, cfg)
    local lease = assert(s:call("environmentAcquireLease", { config = cfg or config(),
      runId = "r" }))
    return lease, { providerLeaseId = lease.providerLeaseId, metadata = lease.metadata }
  end

  -- Where the helper goes on the machine.
  local function helper_path()
    local sha = assert(sandbox_helper.sha256())
    return box.home .. "/.paperclip/bin/ph-sandbox-helper-" .. sha:sub(1, 16)
  end

  -- fn() with every host.ssh exec counted that checks for ph-sandbox-helper or uploads it.
  local function counting(fn)
    local real, n = ssh.exec, { checks = 0, uploads = 0 }
    ssh.exec = function(o)
      if o.cmd:find("paperclip_verify", 1, true) then
        local kind = (o.stdin or "") == "" and "checks" or "uploads"
        n[kind] = n[kind] + 1
      end
      return real(o)
    end
    helpers.with_cleanup(fn, function()
      ssh.exec = real
    end)
    return n
  end

  -- Nothing of the lease's commands is left on the machine: no process (but the lease's
  -- command server), no control dir.
  local function nothing_left()
    h.eventually(function()
      return #processes_with(box.home, false) == 0
        and #(fs.list(box.home .. "/.paperclip-executions") or {}) == 0
    end, "no process or control dir left")
  end

  -- The command servers running on the machine.
  local function servers()
    return processes_with(box.home, true)
  end

  local function no_server_left()
    h.eventually(function()
      return #servers() == 0 and remote.servers_running() == 0
    end, "no command server left")
  end

  -- The ctx an execute on lease lp has: what the bridge hooks get.
  local function hook_ctx(s, cfg, lp)
    return s.worker:context(provider, "environmentExecute", { config = cfg, lease = lp }, nil, 120)
  end

  local saved_runner

  before_each(function()
    remote.forget_helpers() -- machines of earlier specs are gone; their ports come back
    saved_runner = remote.settings.runner
  end)

  after_each(function()
    sandbox_helper.override = nil
    remote.settings.runner = saved_runner
    helpers.run(remote.close_servers)
  end)

  it("validates its config: the root must be absolute or under $HOME", function()
    run(function()
      local s = session()
      local r = assert(s:call("environmentValidateConfig", { config = config() }))
      assert.is_true(r.ok)
      assert.equal("$HOME/paperclip-workspaces", r.normalizedConfig.workspaceRoot)
      assert.equal("accept-new", r.normalizedConfig.hostKeyPolicy)
      -- no key configured is valid: the agent and ~/.ssh keys are tried at use, as ssh does
      r = assert(s:call("environmentValidateConfig", { config = config({ privateKey = "  " }) }))
      assert.is_true(r.ok)
      r = assert(s:call("environmentValidateConfig",
        { config = config({ workspaceRoot = "relative/dir", hostKeyPolicy = "maybe" }) }))
      assert.is_false(r.ok)
      assert.equal(2, #r.errors)
    end)
  end)

  it("probes the machine", function()
    run(function()
      local r = assert(session():call("environmentProbe", { config = config() }))
      assert.is_true(r.ok)
      assert.equal("bash", r.metadata.shellCommand)
      r = assert(session():call("environmentProbe", { config = config({ port = 1 }) }))
      assert.is_false(r.ok)
      assert.matches("cannot check the workspace root on 127.0.0.1", r.metadata.error)
    end)
  end)

  it("acquires a private workspace under $HOME, runs commands in it, removes it", function()
    run(function()
      local s = session()
      local lease, lp = acquire(s)
      local dir = lease.providerLeaseId
      assert.matches("^" .. box.home:gsub("%p", "%%%0") .. "/paperclip%-workspaces/paperclip%-%x+$",
        dir)
      assert.equal(tonumber("700", 8), fs.stat(dir).mode & tonumber("777", 8))
      assert.equal("directory", fs.stat(dir .. "/workspace").type)
      assert.same({ provider = "ssh", shellCommand = "bash", remoteCwd = dir .. "/workspace",
        remoteHome = dir .. "/home", timeoutMs = 30000, reuseLease = false,
        resumedLease = false, commandRunner = "ph-sandbox-helper serve" }, lease.metadata)
      local r = assert(s:call("environmentExecute", { config = config(), lease = lp,
        command = "sh", args = { "-c", 'pwd; echo "$HOME|$GREETING"; cat' },
        env = { GREETING = "hi there" }, stdin = "from stdin" }))
      assert.equal(0, r.exitCode)
      assert.equal(dir .. "/workspace\n" .. dir .. "/home|hi there\nfrom stdin", r.stdout)
      r = assert(s:call("environmentExecute", { config = config(), lease = lp,
        command = "sh", args = { "-c", "echo nope >&2; exit 9" } }))
      assert.equal(9, r.exitCode)
      assert.equal("nope\n", r.stderr)
      assert.equal(null, s:call("environmentReleaseLease",
        { config = config(), providerLeaseId = dir }))
      assert.is_nil(fs.stat(dir))
      no_server_left()
      -- two leases never share a directory
      local a, b = acquire(s), acquire(s)
      assert.are_not.equal(a.providerLeaseId, b.providerLeaseId)
    end)
  end)

  it("keeps a reused lease on release, resumes it, and expires it once destroyed", function()
    run(function()
      local s = session()
      local cfg = config({ reuseLease = true, workspaceRoot = h.dir .. "/leases" })
      local lease = acquire(s, cfg)
      assert.equal(null, s:call("environmentReleaseLease",
        { config = cfg, providerLeaseId = lease.providerLeaseId }))
      assert.truthy(fs.stat(lease.providerLeaseId))
      local r = assert(s:call("environmentResumeLease",
        { config = cfg, providerLeaseId = lease.providerLeaseId }))
      assert.equal(lease.providerLeaseId, r.providerLeaseId)
      assert.is_true(r.metadata.resumedLease)
      assert.equal(null, s:call("environmentDestroyLease",
        { config = cfg, providerLeaseId = lease.providerLeaseId }))
      assert.is_nil(fs.stat(lease.providerLeaseId))
      assert.same({ providerLeaseId = null, metadata = { expired = true } },
        assert(s:call("environmentResumeLease",
          { config = cfg, providerLeaseId = lease.providerLeaseId })))
      -- an id that is not one of its workspaces is never touched
      assert(fs.mkdir(h.dir .. "/precious"))
      assert.equal(null, s:call("environmentDestroyLease",
        { config = cfg, providerLeaseId = h.dir .. "/precious" }))
      assert.truthy(fs.stat(h.dir .. "/precious"))
    end)
  end)

  it("realizes a workspace path", function()
    run(function()
      local s = session()
      local _, lp = acquire(s)
      local r = assert(s:call("environmentRealizeWorkspace", { config = config(), lease = lp,
        workspace = {} }))
      assert.equal(lp.metadata.remoteCwd, r.cwd)
      local other = h.dir .. "/elsewhere/deep"
      r = assert(s:call("environmentRealizeWorkspace", { config = config(),
        lease = { providerLeaseId = lp.providerLeaseId }, workspace = { remotePath = other } }))
      assert.equal(other, r.cwd)
      assert.equal("directory", fs.stat(other).type)
    end)
  end)

  -- commandRunner -> host.remote.settings.runner
  local RUNNER_SETTING = { ["ph-sandbox-helper serve"] = "serve", ["ph-sandbox-helper"] = "exec",
    ["sh-wrapper"] = "serve" }
  for _, runner in ipairs({ "ph-sandbox-helper serve", "ph-sandbox-helper", "sh-wrapper" }) do
    local cfg = function()
      remote.settings.runner = RUNNER_SETTING[runner]
      return config({ useSandboxHelper = runner ~= "sh-wrapper" })
    end

    it("times out with partial output and kills the command's process group (" .. runner .. ")",
      function()
        run(function()
          local s = session()
          local lease, lp = acquire(s, cfg())
          assert.equal(runner, lease.metadata.commandRunner)
          local pidfile = h.dir .. "/pid"
          local r = assert(s:call("environmentExecute", { config = cfg(), lease = lp,
            command = "sh", args = { "-c", "sleep 60 & echo $! > " .. pidfile .. "; echo $$ >> "
              .. pidfile .. "; echo tick; sleep 60" }, timeoutMs = 500 }))
          assert.is_true(r.timedOut)
          assert.equal(null, r.exitCode)
          assert.equal("tick\n", r.stdout)
          for pid in assert(fs.read(pidfile)):gmatch("%d+") do -- the silent child too
            h.eventually(function()
              return not helpers.alive(pid)
            end, "process " .. pid .. " stopped")
          end
          nothing_left()
        end)
      end)

    it("cancels exactly one execution (" .. runner .. ")", function()
      run(function()
        local s = session()
        local _, lp = acquire(s, cfg())
        local function start(id)
          return task.spawn(function()
            return s:call("environmentExecute", { config = cfg(), lease = lp, executionId = id,
              command = "sh", args = { "-c", "touch " .. h.dir .. "/" .. id .. "; sleep 60" } })
          end)
        end
        local a, b = start("one"), start("two")
        h.eventually(function()
          return fs.stat(h.dir .. "/one") and fs.stat(h.dir .. "/two") and true
        end, "both commands started")
        assert.same({ executionId = "one", cancelled = true }, assert(s:call(
          "environmentCancelExecution", { config = cfg(), lease = lp, executionId = "one" })))
        assert.equal(143, assert(a:wait(10)).exitCode)
        assert.is_false(b:done())
        -- a worker that does not track it (restarted) cancels through the remote script
        remote.forget_helpers()
        assert(session():call("environmentCancelExecution",
          { config = cfg(), lease = lp, executionId = "two" }))
        assert.equal(143, assert(b:wait(10)).exitCode)
        nothing_left()
      end)
    end)
  end

  it("installs ph-sandbox-helper once per lease and runs every command with it", function()
    run(function()
      local s = session()
      local path, lp
      local n = counting(function()
        local lease
        lease, lp = acquire(s)
        assert.equal("ph-sandbox-helper serve", lease.metadata.commandRunner)
        path = helper_path()
        assert.equal(tonumber("755", 8), fs.stat(path).mode & tonumber("777", 8))
        assert.is_true(helpers.read_file(path) == helpers.read_file(helpers.sandbox_helper()))
        for _ = 1, 2 do
          local r = assert(s:call("environmentExecute", helpers.merged(PARENT,
            { config = config(), lease = lp })))
          assert.equal(0, r.exitCode, r.stderr)
          -- the command's parent is the helper's server, named after its sha256
          assert.equal(path .. " serve --ctl-base ", r.stdout:sub(1, #path + 18))
        end
        -- the bridge's hook gives the same path, at no cost
        assert.equal(path, provider.hooks.sandbox_helper(hook_ctx(s, config(), lp), { lease = lp }))
      end)
      assert.same({ checks = 1, uploads = 1 }, n)
      -- another lease on the machine, and a restarted worker: the file is found, not sent
      n = counting(function()
        local other = acquire(s)
        assert.equal("ph-sandbox-helper serve", other.metadata.commandRunner)
        remote.forget_helpers()
        local r = assert(s:call("environmentExecute", helpers.merged(PARENT,
          { config = config(), lease = lp })))
        assert.equal(path .. " serve --ctl-base ", r.stdout:sub(1, #path + 18))
      end)
      assert.same({ checks = 2, uploads = 0 }, n)
      nothing_left()
    end)
  end)

  it("falls back to the shell wrapper where the helper does not run", function()
    run(function()
      local dir <close> = helpers.tempdir("ssh-helper-")
      -- what a binary for another architecture does: it cannot even say its version
      local bogus = dir.path .. "/ph-sandbox-helper"
      helpers.write_file(bogus, "#!/bin/sh\necho 'cannot execute binary file' >&2\nexit 126\n",
        "755")
      sandbox_helper.override = bogus
      local s = session()
      local n = counting(function()
        local lease, lp = acquire(s)
        assert.equal("sh-wrapper", lease.metadata.commandRunner)
        for _ = 1, 2 do
          local r = assert(s:call("environmentExecute", helpers.merged(PARENT,
            { config = config(), lease = lp })))
          assert.equal(0, r.exitCode, r.stderr)
          assert.matches("^sh %-c paperclip_ctl=", r.stdout) -- the wrapper started it
        end
        local path, err, code = provider.hooks.sandbox_helper(hook_ctx(s, config(), lp),
          { lease = lp })
        assert.is_nil(path)
        assert.equal("unsupported", code)
        assert.matches("cannot be used on 127%.0%.0%.1: it does not run there: cannot execute", err)
      end)
      assert.same({ checks = 1, uploads = 1 }, n) -- and then never tried again for the lease
      nothing_left()
    end)
  end)

  it("an install sweeps the temp files of abandoned uploads, and leaves none of its own",
    function()
      run(function()
        local dir = box.home .. "/.paperclip/bin"
        assert(fs.mkdirs(dir))
        local stale = dir .. "/ph-sandbox-helper-0123456789abcdef.4242.tmp"
        local fresh = dir .. "/ph-sandbox-helper-0123456789abcdef.4343.tmp"
        helpers.write_file(stale, "half an upload")
        helpers.write_file(fresh, "an upload in progress")
        assert(require("host.proc").run({ argv = { "touch", "-d", "1 hour ago", stale },
          timeout = 10 }))
        acquire(session())
        assert.is_nil(fs.stat(stale), "an abandoned upload is swept")
        assert.is_table(fs.stat(fresh), "one that may be running is left alone")
        os.remove(fresh)
        for _, name in ipairs(fs.list(dir)) do
          assert.not_matches("%.tmp$", name)
        end
      end)
    end)

  it("never installs the helper with useSandboxHelper = false", function()
    run(function()
      local s = session()
      local cfg = config({ useSandboxHelper = false })
      local n = counting(function()
        local lease, lp = acquire(s, cfg)
        assert.equal("sh-wrapper", lease.metadata.commandRunner)
        local r = assert(s:call("environmentExecute", helpers.merged(PARENT,
          { config = cfg, lease = lp })))
        assert.matches("^sh %-c paperclip_ctl=", r.stdout)
        local path, err, code = provider.hooks.sandbox_helper(hook_ctx(s, cfg, lp), { lease = lp })
        assert.is_nil(path)
        assert.equal("unsupported", code)
        assert.matches("useSandboxHelper is false", err)
      end)
      assert.same({ checks = 0, uploads = 0 }, n)
      assert.is_nil(fs.stat(box.home .. "/.paperclip"))
    end)
  end)

  it("reads identityFile, and fails clearly for a wrong key or an unreachable host", function()
    run(function()
      local s = session()
      local cfg = config({ identityFile = h.fake.key.path })
      cfg.privateKey = nil
      local _, lp = acquire(s, cfg)
      assert.equal(0, assert(s:call("environmentExecute", { config = cfg, lease = lp,
        command = "true" })).exitCode)
      local stranger = sshd.keygen(h.dir, "id_other", "ed25519")
      local ok, err = s:call("environmentExecute", { config = config({
        privateKey = stranger.private }), lease = lp, command = "true" })
      assert.is_nil(ok)
      assert.matches("^ssh: cannot run the command on 127.0.0.1: ", err.message)
      assert.truthy(err.message:find("refused the key", 1, true))
      local t0 = task.now()
      ok, err = s:call("environmentAcquireLease", { config = config({ port = 1 }) })
      assert.is_nil(ok)
      -- refused at once: long before connect_timeout (15 s) would end a wait for an answer
      assert.is_true(task.now() - t0 < remote.settings.connect_timeout)
      assert.matches("^ssh: cannot create a workspace on 127.0.0.1: ", err.message)
      -- the key never shows up anywhere
      for _, l in ipairs(h.logs) do
        assert.is_nil(l:find(stranger.private, 1, true))
      end
      assert.is_nil(err.message:find("PRIVATE KEY", 1, true))
    end)
  end)

  it("without a key: what ssh would offer, as the account; the error lists what it tried",
    function()
      run(function()
        local s = session()
        local cfg = config()
        cfg.privateKey, cfg.user = nil, nil -- the account's name (h's account) and ~/.ssh
        local ok, err = s:call("environmentAcquireLease", { config = cfg, runId = "r" })
        assert.is_nil(ok)
        assert.matches("^ssh: no SSH identity to offer %(tried: ", err.message)
        assert.truthy(err.message:find(h.dir .. "/.ssh/id_rsa: missing", 1, true))
        assert(fs.mkdir(h.dir .. "/.ssh", tonumber("700", 8)))
        -- offered in OpenSSH's order on one connection: id_rsa (a key the machine refuses),
        -- then id_ecdsa (the one it accepts)
        local stranger = sshd.keygen(h.dir, "stranger", "ed25519")
        assert(fs.write(h.dir .. "/.ssh/id_rsa", stranger.private, tonumber("600", 8)))
        assert(fs.write(h.dir .. "/.ssh/id_ecdsa", h.fake.key.private, tonumber("600", 8)))
        local _, lp = acquire(s, cfg)
        assert.equal("ok\n", assert(s:call("environmentExecute", { config = cfg, lease = lp,
          command = "echo", args = { "ok" } })).stdout)
        -- the host was recorded where ssh records it
        local known = assert(fs.read(h.dir .. "/.ssh/known_hosts"))
        assert.truthy(known:find(("[127.0.0.1]:%d "):format(box.server.port), 1, true))
        -- none accepted: every identity is named in the error
        assert(fs.write(h.dir .. "/.ssh/id_ecdsa", stranger.private, tonumber("600", 8)))
        ssh.close_all()
        ok, err = s:call("environmentExecute", { config = cfg, lease = lp, command = "true" })
        assert.is_nil(ok)
        assert.truthy(err.message:find("accepted none of the identities offered", 1, true))
        assert.truthy(err.message:find(h.dir .. "/.ssh/id_rsa: refused", 1, true))
        assert.truthy(err.message:find(h.dir .. "/.ssh/id_ecdsa: refused", 1, true))
      end)
    end)

  it("reads the system profile quietly before the clean env, never the account's profiles",
    function()
    h.run(function()
      box = h.fake:create_vm("box", { home_files = {
        [".profile"] = "export PATH=\"$PATH:/opt/from-user-profile\"\n",
        [".bashrc"] = "export PATH=\"$PATH:/opt/from-bashrc\"\n",
      } })
      local dir <close> = helpers.tempdir("ssh-profile-")
      local profile = dir.path .. "/profile"
      helpers.write_file(profile, 'export PATH="$PATH:/opt/from-system-profile"\n'
        .. "export PROFILE_ONLY=1\necho noisy; echo noisy >&2\nfalse\n")
      local saved = remote.system_profile
      remote.system_profile = profile
      local s = session()
      local _, lp = acquire(s)
      local ok, r = pcall(s.call, s, "environmentExecute", { config = config(), lease = lp,
        command = "sh", args = { "-c", 'echo "$PATH|$PROFILE_ONLY"' } })
      remote.system_profile = saved
      assert(ok, r)
      r = assert(r)
      assert.equal(0, r.exitCode)
      assert.equal("", r.stderr) -- quiet: its output and its failure are discarded
      local path, only = r.stdout:match("^([^|\n]*)|([^\n]*)\n$")
      assert.matches(":/opt/from%-system%-profile$", path) -- its PATH additions apply
      assert.equal("", only) -- and nothing else it sets: the env is the clean base
      assert.is_nil(path:find("from-user-profile", 1, true))
      assert.is_nil(path:find("from-bashrc", 1, true))
    end)
  end)

  it("never shows an env value in any process's command line on the machine", function()
    run(function()
      local _, lp = acquire(session())
      require("spec.support.cmdline").check(function(on_log, params)
        params.config, params.lease = config(), lp
        return session({ on_log = on_log }):call("environmentExecute", params)
      end)
    end)
  end)

  it("uses one pooled connection for a lease's commands", function()
    run(function()
      local s = session()
      local _, lp = acquire(s)
      local before = ssh.stats().connects
      local fns = {}
      for i = 1, 10 do
        fns[i] = function()
          return s:call("environmentExecute", { config = config(), lease = lp,
            command = "echo", args = { tostring(i) } })
        end
      end
      for i, res in ipairs(task.all(fns)) do
        assert.equal(i .. "\n", assert(res[1]).stdout)
      end
      assert.equal(before, ssh.stats().connects)
    end)
  end)

  it("runs a lease's commands on ONE ph-sandbox-helper serve, started by its first execute",
    function()
      run(function()
        local s = session()
        local lease, lp = acquire(s)
        assert.same({}, servers()) -- not at acquire: lazily
        local channels = ssh.stats().channels
        local fns = {}
        for i = 1, 40 do -- more at once than sshd's 10 sessions per connection
          fns[i] = function()
            return s:call("environmentExecute", { config = config(), lease = lp,
              command = "sh", args = { "-c", "echo " .. i .. "; echo e" .. i .. " >&2; exit "
                .. i % 7 }, stdin = "in" .. i })
          end
        end
        for i, res in ipairs(task.all(fns)) do
          local r = assert(res[1])
          assert.same({ i % 7, i .. "\n", "e" .. i .. "\n" }, { r.exitCode, r.stdout, r.stderr })
        end
        for _ = 1, 5 do
          assert.equal("x\n", assert(s:call("environmentExecute", { config = config(),
            lease = lp, command = "cat", stdin = "x\n" })).stdout)
        end
        local list = servers()
        assert.equal(1, #list) -- one process for the 45 executes
        assert.equal(1, remote.servers_running())
        assert.equal(channels + 1, ssh.stats().channels) -- its one channel stays open
        -- a second lease has its own
        local _, lp2 = acquire(s)
        assert.equal(0, assert(s:call("environmentExecute", { config = config(), lease = lp2,
          command = "true" })).exitCode)
        assert.equal(2, #servers())
        assert.equal(null, s:call("environmentReleaseLease",
          { config = config(), providerLeaseId = lease.providerLeaseId }))
        h.eventually(function()
          return not helpers.alive(list[1])
        end, "the first lease's server stopped")
        assert.equal(1, #servers())
        assert.equal(null, s:call("environmentDestroyLease",
          { config = config(), providerLeaseId = lp2.providerLeaseId }))
        no_server_left()
        nothing_left()
      end)
    end)

  it("stops the server when a reused lease is released, and starts one again on resume",
    function()
      run(function()
        local s = session()
        local cfg = config({ reuseLease = true })
        local lease, lp = acquire(s, cfg)
        assert.equal(0, assert(s:call("environmentExecute", { config = cfg, lease = lp,
          command = "true" })).exitCode)
        assert.equal(1, #servers())
        assert.equal(null, s:call("environmentReleaseLease",
          { config = cfg, providerLeaseId = lease.providerLeaseId }))
        no_server_left()
        local r = assert(s:call("environmentResumeLease",
          { config = cfg, providerLeaseId = lease.providerLeaseId }))
        assert.equal("ph-sandbox-helper serve", r.metadata.commandRunner)
        assert.equal("ok\n", assert(s:call("environmentExecute", { config = cfg, lease = lp,
          command = "echo", args = { "ok" } })).stdout)
        assert.equal(1, #servers())
        assert(s:call("environmentDestroyLease",
          { config = cfg, providerLeaseId = lease.providerLeaseId }))
        no_server_left()
      end)
    end)

  it("reads /etc/profile once per lease: when its server starts", function()
    h.run(function()
      box = h.fake:create_vm("box")
      local dir <close> = helpers.tempdir("ssh-profile-")
      local profile, count = dir.path .. "/profile", dir.path .. "/count"
      helpers.write_file(profile, "echo x >> " .. count .. "\n")
      local saved = remote.system_profile
      remote.system_profile = profile
      helpers.with_cleanup(function()
        local s = session()
        local _, lp = acquire(s)
        for _ = 1, 3 do
          assert.equal(0, assert(s:call("environmentExecute", { config = config(), lease = lp,
            command = "true" })).exitCode)
        end
        assert.equal("x\n", helpers.read_file(count))
      end, function()
        remote.system_profile = saved
      end)
    end)
  end)

  it("a server killed mid-command: a clean error, the command stopped, and a new server next",
    function()
      run(function()
        local s = session()
        local _, lp = acquire(s)
        local pids = h.dir .. "/pids"
        local a = task.spawn(function()
          return s:call("environmentExecute", { config = config(), lease = lp,
            executionId = "doomed", command = "sh", args = { "-c", "sleep 60 & echo $! > "
              .. pids .. "; echo $$ >> " .. pids .. "; wait" } })
        end)
        local list = h.eventually(function()
          local l = {}
          for pid in (fs.read(pids) or ""):gmatch("%d+") do
            l[#l + 1] = pid
          end
          return #l == 2 and l
        end, "the command started")
        local server = servers()
        assert.equal(1, #server)
        assert(require("host.core.sys").kill(server[1], "SIGKILL"))
        local ok, err = a:wait(30)
        assert.is_nil(ok)
        assert.matches("^ssh: cannot run the command on 127%.0%.0%.1: the command server on "
          .. "127%.0%.0%.1 ", err.message)
        for _, pid in ipairs(list) do -- stopped through the cancel script, group and all
          h.eventually(function()
            return not helpers.alive(pid)
          end, "process " .. pid .. " stopped")
        end
        local r = assert(s:call("environmentExecute", helpers.merged(PARENT,
          { config = config(), lease = lp })))
        assert.equal(0, r.exitCode, r.stderr)
        assert.truthy(r.stdout:find(" serve --ctl-base ", 1, true))
        local again = servers()
        assert.equal(1, #again)
        assert.are_not.equal(server[1], again[1])
        nothing_left()
      end)
    end)

  it("a worker that dies takes the lease's server and its commands with it", function()
    run(function()
      local w = worker_process.start({ "worker", "--provider", "ssh" },
        { env = { PATH = os.getenv("PATH"), HOME = h.dir } })
      helpers.with_cleanup(function()
        assert(w:initialize())
        local n = 0
        local function call(method, params)
          n = n + 1
          -- the worker's account is the real one (ssh reads the passwd entry, not HOME):
          -- its known_hosts is named, or it would record the sshd in the real ~/.ssh
          w:request(n, method, helpers.merged({ driverKey = "ssh", companyId = "c1",
            environmentId = "e1", config = config({ knownHostsFile = h.dir .. "/known_hosts" }) },
            params),
            { paperclipInvocation = { id = "inv-" .. n, scope = { companyId = "c1" } } })
          return n
        end
        local lease = assert(assert(w:reply_to(call("environmentAcquireLease",
          { runId = "r1" }), 60)).result)
        assert.equal("ph-sandbox-helper serve", lease.metadata.commandRunner)
        local pids = h.dir .. "/pids"
        call("environmentExecute", { lease = { providerLeaseId = lease.providerLeaseId,
          metadata = lease.metadata }, command = "sh", args = { "-c", "echo $$ > " .. pids
          .. "; sleep 60 & echo $! >> " .. pids .. "; wait" } })
        local list = h.eventually(function()
          local l = {}
          for pid in (fs.read(pids) or ""):gmatch("%d+") do
            l[#l + 1] = pid
          end
          return #l == 2 and l
        end, "the command started")
        assert.equal(1, #servers())
        w:kill("SIGKILL")
        w:wait(10)
        -- its connection closed: sshd ended the server's stdin, and the server its commands
        h.eventually(function()
          return #servers() == 0
        end, "the server gone")
        for _, pid in ipairs(list) do
          h.eventually(function()
            return not helpers.alive(pid)
          end, "process " .. pid .. " stopped")
        end
        nothing_left()
      end, function()
        w:kill("SIGKILL")
        w:wait(10)
      end)
    end)
  end)

  it("streams output live through the server: the first chunk comes before the end", function()
    run(function()
      local gate <close>, log, on_log = helpers.log_gate()
      local s = session({ on_log = on_log })
      local _, lp = acquire(s)
      local r = assert(s:call("environmentExecute", { config = config(), lease = lp,
        command = "sh", args = { "-c", "echo first; echo oops >&2; " .. gate.sh
          .. "; echo second" } }))
      assert.same({ 0, "first\nsecond\n", "oops\n" }, { r.exitCode, r.stdout, r.stderr })
      assert.equal("first\n", log[1][2]) -- it opened the gate: the command went on after it
      assert.equal(r.stdout, helpers.logged(log, "stdout"))
      assert.equal(1, #servers())
    end)
  end)

  it("keeps every runner's output cap, truncated flag, signal exit and NUL refusal", function()
    run(function()
      local t = assert(remote.target({ host = "127.0.0.1", port = box.server.port,
        user = box.server.user, key = h.fake.key.private }))
      for _, r in ipairs({ "serve", "exec", "wrapper" }) do
        remote.settings.runner = r
        local streamed = {}
        local ctx = { config = {}, max_output = 1000, execution = {},
          emitter = function(_, stream)
            return function(chunk)
              streamed[stream] = (streamed[stream] or "") .. chunk
            end
          end,
          output = function(_, raw)
            return raw
          end }
        local res = assert(remote.execute(ctx, t, { command = "sh", args = { "-c",
          "head -c 300000 /dev/zero | tr '\\0' a; echo err >&2; exit 4" } },
          { scope = "cap", metadata = { provider = "ssh" } }))
        assert.equal(4, res.exitCode, r)
        assert.equal(("a"):rep(1000), res.stdout, r)
        assert.equal("err\n", res.stderr, r)
        assert.same({ provider = "ssh", truncated = true }, res.metadata, r)
        assert.equal(res.stdout, streamed.stdout, r) -- what is kept is what streamed
        res = assert(remote.execute(ctx, t, { command = "sh", args = { "-c", "kill -TERM $$" } },
          { scope = "cap" }))
        assert.same({ 143, null }, { res.exitCode, res.signal }, r) -- as sh's wait says it
      end
      remote.settings.runner = "serve"
      local ctx = { config = {}, emitter = function() end }
      local res, err, code = remote.execute(ctx, t, { command = "echo", args = { "a\0b" } },
        { scope = "cap" })
      assert.is_nil(res)
      assert.equal("protocol", code)
      assert.matches("NUL byte", err)
    end)
  end)

  it("falls back to ph-sandbox-helper exec where its serve does not start", function()
    run(function()
      local dir <close> = helpers.tempdir("ssh-helper-")
      -- a helper without serve: it says so and exits 2, as an older one does
      local old = dir.path .. "/ph-sandbox-helper"
      helpers.write_file(old, "#!/bin/sh\nif [ \"$1\" = serve ]; then echo 'usage: no serve' >&2; "
        .. "exit 2; fi\nexec " .. helpers.sandbox_helper() .. ' "$@"\n', "755")
      sandbox_helper.override = old
      local s = session()
      local _, lp = acquire(s)
      local starts = 0
      local real = ssh.open
      ssh.open = function(o)
        starts = starts + 1
        return real(o)
      end
      helpers.with_cleanup(function()
        for i = 1, 3 do
          local r = assert(s:call("environmentExecute", helpers.merged(PARENT,
            { config = config(), lease = lp, stdin = "in" })))
          assert.equal(0, r.exitCode, r.stderr)
          assert.truthy(r.stdout:find(" exec --ctl ", 1, true), "execute " .. i .. ": "
            .. r.stdout)
        end
      end, function()
        ssh.open = real
      end)
      assert.equal(1, starts) -- tried once for the lease, then exec straight away
      assert.equal(0, remote.servers_running())
      nothing_left()
    end)
  end)

  it("runs commands through exec or the wrapper when settings.runner says so", function()
    run(function()
      local s = session()
      remote.settings.runner = "exec"
      local lease, lp = acquire(s)
      assert.equal("ph-sandbox-helper", lease.metadata.commandRunner)
      local r = assert(s:call("environmentExecute", helpers.merged(PARENT,
        { config = config(), lease = lp })))
      assert.equal(helper_path() .. " exec --ctl ", r.stdout:sub(1, #helper_path() + 12))
      remote.settings.runner = "wrapper"
      remote.forget_helpers()
      local n = counting(function()
        lease, lp = acquire(s)
        assert.equal("sh-wrapper", lease.metadata.commandRunner)
        r = assert(s:call("environmentExecute", helpers.merged(PARENT,
          { config = config(), lease = lp })))
        assert.matches("^sh %-c paperclip_ctl=", r.stdout)
      end)
      assert.same({ checks = 0, uploads = 0 }, n)
      assert.same({}, servers())
    end)
  end)
end)
