--- host.cli.run: `provider-host run NAME [--config JSON] [--bridge URL --bridge-key-env VAR]
-- -- CMD ARGS`: acquire a lease, open a bridge when asked, run one command with its output
-- live, release the lease; for an operator at a terminal. The command's exit status is ours;
-- Ctrl-C (or SIGTERM) cancels the command and still releases.
local client = require("host.client")
local json = require("host.json")
local sys = require("host.core.sys")
local task = require("host.task")
local util = require("host.util")

local M = {}

M.USAGE = "run NAME [--config JSON] [--bridge URL --bridge-key-env VAR] [--run-id ID] "
  .. "[--timeout SECONDS] -- CMD [ARGS...]"

local function say(...)
  io.stderr:write("provider-host run: ", ...)
  io.stderr:write("\n")
end

-- Linux's numbers of the signals a command commonly dies of (the same on x86 and arm).
local SIGNALS = { SIGHUP = 1, SIGINT = 2, SIGQUIT = 3, SIGABRT = 6, SIGKILL = 9, SIGUSR1 = 10,
  SIGSEGV = 11, SIGUSR2 = 12, SIGPIPE = 13, SIGALRM = 14, SIGTERM = 15 }

--- exit_status(r) -> the exit status of an environmentExecute result, as a shell would give
-- it: exitCode, 124 when timedOut, 128+N for a signal, else 1 (`run` and `call` use it).
function M.exit_status(r)
  if r.timedOut then
    return 124
  end
  if type(r.exitCode) == "number" then
    return math.tointeger(r.exitCode) or 1
  end
  local sig = SIGNALS[r.signal]
  return sig and 128 + sig or 1
end

--- params(opts, getenv) -> the execute's extra params | nil, message. opts: the parsed
-- options; getenv reads the key's variable.
function M.params(opts, getenv)
  local out = { config = {} }
  if opts.config then
    local config = json.decode(opts.config)
    if type(config) ~= "table" or config[1] ~= nil or json.is_array(config) then
      return nil, "--config must be a JSON object"
    end
    out.config = config
  end
  if (opts.bridge == nil) ~= (opts["bridge-key-env"] == nil) then
    return nil, "--bridge and --bridge-key-env go together"
  end
  if opts.bridge then
    local var = opts["bridge-key-env"]
    local key = getenv(var)
    if key == nil or key == "" then
      return nil, ("--bridge-key-env %s: that environment variable is not set"):format(var)
    end
    out.bridge = { apiUrl = opts.bridge, apiKey = key, runId = opts["run-id"] or util.uuid() }
  end
  if opts.timeout then
    local s = tonumber(opts.timeout)
    if not s or s <= 0 then
      return nil, "--timeout must be a number of seconds > 0"
    end
    out.timeoutMs = math.ceil(s * 1000)
  end
  return out
end

-- Cancel the execution when SIGINT or SIGTERM arrives; returns the watcher tasks.
local function on_interrupt(fn)
  local watchers = {}
  for _, name in ipairs({ "SIGINT", "SIGTERM" }) do
    watchers[#watchers + 1] = task.spawn(function()
      if sys.wait_signal(name) then
        fn(name)
      end
    end)
  end
  return watchers
end

--- main(p, opts, command) -> exit code. command: { CMD, ARGS... }.
function M.main(p, opts, command)
  local extra, perr = M.params(opts, os.getenv)
  if not extra then
    say(perr)
    return 2
  end
  local s = client.session({ p }, {
    on_log = function(stream, chunk)
      local f = stream == "stderr" and io.stderr or io.stdout
      f:write(chunk)
      f:flush()
    end,
  })
  local lease, err = s:call("environmentAcquireLease", { config = extra.config,
    runId = extra.bridge and extra.bridge.runId or "cli" })
  if not lease then
    say("acquire failed: ", tostring(err.message))
    return 1
  end
  local lp = { providerLeaseId = lease.providerLeaseId, metadata = lease.metadata or {} }
  local execution_id = util.uuid()
  local interrupted
  local watchers = on_interrupt(function(name)
    interrupted = name
    say(name, ": canceling the command")
    s:call("environmentCancelExecution", { config = extra.config, lease = lp,
      executionId = execution_id })
  end)
  local r
  r, err = s:call("environmentExecute", { config = extra.config, lease = lp,
    command = command[1], args = table.move(command, 2, #command, 1, {}), bridge = extra.bridge,
    timeoutMs = extra.timeoutMs, executionId = execution_id })
  for _, w in ipairs(watchers) do
    w:cancel()
  end
  local released, rerr = s:call("environmentReleaseLease", { config = extra.config,
    providerLeaseId = lp.providerLeaseId, leaseMetadata = lp.metadata })
  if not released and rerr then
    say("release failed: ", tostring(rerr.message))
  end
  if not r then
    say("execute failed: ", tostring(err.message))
    return 1
  end
  -- the result's output was streamed live already; only a timeout's note is new
  if r.timedOut then
    say("the command timed out")
  end
  if interrupted then
    return 130
  end
  return M.exit_status(r)
end

return M
