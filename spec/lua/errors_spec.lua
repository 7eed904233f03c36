-- spec/lua/errors_spec.lua: one closed list of error codes, used by the host and providers.
local client = require("host.client")
local errors = require("host.errors")
local fs = require("host.fs")
local helpers = require("spec.helpers")
local schema = require("host.schema")

-- Every .lua file under dir, recursively.
local function lua_files(dir, out)
  out = out or {}
  for _, name in ipairs(fs.list(dir) or {}) do
    local path = dir .. "/" .. name
    local st = fs.stat(path, false)
    if st and st.type == "directory" then
      lua_files(path, out)
    elseif name:find("%.lua$") then
      out[#out + 1] = path
    end
  end
  return out
end

describe("host.errors", function()
  it("lists the codes with what each means", function()
    for _, code in ipairs({ "timeout", "closed", "canceled", "upstream", "config", "not_found",
      "conflict", "unavailable" }) do
      assert.is_true(errors.is_code(code), code)
      assert.is_string(errors.CODES[code])
    end
    assert.is_false(errors.is_code("error"))
  end)

  it("is the only vocabulary of the failures the host and the providers return", function()
    local files = lua_files(helpers.root .. "/providers")
    lua_files(helpers.root .. "/lua/host", files)
    local seen = 0
    for _, path in ipairs(files) do
      local n = 0
      for line in io.lines(path) do
        n = n + 1
        local code = line:match('^%s*return nil, .*, "([%w_]+)"$')
        if code then
          seen = seen + 1
          assert.is_true(errors.is_code(code), ("%s:%d returns %q"):format(path, n, code))
        end
      end
    end
    assert.is_true(seen > 20, "the scan found the failures it reads")
  end)

  it("makes the worker warn when a hook returns a code outside the list", function()
    helpers.run(function()
      local logged = {}
      require("host.log").set_sink(function(level, message)
        logged[#logged + 1] = level .. ": " .. message
      end)
      local p = { driver_key = "odd", display_name = "Odd", version = "0.0.0",
        schema = schema.new({}), hooks = {
          acquire_lease = function()
            return nil, "no luck", "bogus"
          end,
        } }
      local ok, err = client.session({ p }):call("environmentAcquireLease", { config = {} })
      require("host.log").set_sink(nil)
      assert.is_nil(ok)
      assert.equal("no luck", err.message)
      assert.truthy(table.concat(logged, "\n"):find("error code bogus", 1, true))
    end)
  end)
end)
