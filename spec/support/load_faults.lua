--- spec.support.load_faults: load with faults (issue 11, item 9), shared by
-- bench/load_faults.lua and spec/worker/load_faults_spec.lua. One worker process per provider
-- (`local`, `e2b` against the fake E2B, `exe-dev` against the fake exe.dev and its sshd VMs),
-- as Paperclip runs one per plugin, each under a low hard RLIMIT_NOFILE (prlimit); requests
-- mixed across them, all in flight at once, while the fakes inject errors, stalls and dropped
-- connections (fake:chaos); then the invariants, each counted: every request answered, each
-- within its own deadline (Paperclip's, worker-protocol.md 2.6), the workers still up (a last
-- health answered, exit 0 on shutdown), and no sandbox, VM, process, file descriptor or temp
-- directory left.
--
--   local lf = require("spec.support.load_faults")
--   local report = lf.run({ requests = 150, nofile = 128 })   -- inside task.run
--   print(lf.table(report)); assert(report.ok, lf.failures(report))
--
-- Also M.picker: the seeded draw the fakes' chaos mode uses (it needs nothing of the rest).
local fs = require("host.fs")
local helpers = require("spec.helpers")
local json = require("host.json")
local lines = require("spec.support.lines")
local proc = require("host.proc")
local sys = require("host.core.sys")
local task = require("host.task")
local util = require("host.util")

local M = {}

