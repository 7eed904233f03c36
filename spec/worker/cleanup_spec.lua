-- spec/worker/cleanup_spec.lua: the cleanup a hook owes runs with a budget of its own. A hook
-- gets its share of the request's budget; past it the hook is canceled, and what it started
-- with ctx:cleanup still runs to the end (within its own budget) before the worker answers.
local client = require("host.client")
local helpers = require("spec.helpers")
local schema = require("host.schema")
local task = require("host.task")
local worker = require("host.worker")

-- A provider whose acquire makes a "resource", then works for `work` seconds; on failure (or
-- after the cancel) it deletes the resource with ctx:cleanup, which takes `cleanup` seconds.
local function provider(state, work, cleanup_secs)
  return {
    driver_key = "fake",
    display_name = "Fake",
    version = "0.0.0",
    schema = schema.new({}),
    hooks = {
      acquire_lease = function(ctx)
        state.made = true
        local ok, err = task.sleep(work) -- stands for a step that ignores its deadline
        if not ok then
          state.step_error = err
          local cleaned = ctx:cleanup(function(cctx)
            state.cleanup_left = cctx:remaining()
            if task.sleep(cleanup_secs) then
              state.made = false
            end
            return true
          end)
          state.cleanup_waited = cleaned
          return nil, "the step failed: " .. err
        end
        return { providerLeaseId = "x", metadata = {} }
      end,
    },
  }
end

-- Runs fn with the worker's budget set to `seconds` for every request.
local function with_budget(seconds, fn)
  local saved = worker.budget
  worker.budget = function()
    return seconds
  end
  helpers.with_cleanup(fn, function()
    worker.budget = saved
  end)
end

describe("host.worker cleanup", function()
  it("a hook canceled at its deadline still finishes its cleanup before the answer", function()
    helpers.run(function()
      with_budget(4, function() -- 3 s for the hook, 1 s kept for its cleanup
        local state = {}
        local s = client.session({ provider(state, 600, 0.5) })
        local ok, err = s:call("environmentAcquireLease", { config = {}, runId = "r" })
        assert.is_nil(ok)
        assert.equal("environmentAcquireLease did not finish within 3s and was canceled",
          err.message)
        assert.matches("canceled", state.step_error)
        assert.is_false(state.made) -- the cleanup ended (after the cancel) before the answer
        assert.is_nil(state.cleanup_waited) -- the hook itself could no longer wait for it
        assert.is_true(state.cleanup_left >= 0.9, state.cleanup_left)
      end)
    end)
  end)

  it("a cleanup that hangs is bounded by its own budget", function()
    helpers.run(function()
      with_budget(4, function()
        local state = {}
        local s = client.session({ provider(state, 600, 600) })
        local ok = s:call("environmentAcquireLease", { config = {}, runId = "r" })
        assert.is_nil(ok)
        -- answered while the cleanup still slept: the cleanup was cut at the end of the
        -- request's 4 s budget, never given its 600 s (awaiting those would trip the watchdog
        -- of helpers.run instead)
        assert.is_true(state.made)
        assert.is_true(state.cleanup_left <= 4, state.cleanup_left)
      end)
    end)
  end)

  it("within the deadline the hook gets its cleanup's results", function()
    helpers.run(function()
      with_budget(8, function()
        local state = {}
        local s = client.session({ provider(state, 0, 0.1) })
        assert(s:call("environmentAcquireLease", { config = {}, runId = "r" }))
        -- the step succeeded: no cleanup; now one that fails early
        local p = provider(state, 0, 0.1)
        p.hooks.acquire_lease = function(ctx)
          return nil, "failed, cleanup said " .. tostring(ctx:cleanup(function(cctx)
            return cctx.deadline > ctx.deadline and "it had its own budget"
          end))
        end
        local ok, err = client.session({ p }):call("environmentAcquireLease",
          { config = {}, runId = "r" })
        assert.is_nil(ok)
        assert.equal("failed, cleanup said it had its own budget", err.message)
      end)
    end)
  end)

  it("gives an execute's hook more than its command's timeout, however long", function()
    for _, ms in ipairs({ 1000, 30000, 96000, 300000, 14400000 }) do
      local steps, reserve = worker.split_budget("environmentExecute", { timeoutMs = ms })
      assert.is_true(steps >= ms / 1000 + 15, ms .. " ms: the hook gets " .. steps .. " s")
      assert.is_true(reserve > 0)
    end
    local steps, reserve = worker.split_budget("environmentAcquireLease",
      { config = { timeoutMs = 300000 } })
    assert.equal(30, reserve) -- a create keeps its full cleanup reserve
    assert.equal(295, steps)
  end)
end)
