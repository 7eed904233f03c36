-- spec/cli/package_spec.lua: the generated Paperclip plugin package, driven by Node as
-- Paperclip drives it (import the manifest, fork the shim, NDJSON on stdio).
local fs = require("host.fs")
local helpers = require("spec.helpers")
local json = require("host.json")
local proc = require("host.proc")
local util = require("host.util")

local function have_node()
  return helpers.run(function()
    local r = proc.run({ argv = { "sh", "-c", "command -v node" }, timeout = 10 })
    return r and r.exit_code == 0
  end)
end

describe("provider-host package", function()
  local dir, pkg

  setup(function()
    helpers.run(function()
      dir = assert(util.tempdir("spec-pkg-"))
      pkg = dir.path .. "/plugin"
      local r = assert(proc.run({
        argv = { helpers.binary(), "package", "local", "--out", pkg },
        timeout = 60,
      }))
      assert.equal(0, r.exit_code, r.stderr)
    end)
  end)

  teardown(function()
    if dir then
      dir:remove()
    end
  end)

  it("writes package.json naming the manifest and the worker", function()
    local p = assert(json.decode(assert(fs.read(pkg .. "/package.json"))))
    assert.equal("paperclip-plugin-local", p.name)
    assert.equal("module", p.type)
    assert.same({ manifest = "./dist/manifest.js", worker = "./dist/worker.js" }, p.paperclipPlugin)
    assert.equal("file", fs.stat(pkg .. "/bin/provider-host").type)
    assert.equal(tonumber("755", 8), fs.stat(pkg .. "/bin/provider-host").mode)
    assert.equal("file", fs.stat(pkg .. "/bin/provider-host-net.so").type)
    assert.equal("file", fs.stat(pkg .. "/lib/libcurl.so.4").type)
    assert.equal("file", fs.stat(pkg .. "/share/provider-host/lua/host/worker.lua").type)
    assert.equal("file", fs.stat(pkg .. "/share/provider-host/providers/local/init.lua").type)
  end)

  local function drive(mode)
    local r = assert(proc.run({
      argv = { "node", helpers.root .. "/spec/support/fork_shim.mjs", pkg, mode },
      timeout = 60,
    }))
    assert.equal(0, r.exit_code, r.stdout .. r.stderr)
    return assert(json.decode(r.stdout))
  end

  it("loads its network module from the package", function()
    helpers.run(function()
      local r = assert(proc.run({
        argv = {
          pkg .. "/bin/provider-host",
          "-e",
          'local h = require("host.core.http"); print(type(h.request))',
        },
        env = { PATH = os.getenv("PATH"), LD_LIBRARY_PATH = pkg .. "/lib" },
        timeout = 30,
      }))
      assert.equal(0, r.exit_code, r.stderr)
      assert.equal("function\n", r.stdout)
    end)
  end)

  it("starts through the shim with fork and serves a lease, then shuts down cleanly", function()
    if not have_node() then
      pending("node is not installed")
      return
    end
    helpers.run(function()
      local rep = drive("shutdown")
      assert.equal("provider-host.local", rep.manifestId)
      assert.equal("./dist/worker.js", rep.worker)
      assert.is_true(rep.initialize.ok)
      assert.equal("ok", rep.health.status)
      assert.equal("from-package\n", rep.stdout)
      assert.equal(json.null, rep.shutdown)
      assert.equal(0, rep.exit.code)
      assert.is_true(rep.exitMs < 1000, "exit took " .. rep.exitMs .. " ms")
    end)
  end)

  it("passes SIGTERM through the shim and exits 0", function()
    if not have_node() then
      pending("node is not installed")
      return
    end
    helpers.run(function()
      local rep = drive("sigterm")
      assert.equal(0, rep.exit.code)
    end)
  end)

  it("stops the native worker when the shim is killed", function()
    if not have_node() then
      pending("node is not installed")
      return
    end
    helpers.run(function()
      local rep = drive("kill-shim")
      assert.is_true(rep.nativeGone)
    end)
  end)
end)
