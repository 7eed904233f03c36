-- spec/providers/e2b/roundtrip_spec.lua: requests per execute on the fake E2B (issue #3 item
-- 5): one on a warm lease without stdin, two with stdin, one connect more after a worker
-- restart; the lifetime refresh rate-limited and concurrent; and the real worker binary
-- configured by the SDK's environment variables.
local api = require("providers.e2b.api")
local harness = require("spec.support.e2b_harness")
local helpers = require("spec.helpers")
local json = require("host.json")
local task = require("host.task")
local worker_process = require("spec.support.worker_process")

local KEY = harness.KEY
local session, config, acquire, destroy = harness.session, harness.config, harness.acquire,
  harness.destroy

-- A fresh fake per spec (h.fake); no sandbox may be left running.
local h = harness.new()
local run = h.run
after_each(h.assert_none_running)

-- requests(fn) -> how many HTTP requests the fake saw while fn ran, fn's results
local function requests(fn)
  local before = #h.fake.requests
  local res = table.pack(fn())
  return #h.fake.requests - before, table.unpack(res, 1, res.n)
end

-- exec(s, lp, params, cfg) -> the execute's result; an error fails the spec.
local function exec(s, lp, params, cfg)
  return assert(harness.exec(s, lp, params, cfg))
end

describe("providers.e2b round trips", function()
  it("warm lease: 1 request per execute without stdin, 2 with stdin", function()
    run(function()
      local s = session()
      local _, lp = acquire(s)
      for i = 1, 5 do
        local n, r = requests(function()
          return exec(s, lp, { args = { "-c", "echo " .. i }, executionId = "rt-" .. i })
        end)
        assert.equal(i .. "\n", r.stdout)
        assert.equal(1, n, "execute without stdin")
      end
      for i = 1, 5 do
        local n, r = requests(function()
          return exec(s, lp, { args = { "-c", "cat" }, stdin = "in" .. i })
        end)
        assert.equal("in" .. i, r.stdout)
        assert.equal(2, n, "execute with stdin")
      end
      -- failures are results too: still one request
      local n, r = requests(function()
        return exec(s, lp, { args = { "-c", "exit 3" } })
      end)
      assert.equal(3, r.exitCode)
      assert.equal(1, n)
      destroy(s, lp.providerLeaseId)
    end)
  end)

  it("after a worker restart: one connect on the first execute, then warm again", function()
    run(function()
      local s = session()
      local _, lp = acquire(s)
      api.forget_all() -- what a restarted worker knows: nothing
      local restarted = session()
      local n = requests(function()
        return exec(restarted, lp, { args = { "-c", "true" } })
      end)
      assert.equal(2, n)
      assert.equal(1, h.fake:count("^/v2/sandboxes/[^/]+/connect$"))
      n = requests(function()
        return exec(restarted, lp, { args = { "-c", "true" } })
      end)
      assert.equal(1, n)
      api.forget_all()
      n = requests(function()
        return exec(restarted, lp, { args = { "-c", "cat" }, stdin = "x" })
      end)
      assert.equal(3, n)
      destroy(s, lp.providerLeaseId)
    end)
  end)

  it("refreshes the lifetime at most once per fraction of timeoutMs, concurrently", function()
    run(function()
      local s = session()
      local cfg = config({ timeoutMs = 4000 }) -- refresh_fraction 0.1: at most every 0.4 s
      local _, lp = acquire(s, cfg)
      local n = requests(function()
        exec(s, lp, { args = { "-c", "true" } }, cfg)
        return exec(s, lp, { args = { "-c", "true" } }, cfg)
      end)
      assert.equal(2, n, "no refresh right after the create")
      task.sleep(0.45)
      -- due now; a refresh the fake keeps unanswered until the command's result is in does
      -- not hold the command back: it runs concurrently
      local result_in = false
      h.fake:fail({ path = "/timeout$", hold = function()
        return result_in
      end })
      local r, err = task.with_timeout(20, harness.exec, s, lp, { args = { "-c", "true" } }, cfg)
      assert(r, "the command waited for the lifetime refresh: " .. tostring(err))
      result_in = true
      harness.eventually(function()
        return h.fake:count("/timeout$") == 1
      end, "the lifetime refresh")
      -- during a long command the lifetime keeps being refreshed (every max(1 s, 0.4 s))
      exec(s, lp, { args = { "-c", "sleep 2.3" } }, cfg)
      assert.is_true(h.fake:count("/timeout$") >= 3, h.fake:count("/timeout$"))
      assert.equal(4000, h.fake.sandboxes[lp.providerLeaseId].timeout_ms)
      destroy(s, lp.providerLeaseId)
    end)
  end)

  it("the worker binary, configured by the SDK's E2B_* environment variables", function()
    run(function()
      local w = worker_process.start({ "worker", "--provider", "e2b" }, {
        env = {
          PATH = os.getenv("PATH"),
          HOME = os.getenv("HOME"),
          E2B_API_URL = h.fake.api_url,
          E2B_SANDBOX_URL = h.fake.sandbox_url,
          E2B_DOMAIN = h.fake.domain,
          E2B_API_KEY = KEY,
        },
      })
      local init = assert(w:initialize())
      assert.is_true(init.result.ok)
      local base = { driverKey = "e2b", companyId = "c", environmentId = "e", config = {} }
      local function call(id, method, extra)
        w:request(id, method, helpers.merged(base, extra),
          { paperclipInvocation = { id = "inv-" .. id } })
        return assert(w:reply_to(id, 20))
      end
      local lease = call(1, "environmentAcquireLease", { runId = "r" }).result
      assert.is_string(lease.providerLeaseId)
      local lp = { providerLeaseId = lease.providerLeaseId, metadata = lease.metadata }
      local before = #h.fake.requests
      local r = call(2, "environmentExecute", {
        lease = lp,
        command = "sh",
        args = { "-c", "echo from-worker" },
        executionId = "w-1",
      }).result
      assert.equal("from-worker\n", r.stdout)
      assert.equal(1, #h.fake.requests - before)
      local streamed = {}
      for _, m in ipairs(w.other or {}) do
        if m.method == "execute.log" then
          streamed[#streamed + 1] = m.params.chunk
        end
      end
      assert.equal("from-worker\n", table.concat(streamed))
      assert.equal(json.null, call(3, "environmentDestroyLease", {
        providerLeaseId = lease.providerLeaseId,
      }).result)
      assert.same({}, h.fake:running())
      local token = h.fake.sandboxes[lease.providerLeaseId].envd_access_token
      local out = table.concat(w.raw) .. w:stderr_text()
      assert.is_nil(out:find(KEY, 1, true))
      assert.is_nil(out:find(token, 1, true))
      w:close_stdin()
      assert.equal(0, w:wait(10).exit_code)
    end)
  end)
end)
