-- spec/bridge/hostile_spec.lua: a hostile agent against the bridge, on raw TCP through the real
-- relay: path confusion in every encoding, header smuggling, CRLF injection, request smuggling,
-- oversized and slow requests, 500 connections at once. Whatever it sends, nothing outside the
-- route table reaches the API and the real key never comes back.
local bridge = require("host.bridge")
local duplex = require("host.duplex")
local fake_paperclip = require("spec.support.fake_paperclip")
local helpers = require("spec.helpers")
local rawtcp = require("host.core.rawtcp")
local task = require("host.task")

local T = 20
local KEY = "hostile-spec-real-key-0123456789"

local function opener(params)
  return duplex.process({ argv = { params.command, table.unpack(params.args) },
    on_stdout = params.on_stdout, on_stderr = params.on_stderr, timeout = params.timeout })
end

-- fn(b, api, answers) with a bridge; afterwards: every request the API saw is one the route
-- table allows, none carried anything but the real key, and no answer showed the real key.
local function with_bridge(fn, opts)
  helpers.run(function()
    local api <close> = fake_paperclip.start({ api_key = KEY })
    local o = { duplex = opener, helper = helpers.sandbox_helper(), api_url = api.url,
      api_key = KEY, run_id = "run-1" }
    for k, v in pairs(opts or {}) do
      o[k] = v
    end
    local b = assert(bridge.open(o))
    local answers = {}
    helpers.with_cleanup(fn, function()
      b:close()
    end, b, api, answers)
    for _, req in ipairs(api.requests) do
      assert.is_true(b.policy:allows(req.method, req.path), req.method .. " " .. req.path)
      assert.equal("Bearer " .. KEY, req.headers.authorization)
      assert.equal("run-1", req.headers["x-paperclip-run-id"])
    end
    for _, a in ipairs(answers) do
      assert.not_matches(KEY, a, 1, true)
    end
  end)
end

