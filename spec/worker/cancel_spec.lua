-- spec/worker/cancel_spec.lua: environmentCancelExecution needs no hook for the executions the
-- worker runs itself: a provider with an execute that sets ctx.execution.cancel is cancelable,
-- and says so in initialize's supportedMethods.
local client = require("host.client")
local helpers = require("spec.helpers")
local providers = require("host.providers")
local schema = require("host.schema")
local task = require("host.task")

-- A provider whose execute waits until its cancel runs (or 10 s), and has no cancel hook.
local function provider(state)
  return {
    driver_key = "fake",
    display_name = "Fake",
    version = "0.0.0",
    schema = schema.new({}),
    hooks = {
      execute = function(ctx)
        local stop = task.signal()
        local canceled = false
        ctx.execution.cancel = function()
          canceled = true
          stop:notify()
        end
        state.started = true
        stop:wait(10)
        return { exitCode = canceled and 130 or 0, timedOut = false, stdout = "", stderr = "" }
      end,
    },
  }
end

describe("host.worker cancel", function()
  it("cancels a tracked execution of a provider without a cancel_execution hook", function()
    helpers.run(function()
      local state = {}
      local p = provider(state)
      local methods = providers.supported_methods({ p })
      local listed = false
      for _, m in ipairs(methods) do
        listed = listed or m == "environmentCancelExecution"
      end
      assert.is_true(listed)
      local s = client.session({ p })
      local lease = { providerLeaseId = "l", metadata = {} }
      local exec = task.spawn(function()
        return s:call("environmentExecute", { config = {}, lease = lease, command = "x",
          executionId = "e1" })
      end)
      helpers.eventually(function()
        return state.started
      end, "the execute runs")
      local r = assert(s:call("environmentCancelExecution", { config = {}, lease = lease,
        executionId = "e1" }))
      assert.same({ executionId = "e1", cancelled = true }, r)
      assert.equal(130, assert(exec:wait(10)).exitCode)
      r = assert(s:call("environmentCancelExecution", { config = {}, lease = lease,
        executionId = "e2" }))
      assert.same({ executionId = "e2", cancelled = false }, r) -- not ours: nothing to stop
    end)
  end)
end)
