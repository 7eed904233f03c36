-- spec/worker/no_orphans_spec.lua: no process outlives the worker (issue 11, item 1). Whatever
-- way the worker ends (a shutdown request, stdin closed, SIGTERM/SIGINT/SIGHUP, SIGKILL, a
-- crash), every command it started is gone afterwards, also commands that ignore SIGTERM and
-- processes a finished command left in the background; the executes still running when a
-- shutdown or signal came get their replies first.
local cmdline = require("spec.support.cmdline")
local helpers = require("spec.helpers")
local wp = require("spec.support.worker_process")

local N = 12 -- commands running at the end

local params = wp.params

-- A worker with a lease running N commands that ignore SIGTERM (and their sleeps with them),
-- each a shell whose $0 is the marker; fn(w, marker, first_id) ends the worker its way.
local function with_stubborn_commands(fn)
  return wp.with(function(w)
    local marker = cmdline.marker()
    helpers.with_cleanup(function()
      assert(w:initialize())
      w:request(1, "environmentAcquireLease", params({ runId = "r1" }))
      local r = assert(w:reply_to(1))
      local lease = { providerLeaseId = r.result.providerLeaseId, metadata = r.result.metadata }
      for id = 2, N + 1 do
        w:request(id, "environmentExecute", params({ lease = lease, command = "sh",
          args = { "-c", "trap '' TERM; while :; do sleep 1; done", marker } }))
      end
      helpers.eventually(function()
        return #cmdline.holding(marker) == N
      end, "the commands started", 20)
      -- A command shows before the worker told its watchdog of it (spawn returns, then the
      -- worker writes): a reply to a later request means every spawn before it was told.
      w:request(98, "health", {})
      assert(w:reply_to(98, 15), "the health check was answered")
      fn(w, marker, lease)
    end, function()
      w:stop()
      for _, p in ipairs(cmdline.holding(marker)) do -- only after a failure
        require("host.core.sys").kill(p.pid, "SIGKILL") -- its sleep ends within 1 s
      end
    end)
  end, nil, { env = { PROVIDER_HOST_LOG = "error", PROVIDER_HOST_STDIN_GRACE = "0" } })
end

-- Every execute (ids 2..N+1) got one reply, an error since it was canceled.
local function executes_answered(w)
  local got = {}
  helpers.eventually(function()
    while true do
      local msg = w:recv(0)
      if not msg then
        break
      end
      w.other = w.other or {}
      w.other[#w.other + 1] = msg
    end
    local rest = {}
    for _, msg in ipairs(w.other or {}) do
      if type(msg.id) == "number" and msg.id >= 2 and msg.id <= N + 1 then
        assert.is_nil(got[msg.id], "one reply to execute " .. msg.id)
        assert.is_table(msg.error, "execute " .. msg.id .. " was canceled")
        got[msg.id] = true
      else
        rest[#rest + 1] = msg
      end
    end
    w.other = rest
    local n = 0
    for _ in pairs(got) do
      n = n + 1
    end
    return n == N
  end, "every execute was answered", 15)
end

local function none_left(marker, seconds)
  helpers.eventually(function()
    return #cmdline.holding(marker) == 0
  end, "every command is gone", seconds or 10)
end

describe("worker ending", function()
  for _, sig in ipairs({ "SIGTERM", "SIGINT", "SIGHUP" }) do
    it("on " .. sig .. " answers the running executes and kills commands that ignore SIGTERM",
      function()
        with_stubborn_commands(function(w, marker)
          w:kill(sig)
          executes_answered(w)
          local res = assert(w:wait(10))
          assert.equal(0, res.exit_code)
          none_left(marker, 3)
        end)
      end)
  end

  it("on a shutdown request answers the running executes, then the shutdown, and kills them",
    function()
      with_stubborn_commands(function(w, marker)
        w:request(99, "shutdown", {})
        executes_answered(w)
        assert(w:reply_to(99, 15), "the shutdown was answered")
        assert.equal(0, assert(w:wait(10)).exit_code)
        none_left(marker, 3)
      end)
    end)

  it("on stdin closed answers the running executes and kills them", function()
    with_stubborn_commands(function(w, marker)
      w:close_stdin()
      executes_answered(w)
      assert.equal(0, assert(w:wait(10)).exit_code)
      none_left(marker, 3)
    end)
  end)

  -- (AddressSanitizer catches a SIGSEGV and exits 86 with a report: no crash to test there)
  for _, sig in ipairs(os.getenv("PH_SANITIZE") and { "SIGKILL" } or { "SIGKILL", "SIGSEGV" }) do
    it("killed by " .. sig .. " leaves no command running", function()
      with_stubborn_commands(function(w, marker)
        w:kill(sig)
        assert.equal(sig, assert(w:wait(10)).signal)
        none_left(marker, 15)
      end)
    end)
  end

  it("kills what a finished command left running in the background", function()
    with_stubborn_commands(function(w, marker, lease)
      -- the command returns at once; its child, stdio closed, runs on in its process group
      local bg = marker .. "-bg"
      w:request(50, "environmentExecute", params({ lease = lease, command = "sh",
        args = { "-c", "sh -c 'while :; do sleep 1; done' " .. bg
          .. " >/dev/null 2>&1 </dev/null & echo spawned", "outer" } }))
      assert.equal(0, assert(w:reply_to(50, 15)).result.exitCode)
      helpers.eventually(function()
        return #cmdline.holding(bg) == 1
      end, "the background shell runs on its own")
      w:request(99, "shutdown", {})
      executes_answered(w)
      assert(w:reply_to(99, 15))
      assert.equal(0, assert(w:wait(10)).exit_code)
      none_left(marker, 3)
    end)
  end)
end)
