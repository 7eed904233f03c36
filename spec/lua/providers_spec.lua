-- spec/lua/providers_spec.lua: loading and checking provider scripts.
local helpers = require("spec.helpers")
local providers = require("host.providers")

local BROKEN = helpers.root .. "/spec/fixtures/broken"
local FIXTURES = helpers.root .. "/spec/fixtures/providers"

local function joined(problems)
  return table.concat(problems, "\n")
end

-- refusal(name) -> the problems loading the broken fixture `name` reports, as one text; and
-- their list. Asserts that it did not load.
local function refusal(name)
  local p, problems = providers.load(BROKEN .. "/" .. name .. ".lua")
  assert.is_nil(p)
  return joined(problems), problems
end

describe("host.providers", function()
  it("loads the built-in local provider by name", function()
    local p = assert(providers.load("local"))
    assert.equal("local", p.driver_key)
    assert.is_function(p.hooks.execute)
    assert.matches("/providers/local/init%.lua$", p.path)
  end)

  it("loads every built-in provider through the sandboxed loader", function()
    local found = providers.discover({ helpers.root .. "/providers" })
    assert.is_true(#found >= 4)
    for _, f in ipairs(found) do
      local p, problems = providers.load(f.name)
      assert.is_table(p, f.name .. ": " .. table.concat(problems or {}, "\n"))
    end
  end)

  it("loads a one-file provider from a path", function()
    local p = assert(providers.load(FIXTURES .. "/echo.lua"))
    assert.equal("echo", p.driver_key)
    assert.equal("1.2.3", p.version)
  end)

  it("reports a syntax error with file and line", function()
    assert.matches("syntax%.lua:4:", (refusal("syntax")))
  end)

  it("reports every contract problem at once", function()
    local text, problems = refusal("shape")
    assert.matches('driver_key must equal the provider\'s name "shape"', text)
    assert.matches("version must be a semver", text)
    assert.matches('unknown hook "exec"', text)
    assert.matches('hook "execute" must be a function', text)
    assert.matches('unknown capability "teleport"', text)
    assert.matches("shape%.lua:%d+: unknown hook", text) -- the hook's own line
    assert.is_true(#problems >= 5)
  end)

  it("keeps providers away from host.core modules", function()
    local text = refusal("core")
    assert.matches("core%.lua:2:", text)
    assert.matches("cannot use host%.core%.proc", text)
  end)

  it("locks globals: an assignment is reported once, at its line; the rest is checked", function()
    local text, problems = refusal("global")
    assert.matches('global%.lua:2: assignment to global "helper"', text)
    assert.equal(1, select(2, text:gsub('global "helper"', "")), text)
    assert.matches("schema is missing", text)
    assert.equal(2, #problems, text)
  end)

  it("keeps the unsandboxed standard modules away from providers", function()
    local dir <close> = helpers.tempdir("spec-std-")
    helpers.write_file(dir.path .. "/std.lua",
      'local os2 = require("os")\nlocal dbg = require("debug")\nreturn { os2, dbg }\n')
    local p, problems = providers.load(dir.path .. "/std.lua")
    assert.is_nil(p)
    assert.matches('std%.lua:2: provider "std" cannot use debug: it is not available',
      joined(problems))
  end)

  it("raises when a hook reads an undeclared global", function()
    local dir <close> = helpers.tempdir("spec-typo-")
    helpers.write_file(
      dir.path .. "/typo.lua",
      'return { driver_key = "typo", schema = require("host.schema").new({}),\n'
        .. "  hooks = { probe = function() return undefined_thing end } }\n"
    )
    local p = assert(providers.load(dir.path .. "/typo.lua"))
    local ok, err = pcall(p.hooks.probe)
    assert.is_false(ok)
    assert.matches('typo%.lua:2: provider "typo": unknown global "undefined_thing"', err)
  end)

  it("finds providers on the search path, earlier directories first", function()
    local dir <close> = helpers.tempdir("spec-path-")
    helpers.write_file(dir.path .. "/echo.lua",
      'return { driver_key = "echo", schema = require("host.schema").new({}), hooks = {} }')
    local dirs = providers.search_path({ FIXTURES, dir.path })
    local path = providers.locate("echo", dirs)
    assert.equal(FIXTURES .. "/echo.lua", path)
    local found = providers.discover(dirs)
    local shadowed
    for _, e in ipairs(found) do
      if e.name == "echo" and e.dir == dir.path then
        shadowed = e.shadowed_by
      end
    end
    assert.equal(FIXTURES .. "/echo.lua", shadowed)
  end)

  it("rejects names that are not driver keys", function()
    local p, problems = providers.load("Bad Name")
    assert.is_nil(p)
    assert.matches("invalid provider name", problems[1])
  end)

  it("names a missing provider and where it looked", function()
    local _, problems = providers.load("nosuch")
    assert.matches('provider "nosuch" not found %(searched .*providers', problems[1])
  end)

  it("lists the methods its hooks serve", function()
    local p = assert(providers.load(FIXTURES .. "/echo.lua"))
    assert.same({
      "health",
      "environmentValidateConfig",
      "environmentProbe",
      "environmentAcquireLease",
      "environmentReleaseLease",
      "environmentExecute",
      "environmentCancelExecution", -- the worker cancels the executions it runs itself
    }, providers.supported_methods({ p }))
  end)

  it("refuses host.core modules to a hook at run time too, not only to the main chunk", function()
    local p = assert(providers.load(helpers.root .. "/spec/fixtures/providers/sneaky.lua"))
    local r = helpers.run(function()
      return require("host.client").call(p, "environmentProbe", { config = {} })
    end)
    assert.is_false(r.ok)
    assert.matches("cannot use host%.core%.proc", r.summary)
  end)
end)
