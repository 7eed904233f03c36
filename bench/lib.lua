--- bench/lib.lua: what the Lua benchmarks (ssh_bench.lua, bridge_bench.lua) share, as
-- bench/lib.mjs does for the Node ones: the command line, output and formatting, statistics,
-- the machine, timing a call and judging its result, the run being stopped, the loopback sshd
-- and upstream's `ssh`, cleanup, the result JSON, and the main that bounds a run and cleans up
-- on every way out. Load it after setting package.path to the repository's root (as the
-- benchmarks do) so that spec.helpers and spec.support.sshd are found.
local fs = require("host.fs")
local helpers = require("spec.helpers")
local json = require("host.json")
local proc = require("host.proc")
local sshd = require("spec.support.sshd")
local sys = require("host.core.sys")
local task = require("host.task")
local util = require("host.util")

local M = {}

------------------------------------------------------------------------------------------------
-- output and formatting

function M.say(fmt, ...)
  io.stdout:write(select("#", ...) > 0 and fmt:format(...) or fmt, "\n")
  io.stdout:flush()
end

function M.fmt_ms(ms)
  if ms == nil then
    return "-"
  elseif ms >= 1000 then
    return ("%.2f s"):format(ms / 1000)
  elseif ms >= 10 then
    return ("%.1f ms"):format(ms)
  end
  return ("%.2f ms"):format(ms)
end

function M.fmt_ratio(r)
  if r == nil then
    return "-"
  end
  -- one decimal from 10x to 100x, so a ratio just under a 20x target never prints as 20x
  return r >= 100 and ("%.0fx"):format(r) or r >= 10 and ("%.1fx"):format(r)
    or ("%.2fx"):format(r)
end

--- ratio(a, b) -> b / a, or nil when either is missing or a is not positive.
function M.ratio(a, b)
  if a == nil or b == nil or a <= 0 then
    return nil
  end
  return b / a
end

--- say_notes(notes): the notes, if any, as a list under "notes:" after a blank line.
function M.say_notes(notes)
  if #notes > 0 then
    M.say("\nnotes:")
    for _, n in ipairs(notes) do
      M.say("  - %s", n)
    end
  end
end

function M.first_line(s)
  s = tostring(s or ""):gsub("^%s+", "")
  return (s:match("^[^\n]*") or ""):sub(1, 200)
end

