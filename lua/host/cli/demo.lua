--- host.cli.demo: `provider-host demo`, a whole lease lifecycle on the local provider, explained.
local client = require("host.client")
local json = require("host.json")
local providers = require("host.providers")
local task = require("host.task")

local M = {}

local function say(fmt, ...)
  io.stdout:write(fmt:format(...), "\n")
  io.stdout:flush()
end

local function show(text)
  text = text:gsub("\n$", "")
  for line in (text .. "\n"):gmatch("(.-)\n") do
    io.stdout:write("      | ", line, "\n")
  end
end

-- One demo session: its client session, the live chunks of the current execute, failures.
local Demo = {}
Demo.__index = Demo

-- One call, printed with its time; check(res) -> ok, why says whether it behaved as expected.
function Demo:step(title, method, params, check)
  say("\n-> %s  (%s)", title, method)
  local t0 = task.now()
  local res, err = self.session:call(method, params)
  local ms = (task.now() - t0) * 1000
  if res == nil then
    say("   error %s: %s", tostring(err.code), tostring(err.message))
    self.failures = self.failures + 1
    return nil
  end
  local ok, why = true, nil
  if check then
    ok, why = check(res)
  end
  say("   %s in %.1f ms%s", ok and "ok" or "UNEXPECTED", ms, why and (": " .. why) or "")
  if not ok then
    self.failures = self.failures + 1
  end
  return res
end

