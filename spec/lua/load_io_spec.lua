-- spec/lua/load_io_spec.lua: a provider's main chunk only declares. I/O there (a process, a
-- network call, a file read or written) is a problem that names its file:line, and it does
-- not happen, even when the loader runs inside a task (as under the CLI, where every primitive
-- works). Every problem of a file is reported once, by the Lua API and by `provider-host check`.
local helpers = require("spec.helpers")
local providers = require("host.providers")
local proc = require("host.proc")

local FIXTURES = helpers.root .. "/spec/fixtures/load_io"

-- install(name, dir, url) -> path of a copy of fixture `name` in dir, with @DIR@ and @URL@
-- replaced (its lines unchanged).
local function install(name, dir, url)
  local text = assert(helpers.read_file(FIXTURES .. "/" .. name .. ".lua"))
  text = text:gsub("@DIR@", dir):gsub("@URL@", url or "http://127.0.0.1:9")
  local path = dir .. "/" .. name .. ".lua"
  helpers.write_file(path, text)
  return path
end

-- refusal(path) -> problems (array), as the loader reports them from inside a task.
local function refusal(path)
  local p, problems = helpers.run(function()
    return providers.load(path)
  end)
  assert.is_nil(p, "the provider loaded")
  return problems
end

-- check(path) -> exit code, stdout of `provider-host check path` (from inside a task).
local function check(path)
  local r = assert(proc.run({ argv = { helpers.binary(), "check", path }, timeout = 60 }))
  return r.exit_code, r.stdout .. r.stderr
end

local function exists(path)
  return require("host.fs").stat(path) ~= nil
end

local function count(text, pattern)
  local n = 0
  for _ in text:gmatch(pattern) do
    n = n + 1
  end
  return n
end

