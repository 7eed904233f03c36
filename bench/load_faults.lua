-- bench/load_faults.lua: load with faults (issue 11, item 9). One worker per provider (`local`,
-- `e2b` on the fake E2B, `exe-dev` on the fake exe.dev), each under a hard RLIMIT_NOFILE, gets
-- its share of --requests requests at once while the fakes inject errors (500, 503, 429),
-- stalls (within and beyond the client's deadline) and dropped connections into --rate of
-- theirs; then it counts what the invariants need: every request answered, within its own
-- deadline, each worker up (health, then exit 0 on shutdown), and nothing left: sandboxes, VMs,
-- processes, file descriptors, temp dirs. The harness is spec/support/load_faults.lua (the
-- spec spec/worker/load_faults_spec.lua runs it small).
--
--   build/provider-host bench/load_faults.lua [--requests=2000] [--nofile=256] [--seed=1]
--     [--rate=0.15] [--quick] [--out=FILE]
--   bench/run --bench=load [--load-requests=N] [--nofile=N] [--fault-rate=R] [--seed=N]
--
-- --quick: 300 requests. Prints a table, writes bench/results/load.json, exits 1 when an
-- invariant fails (2 on a usage error).
local root = arg and arg[0] and arg[0]:match("^(.*)/bench/[^/]+$") or "."
package.path = root .. "/?.lua;" .. package.path

local json = require("host.json")
local lf = require("spec.support.load_faults")
local sys = require("host.core.sys")
local task = require("host.task")

local opts = { requests = 2000, nofile = 256, seed = 1, rate = 0.15,
  out = root .. "/bench/results/load.json" }
for _, a in ipairs(arg) do
  local k, v = a:match("^%-%-([%w-]+)=(.*)$")
  local alias = { n = "requests", ["load-requests"] = "requests", ["fault-rate"] = "rate" }
  if (k == "requests" or k == "nofile" or k == "seed" or k == "rate" or alias[k])
    and tonumber(v) then
    opts[alias[k] or k] = tonumber(v)
  elseif k == "out" then
    opts.out = v
  elseif a == "--quick" then
    opts.requests = 300
  elseif not (a:find("^%-%-only=") or a == "--no-floor") then -- bench/run's common options
    io.stderr:write("bench/load_faults.lua: unknown option " .. a .. "\n")
    os.exit(2)
  end
end

local report = task.run(function()
  sys.parent_death_signal("SIGTERM")
  return lf.run({
    requests = math.floor(opts.requests),
    nofile = math.floor(opts.nofile),
    seed = math.floor(opts.seed),
    rate = opts.rate,
    root = root,
    budget = 600,
    log = function(line)
      io.stderr:write("load: " .. line .. "\n")
    end,
  })
end)

print(lf.text(report))
local f = assert(io.open(opts.out, "w"))
f:write(assert(json.encode(lf.json_report(report))), "\n")
f:close()
print("wrote " .. opts.out)
os.exit(report.ok and 0 or 1)
