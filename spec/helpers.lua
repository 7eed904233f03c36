--- spec.helpers: drive the host loop from busted specs and find the built binary.
local task = require("host.task")

local M = {}

M.root = (function()
  local src = debug.getinfo(1, "S").source:sub(2)
  local dir = src:match("^(.*)/spec/helpers%.lua$") or "."
  return dir
end)()

--- The provider-host binary under test: the one running these specs.
function M.binary()
  local exe = require("host.core.sys").exe_path()
  return os.getenv("PROVIDER_HOST_BIN") or exe
end

--- run(fn, ...) -> fn's results. Runs fn as a task and drives the loop. Errors (failed
-- assertions) propagate unchanged; a spec still running after `M.deadline` seconds is
-- canceled and fails instead of hanging the suite.
M.deadline = 60
function M.run(fn, ...)
  return task.run(function(...)
    local me, late = task.current(), false
    local watchdog = task.spawn(function()
      if task.sleep(M.deadline) then
        late = true
        me:cancel()
      end
    end)
    local res = table.pack(pcall(fn, ...))
    watchdog:cancel()
    if late then
      error("spec exceeded its " .. M.deadline .. "s deadline", 0)
    end
    if not res[1] then
      error(res[2], 0)
    end
    return table.unpack(res, 2, res.n)
  end, ...)
end

return M