-- Send raw bytes on a fresh connection and read until the bridge closes it (bounded).
local function exchange(b, bytes, answers, opts)
  local c <close> = assert(rawtcp.connect("127.0.0.1", b.port, T))
  assert(c:send(bytes))
  if opts and opts.half_close then
    c:shutdown()
  end
  local got = {}
  while true do
    local data, err = c:recv(T)
    if not data then
      assert.is_nil(err, err)
      break
    end
    got[#got + 1] = data
  end
  local text = table.concat(got)
  answers[#answers + 1] = text
  return text
end

-- The statuses of every response in text, in order.
local function statuses(text)
  local list = {}
  for st in text:gmatch("HTTP/1%.1 (%d%d%d) ") do
    list[#list + 1] = tonumber(st)
  end
  return list
end

local function get(b, target, extra)
  return ("GET %s HTTP/1.1\r\nHost: h\r\nAuthorization: Bearer %s\r\n%sConnection: close\r\n\r\n")
    :format(target, b.token, extra or "")
end

describe("host.bridge against a hostile agent", function()
  it("refuses path confusion in every encoding", function()
    with_bridge(function(b, api, answers)
      local targets = {
        "/api/agents/me/../../admin", "/api/agents/./me", "/api/agents/%2e%2e/admin",
        "/api/agents/%2E%2e/admin", "/api/agents/.%2e/admin", "/api/issues/a%2fb",
        "/api/issues/a%2Fb", "/api/issues/a%5cb", "/api/issues/a\\b", "//api/agents/me",
        "/api//agents/me", "/api/agents/me/", "http://evil.example/api/agents/me", "*",
        "/api/agents/%c0%ae%c0%ae/admin", "/api/agents/%00", "/api/agents/me%0d%0aX-A:%20b",
        "/api/issues/%e2%80", "api/agents/me", "/api/agents/me#frag",
        "/api/agents/\xc3\xa9", "/api/%2e%2e/api/agents/me",
      }
      for _, target in ipairs(targets) do
        local st = statuses(exchange(b, get(b, target), answers))
        assert.equal(1, #st, target)
        assert.is_true(st[1] == 400 or st[1] == 403, target .. " gave " .. tostring(st[1]))
      end
      assert.equal(0, #api.requests)
    end)
  end)

  it("refuses header smuggling and CRLF injection, and drops what the agent may not send",
    function()
      with_bridge(function(b, api, answers)
        local cases = {
          { "X-A: b\r\n folded\r\n", 400 }, -- obs-fold
          { "X-A: b\rX-B: c\r\n", 400 }, -- a bare CR
          { "X-A: b\nX-B: c\r\n", 400 }, -- a bare LF
          { "Authorization: Bearer other\r\n", 401 }, -- a second Authorization
          { "Bad Name: x\r\n", 400 },
          { "X-A: \0\r\n", 400 },
        }
        for _, case in ipairs(cases) do
          local st = statuses(exchange(b, get(b, "/api/agents/me", case[1]), answers))
          assert.same({ case[2] }, st, case[1])
        end
        assert.equal(0, #api.requests)
        -- what the allowlist drops: the API sees its own credential and run id only
        local st = statuses(exchange(b, get(b, "/api/agents/me", "Cookie: c=1\r\n"
          .. "X-Paperclip-Run-Id: other\r\nX-Forwarded-For: 1.2.3.4\r\nHost: evil\r\n"), answers))
        assert.same({ 400 }, st) -- two Host headers
        st = statuses(exchange(b, get(b, "/api/agents/me", "Cookie: c=1\r\n"
          .. "X-Paperclip-Run-Id: other\r\nX-Forwarded-For: 1.2.3.4\r\n"), answers))
        assert.same({ 200 }, st)
        local seen = api:last().headers
        assert.is_nil(seen.cookie)
        assert.is_nil(seen["x-forwarded-for"])
        assert.equal("run-1", seen["x-paperclip-run-id"])
      end)
    end)

  it("refuses request smuggling: both framings, and a second request hidden in a body",
    function()
      with_bridge(function(b, api, answers)
        local auth = "Authorization: Bearer " .. b.token .. "\r\n"
        local both = "POST /api/issues/i1/comments HTTP/1.1\r\nHost: h\r\n" .. auth
          .. "Content-Type: application/json\r\nContent-Length: 4\r\n"
          .. "Transfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /admin HTTP/1.1\r\n\r\n"
        assert.same({ 400 }, statuses(exchange(b, both, answers)))
        local te = "POST /api/issues/i1/comments HTTP/1.1\r\nHost: h\r\n" .. auth
          .. "Content-Type: application/json\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"
        local st = statuses(exchange(b, te, answers))
        assert.equal(1, #st)
        assert.is_true(st[1] == 400 or st[1] == 501)
        assert.equal(0, #api.requests)
        -- a pipelined second request is a request of its own, checked like the first
        local hidden = "POST /api/issues/i1/comments HTTP/1.1\r\nHost: h\r\n" .. auth
          .. "Content-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
          .. "DELETE /api/companies/c1 HTTP/1.1\r\nHost: h\r\n" .. auth .. "\r\n"
        assert.same({ 200, 403 }, statuses(exchange(b, hidden, answers, { half_close = true })))
        assert.equal(1, #api.requests)
        assert.equal("{}", api:last().body)
      end)
    end)

  it("refuses oversized requests from their headers, and a chunked one as it grows", function()
    with_bridge(function(b, api, answers)
      local auth = "Authorization: Bearer " .. b.token .. "\r\n"
      local big = "PATCH /api/issues/i1 HTTP/1.1\r\nHost: h\r\n" .. auth
        .. "Content-Type: application/json\r\nContent-Length: 1048577\r\n\r\n"
      assert.same({ 413 }, statuses(exchange(b, big, answers)))
      local chunk = ("x"):rep(4096)
      local parts = { "PATCH /api/issues/i1 HTTP/1.1\r\nHost: h\r\n" .. auth
        .. "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n" }
      for _ = 1, 300 do
        parts[#parts + 1] = "1000\r\n" .. chunk .. "\r\n"
      end
      parts[#parts + 1] = "0\r\n\r\n"
      assert.same({ 413 }, statuses(exchange(b, table.concat(parts), answers)))
      assert.equal(0, #api.requests)
    end, { max_request_body = 1024 * 1024 })
  end)

  it("answers 408 to a request that never completes, and frees its connection", function()
    with_bridge(function(b, api, answers)
      local slow = "POST /api/issues/i1/comments HTTP/1.1\r\nHost: h\r\nAuthorization: Bearer "
        .. b.token .. "\r\nContent-Type: application/json\r\nContent-Length: 10\r\n\r\n{"
      assert.same({ 408 }, statuses(exchange(b, slow, answers)))
      assert.same({ 408 }, statuses(exchange(b, "GET /api/agents/me HTTP/1.1\r\nHo", answers)))
      assert.equal(0, #api.requests)
      helpers.eventually(function()
        return b:stats().open == 0
      end, "every stream ended")
    end, { request_timeout = 0.3, idle_timeout = 0.3 })
  end)

  it("serves 500 connections at once", function()
    with_bridge(function(b, api, answers)
      local fns = {}
      for i = 1, 500 do
        fns[i] = function()
          return statuses(exchange(b, get(b, "/api/issues/i" .. i), answers))[1]
        end
      end
      for i, res in ipairs(task.all(fns)) do
        assert.equal(200, res[1], "connection " .. i)
      end
      assert.equal(500, #api.requests)
      assert.equal(500, b:stats().connections)
      helpers.eventually(function()
        return b:stats().open == 0
      end, "every stream ended")
    end)
  end)
end)
