-- bench/bridge_agent.lua: the "agent" of the bridge benchmark (bench/bridge_bench.lua): an HTTP
-- client (host.http, libcurl) calling GET PATH on the Paperclip API two ways, side by side:
-- "direct" (the fake API's own URL and key, given as arguments) and "bridged" (PAPERCLIP_API_URL
-- and PAPERCLIP_API_KEY from its environment: the relay in the sandbox and the per-run token).
-- It runs where an agent runs (inside the sandbox: started by an environmentExecute that
-- carries a bridge) and measures there, on the monotonic clock.
--
--   build/provider-host bench/bridge_agent.lua --direct-url=URL --direct-key=KEY [--path=P]
--        [--samples=N] [--warmup=N] [--requests=N] [--clients=N] [--idle=SECONDS] [--tag=T]
--
-- Phases, in order:
--   latency   N calls each of direct and bridged, alternating (direct first, then bridged
--             first), first on kept-alive connections (libcurl reuses them, as an agent's HTTP
--             client does), then with `Connection: close` on every call (a new TCP connection
--             per call). --warmup calls of each kind first, not counted.
--   rps       --requests calls by --clients concurrent clients (tasks sharing one counter),
--             kept alive: direct, then bridged, then the same with a new connection per call.
--   idle      prints "IDLE-START", sleeps --idle seconds without a call, prints "IDLE-END"
--             (the bench counts what the bridge did in between); the API's request count
--             before and after is read from its /__bench/stats (which it does not count).
-- Prints progress lines, then the result as one JSON line starting with "RESULT ".
-- Exit 0 when it ran (failed calls are counted in the result), 2 on bad arguments.
local http = require("host.http")
local json = require("host.json")
local task = require("host.task")

local function usage(problem)
  io.stderr:write("bridge_agent: " .. problem .. "\n")
  os.exit(2)
end

local o = { path = "/api/agents/me", samples = 500, warmup = 20, requests = 4000, clients = 16,
  idle = 5 }
for _, a in ipairs(arg or {}) do
  local k, v = a:match("^%-%-([%w-]+)=(.*)$")
  if k == "direct-url" then
    o.direct_url = v:gsub("/+$", "")
  elseif k == "direct-key" then
    o.direct_key = v
  elseif k == "path" then
    o.path = v
  elseif k == "tag" then -- ignored: names the bench run in the command line (its cleanup looks)
    o.tag = v
  elseif k == "samples" or k == "warmup" or k == "requests" or k == "clients" or k == "idle" then
    o[k] = tonumber(v) or usage("--" .. k .. " needs a number")
  else
    usage("unknown argument " .. a)
  end
end
o.bridged_url = os.getenv("PAPERCLIP_API_URL")
o.bridged_key = os.getenv("PAPERCLIP_API_KEY")
if not o.direct_url or not o.direct_key then
  usage("--direct-url and --direct-key are required")
end
if not o.bridged_url or not o.bridged_key then
  usage("PAPERCLIP_API_URL and PAPERCLIP_API_KEY must be set (run it with a bridge)")
end

local say = function(fmt, ...)
  io.stdout:write(fmt:format(...), "\n")
  io.stdout:flush()
end

local TARGETS = {
  direct = { url = o.direct_url, key = o.direct_key },
  bridged = { url = o.bridged_url, key = o.bridged_key },
}

local function new_series()
  return { samples = {}, failures = 0, reasons = {} }
end

local function fail(s, why)
  s.failures = s.failures + 1
  s.reasons[why] = (s.reasons[why] or 0) + 1
end

-- One call -> milliseconds, or nil and why.
local function call(target, close)
  local t = TARGETS[target]
  local headers = { Authorization = "Bearer " .. t.key, Accept = "application/json" }
  if close then
    headers.Connection = "close"
  end
  local t0 = task.now()
  local r, err, code = http.request({ url = t.url .. o.path, headers = headers, timeout = 30 })
  local ms = (task.now() - t0) * 1000
  if not r then
    return nil, ("%s: %s"):format(tostring(code), tostring(err):sub(1, 120))
  elseif r.status ~= 200 then
    return nil, "status " .. r.status
  end
  local body = json.decode(r.body)
  if type(body) ~= "table" or body.path ~= o.path then
    return nil, "unexpected body"
  end
  return ms
end

local function record(s, ms, why)
  if ms then
    s.samples[#s.samples + 1] = ms
  else
    fail(s, why)
  end
end

local function main()
  local result = { latency = {}, rps = {}, options = { path = o.path, samples = o.samples,
    warmup = o.warmup, requests = o.requests, clients = o.clients, idle = o.idle } }

  -- latency: alternating, so both share the machine's noise
  for _, mode in ipairs({ "keepalive", "newconn" }) do
    local close = mode == "newconn"
    local warm = new_series()
    for _ = 1, o.warmup do
      record(warm, call("direct", close))
      record(warm, call("bridged", close))
    end
    local d, b = new_series(), new_series()
    for i = 1, o.samples do
      if i % 2 == 1 then
        record(d, call("direct", close))
        record(b, call("bridged", close))
      else
        record(b, call("bridged", close))
        record(d, call("direct", close))
      end
    end
    result.latency[mode] = { direct = d, bridged = b, warmup_failures = warm.failures,
      warmup_reasons = warm.reasons }
    say("latency %s: %d + %d samples", mode, #d.samples, #b.samples)
  end

  -- requests per second: `clients` tasks share `requests` calls
  local function rps(target, close)
    local left, done, s = o.requests, 0, new_series()
    local fns = {}
    local t0 = task.now()
    for i = 1, o.clients do
      fns[i] = function()
        while left > 0 do
          left = left - 1
          record(s, call(target, close))
          done = done + 1
        end
        return true
      end
    end
    task.all(fns)
    local wall = task.now() - t0
    return { requests = done, failures = s.failures, reasons = s.reasons, wall_ms = wall * 1000,
      rps = done / wall, clients = o.clients }
  end

  for _, mode in ipairs({ "keepalive", "newconn" }) do
    local close = mode == "newconn"
    result.rps[mode] = { direct = rps("direct", close), bridged = rps("bridged", close) }
    say("rps %s: direct %.0f/s, bridged %.0f/s", mode, result.rps[mode].direct.rps,
      result.rps[mode].bridged.rps)
  end

  -- idle: no call for o.idle seconds; the API's count before and after
  local function api_requests()
    local r = http.request({ url = o.direct_url .. "/__bench/stats", timeout = 10 })
    local s = r and r.status == 200 and json.decode(r.body)
    return type(s) == "table" and s.requests or nil
  end
  if o.idle > 0 then
    local before = api_requests()
    say("IDLE-START")
    task.sleep(o.idle)
    say("IDLE-END")
    local after = api_requests()
    result.idle = { seconds = o.idle, api_requests = before and after and (after - before) }
  end

  for _, mode in pairs(result.latency) do
    for _, k in ipairs({ "direct", "bridged" }) do
      mode[k].samples = json.array(mode[k].samples)
    end
  end
  io.stdout:write("RESULT ", assert(json.encode(result)), "\n")
  io.stdout:flush()
  return 0
end

os.exit(task.run(main) or 1)
