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

--- run(dirs) -> exit code
function M.run(dirs)
  local p, problems = providers.load("local", dirs)
  if not p then
    io.stderr:write(
      "demo: cannot load the local provider:\n  ",
      table.concat(problems, "\n  "),
      "\n"
    )
    return 3
  end
  local streamed = {}
  local session = client.session({ p }, {
    on_log = function(stream, chunk)
      streamed[#streamed + 1] = stream .. ":" .. chunk
    end,
  })
  local failures = 0
  local function step(title, method, params, check)
    say("\n-> %s  (%s)", title, method)
    local t0 = task.now()
    local res, err = session:call(method, params)
    local ms = (task.now() - t0) * 1000
    if res == nil then
      say("   error %s: %s", tostring(err.code), tostring(err.message))
      failures = failures + 1
      return nil
    end
    local ok, why = true, nil
    if check then
      ok, why = check(res)
    end
    say("   %s in %.1f ms%s", ok and "ok" or "UNEXPECTED", ms, why and (": " .. why) or "")
    if not ok then
      failures = failures + 1
    end
    return res
  end

  say("provider-host demo: one lease on the built-in `local` provider, driven through the")
  say("same JSON-RPC dispatch Paperclip uses (provider-host worker --provider local).")

  local config = { timeoutMs = 20000, reuseLease = false }
  step(
    "validate the environment config",
    "environmentValidateConfig",
    { config = config },
    function(r)
      return r.ok == true, "normalizedConfig = " .. json.encode(r.normalizedConfig)
    end
  )
  local lease = step(
    "acquire a lease: a private 0700 workspace",
    "environmentAcquireLease",
    { config = config, runId = "demo-run" },
    function(r)
      return type(r.providerLeaseId) == "string", "workspace " .. tostring(r.metadata.remoteCwd)
    end
  )
  if not lease then
    return 1
  end
  local lp = { providerLeaseId = lease.providerLeaseId, metadata = lease.metadata }
  step("realize the workspace", "environmentRealizeWorkspace", {
    config = config,
    lease = lp,
    workspace = {},
  }, function(r)
    return r.cwd == lease.metadata.remoteCwd, "cwd " .. tostring(r.cwd)
  end)

  local function exec(title, params, check)
    params.config, params.lease = config, lp
    streamed = {}
    local r = step(title, "environmentExecute", params, check)
    if r then
      say(
        "   exitCode=%s timedOut=%s, %d live chunk(s) streamed as execute.log",
        tostring(r.exitCode == json.null and "null" or r.exitCode),
        tostring(r.timedOut),
        #streamed
      )
      if r.stdout ~= "" then
        say("   stdout:")
        show(r.stdout)
      end
      if r.stderr ~= "" then
        say("   stderr:")
        show(r.stderr)
      end
    end
    return r
  end

  exec("run a command with the caller's env", {
    command = "bash",
    args = { "-c", 'for i in 1 2 3; do echo "step $i in $PWD as $GREETING"; sleep 0.1; done' },
    env = { GREETING = "hello" },
  }, function(r)
    return r.exitCode == 0 and r.stdout:find("step 3", 1, true) ~= nil
  end)
  exec("deliver stdin in full", {
    command = "bash",
    args = { "-c", "wc -c" },
    stdin = ("x"):rep(100000),
  }, function(r)
    return r.stdout:match("^%s*100000") ~= nil, "the command read every byte"
  end)
  exec("a non-zero exit is a result, not an error", {
    command = "sh",
    args = { "-c", "echo 'about to fail' >&2; exit 3" },
  }, function(r)
    return r.exitCode == 3
  end)
  exec("a timeout keeps the partial output", {
    command = "bash",
    args = { "-c", "echo started; sleep 5; echo never" },
    timeoutMs = 300,
  }, function(r)
    return r.timedOut == true and r.exitCode == json.null and r.stdout == "started\n"
  end)

  step("release the lease: the workspace is deleted", "environmentReleaseLease", {
    config = config,
    providerLeaseId = lease.providerLeaseId,
    leaseMetadata = lease.metadata,
  }, function(r)
    local gone = io.open(lease.providerLeaseId .. "/workspace", "r") == nil
    return r == json.null and gone, gone and "workspace removed" or "workspace still there"
  end)

  if failures > 0 then
    say("\ndemo finished with %d unexpected result(s)", failures)
    return 1
  end
  say("\ndemo finished: every step behaved as Paperclip expects.")
  return 0
end

return M
