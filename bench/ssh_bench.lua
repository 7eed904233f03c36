-- bench/ssh_bench.lua: our SSH execution (host.ssh: one pooled libssh2 session, a channel per
-- command; and host.remote, the execute path of the exe-dev and ssh providers) against
-- upstream exe.dev's way (a new OpenSSH `ssh` process per command), both on ONE real sshd
-- started for the run on 127.0.0.1 (spec/support/sshd.lua). Measured, side by side in the
-- same run: the latency of `true` on a warm lease, and 100 concurrent `true` on one VM.
-- A measurement, not a test: the exit status says only whether the driver itself ran.
--
--   build/provider-host bench/ssh_bench.lua [--quick] [--only=ours|peer] [--samples=N]
--        [--peer-samples=N] [--concurrent=N] [--rounds=N] [--out=FILE]
--
-- Every wait is bounded. sshd, the pooled session and the temp dir (key, known_hosts,
-- control dirs) are removed on every exit path: normal end, error, SIGINT/SIGTERM/SIGHUP,
-- the parent's death (SIGTERM), and the run's own deadline.
local root = arg and arg[0] and arg[0]:match("^(.*)/bench/[^/]+$") or "."
package.path = root .. "/?.lua;" .. package.path

local fs = require("host.fs")
local json = require("host.json")
local lib = require("bench.lib")
local proc = require("host.proc")
local remote = require("host.remote")
local ssh = require("host.ssh")
local sshd = require("spec.support.sshd")
local sys = require("host.core.sys")
local task = require("host.task")
local util = require("host.util")
local worker = require("host.worker")

local say, fmt_ms, fmt_ratio, first_line = lib.say, lib.fmt_ms, lib.fmt_ratio, lib.first_line
local new_series, add, summarize = lib.new_series, lib.add, lib.summarize
local check_canceled, Interrupted = lib.check_canceled, lib.Interrupted

local TARGET = 20 -- peer/ours for the latency of `true`
local CALL_TIMEOUT = 30 -- seconds for any one command, ours or the peer's
local PHASE_TIMEOUT = 60 -- seconds for one concurrent burst
local RUN_DEADLINE = 110 -- seconds for the whole run: then it is canceled and cleaned up
local SETTLE_TIMEOUT = 5 -- seconds to wait for sshd's per-connection processes to exit
local EXEC_TIMEOUT_MS = 30000 -- params.timeoutMs of every host.remote execute
local HOST_SSH_MAX_CHANNELS = 10 -- DEFAULT_MAX_CHANNELS in host/net/mod_ssh_session.c

------------------------------------------------------------------------------------------------
-- options

local function parse_args(argv)
  local o = lib.options(argv, {
    name = "ssh_bench",
    usage = "usage: provider-host bench/ssh_bench.lua [--quick] [--only=ours|peer] "
      .. "[--samples=N] [--peer-samples=N] [--concurrent=N] [--rounds=N] [--out=FILE]\n",
    integers = { ["--samples"] = { "samples" }, ["--peer-samples"] = { "peer_samples" },
      ["--concurrent"] = { "concurrent" }, ["--rounds"] = { "rounds" } },
    integer_problem = "%s needs a positive integer",
  })
  o.samples = o.samples or (o.quick and 50 or 200)
  o.peer_samples = o.peer_samples or (o.quick and 15 or 50)
  o.warmup = 10
  o.peer_warmup = o.quick and 2 or 3
  o.concurrent = o.concurrent or 100
  o.rounds = o.rounds or (o.quick and 1 or 3)
  o.out = o.out or (root .. "/bench/results/ssh.json")
  return o
end

------------------------------------------------------------------------------------------------
-- small helpers

