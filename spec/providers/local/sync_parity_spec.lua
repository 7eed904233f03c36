-- spec/providers/local/sync_parity_spec.lua: upstream's REAL host-side sandbox runtime
-- (@paperclipai/adapter-utils from npm: prepareAdapterExecutionTargetRuntime and its
-- restoreWorkspace) over our worker's `local` provider, with native sync (environmentSyncIn /
-- environmentSyncOut) and with the runtime's own tar + base64 fallback over
-- environmentExecute, must produce the same workspace (issue 12, item 4).
-- spec/queue_bridge/drive_sync.mjs plays the server: it runs `provider-host worker` with PATH
-- and a private TMPDIR only, syncs one host workspace (plus an asset and a referenced project)
-- into a lease, changes things in the sandbox, syncs back out, once per mode, and reports
-- manifests (path, type, mode, size, sha256, link target) and the worker's requests by method.
-- Upstream picks native sync when the sandbox runner has both syncIn and syncOut (the server
-- adds them when the lease's capabilities say nativeSyncIn/nativeSyncOut); the driver's
-- fallback mode builds the runner without them.
-- Needs Node and `npm ci --prefix spec/queue_bridge`; without them the case is pending.
-- The driver and the judging of its report are shared with the ssh parity spec
-- (spec.support.sync_parity).
local cmdline = require("spec.support.cmdline")
local fs = require("host.fs")
local helpers = require("spec.helpers")
local queue_bridge = require("spec.support.queue_bridge")
local sync_parity = require("spec.support.sync_parity")

local unavailable = queue_bridge.unavailable
local processes_mentioning = cmdline.holding

describe("upstream's sandbox runtime (@paperclipai/adapter-utils) over local: native sync "
  .. "and the fallback give the same workspace #node", function()
  it("sync in, a change in the sandbox, sync out: same manifests in both modes", function()
    local why = unavailable()
    if why then
      pending(why)
      return
    end
    local saved = helpers.deadline
    helpers.deadline = 280
    local ok, err = pcall(helpers.run, function()
      local tmp = helpers.tempdir("ph-sync-parity-")
      local tmp_path = tmp.path
      local report, left
      helpers.with_cleanup(function()
        report = sync_parity.drive(tmp_path)
        helpers.eventually(function()
          left = { processes = processes_mentioning(tmp_path),
            dirs = fs.list(tmp_path .. "/node-tmp") }
          if report.workerPid and helpers.alive(report.workerPid) then
            left.processes[#left.processes + 1] = report.workerPid
          end
          return #left.processes == 0 and #left.dirs == 0
        end, "everything the run started gone", 10)
      end, function()
        tmp:remove()
      end)
      assert.same({ processes = {}, dirs = {} }, left)
      assert.is_nil(fs.stat(tmp_path))

      sync_parity.check(report, "local")
    end)
    helpers.deadline = saved
    if not ok then
      error(err, 0)
    end
  end)
end)
