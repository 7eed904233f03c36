-- bench/bridge_bench.lua: the sandbox callback bridge (DESIGN.md section 5) measured side by side
-- in one run, and the exec helper against the shell wrapper and OpenSSH. A measurement, not a
-- test: targets are printed next to the figures, never asserted; the exit status says only
-- whether the driver itself ran.
--
--   build/provider-host bench/bridge_bench.lua [--quick] [--only=ours|peer] [--parts=LIST]
--        [--call-samples=N] [--requests=N] [--clients=N] [--idle=S] [--queue-calls=N]
--        [--exec-samples=N] [--ssh-samples=N] [--net-delay=MS] [--out=FILE]
--
-- Parts (--parts=local,ssh,queue,exec, all by default):
--   local  An environmentExecute with `bridge = {apiUrl, apiKey, runId}` on the local provider
--          (in process, through the worker's own dispatch: host.client) runs the agent,
--          bench/bridge_agent.lua, with PAPERCLIP_API_URL at the relay. The agent calls a fake
--          Paperclip API (bench/bridge_api.lua, a process of its own) directly and through the
--          bridge, alternating: latency on kept-alive connections and with a new connection per
--          call, requests per second with --clients concurrent clients, then an idle window
--          during which everything the bridge does is counted.
--   ssh    The same on the ssh provider against ONE real sshd on 127.0.0.1 (spec/support/
--          sshd.lua): the relay runs over an SSH channel of the pooled session, through the
--          provider's hooks.duplex, with the helper it installed (hooks.sandbox_helper).
--   queue  Upstream's queue_v1 bridge (@paperclipai/adapter-utils in spec/queue_bridge) over
--          our worker, same API, same providers: its per-call latency
--          (spec/queue_bridge/drive_bridge.mjs --calls N) and the environmentExecute requests
--          it sends while the agent is idle (bench/queue_bridge_idle.mjs).
--   exec   A warm `true` through the ssh provider's whole execute, with ph-sandbox-helper's
--          exec (useSandboxHelper true) and with the shell wrapper (false), against a new `ssh`
--          process per command and `ssh` over an OpenSSH ControlMaster connection; then the
--          same behind a TCP proxy adding --net-delay ms each way (bench/delay_proxy.mjs),
--          counted in round trips.
--
-- Every wait is bounded (RUN_DEADLINE for the whole run). The fake API, sshd, the proxies,
-- the ControlMaster connections, the Node drivers, the pooled SSH sessions and the temp dir
-- (leases, the machine's HOME, keys, known_hosts) are removed on every exit path: a normal end,
-- an error, SIGINT/SIGTERM/SIGHUP, the parent's death (SIGTERM) and the run's deadline.
local root = arg and arg[0] and arg[0]:match("^(.*)/bench/[^/]+$") or "."
package.path = root .. "/?.lua;" .. package.path

local client = require("host.client")
local fs = require("host.fs")
local http = require("host.http")
local json = require("host.json")
local lib = require("bench.lib")
local local_provider = require("providers.local")
local proc = require("host.proc")
local shell = require("host.shell")
local ssh = require("host.ssh")
local ssh_provider = require("providers.ssh")
local sshd = require("spec.support.sshd")
local sys = require("host.core.sys")
local task = require("host.task")
local util = require("host.util")

local say, fmt_ms, fmt_ratio, first_line = lib.say, lib.fmt_ms, lib.fmt_ratio, lib.first_line
local ratio, quantile, now_ms = lib.ratio, lib.quantile, lib.now_ms
local check_canceled, check_stopping = lib.check_canceled, lib.check_stopping
local new_series, add = lib.new_series, lib.add

local TARGET_ADDED_MS = 2 -- added per call on loopback: under
local TARGET_RPS = 1000 -- requests per second through the bridge: at least
local TARGET_QUEUE = 50 -- queue/ours of the added latency: at least
local TARGET_SSH = 40 -- ssh per command / helper exec: at least
local TARGET_CM = 3 -- ssh ControlMaster / helper exec: at least
local TARGET_RTT = 3 -- round trips per execute over a slow network: at most
local RUN_DEADLINE = 175 -- seconds for the whole run: then it is canceled and cleaned up
local AGENT_TIMEOUT_MS = 90000 -- the agent's execute
local EXEC_TIMEOUT_MS = 30000 -- every `true`
local CALL_TIMEOUT = 30 -- seconds for one peer `ssh`
local NODE_TIMEOUT = 100 -- seconds for one Node driver
local RUN_ID = "run-bridge-bench"

------------------------------------------------------------------------------------------------
-- options

local PARTS = { "local", "ssh", "queue", "exec" }

local function parse_args(argv)
  local o = lib.options(argv, {
    name = "bridge_bench",
    usage = "usage: provider-host bench/bridge_bench.lua [--quick] [--only=ours|peer] "
      .. "[--parts=local,ssh,queue,exec] [--call-samples=N] [--requests=N] [--clients=N] "
      .. "[--idle=S] [--queue-calls=N] [--exec-samples=N] [--ssh-samples=N] [--net-delay=MS] "
      .. "[--out=FILE]\n",
    integers = { ["--call-samples"] = { "call_samples" }, ["--requests"] = { "requests" },
      ["--clients"] = { "clients" }, ["--idle"] = { "idle" },
      ["--queue-calls"] = { "queue_calls" }, ["--exec-samples"] = { "exec_samples" },
      ["--ssh-samples"] = { "ssh_samples" }, ["--net-delay"] = { "net_delay", 0 } },
    integer_problem = "%s needs an integer of at least %d",
    other = function(key, value, o, usage)
      if key ~= "--parts" then
        return false
      end
      o.parts = o.parts or {}
      for p in (value or ""):gmatch("[^,]+") do
        local known = false
        for _, k in ipairs(PARTS) do
          known = known or k == p
        end
        if not known then
          usage("unknown part " .. p .. " (local, ssh, queue, exec)")
        end
        o.parts[p] = true
      end
      return true
    end,
  })
  o.parts = o.parts or {}
  if next(o.parts) == nil then
    for _, p in ipairs(PARTS) do
      o.parts[p] = true
    end
  end
  local q = o.quick
  o.call_samples = o.call_samples or (q and 100 or 500)
  o.call_warmup = q and 10 or 20
  o.requests = o.requests or (q and 1000 or 4000)
  o.clients = o.clients or 16
  o.idle = o.idle or (q and 2 or 5)
  o.queue_calls = o.queue_calls or (q and 10 or 20)
  o.exec_samples = o.exec_samples or (q and 50 or 200)
  o.ssh_samples = o.ssh_samples or (q and 8 or 20)
  o.net_delay = o.net_delay or 20
  o.delay_samples = q and 6 or 15
  o.delay_peer_samples = q and 2 or 3
  o.out = o.out or (root .. "/bench/results/bridge.json")
  return o
end

------------------------------------------------------------------------------------------------
-- small helpers

local function fmt_rps(r)
  return r and ("%.0f/s"):format(r) or "-"
end

local function verdict(ok, text)
  if ok == nil then
    return "-"
  end
  return (ok and "met" or "MISSED") .. " (" .. text .. ")"
end

------------------------------------------------------------------------------------------------
-- the run's state and its cleanup

local state = {
  procs = {}, -- name -> host.proc Process (the fake API, the proxies, Node drivers)
  sessions = {}, -- client sessions: their in-flight requests are canceled
  control_paths = {}, -- {port=, path=} of ControlMaster connections
}

local counts = {
  executes = 0, -- provider execute hooks
  duplex_opens = 0, -- duplex executions opened (the relay)
  duplex_writes = 0, -- writes host -> relay
  duplex_write_bytes = 0,
  relay_chunks = 0, -- output chunks relay -> host
  relay_bytes = 0,
  ssh_exec = 0, -- host.ssh.exec calls (an SSH channel each)
  ssh_open = 0, -- host.ssh.open calls (an SSH channel each)
}
local real_exec, real_open = ssh.exec, ssh.open

local function snapshot()
  local s = {}
  for k, v in pairs(counts) do
    s[k] = v
  end
  s.ssh_connects = ssh.stats().connects
  s.at = task.now()
  return s
end

local function diff(a, b)
  if not a or not b then
    return nil
  end
  local d = {}
  for k, v in pairs(b) do
    d[k] = v - (a[k] or 0)
  end
  d.seconds, d.at = d.at, nil
  return d
end

-- Every live process whose command line mentions text (our temp dir), except us.
local function processes_mentioning(text)
  local out, me = {}, sys.getpid()
  for _, name in ipairs(fs.list("/proc") or {}) do
    local pid = tonumber(name)
    local cmdline = pid and pid ~= me and fs.read("/proc/" .. name .. "/cmdline")
    if cmdline and cmdline:find(text, 1, true) then
      out[#out + 1] = pid
    end
  end
  return out
end

local function stop_process(p)
  if p and not p:done() then
    p:kill("SIGTERM")
    if not p:wait(3) then
      p:kill("SIGKILL")
      p:wait(2)
    end
  end
  if p then
    p:close()
  end
end

local function cleanup()
  local notes = {}
  local function try(what, fn, ...)
    local ok, err = pcall(fn, ...)
    if not ok then
      notes[#notes + 1] = what .. ": " .. tostring(err)
    end
  end
  for _, s in ipairs(state.sessions) do
    for t in pairs(s.worker.inflight or {}) do
      if not t:done() then
        t:cancel()
      end
    end
  end
  for _, cm in ipairs(state.control_paths) do
    try("closing a ControlMaster", function()
      proc.run({ argv = { "ssh", "-O", "exit", "-o", "ControlPath=" .. cm.path, "-p",
        tostring(cm.port), cm.dest }, timeout = 5 })
    end)
  end
  state.control_paths = {}
  for name, p in pairs(state.procs) do
    try("stopping " .. name, stop_process, p)
  end
  state.procs = {}
  -- anything still running from our temp dir: the agents (their --tag), upstream's gateway,
  -- ControlMaster processes
  if state.tmp then
    for round = 1, 2 do
      local left = processes_mentioning(state.tmp)
      for _, pid in ipairs(left) do
        pcall(sys.kill, pid, round == 1 and "SIGTERM" or "SIGKILL")
      end
      if #left == 0 then
        break
      end
      task.sleep(0.3)
    end
  end
  for _, s in ipairs(state.sessions) do
    for t in pairs(s.worker.inflight or {}) do
      if not t:done() then
        t:wait(5)
      end
    end
  end
  state.sessions = {}
  ssh.close_all()
  ssh.exec, ssh.open = real_exec, real_open
  lib.stop_sshd(state, notes)
  if state.tmp then
    local left = processes_mentioning(state.tmp)
    if #left > 0 then
      notes[#notes + 1] = ("%d process(es) from %s still running: %s"):format(#left, state.tmp,
        table.concat(left, " "))
    end
  end
  lib.remove_tmp(state, notes)
  return notes
end

------------------------------------------------------------------------------------------------
-- counting: what the providers and host.ssh do (for the idle window)

ssh.exec = function(o)
  counts.ssh_exec = counts.ssh_exec + 1
  return real_exec(o)
end
ssh.open = function(o)
  counts.ssh_open = counts.ssh_open + 1
  return real_open(o)
end

-- A duplex whose writes are counted.
local Counted = {}
Counted.__index = Counted
function Counted:write(data)
  counts.duplex_writes = counts.duplex_writes + 1
  counts.duplex_write_bytes = counts.duplex_write_bytes + #data
  return self.inner:write(data)
end
function Counted:close_stdin()
  return self.inner:close_stdin()
end
function Counted:wait(timeout)
  return self.inner:wait(timeout)
end
function Counted:close()
  return self.inner:close()
end
Counted.__close = Counted.close

local function counted_duplex(d)
  return setmetatable({ inner = d, pid = d.pid }, Counted)
end

local function counting_output(fn)
  return function(chunk)
    counts.relay_chunks = counts.relay_chunks + 1
    counts.relay_bytes = counts.relay_bytes + #chunk
    return fn(chunk)
  end
end

-- A copy of provider p whose execute and duplex hooks are counted.
local function counted_provider(p)
  local copy, hooks = {}, {}
  for k, v in pairs(p) do
    copy[k] = v
  end
  for k, v in pairs(p.hooks) do
    hooks[k] = v
  end
  hooks.execute = function(ctx, params)
    counts.executes = counts.executes + 1
    return p.hooks.execute(ctx, params)
  end
  if p.hooks.duplex then
    hooks.duplex = function(ctx, params)
      counts.duplex_opens = counts.duplex_opens + 1
      params.on_stdout = counting_output(params.on_stdout)
      local d, err, code = p.hooks.duplex(ctx, params)
      if not d then
        return nil, err, code
      end
      return counted_duplex(d)
    end
  end
  copy.hooks = hooks
  return copy
end

-- An in-process worker session (host.client) for provider p: marks the idle window when the
-- agent's output says so.
local function new_session(p)
  local s = { provider = counted_provider(p), marks = {}, tail = "" }
  s.client = client.session({ s.provider }, {
    company_id = "company-bench",
    on_log = function(stream, chunk)
      if stream ~= "stdout" then
        return
      end
      local text = s.tail .. chunk
      if not s.marks.start and text:find("IDLE-START\n", 1, true) then
        s.marks.start = snapshot()
      end
      if s.marks.start and not s.marks.stop and text:find("IDLE-END\n", 1, true) then
        s.marks.stop = snapshot()
      end
      s.tail = text:sub(-16)
    end,
  })
  s.worker = s.client.worker
  state.sessions[#state.sessions + 1] = s
  return s
end

local function call(s, method, params)
  local r, err = s.client:call(method, params)
  if not r then
    check_stopping()
    return nil, err and err.message or "no reply"
  end
  return r
end

local function lease_param(lease)
  return { providerLeaseId = lease.providerLeaseId, metadata = lease.metadata }
end

------------------------------------------------------------------------------------------------
-- (1), (2): the agent through our bridge

local function agent_argv(o, c)
  return {
    c.root .. "/bench/bridge_agent.lua",
    "--direct-url=" .. c.api_url,
    "--direct-key=" .. c.api_key,
    "--samples=" .. o.call_samples,
    "--warmup=" .. o.call_warmup,
    "--requests=" .. o.requests,
    "--clients=" .. o.clients,
    "--idle=" .. o.idle,
    "--tag=" .. c.tmp,
  }
end

-- Runs the agent in the lease with a bridge (params.bridge: the provider's own hooks.duplex and
-- hooks.sandbox_helper); its result, with what the bridge did while the agent was idle.
local function run_agent(o, c, s, cfg, lp)
  s.marks, s.tail = {}, ""
  local params = { config = cfg, lease = lp, command = c.bin, args = agent_argv(o, c), env = {},
    timeoutMs = AGENT_TIMEOUT_MS,
    bridge = { apiUrl = c.api_url, apiKey = c.api_key, runId = RUN_ID } }
  local before = snapshot()
  local r, err = call(s, "environmentExecute", params)
  local after = snapshot()
  if not r then
    error("the agent's execute failed: " .. tostring(err), 0)
  elseif r.exitCode ~= 0 then
    error(("the agent exited %s: %s"):format(tostring(r.exitCode), r.stderr:sub(-1000)), 0)
  end
  local line = r.stdout:match("RESULT ([^\n]+)")
  local res = line and json.decode(line)
  if type(res) ~= "table" then
    error("the agent printed no result: " .. r.stdout:sub(-500), 0)
  end
  res.idle_counts = diff(s.marks.start, s.marks.stop)
  res.run_counts = diff(before, after)
  return res
end

-- The figures of one agent run.
local function bridge_figures(res)
  local f = { latency = {}, rps = res.rps, idle = res.idle, idle_counts = res.idle_counts,
    run_counts = res.run_counts, failures = 0 }
  for mode, l in pairs(res.latency) do
    f.latency[mode] = {}
    for _, k in ipairs({ "direct", "bridged" }) do
      local sm = lib.summary(l[k].samples)
      sm.failures, sm.reasons = l[k].failures, l[k].reasons
      sm.samples = l[k].samples
      f.latency[mode][k] = sm
      f.failures = f.failures + l[k].failures
    end
    f.latency[mode].added_median_ms = f.latency[mode].bridged.median_ms
      - f.latency[mode].direct.median_ms
    f.latency[mode].added_p90_ms = f.latency[mode].bridged.p90_ms - f.latency[mode].direct.p90_ms
    f.failures = f.failures + (l.warmup_failures or 0)
  end
  for _, m in pairs(res.rps) do
    f.failures = f.failures + m.direct.failures + m.bridged.failures
  end
  return f
end

local function part_local(o, c)
  local s = new_session(local_provider)
  local cfg = { root = c.tmp .. "/leases", timeoutMs = 300000 }
  local lease = assert(call(s, "environmentAcquireLease", { config = cfg, runId = RUN_ID }))
  local ok, res = pcall(run_agent, o, c, s, cfg, lease_param(lease))
  call(s, "environmentReleaseLease", { config = cfg, providerLeaseId = lease.providerLeaseId,
    leaseMetadata = lease.metadata })
  if not ok then
    error(res, 0)
  end
  return bridge_figures(res)
end

------------------------------------------------------------------------------------------------
-- the ssh provider: one lease for (2) and (4)

local function ssh_config(c, extra)
  local cfg = { host = c.server.host, port = c.server.port, user = c.server.user,
    privateKey = c.key.private, hostKeyPolicy = "accept-new", knownHostsFile = c.known_hosts,
    workspaceRoot = c.tmp .. "/ssh-leases", timeoutMs = 300000, useSandboxHelper = true }
  for k, v in pairs(extra or {}) do
    cfg[k] = v
  end
  return cfg
end

local function ssh_lease(c)
  if c.ssh then
    return c.ssh
  end
  local s = new_session(ssh_provider)
  local cfg = ssh_config(c)
  local lease, err = call(s, "environmentAcquireLease", { config = cfg, runId = RUN_ID })
  if not lease then
    error("ssh: acquire failed: " .. tostring(err), 0)
  end
  c.ssh = { session = s, config = cfg, lease = lease, lp = lease_param(lease) }
  return c.ssh
end

local function part_ssh(o, c)
  if not ssh_provider.hooks.duplex or not ssh_provider.hooks.sandbox_helper then
    error("ssh: the ssh provider has no hooks.duplex or hooks.sandbox_helper: it cannot carry "
      .. "a bridge", 0)
  end
  local l = ssh_lease(c)
  return bridge_figures(run_agent(o, c, l.session, l.config, l.lp))
end

------------------------------------------------------------------------------------------------
-- (3) upstream's queue bridge

local function node_available(c)
  if c.node_ok ~= nil then
    return c.node_ok, c.node_why
  end
  local r = proc.run({ argv = { "node", "--version" }, timeout = 30 })
  if not r or r.exit_code ~= 0 then
    c.node_ok, c.node_why = false, "node is not installed"
  elseif not fs.stat(c.root .. "/spec/queue_bridge/node_modules/@paperclipai/adapter-utils/"
      .. "package.json") then
    c.node_ok, c.node_why = false, "@paperclipai/adapter-utils is not installed in "
      .. "spec/queue_bridge (npm ci --prefix spec/queue_bridge)"
  else
    c.node_ok, c.node_version = true, first_line(r.stdout)
  end
  return c.node_ok, c.node_why
end

-- Runs a Node driver; its last stdout line as JSON.
local function node_json(c, name, argv, cwd)
  local out, err_text = {}, {}
  local p = assert(proc.spawn({ argv = argv, cwd = cwd, timeout = NODE_TIMEOUT, kill_grace = 2,
    env = { PATH = os.getenv("PATH"), TMPDIR = c.tmp .. "/node-tmp", HOME = c.tmp .. "/home" },
    on_stdout = function(chunk)
      out[#out + 1] = chunk
    end,
    on_stderr = function(chunk)
      err_text[#err_text + 1] = chunk
    end,
    keep_output = false }))
  state.procs[name] = p
  local r, werr, code = p:wait()
  state.procs[name] = nil
  p:close()
  check_canceled(code)
  local text = table.concat(out)
  local report = json.decode(text:match("([^\n]+)\n?$") or "")
  if type(report) ~= "table" then
    error(("%s printed no report (%s): %s %s"):format(name, r and ("exit " .. tostring(
      r.exit_code)) or tostring(werr), text:sub(-500), table.concat(err_text):sub(-1500)), 0)
  end
  return report
end

local function queue_configs(c)
  return {
    ["local"] = { root = c.tmp .. "/qleases", timeoutMs = 120000 },
    ssh = ssh_config(c, { workspaceRoot = c.tmp .. "/qleases-ssh", timeoutMs = 120000 }),
  }
end

local function part_queue(o, c)
  local out = {}
  local cfgs = queue_configs(c)
  for _, provider in ipairs({ "local", "ssh" }) do
    local cfg = json.encode(cfgs[provider])
    local drive = node_json(c, "drive_bridge.mjs", {
      "node", c.root .. "/spec/queue_bridge/drive_bridge.mjs", "--binary", c.bin,
      "--provider", provider, "--config", cfg, "--api-url", c.api_url, "--api-key", c.api_key,
      "--calls", tostring(o.queue_calls), "--warmup", "1", "--no-tail" },
      c.root .. "/spec/queue_bridge")
    local idle = node_json(c, "queue_bridge_idle.mjs", {
      "node", c.root .. "/bench/queue_bridge_idle.mjs", "--binary", c.bin,
      "--provider", provider, "--config", cfg, "--api-url", c.api_url, "--api-key", c.api_key,
      "--idle", tostring(o.idle), "--settle", "1" }, c.root .. "/bench")
    local failed = {}
    for _, ch in ipairs(drive.checks or {}) do
      if not ch.ok then
        failed[#failed + 1] = ch.name
      end
    end
    out[provider] = {
      ok = drive.ok == true and idle.ok == true,
      latency = drive.latency,
      latencies_ms = drive.latenciesMs,
      execs = drive.execs,
      bridge_start_ms = drive.bridgeStartMs,
      adapter_utils = drive.adapterUtilsVersion,
      failed_checks = failed,
      error = drive.error or idle.error,
      idle = idle.idle,
      idle_command_runner = idle.commandRunner,
    }
    say("  queue bridge over %s: per-call median %s (%d calls), idle %s environmentExecute/s",
      provider, fmt_ms(drive.latency and drive.latency.median), drive.latency and drive.latency.n
      or 0, idle.idle and ("%.1f"):format(idle.idle.perSecond) or "?")
  end
  return out
end

------------------------------------------------------------------------------------------------
-- (4) exec: helper vs wrapper vs ssh vs ControlMaster

local exec_seq = 0
local function execute_true(l, cfg)
  exec_seq = exec_seq + 1
  local ms, r, err = lib.timed(call, l.session, "environmentExecute", { config = cfg,
    lease = l.lp, command = "true", args = {}, env = {}, timeoutMs = EXEC_TIMEOUT_MS,
    executionId = ("bench-%d-%d"):format(sys.getpid(), exec_seq) })
  if not r then
    return ms, "error: " .. first_line(err)
  end
  return ms, lib.execute_failure(r)
end

-- The floor: `true` on a channel of the pooled session, nothing around it (host.ssh.exec); or
-- another command there (the login profile alone).
local PROFILE = "sh -c 'if [ -f /etc/profile ]; then . /etc/profile >/dev/null 2>&1 || true; fi'"
local function floor_exec(c, port, cmd)
  local ms, res, err, code = lib.timed(ssh.exec, { host = c.server.host, port = port,
    user = c.server.user, key = c.key.private, host_key_policy = "accept-new",
    known_hosts = c.known_hosts, timeout = CALL_TIMEOUT, cmd = cmd or "true" })
  return ms, lib.command_failure(res, err, code)
end

local function peer_exec(argv)
  return lib.run_timed(argv, CALL_TIMEOUT)
end

-- What upstream exe.dev's execute sends for `true` in cwd (providers.md 3.3, 0.1.2: the login
-- profiles, cd, exec), as `sh -c '<script>'`.
local function upstream_script(cwd)
  local function source(file)
    return ('if [ -f %s ]; then . %s >/dev/null 2>&1 || true; fi'):format(file, file)
  end
  return "sh -c " .. shell.quote(table.concat({
    source("/etc/profile"),
    source('"$HOME/.profile"'),
    'if [ -f "$HOME/.bash_profile" ]; then . "$HOME/.bash_profile" >/dev/null 2>&1 || true; '
      .. 'elif [ -f "$HOME/.bashrc" ]; then . "$HOME/.bashrc" >/dev/null 2>&1 || true; fi',
    source('"$HOME/.zprofile"'),
    "cd " .. shell.quote(cwd),
    "exec 'true'",
  }, " && "))
end

-- upstream's runSshCommand argv (as bench/ssh_bench.lua's peer), optionally over an OpenSSH
-- ControlMaster connection (ControlPersist=60, closed with -O exit at the end).
local function ssh_argv(c, port, control, remote_command)
  local extra
  if control then
    local path = c.tmp .. "/cm-%C"
    extra = { "-o", "ControlMaster=auto", "-o", "ControlPath=" .. path, "-o", "ControlPersist=60" }
    local known = false
    for _, cm in ipairs(state.control_paths) do
      known = known or cm.port == port
    end
    if not known then
      state.control_paths[#state.control_paths + 1] = { port = port, path = path,
        dest = c.server.user .. "@" .. c.server.host }
    end
  end
  return lib.upstream_ssh_argv({ known_hosts = c.tmp .. "/known_hosts_peer", port = port,
    key = c.key.path, dest = c.server.user .. "@" .. c.server.host, command = remote_command,
    extra = extra })
end

-- What runs the command: the parent of `sh -c ...` as the runner started it.
local function runner_of(l, cfg)
  local r = call(l.session, "environmentExecute", { config = cfg, lease = l.lp, command = "sh",
    args = { "-c", 'tr "\\0" " " < /proc/$PPID/cmdline' }, env = {}, timeoutMs = EXEC_TIMEOUT_MS })
  return r and first_line(r.stdout):sub(1, 120) or "?"
end

-- The candidates of (4), in table order: key, label, who (ours/peer).
local EXEC_CANDIDATES = {
  { key = "helper", who = "ours",
    label = "ours: ph-sandbox-helper serve (useSandboxHelper: true)" },
  { key = "wrapper", who = "ours", label = "ours: sh wrapper (useSandboxHelper: false)" },
  { key = "floor", who = "ours", label = "floor: host.ssh.exec `true`, same pooled session" },
  { key = "profile", who = "ours",
    label = "floor: host.ssh.exec of `. /etc/profile` alone (sh -c)" },
  { key = "ssh", who = "peer", label = "ssh per command, `true`" },
  { key = "ssh_script", who = "peer", label = "ssh per command, upstream's execute script" },
  { key = "cm", who = "peer", label = "ssh ControlMaster (warm), `true`" },
  { key = "cm_script", who = "peer", label = "ssh ControlMaster, upstream's execute script" },
}

-- Samples of every candidate on sshd at `port`, interleaved so they share the machine's noise:
-- n[key] samples each, spread evenly over the rounds, the order reversed every other round.
local function exec_round(o, c, l, port, n)
  local cfg_helper = ssh_config(c, { port = port, useSandboxHelper = true })
  local cfg_wrapper = ssh_config(c, { port = port, useSandboxHelper = false })
  local script = upstream_script(l.lease.metadata.remoteCwd)
  local run = {
    helper = function()
      return execute_true(l, cfg_helper)
    end,
    wrapper = function()
      return execute_true(l, cfg_wrapper)
    end,
    floor = function()
      return floor_exec(c, port)
    end,
    profile = function()
      return floor_exec(c, port, PROFILE)
    end,
    ssh = function()
      return peer_exec(ssh_argv(c, port, false, "true"))
    end,
    ssh_script = function()
      return peer_exec(ssh_argv(c, port, false, script))
    end,
    cm = function()
      return peer_exec(ssh_argv(c, port, true, "true"))
    end,
    cm_script = function()
      return peer_exec(ssh_argv(c, port, true, script))
    end,
  }
  local list, most = {}, 0
  for _, cand in ipairs(EXEC_CANDIDATES) do
    if (o[cand.who] and (n[cand.key] or 0) > 0) then
      list[#list + 1] = cand
      most = math.max(most, n[cand.key])
    end
  end
  local r = { warmup = {}, script = script }
  for _, cand in ipairs(list) do
    r[cand.key] = new_series()
    r.warmup[cand.key] = {}
    -- warm-up: a session through the proxy, the helper check, the ControlMaster, host keys
    for i = 1, cand.who == "ours" and 3 or (cand.key:find("^cm") and 2 or 1) do
      local ms, fail = run[cand.key]()
      r.warmup[cand.key][i] = ms
      if fail then
        error(("%s: the warm-up failed: %s"):format(cand.label, fail), 0)
      end
    end
  end
  for i = 1, most do
    local order = {}
    for _, cand in ipairs(list) do
      local k = n[cand.key]
      if math.floor(i * k / most) > math.floor((i - 1) * k / most) then
        order[#order + 1] = cand
      end
    end
    for j = 1, #order do
      local cand = order[i % 2 == 0 and (#order - j + 1) or j]
      add(r[cand.key], run[cand.key]())
    end
  end
  for _, cand in ipairs(list) do
    lib.summarize(r[cand.key])
  end
  if o.ours then
    r.runner_helper = runner_of(l, cfg_helper)
    r.runner_wrapper = runner_of(l, cfg_wrapper)
  end
  return r
end

-- A Node delay proxy to port; its own port.
local function start_proxy(c, name, port, delay)
  local out = {}
  local p = assert(proc.spawn({ argv = { "node", c.root .. "/bench/delay_proxy.mjs",
    "--target=" .. port, "--delay-ms=" .. delay }, stdin = true, timeout = RUN_DEADLINE + 30,
    kill_grace = 1, keep_output = false, on_stdout = function(chunk)
      out[#out + 1] = chunk
    end }))
  state.procs[name] = p
  local deadline = task.now() + 15
  while not table.concat(out):find("\n") do
    if p:done() or task.now() > deadline then
      error(name .. ": the delay proxy did not start", 0)
    end
    local _, _, code = task.sleep(0.01)
    check_canceled(code)
  end
  return tonumber(table.concat(out):match("listening (%d+)"))
end

local function end_proxy(name)
  stop_process(state.procs[name])
  state.procs[name] = nil
end

-- The round trip through a delay proxy, measured: HTTP GETs on one kept-alive connection to
-- the fake API through a proxy of its own with the same delay.
local function measure_rtt(c, delay)
  local port = start_proxy(c, "delay proxy (API)", c.api_port, delay)
  local url = ("http://127.0.0.1:%d/__bench/stats"):format(port)
  local samples = {}
  for i = 1, 11 do
    local t0 = now_ms()
    local r, _, code = http.request({ url = url, timeout = 10 })
    check_canceled(code)
    if r and r.status == 200 and i > 1 then -- the first one also connects
      samples[#samples + 1] = now_ms() - t0
    end
  end
  end_proxy("delay proxy (API)")
  return quantile(samples, 0.5)
end

local function part_exec(o, c)
  local l = ssh_lease(c)
  local out = {}
  local cm_n = math.min(o.exec_samples, 100)
  out.loopback = exec_round(o, c, l, c.server.port, { helper = o.exec_samples,
    wrapper = o.exec_samples, floor = o.exec_samples, profile = math.ceil(o.exec_samples / 4),
    cm = cm_n, cm_script = cm_n,
    ssh = o.ssh_samples, ssh_script = math.ceil(o.ssh_samples / 2) })
  local lb = out.loopback
  say("  exec on loopback (medians): helper %s, wrapper %s, ssh %s, ControlMaster %s",
    fmt_ms(lb.helper and lb.helper.median_ms), fmt_ms(lb.wrapper and lb.wrapper.median_ms),
    fmt_ms(lb.ssh and lb.ssh.median_ms), fmt_ms(lb.cm and lb.cm.median_ms))
  if o.net_delay > 0 then
    local ok, why = node_available(c)
    if not ok and why == "node is not installed" then
      out.delay_skipped = "node is not installed (the delay proxy is a Node script)"
    else
      out.delay_ms = o.net_delay
      out.rtt_nominal_ms = 2 * o.net_delay
      out.rtt_measured_ms = measure_rtt(c, o.net_delay)
      local port = start_proxy(c, "delay proxy (sshd)", c.server.port, o.net_delay)
      local dn, pn = o.delay_samples, o.delay_peer_samples
      out.delayed = exec_round(o, c, l, port, { helper = dn, wrapper = dn, floor = dn,
        cm = dn, cm_script = dn, ssh = pn, ssh_script = pn })
      end_proxy("delay proxy (sshd)")
      local d = out.delayed
      say("  exec over a %d ms RTT (medians): helper %s, wrapper %s", 2 * o.net_delay,
        fmt_ms(d.helper and d.helper.median_ms), fmt_ms(d.wrapper and d.wrapper.median_ms))
    end
  end
  return out
end

------------------------------------------------------------------------------------------------
-- setup

local function start_api(c)
  local out = {}
  local p = assert(proc.spawn({ argv = { c.bin, c.root .. "/bench/bridge_api.lua", c.api_key },
    timeout = RUN_DEADLINE + 30, kill_grace = 1, keep_output = false,
    on_stdout = function(chunk)
      out[#out + 1] = chunk
    end }))
  state.procs["fake API"] = p
  local deadline = task.now() + 15
  while not table.concat(out):find("\n") do
    if p:done() or task.now() > deadline then
      error("the fake API did not start", 0)
    end
    local _, _, code = task.sleep(0.01)
    check_canceled(code)
  end
  c.api_url = table.concat(out):match("listening (%S+)")
  c.api_port = tonumber(c.api_url:match(":(%d+)$"))
end

local function setup(o)
  local c = { root = assert(fs.realpath(root)), bin = assert(sys.exe_path()) }
  local tmp = assert(util.mkdtemp("ph-bridge-bench-")) -- 0700
  state.tmp, c.tmp = tmp, tmp
  for _, d in ipairs({ "home", "leases", "ssh-leases", "qleases", "qleases-ssh", "node-tmp" }) do
    assert(fs.mkdir(tmp .. "/" .. d, tonumber("700", 8)))
  end
  c.api_key = "real-paperclip-key-" .. util.hex(assert(util.random(12)))
  start_api(c)
  if o.parts.ssh or o.parts.exec or o.parts.queue then
    local missing = lib.sshd_missing()
    if missing then
      return nil, missing
    end
    c.key = lib.client_key(tmp)
    c.known_hosts = tmp .. "/known_hosts"
    -- The machine's HOME is the temp dir's home/: ph-sandbox-helper goes to home/.paperclip/bin
    -- and host.remote's control dirs to home/.paperclip-executions, never the account's own.
    -- SetEnv sets HOME (after sshd's own) and SHLVL=1 (bash skips ~/.bashrc, as sshd.lua
    -- does by default; only sshd's first SetEnv line counts, hence rc = true and one line).
    c.server = lib.start_sshd(state, c.key, { rc = true, max_sessions = 50,
      config = { "SetEnv SHLVL=1 HOME=" .. tmp .. "/home" } })
    c.ssh_version = lib.version({ "ssh", "-V" })
  end
  return c
end

------------------------------------------------------------------------------------------------
-- report

-- The first and last columns left-aligned, the figures between them right-aligned.
local function print_table(title, heads, rows)
  lib.print_table(title, heads, rows, { [1] = true, [#heads] = true })
end

local function bridge_rows(f)
  local rows = {}
  for _, mode in ipairs({ "keepalive", "newconn" }) do
    local l = f.latency[mode]
    local name = mode == "keepalive" and "call latency, kept-alive connection"
      or "call latency, new connection per call"
    local added = l.added_median_ms
    rows[#rows + 1] = { name .. ": median", fmt_ms(l.direct.median_ms), fmt_ms(l.bridged.median_ms),
      fmt_ms(added), verdict(added < TARGET_ADDED_MS, ("< %d ms added"):format(TARGET_ADDED_MS)) }
    rows[#rows + 1] = { "  p90", fmt_ms(l.direct.p90_ms), fmt_ms(l.bridged.p90_ms),
      fmt_ms(l.added_p90_ms), "" }
  end
  for _, mode in ipairs({ "keepalive", "newconn" }) do
    local r = f.rps[mode]
    local name = ("requests/s, %d clients, %s"):format(r.bridged.clients, mode == "keepalive"
      and "kept alive" or "new connection per call")
    rows[#rows + 1] = { name, fmt_rps(r.direct.rps), fmt_rps(r.bridged.rps),
      ("%s of direct"):format(fmt_ratio(r.bridged.rps / r.direct.rps)),
      verdict(r.bridged.rps >= TARGET_RPS, (">= %d/s"):format(TARGET_RPS)) }
  end
  rows[#rows + 1] = { "failed calls (all phases)", "", tostring(f.failures), "", "" }
  return rows
end

local function idle_value(f, key)
  if not f or not f.idle_counts then
    return "-"
  end
  return tostring(f.idle_counts[key])
end

local function report_all(o, r)
  local heads = { "metric", "direct", "bridged", "added", "target" }
  for _, name in ipairs({ "local", "ssh" }) do
    local f = r[name]
    if f then
      local title = "(%s) %s: agent -> relay (ph-sandbox-helper relay, %s) -> host.bridge -> API"
      print_table(title:format(name == "local" and "1" or "2", name, name == "local"
        and "a local process, the local provider's hooks.duplex"
        or "an SSH channel, the ssh provider's hooks.duplex"), heads, bridge_rows(f))
    end
  end
  -- idle
  if r["local"] or r.ssh or r.queue then
    local q = r.queue or {}
    local function qv(p, fn)
      return q[p] and q[p].idle and fn(q[p].idle) or "-"
    end
    local rows = {
      { "window (s)", r["local"] and ("%.2f"):format(r["local"].idle_counts.seconds) or "-",
        r.ssh and ("%.2f"):format(r.ssh.idle_counts.seconds) or "-",
        qv("local", function(i) return ("%.2f"):format(i.seconds) end),
        qv("ssh", function(i) return ("%.2f"):format(i.seconds) end) },
      { "environmentExecute requests (provider execute hooks)", idle_value(r["local"], "executes"),
        idle_value(r.ssh, "executes"), qv("local", function(i) return tostring(i.execs) end),
        qv("ssh", function(i) return tostring(i.execs) end) },
      { "  per second", r["local"] and ("%.1f"):format(r["local"].idle_counts.executes
        / r["local"].idle_counts.seconds) or "-", r.ssh and ("%.1f"):format(
        r.ssh.idle_counts.executes / r.ssh.idle_counts.seconds) or "-",
        qv("local", function(i) return ("%.1f"):format(i.perSecond) end),
        qv("ssh", function(i) return ("%.1f"):format(i.perSecond) end) },
      { "SSH channels opened (host.ssh exec + open)", "-", r.ssh and tostring(
        r.ssh.idle_counts.ssh_exec + r.ssh.idle_counts.ssh_open) or "-", "", "" },
      { "new SSH connections", "-", idle_value(r.ssh, "ssh_connects"), "", "" },
      { "duplex executions opened", idle_value(r["local"], "duplex_opens"),
        idle_value(r.ssh, "duplex_opens"), "", "" },
      { "bytes host -> relay", idle_value(r["local"], "duplex_write_bytes"),
        idle_value(r.ssh, "duplex_write_bytes"), "", "" },
      { "bytes relay -> host", idle_value(r["local"], "relay_bytes"),
        idle_value(r.ssh, "relay_bytes"), "", "" },
      { "requests reaching the API", r["local"] and tostring(r["local"].idle.api_requests) or "-",
        r.ssh and tostring(r.ssh.idle.api_requests) or "-", "", "" },
    }
    print_table(("(3a) idle: %d s without a call from the agent, counted"):format(o.idle),
      { "metric", "ours local", "ours ssh", "queue local", "queue ssh" }, rows)
  end
  if r.queue then
    local rows = {}
    for _, p in ipairs({ "local", "ssh" }) do
      local q, f = r.queue[p], r[p]
      if q and q.latency then
        local direct = f and f.latency.keepalive.direct.median_ms
        local ours_added = f and f.latency.keepalive.added_median_ms
        local q_added = direct and q.latency.median - direct or q.latency.median
        local rt = ratio(ours_added, q_added)
        q.added_median_ms, q.ratio_added = q_added, rt
        rows[#rows + 1] = { p .. ": per-call latency, median", f and fmt_ms(
          f.latency.keepalive.bridged.median_ms) or "-", fmt_ms(q.latency.median),
          fmt_ratio(ratio(f and f.latency.keepalive.bridged.median_ms, q.latency.median)), "" }
        rows[#rows + 1] = { "  p90", f and fmt_ms(f.latency.keepalive.bridged.p90_ms) or "-",
          fmt_ms(q.latency.p90), "", "" }
        rows[#rows + 1] = { "  added to a direct call, median", fmt_ms(ours_added),
          fmt_ms(q_added), fmt_ratio(rt), rt and verdict(rt >= TARGET_QUEUE, (">= %dx")
          :format(TARGET_QUEUE)) or "-" }
        rows[#rows + 1] = { "  commands per second while idle", f and ("%.1f"):format(
          f.idle_counts.executes / f.idle_counts.seconds) or "-", q.idle and ("%.1f"):format(
          q.idle.perSecond) or "-", "", "" }
      end
    end
    print_table("(3b) against upstream's queue bridge (queue_v1) over the same provider",
      { "metric", "ours", "queue", "queue/ours", "target" }, rows)
  end
  if r.exec then
    local e = r.exec
    local function targets(key, h, v)
      if key == "ssh" or key == "ssh_script" then
        return verdict(v / h >= TARGET_SSH, (">= %dx"):format(TARGET_SSH))
      elseif key == "cm" or key == "cm_script" then
        return verdict(v / h >= TARGET_CM, (">= %dx"):format(TARGET_CM))
      end
      return ""
    end
    local rows = {}
    local lb = e.loopback
    local h = lb.helper and lb.helper.median_ms
    for _, cand in ipairs(EXEC_CANDIDATES) do
      local x = lb[cand.key]
      if x then
        rows[#rows + 1] = { cand.label, fmt_ms(x.median_ms), fmt_ms(x.p90_ms),
          h and fmt_ratio(ratio(h, x.median_ms)) or "-", tostring(x.failures),
          h and x.median_ms and targets(cand.key, h, x.median_ms) or "" }
      end
    end
    print_table("(4a) a warm `true` through the ssh provider's whole execute (environmentExecute), "
      .. "loopback", { "candidate", "median", "p90", "x helper", "failures", "target" }, rows)
    local d = e.delayed
    if d then
      rows = {}
      local rtt = e.rtt_nominal_ms
      for _, cand in ipairs(EXEC_CANDIDATES) do
        local x, base = d[cand.key], lb[cand.key]
        if x and x.median_ms then
          local total = x.median_ms / rtt
          local net = base and base.median_ms and (x.median_ms - base.median_ms) / rtt
          local target = ""
          if cand.key == "helper" or cand.key == "wrapper" then
            target = verdict(total <= TARGET_RTT, ("<= %d"):format(TARGET_RTT))
          end
          rows[#rows + 1] = { cand.label, fmt_ms(x.median_ms), fmt_ms(x.p90_ms),
            ("%.2f"):format(total), net and ("%.2f"):format(net) or "-", tostring(x.failures),
            target }
        end
      end
      print_table(("(4b) the same behind a TCP proxy adding %d ms each way (RTT %d ms; "
        .. "measured %s)"):format(e.delay_ms, rtt, fmt_ms(e.rtt_measured_ms)),
        { "candidate", "median", "p90", ("median/%d ms"):format(rtt),
          "(median - loopback)/RTT", "failures", "target (round trips)" }, rows)
    end
  end
end

local function bridge_json(f)
  if not f then
    return json.null
  end
  local out = { failures = f.failures, idle = f.idle, idleCounts = f.idle_counts,
    runCounts = f.run_counts, rps = f.rps, latency = {} }
  for mode, l in pairs(f.latency) do
    out.latency[mode] = { addedMedianMs = l.added_median_ms, addedP90Ms = l.added_p90_ms }
    for _, k in ipairs({ "direct", "bridged" }) do
      local s = l[k]
      out.latency[mode][k] = { n = s.n, medianMs = s.median_ms, p90Ms = s.p90_ms,
        minMs = s.min_ms, failures = s.failures, failureReasons = s.reasons,
        samplesMs = json.array(s.samples) }
    end
  end
  return out
end

local function exec_json(x)
  if not x then
    return json.null
  end
  local out = { warmupMs = x.warmup, runnerHelper = x.runner_helper,
    runnerWrapper = x.runner_wrapper, upstreamScript = x.script }
  for _, cand in ipairs(EXEC_CANDIDATES) do
    if x[cand.key] then
      out[cand.key] = lib.series_json(x[cand.key])
      out[cand.key].label = cand.label
    end
  end
  return out
end

------------------------------------------------------------------------------------------------
-- main

local function bench(o)
  local started = task.now()
  local c, err = setup(o)
  if not c then
    io.stderr:write("bridge_bench: " .. err .. "\n")
    return 2
  end
  say("bridge benchmark  provider-host  %d CPU  Linux %s  %s", lib.cpu_count(), lib.kernel(),
    c.ssh_version or "")
  say("fake Paperclip API: bench/bridge_api.lua on %s (a process of its own)", c.api_url)
  if c.server then
    say("sshd: %s on %s:%d, user %s, HOME %s/home (private), one for the whole run", sshd.sshd,
      c.server.host, c.server.port, c.server.user, c.tmp)
  end
  say("agent: bench/bridge_agent.lua in the sandbox (host.http): %d calls each of direct and "
    .. "bridged per mode after %d warm-up, %d requests by %d clients, %d s idle",
    o.call_samples, o.call_warmup, o.requests, o.clients, o.idle)
  local r, notes = {}, {}
  if o.parts["local"] and o.ours then
    say("\n(1) local ...")
    r["local"] = part_local(o, c)
  end
  if o.parts.ssh and o.ours then
    say("(2) ssh ...")
    r.ssh = part_ssh(o, c)
  end
  if o.parts.queue and o.peer then
    local ok, why = node_available(c)
    if ok then
      say("(3) upstream's queue bridge (Node, @paperclipai/adapter-utils) ...")
      r.queue = part_queue(o, c)
      for p, q in pairs(r.queue) do
        if not q.ok then
          notes[#notes + 1] = ("queue bridge over %s: not every check passed: %s %s"):format(p,
            table.concat(q.failed_checks, "; "), first_line(q.error))
        end
      end
    else
      notes[#notes + 1] = "queue bridge skipped: " .. why
    end
  end
  if o.parts.exec then
    say("(4) exec: helper vs wrapper vs ssh vs ControlMaster ...")
    r.exec = part_exec(o, c)
    if r.exec.delay_skipped then
      notes[#notes + 1] = "exec over a slow network skipped: " .. r.exec.delay_skipped
    end
  end
  if c.ssh then
    call(c.ssh.session, "environmentReleaseLease", { config = c.ssh.config,
      providerLeaseId = c.ssh.lease.providerLeaseId, leaseMetadata = c.ssh.lease.metadata })
  end
  report_all(o, r)
  if r.exec then
    say("")
    if o.ours then
      say("  (4) ours: the ssh provider's execute of `true` in its lease (in process, "
        .. "host.client): login profile, cd, env -i, control dir, process group, timeout; "
        .. "runner's command line: helper %q, wrapper %q", tostring(r.exec.loopback.runner_helper),
        tostring(r.exec.loopback.runner_wrapper))
    end
    if o.peer then
      say("  (4) upstream's execute script (the peers' second rows): sh -c '<source /etc/profile, "
        .. "~/.profile, ~/.bash_profile or ~/.bashrc, ~/.zprofile> && cd <lease cwd> && exec "
        .. "true' (providers.md 3.3; the full text is in the JSON)")
      say("  x helper: the candidate's median over the helper's; the targets are the helper "
        .. "against ssh per command (%dx) and ControlMaster (%dx)", TARGET_SSH, TARGET_CM)
    end
  end
  say("  run time %.1f s", task.now() - started)
  lib.say_notes(notes)
  local queue_json = json.null
  if r.queue then
    queue_json = {}
    for p, q in pairs(r.queue) do
      queue_json[p] = { ok = q.ok, latency = q.latency, latenciesMs = q.latencies_ms,
        execs = q.execs, bridgeStartMs = q.bridge_start_ms, adapterUtils = q.adapter_utils,
        failedChecks = q.failed_checks, error = q.error, idle = q.idle,
        commandRunner = q.idle_command_runner, addedMedianMs = q.added_median_ms,
        ratioAddedQueueOverOurs = q.ratio_added }
    end
  end
  lib.write_report(o.out, {
    benchmark = "bridge",
    date = os.date("!%Y-%m-%dT%H:%M:%SZ"),
    machine = { cpus = lib.cpu_count(), kernel = lib.kernel(), ssh = c.ssh_version or json.null,
      node = c.node_version or json.null },
    options = { quick = o.quick, only = o.only or json.null, callSamples = o.call_samples,
      callWarmup = o.call_warmup, requests = o.requests, clients = o.clients, idle = o.idle,
      queueCalls = o.queue_calls, execSamples = o.exec_samples, sshSamples = o.ssh_samples,
      netDelayMs = o.net_delay, delaySamples = o.delay_samples },
    targets = { addedMs = TARGET_ADDED_MS, rps = TARGET_RPS, queueOverOurs = TARGET_QUEUE,
      sshOverHelper = TARGET_SSH, controlMasterOverHelper = TARGET_CM,
      roundTrips = TARGET_RTT },
    ["local"] = bridge_json(r["local"]),
    ssh = bridge_json(r.ssh),
    queue = queue_json,
    exec = r.exec and { loopback = exec_json(r.exec.loopback), delayed = exec_json(
      r.exec.delayed), delayMs = r.exec.delay_ms, rttNominalMs = r.exec.rtt_nominal_ms,
      rttMeasuredMs = r.exec.rtt_measured_ms } or json.null,
    runSeconds = task.now() - started,
    notes = json.array(notes),
  }, root)
  return 0
end

lib.main("bridge_bench", bench, parse_args(arg or {}), { title = "bridge benchmark",
  deadline = RUN_DEADLINE, cleanup = cleanup,
  cleaned = "everything started was stopped and temp files removed" })
