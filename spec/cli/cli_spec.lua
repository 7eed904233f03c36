-- spec/cli/cli_spec.lua: the provider-host command line, run as a user runs it.
local helpers = require("spec.helpers")
local json = require("host.json")
local proc = require("host.proc")

local BROKEN = helpers.root .. "/spec/fixtures/broken"

local function ph(args, opts)
  opts = opts or {}
  local argv = { helpers.binary() }
  for _, a in ipairs(args) do
    argv[#argv + 1] = a
  end
  return assert(proc.run({ argv = argv, stdin = opts.stdin, cwd = opts.cwd, timeout = 60 }))
end

describe("provider-host CLI", function()
  it("prints help and exits 0; no command is a usage error", function()
    helpers.run(function()
      local r = ph({ "--help" })
      assert.equal(0, r.exit_code)
      assert.matches("usage: provider%-host COMMAND", r.stdout)
      r = ph({})
      assert.equal(2, r.exit_code)
    end)
  end)

  it("prints its version", function()
    helpers.run(function()
      local r = ph({ "--version" })
      assert.equal(0, r.exit_code)
      assert.matches("^provider%-host %d+%.%d+%.%d+", r.stdout)
    end)
  end)

  it("exits 2 on an unknown command or option", function()
    helpers.run(function()
      local r = ph({ "frobnicate" })
      assert.equal(2, r.exit_code)
      assert.matches("unknown command 'frobnicate'", r.stderr)
      r = ph({ "worker", "--bogus" })
      assert.equal(2, r.exit_code)
      assert.matches("unknown option %-%-bogus", r.stderr)
      r = ph({ "worker" })
      assert.equal(2, r.exit_code)
    end)
  end)

  it("lists the built-in providers with their hooks", function()
    helpers.run(function()
      local r = ph({ "list" })
      assert.equal(0, r.exit_code)
      assert.matches("local%s+%S+/providers/local/init%.lua", r.stdout)
      assert.matches("hooks: probe, acquire_lease, resume_lease", r.stdout)
    end)
  end)

  it("checks a good provider", function()
    helpers.run(function()
      local r = ph({ "check", "local" })
      assert.equal(0, r.exit_code)
      assert.matches("^ok: local", r.stdout)
    end)
  end)

  it("checks a broken provider and reports every problem with file:line", function()
    helpers.run(function()
      local r = ph({ "check", BROKEN .. "/shape.lua" })
      assert.equal(1, r.exit_code)
      assert.matches('shape%.lua:%d+: unknown hook "exec"', r.stdout)
      assert.matches("shape%.lua: version must be", r.stdout)
      assert.matches("%d problems found", r.stdout)
      r = ph({ "check", BROKEN .. "/syntax.lua" })
      assert.equal(1, r.exit_code)
      assert.matches("syntax%.lua:4:", r.stdout)
    end)
  end)

  it("prints a manifest whose config schema comes from the Lua schema", function()
    helpers.run(function()
      local r = ph({ "manifest", "local" })
      assert.equal(0, r.exit_code)
      local m = assert(json.decode(r.stdout))
      assert.equal(1, m.apiVersion)
      assert.same({ "environment.drivers.register" }, m.capabilities)
      local d = m.environmentDrivers[1]
      assert.equal("local", d.driverKey)
      assert.equal("sandbox_provider", d.kind)
      assert.equal("object", d.configSchema.type)
      assert.equal(300000, d.configSchema.properties.timeoutMs.default)
      assert.is_true(d.sandboxCapabilities.reusableLeases)
      -- properties keep the schema's order, so Paperclip's form does too
      assert.is_true(r.stdout:find('"timeoutMs"', 1, true) < r.stdout:find('"shell"', 1, true))
    end)
  end)

  it("calls one method and prints the result as JSON", function()
    helpers.run(function()
      local r = ph({ "call", "local", "environmentValidateConfig", '{"config":{"timeoutMs":5}}' })
      assert.equal(0, r.exit_code)
      local res = assert(json.decode(r.stdout))
      assert.is_true(res.ok)
      assert.equal(5, res.normalizedConfig.timeoutMs)
      r = ph({ "call", "local", "environmentProbe", "-" }, { stdin = '{"config":{}}' })
      assert.equal(0, r.exit_code)
      assert.is_true(json.decode(r.stdout).ok)
    end)
  end)

  it("exits 1 with the error when a call fails, and 2 on bad JSON", function()
    helpers.run(function()
      local r = ph({
        "call",
        "local",
        "environmentExecute",
        '{"config":{},"lease":{"providerLeaseId":"/nope"},"command":"true"}',
      })
      assert.equal(1, r.exit_code)
      assert.matches("error %-32002: local sandbox /nope no longer exists", r.stderr)
      r = ph({ "call", "local", "environmentProbe", "{oops" })
      assert.equal(2, r.exit_code)
    end)
  end)

  it("scaffolds a provider that passes check and runs a command", function()
    helpers.run(function()
      local dir <close> = helpers.tempdir("spec-new-")
      local r = ph({ "new", "acme", "--dir", dir.path })
      assert.equal(0, r.exit_code)
      r = ph({ "check", dir.path .. "/acme.lua" })
      assert.equal(0, r.exit_code, r.stdout .. r.stderr)
      r = ph({ "new", "acme", "--dir", dir.path })
      assert.equal(1, r.exit_code)
      assert.matches("already exists", r.stderr)
      r =
        ph({ "call", "acme", "environmentAcquireLease", '{"config":{}}', "--providers", dir.path })
      assert.equal(0, r.exit_code, r.stderr)
      local lease = json.decode(r.stdout)
      r = ph({
        "call",
        "acme",
        "environmentExecute",
        json.encode({
          config = {},
          lease = lease,
          command = "sh",
          args = { "-c", "echo scaffolded" },
        }),
        "--providers",
        dir.path,
      })
      assert.equal(0, r.exit_code, r.stderr)
      assert.equal("scaffolded\n", json.decode(r.stdout).stdout)
      -- the hooks Paperclip calls whether or not they are advertised, and the release
      r = ph({ "call", "acme", "environmentProbe", '{"config":{}}', "--providers", dir.path })
      assert.equal(0, r.exit_code, r.stderr)
      assert.is_true(json.decode(r.stdout).ok)
      r = ph({ "call", "acme", "environmentRealizeWorkspace",
        json.encode({ config = {}, lease = lease, workspace = {} }), "--providers", dir.path })
      assert.equal(0, r.exit_code, r.stderr)
      assert.equal(lease.metadata.remoteCwd, json.decode(r.stdout).cwd)
      r = ph({ "call", "acme", "environmentReleaseLease", json.encode({ config = {},
        providerLeaseId = lease.providerLeaseId }), "--providers", dir.path })
      assert.equal(0, r.exit_code, r.stderr)
      assert.is_nil(require("host.fs").stat(lease.providerLeaseId))
    end)
  end)

  it("runs the demo to the end", function()
    helpers.run(function()
      local r = ph({ "demo" })
      assert.equal(0, r.exit_code, r.stdout .. r.stderr)
      assert.matches("acquire a lease", r.stdout)
      assert.matches("a timeout keeps the partial output", r.stdout)
      assert.matches("demo finished: every step behaved", r.stdout)
    end)
  end)

  it("runs a Lua script with every primitive, like lua", function()
    helpers.run(function()
      local r = ph({
        "-e",
        'local t = require("host.task"); print(t.run(function() t.sleep(0.01) return 7 end), ...)',
        "a",
        "b",
      })
      assert.equal(0, r.exit_code, r.stderr)
      assert.equal("7\ta\tb\n", r.stdout)
      r = ph({ "-e", "error('boom')" })
      assert.equal(1, r.exit_code)
      assert.matches("boom", r.stderr)
    end)
  end)
end)
