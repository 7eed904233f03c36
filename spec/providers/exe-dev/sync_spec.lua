-- spec/providers/exe-dev/sync_spec.lua: native sync (host.sync_tar) on exe.dev VMs (the fake
-- exe.dev's VMs are real sshds on loopback), with the shared sync contract.
local contract = require("spec.support.sync_contract")
local fake_exedev = require("spec.support.fake_exedev")
local fs = require("host.fs")
local helpers = require("spec.helpers")
local provider = require("providers.exe-dev")
local remote = require("host.remote")

local SERVE = "\0serve\0--ctl-base\0" -- in the command line of ph-sandbox-helper serve

-- Processes (not command servers) whose command line contains text.
local function processes_with(text)
  local found = {}
  for _, name in ipairs(fs.list("/proc") or {}) do
    local cmdline = name:find("^%d+$") and helpers.read_file("/proc/" .. name .. "/cmdline")
    if cmdline and cmdline:find(text, 1, true) and not cmdline:find(SERVE, 1, true) then
      found[#found + 1] = tonumber(name)
    end
  end
  return found
end

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
    w.processes = function()
      return processes_with(vm.home)
    end
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