-- Every live descendant of pid (sshd forks a monitor and a session process per connection).
local function descendants(pid)
  local children = {}
  for _, name in ipairs(fs.list("/proc") or {}) do
    if tonumber(name) then
      local stat = fs.read("/proc/" .. name .. "/stat")
      local ppid = stat and tonumber(stat:match("%) %S+ (%d+)"))
      if ppid then
        children[ppid] = children[ppid] or {}
        table.insert(children[ppid], tonumber(name))
      end
    end
  end
  local n, queue = 0, { pid }
  while #queue > 0 do
    local p = table.remove(queue)
    for _, c in ipairs(children[p] or {}) do
      n = n + 1
      queue[#queue + 1] = c
    end
  end
  return n
end

------------------------------------------------------------------------------------------------
-- the run's state and its cleanup

local state = {
  live = {}, -- tasks of a concurrent burst, canceled on interruption
}

local function track(fn)
  local t = task.spawn(fn)
  state.live[t] = true
  return t
end

local function cleanup()
  local notes = {}
  for t in pairs(state.live) do
    if not t:done() then
      t:cancel()
    end
  end
  for t in pairs(state.live) do
    if not t:done() then
      t:wait(5)
    end
  end
  state.live = {}
  ssh.close_all()
  lib.stop_sshd(state, notes)
  lib.remove_tmp(state, notes)
  return notes
end

------------------------------------------------------------------------------------------------
-- the candidates: one call each

local function ours_exec(t)
  local ms, res, err, code = lib.timed(ssh.exec, { host = t.host, port = t.port, user = t.user,
    key = t.key, host_key_policy = t.host_key_policy, known_hosts = t.known_hosts,
    connect_timeout = t.connect_timeout, timeout = CALL_TIMEOUT, cmd = "true" })
  return ms, lib.command_failure(res, err, code)
end

local exec_seq = 0
local function ours_execute(t, ctx_base)
  exec_seq = exec_seq + 1
  local ctx = setmetatable({ execution = {} }, { __index = ctx_base })
  local params = {
    command = "true",
    timeoutMs = EXEC_TIMEOUT_MS,
    executionId = ("bench-%d-%d"):format(sys.getpid(), exec_seq),
  }
  local ms, res, err, code = lib.timed(remote.execute, ctx, t, params, {
    cwd = ctx_base.cwd,
    scope = "bench-lease",
    control_base = ctx_base.control_base,
    env_label = "bench",
  })
  check_canceled(code)
  if not res then
    return ms, ("%s: %s"):format(tostring(code), first_line(err))
  end
  return ms, lib.execute_failure(res)
end

local function peer_exec(argv)
  return lib.run_timed(argv, CALL_TIMEOUT)
end

------------------------------------------------------------------------------------------------
-- phases

-- Wait until sshd has no more processes than `base` (the connections the peer made are gone).
local function settle(base)
  local deadline = task.now() + SETTLE_TIMEOUT
  while descendants(state.server.pid) > base do
    if task.now() > deadline then
      return false
    end
    local _, _, code = task.sleep(0.02)
    check_canceled(code)
  end
  return true
end

-- (1) latency of `true`, the candidates interleaved so they share the machine's noise: each
-- round is one peer command, then k commands of ours through host.ssh, then k through
-- host.remote.
local function phase_latency(o, c)
  local r = {
    ours = new_series(),
    remote = new_series(),
    peer = new_series(),
    warmup = { ours = {}, remote = {}, peer = {} },
  }
  -- a warm-up call's time goes into list[i]; its failure stops the run
  local function warm(list, i, what, ms, fail)
    list[i] = ms
    if fail then
      error(what .. " failed: " .. fail, 0)
    end
  end
  -- warm-up: the first call of ours opens the pooled session (the lease's first command)
  for i = 1, o.ours and o.warmup or 0 do
    warm(r.warmup.ours, i, "ours: the warm-up command", ours_exec(c.target))
    warm(r.warmup.remote, i, "ours (host.remote): the warm-up execute",
      ours_execute(c.target, c.ctx))
  end
  for i = 1, o.peer and o.peer_warmup or 0 do
    warm(r.warmup.peer, i, "peer: the warm-up ssh", peer_exec(c.peer_argv))
  end
  r.connects_before = ssh.stats().connects
  local rounds = o.peer and o.peer_samples or o.samples
  local k = o.ours and math.ceil(o.samples / rounds) or 0
  local n_ours = 0
  for _ = 1, rounds do
    if o.peer then
      add(r.peer, peer_exec(c.peer_argv))
    end
    for _ = 1, math.min(k, o.samples - n_ours) do
      add(r.ours, ours_exec(c.target))
      add(r.remote, ours_execute(c.target, c.ctx))
      n_ours = n_ours + 1
    end
  end
  r.connects_during = ssh.stats().connects - r.connects_before
  summarize(r.ours)
  summarize(r.remote)
  summarize(r.peer)
  return r
end

-- (2) n concurrent `true`: every call started at once, each as its own task. wall: from the
-- first start to the last answer. ours: also sample host.ssh's stats during the burst.
local function burst(n, call, ours)
  local server = state.server
  local before = {
    connects = ssh.stats().connects,
    accepted = server:count("Accepted publickey"),
    connections = server:count("Connection from "),
  }
  local series = new_series()
  local peak = { sessions = 0, channels = 0, queued = 0 }
  local remaining = n
  local sampler = track(function()
    while ours and remaining > 0 do
      local s = ssh.stats()
      peak.sessions = math.max(peak.sessions, s.sessions)
      peak.channels = math.max(peak.channels, s.channels)
      peak.queued = math.max(peak.queued, s.queued)
      if not task.sleep(0.002) then
        return
      end
    end
  end)
  local tasks, last = {}, nil
  local t0 = lib.now_ms()
  for i = 1, n do
    tasks[i] = track(function()
      local ok, ms, fail = pcall(call)
      if not ok then
        if ms == Interrupted then
          return true -- the run is being stopped: no traceback for each call
        end
        ms, fail = 0, "error: " .. first_line(ms)
      end
      add(series, ms, fail)
      last = lib.now_ms()
      remaining = remaining - 1
      return true
    end)
  end
  local deadline = task.now() + PHASE_TIMEOUT
  for _, t in ipairs(tasks) do
    local ok, err, code = t:wait(math.max(0, deadline - task.now()))
    check_canceled(code)
    if not ok then
      for _, u in ipairs(tasks) do
        u:cancel()
      end
      remaining = 0
      for _, u in ipairs(tasks) do
        u:wait(5)
      end
      error(("a burst of %d did not finish within %ds: %s"):format(n, PHASE_TIMEOUT,
        tostring(err)), 0)
    end
  end
  remaining = 0
  sampler:wait(1)
  for _, t in ipairs(tasks) do
    state.live[t] = nil
  end
  state.live[sampler] = nil
  series.wall_ms = (last or t0) - t0
  if ours then
    series.tcp_connects = ssh.stats().connects - before.connects -- host.ssh's own count
    series.peak = peak
  end
  -- sshd's log lines of the connections and logins it accepted during the burst
  series.sshd_connections = server:count("Connection from ") - before.connections
  series.sshd_logins = server:count("Accepted publickey") - before.accepted
  return summarize(series)
end

local function phase_concurrent(o, c)
  local r = { ours = {}, remote = {}, peer = {}, settled = true }
  local base = descendants(state.server.pid)
  for round = 1, o.rounds do
    if o.ours then
      r.ours[round] = burst(o.concurrent, function()
        return ours_exec(c.target)
      end, true)
      r.remote[round] = burst(o.concurrent, function()
        return ours_execute(c.target, c.ctx)
      end, true)
      r.settled = settle(base) and r.settled
    end
    if o.peer then
      r.peer[round] = burst(o.concurrent, function()
        return peer_exec(c.peer_argv)
      end)
      r.settled = settle(base) and r.settled
    end
  end
  return r
end

-- The median burst of several rounds (by wall time), with the failures of all rounds.
local function pick(bursts)
  if #bursts == 0 then
    return nil
  end
  local sorted = {}
  for i, b in ipairs(bursts) do
    sorted[i] = b
  end
  table.sort(sorted, function(a, b)
    return a.wall_ms < b.wall_ms
  end)
  local m = sorted[math.ceil(#sorted / 2)]
  local failures, reasons, walls = 0, {}, {}
  for i, b in ipairs(bursts) do
    failures = failures + b.failures
    for k, v in pairs(b.reasons) do
      reasons[k] = (reasons[k] or 0) + v
    end
    walls[i] = b.wall_ms
  end
  local most = { sshd_connections = 0, sshd_logins = 0, tcp_connects = 0 }
  for _, b in ipairs(bursts) do
    for k in pairs(most) do
      most[k] = math.max(most[k], b[k] or 0)
    end
  end
  return { median = m, failures = failures, reasons = reasons, walls = walls,
    sshd_connections = most.sshd_connections, sshd_logins = most.sshd_logins,
    tcp_connects = most.tcp_connects }
end

------------------------------------------------------------------------------------------------
-- setup

local function effective_sshd_limits(server)
  local res = proc.run({ argv = { sshd.sshd, "-T", "-f", server.dir .. "/sshd_config" },
    timeout = 10 })
  if not res or res.exit_code ~= 0 then
    return nil
  end
  return {
    maxstartups = res.stdout:match("\nmaxstartups (%S+)"),
    maxsessions = tonumber(res.stdout:match("\nmaxsessions (%d+)")),
  }
end

local function setup()
  local missing = lib.sshd_missing()
  if missing then
    return nil, missing
  end
  local which = proc.run({ argv = { "sh", "-c", "command -v ssh" }, timeout = 10 })
  if not which or which.exit_code ~= 0 then
    return nil, "the OpenSSH client `ssh` is not on the PATH (openssh-client)"
  end
  local tmp = assert(util.mkdtemp("ph-ssh-bench-")) -- 0700
  state.tmp = tmp
  -- one ed25519 client key: ours keeps its text in memory, the peer gets the file (0600)
  local key = lib.client_key(tmp)
  local st = assert(fs.stat(key.path))
  assert(st.mode & tonumber("077", 8) == 0, "the key file is not private")
  assert(fs.mkdir(tmp .. "/workspace", tonumber("700", 8)))
  assert(fs.mkdir(tmp .. "/control", tonumber("700", 8)))
  -- MaxSessions through sshd.lua's option; MaxStartups as an extra line after sshd.lua's own
  -- "100:30:200" (sshd keeps the last MaxStartups). sshd -T shows what applies; a limit
  -- other than 200 is named in the notes.
  local server = lib.start_sshd(state, key, { max_sessions = 200, config = { "MaxStartups 200" } })
  local target = assert(remote.target({
    host = server.host,
    port = server.port,
    user = server.user,
    key = key.private,
    host_key_policy = "accept-new",
    known_hosts = tmp .. "/known_hosts_ours",
    connect_timeout = 15,
  }))
  local ctx = {
    config = { timeoutMs = EXEC_TIMEOUT_MS },
    max_output = worker.MAX_OUTPUT,
    cwd = tmp .. "/workspace",
    control_base = tmp .. "/control",
    emit = function() end, -- as a worker's ctx without an invocation id: nothing to stream
    emitter = function() end, -- so no on_stdout callback either
    output = function(_, raw)
      return worker.output(raw)
    end,
  }
  local peer_argv = lib.upstream_ssh_argv({ known_hosts = tmp .. "/known_hosts_peer",
    port = server.port, key = key.path, dest = server.user .. "@" .. server.host,
    command = "true" })
  return {
    target = target,
    ctx = ctx,
    peer_argv = peer_argv,
    key_mode = ("%o"):format(st.mode & tonumber("777", 8)),
    limits = effective_sshd_limits(server),
    ssh_version = lib.version({ "ssh", "-V" }),
  }
end

------------------------------------------------------------------------------------------------
-- report

local function rows_of(o, lat, conc)
  local rows = {}
  -- ours, peer: a figure, or nil/false when that candidate did not run
  local function row(metric, key, ours, peer, fmt, opts)
    opts = opts or {}
    ours, peer = ours or nil, peer or nil
    local r = {
      metric = metric,
      key = key,
      ours = ours,
      peer = peer,
      ratio = opts.ratio ~= false and lib.ratio(ours, peer) or nil,
      target = opts.target,
    }
    r.ours_text = ours == nil and "-" or fmt(ours)
    r.peer_text = peer == nil and "-" or fmt(peer)
    r.ratio_text = opts.ratio ~= false and fmt_ratio(r.ratio) or ""
    r.target_text = opts.target and ((r.ratio and (r.ratio >= opts.target and "met" or "MISSED")
      or "-") .. (" (%dx)"):format(opts.target)) or ""
    rows[#rows + 1] = r
  end
  local count = function(v)
    return tostring(v)
  end
  local pm = lat.peer.median_ms
  row("latency of `true` on a warm lease: median", "latencyMedian",
    o.ours and lat.ours.median_ms, o.peer and pm, fmt_ms, { target = TARGET })
  row("  p90", "latencyP90", o.ours and lat.ours.p90_ms, o.peer and lat.peer.p90_ms, fmt_ms,
    { target = TARGET })
  if o.ours then
    row("  through host.remote (a provider's execute): median", "executeMedian",
      lat.remote.median_ms, o.peer and pm, fmt_ms, { target = TARGET })
    row("    p90", "executeP90", lat.remote.p90_ms, o.peer and lat.peer.p90_ms, fmt_ms,
      { target = TARGET })
  end
  row("  failures", "latencyFailures", o.ours and (lat.ours.failures + lat.remote.failures),
    o.peer and lat.peer.failures, count, { ratio = false })
  local co, cr, cp = pick(conc.ours), pick(conc.remote), pick(conc.peer)
  local rounds = o.rounds > 1 and (" (median of %d rounds)"):format(o.rounds) or ""
  row(("%d concurrent `true` on one VM: wall%s"):format(o.concurrent, rounds), "concWall",
    co and co.median.wall_ms, cp and cp.median.wall_ms, fmt_ms)
  row("  per command, median", "concCmdMedian", co and co.median.median_ms,
    cp and cp.median.median_ms, fmt_ms)
  if o.ours then
    row("  through host.remote: wall", "concExecuteWall", cr.median.wall_ms,
      cp and cp.median.wall_ms, fmt_ms)
    row("    per execute, median", "concExecuteMedian", cr.median.median_ms,
      cp and cp.median.median_ms, fmt_ms)
  end
  local function most(field, ...)
    local m
    for _, p in ipairs({ ... }) do
      if p then
        m = math.max(m or 0, p[field])
      end
    end
    return m
  end
  row("  new TCP connections per burst (sshd's log)", "concTcp",
    most("sshd_connections", co, cr), most("sshd_connections", cp), count, { ratio = false })
  row("  sshd logins per burst", "concLogins", most("sshd_logins", co, cr),
    most("sshd_logins", cp), count, { ratio = false })
  if o.ours then
    row("  host.ssh connects per burst (host.ssh.stats)", "concConnects",
      most("tcp_connects", co, cr), nil, count, { ratio = false })
  end
  row("  failures, all rounds", "concFailures", co and (co.failures + cr.failures),
    cp and cp.failures, count, { ratio = false })
  return rows, { ours = co, remote = cr, peer = cp }
end

local function print_table(rows, o)
  local cols = { { head = "metric", left = true, key = "metric" } }
  if o.ours then
    cols[#cols + 1] = { head = "ours", key = "ours_text" }
  end
  if o.peer then
    cols[#cols + 1] = { head = "peer", key = "peer_text" }
  end
  if o.ours and o.peer then
    cols[#cols + 1] = { head = "peer/ours", key = "ratio_text" }
    cols[#cols + 1] = { head = "target", key = "target_text", left = true }
  end
  local heads, left, lines = {}, {}, {}
  for i, c in ipairs(cols) do
    heads[i], left[i] = c.head, c.left
  end
  for j, r in ipairs(rows) do
    lines[j] = {}
    for i, c in ipairs(cols) do
      lines[j][i] = r[c.key]
    end
  end
  lib.print_table(nil, heads, lines, left)
end

local function bursts_json(list)
  local out = json.array()
  for i, b in ipairs(list) do
    out[i] = lib.series_json(b)
  end
  return out
end

------------------------------------------------------------------------------------------------
-- main

local function bench(o)
  local c, err = setup()
  if not c then
    io.stderr:write("ssh_bench: " .. err .. "\n")
    return 2
  end
  local server = state.server
  say("ssh benchmark  provider-host  %d CPU  Linux %s  %s", lib.cpu_count(), lib.kernel(),
    c.ssh_version)
  say("sshd: %s on %s:%d (one for the whole run), user %s, ed25519 client key",
    sshd.sshd, server.host, server.port, server.user)
  local lim = c.limits
  say("sshd limits in effect (sshd -T): MaxStartups %s, MaxSessions %s",
    lim and lim.maxstartups or "?", lim and tostring(lim.maxsessions) or "?")
  if o.ours then
    say("ours: host.ssh.exec{cmd=\"true\"} on the pooled session (key text in memory); and "
      .. "host.remote.execute{command=\"true\"} (the exe-dev/ssh providers' execute: frames to "
      .. "the lease's ph-sandbox-helper serve, or its fallbacks)")
  end
  if o.peer then
    say("peer: one process per command: %s", table.concat(c.peer_argv, " "))
  end
  say("(1) latency: %d warm-up calls each, then %d x host.ssh and %d x host.remote interleaved "
    .. "with %d x peer; (2) %d concurrent `true`, %d round(s)", o.warmup, o.samples, o.samples,
    o.peer_samples, o.concurrent, o.rounds)

  local lat = phase_latency(o, c)
  local conc = phase_concurrent(o, c)
  local rows, picked = rows_of(o, lat, conc)
  print_table(rows, o)

  say("")
  if o.ours and o.peer then
    say("  peer/ours: how many times longer the peer takes (the target: at least %dx lower "
      .. "latency of `true` on a warm lease)", TARGET)
  end
  say("  ours: host.ssh.exec on the pooled session, or host.remote.execute where named; peer: "
    .. "a new ssh process per command")
  say("  samples: %s%s; per burst: the maximum over the rounds",
    o.ours and ("ours %d host.ssh + %d host.remote after %d warm-up each"):format(lat.ours.n,
      lat.remote.n, o.warmup) or "",
    o.peer and ("%speer %d after %d warm-up"):format(o.ours and ", " or "", lat.peer.n,
      o.peer_warmup) or "")
  local notes = {}
  if o.ours then
    say("  ours, first command of the lease (TCP, handshake, auth, exec): %s; host.ssh "
      .. "connections during (1): %d", fmt_ms(lat.warmup.ours[1]), lat.connects_during)
    local po = picked.ours.median.peak
    local pr = picked.remote.median.peak
    say("  ours, during a burst: peak sessions %d, peak open channels %d (host.remote %d), "
      .. "peak queued calls %d (host.remote %d)", po.sessions, po.channels, pr.channels,
      po.queued, pr.queued)
    if po.queued > 0 then
      notes[#notes + 1] = ("host.ssh opens at most %d channels at a time on one session (a "
        .. "constant in host/net/mod_ssh_session.c: OpenSSH's default MaxSessions); the other "
        .. "calls wait in its queue. So ours ran the %d commands at most %d at a time (peak "
        .. "seen: %d) although this sshd allows %s, while the peer ran all %d at once")
        :format(HOST_SSH_MAX_CHANNELS, o.concurrent, HOST_SSH_MAX_CHANNELS,
          math.max(po.channels, pr.channels), lim and tostring(lim.maxsessions) or "?",
          o.concurrent)
    end
  end
  if o.peer then
    say("  peer, first ssh of the run (records the host key in its known_hosts): %s",
      fmt_ms(lat.warmup.peer[1]))
  end
  local begin = lim and tonumber((lim.maxstartups or ""):match("^(%d+)"))
  if not begin or begin < 200 or (lim.maxsessions or 0) < 200 then
    notes[#notes + 1] = ("sshd's limits are not MaxStartups 200 / MaxSessions 200 but %s / %s "
      .. "(sshd -T). MaxStartups drops unauthenticated connections only once its first number "
      .. "of them are pending, so a burst of %d is dropped by it only when that number is "
      .. "below %d"):format(lim and lim.maxstartups or "?", lim and tostring(lim.maxsessions)
      or "?", o.concurrent, o.concurrent)
  end
  if not conc.settled then
    notes[#notes + 1] = ("sshd still had connection processes %ds after a burst"):format(
      SETTLE_TIMEOUT)
  end
  for _, s in ipairs({ { "ours", lat.ours }, { "ours (host.remote)", lat.remote },
    { "peer", lat.peer } }) do
    for reason, n in pairs(s[2].reasons) do
      notes[#notes + 1] = ("%s latency failures: %d x %s"):format(s[1], n, reason)
    end
  end
  for _, s in ipairs({ { "ours", picked.ours }, { "ours (host.remote)", picked.remote },
    { "peer", picked.peer } }) do
    for reason, n in pairs(s[2] and s[2].reasons or {}) do
      notes[#notes + 1] = ("%s concurrent failures: %d x %s"):format(s[1], n, reason)
    end
  end
  lib.say_notes(notes)

  local report_rows = json.array()
  for i, r in ipairs(rows) do
    report_rows[i] = { metric = (r.metric:gsub("^%s+", "")), key = r.key, ours = r.ours or nil,
      peer = r.peer or nil, ratio = r.ratio, target = r.target }
  end
  lib.write_report(o.out, {
    benchmark = "ssh",
    date = os.date("!%Y-%m-%dT%H:%M:%SZ"),
    machine = { cpus = lib.cpu_count(), kernel = lib.kernel(), ssh = c.ssh_version },
    options = { quick = o.quick, only = o.only or json.null, samples = o.samples,
      peerSamples = o.peer_samples, warmup = o.warmup, peerWarmup = o.peer_warmup,
      concurrent = o.concurrent, rounds = o.rounds },
    sshd = { port = server.port, limits = lim or json.null, keyFileMode = c.key_mode },
    peerArgv = json.array(c.peer_argv),
    targetRatio = TARGET,
    latency = {
      ours = lib.series_json(lat.ours),
      remote = lib.series_json(lat.remote),
      peer = lib.series_json(lat.peer),
      warmupMs = { ours = json.array(lat.warmup.ours), remote = json.array(lat.warmup.remote),
        peer = json.array(lat.warmup.peer) },
      oursConnectsDuring = lat.connects_during,
    },
    concurrent = { ours = bursts_json(conc.ours), remote = bursts_json(conc.remote),
      peer = bursts_json(conc.peer), settled = conc.settled },
    notes = json.array(notes),
    rows = report_rows,
  }, root)
  return 0
end

lib.main("ssh_bench", bench, parse_args(arg or {}), {
  title = "ssh benchmark",
  deadline = RUN_DEADLINE,
  cleanup = cleanup,
  cleaned = "sshd stopped and temp files removed",
  on_signal = function() -- a burst's calls are tasks of their own
    for t in pairs(state.live) do
      t:cancel()
    end
  end,
})
