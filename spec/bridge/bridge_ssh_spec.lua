-- spec/bridge/bridge_ssh_spec.lua: an execute with params.bridge on the SSH providers (exe-dev
-- and ssh), whose machines are the fake exe.dev's VMs: real sshd processes on loopback with
-- private HOMEs. The relay runs there through a duplex SSH channel of the pooled session; the
-- command calls the fake Paperclip API through it; afterwards no relay runs.
local fake_exedev = require("spec.support.fake_exedev")
local fake_paperclip = require("spec.support.fake_paperclip")
local fs = require("host.fs")
local helpers = require("spec.helpers")
local json = require("host.json")
local remote = require("host.remote")
local ssh_provider = require("providers.ssh")

local KEY = "ssh-bridge-real-key-0123456789abcd"

-- The agent: curl with the env the bridge gave, printing the body then the status.
local AGENT = { command = "sh", args = { "-c", [[curl -sS -w '\n%{http_code}' ]]
  .. [[-H "Authorization: Bearer $PAPERCLIP_API_KEY" "$PAPERCLIP_API_URL/api/agents/me"]] } }

-- Relays running for a VM's home (its helper lives there).
local function relays_in(home)
  local found = 0
  for _, name in ipairs(fs.list("/proc") or {}) do
    local cmdline = name:find("^%d+$") and helpers.read_file("/proc/" .. name .. "/cmdline")
    if cmdline and cmdline:find(home, 1, true) and cmdline:find("relay", 1, true) then
      found = found + 1
    end
  end
  return found
end

local function check_call(r, api)
  assert.equal(0, r.exitCode, r.stderr)
  local body, status = r.stdout:match("^(.*)\n(%d+)$")
  assert.equal("200", status, r.stdout)
  assert.equal("run-9", json.decode(body).runId)
  assert.equal("Bearer " .. KEY, api:last().headers.authorization)
  assert.not_matches(KEY, r.stdout, 1, true)
end

describe("the bridge on SSH providers #ssh", function()
  local h = fake_exedev.harness({ ssh = true })

  before_each(function()
    remote.forget_helpers()
  end)

  it("exe-dev: the command calls the API through a relay on the VM", function()
    h.run(function()
      local api <close> = fake_paperclip.start({ api_key = KEY })
      local s = h.session()
      local lease = assert(h.acquire(nil, nil, s))
      local vm = h.fake:vm(lease.providerLeaseId)
      local lp = { providerLeaseId = lease.providerLeaseId, metadata = lease.metadata }
      for _ = 1, 2 do -- the second reuses the helper installed for the lease
        local r = assert(h.execute(vm, helpers.merged(AGENT, { lease = lp,
          bridge = { apiUrl = api.url, apiKey = KEY, runId = "run-9" } }), s))
        check_call(r, api)
      end
      assert.equal(2, #api.requests)
      h.eventually(function()
        return relays_in(vm.home) == 0
      end, "no relay left on the VM")
    end)
  end)

  it("ssh: the command calls the API through a relay on the machine", function()
    h.run(function()
      local api <close> = fake_paperclip.start({ api_key = KEY })
      local box = h.fake:create_vm("box")
      local config = { host = "127.0.0.1", port = box.server.port, user = box.server.user,
        privateKey = h.fake.key.private, timeoutMs = 30000 }
      local s = require("host.client").session({ ssh_provider })
      local lease = assert(s:call("environmentAcquireLease", { config = config, runId = "r" }))
      local lp = { providerLeaseId = lease.providerLeaseId, metadata = lease.metadata }
      local r = assert(s:call("environmentExecute", helpers.merged(AGENT, { config = config,
        lease = lp, bridge = { apiUrl = api.url, apiKey = KEY, runId = "run-9" } })))
      check_call(r, api)
      h.eventually(function()
        return relays_in(box.home) == 0
      end, "no relay left on the machine")
      assert(s:call("environmentDestroyLease", { config = config,
        providerLeaseId = lease.providerLeaseId, leaseMetadata = lease.metadata }))
    end)
  end)
end)
