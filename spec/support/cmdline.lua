--- spec.support.cmdline: what every process on this machine shows in /proc/PID/cmdline. The
-- sandboxes of the specs (local workspaces, the fake E2B's commands, the fake exe.dev's and the
-- ssh provider's sshd VMs) all run here, so this is every sandbox's process list.
local fs = require("host.fs")
local task = require("host.task")
local util = require("host.util")

local M = {}

--- holding(text) -> { {pid=, cmdline=}, ... }: the processes whose command line contains text
-- (arguments joined with spaces).
function M.holding(text)
  local out = {}
  for _, name in ipairs(fs.list("/proc") or {}) do
    if name:find("^%d+$") then
      local raw = fs.read("/proc/" .. name .. "/cmdline")
      if raw and raw:find(text, 1, true) then
        out[#out + 1] = { pid = tonumber(name), cmdline = raw:gsub("%z", " ") }
      end
    end
  end
  return out
end

--- marker() -> a value no process could hold by chance
function M.marker()
  return "ph-secret-" .. util.hex(assert(util.random(12)))
end

--- COMMAND: a shell script that proves it got $PH_SECRET (prints its sha256), says "started",
-- then sleeps: the secret's name is on its command line, never its value.
M.SCRIPT = 'printf "%s" "$PH_SECRET" | sha256sum | cut -c1-64; echo started; sleep 4'

--- check(start) -> the result of start(on_log, params), asserting meanwhile that no command
-- line held a fresh marker while the command slept. start runs environmentExecute with params
-- (sh -c M.SCRIPT with env PH_SECRET = the marker; start may add fields) on a session whose
-- on_log is on_log, and returns its result.
function M.check(start)
  local assert = require("luassert")
  local marker = M.marker()
  local started = false
  local t = task.spawn(function()
    return start(function(_stream, chunk)
      started = started or chunk:find("started", 1, true) ~= nil
    end, { command = "sh", args = { "-c", M.SCRIPT }, env = { PH_SECRET = marker } })
  end)
  require("spec.helpers").eventually(function()
    return started
  end, "the command said it started", 20)
  local seen = M.holding(marker)
  local res, err = t:wait(30)
  assert.same({}, seen)
  assert(res, err and (err.message or err))
  assert.equal(util.sha256_hex(marker), res.stdout:match("^(%x+)\n"), "the command got the env")
  return res
end

return M
