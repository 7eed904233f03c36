-- spec/support/fake_e2b_main.lua: the fake E2B as a standalone server, for the SDK conformance
-- check (spec/e2b_sdk/check_fake.mjs) and for trying a client by hand:
--
--   build/provider-host spec/support/fake_e2b_main.lua [--api-key KEY] [--domain D]
--
-- Prints one JSON line {apiUrl, sandboxUrl, domain, apiKey}, then serves until its stdin closes
-- or it gets SIGTERM/SIGINT/SIGHUP (or its parent dies). Every later stdin line is a control
-- request, answered with one JSON line {id, ok, result | error}:
--   {"id":1,"op":"fail","spec":{...}}          fake:fail(spec) (times: -1 means always)
--   {"id":2,"op":"count","pattern":"^/v2/sandboxes$","method":"POST"}   -> number
--   {"id":3,"op":"requests"}                    -> [{method, path, status, kind, sandbox_id}]
--   {"id":4,"op":"sandbox","sandboxId":"..."}   -> {state, timeoutMs, expiresIn, processes}
--   {"id":5,"op":"expire","sandboxId":"..."}    the sandbox's lifetime ends now
--   {"id":6,"op":"running"}                     -> ids of running sandboxes
--   {"id":7,"op":"commands"}                    -> every command started
--   {"id":8,"op":"chaos","spec":{...}}          fake:chaos(spec) (no spec: chaos off)
--   {"id":9,"op":"chaos_counts"}                -> {name: requests that got that fault}
local here = arg and arg[0] and arg[0]:match("^(.*)/spec/support/[^/]+$")
if here then -- find spec.support.* from any working directory
  package.path = here .. "/?.lua;" .. package.path
end

local fake_e2b = require("spec.support.fake_e2b")
local json = require("host.json")
local stdio = require("host.core.stdio")
local sys = require("host.core.sys")
local task = require("host.task")

local opts = { api_key = "e2b_test_key" }
local i = 1
while arg and arg[i] do
  local a, v = arg[i], arg[i + 1]
  if a == "--api-key" and v then
    opts.api_key = v
  elseif a == "--domain" and v then
    opts.domain = v
  else
    io.stderr:write("usage: provider-host spec/support/fake_e2b_main.lua [--api-key KEY] "
      .. "[--domain D]\n")
    os.exit(2)
  end
  i = i + 2
end

local function line(v)
  stdio.write(assert(json.encode(v)) .. "\n")
end

local function control(fake, req)
  local op = req.op
  if op == "fail" then
    local spec = req.spec or {}
    if spec.times == -1 then
      spec.times = math.huge
    end
    fake:fail(spec)
    return true
  elseif op == "count" then
    return fake:count(req.pattern or ".", req.method)
  elseif op == "requests" then
    local out = json.array()
    for _, r in ipairs(fake.requests) do
      out[#out + 1] = { method = r.method, path = r.path, status = r.status, kind = r.kind,
        sandbox_id = r.sandbox_id, fault = r.fault }
    end
    return out
  elseif op == "sandbox" then
    local sb = fake:sandbox(req.sandboxId or "")
    if not sb then
      return json.null
    end
    local pids = json.array()
    for pid in pairs(sb.processes) do
      pids[#pids + 1] = pid
    end
    table.sort(pids)
    return { state = sb.state, timeoutMs = sb.timeout_ms, metadata = sb.metadata,
      expiresIn = sb.expires_at - task.now(), processes = pids, home = sb.home, root = sb.root }
  elseif op == "expire" then
    fake:expire(req.sandboxId or "")
    return true
  elseif op == "running" then
    return json.array(fake:running())
  elseif op == "chaos" then
    fake:chaos(req.spec)
    return true
  elseif op == "chaos_counts" then
    return fake.chaos_counts or {}
  elseif op == "commands" then
    local out = json.array()
    for _, c in ipairs(fake.commands) do
      out[#out + 1] = { sandboxId = c.sandbox_id, pid = c.pid, cmd = c.cmd,
        args = json.array(c.args), cwd = c.cwd, user = c.user, stdin = c.stdin,
        timeoutMs = c.timeout_ms, exitCode = c.exit_code, signal = c.signal,
        deadlineExceeded = c.deadline_exceeded }
    end
    return out
  end
  error("unknown op: " .. tostring(op), 0)
end

task.run(function()
  local fake = fake_e2b.start(opts)
  sys.parent_death_signal("SIGTERM")
  line({ apiUrl = fake.api_url, sandboxUrl = fake.sandbox_url, domain = fake.domain,
    apiKey = fake.api_key })
  local watchers = {}
  for _, sig in ipairs({ "SIGTERM", "SIGINT", "SIGHUP" }) do
    watchers[#watchers + 1] = task.spawn(function()
      if sys.wait_signal(sig) then
        stdio.close_input() -- the read below ends: shut down as on end of input
      end
    end)
  end
  while true do
    local text = stdio.read_line(1024 * 1024)
    if not text then
      break -- end of input, or a signal
    end
    local req = json.decode(text)
    if type(req) == "table" then
      local ok, result = pcall(control, fake, req)
      if ok then
        line({ id = req.id, ok = true, result = result })
      else
        line({ id = req.id, ok = false, error = tostring(result) })
      end
    end
  end
  for _, w in ipairs(watchers) do
    w:cancel()
  end
  fake:stop()
  stdio.drain(2)
end)
