-- spec/providers/e2b/faults_spec.lua: the E2B provider under faults (401, 429 with Retry-After,
-- 5xx, a connection dropped mid-stream, a truncated stream, a stalled server): clear errors,
-- within their deadlines, no secret in any message, log or lease metadata.
local api = require("providers.e2b.api")
local harness = require("spec.support.e2b_harness")
local http = require("host.http")
local json = require("host.json")
local timed = require("spec.helpers").timed

local KEY = harness.KEY
local session, config, acquire, destroy, exec, eventually = harness.session, harness.config,
  harness.acquire, harness.destroy, harness.exec, harness.eventually

-- A fresh fake per spec (h.fake; h.logs: every log line); no sandbox may be left running.
local h = harness.new({ logs = "all" })
local run = h.run
after_each(h.assert_none_running)


describe("providers.e2b faults", function()
  it("401: names the API key problem, never the key", function()
    run(function()
      local s = session()
      local secret = "e2b_definitely_wrong_key_0123"
      local r, err = s:call("environmentAcquireLease", {
        config = { apiKey = secret },
        runId = "r",
      })
      assert.is_nil(r)
      assert.matches("HTTP 401", err.message)
      assert.matches("API key", err.message)
      assert.is_nil(err.message:find(secret, 1, true))
      -- a lease-bound call with a wrong key cannot use another key's cached credentials
      local _, lp = acquire(s)
      r, err = exec(s, lp, { args = { "-c", "echo hi" } }, { apiKey = secret })
      assert.is_nil(r)
      assert.matches("HTTP 401", err.message)
      assert.equal(1, h.fake:count("/connect$"))
      destroy(s, lp.providerLeaseId)
    end)
  end)

  it("401 from envd: reconnects once for fresh credentials, then reports it", function()
    run(function()
      local s = session()
      local _, lp = acquire(s)
      h.fake:fail({ kind = "envd", path = "^/process%.Process/Start$", status = 401,
        body = { code = 401, message = "unauthorized access" } })
      local r = assert(exec(s, lp, { args = { "-c", "echo ok" } }))
      assert.equal("ok\n", r.stdout)
      assert.equal(1, h.fake:count("/connect$"))
      h.fake:fail({ kind = "envd", path = "^/process%.Process/Start$", status = 401, times = 2,
        body = { code = 401, message = "unauthorized access" } })
      local err
      r, err = exec(s, lp, { args = { "-c", "echo ok" } })
      assert.is_nil(r)
      assert.matches("refused its access token %(HTTP 401%)", err.message)
      destroy(s, lp.providerLeaseId)
    end)
  end)

  it("429: retries honouring Retry-After, a bounded number of times", function()
    run(function()
      local s = session()
      h.fake:fail({ method = "POST", path = "^/v2/sandboxes$", status = 429, times = 2,
        headers = { ["Retry-After"] = "1" }, body = { code = 429, message = "slow down" } })
      local took, lease = timed(function()
        return acquire(s)
      end)
      assert.equal(3, h.fake:count("^/v2/sandboxes$", "POST"))
      -- slept Retry-After (1 s) twice; the upper bound is only a loose "not far longer"
      assert.is_true(took >= 2 and took < 10, "slept Retry-After twice: " .. took)
      destroy(s, lease.providerLeaseId)
      -- always 429: 1 + 3 retries, then a clear error
      h.fake:fail({ method = "POST", path = "^/v2/sandboxes$", status = 429, times = math.huge,
        headers = { ["Retry-After"] = "1" }, body = { code = 429, message = "slow down" } })
      local r, err
      took, r, err = timed(function()
        return s:call("environmentAcquireLease", { config = config(), runId = "r" })
      end)
      assert.is_nil(r)
      assert.matches("rate limit exceeded .*HTTP 429, 4 attempts%): slow down", err.message)
      assert.equal(3 + 4, h.fake:count("^/v2/sandboxes$", "POST"))
      assert.is_true(took >= 3 and took < 15, took)
      -- the retries stop when the next sleep would pass the request budget: a first
      -- Retry-After of 1 s fits in 10 s, the next one (30 s) does not and is never slept
      h.fake.faults = {}
      h.fake:fail({ method = "POST", path = "^/v2/sandboxes$", status = 429,
        headers = { ["Retry-After"] = "1" }, body = { code = 429, message = "slow down" } })
      h.fake:fail({ method = "POST", path = "^/v2/sandboxes$", status = 429, times = math.huge,
        headers = { ["Retry-After"] = "30" }, body = { code = 429, message = "slow down" } })
      api.settings.request_timeout = 10
      local before = h.fake:count("^/v2/sandboxes$", "POST")
      took, r = timed(function()
        return s:call("environmentAcquireLease", { config = config(), runId = "r" })
      end)
      assert.is_nil(r)
      assert.equal(before + 2, h.fake:count("^/v2/sandboxes$", "POST"))
      assert.is_true(took >= 1 and took < 10, took) -- answered within the budget it kept to
      -- Retry-After as an HTTP date is not an integer: no retry, as the SDK
      h.fake.faults = {}
      h.fake:fail({ method = "POST", path = "^/v2/sandboxes$", status = 429,
        headers = { ["Retry-After"] = "Wed, 21 Oct 2015 07:28:00 GMT" } })
      before = h.fake:count("^/v2/sandboxes$", "POST")
      r = s:call("environmentAcquireLease", { config = config(), runId = "r" })
      assert.is_nil(r)
      assert.equal(before + 1, h.fake:count("^/v2/sandboxes$", "POST"))
    end)
  end)

  it("5xx: a clear error naming the operation and the status", function()
    run(function()
      local s = session()
      h.fake:fail({ method = "POST", path = "^/v2/sandboxes$", status = 503,
        body = { code = 503, message = "service unavailable" } })
      local r, err = s:call("environmentAcquireLease", { config = config(), runId = "r" })
      assert.is_nil(r)
      assert.equal("E2B API error while trying to create a sandbox from template base: "
        .. "HTTP 503: service unavailable", err.message)
      local _, lp = acquire(s)
      api.forget_all() -- a cold worker must connect first
      h.fake:fail({ path = "/connect$", status = 500, body = "<html>boom</html>" })
      r, err = exec(s, lp, { args = { "-c", "true" } })
      assert.is_nil(r)
      assert.equal(("E2B API error while trying to connect to sandbox %s: HTTP 500"):format(
        lp.providerLeaseId), err.message)
      h.fake:fail({ kind = "envd", path = "^/process%.Process/Start$", status = 500,
        body = { code = "internal", message = "envd broke" } })
      r, err = exec(s, lp, { args = { "-c", "true" } })
      assert.is_nil(r)
      assert.matches("HTTP 500: envd broke", err.message)
      destroy(s, lp.providerLeaseId)
    end)
  end)

  it("a create whose answer is lost, cut or a 5xx: the sandbox is adopted, never leaked",
    function()
      run(function()
        local s = session()
        for i, fault in ipairs({ { drop = true }, { cut = true }, { status = 502 },
          { status = 500 } }) do
          h.fake.faults = {}
          fault.kind, fault.method, fault.path = "api", "POST", "^/v2/sandboxes$"
          fault.after, fault.times = true, math.huge
          h.fake:fail(fault)
          local creates = h.fake:count("^/v2/sandboxes$", "POST")
          local lease = assert(s:call("environmentAcquireLease", { config = config(),
            runId = "r" .. i }))
          assert.equal(creates + 1, h.fake:count("^/v2/sandboxes$", "POST")) -- sent once
          assert.same({ lease.providerLeaseId }, h.fake:running())
          local r = assert(exec(s, { providerLeaseId = lease.providerLeaseId,
            metadata = lease.metadata }, { args = { "-c", "echo adopted" } }))
          assert.equal("adopted\n", r.stdout)
          -- a probe's sandbox goes whatever its create answered
          local p = assert(s:call("environmentProbe", { config = config() }))
          assert.is_true(p.ok, p.metadata.error)
          assert.same({ lease.providerLeaseId }, h.fake:running())
          destroy(s, lease.providerLeaseId)
          assert.same({}, h.fake:running())
        end
        -- a 503 before anything was made: nothing found, nothing made, a clear error
        h.fake.faults = {}
        h.fake:fail({ kind = "api", method = "POST", path = "^/v2/sandboxes$", status = 503,
          times = math.huge })
        local r, err = s:call("environmentAcquireLease", { config = config(), runId = "r9" })
        assert.is_nil(r)
        assert.matches("HTTP 503", err.message)
        assert.same({}, h.fake:running())
      end)
    end)

  it("a failed acquire's cleanup kills its sandbox through transient failures", function()
    run(function()
      local s = session()
      -- the workspace cannot be prepared: the acquire fails and owes the kill of its sandbox,
      -- whose first three answers are 503s (the cleanup's id reaches nobody else)
      h.fake:fail({ kind = "envd", path = "^/process%.Process/Start$", status = 500,
        body = { code = "internal", message = "envd broke" }, times = math.huge })
      h.fake:fail({ kind = "api", method = "DELETE", path = "^/sandboxes/", status = 503,
        body = { code = 503, message = "busy" }, times = 3 })
      local r, err = s:call("environmentAcquireLease", { config = config(), runId = "r" })
      assert.is_nil(r)
      assert.matches("envd broke", err.message)
      assert.equal(4, h.fake:count("^/sandboxes/", "DELETE"))
      assert.same({}, h.fake:running())
    end)
  end)

  it("a connection dropped mid-stream: an error at once, and the command is stopped", function()
    run(function()
      local s = session()
      local _, lp = acquire(s)
      h.fake:fail({ kind = "envd", path = "^/process%.Process/Start$", drop = true })
      local took, r, err = timed(function()
        return exec(s, lp, { args = { "-c", "echo dropped-command; sleep 30" } })
      end)
      assert.is_nil(r)
      assert.matches("lost while trying to run the command", err.message)
      assert.is_true(took < 15, took) -- at once: not after the command's own 30 s
      -- the process the fake started for it (the wrapper, which waits for the command's
      -- process group) ends: the orphaned command was stopped
      local started
      for _, c in ipairs(h.fake.commands) do
        if (c.args[3] or ""):find("dropped-command", 1, true) then
          started = c
        end
      end
      assert.is_table(started)
      eventually(function()
        return started.exit_code ~= nil or started.signal ~= nil
      end, "the orphaned command was stopped")
      destroy(s, lp.providerLeaseId)
    end)
  end)

  it("a truncated stream: an error, never a made-up result", function()
    run(function()
      local s = session()
      local _, lp = acquire(s)
      h.fake:fail({ kind = "envd", path = "^/process%.Process/Start$", truncate = true })
      local starts = h.fake:count("/process%.Process/Start$")
      local r, err = exec(s, lp, { args = { "-c", "echo partial" } })
      assert.is_nil(r)
      assert.matches("truncated stream", err.message)
      eventually(function() -- the command's processes are reaped in the background
        return h.fake:count("/process%.Process/Start$") == starts + 2
      end, "the command's processes reaped")
      h.fake:fail({ kind = "envd", path = "^/process%.Process/Start$", truncate = "end" })
      r, err = exec(s, lp, { args = { "-c", "echo partial" } })
      assert.is_nil(r)
      assert.matches("ended without the command's result", err.message)
      -- a body cut short (a response of the wrong length)
      h.fake:fail({ kind = "api", path = "^/v2/sandboxes$", status = 201, truncate = true,
        body = { sandboxID = "abc", envdVersion = "0.5.7" } })
      r, err = s:call("environmentAcquireLease", { config = config(), runId = "r" })
      assert.is_nil(r)
      assert.matches("create a sandbox", err.message)
      destroy(s, lp.providerLeaseId)
    end)
  end)

  it("a stalled server: the API within the request timeout, envd within the handshake", function()
    run(function()
      local s = session()
      -- each stall lasts 20 s: every answer below comes long before a stall would end
      api.settings.request_timeout = 1
      h.fake:fail({ kind = "api", path = "^/v2/sandboxes$", stall = 20 })
      local took, r, err = timed(function()
        return s:call("environmentAcquireLease", { config = config(), runId = "r" })
      end)
      assert.is_nil(r)
      assert.matches("no answer within 1s", err.message)
      assert.is_true(took < 10, took)
      local _, lp = acquire(s)
      h.fake:fail({ kind = "envd", path = "^/process%.Process/Start$", stall = 20 })
      took, r, err = timed(function()
        return exec(s, lp, { args = { "-c", "echo never" } })
      end)
      assert.is_nil(r)
      assert.matches("no answer within 1s", err.message)
      assert.is_true(took < 10, took)
      -- a stalled DELETE is tried once more, then the destroy says it failed, bounded
      h.fake:fail({ kind = "api", method = "DELETE", stall = 20, times = 2 })
      took, r, err = timed(function()
        return s:call("environmentDestroyLease", { config = config(),
          providerLeaseId = lp.providerLeaseId })
      end)
      assert.is_true(took < 10, took)
      assert.equal(2, h.fake:count("^/sandboxes/", "DELETE")) -- tried once more
      assert.is_nil(r)
      assert.matches("kill sandbox .*no answer within 1s", err.message)
      destroy(s, lp.providerLeaseId)
    end)
  end)

  it("keepalives keep a silent command's stream alive; a dead one is detected", function()
    run(function()
      api.settings.keepalive = 0.2
      api.settings.stream_stall = 1
      local s = session()
      local _, lp = acquire(s)
      local r = assert(exec(s, lp, { args = { "-c", "sleep 2; echo still-here" } }))
      assert.equal("still-here\n", r.stdout)
      -- a server that goes silent mid-stream (no keepalive within stream_stall): dead
      api.settings.keepalive = 30
      local took, err
      took, r, err = timed(function()
        return exec(s, lp, { args = { "-c", "echo begun; sleep 30" } })
      end)
      assert.is_nil(r)
      assert.matches("no data for 1s", err.message)
      assert.is_true(took >= 1 and took < 15, took) -- the stall limit, not the command's end
      destroy(s, lp.providerLeaseId)
    end)
  end)

  it("a paused sandbox under a cached lease: envd's 502, one reconnect, then runs", function()
    run(function()
      local s = session()
      local _, lp = acquire(s)
      local id = lp.providerLeaseId
      local res = assert(http.request({
        method = "POST",
        url = h.fake.api_url .. "/sandboxes/" .. id .. "/pause",
        headers = { ["X-API-KEY"] = KEY },
      }))
      assert.equal(204, res.status)
      local before = #h.fake.requests
      local r = assert(exec(s, lp, { args = { "-c", "echo resumed" } }))
      assert.equal("resumed\n", r.stdout)
      assert.equal("running", h.fake.sandboxes[id].state)
      assert.equal(3, #h.fake.requests - before) -- Start (502), connect (201), Start
      destroy(s, id)
    end)
  end)

  it("a gone sandbox: execute and realize fail clearly, release and destroy succeed", function()
    run(function()
      local s = session()
      local _, lp = acquire(s)
      destroy(s, lp.providerLeaseId)
      local r, err = exec(s, lp, { args = { "-c", "true" } })
      assert.is_nil(r)
      assert.matches("not found", err.message)
      r, err = s:call("environmentRealizeWorkspace", {
        config = config(),
        lease = lp,
        workspace = {},
      })
      assert.is_nil(r)
      assert.matches("not found", err.message)
      assert.equal(json.null, s:call("environmentReleaseLease", {
        config = config({ reuseLease = true }),
        providerLeaseId = lp.providerLeaseId,
      }))
      destroy(s, lp.providerLeaseId)
    end)
  end)

  it("keeps the API key and envd tokens out of errors, logs and lease metadata", function()
    run(function()
      local s = session()
      local lease, lp = acquire(s)
      local token = h.fake.sandboxes[lease.providerLeaseId].envd_access_token
      assert.is_string(token)
      h.fake:fail({ kind = "api", path = "/connect$", status = 500,
        body = { code = 500, message = "key " .. KEY .. " token " .. token } })
      h.fake:fail({ kind = "envd", path = "^/process%.Process/Start$", status = 500,
        body = { code = "internal", message = "token " .. token .. " key " .. KEY } })
      local errors = {}
      local _, err = exec(s, lp, { args = { "-c", "true" } })
      errors[#errors + 1] = err.message
      api.forget_all()
      _, err = exec(s, lp, { args = { "-c", "true" } })
      errors[#errors + 1] = err.message
      api.settings.refresh_fraction = 0
      h.fake:fail({ kind = "api", path = "/timeout$", status = 500,
        body = { code = 500, message = "refresh " .. KEY .. " " .. token } })
      assert(exec(s, lp, { args = { "-c", "true" } }))
      eventually(function()
        return #h.logs > 0
      end, "a log line")
      local function clean(text)
        return not text:find(KEY, 1, true) and not text:find(token, 1, true)
      end
      for _, text in ipairs(errors) do
        assert.is_true(clean(text), text)
        assert.matches("[REDACTED]", text, 1, true)
      end
      for _, text in ipairs(h.logs) do
        assert.is_true(clean(text), text)
      end
      assert.is_true(clean(json.encode(lease.metadata)))
      local resumed = assert(s:call("environmentResumeLease", {
        config = config(),
        providerLeaseId = lease.providerLeaseId,
      }))
      assert.is_true(clean(json.encode(resumed)))
      -- api.redact masks the key even when nothing registered it
      assert.equal("x [REDACTED] y", api.redact({ key = "k3y%s" }, "x k3y%s y"))
      destroy(s, lease.providerLeaseId)
    end)
  end)
end)
