-- bench/orphans.lua: what survives the worker, each way it can end (issue 11, item 1). For each
-- way (a shutdown request, stdin closed, SIGTERM, SIGINT, SIGHUP, SIGKILL, SIGSEGV) a worker
-- of the `local` provider starts N commands that ignore SIGTERM (their sleeps too), is ended
-- that way, and then this counts: the executes answered, the worker's exit, and the commands
-- still running 3 s after the worker exited. A measurement, not a test.
--
--   build/provider-host bench/orphans.lua [--n=N] [--binary=PATH] [--out=FILE]
--
-- --binary runs another build (an older one, for a before/after). Every command is killed at
-- the end, whatever the count said.
local root = arg and arg[0] and arg[0]:match("^(.*)/bench/[^/]+$") or "."
package.path = root .. "/?.lua;" .. package.path

local cmdline = require("spec.support.cmdline")
local helpers = require("spec.helpers")
local json = require("host.json")
local sys = require("host.core.sys")
local task = require("host.task")
local wp = require("spec.support.worker_process")

local opts = { n = 100, out = root .. "/bench/results/orphans.json" }
for _, a in ipairs(arg) do
  local k, v = a:match("^%-%-([%w-]+)=(.*)$")
  if k == "n" then
    opts.n = assert(tonumber(v), "--n needs a number")
  elseif k == "binary" or k == "out" then
    opts[k] = v
  else
    error("bench/orphans.lua: unknown option " .. a)
  end
end

local function params(extra)
  return helpers.merged({ driverKey = "local", companyId = "c1", environmentId = "e1",
    config = {} }, extra)
end

-- ends[way](w): ends the worker that way.
local ends = {
  shutdown = function(w)
    w:request(0x7fff, "shutdown", {})
  end,
  ["stdin closed"] = function(w)
    w:close_stdin()
  end,
}
for _, sig in ipairs({ "SIGTERM", "SIGINT", "SIGHUP", "SIGKILL", "SIGSEGV" }) do
  ends[sig] = function(w)
    w:kill(sig)
  end
end
local WAYS = { "shutdown", "stdin closed", "SIGTERM", "SIGINT", "SIGHUP", "SIGKILL", "SIGSEGV" }

local function one(way, tmp)
  local w = wp.start(nil, { binary = opts.binary, env = { PATH = os.getenv("PATH"),
    TMPDIR = tmp, PROVIDER_HOST_LOG = "error", PROVIDER_HOST_STDIN_GRACE = "0" } })
  local marker = cmdline.marker()
  assert(w:initialize())
  w:request(1, "environmentAcquireLease", params({ runId = "r1" }))
  local r = assert(w:reply_to(1))
  local lease = { providerLeaseId = r.result.providerLeaseId, metadata = r.result.metadata }
  for id = 2, opts.n + 1 do
    w:request(id, "environmentExecute", params({ lease = lease, command = "sh",
      args = { "-c", "trap '' TERM; while :; do sleep 1; done", marker } }))
  end
  helpers.eventually(function()
    return #cmdline.holding(marker) == opts.n
  end, "the commands started", 60)
  local t0 = task.now()
  ends[way](w)
  local res = w:wait(15)
  local exited = task.now() - t0
  if not res then
    w:kill("SIGKILL")
    res = w:wait(5)
  end
  local answered = 0
  for _, line in ipairs(w.lines) do
    local msg = json.decode(line)
    if msg and type(msg.id) == "number" and msg.id >= 2 and msg.id <= opts.n + 1 then
      answered = answered + 1
    end
  end
  task.sleep(3)
  local left = cmdline.holding(marker)
  for _, p in ipairs(left) do
    sys.kill(-p.pid, "SIGKILL")
  end
  return { way = way, commands = opts.n, answered = answered, exit_seconds = exited,
    exit = res and (res.signal or res.exit_code), left_after_3s = #left }
end

helpers.run(function()
  local tmp <close> = helpers.tempdir("ph-orphans-bench-")
  local rows = {}
  print(("%-13s %8s %8s %8s %10s %14s"):format("ended by", "commands", "answered", "exit",
    "exit after", "left after 3 s"))
  for _, way in ipairs(WAYS) do
    local row = one(way, tmp.path)
    rows[#rows + 1] = row
    print(("%-13s %8d %8d %8s %9.2fs %14d"):format(way, row.commands, row.answered,
      tostring(row.exit), row.exit_seconds, row.left_after_3s))
  end
  local f = assert(io.open(opts.out, "w"))
  f:write(assert(json.encode({ binary = opts.binary or helpers.binary(), rows = rows })), "\n")
  f:close()
end)
