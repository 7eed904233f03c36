--- host.task: concurrent tasks for providers. Every hook already runs as a task.
local core = require("host.core.task")

local M = {
  spawn = core.spawn, -- spawn(fn, ...) -> Task; Task:wait([timeout]), Task:cancel(), Task:done()
  wait = core.wait,
  cancel = core.cancel,
  cancel_after = core.cancel_after, -- cancel_after(t, seconds | nil): a deadline for t
  expired = core.expired, -- expired(t): its deadline fired
  sleep = core.sleep, -- sleep(seconds) -> true | nil, msg, "canceled"
  yield = core.yield,
  now = core.now, -- monotonic seconds
  current = core.current,
  running = core.running,
  run = core.run, -- run(fn, ...) -> fn's results, driving the loop (script mode only)
  -- signal() -> Signal: Signal:wait([timeout]) -> true | nil, msg, "timeout"|"canceled" parks
  -- the task until Signal:notify() (callable from callbacks outside tasks) wakes the waiters of
  -- that moment; waiters re-check their condition in a loop
  signal = core.signal,
}

--- all(fns) -> array of each function's first-result tables {ok, ...}.
-- Runs every function as a task and waits for all of them. Each entry of the result is
-- a table.pack of that function's return values (nil, msg, code on failure).
function M.all(fns)
  if type(fns) ~= "table" then
    error("bad argument #1 to 'all' (table of functions expected, got " .. type(fns) .. ")", 2)
  end
  local tasks = {}
  for i, fn in ipairs(fns) do
    if type(fn) ~= "function" then
      error("bad argument #1 to 'all' (entry " .. i .. " is not a function)", 2)
    end
    tasks[i] = core.spawn(fn)
  end
  local out = {}
  for i, t in ipairs(tasks) do
    out[i] = table.pack(t:wait())
  end
  return out
end

--- with_timeout(seconds, fn, ...) -> fn's results | nil, "timed out after Ns", "timeout".
-- Runs fn as a task; when the deadline passes first, the task is canceled (its pending
-- operation ends with "canceled", so processes and transfers are torn down).
function M.with_timeout(seconds, fn, ...)
  if type(seconds) ~= "number" or seconds ~= seconds or seconds < 0 then
    error("bad argument #1 to 'with_timeout' (non-negative number expected)", 2)
  end
  local t = core.spawn(fn, ...)
  local res = table.pack(t:wait(seconds))
  if res[1] == nil and res[3] == "timeout" and not t:done() then
    t:cancel()
    t:wait(5) -- let it unwind and clean up; bounded so a stuck task cannot hang us
    return nil, ("timed out after %gs"):format(seconds), "timeout"
  end
  return table.unpack(res, 1, res.n)
end

return M
