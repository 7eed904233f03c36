-- spec/providers/exe-dev/sync_spec.lua: native sync (host.sync_tar) on exe.dev VMs (the fake
-- exe.dev's VMs are real sshds on loopback), with the shared sync contract.
local contract = require("spec.support.sync_contract")
local fake_exedev = require("spec.support.fake_exedev")
local fs = require("host.fs")
local helpers = require("spec.helpers")
local provider = require("providers.exe-dev")
local remote = require("host.remote")


local h = fake_exedev.harness({ ssh = true })

local function world(fn)
  h.run(function()
    local s = h.session()
    local config = h.config()
    local lease = assert(h.acquire(config, nil, s))
    local vm = assert(h.fake.vms[lease.providerLeaseId])
    local w = { s = s, config = config,
      lp = { providerLeaseId = lease.providerLeaseId, metadata = lease.metadata } }
    w.ws = lease.metadata.remoteCwd
    w.box = vm.home .. "/box"
    assert(fs.mkdir(w.box))
    w.marker = vm.home
    w.except = "serve --ctl-base" -- the lease's command server
    helpers.with_cleanup(fn, function()
      s:call("environmentDestroyLease", { config = config,
        providerLeaseId = lease.providerLeaseId })
      remote.close_servers()
    end, w)
  end)
end

describe("providers.exe-dev #ssh", function()
  before_each(function()
    remote.forget_helpers()
  end)

  it("declares native sync in its manifest (upstream's plugin has none)", function()
    local caps = require("host.cli.manifest").build(provider)
      .environmentDrivers[1].sandboxCapabilities
    assert.is_true(caps.nativeSyncIn)
    assert.is_true(caps.nativeSyncOut)
  end)

  contract.describe("providers.exe-dev", world, { describe = describe, it = it })
end)
