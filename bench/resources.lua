-- bench/resources.lua: what the worker's resources come to under load (issue 11, item 2,
-- bounded resources). Four measurements, each on a fresh worker of the `local` provider:
--   a. a hard open-files limit of 256 and 2,000 executes at once: how many succeed;
--   b. a host that stops reading stdout for ~10 s while 2,000 executes print 100 KB each: the
--      worker's peak memory meanwhile, and whether every reply still arrives;
--   c. one 200 MB request line: the worker's memory before, at its peak, and 1 s after;
--   d. 8 executes each writing 100 MB at once (and one writing 100 MB of 0xFF bytes): the peak.
-- A measurement, not a test: it reports, it does not judge.
--
--   build/provider-host bench/resources.lua [--binary=PATH] [--out=FILE] [--only=a,b,c,d]
--     [--a-sleep=SECONDS]
--
-- --binary runs another build as the worker (an older one, for a before/after). Workers,
-- their commands and temp dirs are removed on every path.
local root = arg and arg[0] and arg[0]:match("^(.*)/bench/[^/]+$") or "."
package.path = root .. "/?.lua;" .. package.path

local cmdline = require("spec.support.cmdline")
local fs = require("host.fs")
local helpers = require("spec.helpers")
local json = require("host.json")
local proc = require("host.proc")
local sys = require("host.core.sys")
local task = require("host.task")

local opts = { out = root .. "/bench/results/resources.json", only = "a,b,c,d", a_sleep = "0.05" }
for _, a in ipairs(arg) do
  local k, v = a:match("^%-%-([%w-]+)=(.*)$")
  if k == "a-sleep" then -- seconds each command of a sleeps: longer ones keep more open at once
    opts.a_sleep = assert(tonumber(v) and v, "--a-sleep needs a number")
  elseif k == "binary" or k == "out" or k == "only" then
    opts[k] = v
  else
    error("bench/resources.lua: unknown option " .. a)
  end
end
local binary = opts.binary or helpers.binary()
local wanted = {}
for name in opts.only:gmatch("[^,%s]+") do
  wanted[name] = true
end

local N_EXEC = 2000 -- executes of a and b
local HUGE = 200 * 1000 * 1000 -- bytes of c's line
local KEEP = 64 * 1024 -- bytes of a reply line this reader keeps (its head and its tail)
-- Set on SIGINT/SIGTERM. The main task is canceled too, which only makes its waits return at
-- once: every loop that waits checks this and raises, so the cleanups run and nothing spins.
local stopping = false
local function check_stop()
  if stopping then
    error("interrupted", 0)
  end
end

-- helpers.run cancels a run past its deadline; every wait below has its own bound, this only
-- catches what they miss.
helpers.deadline = 1800

local function params(extra)
  return helpers.merged({ driverKey = "local", companyId = "c1", environmentId = "e1",
    config = {} }, extra)
end

-- status(pid) -> { rss = MiB, hwm = MiB } | nil once the process is gone.
local function status(pid)
  local text = fs.read("/proc/" .. pid .. "/status")
  local rss = text and text:match("VmRSS:%s*(%d+) kB")
  if not rss then
    return nil
  end
  return { rss = tonumber(rss) / 1024, hwm = tonumber(text:match("VmHWM:%s*(%d+) kB")) / 1024 }
end