describe("a provider's main chunk doing I/O", function()
  it("writes no file, and the problem names the line", function()
    local dir <close> = helpers.tempdir("spec-loadio-")
    local path = install("writes", dir.path)
    local problems = refusal(path)
    assert.same({
      path .. ":6: host.fs.write cannot run while the provider loads (main chunk, line 6): "
        .. "call it from a hook",
    }, problems)
    assert.is_false(exists(dir.path .. "/written"))
    local code, out = helpers.run(check, path)
    assert.equal(1, code)
    assert.matches("writes%.lua:6: host%.fs%.write cannot run while the provider loads", out)
    assert.matches("1 problem found", out, 1, true)
    assert.is_false(exists(dir.path .. "/written"))
  end)

  it("starts no process", function()
    local dir <close> = helpers.tempdir("spec-loadio-")
    local path = install("spawns", dir.path)
    local text = table.concat(refusal(path), "\n")
    assert.matches("spawns%.lua:6: host%.proc%.run cannot run while the provider loads "
      .. "%(main chunk, line 6%): call it from a hook", text)
    assert.matches("spawns%.lua:7: host%.proc%.spawn cannot run", text)
    local code, out = helpers.run(check, path)
    assert.equal(1, code)
    assert.matches("spawns%.lua:6: host%.proc%.run", out)
    assert.matches("spawns%.lua:7: host%.proc%.spawn", out)
    assert.matches("2 problems found", out, 1, true)
    helpers.run(function()
      require("host.task").sleep(0.2) -- a process that had started would have touched by now
    end)
    assert.is_false(exists(dir.path .. "/ran"))
    assert.is_false(exists(dir.path .. "/spawned"))
  end)

  it("makes no HTTP request: the server sees nothing", function()
    local dir <close> = helpers.tempdir("spec-loadio-")
    local seen = {}
    helpers.serving({
      handler = function(req)
        seen[#seen + 1] = req.path
        return 200, {}, "hi"
      end,
    }, function(srv)
      local path = install("requests", dir.path, srv.url)
      local p, problems = providers.load(path) -- inside the serving task
      assert.is_nil(p)
      assert.matches("requests%.lua:6: host%.http%.request cannot run while the provider loads "
        .. "%(main chunk, line 6%)", table.concat(problems, "\n"))
      local code, out = check(path)
      assert.equal(1, code)
      assert.matches("requests%.lua:6: host%.http%.request cannot run", out)
      assert.equal(0, srv:stats().requests)
    end)
    assert.same({}, seen)
  end)

  it("reports every problem of a file once", function()
    local dir <close> = helpers.tempdir("spec-loadio-")
    local path = install("several", dir.path)
    local problems = refusal(path)
    local p = path:gsub("%p", "%%%0")
    assert.equal(4, #problems, table.concat(problems, "\n"))
    assert.matches("^" .. p .. ":8: io%.open cannot run while the provider loads", problems[1])
    assert.matches("^" .. p .. ":10: host%.proc%.shell cannot run", problems[2])
    assert.matches("^" .. p .. ':12: assignment to global "counter"', problems[3])
    assert.matches("^" .. p .. ":14: host%.fs%.write cannot run", problems[4])
    local code, out = helpers.run(check, path)
    assert.equal(1, code)
    assert.matches("4 problems found", out, 1, true)
    for _, line in ipairs(problems) do
      assert.equal(1, count(out, (line:gsub("%p", "%%%0"))), line)
    end
    for _, f in ipairs({ "opened", "shelled", "asserted" }) do
      assert.is_false(exists(dir.path .. "/" .. f), f)
    end
  end)

  -- One line of I/O in an otherwise valid provider: what it is refused as.
  local CALLS = {
    { "host.proc", "proc.run({ argv = { 'touch', D .. '/x' } })", "host.proc.run" },
    { "host.proc", "proc.spawn({ argv = { 'touch', D .. '/x' } })", "host.proc.spawn" },
    { "host.http", "http.request({ url = 'http://127.0.0.1:9/' })", "host.http.request" },
    { "host.http", "http.serve({ handler = function() end })", "host.http.serve" },
    { "host.ssh", "ssh.exec({ host = '127.0.0.1', port = 9, user = 'u', command = 'true' })",
      "host.ssh.exec" },
    { "host.ssh", "ssh.open({ host = '127.0.0.1', port = 9, user = 'u' })", "host.ssh.open" },
    { "host.fs", "fs.write(D .. '/x', 'data')", "host.fs.write" },
    { "host.fs", "fs.mkdir(D .. '/x')", "host.fs.mkdir" },
    { "host.fs", "fs.mkdirs(D .. '/x/y')", "host.fs.mkdirs" },
    { "host.fs", "fs.remove_tree(D .. '/keep')", "host.fs.remove_tree" },
    { "host.fs", "fs.read(D .. '/keep')", "host.fs.read" },
    { "host.fs", "fs.list(D)", "host.fs.list" },
    { "host.util", "util.mkdtemp(D .. '/x')", "host.util.mkdtemp" },
    { "host.remote", "remote.run({}, 'true')", "host.remote.run" },
    { "host.remote", "remote.execute({}, {}, {})", "host.remote.execute" },
    { "host.duplex", "duplex.process({ argv = { 'touch', D .. '/x' } })", "host.duplex.process" },
    { "host.task", "task.spawn(function() end)", "host.task.spawn" },
    { nil, "io.open(D .. '/x', 'w')", "io.open" },
    { nil, "require('os').execute('touch ' .. D .. '/x')", "os" },
  }

  it("refuses each I/O primitive, inside a task too, and nothing happens", function()
    local dir <close> = helpers.tempdir("spec-loadio-")
    helpers.write_file(dir.path .. "/keep", "kept")
    for i, c in ipairs(CALLS) do
      local name = "call" .. i
      local var = c[1] and c[1]:match("[^.]+$")
      local path = dir.path .. "/" .. name .. ".lua"
      helpers.write_file(path, table.concat({
        ("local D = %q"):format(dir.path),
        var and ("local %s = require(%q)"):format(var, c[1]) or "local _ = nil",
        c[2],
        ('return { driver_key = %q, schema = require("host.schema").new({}), hooks = {} }')
          :format(name),
      }, "\n"))
      local problems = refusal(path)
      local text = table.concat(problems, "\n")
      if c[3] == "os" then
        assert.matches(name .. '%.lua:3: attempt to call a nil value %(field \'execute\'%)', text)
      else
        assert.same({
          ("%s:3: %s cannot run while the provider loads (main chunk, line 3): call it from a "
            .. "hook"):format(path, c[3]),
        }, problems, c[2])
      end
      assert.is_false(exists(dir.path .. "/x"), c[2])
      assert.equal("kept", helpers.read_file(dir.path .. "/keep"), c[2])
    end
  end)

  it("lets the same calls run from a hook once the provider loaded", function()
    local dir <close> = helpers.tempdir("spec-loadio-")
    local path = dir.path .. "/later.lua"
    helpers.write_file(path, table.concat({
      'local fs = require("host.fs")',
      'local proc = require("host.proc")',
      "local write = fs.write",
      "return { driver_key = 'later', schema = require('host.schema').new({}), hooks = {",
      "  probe = function(_, params)",
      "    assert(write(params.dir .. '/w', 'ok'))",
      "    local r = assert(proc.run({ argv = { 'cat', params.dir .. '/w' } }))",
      "    return { ok = r.stdout == 'ok' }",
      "  end } }",
    }, "\n"))
    local p = assert(providers.load(path))
    local res = helpers.run(function()
      return p.hooks.probe({}, { dir = dir.path })
    end)
    assert.is_true(res.ok)
  end)
end)
