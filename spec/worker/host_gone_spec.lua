-- spec/worker/host_gone_spec.lua: a host that is gone ends the worker (issue 11, item 3). When
-- the reader of the worker's stdout goes away (its pipe closed: a write fails with EPIPE, or
-- nothing is written at all), the worker cancels what runs (the commands are stopped), leaves
-- no lease nobody knows of, writes one line on stderr and exits 1, within a bounded time.
local cmdline = require("spec.support.cmdline")
local fs = require("host.fs")
local helpers = require("spec.helpers")
local json = require("host.json")
local task = require("host.task")
local wp = require("spec.support.worker_process")

-- A worker whose stdout goes through `reader` (a shell command that passes some lines on and
-- exits, closing the pipe); its exit code comes on stderr as "exit=N".
local function with_piped_worker(reader, fn)
  return wp.with(fn, { "-c", '( "$@"; echo "exit=$?" >&2 ) | ' .. reader, "sh",
    helpers.binary(), "worker", "--provider", "local" }, { binary = "sh",
    env = { PROVIDER_HOST_LOG = "error", PROVIDER_HOST_STDIN_GRACE = "30" } })
end

-- Passes three lines on, one by one as they come (head would hold them back), then exits.
local PASS_3 = 'for i in 1 2 3; do IFS= read -r l; printf "%s\\n" "$l"; done'

local params = wp.params

local function leases(tmp)
  local n = 0
  for _, name in ipairs(fs.list(tmp.path) or {}) do
    if name:find("^paperclip%-local%-") then
      n = n + 1
    end
  end
  return n
end

-- The worker's exit code, read from the "exit=N" line its shell writes on stderr.
local function exit_code(w, seconds)
  helpers.eventually(function()
    return w:stderr_text():find("exit=%d+")
  end, "the worker exited", seconds)
  return tonumber(w:stderr_text():match("exit=(%d+)"))
end

describe("worker whose host is gone", function()
  it("cancels its running commands and exits 1 when its stdout reader closes", function()
    with_piped_worker(PASS_3, function(w, tmp)
      assert(w:initialize())
      w:request(1, "environmentAcquireLease", params({ runId = "r1" }))
      local r = assert(w:reply_to(1))
      local lease = { providerLeaseId = r.result.providerLeaseId, metadata = r.result.metadata }
      local marker = cmdline.marker()
      for id = 2, 6 do
        w:request(id, "environmentExecute", params({ lease = lease, command = "sh",
          args = { "-c", "sleep 60; :", marker } })) -- sh stays, its $0 the marker
      end
      helpers.eventually(function()
        return #cmdline.holding(marker) == 5
      end, "the five commands started")
      local pids = {}
      for _, p in ipairs(cmdline.holding(marker)) do
        pids[#pids + 1] = p.pid
      end
      -- the third line: the reader passes it on and exits; the worker writes nothing after
      -- it, so it learns that nobody reads from its stdout alone
      w:request(7, "health", {})
      assert.equal("ok", assert(w:reply_to(7)).result.status)
      local closed = task.now()
      local code = exit_code(w, 15)
      assert.equal(1, code)
      assert.is_true(task.now() - closed < 10, "the worker took too long to exit")
      for _, pid in ipairs(pids) do
        helpers.eventually(function()
          return not helpers.alive(pid)
        end, "command " .. pid .. " was stopped", 5)
      end
      assert.same({}, cmdline.holding(marker))
      local errs = {}
      for line in w:stderr_text():gmatch("[^\n]+") do
        if not line:find("^exit=") then
          errs[#errs + 1] = line
        end
      end
      assert.equal(1, #errs, w:stderr_text())
      assert.matches("the host is gone", errs[1])
      assert.equal(1, leases(tmp)) -- the one the host got; nothing new
      assert.is_nil(assert(w:wait(5)).signal)
    end)
  end)

  it("stops at the first failed write (EPIPE) and leaves no lease behind", function()
    with_piped_worker("head -c 0", function(w, tmp)
      -- head is gone before the first line: every reply fails to write
      task.sleep(0.3)
      -- all in one write: the worker has every line at hand when its first reply fails
      local lines = { assert(json.encode({ jsonrpc = "2.0", id = 0, method = "initialize",
        params = {} })) }
      for id = 1, 50 do
        lines[#lines + 1] = assert(json.encode({ jsonrpc = "2.0", id = id,
          method = "environmentAcquireLease", params = params({ runId = "r" .. id }) }))
      end
      w.process:write(table.concat(lines, "\n") .. "\n")
      local code = exit_code(w, 30)
      assert.equal(1, code)
      assert.matches("the host is gone", w:stderr_text())
      assert.equal(0, leases(tmp))
      assert.equal(0, #w.lines)
    end)
  end)
end)
