-- bench/bridge_api.lua: the fake Paperclip API of the bridge benchmark (bench/bridge_bench.lua),
-- a process of its own so that the bridge's event loop and the API's do not share a thread.
-- It answers every request that carries `Authorization: Bearer KEY` with 200 and a small JSON
-- echo (method, path, query, runId, body: what spec/support/fake_paperclip.lua answers, which
-- is what spec/queue_bridge/drive_bridge.mjs checks), anything else with 401.
-- GET /__bench/stats (no key; not counted) gives { requests, accepted, open }: requests
-- answered and TCP connections accepted since the start.
--
--   build/provider-host bench/bridge_api.lua KEY
--
-- Prints "listening <url>" once it listens, then runs until SIGTERM, SIGINT or SIGHUP, or until
-- its parent dies (delivered as SIGTERM).
local http = require("host.http")
local json = require("host.json")
local sys = require("host.core.sys")
local task = require("host.task")

local key = arg and arg[1]
if not key or key == "" then
  io.stderr:write("usage: provider-host bench/bridge_api.lua KEY\n")
  os.exit(2)
end

local code = task.run(function()
  sys.parent_death_signal("SIGTERM")
  local requests, server = 0, nil
  server = assert(http.serve({
    handler = function(req)
      if req.path == "/__bench/stats" then
        local s = server:stats()
        return 200, { ["content-type"] = "application/json" },
          json.encode({ requests = requests, accepted = s.accepted, open = s.open })
      end
      requests = requests + 1
      if req.headers.authorization ~= "Bearer " .. key then
        return 401, { ["content-type"] = "application/json" }, '{"error":"Unauthorized"}'
      end
      return 200, { ["content-type"] = "application/json", etag = '"v1"' }, json.encode({
        method = req.method, path = req.path, query = req.query or json.null,
        runId = req.headers["x-paperclip-run-id"] or json.null, body = req.body })
    end,
  }))
  io.stdout:write("listening ", server.url, "\n")
  io.stdout:flush()
  local waiters = {}
  local stop = task.signal()
  for _, sig in ipairs({ "SIGTERM", "SIGINT", "SIGHUP" }) do
    waiters[#waiters + 1] = task.spawn(function()
      if sys.wait_signal(sig) then
        stop:notify()
      end
    end)
  end
  stop:wait()
  for _, w in ipairs(waiters) do
    w:cancel()
  end
  server:close()
  return 0
end)
os.exit(code or 0)
