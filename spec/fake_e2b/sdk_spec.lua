-- spec/fake_e2b/sdk_spec.lua: the fake E2B must be indistinguishable from the real service for
-- the real `e2b` JS SDK. Runs spec/e2b_sdk/check_fake.mjs (Node) against this very binary and
-- asserts that every check passed. Needs Node and `npm ci --prefix spec/e2b_sdk`: without them
-- this spec fails, saying what to run. Tagged #sdk; on a Node older than the SDK needs
-- (20.18.1: Debian bookworm's own nodejs is 18) it is pending, with a message saying why.
local fs = require("host.fs")
local helpers = require("spec.helpers")
local json = require("host.json")
local proc = require("host.proc")

local SDK_DIR = helpers.root .. "/spec/e2b_sdk"
local INSTALL = "run `npm ci --prefix spec/e2b_sdk` (Node and npm from Debian's nodejs/npm)"
local NODE_NEEDED = { 20, 18, 1 } -- the e2b SDK 2.51.0's engines field

-- node's version as { major, minor, patch }, or nil when node does not run.
local function node_version()
  local r = helpers.run(function()
    return proc.run({ argv = { "node", "--version" }, timeout = 30 })
  end)
  if not r then
    return nil
  end
  local a, b, c = r.stdout:match("^v(%d+)%.(%d+)%.(%d+)")
  return a and { tonumber(a), tonumber(b), tonumber(c) }
end

local function older(v, than)
  for i = 1, 3 do
    if v[i] ~= than[i] then
      return v[i] < than[i]
    end
  end
  return false
end

describe("fake_e2b against the real e2b JS SDK #sdk", function()
  it("passes every check of spec/e2b_sdk/check_fake.mjs", function()
    local v = node_version()
    if v and older(v, NODE_NEEDED) then
      pending(("skipped: the e2b SDK needs Node >= %s, this machine has %s"):format(
        table.concat(NODE_NEEDED, "."), table.concat(v, ".")))
      return
    end
    assert(fs.stat(SDK_DIR .. "/node_modules/e2b/package.json"),
      "the e2b SDK is not installed in spec/e2b_sdk/node_modules: " .. INSTALL)
    local saved = helpers.deadline
    helpers.deadline = 300
    local ok, err = pcall(helpers.run, function()
      local r, msg = proc.run({
        argv = { "node", SDK_DIR .. "/check_fake.mjs", helpers.binary() },
        cwd = helpers.root,
        timeout = 280,
        max_output = 16 * 1024 * 1024,
      })
      assert(r, "cannot run node (" .. tostring(msg) .. "): install Node, then " .. INSTALL)
      local last = r.stdout:match("([^\n]+)\n?$") or ""
      local report = json.decode(last)
      assert(type(report) == "table", "check_fake.mjs printed no report (exit "
        .. tostring(r.exit_code) .. "):\n" .. r.stdout .. r.stderr)
      local failed = {}
      for _, c in ipairs(report.checks or {}) do
        if not c.ok then
          failed[#failed + 1] = c.name .. ": " .. tostring(c.error)
        end
      end
      assert(report.ok == true and r.exit_code == 0, ("the SDK check failed (exit %s, sdk %s):"
        .. "\n%s\n%s\nstderr:\n%s"):format(tostring(r.exit_code), tostring(report.sdkVersion),
        tostring(report.error or ""), table.concat(failed, "\n"), r.stderr))
      assert.are.equal("2.51.0", report.sdkVersion)
      assert.is_true(report.passed >= 20)
    end)
    helpers.deadline = saved
    if not ok then
      error(err, 0)
    end
  end)
end)
