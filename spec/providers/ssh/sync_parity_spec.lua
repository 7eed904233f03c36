-- spec/providers/ssh/sync_parity_spec.lua: upstream's REAL host-side sandbox runtime
-- (@paperclipai/adapter-utils from npm: prepareAdapterExecutionTargetRuntime and its
-- restoreWorkspace) over our worker's `ssh` provider, with native sync (environmentSyncIn /
-- environmentSyncOut: host.sync_tar's tar streams over the SSH connection) and with the
-- runtime's own tar + base64 fallback over environmentExecute, must produce the same
-- workspace: spec/providers/local/sync_parity_spec.lua's run (spec.support.sync_parity) with
-- `drive_sync.mjs --provider ssh --config ...`.
-- The machine is this one: a real sshd on loopback running as this user (spec.support.sshd),
-- so the lease directories (under workspaceRoot, in this spec's temp dir) are local paths the
-- driver reads directly. The worker is a separate process: its SSH account is the real one
-- (the password database, not $HOME), so the config names a known_hosts file in the temp dir,
-- and the spec checks that the account's real ~/.ssh was left as it was.
-- Needs Node and `npm ci --prefix spec/queue_bridge` (else pending), sshd and ssh-keygen.
local cmdline = require("spec.support.cmdline")
local fs = require("host.fs")
local helpers = require("spec.helpers")
local json = require("host.json")
local queue_bridge = require("spec.support.queue_bridge")
local sshd = require("spec.support.sshd")
local sync_parity = require("spec.support.sync_parity")
local sys = require("host.core.sys")

local processes_mentioning = cmdline.holding

-- The processes whose parent is pid (sshd's connections: each a child of the listener).
local function children(pid)
  local out = {}
  for _, name in ipairs(fs.list("/proc") or {}) do
    local stat = name:find("^%d+$") and fs.read("/proc/" .. name .. "/stat")
    if stat and tonumber(stat:match("%) %S+ (%d+)")) == pid then
      out[#out + 1] = tonumber(name)
    end
  end
  return out
end

-- What is in dir (the real account's ~/.ssh): name -> type, size, mtime, mode; or "absent".
local function state_of(dir)
  if not fs.stat(dir, false) then
    return "absent"
  end
  local out = {}
  for _, name in ipairs(fs.list(dir) or {}) do
    local st = fs.stat(dir .. "/" .. name, false) or {}
    out[name] = { type = st.type, size = st.size, mtime = st.mtime, mode = st.mode }
  end
  return out
end

describe("upstream's sandbox runtime (@paperclipai/adapter-utils) over ssh: native sync "
  .. "and the fallback give the same workspace #node #ssh", function()
  it("sync in, a change in the sandbox, sync out: same manifests in both modes", function()
    local why = queue_bridge.unavailable()
    if why then
      pending(why)
      return
    end
    local saved = helpers.deadline
    helpers.deadline = 280
    local ok, err = pcall(helpers.run, function()
      if not sshd.available() then
        error("this spec needs a real sshd (" .. sshd.sshd .. " and ssh-keygen): install "
          .. "openssh-server, as .ci/run does", 0)
      end
      local account = assert(sys.account())
      local real_ssh_dir = account.home:gsub("/+$", "") .. "/.ssh"
      local real_ssh_before = state_of(real_ssh_dir)

      local tmp = helpers.tempdir("ph-ssh-sync-parity-")
      local tmp_path = tmp.path
      local server, server_dir, server_pid
      local report, left, known_hosts, accepted
      helpers.with_cleanup(function()
        server = sshd.start()
        server_dir, server_pid = server.dir, server.pid
        local key = sshd.keygen(tmp_path, "client", "ed25519")
        server:authorize(key.public)
        local leases = tmp_path .. "/leases"
        assert(fs.mkdir(leases, tonumber("700", 8)))
        local config = {
          host = "127.0.0.1", port = server.port, user = server.user,
          privateKey = key.private,
          knownHostsFile = tmp_path .. "/known_hosts",
          hostKeyPolicy = "accept-new",
          workspaceRoot = leases,
          timeoutMs = 60000,
        }
        report = sync_parity.drive(tmp_path,
          { "--provider", "ssh", "--config-env", "PH_DRIVE_CONFIG" },
          { PH_DRIVE_CONFIG = json.encode(config) })
        -- the leases were made (and removed) where the config said, over this sshd
        assert.same({ assert(fs.realpath(leases)) }, report.leaseRoots)
        for _, mode in ipairs({ "native", "fallback" }) do
          assert.matches("^" .. report.leaseRoots[1]:gsub("%p", "%%%0") .. "/paperclip%-%x+$",
            report.modes[mode].providerLeaseId)
        end
        known_hosts = fs.read(config.knownHostsFile)
        accepted = server:count("Accepted publickey")
        helpers.eventually(function()
          left = { processes = processes_mentioning(tmp_path),
            sandbox_processes = processes_mentioning(server.home),
            connections = children(server_pid),
            dirs = fs.list(tmp_path .. "/node-tmp"),
            leases = fs.list(leases) }
          if report.workerPid and helpers.alive(report.workerPid) then
            left.processes[#left.processes + 1] = report.workerPid
          end
          return #left.processes == 0 and #left.sandbox_processes == 0
            and #left.connections == 0 and #left.dirs == 0 and #left.leases == 0
        end, "everything the run started gone", 10)
      end, function()
        if server then
          server:close()
        end
        tmp:remove()
      end)
      assert.same({ processes = {}, sandbox_processes = {}, connections = {}, dirs = {},
        leases = {} }, left)
      assert.is_nil(fs.stat(tmp_path))
      assert.is_false(helpers.alive(server_pid))
      assert.is_nil(fs.stat(server_dir))
      -- the worker used the config's known_hosts (it recorded the new host there) and left the
      -- real account's ~/.ssh alone
      assert.matches("[127.0.0.1]:" .. server.port .. " ", known_hosts, 1, true)
      assert.same(real_ssh_before, state_of(real_ssh_dir))
      assert.is_true(accepted >= 1)

      sync_parity.check(report, "ssh")
    end)
    helpers.deadline = saved
    if not ok then
      error(err, 0)
    end
  end)
end)
