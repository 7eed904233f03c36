-- bench/exec_helper_bench.lua: host.remote.execute of `true` on a warm lease with its two
-- runners, side by side on ONE real sshd started for the run on 127.0.0.1
-- (spec/support/sshd.lua): ph-sandbox-helper's `exec` (one process on the machine) against the
-- POSIX sh wrapper it replaces (mkdir, two FIFOs and their `cat` relays, setsid, sh). Also the
-- helper's install: the first one (check + upload) and a later one (the check alone), and a
-- floor: `sh -c true` on the same session (no runner, no /etc/profile, no env block).
-- A measurement, not a test: the exit status says only whether the driver itself ran.
--
--   build/provider-host bench/exec_helper_bench.lua [--samples=N] [--warmup=N] [--out=FILE]
--
-- The helper is installed into the run's temp dir (never the account's ~/.paperclip), and
-- sshd, the pooled session and the temp dir are removed at the end, on success or error.
local root = arg and arg[0] and arg[0]:match("^(.*)/bench/[^/]+$") or "."
package.path = root .. "/?.lua;" .. package.path

local fs = require("host.fs")
local json = require("host.json")
local remote = require("host.remote")
local shell = require("host.shell")
local ssh = require("host.ssh")
local sshd = require("spec.support.sshd")
local sys = require("host.core.sys")
local task = require("host.task")
local util = require("host.util")
local worker = require("host.worker")

local EXEC_TIMEOUT_MS = 30000 -- params.timeoutMs of every execute

local function say(fmt, ...)
  io.stdout:write(select("#", ...) > 0 and fmt:format(...) or fmt, "\n")
  io.stdout:flush()
end

local function usage(problem)
  io.stderr:write("exec_helper_bench: " .. problem .. "\nusage: provider-host "
    .. "bench/exec_helper_bench.lua [--samples=N] [--warmup=N] [--out=FILE]\n")
  os.exit(2)
end

local function parse_args(argv)
  local o = { samples = 200, warmup = 20, out = root .. "/bench/results/exec_helper.json" }
  for _, a in ipairs(argv) do
    local key, value = a:match("^%-%-([%w-]+)=(.*)$")
    local n = tonumber(value)
    if (key == "samples" or key == "warmup") and n and n >= 1 and n == math.floor(n) then
      o[key] = math.floor(n)
    elseif key == "out" and value ~= "" then
      o.out = value
    else
      usage("unknown or bad argument " .. a)
    end
  end
  return o
end