--- picker(spec) -> pick(applies, counts) -> a fault | nil. Each call draws twice from a
-- generator seeded with spec.seed (an integer, default 1): whether this request gets a fault
-- (with probability spec.rate), then which of spec.faults for which applies(fault) is true
-- (by weight, default 1). The fault comes back as a fresh copy with times = 1, and
-- counts[fault.name] is incremented.
function M.picker(spec)
  local state = math.tointeger(spec.seed or 1) or 1
  local function draw() -- a 64-bit LCG (Knuth's MMIX constants); the top 53 bits, in [0, 1)
    state = state * 6364136223846793005 + 1442695040888963407
    return (state >> 11) / 9007199254740992.0
  end
  return function(applies, counts)
    local roll, which = draw(), draw()
    if roll >= (spec.rate or 0) then
      return nil
    end
    local list, total = {}, 0
    for _, f in ipairs(spec.faults or {}) do
      if applies(f) then
        list[#list + 1] = f
        total = total + (f.weight or 1)
      end
    end
    local at = which * total
    for _, f in ipairs(list) do
      at = at - (f.weight or 1)
      if at < 0 then
        local name = f.name or "fault"
        counts[name] = (counts[name] or 0) + 1
        local copy = {}
        for k, v in pairs(f) do
          copy[k] = v
        end
        copy.times = 1
        return copy
      end
    end
  end
end

-- The faults each fake injects. e2b's control plane only gets stalls within the client's
-- deadline: its lifetime (config.timeoutMs) is also every API call's deadline, and a long one
-- keeps leaked sandboxes visible until the count. envd's process streams stall beyond theirs.
local RETRY_AFTER = { ["retry-after"] = "1" }
M.E2B_FAULTS = {
  { name = "500", status = 500 },
  { name = "503", status = 503 },
  { name = "429", status = 429, headers = RETRY_AFTER },
  { name = "stall within (1.5 s)", delay = 1.5 },
  { name = "stall beyond (envd stream)", stall = true, kind = "envd",
    path = "^/process%.Process/" },
  { name = "drop (after the head)", drop = true },
  { name = "truncated body", truncate = true },
  { name = "lost answer (carried out, then dropped)", after = true, drop = true, kind = "api" },
}
M.EXE_FAULTS = {
  { name = "500", status = 500, body = "internal error" },
  { name = "503", status = 503, body = "unavailable" },
  { name = "429", status = 429, body = "rate limited" },
  { name = "stall within (1.5 s)", delay = 1.5 },
  { name = "stall beyond (never answers)", stall = true },
  { name = "drop (mid-answer)", drop = true },
  { name = "lost answer (carried out, then dropped)", after = true, drop = true },
}

M.E2B_KEY = "e2b_load_key"

--- CACHED_CONNECTIONS: the idle connections a worker's HTTP client keeps for reuse at most
-- (host/net/mod_http.c, MAX_CONNECTS): fds that are not leaks.
M.CACHED_CONNECTIONS = 64

------------------------------------------------------------------------------------------------
-- Small helpers

local merged = helpers.merged

local function read(path)
  return fs.read(path)
end

-- The pids of every process, with their parent pids: {pid -> ppid}.
local function process_table()
  local t = {}
  for _, name in ipairs(fs.list("/proc") or {}) do
    local pid = tonumber(name)
    if pid then
      local stat = read("/proc/" .. name .. "/stat") or ""
      local state, ppid = stat:match("^%d+ %b() (%S) (%d+)")
      if ppid and state ~= "Z" then
        t[pid] = tonumber(ppid)
      end
    end
  end
  return t
end

--- descendants(pid) -> the pids below pid (zombies left out).
function M.descendants(pid)
  local t, out, frontier = process_table(), {}, { [pid] = true }
  local grew = true
  while grew do
    grew = false
    for p, pp in pairs(t) do
      if frontier[pp] and not frontier[p] then
        frontier[p], grew = true, true
        out[#out + 1] = p
      end
    end
  end
  table.sort(out)
  return out
end

--- marked(marker, root, skip) -> pids of the live processes (not in the set skip) whose command
-- line or environment holds marker, or whose working directory lies under root.
function M.marked(marker, root, skip)
  local out = {}
  for pid in pairs(process_table()) do
    if not skip[pid] and pid ~= sys.getpid() then
      local base = "/proc/" .. pid
      local cmd, env = read(base .. "/cmdline") or "", read(base .. "/environ") or ""
      local cwd = fs.realpath(base .. "/cwd") or ""
      if cmd:find(marker, 1, true) or env:find(marker, 1, true)
        or cwd:sub(1, #root + 1) == root .. "/" then
        out[#out + 1] = pid
      end
    end
  end
  table.sort(out)
  return out
end

local function fd_count(pid)
  local list = fs.list("/proc/" .. pid .. "/fd")
  return list and #list or nil
end

-- TCP sockets by inode -> "local port -> remote port (state)", from /proc/net/tcp{,6}.
local TCP_STATES = { ["01"] = "established", ["06"] = "time-wait", ["08"] = "close-wait",
  ["0A"] = "listen" }
local function tcp_sockets()
  local out = {}
  for _, f in ipairs({ "/proc/net/tcp", "/proc/net/tcp6" }) do
    for line in (read(f) or ""):gmatch("[^\n]+") do
      local lp, rp, st, inode = line:match(
        "^%s*%d+:%s+%x+:(%x+)%s+%x+:(%x+)%s+(%x%x)%s+%S+%s+%S+%s+%S+%s+%S+%s+%S+%s+(%d+)")
      if inode then
        out[inode] = { local_port = tonumber(lp, 16), remote_port = tonumber(rp, 16),
          state = TCP_STATES[st] or st }
      end
    end
  end
  return out
end

--- fd_kinds(pid, ports) -> {kind -> count}: the process's open fds by what they are (ls -l of
-- /proc/PID/fd): pipes, anon inodes, files, and TCP sockets by the service at their remote
-- port (ports: port -> name) and their state.
function M.fd_kinds(pid, ports)
  local res = proc.run({ argv = { "ls", "-l", "/proc/" .. pid .. "/fd" }, timeout = 10 })
  local out = {}
  if not res then
    return out
  end
  local tcp = tcp_sockets()
  for target in res.stdout:gmatch("%-> ([^\n]+)") do
    local kind
    local inode = target:match("^socket:%[(%d+)%]")
    if inode then
      local t = tcp[inode]
      kind = t and ("tcp to " .. (ports[t.remote_port] or t.remote_port) .. " (" .. t.state
        .. ")") or "socket (unix/other)"
    elseif target:find("^pipe:") then
      kind = "pipe"
    elseif target:find("^anon_inode:") then
      kind = target:gsub("%[%d+%]$", "")
    else
      kind = "file " .. target
    end
    out[kind] = (out[kind] or 0) + 1
  end
  return out
end

-- Paperclip's own deadline for a call, in seconds (worker-protocol.md 2.6).
function M.deadline(method, params)
  local config = params.config or {}
  if method == "environmentExecute" then
    local t = params.timeoutMs or config.timeoutMs
    return t and t / 1000 + 30 or 30
  elseif method == "environmentProbe" then
    return 120
  elseif method == "environmentValidateConfig" or method == "health" then
    return 30
  end
  local a, b = config.timeoutMs, config.bridgeRequestTimeoutMs
  local t = a and b and math.max(a, b) or a or b
  return t and t / 1000 + 30 or 30
end

-- The kind of an answer, for the table: "result", "result: timed out", or the error's gist.
local ERROR_KINDS = {
  { "too many open files", "error: too many open files" },
  { "[Rr]esource temporarily unavailable", "error: EAGAIN" },
  { "did not finish within", "error: canceled at its deadline" },
  { "HTTP 429", "error: rate limited (429)" },
  { "failed %(429%)", "error: rate limited (429)" },
  { "failed %(5%d%d%)", "error: HTTP 5xx" },
  { "rate limit", "error: rate limited (429)" },
  { "HTTP 5%d%d", "error: HTTP 5xx" },
  { "[Tt]imed? ?out", "error: timeout" },
  { "no answer within", "error: timeout" },
  { "in time", "error: timeout" },
  { "after 0 ms: Couldn't connect", "error: no fd for a socket (couldn't connect, 0 ms)" },
  { "Couldn't connect", "error: couldn't connect" },
  { "truncated stream", "error: stream truncated" },
  { "closed", "error: connection closed/dropped" },
  { "cut", "error: connection closed/dropped" },
  { "reset", "error: connection closed/dropped" },
  { "[Ee]mpty reply", "error: connection closed/dropped" },
  { "not found", "error: not found" },
}
function M.kind_of(reply)
  if reply.result ~= nil then
    local r = reply.result
    if type(r) == "table" and r.timedOut == true then
      return "result: command timed out"
    elseif type(r) == "table" and r.ok == false then
      return "result: ok=false"
    end
    return "result"
  end
  local msg = type(reply.error) == "table" and tostring(reply.error.message) or "?"
  for _, k in ipairs(ERROR_KINDS) do
    if msg:find(k[1]) then
      return k[2]
    end
  end
  return "error: other"
end

------------------------------------------------------------------------------------------------
-- A worker: one provider-host worker process under prlimit, its replies routed by id

local Worker = {}
Worker.__index = Worker

local function start_worker(h, provider, env)
  local w = setmetatable({ provider = provider, pending = {}, replies = 0,
    stderr = {}, next_id = 0 }, Worker)
  local argv = { "prlimit", ("--nofile=%d:%d"):format(h.nofile, h.nofile), "--", h.binary,
    "worker", "--provider", provider }
  w.process = assert(proc.spawn({
    argv = argv,
    env = env,
    stdin = true,
    timeout = h.budget + 120, -- a backstop only: the harness ends it long before
    keep_output = false,
    on_stdout = lines.splitter(function(line)
      w:_line(line)
    end),
    on_stderr = function(chunk)
      if #w.stderr < 2000 then
        w.stderr[#w.stderr + 1] = chunk
      end
    end,
  }))
  w.pid = w.process.pid
  return w
end

function Worker:_line(line)
  local ok, msg = pcall(json.decode, line)
  if not ok or type(msg) ~= "table" or msg.method ~= nil or msg.id == nil then
    return -- a notification (log, execute.log)
  end
  local call = self.pending[msg.id]
  if call then
    self.pending[msg.id] = nil
    call.reply, call.answered_at = msg, task.now()
    self.replies = self.replies + 1
    if call.signal then
      call.signal:notify()
    end
  end
end

--- worker:send(method, params) -> call {method, params, sent_at, deadline, reply, answered_at}
function Worker:send(method, params, what)
  self.next_id = self.next_id + 1
  local id = self.next_id
  local call = { id = id, method = method, params = params, what = what or method,
    provider = self.provider, sent_at = task.now(), deadline = M.deadline(method, params) }
  self.pending[id] = call
  local line = assert(json.encode({ jsonrpc = "2.0", id = id, method = method,
    params = params })) .. "\n"
  local ok, err = self.process:write(line)
  if not ok then
    call.write_error = tostring(err)
  end
  return call
end

--- worker:call(method, params, seconds) -> call, once answered (or after seconds).
function Worker:call(method, params, seconds)
  local call = self:send(method, params)
  call.signal = task.signal()
  local deadline = task.now() + seconds
  while not call.reply and task.now() < deadline and not self.process:done() do
    call.signal:wait(math.min(0.25, deadline - task.now()))
  end
  return call
end

------------------------------------------------------------------------------------------------
-- The fake E2B: its own process (spec/support/fake_e2b_main.lua), driven over its stdin

local function start_fake_e2b(h)
  local f = { lines = {}, next_id = 0 }
  f.process = assert(proc.spawn({
    argv = { h.binary, h.root_dir .. "/spec/support/fake_e2b_main.lua", "--api-key", M.E2B_KEY },
    env = { PATH = os.getenv("PATH"), TMPDIR = h.fake_tmp, PROVIDER_HOST_LOG = "error" },
    stdin = true,
    timeout = h.budget + 120,
    keep_output = false,
    on_stdout = lines.splitter(function(line)
      f.lines[#f.lines + 1] = line
    end),
  }))
  local function next_line(seconds)
    local deadline = task.now() + seconds
    while #f.lines == 0 do
      if task.now() > deadline or f.process:done() then
        error("fake E2B: no answer within " .. seconds .. " s", 0)
      end
      task.sleep(0.01)
    end
    return assert(json.decode(table.remove(f.lines, 1)))
  end
  f.info = next_line(30)
  function f.control(op, fields)
    f.next_id = f.next_id + 1
    local req = merged(fields, { id = f.next_id, op = op })
    assert(f.process:write(assert(json.encode(req)) .. "\n"))
    local r = next_line(30)
    assert(r.ok, r.error)
    return r.result
  end
  return f
end

------------------------------------------------------------------------------------------------
-- The load

-- Commands (sh -c SCRIPT MARKER: the marker is $0, on every shell's command line).
local SCRIPTS = {
  short = "echo ok",
  long = "sleep 2; echo done",
  big = "head -c 262144 /dev/zero | tr '\\0' x",
  timeout = "echo started; sleep 60",
}

-- How the bulk is mixed: {what, weight}. Executes need a lease of the provider; without one
-- they become a validateConfig.
local MIX = {
  { "execute short", 40 },
  { "execute long", 10 },
  { "execute big", 8 },
  { "execute timeout", 7 },
  { "validate", 12 },
  { "health", 6 },
  { "probe", 5 },
  { "acquire", 5 },
  { "realize", 7 },
}

local SHARE = { ["local"] = 0.4, e2b = 0.35, ["exe-dev"] = 0.25 }

-- A seeded generator for the harness's own choices (the fakes have theirs).
local function rng(seed)
  local state = seed * 2654435761 + 1
  return function()
    state = state * 6364136223846793005 + 1442695040888963407
    return (state >> 11) / 9007199254740992.0
  end
end

local function weighted(r, list)
  local total = 0
  for _, e in ipairs(list) do
    total = total + e[2]
  end
  local at = r() * total
  for _, e in ipairs(list) do
    at = at - e[2]
    if at < 0 then
      return e[1]
    end
  end
  return list[#list][1]
end

--- run(opts) -> report. Call inside a task. opts (all optional):
--   requests  total requests (2000); nofile  each worker's hard RLIMIT_NOFILE (256)
--   seed      (1); rate  the share of the fakes' requests that get a fault (0.15)
--   binary    provider-host (the running one); root  the repository (for the fakes' files)
--   providers list of "local", "e2b", "exe-dev" (all three); leases  per provider, made
--             first ({local = 0.02*requests, e2b = 0.02*requests, exe-dev = 2..6})
--   budget    seconds the whole run may take (300: waits for answers end 30 s before)
--   log       fn(line) for progress (none)
function M.run(opts)
  opts = opts or {}
  local n = opts.requests or 2000
  local h = {
    nofile = opts.nofile or 256,
    seed = opts.seed or 1,
    rate = opts.rate or 0.15,
    binary = opts.binary or sys.exe_path(),
    root_dir = opts.root or ".",
    budget = opts.budget or 300,
  }
  local log = opts.log or function() end
  local providers = opts.providers or { "local", "e2b", "exe-dev" }
  local started = task.now()
  h.give_up_at = started + h.budget - 30 -- the rest: shutdown, counts, cleanup
  local report = { requests = n, nofile = h.nofile, seed = h.seed, rate = h.rate,
    providers = providers, calls = {}, invariants = {}, workers = {} }
  local tmp = assert(util.tempdir("ph-load-"))
  h.tmp = tmp.path
  h.marker = "ph-load-mark-" .. util.hex(assert(util.random(8)))
  h.fake_tmp = h.tmp .. "/fake"
  assert(fs.mkdir(h.fake_tmp))
  local workers, fake_e2b, fake_exe = {}, nil, nil
  local ok, err = xpcall(function()
    M._load(h, n, providers, opts, report, workers, log, function(a, b)
      fake_e2b, fake_exe = a, b
    end)
  end, debug.traceback)
  if not ok then
    report.error = tostring(err)
  end
  -- Everything we started ends, whatever happened.
  for _, w in pairs(workers) do
    if not w.process:done() then
      w.process:kill("SIGKILL")
      w.process:wait(5)
    end
  end
  for _, pid in ipairs(M.marked(h.marker, h.tmp, {})) do
    sys.kill(pid, "SIGKILL")
  end
  if fake_exe then
    pcall(fake_exe.stop, fake_exe)
  end
  if fake_e2b then
    fake_e2b.process:close_stdin()
    if not fake_e2b.process:wait(10) then
      fake_e2b.process:kill("SIGKILL")
      fake_e2b.process:wait(5)
    end
  end
  for _, pid in ipairs(M.marked(h.marker, h.tmp, {})) do
    sys.kill(pid, "SIGKILL")
  end
  tmp:remove()
  report.seconds = task.now() - started
  report.ok = report.error == nil
  for _, inv in ipairs(report.invariants) do
    report.ok = report.ok and inv.ok
  end
  return report
end

function M._load(h, n, providers, opts, report, workers, log, started_fakes)
  local r = rng(h.seed)
  local has = {}
  for _, p in ipairs(providers) do
    has[p] = true
  end
  local fake_e2b, fake_exe
  if has.e2b then
    fake_e2b = start_fake_e2b(h)
  end
  if has["exe-dev"] then
    fake_exe = require("spec.support.fake_exedev").start({})
  end
  started_fakes(fake_e2b, fake_exe)
  h.ports = {} -- remote port -> the service, for the fd counts
  if fake_e2b then
    h.ports[tonumber(fake_e2b.info.apiUrl:match(":(%d+)$"))] = "fake E2B API"
    h.ports[tonumber(fake_e2b.info.sandboxUrl:match(":(%d+)$"))] = "fake envd"
  end
  if fake_exe then
    h.ports[fake_exe.server.port] = "fake exe.dev API"
  end
  local configs = {
    ["local"] = {},
    e2b = { apiKey = M.E2B_KEY, timeoutMs = 600000 },
    ["exe-dev"] = fake_exe and { apiKey = fake_exe.token, apiUrl = fake_exe.base_url,
      sshPrivateKey = fake_exe.key.private, strictHostKeyChecking = "no",
      timeoutMs = 10000 } or nil,
  }
  for _, p in ipairs(providers) do
    local env = { PATH = os.getenv("PATH"), TMPDIR = h.tmp .. "/" .. p, PH_LOAD_MARK = h.marker,
      PROVIDER_HOST_LOG = "error", PROVIDER_HOST_STDIN_GRACE = "5" }
    assert(fs.mkdir(env.TMPDIR))
    if p == "e2b" then
      env.E2B_API_URL, env.E2B_SANDBOX_URL = fake_e2b.info.apiUrl, fake_e2b.info.sandboxUrl
      env.E2B_DOMAIN = fake_e2b.info.domain
    end
    local w = start_worker(h, p, env)
    workers[p] = w
    local init = w:call("initialize", { manifest = {}, config = {}, apiVersion = 1,
      instanceInfo = { instanceId = "load", hostVersion = "0.0.0" },
      databaseNamespace = json.null }, 20)
    assert(init.reply and init.reply.result, p .. " worker did not initialize: "
      .. table.concat(w.stderr))
    task.sleep(0.2)
    w.fds_start = fd_count(w.pid)
    w.fd_kinds_start = M.fd_kinds(w.pid, {})
    w.limit = (read("/proc/" .. w.pid .. "/limits") or ""):match("Max open files%s+(%d+)")
  end
  log(("workers up (%s), each with RLIMIT_NOFILE %d; faults on %d%% of the fakes' requests")
    :format(table.concat(providers, ", "), h.nofile, math.floor(h.rate * 100 + 0.5)))
  if fake_e2b then
    fake_e2b.control("chaos", { spec = { seed = h.seed, rate = h.rate, faults = M.E2B_FAULTS } })
  end
  if fake_exe then
    fake_exe:chaos({ seed = h.seed + 1, rate = h.rate, faults = M.EXE_FAULTS })
  end

  local calls = report.calls
  local sent = 0
  local run_n = 0
  local function params(p, extra)
    return merged({ driverKey = p, companyId = "c-load", environmentId = "env-load",
      config = configs[p] }, extra)
  end
  local function send(p, method, prm, what)
    sent = sent + 1
    local c = workers[p]:send(method, prm, what)
    calls[#calls + 1] = c
    return c
  end
  local function acquire(p)
    run_n = run_n + 1
    return send(p, "environmentAcquireLease", params(p, { runId = "run" .. run_n }), "acquire")
  end
  -- waits (bounded) until every call in list is answered or past its deadline + 5 s.
  local function settle(list)
    while true do
      local open = false
      local now = task.now()
      for _, c in ipairs(list) do
        if not c.reply and now < c.sent_at + c.deadline + 5 and now < h.give_up_at
          and not workers[c.provider].process:done() then
          open = true
          break
        end
      end
      if not open then
        return
      end
      task.sleep(0.05)
    end
  end

  -- 1. leases, all at once
  local want = opts.leases or {}
  local first = {}
  for _, p in ipairs(providers) do
    local k = want[p] or (p == "exe-dev" and math.max(2, math.min(6, n // 300))
      or math.max(3, n // 50))
    for _ = 1, k do
      first[#first + 1] = acquire(p)
    end
  end
  settle(first)
  local leases = {}
  for _, p in ipairs(providers) do
    leases[p] = {}
  end
  local function take_leases(list)
    for _, c in ipairs(list) do
      if c.what == "acquire" and c.reply and type(c.reply.result) == "table" then
        c.lease = { providerLeaseId = c.reply.result.providerLeaseId,
          metadata = c.reply.result.metadata }
        table.insert(leases[c.provider], c.lease)
      end
    end
  end
  take_leases(first)
  log(("leases: %d acquires sent in %.1f s"):format(#first, task.now() - first[1].sent_at))

  -- 2. the bulk, all at once
  -- planned so that the bulk, a release or destroy per lease (those made in the bulk too) and
  -- a few health requests come to exactly n
  local bulk = {}
  local held = 0
  for _, p in ipairs(providers) do
    held = held + #leases[p]
  end
  local shares = {}
  for _, p in ipairs(providers) do
    shares[#shares + 1] = { p, SHARE[p] or 0.3 }
  end
  local plan, acquires = {}, 0
  while sent + #plan + held + acquires + #providers < n do
    local p, what = weighted(r, shares), weighted(r, MIX)
    plan[#plan + 1] = { p, what, r(), r() }
    acquires = acquires + (what == "acquire" and 1 or 0)
  end
  for _, step in ipairs(plan) do
    local p, what = step[1], step[2]
    local lease_list = leases[p]
    local lease = #lease_list > 0 and lease_list[1 + math.floor(step[3] * #lease_list)] or nil
    local c
    if what:find("^execute") and lease then
      local kind = what:match("^execute (%a+)")
      -- HOME given: e2b's commands make no private HOME in /tmp, which the fake's sandboxes
      -- share with this machine (a command killed with its sandbox could not remove it)
      c = send(p, "environmentExecute", params(p, { lease = lease, command = "sh",
        args = { "-c", SCRIPTS[kind], h.marker },
        env = { PH_LOAD_MARK = h.marker, HOME = p == "e2b" and h.fake_tmp or nil },
        timeoutMs = kind == "timeout" and 1000 or 20000 }), what)
    elseif what == "realize" and lease then
      c = send(p, "environmentRealizeWorkspace", params(p, { lease = lease,
        workspace = { localPath = h.tmp, mode = "isolated" } }), what)
    elseif what == "probe" then
      c = send(p, "environmentProbe", params(p, {}), "probe")
    elseif what == "acquire" then
      c = acquire(p)
    elseif what == "health" then
      c = send(p, "health", {}, "health")
    else
      c = send(p, "environmentValidateConfig", { driverKey = p, config = configs[p] },
        "validate")
    end
    bulk[#bulk + 1] = c
  end
  log(("bulk: %d requests sent at once"):format(#bulk))
  settle(bulk)
  take_leases(bulk)
  log(("bulk answered in %.1f s"):format(task.now() - bulk[1].sent_at))

  -- 3. every lease released or destroyed (faults still on), then health to fill up to n
  local final = {}
  for _, p in ipairs(providers) do
    for i, lease in ipairs(leases[p]) do
      local method = i % 2 == 0 and "environmentReleaseLease" or "environmentDestroyLease"
      local c = send(p, method, params(p, { providerLeaseId = lease.providerLeaseId,
        leaseMetadata = lease.metadata }), method == "environmentReleaseLease" and "release"
        or "destroy")
      c.lease = lease
      final[#final + 1] = c
    end
  end
  local i = 0
  while sent < n do
    i = i + 1
    local p = providers[1 + i % #providers]
    final[#final + 1] = send(p, "health", {}, "health")
  end
  settle(final)
  log(("releases and destroys answered (%d requests in all)"):format(sent))

  -- 4. faults off; what failed to go is destroyed again, as Paperclip's pending cleanup does
  report.fault_counts = {
    e2b = fake_e2b and fake_e2b.control("chaos_counts") or nil,
    ["exe-dev"] = fake_exe and fake_exe.chaos_counts or nil,
  }
  if fake_e2b then
    fake_e2b.control("chaos", {})
  end
  if fake_exe then
    fake_exe:chaos(nil)
  end
  local retries = {}
  for _, c in ipairs(final) do
    if c.lease and not (c.reply and c.reply.result ~= nil) then
      retries[#retries + 1] = workers[c.provider]:send("environmentDestroyLease",
        params(c.provider, { providerLeaseId = c.lease.providerLeaseId,
          leaseMetadata = c.lease.metadata }), "destroy (retry, no faults)")
    end
  end
  -- a release leaves a reused lease; ours are not reused, so release deleted it
  settle(retries)
  report.cleanup_retries = #retries
  local retried_ok = 0
  for _, c in ipairs(retries) do
    retried_ok = retried_ok + ((c.reply and c.reply.result ~= nil) and 1 or 0)
  end
  report.cleanup_retries_ok = retried_ok

  -- 5. the workers: up, their fds and descendants, then shutdown
  task.sleep(2)
  for _, p in ipairs(providers) do
    local w = workers[p]
    local info = { provider = p, pid = w.pid, limit = w.limit, fds_start = w.fds_start }
    info.fds_end = fd_count(w.pid)
    info.fd_kinds_start, info.fd_kinds_end = w.fd_kinds_start, M.fd_kinds(w.pid, h.ports)
    -- a fork of the worker itself (same program, same command line: its watchdog, which ends
    -- the process groups when the worker dies) is the worker's own, not a command it ran
    local own_cmdline = read("/proc/" .. w.pid .. "/cmdline")
    local below, forks = {}, 0
    for _, pid in ipairs(M.descendants(w.pid)) do
      local cmd = read("/proc/" .. pid .. "/cmdline")
      if cmd == own_cmdline then
        forks = forks + 1
      else
        below[#below + 1] = (cmd or ""):gsub("%z", " ")
      end
    end
    info.descendants_end, info.worker_forks = #below, forks
    info.descendant_cmdlines = { table.unpack(below, 1, math.min(5, #below)) }
    local hc = w:call("health", {}, 30)
    info.health = hc.reply and hc.reply.result and hc.reply.result.status or nil
    local sc = w:call("shutdown", {}, 30)
    info.shutdown_answered = sc.reply ~= nil
    w.process:close_stdin()
    local res = w.process:wait(20)
    info.exit_code = res and res.exit_code
    info.exit_signal = res and res.signal
    info.stderr_tail = table.concat(w.stderr):sub(-600)
    report.workers[#report.workers + 1] = info
  end

  -- 6. leftovers, after shutdown (processes get up to 3 s to go)
  local left = {}
  left.sandbox_ids = fake_e2b and fake_e2b.control("running") or {}
  left.vm_names = fake_exe and fake_exe:running() or {}
  left.sandboxes, left.vms = #left.sandbox_ids, #left.vm_names
  left.whose = {} -- the answers that name a sandbox or VM left: how it came to be left
  for _, c in ipairs(report.calls) do
    local text = c.reply and json.encode(c.reply) or ""
    for _, id in ipairs(left.sandbox_ids) do
      if text:find(id, 1, true) then
        left.whose[#left.whose + 1] = id .. ": " .. c.provider .. " " .. c.what .. ": "
          .. text:sub(1, 400)
      end
    end
    for _, name in ipairs(left.vm_names) do
      if text:find(name, 1, true) then
        left.whose[#left.whose + 1] = name .. ": " .. c.provider .. " " .. c.what .. ": "
          .. text:sub(1, 400)
      end
    end
  end
  local skip = {}
  if fake_e2b then
    skip[fake_e2b.process.pid] = true
  end
  local deadline = task.now() + 3
  repeat
    left.processes = M.marked(h.marker, h.tmp, skip)
    if #left.processes == 0 then
      break
    end
    task.sleep(0.2)
  until task.now() > deadline
  left.process_cmdlines = {}
  for k, pid in ipairs(left.processes) do
    if k > 5 then
      break
    end
    left.process_cmdlines[#left.process_cmdlines + 1] = ((read("/proc/" .. pid .. "/cmdline")
      or ""):gsub("%z", " "))
  end
  left.tempdirs, left.other_tmp = {}, {}
  for _, p in ipairs(providers) do
    for _, name in ipairs(fs.list(h.tmp .. "/" .. p) or {}) do
      local list = name:find("^paperclip%-local%-") and left.tempdirs or left.other_tmp
      list[#list + 1] = p .. "/" .. name
    end
  end
  report.left = left
  M.judge(report)
end

------------------------------------------------------------------------------------------------
-- The verdict

local function count_by(list, key)
  local out = {}
  for _, c in ipairs(list) do
    local k = key(c)
    out[k] = (out[k] or 0) + 1
  end
  return out
end

--- judge(report): fills report.summary and report.invariants from report.calls.
function M.judge(report)
  local margin = 1
  local s = { sent = #report.calls, answered = 0, unanswered = 0, late = 0,
    write_errors = 0, by_kind = {}, by_provider = {}, worst_late = {} }
  for _, c in ipairs(report.calls) do
    local pk = c.provider .. " " .. c.what
    s.by_provider[pk] = s.by_provider[pk] or { sent = 0, answered = 0, late = 0, kinds = {} }
    local bp = s.by_provider[pk]
    bp.sent = bp.sent + 1
    if c.write_error then
      s.write_errors = s.write_errors + 1
    end
    if c.reply then
      s.answered = s.answered + 1
      bp.answered = bp.answered + 1
      local kind = M.kind_of(c.reply)
      s.by_kind[kind] = (s.by_kind[kind] or 0) + 1
      bp.kinds[kind] = (bp.kinds[kind] or 0) + 1
      c.took = c.answered_at - c.sent_at
      if c.took > c.deadline + margin then
        s.late = s.late + 1
        bp.late = bp.late + 1
        s.worst_late[#s.worst_late + 1] = { what = pk, took = c.took, deadline = c.deadline }
      end
    else
      s.unanswered = s.unanswered + 1
    end
  end
  s.by_what = count_by(report.calls, function(c)
    return c.what
  end)
  report.summary = s
  local inv = report.invariants
  local function add(name, ok, detail)
    inv[#inv + 1] = { name = name, ok = ok, detail = detail }
  end
  add("every request answered", s.unanswered == 0 and s.answered == s.sent,
    ("%d of %d answered, %d unanswered"):format(s.answered, s.sent, s.unanswered))
  add("every answer within its deadline (+1 s)", s.late == 0 and s.unanswered == 0,
    ("%d late, %d never answered"):format(s.late, s.unanswered))
  -- out of fds: EMFILE said outright, or libcurl's "Couldn't connect ... after 0 ms" to a
  -- listening loopback server (its socket() failed: never seen with a high limit)
  local starved = (s.by_kind["error: too many open files"] or 0)
    + (s.by_kind["error: no fd for a socket (couldn't connect, 0 ms)"] or 0)
  add("no request failed for want of a file descriptor", starved == 0,
    ("%d failed (too many open files %d, no fd for a socket %d)"):format(starved,
      s.by_kind["error: too many open files"] or 0,
      s.by_kind["error: no fd for a socket (couldn't connect, 0 ms)"] or 0))
  for _, w in ipairs(report.workers) do
    add(w.provider .. " worker up: health answered, exit 0 on shutdown",
      w.health == "ok" and w.shutdown_answered and w.exit_code == 0,
      ("health %s, shutdown %s, exit %s%s"):format(tostring(w.health),
        w.shutdown_answered and "answered" or "unanswered", tostring(w.exit_code),
        w.exit_signal and (" (" .. w.exit_signal .. ")") or ""))
    -- Connections to a fake left open once every request was answered are libcurl's cache of
    -- idle connections (established, or close-wait when the fake's server closed its end
    -- first), which the worker caps at M.CACHED_CONNECTIONS (mod_http.c MAX_CONNECTS): counted
    -- apart, against that cap. Any other fd above the start is a leak.
    local cached = 0
    for kind, k in pairs(w.fd_kinds_end or {}) do
      if kind:find("^tcp to fake ") then
        cached = cached + k
      end
    end
    w.cached_connections = cached
    local slack = 4
    add(w.provider .. " worker fds back at the start (+" .. slack .. "; cached conns apart)",
      w.fds_end ~= nil and w.fds_start ~= nil and w.fds_end - cached <= w.fds_start + slack,
      ("%s at start, %s at the end, %d of them cached connections (limit %s)")
        :format(tostring(w.fds_start), tostring(w.fds_end), cached, tostring(w.limit)))
    add(w.provider .. " worker's cached connections within their cap ("
      .. M.CACHED_CONNECTIONS .. ")", cached <= M.CACHED_CONNECTIONS,
      ("%d cached"):format(cached))
    add(w.provider .. " worker has no child process at the end", w.descendants_end == 0,
      ("%d descendants"):format(w.descendants_end or -1))
  end
  local left = report.left or {}
  add("no sandbox left in the fake E2B", left.sandboxes == 0,
    ("%s running"):format(tostring(left.sandboxes)))
  add("no VM left in the fake exe.dev", left.vms == 0, ("%s running"):format(tostring(left.vms)))
  add("no process left (marker, cwd)", left.processes ~= nil and #left.processes == 0,
    ("%d left"):format(left.processes and #left.processes or -1))
  add("no temp dir left (paperclip-local-*)", left.tempdirs ~= nil and #left.tempdirs == 0,
    ("%d left"):format(left.tempdirs and #left.tempdirs or -1))
end

--- failures(report) -> the failed invariants, one per line ("" when none).
function M.failures(report)
  local out = {}
  if report.error then
    out[#out + 1] = "harness error: " .. report.error
  end
  for _, inv in ipairs(report.invariants) do
    if not inv.ok then
      out[#out + 1] = inv.name .. ": " .. inv.detail
    end
  end
  return table.concat(out, "\n")
end

local function sorted(t)
  local keys = {}
  for k in pairs(t or {}) do
    keys[#keys + 1] = k
  end
  table.sort(keys)
  return keys
end

--- text(report) -> the summary tables, for a person.
function M.text(report)
  local s = report.summary or {}
  local out = {}
  local function add(fmt, ...)
    out[#out + 1] = fmt:format(...)
  end
  add("load with faults: %d requests, RLIMIT_NOFILE %d, faults on %d%% of the fakes' requests, "
    .. "seed %d, %.1f s", report.requests, report.nofile, math.floor(report.rate * 100 + 0.5),
    report.seed, report.seconds or 0)
  add("")
  add("%-34s %6s %8s %5s  %s", "provider / request", "sent", "answered", "late", "answers")
  for _, k in ipairs(sorted(s.by_provider)) do
    local b = s.by_provider[k]
    local kinds = {}
    for _, kk in ipairs(sorted(b.kinds)) do
      kinds[#kinds + 1] = kk .. " " .. b.kinds[kk]
    end
    add("%-34s %6d %8d %5d  %s", k, b.sent, b.answered, b.late, table.concat(kinds, "; "))
  end
  add("")
  add("%-44s %6s", "answers by kind", "count")
  for _, k in ipairs(sorted(s.by_kind)) do
    add("%-44s %6d", k, s.by_kind[k])
  end
  add("%-44s %6d", "unanswered", s.unanswered or 0)
  add("")
  for _, p in ipairs(sorted(report.fault_counts)) do
    local counts = report.fault_counts[p]
    for _, k in ipairs(sorted(counts)) do
      add("fault injected by the fake %-8s %-40s %5d", p, k, counts[k])
    end
  end
  add("cleanup: %d destroys retried without faults, %d succeeded", report.cleanup_retries or 0,
    report.cleanup_retries_ok or 0)
  add("")
  for _, inv in ipairs(report.invariants) do
    add("%-4s %-58s %s", inv.ok and "ok" or "FAIL", inv.name, inv.detail)
  end
  for _, w in ipairs(report.workers or {}) do
    if (w.worker_forks or 0) > 0 then
      add("     %s worker: %d fork(s) of itself (its watchdog) not counted as children",
        w.provider, w.worker_forks)
    end
    local kinds = {}
    for _, k in ipairs(sorted(w.fd_kinds_end)) do
      kinds[#kinds + 1] = k .. " " .. w.fd_kinds_end[k]
    end
    add("     %s worker fds at the end: %s", w.provider, table.concat(kinds, "; "))
    for _, c in ipairs(w.descendant_cmdlines or {}) do
      add("     %s worker child at the end: %s", w.provider, c:sub(1, 150))
    end
  end
  local left = report.left or {}
  for _, c in ipairs(left.process_cmdlines or {}) do
    add("     left: %s", c:sub(1, 150))
  end
  for _, c in ipairs(left.tempdirs or {}) do
    add("     left: %s", c)
  end
  for _, c in ipairs(left.sandbox_ids or {}) do
    add("     left: sandbox %s", c)
  end
  for _, c in ipairs(left.vm_names or {}) do
    add("     left: VM %s", c)
  end
  for _, c in ipairs(left.whose or {}) do
    add("     named by: %s", c)
  end
  if report.error then
    add("harness error: %s", report.error)
  end
  return table.concat(out, "\n")
end

--- json_report(report) -> the report without per-call tables, plus each call's timing.
function M.json_report(report)
  local calls = json.array()
  for _, c in ipairs(report.calls) do
    calls[#calls + 1] = { provider = c.provider, what = c.what, deadline = c.deadline,
      took = c.took or json.null, kind = c.reply and M.kind_of(c.reply) or "unanswered",
      error = c.reply and type(c.reply.error) == "table" and c.reply.error.message or nil,
      detail = c.reply and type(c.reply.result) == "table" and c.reply.result.ok == false
        and type(c.reply.result.metadata) == "table" and c.reply.result.metadata.error or nil }
  end
  local out = merged(report, { calls = calls })
  return out
end

return M
