--- spec.support.e2b_harness: what the E2B provider specs share: a fresh fake E2B per spec with
-- api.settings pointed at it, a stubbed environment and log sink, /tmp left as it was found, no
-- sandbox left running after any spec; and the calls the specs make on a lease.
--
--   local harness = require("spec.support.e2b_harness")
--   local h = harness.new({ logs = "warn" }) -- h.fake, h.env, h.logs: the running spec's
--   after_each(h.assert_none_running)
--   it("...", function() h.run(function() ... end) end)
local api = require("providers.e2b.api")
local assert = require("luassert")
local client = require("host.client")
local fake_e2b = require("spec.support.fake_e2b")
local fs = require("host.fs")
local helpers = require("spec.helpers")
local json = require("host.json")
local log = require("host.log")
local provider = require("providers.e2b")

local M = {}

M.KEY = "e2b_test_key"

-- api.settings as loaded: every spec starts from them.
local DEFAULTS = helpers.merged(api.settings)

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

-- The log sinks opts.logs chooses: each returns the sink that fills `logs`.
local SINKS = {
  none = function(_logs)
    return function() end
  end,
  warn = function(logs) -- the warnings' messages
    return function(level, message)
      if level == "warn" then
        logs[#logs + 1] = message
      end
    end
  end,
  all = function(logs) -- every line, as "level: message"
    return function(level, message)
      logs[#logs + 1] = level .. ": " .. message
    end
  end,
}

--- new(opts) -> h. opts.logs: "none" (the default: logs are dropped), "warn" (h.logs gets the
-- warnings' messages) or "all" (h.logs gets every log line as "level: message").
-- h.run(fn) runs fn as a spec with its own fake; while it runs h.fake is the fake, h.env the
-- environment the provider reads (empty at the start) and h.logs the captured logs.
-- h.assert_none_running: for after_each, fails when the last run left a sandbox running.
function M.new(opts)
  local sink = assert(SINKS[opts and opts.logs or "none"], "logs: none, warn or all")
  local h = {}
  local leftover

  function h.run(fn)
    helpers.run(function()
      local tmp_before = tmp_entries()
      local fake = fake_e2b.start({ api_key = M.KEY })
      h.fake = fake
      for k, v in pairs(DEFAULTS) do
        api.settings[k] = v
      end
      api.settings.api_url, api.settings.sandbox_url = fake.api_url, fake.sandbox_url
      api.settings.domain = fake.domain
      local env = {}
      h.env = env
      api.settings.getenv = function(name)
        return env[name]
      end
      api.forget_all()
      h.logs = {}
      log.set_sink(sink(h.logs))
      helpers.with_cleanup(fn, function()
        leftover = fake:running()
        log.set_sink(nil)
        fake:stop()
        for name in pairs(tmp_entries()) do
          if not tmp_before[name] then
            fs.remove_tree("/tmp/" .. name)
          end
        end
      end)
    end)
  end

  function h.assert_none_running()
    assert.same({}, leftover or {}, "sandboxes left running after the spec")
    leftover = nil
  end

  return h
end

--- session(opts) -> a client session on the E2B provider.
function M.session(opts)
  return client.session({ provider }, opts)
end

--- config(extra) -> { apiKey = KEY } with extra's fields added.
function M.config(extra)
  return helpers.merged({ apiKey = M.KEY }, extra)
end

--- acquire(s, cfg) -> lease, the lease as execute takes it ({providerLeaseId, metadata}).
function M.acquire(s, cfg)
  local lease = assert(s:call("environmentAcquireLease", {
    config = cfg or M.config(),
    runId = "r",
  }))
  return lease, { providerLeaseId = lease.providerLeaseId, metadata = lease.metadata }
end

--- duplex_lease(h, s) -> lp, ctx, sandbox: a lease on session s, the ctx an execute on it gives
-- the bridge's hooks (duplex, sandbox_helper), and h.fake's record of its sandbox.
function M.duplex_lease(h, s)
  local _, lp = M.acquire(s)
  local ctx = s.worker:context(provider, "environmentExecute",
    { config = M.config(), lease = lp }, nil, 120)
  return lp, ctx, h.fake:sandbox(lp.providerLeaseId)
end

--- restorer(settings) -> fn that puts settings (a module's knobs) back as they are now: for
-- before_each.
function M.restorer(settings)
  local saved = helpers.merged(settings)
  return function()
    for k in pairs(settings) do
      settings[k] = nil
    end
    for k, v in pairs(saved) do
      settings[k] = v
    end
  end
end

--- destroy(s, id, cfg): destroys the lease, asserting it succeeds.
function M.destroy(s, id, cfg)
  assert.equal(
    json.null,
    s:call("environmentDestroyLease", { config = cfg or M.config(), providerLeaseId = id })
  )
end

--- exec(s, lp, params, cfg) -> environmentExecute's answer; params.command defaults to "sh".
function M.exec(s, lp, params, cfg)
  params.config = cfg or M.config()
  params.lease = lp
  params.command = params.command or "sh"
  return s:call("environmentExecute", params)
end

--- eventually(pred, what [, seconds]): spec.helpers' eventually, for the specs' locals.
M.eventually = helpers.eventually

return M