-- The same quantile as bench/lib.mjs: sorted[ceil(q * n) - 1].
local function quantile(values, q)
  local sorted = table.move(values, 1, #values, 1, {})
  table.sort(sorted)
  return sorted[math.max(1, math.ceil(q * #sorted))]
end

local function ms_since(t0)
  return (task.now() - t0) * 1000
end

-- One machine: sshd, a key, a target, a ctx as a worker's (nothing streamed), dirs.
local function setup(tmp)
  local key = sshd.keygen(tmp, "id_ed25519", "ed25519")
  assert(fs.mkdir(tmp .. "/workspace", tonumber("700", 8)))
  assert(fs.mkdir(tmp .. "/control", tonumber("700", 8)))
  local server = sshd.start({ max_sessions = 50 })
  server:authorize(key.public)
  local t = assert(remote.target({ host = server.host, port = server.port, user = server.user,
    key = key.private, host_key_policy = "accept-new", known_hosts = tmp .. "/known_hosts" }))
  local ctx = {
    config = { timeoutMs = EXEC_TIMEOUT_MS },
    max_output = worker.MAX_OUTPUT,
    emitter = function() -- as a worker's ctx without an invocation id: nothing to stream
      return nil
    end,
    output = function(_, raw)
      return worker.output(raw)
    end,
  }
  return server, t, ctx
end

local seq = 0
-- One execute of `true` -> milliseconds; raises on anything but a clean exit 0.
local function execute(t, ctx, tmp, helper)
  seq = seq + 1
  local c = setmetatable({ execution = {} }, { __index = ctx })
  local t0 = task.now()
  local res, err = remote.execute(c, t, { command = "true", timeoutMs = EXEC_TIMEOUT_MS,
    executionId = ("bench-%d-%d"):format(sys.getpid(), seq) }, { cwd = tmp .. "/workspace",
    scope = "bench-lease", control_base = tmp .. "/control", helper = helper })
  local ms = ms_since(t0)
  if not res or res.exitCode ~= 0 or res.stderr ~= "" then
    error(("execute failed: %s"):format(res and res.stderr or err), 0)
  end
  return ms
end

-- The floor: `true` as the login shell's command, no runner, no profile, no env.
local function bare(t)
  local t0 = task.now()
  local res, err = remote.run(t, "true", { timeout = EXEC_TIMEOUT_MS / 1000 })
  local ms = ms_since(t0)
  if not res or res.exit_code ~= 0 then
    error(("ssh exec failed: %s"):format(res and res.stderr or err), 0)
  end
  return ms
end

local function summary(samples)
  return { n = #samples, median_ms = quantile(samples, 0.5), p90_ms = quantile(samples, 0.9),
    min_ms = quantile(samples, 0) }
end

local function measure(o, tmp)
  local server, t, ctx = setup(tmp)
  local out = {}
  local ok, err = pcall(function()
    remote.settings.helper_dir = shell.quote(tmp .. "/bin")
    local t0 = task.now()
    local path = assert(remote.install_helper(t, { scope = "first" }))
    out.install_first_ms = ms_since(t0)
    t0 = task.now()
    assert(remote.install_helper(t, { scope = "second" }))
    out.install_found_ms = ms_since(t0)
    for _ = 1, o.warmup do
      execute(t, ctx, tmp, path)
      execute(t, ctx, tmp, false)
    end
    local helper, wrapper, floor = {}, {}, {}
    for i = 1, o.samples do -- interleaved, and each first half the time, so they share noise
      if i % 2 == 0 then
        helper[#helper + 1] = execute(t, ctx, tmp, path)
        wrapper[#wrapper + 1] = execute(t, ctx, tmp, false)
      else
        wrapper[#wrapper + 1] = execute(t, ctx, tmp, false)
        helper[#helper + 1] = execute(t, ctx, tmp, path)
      end
      floor[#floor + 1] = bare(t)
    end
    out.helper, out.wrapper, out.floor = summary(helper), summary(wrapper), summary(floor)
    out.helper_size = fs.stat(path).size
  end)
  ssh.close_all()
  server:close()
  if not ok then
    error(err, 0)
  end
  return out
end

local function report(o, r)
  say("host.remote.execute of `true` on a warm lease, one pooled SSH session, loopback sshd")
  say("%d samples each after %d warm-up calls, interleaved", o.samples, o.warmup)
  say("%-22s %10s %10s %10s", "runner", "median", "p90", "min")
  for _, row in ipairs({ { "ph-sandbox-helper", r.helper }, { "sh wrapper", r.wrapper },
    { "floor: sh -c true", r.floor } }) do
    say("%-22s %7.2f ms %7.2f ms %7.2f ms", row[1], row[2].median_ms, row[2].p90_ms,
      row[2].min_ms)
  end
  say("wrapper/helper (median): %.2fx", r.wrapper.median_ms / r.helper.median_ms)
  say("helper install: first (check + %d-byte upload) %.1f ms, found (check) %.1f ms",
    r.helper_size, r.install_first_ms, r.install_found_ms)
end

local o = parse_args(arg or {})
local tmp = assert(util.mkdtemp("ph-exec-bench-"))
local ok, res = pcall(task.run, measure, o, tmp)
util.remove_tree(tmp)
if not ok then
  io.stderr:write("exec_helper_bench: ", tostring(res), "\n")
  os.exit(1)
end
report(o, res)
fs.mkdirs(o.out:match("^(.*)/[^/]+$") or ".")
assert(fs.write(o.out, json.encode(res) .. "\n"))
say("results: %s", o.out)
