-- spec/host/task_signal_spec.lua: host.task.signal, what lets a task block until a callback
-- that cannot yield (process output, stream frames) says there is work.
local helpers = require("spec.helpers")
local proc = require("host.proc")
local task = require("host.task")

describe("host.task.signal", function()
  it("parks waiters until notify, and wakes all of them", function()
    helpers.run(function()
      local sig = task.signal()
      local woke = {}
      local function waiter(name, timeout)
        return task.spawn(function()
          assert(sig:wait(timeout))
          woke[#woke + 1] = name
        end)
      end
      local a, b = waiter("a"), waiter("b", 10)
      task.yield()
      assert.same({}, woke)
      assert.equal(2, sig:notify())
      a:wait(10)
      b:wait(10)
      table.sort(woke)
      assert.same({ "a", "b" }, woke)
      assert.equal(0, sig:notify()) -- nobody waits: nothing is remembered
    end)
  end)

  it("is notified from a process output callback, outside any task", function()
    helpers.run(function()
      local sig, chunks = task.signal(), {}
      local p <close> = assert(proc.spawn({ argv = { "cat" }, stdin = true, timeout = 10,
        keep_output = false, on_stdout = function(c)
          chunks[#chunks + 1] = c
          sig:notify()
        end }))
      assert(p:write("ping"))
      while #chunks == 0 do
        assert(sig:wait(10))
      end
      assert.equal("ping", table.concat(chunks))
    end)
  end)

  it("times out and is canceled like every wait", function()
    helpers.run(function()
      local sig = task.signal()
      local ok, err, code = sig:wait(0.01)
      assert.is_nil(ok)
      assert.equal("timeout", code)
      assert.matches("timed out", err)
      local t = task.spawn(function() return sig:wait() end)
      task.yield()
      t:cancel()
      local _, _, c = t:wait(10)
      assert.equal("canceled", c)
      assert.equal(0, sig:notify()) -- the canceled waiter left the list
      assert.has_error(function() sig:wait(-1) end,
        "bad argument #1 to 'wait' (timeout must not be negative)")
    end)
  end)
end)
