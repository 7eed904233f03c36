-- bench/exec_helper_bench.lua: a warm `true` through the ssh provider's execute (hooks.execute,
-- called as Paperclip calls it: the worker's JSON-RPC dispatch in process) on ONE real sshd
-- started for the run on 127.0.0.1 (spec/support/sshd.lua), with each of host.remote's runners
-- side by side on the same lease: `serve` (one ph-sandbox-helper serve per lease: a command is
-- one stream of frames on its SSH channel), `exec` (ph-sandbox-helper exec: an SSH channel and a
-- process per command) and `wrapper` (the POSIX sh wrapper exec replaces: mkdir, two FIFOs and
-- their `cat` relays, setsid, sh). Also a floor, `sh -c true` on the same pooled session (no
-- runner, no /etc/profile, no env block), the peers of the issue, OpenSSH's `ssh` as a new
-- process per command (upstream exe-dev's way) and `ssh` over a ControlMaster (its best case),
-- and the helper's install: the first one (check + upload) and a later one (the check alone).
-- With --net-delay=MS the SSH connections go through bench/delay_proxy.mjs (node), which
-- delays every chunk MS ms each way: a warm execute's time over 2 x MS is its count of network
-- round trips.
-- A measurement, not a test: the exit status says only whether the driver itself ran.
--
--   build/provider-host bench/exec_helper_bench.lua [--samples=N] [--warmup=N]
--        [--peer-samples=N] [--net-delay=MS] [--out=FILE]
--
-- The helper is installed into the run's temp dir (never the account's ~/.paperclip); sshd,
-- the proxy, the ControlMaster, the command server, the pooled session and the temp dir are
-- removed at the end, on success or error.
local root = arg and arg[0] and arg[0]:match("^(.*)/bench/[^/]+$") or "."
package.path = root .. "/?.lua;" .. package.path

local client = require("host.client")
local fs = require("host.fs")
local json = require("host.json")
local proc = require("host.proc")
local remote = require("host.remote")
local shell = require("host.shell")
local ssh = require("host.ssh")
local sshd = require("spec.support.sshd")
local task = require("host.task")
local util = require("host.util")

local EXEC_TIMEOUT_MS = 30000 -- params.timeoutMs of every execute
local RUNNERS = { "serve", "exec", "wrapper" }

local function say(fmt, ...)
  io.stdout:write(select("#", ...) > 0 and fmt:format(...) or fmt, "\n")
  io.stdout:flush()
end

local function usage(problem)
  io.stderr:write("exec_helper_bench: " .. problem .. "\nusage: provider-host "
    .. "bench/exec_helper_bench.lua [--samples=N] [--warmup=N] [--peer-samples=N] "
    .. "[--net-delay=MS] [--out=FILE]\n")
  os.exit(2)
end

local function parse_args(argv)
  local o = { samples = 200, warmup = 20, peer_samples = 30, net_delay = 0,
    out = root .. "/bench/results/exec_helper.json" }
  for _, a in ipairs(argv) do
    local key, value = a:match("^%-%-([%w-]+)=(.*)$")
    local n = tonumber(value)
    local field = key and key:gsub("%-", "_")
    if (field == "samples" or field == "warmup" or field == "peer_samples") and n and n >= 1
      and n == math.floor(n) then
      o[field] = math.floor(n)
    elseif field == "net_delay" and n and n >= 0 then
      o.net_delay = n
    elseif field == "out" and value ~= "" then
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

local function summary(samples)
  return { n = #samples, median_ms = quantile(samples, 0.5), p90_ms = quantile(samples, 0.9),
    min_ms = quantile(samples, 0) }
end