--- print_table(title, heads, rows, left): a blank line, title (unless nil), then a column per
-- head, right-aligned but where left[i]; rows are lists of strings (nil: empty).
function M.print_table(title, heads, rows, left)
  local widths = {}
  for i, h in ipairs(heads) do
    widths[i] = #h
  end
  for _, r in ipairs(rows) do
    for i = 1, #heads do
      widths[i] = math.max(widths[i], #(r[i] or ""))
    end
  end
  local function line(vals)
    local out = {}
    for i = 1, #heads do
      local v = vals[i] or ""
      local pad = (" "):rep(widths[i] - #v)
      out[i] = left[i] and (v .. pad) or (pad .. v)
    end
    return (table.concat(out, "  "):gsub("%s+$", ""))
  end
  M.say("")
  if title then
    M.say(title)
  end
  M.say(line(heads))
  local rules = {}
  for i = 1, #heads do
    rules[i] = ("-"):rep(widths[i])
  end
  M.say(table.concat(rules, "  "))
  for _, r in ipairs(rows) do
    M.say(line(r))
  end
end

------------------------------------------------------------------------------------------------
-- the command line

--- options(argv, def) -> o. Options are --name=value or a bare flag. Every benchmark takes
-- --quick, --no-floor (bench/run passes it to every benchmark; there is no floor to skip
-- here), --only=ours|peer (or shim, which main skips), --out=FILE and -h/--help (def.usage,
-- the usage text, on stdout). def.integers maps an option to { field, min } (min 1 when
-- absent); a value that is not such an integer is a problem named by def.integer_problem
-- (a format of the option and min). def.other(key, value, o, usage), when given, takes any
-- other option and returns true. A problem: "<def.name>: problem", then the usage text, on
-- stderr, and exit 2.
function M.options(argv, def)
  local function usage(problem)
    if problem then
      io.stderr:write(def.name .. ": " .. problem .. "\n" .. def.usage)
      os.exit(2)
    end
    io.stdout:write(def.usage)
    os.exit(0)
  end
  local o = { quick = false }
  for _, a in ipairs(argv) do
    local key, value = a:match("^(%-%-[%w-]+)=(.*)$")
    key = key or a
    local int = def.integers[key]
    if int then
      local v, min = tonumber(value), int[2] or 1
      if not v or v < min or v ~= math.floor(v) then
        usage(def.integer_problem:format(key, min))
      end
      o[int[1]] = math.floor(v)
    elseif key == "--quick" then
      o.quick = true
    elseif key == "--no-floor" then
      o.no_floor = true
    elseif key == "--only" then
      if value ~= "ours" and value ~= "peer" and value ~= "shim" then
        usage("--only must be ours or peer")
      end
      o.only = value
    elseif key == "--out" then
      if not value or value == "" then
        usage("--out needs a file")
      end
      o.out = value
    elseif key == "-h" or key == "--help" then
      usage()
    elseif not (def.other and def.other(key, value, o, usage)) then
      usage("unknown option " .. a)
    end
  end
  o.ours = o.only ~= "peer"
  o.peer = o.only ~= "ours"
  return o
end

------------------------------------------------------------------------------------------------
-- statistics

--- quantile(values, q) -> the same quantile as bench/lib.mjs: sorted[ceil(q * n) - 1]; nil for
-- no values.
function M.quantile(values, q)
  if not values or #values == 0 then
    return nil
  end
  local s = table.move(values, 1, #values, 1, {})
  table.sort(s)
  return s[math.min(#s, math.max(1, math.ceil(q * #s)))]
end

--- summary(samples) -> { n, median_ms, p90_ms, min_ms }
function M.summary(samples)
  return { n = #samples, median_ms = M.quantile(samples, 0.5), p90_ms = M.quantile(samples, 0.9),
    min_ms = M.quantile(samples, 0) }
end

--- A series: the samples (ms) of the calls that went well, and the failures, counted by reason.
function M.new_series()
  return { samples = {}, failures = 0, reasons = {} }
end

function M.add(series, ms, failure)
  if failure then
    series.failures = series.failures + 1
    series.reasons[failure] = (series.reasons[failure] or 0) + 1
  else
    series.samples[#series.samples + 1] = ms
  end
end

--- summarize(series) -> series, with its summary's fields added.
function M.summarize(series)
  for k, v in pairs(M.summary(series.samples)) do
    series[k] = v
  end
  return series
end

--- series_json(s) -> a series (and what a burst adds to it) as the result JSON has it.
function M.series_json(s)
  return { n = s.n, medianMs = s.median_ms, p90Ms = s.p90_ms, minMs = s.min_ms,
    wallMs = s.wall_ms, failures = s.failures, failureReasons = s.reasons,
    tcpConnects = s.tcp_connects, sshdConnections = s.sshd_connections,
    sshdLogins = s.sshd_logins, peak = s.peak, samplesMs = json.array(s.samples) }
end

------------------------------------------------------------------------------------------------
-- the machine

function M.cpu_count()
  local text = fs.read("/proc/cpuinfo") or ""
  local n = 0
  for _ in text:gmatch("\nprocessor%s*:") do
    n = n + 1
  end
  if text:find("^processor%s*:") then
    n = n + 1
  end
  return n
end

function M.kernel()
  return ((fs.read("/proc/sys/kernel/osrelease") or "?"):gsub("%s+$", ""))
end

--- version(argv) -> the first line a program says about its version (ssh -V says it on stderr).
function M.version(argv)
  local res = proc.run({ argv = argv, timeout = 10 })
  return res and M.first_line(res.stderr ~= "" and res.stderr or res.stdout) or "?"
end

------------------------------------------------------------------------------------------------
-- the run being stopped

--- An operation ended with "canceled": the run is being stopped; Interrupted unwinds it (and
-- main prints no traceback for it).
M.Interrupted = setmetatable({}, { __tostring = function() return "interrupted" end })

function M.check_canceled(code)
  if code == "canceled" then
    error(M.Interrupted, 0)
  end
end

--- After a failure: was it because the run is being stopped?
function M.check_stopping()
  local _, _, code = task.sleep(0)
  M.check_canceled(code)
end

------------------------------------------------------------------------------------------------
-- timing a call, judging its result

function M.now_ms()
  return task.now() * 1000
end

local function in_ms(seconds, ...)
  return seconds * 1000, ...
end

--- timed(fn, ...) -> the milliseconds fn(...) took (task time, as spec.helpers.timed), then its
-- results.
function M.timed(fn, ...)
  return in_ms(helpers.timed(fn, ...))
end

--- command_failure(res, err, code) -> nil when a command of ours or a peer's (host.ssh.exec's
-- or host.proc.run's results) exited 0 and wrote nothing on stdout; else why, in a line.
-- Raises Interrupted when it ended because the run is being stopped.
function M.command_failure(res, err, code)
  M.check_canceled(code)
  if not res then
    return ("%s: %s"):format(tostring(code), M.first_line(err))
  elseif res.exit_code ~= 0 or res.stdout ~= "" then
    return ("exit %s: %s"):format(tostring(res.exit_code or res.signal), M.first_line(res.stderr))
  end
end

--- execute_failure(res) -> nil when an environmentExecute of `true` went as it should (exit 0,
-- in time, no output); else why, in a line.
function M.execute_failure(res)
  if res.exitCode ~= 0 or res.timedOut or res.stdout ~= "" or res.stderr ~= "" then
    return ("exitCode %s: %s"):format(tostring(res.exitCode), M.first_line(res.stderr))
  end
end

--- run_timed(argv, timeout) -> ms, failure: a peer's command, a new process each time.
function M.run_timed(argv, timeout)
  local ms, res, err, code = M.timed(proc.run, { argv = argv, timeout = timeout, kill_grace = 1 })
  return ms, M.command_failure(res, err, code)
end

------------------------------------------------------------------------------------------------
-- sshd and upstream's ssh

--- sshd_missing() -> why the loopback sshd cannot run here, or nil.
function M.sshd_missing()
  if not sshd.available() then
    return ("%s or ssh-keygen is not installed (openssh-server)"):format(sshd.sshd)
  end
end

--- client_key(dir) -> an ed25519 client key (spec.support.sshd's keygen) in dir/id_ed25519,
-- its file 0600 (ssh refuses a key others may read).
function M.client_key(dir)
  local key = sshd.keygen(dir, "id_ed25519", "ed25519")
  assert(fs.chmod(key.path, tonumber("600", 8)))
  return key
end

--- start_sshd(state, key, opts) -> spec.support.sshd's server started with opts, kept in
-- state.server at once (so that cleanup stops it whatever happens next), key authorized.
function M.start_sshd(state, key, opts)
  state.server = sshd.start(opts)
  state.server:authorize(key.public)
  return state.server
end

--- upstream_ssh_argv(p) -> upstream's runSshCommand argv, word for word (providers.md 3.3),
-- with -i and IdentitiesOnly because the key is pasted, and a private known_hosts for
-- StrictHostKeyChecking=accept-new: p.known_hosts, p.port, p.key (its file), p.dest
-- (user@host), p.command; p.extra: more options (a list of words) before -p.
function M.upstream_ssh_argv(p)
  local argv = { "ssh", "-T", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=accept-new",
    "-o", "UserKnownHostsFile=" .. p.known_hosts, "-o", "ConnectTimeout=15" }
  table.move(p.extra or {}, 1, #(p.extra or {}), #argv + 1, argv)
  for _, w in ipairs({ "-p", tostring(p.port), "-i", p.key, "-o", "IdentitiesOnly=yes", p.dest,
    p.command }) do
    argv[#argv + 1] = w
  end
  return argv
end

------------------------------------------------------------------------------------------------
-- cleanup

--- stop_sshd(state, notes): stops state.server, if any, and forgets it; a failure is a note.
function M.stop_sshd(state, notes)
  if state.server then
    local ok, err = pcall(state.server.close, state.server)
    if not ok then
      notes[#notes + 1] = "stopping sshd: " .. tostring(err)
    end
    state.server = nil
  end
end

--- remove_tmp(state, notes): removes the run's temp dir state.tmp, if any, and forgets it; a
-- failure is a note.
function M.remove_tmp(state, notes)
  if state.tmp then
    local ok, err = util.remove_tree(state.tmp)
    if not ok then
      notes[#notes + 1] = "removing " .. state.tmp .. ": " .. tostring(err)
    end
    state.tmp = nil
  end
end

------------------------------------------------------------------------------------------------
-- the result JSON

--- write_report(path, report, root): report as pretty JSON in path (its dir made), and where
-- it went (relative to root when inside it).
function M.write_report(path, report, root)
  local dir = path:match("^(.*)/[^/]+$")
  if dir then
    fs.mkdirs(dir, tonumber("755", 8))
  end
  assert(fs.write(path, assert(json.pretty(report)) .. "\n"))
  local shown = path:sub(1, #root + 1) == root .. "/" and path:sub(#root + 2) or path
  M.say("\nresults written to %s", shown)
end

------------------------------------------------------------------------------------------------
-- main

--- main(name, bench, o, b): runs bench(o) -> exit status, and exits; does not return. With
-- --only=shim it says that b.title (e.g. "ssh benchmark") has no shim candidate and exits 0.
-- The run is a task canceled after b.deadline seconds, on SIGTERM, SIGINT or SIGHUP (then
-- b.on_signal(), when given, is called too) and when the parent dies (SIGTERM); whatever
-- ended it, b.cleanup() -> notes runs, each note on stderr. Exit 130 after a signal, 1 after
-- the deadline or an error, saying why on stderr after name ("ssh_bench: ...") and what the
-- cleanup did (b.cleaned: "sshd stopped and temp files removed").
function M.main(name, bench, o, b)
  if o.only == "shim" then
    M.say("%s: no shim candidate here (the shim's cost is the same for every provider: see the "
      .. "worker benchmark); skipped", b.title)
    os.exit(0)
  end
  local code, message = task.run(function()
    sys.parent_death_signal("SIGTERM")
    local work = task.spawn(function()
      local ok, res = xpcall(bench, function(e)
        if e == M.Interrupted then
          return e
        end
        return debug.traceback(tostring(e), 2)
      end, o)
      if ok then
        return res
      end
      return nil, res
    end)
    work:cancel_after(b.deadline)
    local signaled
    local watchers = {}
    for _, sig in ipairs({ "SIGTERM", "SIGINT", "SIGHUP" }) do
      watchers[#watchers + 1] = task.spawn(function()
        if sys.wait_signal(sig) then
          signaled = sig
          work:cancel()
          if b.on_signal then
            b.on_signal()
          end
        end
      end)
    end
    local res, err = work:wait()
    for _, w in ipairs(watchers) do
      w:cancel()
    end
    for _, n in ipairs(b.cleanup()) do
      io.stderr:write(name .. ": cleanup: " .. n .. "\n")
    end
    if res ~= nil then
      return res
    end
    if signaled then
      return 130, ("interrupted by %s; %s"):format(signaled, b.cleaned)
    elseif work:expired() then
      return 1, ("the run did not finish within %ds; %s"):format(b.deadline, b.cleaned)
    end
    return 1, tostring(err)
  end)
  if message then
    io.stderr:write(name .. ": " .. message .. "\n")
  end
  os.exit(code or 1)
end

return M
