--- host.proc: local child processes for providers, each in its own process group.
-- Waiting yields the calling task; the host never blocks. A non-zero exit is a result,
-- not a failure. Failures return nil, message, code: "exit" when the command could not
-- start (missing program, bad cwd), "io" when the host ran out of something, "timeout"
-- for a bounded Process:wait, "canceled" when the waiting task was canceled.
local core = require("host.core.proc") -- C; yields the calling task until done
local now = require("host.core.task").now

local M = {}

--- Seconds a process may run when opts.timeout is not given (run, spawn and shell).
M.default_timeout = 3600

local function check_opts(name, opts, level)
  if type(opts) ~= "table" then
    error(("bad argument #1 to '%s' (table expected, got %s)"):format(name, type(opts)), level)
  end
end

-- A shallow copy with the default timeout filled in: the caller's table is not changed.
local function with_defaults(opts)
  local o = {}
  for k, v in pairs(opts) do
    o[k] = v
  end
  if o.timeout == nil then
    o.timeout = M.default_timeout
  end
  return o
end

-- Call fn(o); argument errors raised by C are re-raised against our caller's line, named
-- after the facade function and the argument the options came in. Not a tail call (that
-- would drop the facade's frame and shift the blamed level): returns a packed table.
local function call(fn, o, name, argn, turn)
  local res = table.pack(pcall(fn, o, turn))
  if not res[1] then
    local prefix = ("bad argument #%d to '%s'"):format(argn, name)
    local msg = tostring(res[2]):gsub("^bad argument #1 to '[^']*'", prefix)
    error(msg, 4)
  end
  return res
end

-- call(), in turn: past the cap on children running at once (max_children) the first call
-- waits for a slot, first come first served, and answers true once one is ours; the second
-- call takes it. The wait comes off the process's timeout: a command's deadline holds from
-- the moment it was asked for. A deadline that passes in the queue: nil, msg, "timeout".
local function in_turn(fn, o, name, argn)
  local asked = now()
  local res = call(fn, o, name, argn)
  if res[2] ~= true then
    return res
  end
  if o.timeout then
    o.timeout = math.max(0.001, o.timeout - (now() - asked))
  end
  return call(fn, o, name, argn, true)
end

--- spawn(opts) -> Process | nil, message, code
-- Starts a process and returns at once. opts:
--   argv        array of strings (required); argv[1] is searched in the child's PATH
--   env         table name -> string: the exact environment (nothing inherited); nil
--               inherits the host's environment
--   cwd         working directory
--   stdin       string written in full, then closed; nil gives the child /dev/null;
--               true keeps a pipe open for Process:write(data) and :close_stdin()
--   timeout     seconds before the group gets SIGTERM (default M.default_timeout)
--   kill_grace  seconds between SIGTERM and SIGKILL (default 2)
--   max_encoded bytes: keeping also stops at the first character whose text, cleaned to
--               UTF-8 and JSON-encoded as a result carries it, would pass this (0xFF bytes
--               clean to 3 each); the rest is dropped and result.truncated is true
--   max_output  bytes kept per stream (default 16 MiB); the rest is dropped and
--               result.truncated is true
--   keep_output default true; false keeps nothing (result.stdout and .stderr are ""): every
--               chunk goes to on_stdout / on_stderr only, for a long-lived stream (a duplex)
--   on_stdout, on_stderr  fn(chunk) called with each chunk as it arrives (the kept bytes,
--               in order). They run outside any task: they cannot yield, and an error in
--               one is logged, not raised
--   linger      seconds to wait for the pipes' EOF after the process exited (default 0.5),
--               so a background grandchild holding them cannot hang the call
-- Past the cap on children running at once (max_children) spawn waits its turn, first come
-- first served, within opts.timeout; a timeout that passes in the queue returns nil, msg,
-- "timeout" and the command never starts (run and shell likewise).
-- Process: .pid, :wait([timeout]) -> result | nil, msg, code, :kill([signal]),
-- :terminate(), :done(), :close() (also <close>: terminates a process still running),
-- :pause_output() / :resume_output() (stop and restart reading its stdout and stderr: the
-- process blocks on a full pipe; back-pressure for a consumer of on_stdout that cannot keep up),
-- :write(data) -> true | nil, msg, "closed" and :close_stdin() with stdin = true.
-- :drain([timeout]) -> true | nil, msg, code: back-pressure for :write, which never waits.
--   Yields the calling task until every byte given to :write so far is written into the
--   child's stdin pipe; true at once when nothing is pending. "closed" when stdin closed or
--   failed before those bytes went (the reader went away: EPIPE; the process finished or was
--   closed), and from then on; "timeout" after timeout seconds; "canceled" when the task is
--   canceled. A timeout or a cancel only ends the wait: the writes stay queued and the process
--   runs on (unlike :wait's cancel). Raises without a stdin pipe (stdin = true), like :write.
--   Several tasks may drain at once.
function M.spawn(opts)
  check_opts("spawn", opts, 3)
  local res = in_turn(core.spawn, with_defaults(opts), "spawn", 1)
  return table.unpack(res, 2, res.n)
end

--- run(opts) -> result | nil, message, code
-- spawn(opts), then wait for it. result = { exit_code (nil when killed by a signal or
-- timed out), signal ("SIGTERM"... or nil), timed_out, stdout, stderr, truncated, pid,
-- duration (seconds) }. When the calling task is canceled the process group is
-- terminated (TERM, then KILL) and run returns nil, msg, "canceled" once it is reaped.
function M.run(opts)
  check_opts("run", opts, 3)
  local res = in_turn(core.run, with_defaults(opts), "run", 1)
  return table.unpack(res, 2, res.n)
end

--- shell(script, opts) -> result | nil, message, code
-- run() with argv = { "/bin/sh", "-c", script }; opts as for run (its argv is ignored).
function M.shell(script, opts)
  if type(script) ~= "string" then
    error(("bad argument #1 to 'shell' (string expected, got %s)"):format(type(script)), 2)
  end
  if opts ~= nil and type(opts) ~= "table" then
    error(("bad argument #2 to 'shell' (table or nil expected, got %s)"):format(type(opts)), 2)
  end
  local o = with_defaults(opts or {})
  o.argv = { "/bin/sh", "-c", script }
  local res = in_turn(core.run, o, "shell", 2)
  return table.unpack(res, 2, res.n)
end

--- max_children([n]) -> limit, running, waiting: the cap on children running at once (n sets
-- it; 0 restores the default: from the open-files limit, or PROVIDER_HOST_MAX_CHILDREN), the
-- children holding a slot (until their last descriptor is closed), the spawns waiting.
M.max_children = core.max_children

return M
