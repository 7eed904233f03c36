-- spec/worker/load_faults_spec.lua: load with faults (issue 11, item 9), small. One worker per
-- provider (`local`, `e2b` on the fake E2B, `exe-dev` on the fake exe.dev, whose VMs are real
-- sshd processes) under a hard RLIMIT_NOFILE of 128 gets 150 requests, sent at once, while the
-- fakes answer 15 % of theirs with 500, 503 or 429, stall (within or beyond the client's
-- deadline) or drop the connection. Every invariant of bench/load_faults.lua is asserted, each
-- counted: every request answered, within its deadline; every worker up (health, then exit 0
-- on shutdown); no sandbox, VM, process, file descriptor or temp dir left. The harness is
-- spec/support/load_faults.lua; everything lives in private temp dirs on loopback ports.
local helpers = require("spec.helpers")
local lf = require("spec.support.load_faults")
local sshd = require("spec.support.sshd")
local task = require("host.task")

describe("worker under load with faults #ssh", function()
  it("answers 150 requests within their deadlines and leaves nothing behind", function()
    local report = task.run(function()
      if not sshd.available() then
        error("this spec needs a real sshd (" .. sshd.sshd .. " and ssh-keygen): install "
          .. "openssh-server, as .ci/run does", 0)
      end
      return lf.run({ requests = 150, nofile = 128, seed = 7, rate = 0.15,
        root = helpers.root, budget = 100 })
    end)
    assert.is_nil(report.error, report.error)
    assert.equal(150, report.summary.sent)
    local failed = {}
    for _, inv in ipairs(report.invariants) do
      if not inv.ok then
        failed[#failed + 1] = inv.name .. ": " .. inv.detail
      end
    end
    assert.same({}, failed, "\n" .. lf.text(report))
  end)
end)
