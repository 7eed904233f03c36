-- spec/providers/exe-dev/helper_spec.lua: ph-sandbox-helper on exe.dev VMs (issue 9): installed
-- once per lease (at acquire and resume, or at the first execute), said in the lease's
-- commandRunner, running every command (one `serve` per lease, stopped at release and
-- destroy), given to the bridge by hooks.sandbox_helper, `exec` where serve does not start,
-- and the shell wrapper where it cannot run. The fake's VMs are real sshd processes on
-- loopback with private HOMEs, so what is uploaded really runs. Order is asserted, never time.
local fake_exedev = require("spec.support.fake_exedev")
local fs = require("host.fs")
local helpers = require("spec.helpers")
local json = require("host.json")
local provider = require("providers.exe-dev")
local remote = require("host.remote")
local sandbox_helper = require("host.sandbox_helper")
local ssh = require("host.ssh")
local task = require("host.task")

local null = json.null

-- The command that prints the command line of its parent: the runner that started it.
local PARENT = { command = "sh", args = { "-c", 'tr "\\0" " " < /proc/$PPID/cmdline' } }

local SERVE = "\0serve\0--ctl-base\0" -- in the command line of ph-sandbox-helper serve

-- Processes whose command line contains text (zombies have none); servers = true: only the
-- command servers, false: everything else.
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

