-- Specs for host.params and the worker's use of it: a hook only sees checked, normalized params,
-- and a cancel of an execution the worker tracks never reaches the provider's hook.
local client = require("host.client")
local helpers = require("spec.helpers")
local json = require("host.json")
local params = require("host.params")
local schema = require("host.schema")
local task = require("host.task")

local null = json.null

local function execute(p, provider)
  return params.normalize("environmentExecute", p, provider)
end

describe("host.params", function()
  it("turns JSON null into nil in objects, and keeps it in arrays", function()
    local p = assert(params.normalize("environmentAcquireLease", json.decode(
      '{"config":{"a":null,"b":{"c":null,"d":1}},"runId":null,"list":[null,1]}')))
    assert.is_nil(p.runId)
    assert.is_nil(p.config.a)
    assert.same({ d = 1 }, p.config.b)
    assert.equal(null, p.list[1])
    assert.equal(2, #p.list)
  end)

  it("hands hooks a lease ready to use, whatever the host sent", function()
    for _, lease in ipairs({ null, "x", json.array({}), { providerLeaseId = "", metadata = null },
      { providerLeaseId = 7, metadata = json.array({}) } }) do
      local p = assert(params.normalize("environmentRealizeWorkspace",
        { lease = lease, workspace = null }))
      assert.is_nil(p.lease.providerLeaseId)
      assert.same({}, p.lease.metadata)
      assert.same({}, p.workspace)
    end
    local p = assert(params.normalize("environmentReleaseLease",
      { providerLeaseId = "lease-1", leaseMetadata = null }))
    assert.equal("lease-1", p.providerLeaseId)
    assert.same({}, p.leaseMetadata)
  end)

  it("fills an execute's optional fields with one rule", function()
    local p = assert(execute({ command = "echo", args = null, env = null, cwd = "  ",
      timeoutMs = 1500.7, lease = {} }))
    assert.same({}, p.args)
    assert.same({}, p.env)
    assert.is_nil(p.cwd)
    assert.equal(1500, p.timeoutMs)
    assert.equal("integer", math.type(p.timeoutMs))
    for _, t in ipairs({ 0, -5, 0 / 0 }) do
      assert.is_nil(assert(execute({ command = "x", timeoutMs = t })).timeoutMs)
    end
    assert.equal("/w", assert(execute({ command = "x", cwd = "/w" })).cwd)
  end)

  it("takes a timeoutMs up to 24 hours, rounds a fraction down, refuses a longer one", function()
    assert.equal(100, assert(execute({ command = "x", timeoutMs = 100.5 })).timeoutMs)
    assert.equal(1, assert(execute({ command = "x", timeoutMs = 1.9 })).timeoutMs)
    local max = params.MAX_TIMEOUT_MS
    assert.equal(86400000, max)
    local at_max = assert(execute({ command = "x", timeoutMs = max + 0.0 })).timeoutMs
    assert.equal(max, at_max)
    assert.equal("integer", math.type(at_max))
    for _, c in ipairs({ { 1e15, "1000000000000000" }, { max + 1, "86400001" },
      { 2 ^ 63, "9.2233720368547758e+18" }, { math.huge, "a number beyond any limit" } }) do
      local ok, err = execute({ command = "x", timeoutMs = c[1] })
      assert.is_nil(ok)
      assert.equal("environmentExecute: timeoutMs must be at most 86400000 (24 hours), got "
        .. c[2], err)
    end
  end)

  it("refuses a timeoutMs or a cwd of the wrong type, naming it, never using a default", function()
    local cases = {
      { "1000", "got a string" },
      { true, "got a boolean" },
      { { 1 }, "got an array" },
      { { a = 1 }, "got an object" },
      { 5, "got a number" },
    }
    for _, c in ipairs(cases) do
      if type(c[1]) ~= "number" then
        local ok, err = execute({ command = "x", timeoutMs = c[1] })
        assert.is_nil(ok)
        assert.equal("environmentExecute: timeoutMs must be a number of milliseconds, " .. c[2],
          err)
      end
      if type(c[1]) ~= "string" then
        local ok, err = execute({ command = "x", cwd = c[1] })
        assert.is_nil(ok)
        assert.equal("environmentExecute: cwd must be a string, " .. c[2], err)
      end
    end
  end)

  it("leaves out env values that are not strings, as upstream does", function()
    local p = assert(execute({ command = "x", env = { A = "1", B = 2, C = true } }))
    assert.same({ A = "1" }, p.env)
  end)

  it("refuses a bad execute with a message that names the field", function()
    local cases = {
      { { command = "" }, "environmentExecute: command must be a non-empty string" },
      { { command = "a\0b" }, "environmentExecute: command contains a NUL byte" },
      { { command = "x", args = "a b" },
        "environmentExecute: args must be an array of strings, got a string" },
      { { command = "x", args = { a = "1" } },
        "environmentExecute: args must be an array of strings, got an object" },
      { { command = "x", args = 3 },
        "environmentExecute: args must be an array of strings, got a number" },
      { { command = "x", args = { "a", 2 } }, "environmentExecute: args[2] must be a string" },
      { { command = "x", args = { "a\0" } }, "environmentExecute: args[1] contains a NUL byte" },
      { { command = "x", env = json.array({ "A=1" }) },
        "environmentExecute: env must be an object of strings" },
      { { command = "x", env = { ["1A"] = "v" } },
        "Invalid sandbox environment variable key: 1A" },
      { { command = "x", env = { A = "a\0" } },
        "Sandbox environment variable A contains a NUL byte" },
      { { command = "x", stdin = 5 }, "environmentExecute: stdin must be a string" },
      { { command = "x", executionId = "  " },
        "Environment executionId must be a non-empty opaque string." },
      { { command = "x", executionId = ("e"):rep(513) },
        "Environment executionId exceeds the 512-character limit." },
    }
    for _, c in ipairs(cases) do
      local ok, err = execute(c[1])
      assert.is_nil(ok)
      assert.equal(c[2], err)
    end
    assert.truthy(execute({ command = "x", executionId = ("e"):rep(512) }))
    -- a null inside args, as the host's JSON carries it, is named, never dropped
    local _, err = execute(json.decode('{"command":"echo","args":[null,"x"]}'))
    assert.equal("environmentExecute: args[1] must be a string", err)
  end)

  it("names the provider's environment in a bad env key's message", function()
    local _, err = execute({ command = "x", env = { ["A-B"] = "v" } }, { env_label = "exe.dev" })
    assert.equal("Invalid exe.dev environment variable key: A-B", err)
  end)

  it("checks a cancel's executionId", function()
    local _, err = params.normalize("environmentCancelExecution", { lease = {} })
    assert.equal("Environment executionId must be a non-empty opaque string.", err)
  end)

  it("gives upstream's result for an execute without a lease id", function()
    assert.same({ exitCode = 1, timedOut = false, stdout = "",
      stderr = "No provider lease ID available for execution." }, params.no_lease_result())
    assert.equal(null, params.no_lease_result({ signal = null }).signal)
  end)
end)

describe("the worker with host.params", function()
  -- A provider whose execute waits until its tracked cancel runs, and that records what its
  -- hooks were given.
  local function recording_provider(seen)
    return {
      driver_key = "rec",
      display_name = "Recording",
      schema = schema.new({}),
      hooks = {
        execute = function(ctx, p)
          seen.execute = p
          local released = false
          ctx.execution.cancel = function()
            seen.tracked_cancels = (seen.tracked_cancels or 0) + 1
            released = true
          end
          helpers.eventually(function()
            return released
          end, "the tracked cancel", 20)
          return { exitCode = 130, timedOut = false, stdout = "", stderr = "" }
        end,
        cancel_execution = function(_, p)
          seen.hook_cancels = (seen.hook_cancels or 0) + 1
          return { executionId = p.executionId, cancelled = true }
        end,
      },
    }
  end

  it("calls the hook with normalized params, and answers a bad execute without calling it",
    function()
    helpers.run(function()
      local seen = {}
      local s = client.session({ recording_provider(seen) })
      local _, err = s:call("environmentExecute", { driverKey = "rec", config = {},
        lease = null, command = "x", args = { 1 } })
      assert.matches("args%[1%] must be a string", err.message)
      assert.is_nil(seen.execute)
    end)
  end)

  it("routes a cancel of a tracked execution to it, and only others to the hook", function()
    helpers.run(function()
      local seen = {}
      local s = client.session({ recording_provider(seen) })
      local t = task.spawn(function()
        return s:call("environmentExecute", { driverKey = "rec", config = {},
          lease = { providerLeaseId = "l1", metadata = null }, command = "sleep",
          args = null, env = null, executionId = "exec-1" })
      end)
      helpers.eventually(function()
        return seen.execute
      end, "the execute started")
      assert.same({}, seen.execute.args)
      assert.same({}, seen.execute.lease.metadata)
      local r = assert(s:call("environmentCancelExecution", { driverKey = "rec", config = {},
        lease = { providerLeaseId = "l1" }, executionId = "exec-1" }))
      assert.same({ executionId = "exec-1", cancelled = true }, r)
      assert.equal(130, assert(t:wait(20)).exitCode)
      assert.equal(1, seen.tracked_cancels)
      assert.is_nil(seen.hook_cancels)
      -- an execution this worker does not track goes to the provider's hook
      r = assert(s:call("environmentCancelExecution", { driverKey = "rec", config = {},
        lease = { providerLeaseId = "l1" }, executionId = "exec-elsewhere" }))
      assert.is_true(r.cancelled)
      assert.equal(1, seen.hook_cancels)
      assert.equal(1, seen.tracked_cancels)
    end)
  end)
end)
