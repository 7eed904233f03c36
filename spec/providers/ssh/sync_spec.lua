-- spec/providers/ssh/sync_spec.lua: native sync (host.sync_tar) on the ssh provider, against a
-- real sshd on loopback (a VM of the fake exe.dev), with the shared sync contract.
local contract = require("spec.support.sync_contract")
local fake_exedev = require("spec.support.fake_exedev")
local helpers = require("spec.helpers")
local provider = require("providers.ssh")
local remote = require("host.remote")


local h = fake_exedev.harness({ ssh = true })

local function world(fn)
  h.run(function()
    local box = h.fake:create_vm("box")
    local config = { host = "127.0.0.1", port = box.server.port, user = box.server.user,
      privateKey = h.fake.key.private, timeoutMs = 30000 }
    local s = require("host.client").session({ provider })
    local lease = assert(s:call("environmentAcquireLease", { config = config, runId = "r" }))
    local w = { s = s, config = config, lease_dir = lease.providerLeaseId, config_cap = true,
      lp = { providerLeaseId = lease.providerLeaseId, metadata = lease.metadata } }
    w.ws = lease.providerLeaseId .. "/workspace"
    w.box = lease.providerLeaseId .. "/home"
    w.marker = box.home
    w.except = "serve --ctl-base" -- the lease's command server
    helpers.with_cleanup(fn, function()
      s:call("environmentDestroyLease", { config = config,
        providerLeaseId = lease.providerLeaseId })
      remote.close_servers()
    end, w)
  end)
end

describe("providers.ssh #ssh", function()
  before_each(function()
    remote.forget_helpers()
  end)

  it("declares native sync in its manifest", function()
    local caps = require("host.cli.manifest").build(provider)
      .environmentDrivers[1].sandboxCapabilities
    assert.is_true(caps.nativeSyncIn)
    assert.is_true(caps.nativeSyncOut)
  end)

  contract.describe("providers.ssh", world, { describe = describe, it = it })
end)
