-- spec/lua/docs_spec.lua: docs/providers.md, the provider contract, stays true to the code.
-- Every hook it documents is one the worker dispatches (providers.HOOKS / METHOD_OF, or an
-- extension hook), and every one it dispatches is documented under its protocol method; every
-- host.* module the loader lets providers require has a section, and every module function a
-- section names as `name(` exists; the worked example compiles.
local fs = require("host.fs")
local helpers = require("spec.helpers")
local providers = require("host.providers")

local DOC = helpers.root .. "/docs/providers.md"

-- The text of the "## TITLE" section of doc (up to the next "## " heading).
local function section(doc, title)
  local start = doc:find("\n## " .. title .. "\n", 1, true)
  assert(start, "docs/providers.md has no section ## " .. title)
  local stop = doc:find("\n## ", start + 1, true)
  return doc:sub(start, stop or #doc)
end

-- {name = {arg = "(...)" text, body = text}} for every "### `name` ..." heading of text, in
-- order as a list of names too.
local function subsections(text)
  local out, order = {}, {}
  local pos = 1
  while true do
    local s, e, name, rest = text:find("\n### `([^`]+)`([^\n]*)", pos)
    if not s then
      break
    end
    local next_s = text:find("\n### ", e + 1, true) or #text + 1
    out[name] = { rest = rest, body = text:sub(e + 1, next_s - 1) }
    order[#order + 1] = name
    pos = e + 1
  end
  return out, order
end

-- The modules the loader lets a provider require: its "no module" error lists them.
local function facades()
  local dir <close> = helpers.tempdir("ph-docs-")
  local path = dir.path .. "/probe.lua"
  assert(fs.write(path, 'require("host.no_such_module")\nreturn {}\n'))
  local p, problems = providers.load_file(path, "probe")
  assert.is_nil(p)
  local list = table.concat(problems, "\n"):match("%(available: ([^)]+)%)")
  assert(list, "the loader's error no longer lists the modules: " .. table.concat(problems))
  local out = {}
  for name in list:gmatch("[^,%s]+") do
    out[#out + 1] = name
  end
  return out
end

describe("docs/providers.md", function()
  local doc = assert(fs.read(DOC))

  it("documents every hook the worker dispatches, under its protocol method", function()
    local hooks = subsections(section(doc, "Hooks"))
    for _, pair in ipairs(providers.HOOKS) do
      local h = hooks[pair[1]]
      assert.is_table(h, "no section for the hook " .. pair[1])
      assert.equal(" (" .. pair[2] .. ")", h.rest, pair[1] .. "'s heading names its method")
      assert.truthy(h.body:find("Params", 1, true), pair[1] .. " does not say its params")
    end
    for name in pairs(providers.EXTENSION_HOOKS) do
      assert.is_table(hooks[name], "no section for the extension hook " .. name)
      assert.equal(" (extension)", hooks[name].rest)
    end
  end)

  it("names only hooks the worker dispatches", function()
    local _, order = subsections(section(doc, "Hooks"))
    assert.is_true(#order > 0)
    for _, name in ipairs(order) do
      assert.is_true(providers.METHOD_OF[name] ~= nil or providers.EXTENSION_HOOKS[name] == true,
        name .. " is documented but the worker does not dispatch it")
    end
  end)

  it("names only protocol methods the worker serves", function()
    local known = { environmentId = true } -- a field of every request, not a method
    for _, pair in ipairs(providers.HOOKS) do
      known[pair[2]] = true
    end
    for method in doc:gmatch("environment%u%a+") do
      assert.is_true(known[method] == true, method .. " is not a method the worker serves")
    end
  end)

  it("has a section for every host.* module a provider may require", function()
    local modules, order = subsections(section(doc, "Host API"))
    local allowed = {}
    for _, name in ipairs(facades()) do
      allowed[name] = true
      assert.is_table(modules[name], "no section for " .. name)
    end
    for _, name in ipairs(order) do
      assert.is_true(allowed[name], name .. " is documented but providers cannot require it")
    end
  end)

  it("names only functions each module has", function()
    local modules = subsections(section(doc, "Host API"))
    local not_module = { fn = true, tonumber = true }
    for name, m in pairs(modules) do
      local mod = require(name)
      for fname in m.body:gmatch("`([%a_][%w_]*)%(") do
        if not not_module[fname] then
          assert.is_not_nil(mod[fname], ("%s.%s is documented but does not exist"):format(
            name, fname))
        end
      end
    end
  end)

  it("has a worked example of a cancellable execute that compiles", function()
    local text = section(doc, "Worked example: a cancellable execute")
    local code = assert(text:match("```lua\n(.-)```"), "no Lua block")
    assert.truthy(code:find("ctx.execution.cancel", 1, true))
    local chunk, err = load("local hooks = {}\n" .. code, "=example", "t", {})
    assert(chunk, err)
  end)
end)
