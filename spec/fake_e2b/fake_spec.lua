-- spec/fake_e2b/fake_spec.lua: the fake E2B's own Lua API (spec/support/fake_e2b.lua), driven
-- with host.http exactly as a client would: the control plane, envd's Connect streams and
-- unary calls, the files API, fault injection, expiry and clean-up.
local fake_e2b = require("spec.support.fake_e2b")
local fs = require("host.fs")
local helpers = require("spec.helpers")
local http = require("host.http")
local json = require("host.json")
local raw_connect = require("host.core.rawtcp").connect -- spec-only raw TCP client
local task = require("host.task")
local util = require("host.util")

local T = 10 -- every request in this file waits at most this long

-- Runs fn(fake) in a task with a fresh fake, stopped afterwards whatever happens.
local function with_fake(fn, opts)
  return helpers.run(function()
    local fake = fake_e2b.start(opts or { api_key = "e2b_test_key" })
    helpers.with_cleanup(fn, function()
      fake:stop()
    end, fake)
  end)
end

local function api(fake, method, path, body, headers)
  local h = helpers.merged({ ["X-API-KEY"] = fake.api_key }, headers)
  local res = assert(http.request({ method = method, url = fake.api_url .. path, headers = h,
    json = body, timeout = T }))
  return res, res.body ~= "" and json.decode(res.body) or nil
end

local function create(fake, body)
  local res, doc = api(fake, "POST", "/v2/sandboxes", body or { templateID = "base" })
  assert.are.equal(201, res.status)
  return fake.sandboxes[doc.sandboxID], doc
end

local function envd_headers(sb, extra)
  return helpers.merged({ ["E2b-Sandbox-Id"] = sb.id, ["E2b-Sandbox-Port"] = "49983",
    ["X-Access-Token"] = sb.envd_access_token }, extra)
end

-- A Connect unary call: res, decoded body.
local function rpc(fake, sb, method, msg, headers)
  local res = assert(http.request({ method = "POST", url = fake.sandbox_url .. "/" .. method,
    headers = envd_headers(sb, headers), json = msg, timeout = T }))
  return res, json.decode(res.body)
end