-- Everything the run starts, stopped in reverse order whatever happens.
local cleanups = {}
local function on_exit(fn)
  cleanups[#cleanups + 1] = fn
end
local function clean_up()
  for i = #cleanups, 1, -1 do
    pcall(cleanups[i])
  end
  cleanups = {}
end

-- The delay proxy in front of sshd: its port.
local function start_proxy(port, delay)
  local line = ""
  local p = assert(proc.spawn({ argv = { "node", root .. "/bench/delay_proxy.mjs",
    "--target=" .. port, "--delay-ms=" .. delay }, stdin = true, timeout = 3600,
    on_stdout = function(chunk)
      line = line .. chunk
    end }))
  on_exit(function()
    p:close_stdin()
    p:wait(5)
    p:close()
  end)
  local deadline = task.now() + 10
  while not line:find("listening %d+") do
    if p:done() or task.now() > deadline then
      error("the delay proxy did not start", 0)
    end
    task.sleep(0.01)
  end
  return tonumber(line:match("listening (%d+)"))
end

-- One machine: sshd (behind the proxy with --net-delay), a key, the ssh provider's config, a
-- session and a lease on it.
local function setup(o, tmp)
  local key = sshd.keygen(tmp, "id_ed25519", "ed25519")
  local server = sshd.start({ max_sessions = 50 })
  on_exit(function()
    server:close()
  end)
  server:authorize(key.public)
  local port = server.port
  if o.net_delay > 0 then
    port = start_proxy(server.port, o.net_delay)
  end
  local config = { host = server.host, port = port, user = server.user, privateKey = key.private,
    hostKeyPolicy = "accept-new", knownHostsFile = tmp .. "/known_hosts",
    workspaceRoot = tmp .. "/leases", timeoutMs = EXEC_TIMEOUT_MS }
  local provider = require("providers.ssh")
  local session = client.session({ provider })
  return { server = server, key = key, port = port, config = config, session = session }
end

-- One execute of `true` with runner r -> milliseconds; raises on anything but a clean exit 0.
local seq = 0
local function execute(m, lease, r)
  seq = seq + 1
  remote.settings.runner = r
  local t0 = task.now()
  local res, err = m.session:call("environmentExecute", { config = m.config, lease = lease,
    command = "true", timeoutMs = EXEC_TIMEOUT_MS, executionId = "bench-" .. seq })
  local ms = ms_since(t0)
  if not res or res.exitCode ~= 0 or res.stderr ~= "" then
    error(("execute (%s) failed: %s"):format(r, res and res.stderr or json.encode(err)), 0)
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

-- OpenSSH's ssh: argv for `true` on the machine (extra: ControlMaster options).
local function ssh_argv(m, tmp, extra)
  local a = { "ssh", "-q", "-F", "/dev/null", "-p", tostring(m.port), "-i", m.key.path,
    "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
    "-o", "UserKnownHostsFile=" .. tmp .. "/ssh_known_hosts", "-o", "IdentitiesOnly=yes" }
  for _, x in ipairs(extra or {}) do
    a[#a + 1] = x
  end
  a[#a + 1] = m.server.user .. "@" .. m.server.host
  a[#a + 1] = "true"
  return a
end

local function ssh_process(argv)
  local t0 = task.now()
  local res, err = proc.run({ argv = argv, timeout = EXEC_TIMEOUT_MS / 1000 })
  local ms = ms_since(t0)
  if not res or res.exit_code ~= 0 then
    error(("ssh failed: %s"):format(res and res.stderr or err), 0)
  end
  return ms
end

-- A ControlMaster for the peer's best case: its socket's options for each ssh.
local function control_master(m, tmp)
  local sock = tmp .. "/cm.sock"
  local opts = { "-o", "ControlPath=" .. sock }
  local argv = ssh_argv(m, tmp, { "-o", "ControlMaster=yes", "-o", "ControlPath=" .. sock, "-N" })
  table.remove(argv) -- no command: -N
  local master = assert(proc.spawn({ argv = argv, timeout = 3600 }))
  on_exit(function()
    master:close()
  end)
  local deadline = task.now() + 15
  while not fs.stat(sock) do
    if master:done() or task.now() > deadline then
      error("the ControlMaster did not start", 0)
    end
    task.sleep(0.01)
  end
  return opts
end

local function measure(o, tmp)
  local m = setup(o, tmp)
  local out = { net_delay_ms = o.net_delay }
  remote.settings.helper_dir = shell.quote(tmp .. "/bin")
  on_exit(function()
    remote.close_servers()
    ssh.close_all()
  end)
  local t = assert(remote.target({ host = m.config.host, port = m.config.port,
    user = m.config.user, key = m.config.privateKey, host_key_policy = "accept-new",
    known_hosts = m.config.knownHostsFile }))
  local t0 = task.now()
  local path = assert(remote.install_helper(t, { scope = "first" }))
  out.install_first_ms = ms_since(t0)
  t0 = task.now()
  assert(remote.install_helper(t, { scope = "second" }))
  out.install_found_ms = ms_since(t0)
  out.helper_size = fs.stat(path).size

  remote.settings.runner = "serve"
  local lease = assert(m.session:call("environmentAcquireLease", { config = m.config,
    runId = "bench" }))
  local lp = { providerLeaseId = lease.providerLeaseId, metadata = lease.metadata }
  t0 = task.now()
  execute(m, lp, "serve") -- the lease's first execute starts its server
  out.serve_first_ms = ms_since(t0)
  for _ = 1, o.warmup do
    for _, r in ipairs(RUNNERS) do
      execute(m, lp, r)
    end
  end
  local samples = { serve = {}, exec = {}, wrapper = {}, floor = {} }
  for i = 1, o.samples do -- interleaved, in a rotating order, so they share noise
    for j = 0, #RUNNERS - 1 do
      local r = RUNNERS[(i + j) % #RUNNERS + 1]
      samples[r][#samples[r] + 1] = execute(m, lp, r)
    end
    samples.floor[#samples.floor + 1] = bare(t)
  end
  for k, v in pairs(samples) do
    out[k] = summary(v)
  end

  local peer, master = {}, {}
  local cm = control_master(m, tmp)
  ssh_process(ssh_argv(m, tmp, cm)) -- warm
  for _ = 1, o.peer_samples do
    peer[#peer + 1] = ssh_process(ssh_argv(m, tmp))
    master[#master + 1] = ssh_process(ssh_argv(m, tmp, cm))
  end
  out.ssh_process, out.ssh_control_master = summary(peer), summary(master)
  assert(m.session:call("environmentReleaseLease", { config = m.config,
    providerLeaseId = lease.providerLeaseId }))
  return out
end

local function report(o, r)
  say("a warm `true` through the ssh provider's execute, one pooled SSH session, loopback sshd%s",
    o.net_delay > 0 and (", %g ms added each way"):format(o.net_delay) or "")
  say("%d samples each after %d warm-up calls, interleaved; peers %d samples", o.samples,
    o.warmup, o.peer_samples)
  say("%-34s %10s %10s %10s", "runner", "median", "p90", "min")
  local rows = {
    { "serve (ph-sandbox-helper serve)", r.serve },
    { "exec (ph-sandbox-helper exec)", r.exec },
    { "wrapper (sh wrapper)", r.wrapper },
    { "floor: sh -c true, same session", r.floor },
    { "peer: ssh process per command", r.ssh_process },
    { "peer: ssh over a ControlMaster", r.ssh_control_master },
  }
  for _, row in ipairs(rows) do
    say("%-34s %7.2f ms %7.2f ms %7.2f ms", row[1], row[2].median_ms, row[2].p90_ms,
      row[2].min_ms)
  end
  local s = r.serve.median_ms
  say("medians: exec/serve %.1fx, wrapper/serve %.1fx, ssh process/serve %.1fx, "
    .. "ControlMaster/serve %.1fx", r.exec.median_ms / s, r.wrapper.median_ms / s,
    r.ssh_process.median_ms / s, r.ssh_control_master.median_ms / s)
  if o.net_delay > 0 then
    local rtt = 2 * o.net_delay
    say("round trips (median / %g ms): serve %.1f, exec %.1f, wrapper %.1f, floor %.1f, "
      .. "ssh process %.1f, ControlMaster %.1f", rtt, s / rtt, r.exec.median_ms / rtt,
      r.wrapper.median_ms / rtt, r.floor.median_ms / rtt, r.ssh_process.median_ms / rtt,
      r.ssh_control_master.median_ms / rtt)
  end
  say("the lease's first execute (starts its server): %.1f ms", r.serve_first_ms)
  say("helper install: first (check + %d-byte upload) %.1f ms, found (check) %.1f ms",
    r.helper_size, r.install_first_ms, r.install_found_ms)
end

local o = parse_args(arg or {})
local tmp = assert(util.mkdtemp("ph-exec-bench-"))
local ok, res = pcall(task.run, measure, o, tmp)
pcall(task.run, clean_up)
util.remove_tree(tmp)
if not ok then
  io.stderr:write("exec_helper_bench: ", tostring(res), "\n")
  os.exit(1)
end
report(o, res)
fs.mkdirs(o.out:match("^(.*)/[^/]+$") or ".")
assert(fs.write(o.out, json.encode(res) .. "\n"))
say("results: %s", o.out)
