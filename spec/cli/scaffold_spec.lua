-- spec/cli/scaffold_spec.lua: `provider-host new NAME` writes a provider that works as written:
-- it passes `check`, answers a whole lease lifecycle through `call`, cancels an execution
-- through the worker, and packages. Everything runs the binary, as an operator would.
local fs = require("host.fs")
local helpers = require("spec.helpers")
local json = require("host.json")
local proc = require("host.proc")
local task = require("host.task")

-- ph(dir, args [, timeout]) -> proc.run's result for provider-host ARGS, run in dir.
local function ph(dir, args, timeout)
  local argv = { helpers.binary() }
  table.move(args, 1, #args, 2, argv)
  return assert(proc.run({ argv = argv, cwd = dir, timeout = timeout or 60 }))
end

-- call(dir, method, params) -> the decoded result of `provider-host call acme METHOD JSON`.
-- An execute's call exits with the command's status (124 for a timeout), so any status
-- with a result on stdout is an answer there.
local function call(dir, method, params)
  local r = ph(dir, { "call", "acme", method, json.encode(params), "--providers", dir })
  local answered = method == "environmentExecute" and json.decode(r.stdout) ~= nil
  assert(r.exit_code == 0 or answered, ("%s exited %s: %s%s"):format(method, tostring(r.exit_code),
    r.stdout, r.stderr))
  return assert(json.decode(r.stdout))
end

-- A fresh directory with acme.lua written by `provider-host new acme --dir DIR`.
local function scaffolded()
  local dir = helpers.tempdir("ph-scaffold-")
  local r = ph(dir.path, { "new", "acme", "--dir", dir.path })
  assert.equal(0, r.exit_code, r.stderr)
  assert.truthy(fs.stat(dir.path .. "/acme.lua"), "acme.lua was not written")
  return dir
end

describe("provider-host new", function()
  it("writes every hook Paperclip calls, each pointing to docs/providers.md", function()
    helpers.run(function()
      local dir <close> = scaffolded()
      local text = assert(fs.read(dir.path .. "/acme.lua"))
      for _, hook in ipairs({ "validate_config", "probe", "acquire_lease", "resume_lease",
        "release_lease", "destroy_lease", "realize_workspace", "execute", "cancel_execution" }) do
        assert.truthy(text:find("function hooks." .. hook .. "(", 1, true), hook .. " missing")
        assert.truthy(text:find("docs/providers.md: `" .. hook .. "`", 1, true),
          hook .. " does not point to its section of docs/providers.md")
      end
      -- the sections it points to exist
      local doc = assert(fs.read(helpers.root .. "/docs/providers.md"))
      for hook in text:gmatch("docs/providers%.md: `([%w_]+)`") do
        assert.truthy(doc:find("\n### `" .. hook .. "`", 1, true), "no section for " .. hook)
      end
      -- a second `new` of the same name refuses to overwrite it
      local r = ph(dir.path, { "new", "acme", "--dir", dir.path })
      assert.is_not.equal(0, r.exit_code)
      assert.matches("already exists", r.stderr)
    end)
  end)

  it("passes check", function()
    helpers.run(function()
      local dir <close> = scaffolded()
      local r = ph(dir.path, { "check", dir.path .. "/acme.lua" })
      assert.equal(0, r.exit_code, r.stdout .. r.stderr)
      assert.matches("ok: acme", r.stdout)
      assert.matches("probe", r.stdout)
      assert.matches("realize_workspace", r.stdout)
    end)
  end)

  it("answers a whole lease lifecycle through call", function()
    helpers.run(function()
      local dir <close> = scaffolded()
      local v = call(dir.path, "environmentValidateConfig", { config = {} })
      assert.is_true(v.ok)
      assert.equal(300000, v.normalizedConfig.timeoutMs)
      v = call(dir.path, "environmentValidateConfig", { config = { timeoutMs = 0 } })
      assert.is_false(v.ok)
      local probe = call(dir.path, "environmentProbe", { config = {} })
      assert.is_true(probe.ok)

      local lease = call(dir.path, "environmentAcquireLease", { config = {}, runId = "r1" })
      local id = lease.providerLeaseId
      assert.is_string(id)
      assert.truthy(fs.stat(id), "the lease's sandbox does not exist")
      local ref = { providerLeaseId = id, metadata = lease.metadata }

      local ws = call(dir.path, "environmentRealizeWorkspace", { config = {}, lease = ref,
        workspace = { remotePath = id .. "/work" } })
      assert.equal(lease.metadata.remoteCwd, ws.cwd)

      local ex = call(dir.path, "environmentExecute", { config = {}, lease = ref,
        command = "sh", args = { "-c", "pwd; printf '%s' \"$GREETING\" >&2" },
        env = { GREETING = "hi" }, cwd = ws.cwd, executionId = "e1" })
      assert.equal(0, ex.exitCode)
      assert.is_false(ex.timedOut)
      assert.equal(ws.cwd .. "\n", ex.stdout)
      assert.equal("hi", ex.stderr)

      ex = call(dir.path, "environmentExecute", { config = {}, lease = ref,
        command = "sleep", args = { "5" }, timeoutMs = 200 })
      assert.is_true(ex.timedOut)
      assert.equal(json.null, ex.exitCode)

      local resumed = call(dir.path, "environmentResumeLease", { config = {},
        providerLeaseId = id, leaseMetadata = lease.metadata })
      assert.equal(id, resumed.providerLeaseId)

      assert.equal(json.null, call(dir.path, "environmentReleaseLease", { config = {},
        providerLeaseId = id, leaseMetadata = lease.metadata }))
      assert.is_nil(fs.stat(id), "release did not delete the sandbox")
      assert.equal(json.null, call(dir.path, "environmentDestroyLease", { config = {},
        providerLeaseId = id, leaseMetadata = lease.metadata }))
      local gone = call(dir.path, "environmentResumeLease", { config = {},
        providerLeaseId = id })
      assert.equal(json.null, gone.providerLeaseId)
      assert.is_true(gone.metadata.expired)
    end)
  end)

  it("cancels a running execute by its executionId through the worker", function()
    helpers.run(function()
      local dir <close> = scaffolded()
      local lease = call(dir.path, "environmentAcquireLease", { config = {} })
      local ref = { providerLeaseId = lease.providerLeaseId, metadata = lease.metadata }
      local out, sig = "", task.signal()
      local w = assert(proc.spawn({
        argv = { helpers.binary(), "worker", "--provider", "acme", "--providers", dir.path },
        stdin = true, timeout = 60,
        on_stdout = function(chunk)
          out = out .. chunk
          sig:notify()
        end,
      }))
      local function send(msg)
        assert(w:write(json.encode(msg) .. "\n"))
      end
      local function reply(id)
        local deadline = task.now() + 20
        while task.now() < deadline do
          for line in out:gmatch("[^\n]+") do
            local m = json.decode(line)
            if type(m) == "table" and m.id == id then
              return m
            end
          end
          sig:wait(1)
        end
        error("no reply to request " .. id .. "; got: " .. out)
      end
      send({ jsonrpc = "2.0", id = 1, method = "initialize",
        params = { manifest = {}, config = {} } })
      reply(1)
      local started = task.now()
      send({ jsonrpc = "2.0", id = 2, method = "environmentExecute", params = {
        driverKey = "acme", config = {}, lease = ref, command = "sleep", args = { "30" },
        executionId = "long-1" } })
      task.sleep(0.5)
      send({ jsonrpc = "2.0", id = 3, method = "environmentCancelExecution", params = {
        driverKey = "acme", config = {}, lease = ref, executionId = "long-1" } })
      local c = reply(3)
      assert.is_true(c.result.cancelled, json.encode(c))
      local ex = reply(2)
      assert.is_table(ex.result, json.encode(ex))
      assert.equal(json.null, ex.result.exitCode)
      assert.equal("SIGTERM", ex.result.signal)
      assert.is_true(task.now() - started < 10)
      w:close_stdin()
      w:wait(10)
      w:close()
      call(dir.path, "environmentDestroyLease", { config = {},
        providerLeaseId = lease.providerLeaseId })
    end)
  end)

  it("packages", function()
    helpers.run(function()
      local dir <close> = scaffolded()
      local pkg = dir.path .. "/pkg"
      local r = ph(dir.path, { "package", "acme", "--out", pkg, "--providers", dir.path })
      assert.equal(0, r.exit_code, r.stdout .. r.stderr)
      local manifest = assert(json.decode(assert(fs.read(pkg .. "/package.json"))))
      assert.is_table(manifest)
      local found = false
      for _, name in ipairs(assert(fs.list(pkg), "no package directory")) do
        found = found or name == "dist"
      end
      assert.is_true(found, "the package has no dist/")
    end)
  end)
end)
