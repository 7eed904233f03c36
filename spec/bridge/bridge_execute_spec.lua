-- spec/bridge/bridge_execute_spec.lua: an environmentExecute with params.bridge, through the
-- worker's dispatch on the local provider: the command calls the API through the relay with
-- its per-run key, the real key never reaches it, and the bridge is gone with the execution.
local client = require("host.client")
local fake_paperclip = require("spec.support.fake_paperclip")
local helpers = require("spec.helpers")
local json = require("host.json")
local providers = require("host.providers")
local worker_process = require("spec.support.worker_process")

local KEY = "the-real-paperclip-key-0123456789"

local provider = assert(providers.load("local"))

-- Every relay the provider starts, to prove each is gone afterwards.
local relays = {}
local duplex_hook = provider.hooks.duplex
provider.hooks.duplex = function(ctx, params)
  local d, err, code = duplex_hook(ctx, params)
  if d then
    relays[#relays + 1] = d.pid
  end
  return d, err, code
end

-- The agent: curl with the env the bridge gave, printing the status then the body.
local AGENT = [[curl -sS -o /dev/stdout -w '\n%{http_code}' ]]
  .. [[-H "Authorization: Bearer $PAPERCLIP_API_KEY" "$PAPERCLIP_API_URL$1"]]

-- fn(s, lp, api) with a session, a lease and a fake API; afterwards the lease is destroyed and
-- no relay runs.
local function with_lease(fn, config)
  helpers.run(function()
    local api <close> = fake_paperclip.start({ api_key = KEY })
    local s = client.session({ provider })
    local lease = assert(s:call("environmentAcquireLease", { config = config or {},
      runId = "r" }))
    local lp = { providerLeaseId = lease.providerLeaseId, metadata = lease.metadata }
    helpers.with_cleanup(fn, function()
      s:call("environmentDestroyLease", { config = config or {},
        providerLeaseId = lease.providerLeaseId })
    end, s, lp, api)
    for _, pid in ipairs(relays) do
      assert.is_false(helpers.alive(pid), "relay " .. pid .. " is gone")
    end
    relays = {}
  end)
end

local function bridged(s, lp, api, params, config)
  params.config = config or {}
  params.lease = lp
  params.bridge = params.bridge or { apiUrl = api.url, apiKey = KEY, runId = "run-7" }
  return s:call("environmentExecute", params)
end

local function agent_call(s, lp, api, path, config)
  return bridged(s, lp, api, { command = "sh", args = { "-c", AGENT, "agent", path } }, config)
end

describe("an execute with a bridge (local provider)", function()
  it("lets the command call the API with its per-run key; the API sees the real one", function()
    with_lease(function(s, lp, api)
      local r = assert(agent_call(s, lp, api, "/api/agents/me"))
      assert.equal(0, r.exitCode, r.stderr)
      local body, status = r.stdout:match("^(.*)\n(%d+)$")
      assert.equal("200", status)
      assert.same({ method = "GET", path = "/api/agents/me", query = json.null,
        runId = "run-7", body = "" }, json.decode(body))
      assert.equal("Bearer " .. KEY, api:last().headers.authorization)
      assert.equal(1, #relays)
    end)
  end)

  it("never shows the real key or URL to the command", function()
    with_lease(function(s, lp, api)
      local r = assert(bridged(s, lp, api, { command = "env" }))
      assert.equal(0, r.exitCode)
      assert.not_matches(KEY, r.stdout, 1, true)
      assert.not_matches(api.url, r.stdout, 1, true)
      local url = r.stdout:match("PAPERCLIP_API_URL=(%S+)")
      assert.matches("^http://127%.0%.0%.1:%d+$", url)
      assert.equal(32, #r.stdout:match("PAPERCLIP_API_KEY=(%S+)"))
    end)
  end)

  it("refuses a route outside the table with 403, before the API", function()
    with_lease(function(s, lp, api)
      local r = assert(agent_call(s, lp, api, "/api/companies/c1/secrets"))
      assert.equal("403", r.stdout:match("(%d+)$"))
      assert.is_nil(api:last())
    end)
  end)

  it("works inside an isolated network, where the API itself is out of reach", function()
    local probe = helpers.run(require("host.proc").run,
      { argv = { "unshare", "--net", "--map-root-user", "--", "true" }, timeout = 10 })
    if not probe or probe.exit_code ~= 0 then
      pending("this machine does not allow unshare --net --map-root-user")
      return
    end
    local config = { isolateNetwork = true }
    with_lease(function(s, lp, api)
      local r = assert(agent_call(s, lp, api, "/api/agents/me", config))
      assert.equal("200", r.stdout:match("(%d+)$"), r.stderr)
      r = assert(bridged(s, lp, api, { command = "sh", args = { "-c",
        "curl -sS --max-time 5 " .. api.url .. "/api/agents/me" } }, config))
      assert.not_equal(0, r.exitCode) -- no route to the host's loopback
      assert.equal(1, #api.requests)
    end, { isolateNetwork = true })
  end)

  it("closes the bridge when the command times out", function()
    with_lease(function(s, lp, api)
      local r = assert(bridged(s, lp, api, { command = "sleep", args = { "30" },
        timeoutMs = 200 }))
      assert.is_true(r.timedOut)
      assert.equal(1, #relays)
    end)
  end)

  describe("in a worker process, as Paperclip runs it (env: PATH and PAPERCLIP_* only)", function()
    -- A worker, a lease, and an execute with a bridge that waits on a marker: fn(w, marker,
    -- relay_pid) runs while the command is inside it.
    local function bridged_in_worker(fn)
      helpers.run(function()
        local tmp <close> = helpers.tempdir("ph-bridge-worker-")
        local api <close> = fake_paperclip.start({ api_key = KEY })
        local w = worker_process.start(nil, { env = { PATH = os.getenv("PATH"),
          PAPERCLIP_PLUGIN_ID = "spec" } })
        helpers.with_cleanup(function()
          w:initialize()
          local config = { root = tmp.path }
          w:request(1, "environmentAcquireLease", { driverKey = "local", config = config,
            companyId = "c", environmentId = "e", runId = "r" })
          local lease = assert(w:reply_to(1, 30).result)
          local marker = tmp.path .. "/inside"
          w:request(2, "environmentExecute", { driverKey = "local", config = config,
            companyId = "c", environmentId = "e",
            lease = { providerLeaseId = lease.providerLeaseId, metadata = lease.metadata },
            command = "sh", args = { "-c", 'echo "$PAPERCLIP_API_URL" > ' .. marker
              .. '; while [ -e ' .. marker .. ' ]; do sleep 0.05; done' },
            bridge = { apiUrl = api.url, apiKey = KEY, runId = "run-w" } })
          local url = helpers.eventually(function()
            return (helpers.read_file(marker) or ""):match("^(http://%S+)")
          end, "the command runs with its bridge")
          local port = tonumber(url:match(":(%d+)$"))
          local relay = helpers.eventually(function() -- the worker's child running the relay
            for _, name in ipairs(require("host.fs").list("/proc") or {}) do
              local stat = name:find("^%d+$") and helpers.read_file("/proc/" .. name .. "/stat")
              local ppid = stat and tonumber(stat:match("^%d+ %b() %S+ (%d+)"))
              local cmdline = ppid == w.pid and helpers.read_file("/proc/" .. name .. "/cmdline")
              if cmdline and cmdline:find("ph-sandbox-helper\0relay", 1, true) then
                return tonumber(name)
              end
            end
          end, "the relay runs")
          fn(w, marker, relay, port)
        end, function()
          w:kill("SIGKILL")
          w:wait(10)
        end)
      end)
    end

    it("the bridge closes with the execution; closing stdin then stops the worker", function()
      bridged_in_worker(function(w, marker, relay)
        os.remove(marker) -- the command ends
        local reply = w:reply_to(2, 30)
        assert.equal(0, reply.result.exitCode)
        helpers.eventually(function()
          return not helpers.alive(relay)
        end, "the relay is gone with the execution")
        w:close_stdin()
        assert.equal(0, w:wait(30).exit_code)
        assert.not_matches(KEY, table.concat(w.stderr), 1, true)
      end)
    end)

    it("a killed worker leaves no relay behind", function()
      bridged_in_worker(function(w, marker, relay, port)
        w:kill("SIGKILL")
        w:wait(10)
        helpers.eventually(function()
          return not helpers.alive(relay)
        end, "the relay ended with its transport")
        assert.is_nil((require("host.core.rawtcp").connect("127.0.0.1", port, 5)))
        os.remove(marker)
      end)
    end)
  end)

  it("names what is wrong with the bridge params", function()
    with_lease(function(s, lp, api)
      local cases = {
        { "x", "bridge must be an object" },
        { { apiUrl = "ftp://x", apiKey = KEY }, "apiUrl must be an http" },
        { { apiUrl = api.url }, "apiKey must be" },
        { { apiUrl = api.url, apiKey = KEY, routes = { { "GET" } } }, "routes%[1%]" },
        { { apiUrl = api.url, apiKey = KEY, routes = { { "GET", "no-slash" } } }, "bridge" },
      }
      for _, case in ipairs(cases) do
        local r, err = bridged(s, lp, api, { command = "true", bridge = case[1] })
        assert.is_nil(r)
        assert.matches(case[2], err.message)
        assert.not_matches(KEY, err.message, 1, true)
      end
      assert.equal(0, #api.requests)
    end)
  end)
end)
