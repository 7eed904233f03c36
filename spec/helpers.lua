--- spec.helpers: drive the host loop from busted specs, find the built binary, and what specs
--- share: polling with a deadline, cleanup and timing, a test HTTP server, failure checks,
--- files, private temp dirs, live processes, collected output, and gates.
local task = require("host.task")
local util = require("host.util")

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

--- The ph-sandbox-helper binary built beside the binary under test ($PH_SANDBOX_HELPER wins).
function M.sandbox_helper()
  local dir = M.binary():match("^(.*)/[^/]*$") or "."
  return os.getenv("PH_SANDBOX_HELPER") or dir .. "/ph-sandbox-helper"
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

--- eventually(pred, what [, seconds = 10]) -> pred's first true value. Inside a task: polls
-- pred every 20 ms (a task sleep) and fails with "<what>: not within <seconds>s" when it still
-- is not true at the deadline. For what happens in the background; the deadline only bounds a
-- failure, so it is generous.
function M.eventually(pred, what, seconds)
  seconds = seconds or 10
  local deadline = task.now() + seconds
  while true do
    local v = pred()
    if v then
      return v
    end
    if task.now() > deadline then
      error(("%s: not within %gs"):format(what or "condition", seconds), 2)
    end
    task.sleep(0.02)
  end
end

--- with_cleanup(fn, cleanup, ...) -> fn(...)'s results, once cleanup() ran: it runs whether
-- fn fails or not (then fn's error is raised again, unchanged).
function M.with_cleanup(fn, cleanup, ...)
  local res = table.pack(pcall(fn, ...))
  cleanup()
  if not res[1] then
    error(res[2], 0)
  end
  return table.unpack(res, 2, res.n)
end

--- timed(fn, ...) -> the seconds fn(...) took (task time), then fn's results.
function M.timed(fn, ...)
  local t0 = task.now()
  local res = table.pack(fn(...))
  return task.now() - t0, table.unpack(res, 1, res.n)
end

--- serving(opts, fn, ...) -> fn's results. Runs fn(server, ...) as a task (M.run) with an
-- http.serve(opts) server, closed afterwards whether fn fails or not.
function M.serving(opts, fn, ...)
  return M.run(function(...)
    local srv = assert(require("host.http").serve(opts))
    return M.with_cleanup(fn, function()
      srv:close()
    end, srv, ...)
  end, ...)
end

--- fails_with(code, res, err, got) -> err. Asserts that a call failed the host way (nil, a
-- message, an error code) with this code, and gives its message for further checks:
--   local err = helpers.fails_with("timeout", http.request(opts))
function M.fails_with(code, res, err, got)
  local luassert = require("luassert")
  luassert.is_nil(res, err)
  luassert.equal(code, got, err)
  return err
end

--- read_file(path) -> the file's contents | nil when it cannot be read (missing, gone).
function M.read_file(path)
  local f = io.open(path, "rb")
  if not f then
    return nil
  end
  local text = f:read("a")
  f:close()
  return text
end

--- write_file(path, text [, octal_mode]): creates or replaces path (mode as a string, "755").
function M.write_file(path, text, octal_mode)
  local f = assert(io.open(path, "wb"))
  assert(f:write(text))
  f:close()
  if octal_mode then
    assert(require("host.core.sys").chmod(path, tonumber(octal_mode, 8)))
  end
end

--- tempdir([prefix = "ph-spec-"]) -> TempDir: a new private (0700) directory, dir.path;
-- removed with everything in it by dir:remove() (idempotent) or when a <close> variable
-- holding it goes out of scope, failed assertion or not:
--   local dir <close> = helpers.tempdir("proc-")
function M.tempdir(prefix)
  return assert(util.tempdir(prefix or "ph-spec-"))
end

--- merged(...) -> a new table with the fields of every table given, in order (a later one's
-- field wins; nil arguments are skipped): merged(defaults, extra).
function M.merged(...)
  local out = {}
  for i = 1, select("#", ...) do
    for k, v in pairs(select(i, ...) or {}) do
      out[k] = v
    end
  end
  return out
end

--- sorted_keys(t) -> t's keys in order, so that listings come out the same every time.
function M.sorted_keys(t)
  local keys = {}
  for k in pairs(t) do
    keys[#keys + 1] = k
  end
  table.sort(keys)
  return keys
end

--- all_bytes() -> the 256 byte values, 0 to 255, in order: binary data to pass through.
function M.all_bytes()
  local bytes = {}
  for i = 0, 255 do
    bytes[#bytes + 1] = string.char(i)
  end
  return table.concat(bytes)
end

--- collector() -> list, add: add(chunk) appends chunk to list (an on_stdout/on_chunk
-- callback that keeps every piece in order).
function M.collector()
  local list = {}
  return list, function(chunk)
    list[#list + 1] = chunk
  end
end

--- alive(pid) -> true while pid exists and is not a zombie (a zombie no longer runs).
function M.alive(pid)
  local stat = M.read_file("/proc/" .. pid .. "/stat")
  return stat ~= nil and stat:match("^%d+ %b() (%S)") ~= "Z"
end

local Gate = {}
Gate.__index = Gate

--- gate([seconds = 20]) -> Gate: orders a command's steps after the spec's, with no clock.
-- gate.sh is a shell snippet that waits until the spec calls gate:open() (it polls a file
-- every 50 ms). A command that gives up after `seconds` prints "gate never opened" on stderr
-- and exits 99, so it never hangs and a spec that never opened it fails clearly.
-- gate:close() removes the gate's directory (also <close>). Commands of every provider under
-- test run on this machine, so they all see the path.
--   local gate <close> = helpers.gate()
--   exec("echo first; " .. gate.sh .. "; echo second") -- with on_output opening the gate
function M.gate(seconds)
  local dir = M.tempdir("ph-gate-")
  local path = dir.path .. "/open"
  local polls = math.ceil((seconds or 20) / 0.05)
  local sh = ("ph_gate_n=0; while [ ! -e %s ]; do ph_gate_n=$((ph_gate_n + 1)); "
    .. "if [ $ph_gate_n -gt %d ]; then echo 'gate never opened' >&2; exit 99; fi; "
    .. "sleep 0.05; done"):format(require("host.shell").quote(path), polls)
  return setmetatable({ dir = dir, path = path, sh = sh }, Gate)
end

--- gate:open(): let every command waiting on the gate go on (idempotent).
function Gate:open()
  if not self.opened then
    M.write_file(self.path, "")
    self.opened = true
  end
end

function Gate:close()
  self.dir:remove()
end
Gate.__close = Gate.close

--- log_gate() -> gate, log, on_log: a gate() that the first execute.log chunk opens, the log
-- of the chunks as they came ({stream, chunk} each) and a session's on_log that fills both:
--   local gate <close>, log, on_log = helpers.log_gate()
function M.log_gate()
  local gate, log = M.gate(), {}
  return gate, log, function(stream, chunk)
    log[#log + 1] = { stream, chunk }
    gate:open()
  end
end

--- logged(log, stream) -> the text of log's chunks of that stream ("stdout"), in order.
function M.logged(log, stream)
  local out = {}
  for _, c in ipairs(log) do
    if c[1] == stream then
      out[#out + 1] = c[2]
    end
  end
  return table.concat(out)
end

return M
