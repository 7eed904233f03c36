-- spec/support/valgrind_session.lua: drives one worker through a few hundred mixed JSON-RPC
-- calls, some in flight together, and checks that every request got its reply and that the
-- worker exited 0 after shutdown. Run by .ci/valgrind, which puts valgrind in front:
--   build/provider-host spec/support/valgrind_session.lua -- CMD... (CMD ends with the binary;
--   "worker --provider local" is appended)
-- The exit status is valgrind's --error-exitcode when it found an error or a definite leak, so
-- a clean exit 0 here means both: the session worked and valgrind saw nothing.
local json = require("host.json")
local task = require("host.task")
local util = require("host.util")
local wp = require("spec.support.worker_process")

local ROUNDS = tonumber(os.getenv("PH_VALGRIND_ROUNDS") or "") or 25
-- valgrind is 20-50x slower than a native run: generous, but bounded, so a hang fails.
local REPLY_TIMEOUT = 120
local SESSION_DEADLINE = 1500

local cmd = {}
do
  local seen_dashes = false
  for _, a in ipairs(arg) do
    if seen_dashes then
      cmd[#cmd + 1] = a
    elseif a == "--" then
      seen_dashes = true
    end
  end
end
if #cmd == 0 then
  io.stderr:write("usage: provider-host spec/support/valgrind_session.lua -- CMD... BINARY\n")
  os.exit(2)
end

local function fail(fmt, ...)
  error(("valgrind session: " .. fmt):format(...), 0)
end

local params = wp.params

local counts = { requests = 0, replies = 0, malformed = 0 }

local function session(tmp)
  local args = {}
  for i = 2, #cmd do
    args[#args + 1] = cmd[i]
  end
  for _, a in ipairs({ "worker", "--provider", "local" }) do
    args[#args + 1] = a
  end
  -- A scrubbed environment: only what the worker needs (PATH for the commands it runs, TMPDIR
  -- for the local provider's leases, kept private to this session).
  local w = wp.start(args, {
    binary = cmd[1],
    env = { PATH = os.getenv("PATH"), TMPDIR = tmp, PROVIDER_HOST_LOG = "error" },
    timeout = SESSION_DEADLINE,
  })

  local next_id = 0
  -- pending[id] = check(reply) for every request sent and not yet answered; null_pending counts
  -- the malformed lines, each answered with id null.
  local pending, null_pending = {}, 0

  local function send(method, p, check)
    next_id = next_id + 1
    counts.requests = counts.requests + 1
    pending[next_id] = check or function() end
    w:request(next_id, method, p)
    return next_id
  end
  local function send_raw(line)
    counts.requests = counts.requests + 1
    counts.malformed = counts.malformed + 1
    null_pending = null_pending + 1
    w:send(line)
  end

  -- Collects replies until nothing is pending, running each one's check.
  local function drain()
    while next(pending) or null_pending > 0 do
      local line, err = w:recv_line(REPLY_TIMEOUT)
      if not line then
        local left = {}
        for id in pairs(pending) do
          left[#left + 1] = tostring(id)
        end
        fail("no reply (%s) to ids {%s}, %d malformed lines unanswered; stderr:\n%s", err,
          table.concat(left, ","), null_pending, w:stderr_text())
      end
      if not util.utf8_valid(line) then
        fail("a line that is not UTF-8: %q", line)
      end
      local msg = json.decode(line)
      if type(msg) ~= "table" then
        fail("not a JSON object: %s", line)
      end
      if msg.method == nil then -- a reply (notifications such as log are skipped)
        counts.replies = counts.replies + 1
        if msg.id == json.null then
          if null_pending == 0 or not msg.error then
            fail("unexpected reply with id null: %s", line)
          end
          null_pending = null_pending - 1
        else
          local check = pending[msg.id]
          if not check then
            fail("a reply to no pending request: %s", line)
          end
          pending[msg.id] = nil
          check(msg, line)
        end
      end
    end
  end

  local function ok(what)
    return function(r, line)
      if r.error then
        fail("%s: error reply %s", what, line)
      end
    end
  end
  local function err_code(code)
    return function(r, line)
      if not (r.error and r.error.code == code) then
        fail("expected error %d, got %s", code, line)
      end
    end
  end
  local function exec_result(what, pred)
    return function(r, line)
      if not r.result then
        fail("%s: %s", what, line)
      end
      if not pred(r.result) then
        fail("%s: unexpected result %s", what, line:sub(1, 400))
      end
    end
  end

  send("initialize", {
    manifest = {},
    config = {},
    instanceInfo = { instanceId = "default", hostVersion = "0.0.0" },
    apiVersion = 1,
    databaseNamespace = json.null,
  }, ok("initialize"))
  drain()

  for round = 1, ROUNDS do
    -- Two leases per round, acquired together.
    local leases = {}
    for i = 1, 2 do
      send("environmentAcquireLease", params({ runId = ("r%d-%d"):format(round, i) }),
        function(r, line)
          if not r.result then
            fail("acquire: %s", line)
          end
          leases[i] = { providerLeaseId = r.result.providerLeaseId, metadata = r.result.metadata }
        end)
    end
    drain()

    -- Then a mix, all in flight at once.
    send("health", {}, ok("health"))
    send("environmentValidateConfig", params(), ok("validateConfig"))
    send("environmentValidateConfig", params({ config = { timeoutMs = "soon" } }))
    send("environmentProbe", params(), ok("probe"))
    send("environmentProbe", params({ driverKey = "no-such-driver" }), err_code(-32602))
    send("noSuchMethod", {}, err_code(-32601))
    send_raw("{not json\n")
    send_raw('{"jsonrpc":"2.0","id":[1],"method":"health"}\n')
    for i, lease in ipairs(leases) do
      local word = ("w%d_%d"):format(round, i)
      send("environmentExecute", params({ lease = lease, command = "echo", args = { word } }),
        exec_result("echo", function(res)
          return res.exitCode == 0 and res.stdout == word .. "\n"
        end))
      send("environmentExecute", params({ lease = lease, command = "bash",
        args = { "-c", "echo out; echo err >&2; exit 3" } }),
        exec_result("exit 3", function(res)
          return res.exitCode == 3 and res.stdout == "out\n" and res.stderr == "err\n"
        end))
      send("environmentExecute", params({ lease = lease, command = "no-such-command-here" }))
    end
    -- Every fifth round: one execute that times out, one with big output.
    if round % 5 == 1 then
      send("environmentExecute", params({ lease = leases[1], command = "sleep", args = { "30" },
        timeoutMs = 500 }), exec_result("timeout", function(res)
          return res.timedOut == true
        end))
      send("environmentExecute", params({ lease = leases[2], command = "bash",
        args = { "-c", "head -c 3000000 /dev/zero | tr '\\0' x" } }),
        exec_result("big output", function(res)
          return res.exitCode == 0 and #res.stdout > 100000
        end))
    end
    drain()

    for _, lease in ipairs(leases) do
      send("environmentReleaseLease", params({ providerLeaseId = lease.providerLeaseId,
        lease = lease }), ok("release"))
    end
    drain()
  end

  local id = send("shutdown", {}, function(r, line)
    if r.result ~= json.null then
      fail("shutdown: %s", line)
    end
  end)
  drain()
  local res = w:wait(REPLY_TIMEOUT)
  if not res or res.exit_code ~= 0 then
    fail("the worker (after shutdown, id %d) ended with %s (exit %s, signal %s); stderr:\n%s",
      id, res and "status" or "no exit in time", res and tostring(res.exit_code),
      res and tostring(res.signal), w:stderr_text())
  end
end

local ok, err = pcall(function()
  local tmp <close> = assert(util.tempdir("ph-valgrind-session-"))
  task.run(function()
    session(tmp.path)
  end)
end)
if not ok then
  io.stderr:write(tostring(err), "\n")
  os.exit(1)
end
print(("valgrind session: %d requests (%d malformed lines), %d replies, worker exited 0")
  :format(counts.requests, counts.malformed, counts.replies))