-- The pids a command wrote into path, once there are n.
local function pids_written(path, n)
  return helpers.eventually(function()
    local list = {}
    for pid in (fs.read(path) or ""):gmatch("%d+") do
      list[#list + 1] = pid
    end
    return #list >= n and list
  end, n .. " pids in " .. path)
end

local function all_gone(pids)
  for _, pid in ipairs(pids) do
    helpers.eventually(function()
      return not helpers.alive(pid)
    end, "process " .. pid .. " stopped")
  end
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

local function helper_path(vm)
  local sha = assert(sandbox_helper.sha256())
  return vm.home .. "/.paperclip/bin/ph-sandbox-helper-" .. sha:sub(1, 16)
end

-- "<path> serve --ctl-base " at the head of a command's parent's command line: the helper's
-- server ran it.
local function ran_by_helper(vm, stdout)
  local head = helper_path(vm) .. " serve --ctl-base "
  return stdout:sub(1, #head) == head
end

describe("providers.exe-dev ph-sandbox-helper #ssh", function()
  local h = fake_exedev.harness({ ssh = true })

  local function lease_params(lease)
    return { providerLeaseId = lease.providerLeaseId, metadata = lease.metadata }
  end

  -- The ctx an execute on lease lp has: what the bridge hooks get.
  local function hook_ctx(s, lp)
    return s.worker:context(provider, "environmentExecute", { config = h.config(), lease = lp },
      nil, 120)
  end

  -- Nothing of the VM's commands is left: no process (but its command server), no control
  -- dir.
  local function nothing_left(vm)
    h.eventually(function()
      return #processes_with(vm.home, false) == 0
        and #(fs.list(vm.home .. "/.paperclip-executions") or {}) == 0
    end, "no process or control dir left")
  end

  before_each(function()
    remote.forget_helpers() -- VMs of earlier specs are gone; their ports come back
  end)

  after_each(function()
    sandbox_helper.override = nil
    helpers.run(remote.close_servers)
  end)

  it("installs it at acquire, once, and runs every command of the lease with it", function()
    h.run(function()
      local s = h.session()
      local lease, lp, vm
      local n = counting(function()
        lease = assert(h.acquire(nil, nil, s))
        assert.equal("ph-sandbox-helper serve", lease.metadata.commandRunner)
        vm = h.fake:vm(lease.providerLeaseId)
        local path = helper_path(vm)
        assert.equal(tonumber("755", 8), fs.stat(path).mode & tonumber("777", 8))
        assert.is_true(helpers.read_file(path) == helpers.read_file(helpers.sandbox_helper()))
        lp = lease_params(lease)
        for _ = 1, 2 do
          local r = assert(h.execute(vm, helpers.merged(PARENT, { lease = lp }), s))
          assert.equal(0, r.exitCode, r.stderr)
          assert.is_true(ran_by_helper(vm, r.stdout), r.stdout)
          -- the result is upstream's: the runner is said in the lease only
          assert.same({ provider = "exe-dev", vmName = vm.name, sshDest = "127.0.0.1" },
            r.metadata)
        end
        assert.equal(path, provider.hooks.sandbox_helper(hook_ctx(s, lp), { lease = lp }))
      end)
      assert.same({ checks = 1, uploads = 1 }, n)
      -- resumed by a restarted worker: found on the VM, not sent again
      remote.forget_helpers()
      n = counting(function()
        local r = assert(s:call("environmentResumeLease", { config = h.config(),
          providerLeaseId = lease.providerLeaseId, leaseMetadata = lease.metadata }))
        assert.equal("ph-sandbox-helper serve", r.metadata.commandRunner)
        assert.is_true(r.metadata.resumedLease)
        r = assert(h.execute(vm, helpers.merged(PARENT, { lease = lp }), s))
        assert.is_true(ran_by_helper(vm, r.stdout), r.stdout)
      end)
      assert.same({ checks = 1, uploads = 0 }, n)
      nothing_left(vm)
    end)
  end)

  it("installs it at the first execute on a lease this worker did not acquire", function()
    h.run(function()
      local vm = h.fake:create_vm("vm-1")
      local s = h.session()
      local before = ssh.stats().connects
      local n = counting(function()
        local fns = {}
        for i = 1, 5 do -- at once: one install serves them all
          fns[i] = function()
            return h.execute(vm, PARENT, s)
          end
        end
        for _, res in ipairs(task.all(fns)) do
          local r = assert(res[1])
          assert.is_true(ran_by_helper(vm, r.stdout), r.stdout)
        end
      end)
      assert.same({ checks = 1, uploads = 1 }, n)
      assert.equal(1, ssh.stats().connects - before) -- all on the VM's pooled session
      nothing_left(vm)
    end)
  end)

  it("cancels and times out through the helper, and leaves nothing behind", function()
    h.run(function()
      local vm = h.fake:create_vm("vm-1")
      local s = h.session()
      local parent, pids = vm.home .. "/parent", vm.home .. "/pids"
      local function script(extra)
        return "tr '\\0' ' ' < /proc/$PPID/cmdline > " .. parent .. "; sleep 60 & echo $! > "
          .. pids .. "; echo $$ >> " .. pids .. "; echo go; " .. extra
      end
      local a = task.spawn(function()
        return h.execute(vm, { executionId = "exec-a", command = "sh",
          args = { "-c", script("sleep 60") } }, s)
      end)
      pids_written(pids, 2)
      assert.is_true(ran_by_helper(vm, assert(fs.read(parent))))
      assert.same({ executionId = "exec-a", cancelled = true }, assert(s:call(
        "environmentCancelExecution", { config = h.config(), lease = h.lease(vm),
          executionId = "exec-a" })))
      local r = assert(a:wait(30))
      assert.equal(143, r.exitCode)
      all_gone(pids_written(pids, 2)) -- the silent child too
      nothing_left(vm)
      assert(os.remove(pids))
      r = assert(h.execute(vm, { command = "sh",
        args = { "-c", script("while :; do sleep 1; done") }, timeoutMs = 700 }, s))
      assert.is_true(r.timedOut)
      assert.equal(null, r.exitCode)
      assert.equal("go\n", r.stdout)
      assert.equal("Command timed out after 700ms\n", r.stderr)
      assert.is_true(ran_by_helper(vm, assert(fs.read(parent))))
      all_gone(pids_written(pids, 2))
      nothing_left(vm)
    end)
  end)

  it("runs a lease's commands on one server; release and destroy stop it", function()
    h.run(function()
      local s = h.session()
      local cfg = h.config({ reuseLease = true })
      local lease = assert(h.acquire(cfg, nil, s))
      local vm, lp = h.fake:vm(lease.providerLeaseId), lease_params(lease)
      local fns = {}
      for i = 1, 30 do -- more at once than sshd's 10 sessions per connection
        fns[i] = function()
          return h.execute(vm, { config = cfg, lease = lp, command = "sh",
            args = { "-c", "cat; exit " .. i % 5 }, stdin = "in" .. i }, s)
        end
      end
      for i, res in ipairs(task.all(fns)) do
        local r = assert(res[1])
        assert.same({ i % 5, "in" .. i }, { r.exitCode, r.stdout })
      end
      local first = processes_with(vm.home, true)
      assert.equal(1, #first)
      -- released, kept for reuse: its server stops; the next execute starts another
      assert.equal(null, s:call("environmentReleaseLease", { config = cfg,
        providerLeaseId = lease.providerLeaseId }))
      h.eventually(function()
        return #processes_with(vm.home, true) == 0
      end, "the server stopped at release")
      local r = assert(h.execute(vm, helpers.merged(PARENT, { config = cfg, lease = lp }), s))
      assert.is_true(ran_by_helper(vm, r.stdout), r.stdout)
      local second = processes_with(vm.home, true)
      assert.equal(1, #second)
      assert.are_not.equal(first[1], second[1])
      assert.equal(null, s:call("environmentDestroyLease", { config = cfg,
        providerLeaseId = lease.providerLeaseId }))
      h.eventually(function()
        return #processes_with(vm.home, true) == 0 and remote.servers_running() == 0
      end, "the server stopped at destroy")
    end)
  end)

  it("runs commands through exec where the helper's serve does not start", function()
    h.run(function()
      local dir <close> = helpers.tempdir("exedev-helper-")
      -- a helper without serve: it says so and exits 2, as an older one does
      local old = dir.path .. "/ph-sandbox-helper"
      helpers.write_file(old, "#!/bin/sh\nif [ \"$1\" = serve ]; then echo 'usage: no serve' >&2; "
        .. "exit 2; fi\nexec " .. helpers.sandbox_helper() .. ' "$@"\n', "755")
      sandbox_helper.override = old
      local vm = h.fake:create_vm("vm-1")
      local s = h.session()
      for _ = 1, 2 do
        local r = assert(h.execute(vm, PARENT, s))
        assert.equal(0, r.exitCode, r.stderr)
        -- (the old helper execs the real one: its exec is the command's parent)
        assert.truthy(r.stdout:find("ph%-sandbox%-helper exec %-%-ctl "), r.stdout)
      end
      local r = assert(h.execute(vm, { command = "sh", args = { "-c", "sleep 60" },
        timeoutMs = 300 }, s))
      assert.is_true(r.timedOut)
      assert.equal(0, remote.servers_running())
      nothing_left(vm)
    end)
  end)

  it("falls back to the shell wrapper where the helper does not run", function()
    h.run(function()
      local dir <close> = helpers.tempdir("exedev-helper-")
      -- what a binary for another architecture does: it cannot even say its version
      local bogus = dir.path .. "/ph-sandbox-helper"
      helpers.write_file(bogus, "#!/bin/sh\necho 'cannot execute binary file' >&2\nexit 126\n",
        "755")
      sandbox_helper.override = bogus
      local s = h.session()
      local n = counting(function()
        local lease = assert(h.acquire(nil, nil, s))
        assert.equal("sh-wrapper", lease.metadata.commandRunner)
        local vm, lp = h.fake:vm(lease.providerLeaseId), lease_params(lease)
        for _ = 1, 2 do
          local r = assert(h.execute(vm, helpers.merged(PARENT, { lease = lp }), s))
          assert.equal(0, r.exitCode, r.stderr)
          assert.matches("^sh %-c paperclip_ctl=", r.stdout) -- the wrapper started it
        end
        local path, err, code = provider.hooks.sandbox_helper(hook_ctx(s, lp), { lease = lp })
        assert.is_nil(path)
        assert.equal("unsupported", code)
        assert.matches("cannot be used on VM paperclip%-env1%-run1: it does not run there: "
          .. "cannot execute binary file", err)
        nothing_left(vm)
      end)
      assert.same({ checks = 1, uploads = 1 }, n) -- and never tried again for the lease
    end)
  end)

  it("does not install it for a probe, whose VM is deleted at once", function()
    h.run(function()
      local n = counting(function()
        local r = assert(h.session():call("environmentProbe", { config = h.config() }))
        assert.is_true(r.ok)
        assert.is_nil(r.metadata.commandRunner)
      end)
      assert.same({ checks = 0, uploads = 0 }, n)
    end)
  end)
end)