local function envelope(msg)
  local payload = assert(json.encode(msg))
  return string.pack(">BI4", 0, #payload) .. payload
end

-- Whole envelopes at the front of buf: array of {flags, msg}, and the bytes left over.
local function split(buf)
  local out, pos = {}, 1
  while #buf - pos + 1 >= 5 do
    local flags, len = string.unpack(">BI4", buf, pos)
    if #buf - pos + 1 < 5 + len then
      break
    end
    out[#out + 1] = { flags = flags, msg = assert(json.decode(buf:sub(pos + 5, pos + 4 + len))) }
    pos = pos + 5 + len
  end
  return out, buf:sub(pos)
end

-- Runs a command through process.Process/Start; returns the decoded envelopes and the response.
local function start(fake, sb, cmd, o)
  o = o or {}
  local msg = { process = { cmd = "/bin/bash", args = { "-l", "-c", cmd }, cwd = o.cwd,
    envs = o.envs }, stdin = o.stdin or false }
  local res = assert(http.request({ method = "POST",
    url = fake.sandbox_url .. "/process.Process/" .. (o.method or "Start"),
    headers = envd_headers(sb, { ["Content-Type"] = "application/connect+json",
      ["Connect-Timeout-Ms"] = o.timeout_ms }), body = envelope(o.body or msg), timeout = T }))
  local list, rest = split(res.body)
  assert.are.equal("", rest)
  return list, res
end

-- The same, streamed: an object whose next() returns the next envelope (bounded wait).
-- o.stdin: true, false (the default) or "absent" (no stdin field in the request).
local function open_start(fake, sb, cmd, o)
  o = o or {}
  local msg = { process = { cmd = "/bin/bash", args = { "-l", "-c", cmd } },
    stdin = o.stdin or false }
  if o.stdin == "absent" then
    msg.stdin = nil
  end
  local stream = assert(http.open({ method = "POST", url = fake.sandbox_url
    .. "/process.Process/Start", headers = envd_headers(sb, { ["Content-Type"] =
    "application/connect+json", ["Connect-Timeout-Ms"] = o.timeout_ms }), body = envelope(msg),
    timeout = T }))
  local buf, queue = "", {}
  local s = { status = stream.status, headers = stream.headers, stream = stream }
  function s.next()
    local deadline = task.now() + T
    while #queue == 0 do
      local chunk, err = stream:read(math.max(deadline - task.now(), 0))
      if not chunk then
        return nil, err or "end of body"
      end
      local list
      list, buf = split(buf .. chunk)
      for _, e in ipairs(list) do
        queue[#queue + 1] = e
      end
    end
    return table.remove(queue, 1)
  end
  return s
end

-- Concatenated output of the data events, and the end event (or nil), and the end of stream.
local function outcome(list)
  local out, err, fin, eos = {}, {}, nil, nil
  for _, e in ipairs(list) do
    local ev = e.msg.event
    if e.flags == 2 then
      eos = e.msg
    elseif ev.data then
      out[#out + 1] = ev.data.stdout and util.base64_decode(ev.data.stdout) or nil
      err[#err + 1] = ev.data.stderr and util.base64_decode(ev.data.stderr) or nil
    elseif ev["end"] then
      fin = ev["end"]
    end
  end
  return table.concat(out), table.concat(err), fin, eos
end

local alive, eventually = helpers.alive, helpers.eventually

local function command_of(fake, pid)
  for _, c in ipairs(fake.commands) do
    if c.pid == pid then
      return c
    end
  end
end

describe("fake_e2b", function()
  describe("control plane", function()
    it("listens on loopback; stop closes both servers and removes every temp dir", function()
      helpers.run(function()
        local fake = fake_e2b.start({ api_key = "k1" })
        assert.matches("^http://127%.0%.0%.1:%d+$", fake.api_url)
        assert.matches("^http://127%.0%.0%.1:%d+$", fake.sandbox_url)
        assert.are.equal("k1", fake.api_key)
        assert.are.equal("e2b.localhost", fake.domain)
        local sb = create(fake)
        assert.are.equal("directory", fs.stat(sb.home).type)
        assert.are.equal(sb.root .. "/home/user", sb.home)
        fake:stop()
        fake:stop() -- idempotent
        assert.is_nil(fs.stat(sb.root))
        local res, _, code = http.request({ url = fake.api_url .. "/v2/sandboxes", timeout = 2 })
        assert.is_nil(res)
        assert.are.equal("connect", code)
      end)
    end)

    it("answers a missing or wrong API key with 401 and a numeric code", function()
      with_fake(function(fake)
        for _, headers in ipairs({ {}, { ["X-API-KEY"] = "e2b_wrong" } }) do
          local res = assert(http.request({ method = "POST", url = fake.api_url
            .. "/v2/sandboxes", headers = headers, json = { templateID = "base" }, timeout = T }))
          assert.are.equal(401, res.status)
          local doc = res:json()
          assert.are.equal(401, doc.code)
          assert.are.equal("integer", math.type(doc.code))
          assert.is_string(doc.message)
        end
        local res = assert(http.request({ url = fake.api_url .. "/v2/sandboxes",
          headers = { ["x-Api-kEY"] = fake.api_key }, timeout = T }))
        assert.are.equal(200, res.status) -- the header name is matched in any case
        assert.are.same({}, fake.sandboxes)
      end)
    end)

    it("creates a sandbox (201) from a chunked request body, as the SDK sends it", function()
      with_fake(function(fake)
        local body = '{"templateID":"base","metadata":{"owner":"lua"},"timeout":120}'
        local conn = assert(raw_connect("127.0.0.1", tonumber(fake.api_url:match(":(%d+)$")), T))
        assert(conn:send("POST /v2/sandboxes HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
          .. "\r\nX-API-KEY: " .. fake.api_key .. "\r\nTransfer-Encoding: chunked\r\n"
          .. "Connection: close\r\n\r\n" .. ("%x\r\n"):format(20) .. body:sub(1, 20) .. "\r\n"
          .. ("%x\r\n"):format(#body - 20) .. body:sub(21) .. "\r\n0\r\n\r\n"))
        local buf = ""
        while true do
          local data = conn:recv(T)
          if not data then
            break
          end
          buf = buf .. data
        end
        conn:close()
        assert.matches("^HTTP/1.1 201 ", buf)
        local doc = assert(json.decode(buf:match("\r\n\r\n(.*)$")))
        assert.matches("^[a-z0-9]+$", doc.sandboxID)
        assert.are.equal(20, #doc.sandboxID)
        assert.are.equal(fake_e2b.ENVD_VERSION, doc.envdVersion)
        assert.is_string(doc.clientID)
        assert.is_string(doc.envdAccessToken)
        assert.are.equal(json.null, doc.domain)
        local sb = fake.sandboxes[doc.sandboxID]
        assert.are.equal("running", sb.state)
        assert.are.equal("base", sb.template)
        assert.are.equal(120000, sb.timeout_ms)
        assert.are.same({ owner = "lua" }, sb.metadata)
        assert.are.equal(doc.envdAccessToken, sb.envd_access_token)
        assert.are.same({ sb.id }, fake:running())
      end)
    end)

    it("defaults the lifetime to 300 s (v2) or 15 s (legacy POST /sandboxes); refuses bad bodies",
      function()
        with_fake(function(fake)
          local sb = create(fake)
          assert.are.equal(300000, sb.timeout_ms)
          local res, doc = api(fake, "POST", "/sandboxes", { templateID = "base", secure = true })
          assert.are.equal(201, res.status)
          assert.are.equal(15000, fake.sandboxes[doc.sandboxID].timeout_ms)
          res, doc = api(fake, "POST", "/v2/sandboxes", { metadata = {} })
          assert.are.equal(400, res.status)
          assert.are.equal(400, doc.code)
          res = api(fake, "POST", "/v2/sandboxes", { templateID = "base", timeout = 86401 })
          assert.are.equal(400, res.status)
        end)
      end)

    it("connect resumes a paused sandbox (201) and only extends a running one (200)", function()
      with_fake(function(fake)
        local sb = create(fake, { templateID = "base", timeout = 100 })
        local res, doc = api(fake, "POST", "/v2/sandboxes/" .. sb.id .. "/connect",
          { timeout = 10 })
        assert.are.equal(200, res.status)
        assert.are.equal(sb.id, doc.sandboxID)
        assert.are.equal(fake_e2b.ENVD_VERSION, doc.envdVersion)
        assert.are.equal(100000, sb.timeout_ms) -- not shortened
        res = api(fake, "POST", "/v2/sandboxes/" .. sb.id .. "/connect", { timeout = 500 })
        assert.are.equal(200, res.status)
        assert.are.equal(500000, sb.timeout_ms) -- extended
        assert.are.equal(204, (api(fake, "POST", "/sandboxes/" .. sb.id .. "/pause", {})).status)
        res = api(fake, "POST", "/v2/sandboxes/" .. sb.id .. "/connect", {})
        assert.are.equal(201, res.status)
        assert.are.equal("running", sb.state)
        assert.are.equal(300000, sb.timeout_ms) -- the server default
        res = api(fake, "POST", "/sandboxes/" .. sb.id .. "/connect", { timeout = 60 }) -- 2.x
        assert.are.equal(200, res.status)
        res, doc = api(fake, "POST", "/v2/sandboxes/nosuch/connect", {})
        assert.are.equal(404, res.status)
        assert.are.equal(404, doc.code)
      end)
    end)

    it("answers setTimeout, pause, kill and get as the real API (204 / 409 / 404)", function()
      with_fake(function(fake)
        local sb = create(fake)
        local path = "/sandboxes/" .. sb.id
        local before = task.now()
        assert.are.equal(204, (api(fake, "POST", path .. "/timeout", { timeout = 60 })).status)
        local after = task.now()
        assert.are.equal(60000, sb.timeout_ms)
        -- 60 s from the moment the request was handled, whenever that was
        assert.is_true(sb.expires_at >= before + 60 and sb.expires_at <= after + 60)
        local res, doc = api(fake, "GET", path)
        assert.are.equal(200, res.status)
        assert.are.equal("running", doc.state)
        assert.matches("^%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%dZ$", doc.endAt)
        assert.are.equal(204, (api(fake, "POST", path .. "/pause", {})).status)
        res, doc = api(fake, "POST", path .. "/pause", {})
        assert.are.equal(409, res.status)
        assert.are.equal(409, doc.code)
        assert.matches("already paused", doc.message)
        res = api(fake, "POST", path .. "/timeout", { timeout = 60 }) -- paused: not live
        assert.are.equal(404, res.status)
        assert.are.equal("paused", (select(2, api(fake, "GET", path))).state)
        local _, list = api(fake, "GET", "/v2/sandboxes")
        assert.are.equal(1, #list)
        assert.are.equal(0, #(select(2, api(fake, "GET", "/v2/sandboxes?state=running"))))
        assert.are.equal(204, (api(fake, "DELETE", path)).status)
        assert.are.equal("killed", sb.state)
        for _, call in ipairs({ { "DELETE", path }, { "GET", path }, { "POST", path .. "/pause" },
          { "POST", path .. "/timeout" }, { "POST", "/v2/sandboxes/" .. sb.id .. "/connect" } }) do
          res, doc = api(fake, call[1], call[2], call[1] == "POST" and { timeout = 5 } or nil)
          assert.are.equal(404, res.status)
          assert.are.same(404, doc.code)
        end
        assert.are.same({}, fake:running())
      end)
    end)

    it("counts every request, API and envd, with its status", function()
      with_fake(function(fake)
        local sb = create(fake)
        api(fake, "POST", "/sandboxes/" .. sb.id .. "/timeout", { timeout = 9 })
        start(fake, sb, "true")
        assert.are.equal(1, fake:count("^/v2/sandboxes$"))
        assert.are.equal(1, fake:count("^POST /v2/sandboxes$"))
        assert.are.equal(0, fake:count("^/v2/sandboxes$", "GET"))
        assert.are.equal(1, fake:count("/timeout$"))
        assert.are.equal(1, fake:count("^/process%.Process/Start$"))
        assert.are.equal(3, #fake.requests)
        local r = fake.requests[3]
        assert.are.same({ "POST", "/process.Process/Start", 200, "envd", sb.id },
          { r.method, r.path, r.status, r.kind, r.sandbox_id })
        assert.are.equal(201, fake.requests[1].status)
        assert.are.equal(204, fake.requests[2].status)
        assert.is_number(r.at)
      end)
    end)
  end)

  describe("faults", function()
    it("are consumed in order, once each unless told, with their status, body and headers",
      function()
        with_fake(function(fake)
          fake:fail({ method = "POST", path = "^/v2/sandboxes$", status = 429,
            headers = { ["Retry-After"] = "1" } })
          fake:fail({ method = "POST", path = "^/v2/sandboxes$", status = 503, times = 2,
            body = { code = 503, message = "busy" } })
          local res, doc = api(fake, "POST", "/v2/sandboxes", { templateID = "base" })
          assert.are.equal(429, res.status)
          assert.are.equal("1", res:header("retry-after"))
          assert.are.same({ code = 429, message = "injected fault" }, doc)
          for _ = 1, 2 do
            res, doc = api(fake, "POST", "/v2/sandboxes", { templateID = "base" })
            assert.are.equal(503, res.status)
            assert.are.equal("busy", doc.message)
          end
          assert.are.equal(201, (api(fake, "POST", "/v2/sandboxes", { templateID = "base" }))
            .status)
          assert.are.same({}, fake.faults)
          assert.are.equal(4, fake:count("^/v2/sandboxes$"))
          assert.is_true(fake.requests[1].fault)
          assert.are.equal(429, fake.requests[1].status)
          -- a fault that does not match is left for later
          fake:fail({ method = "DELETE", status = 500 })
          assert.are.equal(200, (api(fake, "GET", "/v2/sandboxes")).status)
          assert.are.equal(1, #fake.faults)
        end)
      end)

    it("delay, then answer normally; drop; truncate; stall", function()
      with_fake(function(fake)
        fake:fail({ path = "^/v2/sandboxes$", delay = 0.3 })
        local t0 = task.now()
        local sb = create(fake)
        assert.is_true(task.now() - t0 >= 0.28)
        fake:fail({ path = "/timeout$", drop = true })
        local res, _, code = http.request({ method = "POST", url = fake.api_url .. "/sandboxes/"
          .. sb.id .. "/timeout", headers = { ["X-API-KEY"] = fake.api_key },
          json = { timeout = 5 }, timeout = T })
        assert.is_nil(res)
        assert.are.equal("closed", code)
        assert.are.equal(300000, sb.timeout_ms) -- not applied
        fake:fail({ method = "GET", truncate = true })
        res, _, code = http.request({ url = fake.api_url .. "/v2/sandboxes",
          headers = { ["X-API-KEY"] = fake.api_key }, timeout = T })
        assert.is_nil(res)
        assert.are.equal("closed", code)
        fake:fail({ method = "GET", stall = 20 })
        t0 = task.now()
        res, _, code = http.request({ url = fake.api_url .. "/v2/sandboxes",
          headers = { ["X-API-KEY"] = fake.api_key }, timeout = 0.5 })
        assert.is_nil(res)
        assert.are.equal("timeout", code)
        assert.is_true(task.now() - t0 < 10) -- the client gave up, long before the stall ended
        -- a stall that outlives its client ends by itself; the next request is served
        assert.are.equal(200, (api(fake, "GET", "/v2/sandboxes")).status)
      end)
    end)

    it("hold: a request is answered only once hold() is true", function()
      with_fake(function(fake)
        local released = false
        fake:fail({ path = "^/v2/sandboxes$", hold = function()
          return released
        end })
        local t = task.spawn(create, fake)
        eventually(function()
          return fake:count("^/v2/sandboxes$") == 1
        end, "the request arrived")
        assert.are.same({}, fake:running()) -- held before anything was made
        released = true
        local sb = assert(t:wait(T))
        assert.are.same({ sb.id }, fake:running())
      end)
    end)

    it("on a process stream: drop after the start event, truncate without the end", function()
      with_fake(function(fake)
        local sb = create(fake)
        fake:fail({ path = "^/process%.Process/Start$", truncate = true })
        local list = start(fake, sb, "echo one")
        local out, _, fin, eos = outcome(list)
        assert.are.equal("one\n", out)
        assert.is_nil(fin)
        assert.is_nil(eos)
        fake:fail({ path = "^/process%.Process/Start$", truncate = "end" })
        out, _, fin, eos = outcome((start(fake, sb, "echo two")))
        assert.are.equal("two\n", out)
        assert.is_nil(fin)
        assert.are.same({}, eos)
        fake:fail({ path = "^/process%.Process/Start$", drop = true })
        local s = open_start(fake, sb, "sleep 0.3; echo three")
        assert.are.equal(200, s.status)
        local first = assert(s.next())
        assert.is_number(first.msg.event.start.pid)
        local none, err = s.next()
        assert.is_nil(none)
        assert.is_string(err)
        -- the command was not stopped by the dropped connection
        local c = command_of(fake, first.msg.event.start.pid)
        eventually(function()
          return c.exit_code == 0
        end, "the command finishes")
      end)
    end)
  end)

  describe("sandbox lifetime", function()
    it("expires a sandbox at its timeout: killed, processes killed, files removed", function()
      with_fake(function(fake)
        local sb = create(fake, { templateID = "base", timeout = 1 })
        local s = open_start(fake, sb, "echo started; sleep 30")
        local pid = assert(s.next()).msg.event.start.pid
        assert.is_true(alive(pid))
        eventually(function()
          return sb.state == "killed"
        end, "expiry", 3)
        eventually(function()
          return not alive(pid)
        end, "the process is killed")
        assert.is_nil(fs.stat(sb.root))
        local res = api(fake, "GET", "/sandboxes/" .. sb.id)
        assert.are.equal(404, res.status)
      end)
    end)

    it("expires a sandbox created with autoPause into paused; fake:expire ends one now",
      function()
        with_fake(function(fake)
          local sb = create(fake, { templateID = "base", timeout = 60, autoPause = true })
          fake:expire(sb.id)
          assert.are.equal("paused", sb.state)
          assert.are.equal("directory", fs.stat(sb.home).type) -- a paused sandbox keeps files
          local sb2 = create(fake, { templateID = "base" })
          fake:expire(sb2.id)
          assert.are.equal("killed", sb2.state)
          local res = api(fake, "POST", "/v2/sandboxes/" .. sb.id .. "/connect", {})
          assert.are.equal(201, res.status)
        end)
      end)

    it("stop kills every process it started, also those a command left behind", function()
      local pids = {}
      local root, staged
      helpers.run(function()
        local fake = fake_e2b.start()
        local sb = create(fake)
        root = sb.root
        staged = "/tmp/paperclip-stdin-" .. util.uuid()
        local res = assert(http.request({ method = "POST", url = fake.sandbox_url .. "/files?path="
          .. staged, headers = envd_headers(sb, { ["Content-Type"] = "application/octet-stream" }),
          body = "x", timeout = T }))
        assert.are.equal(200, res.status)
        -- a detached grandchild in its own session, then a running command
        local out = outcome((start(fake, sb, "setsid sleep 60 > /dev/null 2>&1 & echo $!")))
        pids[#pids + 1] = tonumber(out:match("%d+"))
        local s = open_start(fake, sb, "sleep 60")
        pids[#pids + 1] = assert(s.next()).msg.event.start.pid
        -- a child that dropped the environment, under a command still running
        local s2 = open_start(fake, sb, "env -i sleep 60 & echo $!; wait")
        assert(s2.next())
        out = util.base64_decode(assert(s2.next()).msg.event.data.stdout)
        pids[#pids + 1] = tonumber(out:match("%d+"))
        for _, pid in ipairs(pids) do
          assert.is_true(alive(pid), "pid " .. pid)
        end
        fake:stop()
        for _, pid in ipairs(pids) do
          eventually(function()
            return not alive(pid)
          end, "pid " .. pid .. " is killed")
        end
      end)
      assert.is_nil(fs.stat(root))
      assert.is_nil(fs.stat(staged))
    end)
  end)

  describe("envd", function()
    it("routes by E2b-Sandbox-Id: 502 unless running, 401 on a wrong token, health 204",
      function()
        with_fake(function(fake)
          local sb = create(fake)
          local res = assert(http.request({ url = fake.sandbox_url .. "/health",
            headers = { ["E2b-Sandbox-Id"] = sb.id }, timeout = T }))
          assert.are.equal(204, res.status) -- no token needed
          res = rpc(fake, sb, "process.Process/List", {}, { ["X-Access-Token"] = "wrong" })
          assert.are.equal(401, res.status)
          assert.are.equal(401, res:json().code)
          assert.matches("unauthorized access", res:json().message)
          local _, doc = rpc(fake, sb, "process.Process/List", {})
          assert.are.same({ processes = {} }, doc)
          local list, sres = start(fake, sb, "true", { timeout_ms = nil })
          assert.are.equal(200, sres.status)
          assert.are.equal(3, #list)
          api(fake, "POST", "/sandboxes/" .. sb.id .. "/pause", {})
          for _, path in ipairs({ "/health", "/process.Process/List" }) do
            res = assert(http.request({ method = path == "/health" and "GET" or "POST",
              url = fake.sandbox_url .. path, headers = envd_headers(sb), timeout = T,
              body = path == "/health" and nil or "{}" }))
            assert.are.equal(502, res.status)
            assert.are.same({ sandboxId = sb.id, message = "The sandbox was not found",
              code = 502 }, res:json())
          end
          res = rpc(fake, { id = "nosuch" }, "process.Process/List", {})
          assert.are.equal(502, res.status)
          res = assert(http.request({ method = "POST", url = fake.sandbox_url
            .. "/process.Process/List", json = {}, timeout = T }))
          assert.are.equal(400, res.status)
          local sb2 = create(fake)
          res = assert(http.request({ url = fake.sandbox_url .. "/health", timeout = T,
            headers = { Host = "49983-" .. sb2.id .. "." .. fake.domain } }))
          assert.are.equal(204, res.status) -- routed by the Host form <port>-<id>.<domain>
          res = assert(http.request({ url = fake.sandbox_url .. "/health", timeout = T,
            headers = { ["E2b-Sandbox-Id"] = sb2.id, ["E2b-Sandbox-Port"] = "8080" } }))
          assert.are.equal(502, res.status)
          assert.are.equal(8080, res:json().port)
        end)
      end)

    it("Start streams start, data, end and end-of-stream, with envd's exit reporting", function()
      with_fake(function(fake)
        local sb = create(fake)
        local list, res = start(fake, sb, "echo hi; echo oops >&2")
        assert.are.equal("application/connect+json", res:header("content-type"))
        assert.are.equal(0, list[1].flags)
        local pid = list[1].msg.event.start.pid
        assert.is_number(pid)
        local out, err, fin, eos = outcome(list)
        assert.are.same({ "hi\n", "oops\n" }, { out, err })
        assert.are.same({ exited = true, status = "exit status 0" }, fin)
        assert.are.same({}, eos)
        assert.are.equal(2, list[#list].flags)
        local _
        _, _, fin = outcome((start(fake, sb, "exit 3")))
        assert.are.same({ exitCode = 3, exited = true, status = "exit status 3",
          error = "exit status 3" }, fin)
        _, _, fin = outcome((start(fake, sb, "kill -TERM $$")))
        assert.are.same({ exitCode = -1, exited = false, status = "signal: terminated",
          error = "signal: terminated" }, fin)
        local c = command_of(fake, pid)
        assert.are.same({ "/bin/bash", { "-l", "-c", "echo hi; echo oops >&2" }, 0 },
          { c.cmd, c.args, c.exit_code })
        assert.is_nil(sb.processes[pid]) -- gone from the table once it exited
        -- a big output arrives whole, in data events of at most 32 KiB
        list = start(fake, sb, "head -c 200000 /dev/zero")
        out = outcome(list)
        assert.are.equal(200000, #out)
        for _, e in ipairs(list) do
          if e.msg.event and e.msg.event.data then
            assert.is_true(#util.base64_decode(e.msg.event.data.stdout) <= 32768)
          end
        end
      end)
    end)

    it("Start runs in the mapped cwd with HOME, envs and the sandbox env; bad cwd and bodies",
      function()
        with_fake(function(fake)
          local _, doc = api(fake, "POST", "/v2/sandboxes", { templateID = "base",
            envVars = { GLOBAL = "g", SHADOW = "sandbox" } })
          local sb = fake.sandboxes[doc.sandboxID]
          local out = outcome((start(fake, sb, 'pwd; echo "$HOME|$GLOBAL|$SHADOW|$E2B_SANDBOX_ID"',
            { envs = { SHADOW = "command" } })))
          assert.are.equal(sb.home .. "\n" .. sb.home .. "|g|command|" .. sb.id .. "\n", out)
          assert(fs.mkdir(sb.home .. "/work"))
          for _, cwd in ipairs({ "/home/user/work", "~/work", "work", sb.home .. "/work" }) do
            assert.are.equal(sb.home .. "/work\n", (outcome((start(fake, sb, "pwd",
              { cwd = cwd })))))
          end
          assert.are.equal(sb.root .. "\n", (outcome((start(fake, sb, "pwd", { cwd = "/" })))))
          assert.are.equal("/tmp\n", (outcome((start(fake, sb, "pwd", { cwd = "/tmp" })))))
          local res = assert(http.request({ method = "POST", url = fake.sandbox_url
            .. "/process.Process/Start", headers = envd_headers(sb, { ["Content-Type"] =
            "application/connect+json", Authorization = "Basic cm9vdDo=" }), timeout = T,
            body = envelope({ process = { cmd = "/bin/sh",
              args = { "-c", 'echo "$USER $HOME"; pwd' } } }) }))
          assert.are.equal(("root %s/root\n%s/root\n"):format(sb.root, sb.root),
            (outcome((split(res.body)))))
          local list = start(fake, sb, "true", { cwd = "/nonexistent-dir" })
          assert.are.equal(1, #list)
          assert.are.same({ error = { code = "invalid_argument",
            message = "cwd '/nonexistent-dir' does not exist" } }, list[1].msg)
          list = start(fake, sb, "", { body = { process = { cmd = "" } } })
          assert.are.equal("invalid_argument", list[1].msg.error.code)
          list = start(fake, sb, "", { body = { process = { cmd = "/no/such/program" } } })
          assert.are.equal("internal", list[1].msg.error.code)
          res = assert(http.request({ method = "POST", url = fake.sandbox_url
            .. "/process.Process/Start", headers = envd_headers(sb), json = {}, timeout = T }))
          assert.are.equal(415, res.status)
        end)
      end)

    it("stdin: SendInput and CloseStdin reach the process; unknown pids are not_found", function()
      with_fake(function(fake)
        local sb = create(fake)
        local s = open_start(fake, sb, "cat; echo done", { stdin = true })
        local pid = assert(s.next()).msg.event.start.pid
        assert.is_true(sb.processes[pid].stdin_open)
        local res, doc = rpc(fake, sb, "process.Process/SendInput", { process = { pid = pid },
          input = { stdin = util.base64_encode("line1\n") } })
        assert.are.equal(200, res.status)
        assert.are.same({}, doc)
        assert.are.equal(200, (rpc(fake, sb, "process.Process/CloseStdin",
          { process = { pid = pid } })).status)
        local list = {}
        while true do
          local e = s.next()
          if not e then
            break
          end
          list[#list + 1] = e
        end
        local out, _, fin = outcome(list)
        assert.are.equal("line1\ndone\n", out)
        assert.are.same({ exited = true, status = "exit status 0" }, fin)
        res, doc = rpc(fake, sb, "process.Process/SendInput", { process = { pid = pid },
          input = { stdin = "eA==" } })
        assert.are.equal(404, res.status)
        assert.are.same({ code = "not_found", message = "process with pid " .. pid
          .. " not found" }, doc)
        -- without stdin: an internal error, as envd answers
        s = open_start(fake, sb, "sleep 5")
        pid = assert(s.next()).msg.event.start.pid
        res, doc = rpc(fake, sb, "process.Process/SendInput", { process = { pid = pid },
          input = { stdin = "eA==" } })
        assert.are.equal(500, res.status)
        assert.are.equal("internal", doc.code)
        assert.are.equal(200, (rpc(fake, sb, "process.Process/SendSignal",
          { process = { pid = pid }, signal = "SIGNAL_SIGKILL" })).status)
      end)
    end)

    it("stdin: output streams back while stdin is open; no stdin field means open", function()
      with_fake(function(fake)
        local sb = create(fake)
        -- envd keeps a pipe unless stdin is false (older clients send no field)
        local s = open_start(fake, sb, "cat", { stdin = "absent" })
        local pid = assert(s.next()).msg.event.start.pid
        assert.is_true(sb.processes[pid].stdin_open)
        assert.is_true(fake.commands[#fake.commands].stdin)
        for _, line in ipairs({ "one\n", "two\n" }) do
          assert.are.equal(200, (rpc(fake, sb, "process.Process/SendInput", { process = {
            pid = pid }, input = { stdin = util.base64_encode(line) } })).status)
          local e = assert(s.next()) -- the echo comes back before stdin is closed
          assert.are.equal(line, util.base64_decode(e.msg.event.data.stdout))
        end
        assert.are.equal(200, (rpc(fake, sb, "process.Process/CloseStdin",
          { process = { pid = pid } })).status)
        local e = assert(s.next())
        assert.are.same({ exited = true, status = "exit status 0" }, e.msg.event["end"])
        assert.are.same({ flags = 2, msg = {} }, assert(s.next()))
      end)
    end)

    it("List shows running processes; SendSignal kills the group; Connect re-attaches", function()
      with_fake(function(fake)
        local sb = create(fake)
        local s = open_start(fake, sb, "sleep 30 & sleep 30; echo never")
        local pid = assert(s.next()).msg.event.start.pid
        local _, doc = rpc(fake, sb, "process.Process/List", {})
        assert.are.equal(1, #doc.processes)
        assert.are.equal(pid, doc.processes[1].pid)
        assert.are.same({ "/bin/bash", { "-l", "-c", "sleep 30 & sleep 30; echo never" } },
          { doc.processes[1].config.cmd, doc.processes[1].config.args })
        -- a second stream on the same process
        local payload = assert(json.encode({ process = { pid = pid } }))
        local c = assert(http.open({ method = "POST", url = fake.sandbox_url
          .. "/process.Process/Connect", headers = envd_headers(sb, { ["Content-Type"] =
          "application/connect+json" }), body = string.pack(">BI4", 0, #payload) .. payload,
          timeout = T }))
        local res = rpc(fake, sb, "process.Process/SendSignal", { process = { pid = pid },
          signal = "SIGNAL_SIGTERM" })
        assert.are.equal(200, res.status)
        local buf = ""
        while true do
          local chunk = c:read(T)
          if not chunk then
            break
          end
          buf = buf .. chunk
        end
        local list = split(buf)
        assert.are.equal(pid, list[1].msg.event.start.pid)
        local out, _, fin = outcome(list)
        assert.are.equal("", out)
        assert.are.equal("signal: terminated", fin.status)
        res, doc = rpc(fake, sb, "process.Process/SendSignal", { process = { pid = pid },
          signal = "SIGNAL_SIGKILL" })
        assert.are.equal(404, res.status)
        assert.are.equal("not_found", doc.code)
        _, doc = rpc(fake, sb, "process.Process/List", {})
        assert.are.same({}, doc.processes)
        res, doc = rpc(fake, sb, "process.Process/Nope", {})
        assert.are.equal(501, res.status)
        assert.are.equal("unimplemented", doc.code)
      end)
    end)

    it("Connect-Timeout-Ms: deadline_exceeded with the partial output; the process is killed",
      function()
        with_fake(function(fake)
          local sb = create(fake)
          local t0 = task.now()
          local list = start(fake, sb, "echo partial; sleep 30", { timeout_ms = "500" })
          local took = task.now() - t0
          -- at the deadline, not before; and long before the command's own 30 s
          assert.is_true(took >= 0.45 and took < 15, "took " .. took)
          local out, _, fin, eos = outcome(list)
          assert.are.equal("partial\n", out)
          assert.is_nil(fin)
          assert.are.same({ error = { code = "deadline_exceeded",
            message = "context deadline exceeded" } }, eos)
          local c = fake.commands[#fake.commands]
          assert.are.equal(500, c.timeout_ms)
          eventually(function()
            return c.signal == "SIGKILL"
          end, "killed at the deadline")
          assert.is_true(c.deadline_exceeded)
          assert.are.same({}, sb.processes)
        end)
      end)

    it("sends keepalive events when idle for Keepalive-Ping-Interval seconds", function()
      with_fake(function(fake)
        local sb = create(fake)
        local payload = assert(json.encode({ process = { cmd = "/bin/sh",
          args = { "-c", "sleep 1.3; echo x" } } }))
        local res = assert(http.request({ method = "POST", url = fake.sandbox_url
          .. "/process.Process/Start", headers = envd_headers(sb, { ["Content-Type"] =
          "application/connect+json", ["Keepalive-Ping-Interval"] = "1" }), timeout = T,
          body = string.pack(">BI4", 0, #payload) .. payload }))
        local kinds = {}
        for _, e in ipairs(split(res.body)) do
          kinds[#kinds + 1] = e.flags == 2 and "eos" or next(e.msg.event)
        end
        assert.are.same({ "start", "keepalive", "data", "end", "eos" }, kinds)
      end)
    end)

    it("files: multipart and raw writes, read back; /tmp files are the machine's, others refused",
      function()
        with_fake(function(fake)
          local sb = create(fake)
          local staged = "/tmp/paperclip-stdin-" .. util.uuid()
          local boundary = "----formdata-undici-0123"
          local body = "--" .. boundary .. "\r\nContent-Disposition: form-data; name=\"file\"; "
            .. "filename=\"" .. staged .. "\"\r\nContent-Type: application/octet-stream\r\n\r\n"
            .. "input\r\n--" .. boundary .. "--\r\n"
          local res = assert(http.request({ method = "POST", url = fake.sandbox_url
            .. "/files?path=" .. staged:gsub("/", "%%2F"), headers = envd_headers(sb, {
            ["Content-Type"] = "multipart/form-data; boundary=" .. boundary }), body = body,
            timeout = T }))
          assert.are.equal(200, res.status)
          assert.are.same({ { path = staged, name = staged:match("[^/]+$"), type = "file" } },
            res:json())
          assert.are.equal("input", fs.read(staged))
          assert.are.equal(sb.id, fake.tmp_files[staged])
          assert.are.equal("input", (outcome((start(fake, sb, "cat < '" .. staged .. "'")))))
          -- raw upload into home, relative path, directories made
          res = assert(http.request({ method = "POST", url = fake.sandbox_url
            .. "/files?path=notes%2Fa.txt", headers = envd_headers(sb, { ["Content-Type"] =
            "application/octet-stream" }), body = "hello", timeout = T }))
          assert.are.equal(200, res.status)
          assert.are.equal("/home/user/notes/a.txt", res:json()[1].path)
          assert.are.equal("hello", fs.read(sb.home .. "/notes/a.txt"))
          res = assert(http.request({ url = fake.sandbox_url .. "/files?path=%2Fhome%2Fuser%2F"
            .. "notes%2Fa.txt", headers = envd_headers(sb), timeout = T }))
          assert.are.same({ 200, "hello" }, { res.status, res.body })
          res = assert(http.request({ url = fake.sandbox_url .. "/files?path=%2Fnope",
            headers = envd_headers(sb), timeout = T }))
          assert.are.equal(404, res.status)
          -- refused: deeper /tmp paths, "..", a /tmp file that is not ours, a wrong token
          local their_dir <close> = helpers.tempdir("fake-e2b-spec-")
          local theirs = their_dir.path .. "/f"
          assert(fs.write(theirs, "theirs"))
          local bad = { "/tmp/a/b", "/home/user/../../etc/passwd", theirs:gsub("/f$", ""),
            "/tmp/" .. theirs:match("^/tmp/(.*)$") }
          for _, p in ipairs(bad) do
            res = assert(http.request({ method = "POST", url = fake.sandbox_url .. "/files?path="
              .. p:gsub("/", "%%2F"), headers = envd_headers(sb, { ["Content-Type"] =
              "application/octet-stream" }), body = "x", timeout = T }))
            assert.is_true(res.status >= 400, p .. ": " .. res.status)
          end
          assert.are.equal("theirs", fs.read(theirs))
          res = assert(http.request({ method = "POST", url = fake.sandbox_url .. "/files?path=x",
            headers = envd_headers(sb, { ["X-Access-Token"] = "wrong", ["Content-Type"] =
            "application/octet-stream" }), body = "x", timeout = T }))
          assert.are.equal(401, res.status)
          -- Remove (filesystem.Filesystem/Remove)
          local doc
          res, doc = rpc(fake, sb, "filesystem.Filesystem/Remove", { path = staged })
          assert.are.same({ 200, {} }, { res.status, doc })
          assert.is_nil(fs.stat(staged))
          assert.is_nil(fake.tmp_files[staged])
          res, doc = rpc(fake, sb, "filesystem.Filesystem/Remove", { path = staged })
          assert.are.same({ 404, "not_found" }, { res.status, doc.code })
          res = rpc(fake, sb, "filesystem.Filesystem/Remove", { path = "notes" })
          assert.are.equal(200, res.status)
          assert.is_nil(fs.stat(sb.home .. "/notes"))
          -- a file staged by a sandbox goes when the sandbox is killed
          staged = "/tmp/paperclip-stdin-" .. util.uuid()
          res = assert(http.request({ method = "POST", url = fake.sandbox_url .. "/files?path="
            .. staged, headers = envd_headers(sb, { ["Content-Type"] = "application/octet-stream"
            }), body = "y", timeout = T }))
          assert.are.equal(200, res.status)
          api(fake, "DELETE", "/sandboxes/" .. sb.id)
          assert.is_nil(fs.stat(staged))
          assert.is_nil(fs.stat(sb.root))
        end)
      end)
  end)
end)