-- An environmentExecute on the demo's lease, with its result and streamed chunks shown.
function Demo:exec(e)
  local params = e.params
  params.config, params.lease = self.config, self.lease
  self.streamed = {}
  local r = self:step(e.title, "environmentExecute", params, e.check)
  if r then
    say("   exitCode=%s timedOut=%s, %d live chunk(s) streamed as execute.log",
      tostring(r.exitCode == json.null and "null" or r.exitCode), tostring(r.timedOut),
      #self.streamed)
    for _, stream in ipairs({ "stdout", "stderr" }) do
      if r[stream] ~= "" then
        say("   %s:", stream)
        show(r[stream])
      end
    end
  end
end

-- The commands the demo runs, each with what Paperclip expects of its result.
local EXECS = {
  {
    title = "run a command with the caller's env",
    params = {
      command = "bash",
      args = { "-c", 'for i in 1 2 3; do echo "step $i in $PWD as $GREETING"; sleep 0.1; done' },
      env = { GREETING = "hello" },
    },
    check = function(r)
      return r.exitCode == 0 and r.stdout:find("step 3", 1, true) ~= nil
    end,
  },
  {
    title = "deliver stdin in full",
    params = { command = "bash", args = { "-c", "wc -c" }, stdin = ("x"):rep(100000) },
    check = function(r)
      return r.stdout:match("^%s*100000") ~= nil, "the command read every byte"
    end,
  },
  {
    title = "a non-zero exit is a result, not an error",
    params = { command = "sh", args = { "-c", "echo 'about to fail' >&2; exit 3" } },
    check = function(r)
      return r.exitCode == 3
    end,
  },
  {
    title = "a timeout keeps the partial output",
    params = { command = "bash", args = { "-c", "echo started; sleep 5; echo never" },
      timeoutMs = 300 },
    check = function(r)
      return r.timedOut == true and r.exitCode == json.null and r.stdout == "started\n"
    end,
  },
}

-- The agent in the sandbox: plain bash (/dev/tcp, no curl needed) calling the API at
-- $PAPERCLIP_API_URL with $PAPERCLIP_API_KEY, once on an allowed route, once on a forbidden one.
local AGENT = [[
call() {
  exec 3<>"/dev/tcp/127.0.0.1/${PAPERCLIP_API_URL##*:}" || return
  printf '%s %s HTTP/1.1\r\nHost: paperclip\r\nConnection: close\r\n' "$1" "$2" >&3
  printf 'Authorization: Bearer %s\r\n\r\n' "$PAPERCLIP_API_KEY" >&3
  tr -d '\r' <&3 | sed -n '1p;$p'
  echo
  exec 3<&-
}
echo "PAPERCLIP_API_URL=$PAPERCLIP_API_URL (the relay in the sandbox)"
call GET /api/agents/me
call DELETE /api/agents/me
]]

-- A stand-in for the Paperclip API on this machine: it answers only the real key.
local function fake_api(key)
  return require("host.http").serve({
    handler = function(req)
      if req.headers.authorization ~= "Bearer " .. key then
        return 401, { ["content-type"] = "application/json" }, '{"error":"Unauthorized"}'
      end
      return 200, { ["content-type"] = "application/json", ["set-cookie"] = "s=secret" },
        json.encode({ id = "agent-demo", name = "Demo agent", runId =
          req.headers["x-paperclip-run-id"] })
    end,
  })
end

-- The bridge step: a sandboxed command calls the fake API through the relay, with a per-run
-- key; the real key stays on the host.
function Demo:bridge()
  local key = require("host.util").hex(require("host.util").random(16))
  local api, err = fake_api(key)
  if not api then
    say("\n-> (bridge step skipped: cannot start the stand-in API: %s)", tostring(err))
    return
  end
  self:exec({
    title = "an agent calls the Paperclip API through the bridge (real key stays on the host)",
    params = { command = "bash", args = { "-c", AGENT },
      bridge = { apiUrl = api.url, apiKey = key, runId = "demo-run" } },
    check = function(r)
      local ok = r.exitCode == 0 and r.stdout:find("HTTP/1.1 200", 1, true)
        and r.stdout:find('"runId":"demo-run"', 1, true)
        and r.stdout:find("HTTP/1.1 403", 1, true) and not r.stdout:find(key, 1, true)
      return ok ~= nil and ok ~= false, "GET answered with the run id; DELETE refused by the "
        .. "bridge's route table"
    end,
  })
  api:close()
end

-- Validate, acquire and realize; returns the lease, or nil when it could not be had.
function Demo:open_lease()
  local config = self.config
  self:step("validate the environment config", "environmentValidateConfig", { config = config },
    function(r)
      return r.ok == true, "normalizedConfig = " .. json.encode(r.normalizedConfig)
    end)
  local lease = self:step("acquire a lease: a private 0700 workspace", "environmentAcquireLease",
    { config = config, runId = "demo-run" }, function(r)
      return type(r.providerLeaseId) == "string", "workspace " .. tostring(r.metadata.remoteCwd)
    end)
  if not lease then
    return nil
  end
  self.lease = { providerLeaseId = lease.providerLeaseId, metadata = lease.metadata }
  self:step("realize the workspace", "environmentRealizeWorkspace",
    { config = config, lease = self.lease, workspace = {} }, function(r)
      return r.cwd == lease.metadata.remoteCwd, "cwd " .. tostring(r.cwd)
    end)
  return lease
end

function Demo:release(lease)
  self:step("release the lease: the workspace is deleted", "environmentReleaseLease", {
    config = self.config,
    providerLeaseId = lease.providerLeaseId,
    leaseMetadata = lease.metadata,
  }, function(r)
    local gone = io.open(lease.providerLeaseId .. "/workspace", "r") == nil
    return r == json.null and gone, gone and "workspace removed" or "workspace still there"
  end)
end

--- run(dirs) -> exit code
function M.run(dirs)
  local p, problems = providers.load("local", dirs)
  if not p then
    io.stderr:write("demo: cannot load the local provider:\n  ", table.concat(problems, "\n  "),
      "\n")
    return 3
  end
  local demo = setmetatable({ failures = 0, streamed = {},
    config = { timeoutMs = 20000, reuseLease = false } }, Demo)
  demo.session = client.session({ p }, {
    on_log = function(stream, chunk)
      demo.streamed[#demo.streamed + 1] = stream .. ":" .. chunk
    end,
  })
  say("provider-host demo: one lease on the built-in `local` provider, driven through the")
  say("same JSON-RPC dispatch Paperclip uses (provider-host worker --provider local).")
  local lease = demo:open_lease()
  if not lease then
    return 1
  end
  for _, e in ipairs(EXECS) do
    demo:exec(e)
  end
  demo:bridge()
  demo:release(lease)
  if demo.failures > 0 then
    say("\ndemo finished with %d unexpected result(s)", demo.failures)
    return 1
  end
  say("\ndemo finished: every step behaved as Paperclip expects.")
  return 0
end

return M