-- What this reader notes of one reply line: the line itself can be 32 MiB+ (an execute's
-- capped stdout) and b passes 200 MB of them, so only a summary stays.
local function summary(len, head, tail)
  local s = { len = len }
  if len <= KEEP then
    local msg = json.decode(head)
    if type(msg) ~= "table" then
      s.bad = true
      return s
    end
    s.id, s.method = msg.id, msg.method
    if type(msg.error) == "table" then
      s.error = tostring(msg.error.message)
    elseif type(msg.result) == "table" then
      local r = msg.result
      s.exit, s.stdout, s.stderr = r.exitCode, r.stdout, r.stderr
      s.timed_out, s.truncated = r.timedOut, r.truncated
      s.status = r.status
      s.result = r -- a small line: kept whole (the acquire's lease is read from it)
    end
    return s
  end
  -- a big reply: only its small fields, found in its first or last KEEP bytes (the big
  -- stdout between them is one string of the command's bytes, no quote or brace in it)
  local function field(pat)
    return head:match(pat) or tail:match(pat)
  end
  s.id = tonumber(field('"id":(%d+)'))
  s.method = field('"method":"([^"]*)"')
  s.exit = tonumber(field('"exitCode":(%-?%d+)'))
  s.truncated = field('"truncated":(%a+)') == "true"
  s.error = field('"error":{[^}]-"message":"([^"]*)"')
  return s
end

-- A worker (or the shell around one) spawned with its stdin a pipe and its stdout read by a
-- lean line reader: replies are summarized by id (w.replies), notifications only counted.
local Worker = {}
Worker.__index = Worker

local function start(argv, env)
  local self = setmetatable({ replies = {}, n_replies = 0, notes = 0, stderr = {},
    head = {}, head_n = 0, tail = "", len = 0 }, Worker)
  self.process = assert(proc.spawn({
    argv = argv,
    env = env,
    stdin = true,
    timeout = 900,
    keep_output = false, -- the reader below keeps what it needs, proc nothing
    on_stdout = function(chunk)
      self:feed(chunk)
    end,
    on_stderr = function(chunk)
      if #self.stderr < 100 then
        self.stderr[#self.stderr + 1] = chunk
      end
    end,
  }))
  self.pid = self.process.pid
  return self
end

function Worker:piece(p)
  self.len = self.len + #p
  if self.head_n < KEEP then
    local take = p:sub(1, KEEP - self.head_n)
    self.head[#self.head + 1] = take
    self.head_n = self.head_n + #take
  end
  local t = self.tail .. p
  self.tail = #t > KEEP and t:sub(-KEEP) or t
end

function Worker:feed(chunk)
  local from = 1
  while true do
    local nl = chunk:find("\n", from, true)
    if not nl then
      if from <= #chunk then
        self:piece(chunk:sub(from))
      end
      return
    end
    self:piece(chunk:sub(from, nl - 1))
    local s = summary(self.len, table.concat(self.head), self.tail)
    self.head, self.head_n, self.tail, self.len = {}, 0, "", 0
    if s.method then
      self.notes = self.notes + 1
    elseif s.id ~= nil then
      if not self.replies[s.id] then
        self.n_replies = self.n_replies + 1
      end
      self.replies[s.id] = s
    end
    from = nl + 1
  end
end

function Worker:request(id, method, p)
  assert(self.process:write(assert(json.encode({ jsonrpc = "2.0", id = id, method = method,
    params = p or {} })) .. "\n"))
end

-- reply_to(id, seconds) -> the summary of the reply with that id | nil, "timeout" | "exited"
function Worker:reply_to(id, seconds)
  local deadline = task.now() + seconds
  while not self.replies[id] do
    check_stop()
    if self.process:done() then
      return nil, "exited"
    end
    if task.now() > deadline then
      return nil, "timeout"
    end
    task.sleep(0.01)
  end
  return self.replies[id]
end

-- wait_for(pred, seconds) -> true | false when the time ran out or the worker exited first.
function Worker:wait_for(pred, seconds)
  local deadline = task.now() + seconds
  while not pred() do
    check_stop()
    if self.process:done() or task.now() > deadline then
      return pred()
    end
    task.sleep(0.05)
  end
  return true
end

function Worker:initialize()
  self:request(0, "initialize", { manifest = {}, config = {},
    instanceInfo = { instanceId = "default", hostVersion = "0.0.0" }, apiVersion = 1,
    databaseNamespace = json.null })
  return self:reply_to(0, 30)
end

function Worker:stderr_text()
  return table.concat(self.stderr):sub(1, 2000)
end

-- The worker asked to shut down, given 15 s, then its whole process group killed; then every
-- command still holding the run's marker (the worker may leave some) is killed too.
function Worker:stop(marker)
  if not self.process:done() then
    pcall(self.request, self, 0x7fff, "shutdown", {})
    if not self.process:wait(15) then
      sys.kill(-self.pid, "SIGKILL")
      self.process:wait(5)
    end
  end
  sys.kill(-self.pid, "SIGKILL") -- a worker behind a shell may outlive the shell
  if marker then
    for _, p in ipairs(cmdline.holding(marker)) do
      sys.kill(-p.pid, "SIGKILL")
      sys.kill(p.pid, "SIGKILL")
    end
  end
end

-- with_worker(argv_of(binary), extra_env, fn): fn(w, marker, tmp) on a fresh worker under a
-- scrubbed env and its own TMPDIR; everything is stopped and removed whatever fn does.
local markers = {} -- every run's, to count what is left at the end
local function with_worker(argv, extra_env, fn)
  local tmp <close> = helpers.tempdir("ph-resources-bench-")
  local marker = cmdline.marker()
  markers[#markers + 1] = marker
  local w = start(argv, helpers.merged({ PATH = os.getenv("PATH"), TMPDIR = tmp.path,
    PROVIDER_HOST_LOG = "error" }, extra_env))
  return helpers.with_cleanup(fn, function()
    w:stop(marker)
  end, w, marker, tmp)
end

-- lease_of(w) -> the lease of a new environmentAcquireLease, for the executes.
local function lease_of(w)
  w:request(1, "environmentAcquireLease", params({ runId = "r1" }))
  local r = assert(w:reply_to(1, 30), "no reply to environmentAcquireLease")
  assert(r.result, r.error or "no lease")
  return { providerLeaseId = r.result.providerLeaseId, metadata = r.result.metadata }
end

local function exec(lease, script, marker, extra)
  return params(helpers.merged({ lease = lease, command = "sh", args = { "-c", script, marker },
    timeoutMs = 300000 }, extra))
end

local function worker_argv()
  return { binary, "worker", "--provider", "local" }
end

local measure = {}

-- a. fd limit: 2,000 short executes at once under a hard limit of 256 open files.
function measure.a()
  local argv = { "sh", "-c", 'ulimit -n 256 && exec "$@"', "256" }
  for _, x in ipairs(worker_argv()) do
    argv[#argv + 1] = x
  end
  return with_worker(argv, nil, function(w, marker)
    assert(w:initialize(), "no reply to initialize")
    local lease = lease_of(w)
    -- what the limit is and how near the worker came to it: a fast machine may finish short
    -- commands before many are open at once, and then no build fails
    local limits = fs.read("/proc/" .. w.pid .. "/limits") or ""
    local nofile = limits:match("Max open files%s+(%d+)")
    local fds, sampling = 0, true
    local sampler = task.spawn(function()
      while sampling and not stopping and not w.process:done() do
        fds = math.max(fds, #(fs.list("/proc/" .. w.pid .. "/fd") or {}))
        task.sleep(0.02)
      end
    end)
    local t0 = task.now()
    for id = 2, N_EXEC + 1 do
      w:request(id, "environmentExecute", exec(lease, "sleep " .. opts.a_sleep .. "; echo ok",
        marker))
    end
    w:wait_for(function()
      return w.n_replies >= N_EXEC + 2
    end, 240)
    local seconds = task.now() - t0
    sampling = false
    sampler:wait(1)
    local ok, failed, missing, first = 0, 0, 0, nil
    for id = 2, N_EXEC + 1 do
      local r = w.replies[id]
      if not r then
        missing = missing + 1
      elseif r.error or r.exit ~= 0 or r.stdout ~= "ok\n" then
        failed = failed + 1
        first = first or r.error or ("exit %s: %s"):format(tostring(r.exit),
          tostring(r.stderr):sub(1, 200))
      else
        ok = ok + 1
      end
    end
    return { executes = N_EXEC, sleep = tonumber(opts.a_sleep), ok = ok, failed = failed,
      no_reply = missing, first_error = first, seconds = seconds, worker_exited = w.process:done(),
      stderr = w.process:done() and w:stderr_text() or nil, nofile = tonumber(nofile),
      peak_fds = fds,
      value = ("ok %d, failed %d, no reply %d, %.1f s, fds peak %d of %s%s"):format(ok, failed,
        missing, seconds, fds, tostring(nofile),
        first and ("; first error: " .. first:gsub("%s+", " "):sub(1, 90)) or "") }
  end)
end

-- The pid of the process whose environ holds tag and whose command line is `binary worker`.
local function pid_by_env(tag)
  for _, name in ipairs(fs.list("/proc") or {}) do
    if name:find("^%d+$") then
      local env = fs.read("/proc/" .. name .. "/environ")
      local cl = env and env:find(tag, 1, true) and fs.read("/proc/" .. name .. "/cmdline")
      if cl and cl:match("^[^%z]*%z([^%z]*)") == "worker" then
        return tonumber(name)
      end
    end
  end
end

-- b. a host that stops reading: the worker's stdout goes to a reader that passes the first
-- two lines (initialize's and the acquire's replies, needed before executing), then sleeps
-- 10 s before reading on. `read` takes a pipe byte by byte, so nothing past them is taken.
function measure.b()
  local tag = "PH_BENCH_RESOURCES=" .. cmdline.marker()
  local argv = { "sh", "-c", '"$@" | { for i in 1 2; do IFS= read -r l; printf "%s\\n" "$l"; '
    .. "done; sleep 10; cat; }", "sh" }
  for _, x in ipairs(worker_argv()) do
    argv[#argv + 1] = x
  end
  return with_worker(argv, { PH_BENCH_RESOURCES = tag:match("=(.*)") }, function(w, marker)
    assert(w:initialize(), "no reply to initialize")
    local lease = lease_of(w)
    local paused = task.now() -- the reader is asleep from about now
    local pid
    w:wait_for(function()
      pid = pid_by_env(tag)
      return pid
    end, 5)
    assert(pid, "the worker's pid was not found")
    local base = assert(status(pid))
    local script = "head -c 100000 /dev/zero | tr '\\0' y"
    local batch = {}
    for id = 2, N_EXEC + 1 do -- all at once: one write
      batch[#batch + 1] = assert(json.encode({ jsonrpc = "2.0", id = id,
        method = "environmentExecute", params = exec(lease, script, marker) }))
    end
    assert(w.process:write(table.concat(batch, "\n") .. "\n"))
    local peak, hwm, samples = base.rss, base.hwm, 0
    while w.n_replies <= 2 and task.now() - paused < 12 do
      check_stop()
      local st = status(pid)
      if not st then
        break
      end
      peak, hwm, samples = math.max(peak, st.rss), st.hwm, samples + 1
      task.sleep(0.2)
    end
    local t0 = task.now()
    w:wait_for(function()
      return w.n_replies >= N_EXEC + 2
    end, 240)
    local drained = task.now() - t0
    local after = status(pid) or {}
    local ok, other = 0, 0
    for id = 2, N_EXEC + 1 do
      local r = w.replies[id]
      if r and not r.error and r.exit == 0 and r.len > 100000 then
        ok = ok + 1
      elseif r then
        other = other + 1
      end
    end
    local got = w.n_replies - 2
    return { executes = N_EXEC, baseline_rss_mib = base.rss, peak_rss_mib = peak,
      hwm_before_resume_mib = hwm, hwm_after_drain_mib = after.hwm, samples = samples,
      replies = got, replies_ok = ok, replies_not_ok = other, drain_seconds = drained,
      worker_exited = w.process:done(),
      value = ("peak RSS %.0f MiB, HWM %.0f MiB (base %.0f); replies %d/%d (ok %d) in %.1f s"
        .. ", HWM after %s MiB"):format(peak, hwm, base.rss, got, N_EXEC, ok, drained,
        after.hwm and ("%.0f"):format(after.hwm) or "?") }
  end)
end

-- c. one huge line: an execute whose stdin is 200 MB, counted by `wc -c` (or, `unknown`,
-- a method nobody serves with a 200 MB param: the line alone, no command holding it). The
-- line goes out in 10 MB writes of one string, so this script holds 10 MB of it, not 400.
local function huge(unknown)
  return with_worker(worker_argv(), nil, function(w, marker)
    assert(w:initialize(), "no reply to initialize")
    local lease = lease_of(w)
    task.sleep(0.5)
    local before = assert(status(w.pid))
    local line = assert(json.encode(unknown
      and { jsonrpc = "2.0", id = 2, method = "benchNoSuchMethod", params = { blob = "@STDIN@" } }
      or { jsonrpc = "2.0", id = 2, method = "environmentExecute",
        params = exec(lease, "wc -c", marker, { stdin = "@STDIN@" }) }))
    local i, j = line:find('"@STDIN@"', 1, true)
    local piece = string.rep("x", 10 * 1000 * 1000)
    local t0 = task.now()
    assert(w.process:write(line:sub(1, i)))
    for _ = 1, HUGE // #piece do
      assert(w.process:write(piece))
    end
    assert(w.process:write(line:sub(j) .. "\n"))
    local r, why = w:reply_to(2, 300)
    local seconds = task.now() - t0
    w:request(3, "health", {})
    local h = w:reply_to(3, 30)
    task.sleep(1)
    local after = status(w.pid) or {}
    local answer = not r and ("no reply (" .. why .. ")") or r.error
      or ("exit %s, stdout %q"):format(tostring(r.exit), tostring(r.stdout))
    return { line_bytes = HUGE + #line, rss_before_mib = before.rss, hwm_mib = after.hwm,
      rss_1s_after_mib = after.rss, reply = answer, reply_seconds = seconds,
      health = h and (h.status or h.error) or "no reply", worker_exited = w.process:done(),
      value = ("RSS before %.0f MiB, HWM %s MiB, RSS 1 s after %s MiB; reply %.1f s: %s"
        .. "; health %s"):format(before.rss, after.hwm and ("%.0f"):format(after.hwm) or "?",
        after.rss and ("%.0f"):format(after.rss) or "?", seconds, answer:gsub("%s+", " "),
        tostring(h and (h.status or h.error) or "no reply")) }
  end)
end

function measure.c()
  return huge(false)
end

function measure.c_unknown()
  return huge(true)
end

-- d. n executes at once each writing 100 MB (`byte` as tr writes it), the host reading
-- as fast as it can: the worker's peak against its RSS before.
local function flood(n, byte)
  return with_worker(worker_argv(), nil, function(w, marker)
    assert(w:initialize(), "no reply to initialize")
    local lease = lease_of(w)
    task.sleep(0.5)
    local base = assert(status(w.pid))
    local script = ("head -c 100000000 /dev/zero | tr '\\0' '%s'"):format(byte)
    local t0 = task.now()
    for id = 2, n + 1 do
      w:request(id, "environmentExecute", exec(lease, script, marker))
    end
    w:wait_for(function()
      return w.n_replies >= n + 2
    end, 240)
    local seconds = task.now() - t0
    local after = status(w.pid) or {}
    local ok, sizes, first = 0, {}, nil
    for id = 2, n + 1 do
      local r = w.replies[id]
      if r and not r.error and r.exit == 0 then
        ok = ok + 1
      else
        first = first or (r and (r.error or ("exit " .. tostring(r.exit))) or "no reply")
      end
      sizes[#sizes + 1] = r and r.len or 0
    end
    local per = after.hwm and (after.hwm - base.rss) / n
    return { executes = n, ok = ok, first_error = first, baseline_rss_mib = base.rss,
      hwm_mib = after.hwm, per_execute_mib = per, reply_bytes = sizes, seconds = seconds,
      truncated = w.replies[2] and w.replies[2].truncated, worker_exited = w.process:done(),
      value = ("HWM %s MiB (base %.0f), per execute %s MiB; ok %d/%d, reply %.1f MB, %.1f s%s")
        :format(after.hwm and ("%.0f"):format(after.hwm) or "?", base.rss,
          per and ("%.0f"):format(per) or "?", ok, n, (sizes[1] or 0) / 1e6, seconds,
          first and ("; " .. first) or "") }
  end)
end

function measure.d()
  return flood(8, "a")
end

function measure.d_ff()
  return flood(1, "\\377")
end

local ROWS = {
  { "a", "a", "a. fd limit 256, 2000 executes" },
  { "b", "b", "b. host stops reading 10 s" },
  { "c", "c", "c. one 200 MB line (stdin)" },
  { "c", "c_unknown", "c. one 200 MB line (no method)" },
  { "d", "d", "d. 8 x 100 MB stdout" },
  { "d", "d_ff", "d. 1 x 100 MB of 0xFF" },
}

helpers.run(function()
  -- Ctrl-C or a kill: the run stops, and its cleanups (which kill every worker and command,
  -- remove every temp dir) still run; the results so far are not written.
  local me = task.current()
  local watchers = {}
  for _, sig in ipairs({ "SIGINT", "SIGTERM" }) do
    watchers[#watchers + 1] = task.spawn(function()
      if sys.wait_signal(sig) then
        io.stderr:write("bench/resources.lua: ", sig, ": stopping\n")
        stopping = true
        me:cancel()
      end
    end)
  end
  local rows = {}
  print(("binary: %s"):format(binary))
  print(("%-32s %s"):format("measurement", "value"))
  for _, row in ipairs(ROWS) do
    local letter, key, what = row[1], row[2], row[3]
    if wanted[letter] then
      local ok, res = pcall(measure[key])
      if stopping then
        error(res, 0)
      end
      if not ok then
        res = { failed = tostring(res), value = "FAILED: " .. tostring(res) }
      end
      res.what = what
      rows[key] = res
      print(("%-32s %s"):format(what, res.value))
    end
  end
  -- the command lines of the measurements' executes hold their run's marker: count what is
  -- left (each run's cleanup already killed its own)
  local left = 0
  for _, m in ipairs(markers) do
    left = left + #cmdline.holding(m)
  end
  print(("commands left running: %d"):format(left))
  for _, t in ipairs(watchers) do
    t:cancel()
  end
  local f = assert(io.open(opts.out, "w"))
  f:write(assert(json.encode({ binary = binary, rows = rows, processes_left = left })), "\n")
  f:close()
end)
