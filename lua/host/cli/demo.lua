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
  demo:release(lease)
  if demo.failures > 0 then
    say("\ndemo finished with %d unexpected result(s)", demo.failures)
    return 1
  end
  say("\ndemo finished: every step behaved as Paperclip expects.")
  return 0
end

return M
