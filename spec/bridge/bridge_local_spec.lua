-- spec/bridge/bridge_local_spec.lua: host.bridge end to end on this machine: the real relay
-- (ph-sandbox-helper) as a local duplex, agents as HTTP clients on loopback, the fake
-- Paperclip API behind. What reaches the API, what the agent sees, and that nothing is left.
local bridge = require("host.bridge")
local duplex = require("host.duplex")
local fake_paperclip = require("spec.support.fake_paperclip")
local helpers = require("spec.helpers")
local http = require("host.http")
local json = require("host.json")
local rawtcp = require("host.core.rawtcp")
local task = require("host.task")

local T = 20
local KEY = "real-api-key-never-in-the-sandbox"

-- The relay runs as a plain local process: the opener the local provider's hooks.duplex is.
local opened = {}
local function local_opener(params)
  local d, err, code = duplex.process({
    argv = { params.command, table.unpack(params.args) },
    on_stdout = params.on_stdout,
    on_stderr = params.on_stderr,
    timeout = params.timeout,
  })
  if d then
    opened[#opened + 1] = d
  end
  return d, err, code
end

-- fn(b, api) with a bridge to a fake API; afterwards the relay is gone, whatever happened.
local function with_bridge(fn, opts)
  helpers.run(function()
    local api <close> = fake_paperclip.start({ api_key = KEY })
    local o = { duplex = local_opener, helper = helpers.sandbox_helper(), api_url = api.url,
      api_key = KEY, run_id = "run-1" }
    for k, v in pairs(opts or {}) do
      o[k] = v
    end
    local b = assert(bridge.open(o))
    helpers.with_cleanup(fn, function()
      b:close()
    end, b, api)
    for _, d in ipairs(opened) do
      assert.is_false(helpers.alive(d.pid), "the relay is gone")
    end
    opened = {}
  end)
end

-- A latch the fake API's handlers wait on (bounded) until the spec releases it.
local function latch()
  local l = { sig = task.signal() }
  function l.wait()
    local deadline = task.now() + T
    while not l.released and task.now() < deadline do
      l.sig:wait(T)
    end
  end
  function l.release()
    l.released = true
    l.sig:notify()
  end
  return l
end

local function agent(b, method, path, opts)
  opts = opts or {}
  local headers = { Authorization = "Bearer " .. (opts.token or b.token) }
  for k, v in pairs(opts.headers or {}) do
    headers[k] = v
  end
  return http.request({ method = method, url = b.url .. path, headers = headers,
    body = opts.body, timeout = T, path_as_is = true })
end

describe("host.bridge on a local relay", function()
  it("forwards an allowed call with the real key and run id; the agent sees the filtered answer",
    function()
      with_bridge(function(b, api)
        assert.matches("^http://127%.0%.0%.1:%d+$", b.url)
        assert.not_equal(KEY, b.token)
        assert.same({ PAPERCLIP_API_URL = b.url, PAPERCLIP_API_KEY = b.token }, b:env())
        local r = assert(agent(b, "GET", "/api/agents/me?x=1"))
        assert.equal(200, r.status)
        local seen = json.decode(r.body)
        assert.same({ method = "GET", path = "/api/agents/me", query = "x=1", runId = "run-1",
          body = "" }, seen)
        assert.equal("Bearer " .. KEY, api:last().headers.authorization)
        assert.is_nil(r:header("set-cookie"))
        assert.is_nil(r:header("x-secret-header"))
        assert.equal('"v1"', r:header("etag"))
        assert.equal("application/json", r:header("content-type"))
      end)
    end)

  it("refuses before the API: a wrong token 401, a route outside the table 403, a bad path 400",
    function()
      with_bridge(function(b, api)
        local r = assert(agent(b, "GET", "/api/agents/me", { token = KEY }))
        assert.equal(401, r.status)
        r = assert(agent(b, "DELETE", "/api/agents/me"))
        assert.equal(403, r.status)
        assert.matches("Route not allowed", json.decode(r.body).error)
        r = assert(agent(b, "GET", "/api/agents/x/../../admin"))
        assert.equal(400, r.status)
        r = assert(agent(b, "POST", "/api/issues/i1/comments", { body = "hi",
          headers = { ["Content-Type"] = "text/plain" } }))
        assert.equal(415, r.status)
        assert.is_nil(api:last(), "nothing reached the API")
        assert.same({ ["401"] = 1, ["403"] = 1, ["400"] = 1, ["415"] = 1 }, b:stats().by_status)
      end)
    end)

  it("forwards a JSON body byte-exact, and serves several requests on one connection", function()
    with_bridge(function(b, api)
      local body = json.encode({ body = ("é"):rep(1000) })
      for i = 1, 3 do
        local r = assert(agent(b, "POST", "/api/issues/i" .. i .. "/comments", { body = body,
          headers = { ["Content-Type"] = "application/json" } }))
        assert.equal(200, r.status)
        assert.equal(body, api:last().body)
      end
      assert.equal(1, b:stats().connections) -- libcurl kept the connection alive
      assert.equal(3, #api.requests)
    end)
  end)

  it("carries a 2 MiB answer and a 2 MiB request through the credit windows", function()
    with_bridge(function(b, api)
      local big = json.encode({ data = ("x"):rep(2 * 1024 * 1024) })
      api:answer("GET", "/api/issues/big", function()
        return 200, { ["content-type"] = "application/json" }, big
      end)
      local r = assert(agent(b, "GET", "/api/issues/big"))
      assert.equal(big, r.body)
      r = assert(agent(b, "PATCH", "/api/issues/big", { body = big,
        headers = { ["Content-Type"] = "application/json" } }))
      assert.equal(200, r.status)
      assert.equal(#big, #api:last().body)
    end)
  end)

  it("serves 50 agents at once", function()
    with_bridge(function(b, api)
      local fns = {}
      for i = 1, 50 do
        fns[i] = function()
          return agent(b, "GET", "/api/issues/i" .. i)
        end
      end
      for i, res in ipairs(task.all(fns)) do
        local r = assert(res[1], res[2])
        assert.equal(200, r.status)
        assert.equal("/api/issues/i" .. i, json.decode(r.body).path)
      end
      assert.equal(50, #api.requests)
    end)
  end)

  it("answers 409 for an indeterminate outcome, and 502 when the API cannot be reached", function()
    with_bridge(function(b, api)
      api:answer("POST", "/api/issues/i1/checkout", function()
        return 504, { ["x-paperclip-bridge-outcome"] = "indeterminate" }, "{}"
      end)
      local r = assert(agent(b, "POST", "/api/issues/i1/checkout"))
      assert.equal(409, r.status)
      api:close()
      r = assert(agent(b, "GET", "/api/agents/me"))
      assert.equal(502, r.status)
      assert.matches("Bridge forward failed", json.decode(r.body).error)
    end)
  end)

  it("a request cut by its deadline at the API gets 409: it may have been carried out", function()
    with_bridge(function(b, api)
      local gate = latch()
      api:answer("POST", "/api/issues/i1/release", function()
        gate.wait()
        return 200, {}, "{}"
      end)
      local r = assert(agent(b, "POST", "/api/issues/i1/release"))
      gate.release()
      assert.equal(409, r.status)
      local body = json.decode(r.body)
      assert.equal("indeterminate", body.outcome)
      assert.is_false(body.retryable)
    end, { forward_timeout = 0.3 })
  end)

  it("ends every connection and frees everything when closed", function()
    with_bridge(function(b)
      local c = assert(rawtcp.connect("127.0.0.1", b.port, T))
      c:send("GET /api/agents/me HTTP/1.1\r\n") -- half a request, then the bridge closes
      helpers.eventually(function()
        return b:stats().open == 1
      end, "the stream opened")
      b:close()
      local data = c:recv(T)
      assert.is_true(data == nil or data == "")
      c:close()
      assert.is_nil((rawtcp.connect("127.0.0.1", b.port, T)), "nothing listens any more")
      b:close() -- idempotent
    end)
  end)

  it("refuses a helper that answers with something other than a relay's HELLO", function()
    helpers.run(function()
      local tmp <close> = helpers.tempdir("ph-bridge-spec-")
      local b, err, code = bridge.open({ helper = helpers.sandbox_helper(), api_url = "http://x",
        api_key = KEY, duplex = function(params)
          params.args = { "serve", "--ctl-base", tmp.path }
          return local_opener(params)
        end })
      assert.is_nil(b)
      assert.equal("upstream", code)
      assert.matches('the relay did not start: .*HELLO of "PHSERVE1", not of a relay', err)
      for _, d in ipairs(opened) do
        assert.is_false(helpers.alive(d.pid), "the helper is gone")
      end
      opened = {}
    end)
  end)

  it("a relay killed mid-request ends the agent's call with an error, not a hang", function()
    with_bridge(function(b, api)
      local gate = latch()
      api:answer("GET", "/api/issues/slow", function()
        gate.wait()
        return 200, {}, "{}"
      end)
      local call = task.spawn(agent, b, "GET", "/api/issues/slow")
      helpers.eventually(function()
        return api:last()
      end, "the request reached the API")
      opened[1]:close() -- the relay dies (the transport is lost)
      local r, err = call:wait(T)
      gate.release()
      assert.is_nil(r)
      assert.is_string(err)
      helpers.eventually(function()
        return b.closed
      end, "the bridge noticed")
    end)
  end)
end)
