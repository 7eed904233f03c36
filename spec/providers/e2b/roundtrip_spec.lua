-- spec/providers/e2b/roundtrip_spec.lua: requests per execute on the fake E2B (issue #3 item
-- 5): one on a warm lease without stdin, two with stdin, one connect more after a worker
-- restart; the lifetime refresh rate-limited and concurrent; and the real worker binary
-- configured by the SDK's environment variables.
local api = require("providers.e2b.api")
local client = require("host.client")
local fake_e2b = require("spec.support.fake_e2b")
local fs = require("host.fs")
local helpers = require("spec.helpers")
local json = require("host.json")
local log = require("host.log")
local provider = require("providers.e2b")
local task = require("host.task")
local worker_process = require("spec.support.worker_process")

local KEY = "e2b_test_key"
local DEFAULTS = {}
for k, v in pairs(api.settings) do
  DEFAULTS[k] = v
end

local fake, leftover

-- What the commands leave in this machine's /tmp (the fake shares it with its sandboxes): the
-- spec removes whatever appeared while it ran.
local TMP_LEFTOVERS = { "^%.paperclip%-execution%-", "^paperclip%-provider%-home%.",
  "^paperclip%-stdin%-" }

local function tmp_entries()
  local set = {}
  for _, name in ipairs(fs.list("/tmp") or {}) do
    for _, pattern in ipairs(TMP_LEFTOVERS) do
      if name:find(pattern) then
        set[name] = true
      end
    end
  end
  return set
end

local function run(fn)
  helpers.run(function()
    local tmp_before = tmp_entries()
    fake = fake_e2b.start({ api_key = KEY })
    for k, v in pairs(DEFAULTS) do
      api.settings[k] = v
    end
    api.settings.api_url, api.settings.sandbox_url = fake.api_url, fake.sandbox_url
    api.settings.domain = fake.domain
    api.settings.getenv = function()
      return nil
    end
    api.forget_all()
    log.set_sink(function() end)
    local ok, err = pcall(fn)
    leftover = fake:running()
    log.set_sink(nil)
    fake:stop()
    for name in pairs(tmp_entries()) do
      if not tmp_before[name] then
        fs.remove_tree("/tmp/" .. name)
      end
    end
    if not ok then
      error(err, 0)
    end
  end)
end

after_each(function()
  assert.same({}, leftover or {}, "sandboxes left running after the spec")
  leftover = nil
end)

local function config(extra)
  local c = { apiKey = KEY }
  for k, v in pairs(extra or {}) do
    c[k] = v
  end
  return c
end

local function acquire(s, cfg)
  local lease = assert(s:call("environmentAcquireLease", { config = cfg or config(), runId = "r" }))
  return { providerLeaseId = lease.providerLeaseId, metadata = lease.metadata }
end

local function destroy(s, id)
  assert.equal(json.null, s:call("environmentDestroyLease", {
    config = config(),
    providerLeaseId = id,
  }))
end

-- requests(fn) -> how many HTTP requests the fake saw while fn ran, fn's results
local function requests(fn)
  local before = #fake.requests
  local res = table.pack(fn())
  return #fake.requests - before, table.unpack(res, 1, res.n)
end

local function exec(s, lp, params, cfg)
  params.config = cfg or config()
  params.lease = lp
  params.command = params.command or "sh"
  return assert(s:call("environmentExecute", params))
end

describe("providers.e2b round trips", function()
  it("warm lease: 1 request per execute without stdin, 2 with stdin", function()
    run(function()
      local s = client.session({ provider })
      local lp = acquire(s)
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
      local s = client.session({ provider })
      local lp = acquire(s)
      api.forget_all() -- what a restarted worker knows: nothing
      local restarted = client.session({ provider })
      local n = requests(function()
        return exec(restarted, lp, { args = { "-c", "true" } })
      end)
      assert.equal(2, n)
      assert.equal(1, fake:count("^/v2/sandboxes/[^/]+/connect$"))
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
      local s = client.session({ provider })
      local cfg = config({ timeoutMs = 4000 }) -- refresh_fraction 0.1: at most every 0.4 s
      local lp = acquire(s, cfg)
      local n = requests(function()
        exec(s, lp, { args = { "-c", "true" } }, cfg)
        return exec(s, lp, { args = { "-c", "true" } }, cfg)
      end)
      assert.equal(2, n, "no refresh right after the create")
      task.sleep(0.45)
      -- due now; a slow refresh does not hold the command back
      fake:fail({ path = "/timeout$", delay = 1.5 })
      local t0 = task.now()
      exec(s, lp, { args = { "-c", "true" } }, cfg)
      assert.is_true(task.now() - t0 < 1, "the refresh ran concurrently")
      assert.equal(1, fake:count("/timeout$"))
      -- during a long command the lifetime keeps being refreshed (every max(1 s, 0.4 s))
      exec(s, lp, { args = { "-c", "sleep 2.3" } }, cfg)
      assert.is_true(fake:count("/timeout$") >= 3, fake:count("/timeout$"))
      assert.equal(4000, fake.sandboxes[lp.providerLeaseId].timeout_ms)
      destroy(s, lp.providerLeaseId)
    end)
  end)

  it("the worker binary, configured by the SDK's E2B_* environment variables", function()
    run(function()
      local w = worker_process.start({ "worker", "--provider", "e2b" }, {
        env = {
          PATH = os.getenv("PATH"),
          HOME = os.getenv("HOME"),
          E2B_API_URL = fake.api_url,
          E2B_SANDBOX_URL = fake.sandbox_url,
          E2B_DOMAIN = fake.domain,
          E2B_API_KEY = KEY,
        },
      })
      local init = assert(w:initialize())
      assert.is_true(init.result.ok)
      local base = { driverKey = "e2b", companyId = "c", environmentId = "e", config = {} }
      local function call(id, method, extra)
        local p = {}
        for k, v in pairs(base) do
          p[k] = v
        end
        for k, v in pairs(extra or {}) do
          p[k] = v
        end
        w:request(id, method, p, { paperclipInvocation = { id = "inv-" .. id } })
        return assert(w:reply_to(id, 20))
      end
      local lease = call(1, "environmentAcquireLease", { runId = "r" }).result
      assert.is_string(lease.providerLeaseId)
      local lp = { providerLeaseId = lease.providerLeaseId, metadata = lease.metadata }
      local before = #fake.requests
      local r = call(2, "environmentExecute", {
        lease = lp,
        command = "sh",
        args = { "-c", "echo from-worker" },
        executionId = "w-1",
      }).result
      assert.equal("from-worker\n", r.stdout)
      assert.equal(1, #fake.requests - before)
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
      assert.same({}, fake:running())
      local token = fake.sandboxes[lease.providerLeaseId].envd_access_token
      local out = table.concat(w.raw) .. w:stderr_text()
      assert.is_nil(out:find(KEY, 1, true))
      assert.is_nil(out:find(token, 1, true))
      w:close_stdin()
      assert.equal(0, w:wait(10).exit_code)
    end)
  end)
end)
