-- spec/providers/e2b/sync_spec.lua: native sync (host.sync_tar) on E2B sandboxes (the fake
-- E2B runs envd's processes on this machine, stdin streamed with SendInput), with the shared
-- sync contract. The fake maps only cwd and the files API: commands see real paths, so the
-- specs name the sandbox by its real directory, as the fake allows.
local contract = require("spec.support.sync_contract")
local fs = require("host.fs")
local harness = require("spec.support.e2b_harness")
local helpers = require("spec.helpers")
local provider = require("providers.e2b")

local h = harness.new({ logs = "warn" })
after_each(h.assert_none_running)


local function world(fn)
  h.run(function()
    local s = harness.session()
    local lease, lp = harness.acquire(s)
    local sb = h.fake:sandbox(lease.providerLeaseId)
    local w = { s = s, config = harness.config(), lp = lp }
    w.ws = lease.metadata.remoteCwd -- the fake's pwd prints the real path
    assert.equal(sb.root, w.ws:sub(1, #sb.root))
    w.box = sb.root .. "/box"
    assert(fs.mkdir(w.box))
    w.marker = sb.root
    helpers.with_cleanup(fn, function()
      harness.destroy(s, lease.providerLeaseId)
    end, w)
  end)
end

describe("providers.e2b", function()
  it("declares native sync in its manifest (upstream's plugin has none)", function()
    local caps = require("host.cli.manifest").build(provider)
      .environmentDrivers[1].sandboxCapabilities
    assert.is_true(caps.nativeSyncIn)
    assert.is_true(caps.nativeSyncOut)
  end)

  contract.describe("providers.e2b", world, { describe = describe, it = it })
end)
