-- spec/host/http_server_spec.lua: host.http's server against raw TCP clients (bytes no HTTP
-- client would send) and against the client, through the real host binary.
local helpers = require("spec.helpers")
local http = require("host.http")
local raw_connect = require("host.core.rawtcp").connect -- spec-only raw TCP client
local proc = require("host.proc")
local task = require("host.task")

local T = 5 -- every receive in this file waits at most this long

-- Runs fn(server, state) in a task with a server on an ephemeral port; closes it afterwards.
local function with_server(handler, fn, opts)
  local state = {}
  return helpers.serving(helpers.merged({ handler = function(req, res)
    return handler(req, res, state)
  end }, opts), fn, state)
end

local fails_with = helpers.fails_with

local function connect(srv)
  return assert(raw_connect("127.0.0.1", srv.port, T))
end

-- Receive until done(buffer) is true or the peer closes; returns what arrived and whether the
-- connection was closed by the peer.
local function recv_until(conn, done)
  local buf = ""
  while not (done and done(buf)) do
    local data, err = conn:recv(T)
    if not data then
      assert(err == nil, err)
      return buf, true
    end
    buf = buf .. data
  end
  return buf, false
end

local function recv_all(conn)
  return recv_until(conn, nil)
end

-- Count of complete responses with a Content-Length framed body in buf.
local function responses(buf)
  local n, pos = 0, 1
  while true do
    local head_end = buf:find("\r\n\r\n", pos, true)
    if not head_end then
      return n
    end
    local len = tonumber(buf:sub(pos, head_end):match("\r\n[Cc]ontent%-[Ll]ength: (%d+)")) or 0
    if #buf < head_end + 3 + len then
      return n
    end
    n, pos = n + 1, head_end + 4 + len
  end
end

local function has_responses(count)
  return function(buf)
    return responses(buf) >= count
  end
end

local function hello()
  return 200, { ["Content-Type"] = "text/plain" }, "hello"
end

local GET = "GET /x HTTP/1.1\r\nHost: t\r\n\r\n"

describe("host.http server", function()
  it("answers with the handler's status, headers and body", function()
    with_server(hello, function(srv)
      local c = connect(srv)
      c:send(GET)
      local buf, closed = recv_until(c, has_responses(1))
      assert.is_false(closed)
      assert.matches("^HTTP/1%.1 200 OK\r\n", buf)
      assert.matches("\r\nContent%-Type: text/plain\r\n", buf)
      assert.matches("\r\nContent%-Length: 5\r\n", buf)
      assert.matches("\r\n\r\nhello$", buf)
      c:close()
    end)
  end)

  it("gives the handler the request as sent", function()
    local got
    with_server(function(req)
      got = req
      return 204
    end, function(srv)
      local c = connect(srv)
      c:send("PUT /a%20b/c?x=1&y=%2F HTTP/1.1\r\nHost: t\r\nX-One: 1\r\nx-one: 2\r\n"
        .. "Content-Length: 3\r\n\r\nabc")
      local buf = recv_until(c, has_responses(1))
      assert.matches("^HTTP/1%.1 204 No Content\r\n", buf)
      assert.is_nil(buf:match("Content%-Length"))
      c:close()
    end)
    assert.equal("PUT", got.method)
    assert.equal("/a%20b/c?x=1&y=%2F", got.target)
    assert.equal("/a%20b/c", got.path)
    assert.equal("x=1&y=%2F", got.query)
    assert.equal("1.1", got.version)
    assert.equal("1, 2", got.headers["x-one"])
    assert.same({ "X-One", "1" }, got.header_list[2])
    assert.same({ "x-one", "2" }, got.header_list[3])
    assert.equal("abc", got.body)
    assert.equal("127.0.0.1", got.remote_addr)
    assert.is_true(math.type(got.remote_port) == "integer" and got.remote_port > 0)
  end)

  it("decodes a chunked request body", function()
    local body
    with_server(function(req)
      body = req.body
      return 200, {}, "ok"
    end, function(srv)
      local c = connect(srv)
      c:send("POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
        .. "3\r\nabc\r\n5;ext=1\r\ndefgh\r\n0\r\nTrailer: x\r\n\r\n")
      assert.matches("^HTTP/1%.1 200", (recv_until(c, has_responses(1))))
      c:close()
    end)
    assert.equal("abcdefgh", body)
  end)

  it("streams a chunked response with start, write and finish", function()
    with_server(function(_req, res)
      assert(res:start(200, { ["X-Stream"] = "1" }))
      assert(res:write("abc"))
      assert(res:write(""))
      assert(res:write("defgh"))
      assert(res:finish())
    end, function(srv)
      local c = connect(srv)
      c:send(GET)
      local buf = recv_until(c, function(b)
        return b:find("0\r\n\r\n$") ~= nil
      end)
      assert.matches("\r\nTransfer%-Encoding: chunked\r\n", buf)
      assert.matches("\r\n\r\n3\r\nabc\r\n5\r\ndefgh\r\n0\r\n\r\n$", buf)
      c:close()
    end)
  end)

  it("streams with a Content-Length when start is given one", function()
    with_server(function(_req, res)
      res:start(200, { ["Content-Length"] = "6" })
      res:write("abc")
      res:write("def")
    end, function(srv)
      local res = assert(http.request({ url = srv.url .. "/" }))
      assert.equal("abcdef", res.body)
      assert.equal("6", res.headers["content-length"])
      assert.is_nil(res.headers["transfer-encoding"])
    end)
  end)

  it("keeps a connection alive for the next request", function()
    with_server(hello, function(srv)
      local c = connect(srv)
      c:send(GET)
      assert.equal(1, responses((recv_until(c, has_responses(1)))))
      c:send(GET)
      assert.equal(1, responses((recv_until(c, has_responses(1)))))
      assert.equal(1, srv:stats().accepted)
      assert.equal(2, srv:stats().requests)
      c:close()
    end)
  end)

  it("answers pipelined requests in order", function()
    with_server(function(req)
      local n = tonumber(req.query)
      task.sleep((4 - n) * 0.05) -- the first takes longest
      return 200, {}, "response-" .. n
    end, function(srv)
      local c = connect(srv)
      c:send("GET /?1 HTTP/1.1\r\nHost: t\r\n\r\nGET /?2 HTTP/1.1\r\nHost: t\r\n\r\n"
        .. "GET /?3 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
      local buf, closed = recv_all(c)
      assert.is_true(closed)
      local order = {}
      for n in buf:gmatch("response%-(%d)") do
        order[#order + 1] = tonumber(n)
      end
      assert.same({ 1, 2, 3 }, order)
      assert.matches("Connection: close\r\n\r\nresponse%-3$", buf)
    end)
  end)

  it("answers Expect: 100-continue before the body is sent", function()
    with_server(function(req)
      return 200, {}, "got " .. req.body
    end, function(srv)
      local c = connect(srv)
      c:send("POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n")
      local interim = recv_until(c, function(b)
        return b:find("\r\n\r\n", 1, true) ~= nil
      end)
      assert.equal("HTTP/1.1 100 Continue\r\n\r\n", interim)
      c:send("body")
      assert.matches("^HTTP/1%.1 200 OK.*got body$", (recv_until(c, has_responses(1))))
      c:close()
    end)
  end)

  it("refuses a malformed request with 400 and closes", function()
    with_server(hello, function(srv)
      local c = connect(srv)
      c:send("GET /x HTTP/1.1\nHost: t\n\n") -- bare LF
      local buf, closed = recv_all(c)
      assert.is_true(closed)
      assert.matches("^HTTP/1%.1 400 Bad Request\r\n", buf)
      assert.matches("\r\nConnection: close\r\n", buf)
    end)
  end)

  it("refuses an oversize head with 431", function()
    with_server(hello, function(srv)
      local c = connect(srv)
      c:send("GET /x HTTP/1.1\r\nHost: t\r\nX-Big: " .. string.rep("a", 2000) .. "\r\n\r\n")
      local buf, closed = recv_all(c)
      assert.is_true(closed)
      assert.matches("^HTTP/1%.1 431 ", buf)
    end, { max_head = 1024 })
  end)

  it("refuses too many headers with 431", function()
    with_server(hello, function(srv)
      local c = connect(srv)
      c:send("GET /x HTTP/1.1\r\nHost: t\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n")
      assert.matches("^HTTP/1%.1 431 ", (recv_all(c)))
    end, { max_headers = 3 })
  end)

  it("refuses an oversize body with 413, even after Expect", function()
    local called = false
    with_server(function()
      called = true
      return 200, {}, ""
    end, function(srv)
      local c = connect(srv)
      c:send("POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 2000\r\nExpect: 100-continue\r\n\r\n")
      local buf, closed = recv_all(c)
      assert.is_true(closed)
      assert.matches("^HTTP/1%.1 413 ", buf)
      -- and through the client, whose request body was already on its way
      local res = assert(http.request({ url = srv.url .. "/", body = string.rep("b", 5000) }))
      assert.equal(413, res.status)
    end, { max_body = 1000 })
    assert.is_false(called)
  end)

  it("refuses a chunked body over max_body with 413", function()
    with_server(hello, function(srv)
      local c = connect(srv)
      c:send("POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n400\r\n")
      assert.matches("^HTTP/1%.1 413 ", (recv_all(c)))
    end, { max_body = 1000 })
  end)

  it("refuses bad chunked framing with 400", function()
    with_server(hello, function(srv)
      local c = connect(srv)
      c:send("POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n")
      assert.matches("^HTTP/1%.1 400 ", (recv_all(c)))
    end)
  end)

  it("refuses an unknown transfer coding with 501", function()
    with_server(hello, function(srv)
      local c = connect(srv)
      c:send("POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip, chunked\r\n\r\n")
      assert.matches("^HTTP/1%.1 501 ", (recv_all(c)))
    end)
  end)

  it("refuses an unsupported HTTP version with 505", function()
    with_server(hello, function(srv)
      local c = connect(srv)
      c:send("GET / HTTP/2.0\r\nHost: t\r\n\r\n")
      assert.matches("^HTTP/1%.1 505 ", (recv_all(c)))
    end)
  end)

  it("answers 408 and closes when a head stalls past head_timeout", function()
    with_server(hello, function(srv)
      local c = connect(srv)
      local t0 = task.now()
      c:send("GET / HTTP/1.1\r\nHost:")
      local buf, closed = recv_all(c)
      local took = task.now() - t0
      assert.is_true(closed)
      assert.matches("^HTTP/1%.1 408 ", buf)
      -- at head_timeout, not before; and before this client's own T would have given up
      assert.is_true(took >= 0.25 and took < T, "took " .. took)
    end, { head_timeout = 0.3 })
  end)

  it("closes a keep-alive connection left idle past idle_timeout", function()
    with_server(hello, function(srv)
      local c = connect(srv)
      c:send(GET)
      recv_until(c, has_responses(1))
      local t0 = task.now()
      local rest, closed = recv_all(c)
      assert.is_true(closed)
      assert.equal("", rest)
      assert.is_true(task.now() - t0 < T) -- closed by the server, before this client gave up
      assert.equal(0, srv:stats().open)
    end, { idle_timeout = 0.3 })
  end)

  it("answers 500 when the handler raises and keeps serving", function()
    with_server(function(req)
      if req.path == "/boom" then
        error("handler exploded")
      end
      return 200, {}, "fine"
    end, function(srv)
      local res = assert(http.request({ url = srv.url .. "/boom" }))
      assert.equal(500, res.status)
      res = assert(http.request({ url = srv.url .. "/ok" }))
      assert.equal(200, res.status)
      assert.equal("fine", res.body)
    end)
  end)

  it("answers 500 when the handler returns no status", function()
    with_server(function()
      return nil, "no luck", "upstream"
    end, function(srv)
      assert.equal(500, assert(http.request({ url = srv.url .. "/" })).status)
    end)
  end)

  it("sends headers without a body for HEAD", function()
    with_server(hello, function(srv)
      local c = connect(srv)
      c:send("HEAD / HTTP/1.1\r\nHost: t\r\n\r\n" .. GET)
      local buf = recv_until(c, function(b)
        return b:find("hello$") ~= nil
      end)
      -- the HEAD response has Content-Length 5 but no body: the GET response follows at once
      assert.matches("^HTTP/1%.1 200 OK\r\n.-Content%-Length: 5\r\n\r\nHTTP/1%.1 200 OK\r\n", buf)
      c:close()
    end)
  end)

  it("answers an HTTP/1.0 request and closes", function()
    with_server(function(_req, res)
      res:start(200, {})
      res:write("streamed")
    end, function(srv)
      local c = connect(srv)
      c:send("GET / HTTP/1.0\r\n\r\n")
      local buf, closed = recv_all(c)
      assert.is_true(closed)
      assert.matches("^HTTP/1%.1 200 OK\r\n", buf)
      assert.is_nil(buf:match("chunked"))
      assert.matches("\r\n\r\nstreamed$", buf)
    end)
  end)

  it("returns closed from res:write once the client disconnected", function()
    local result = {}
    with_server(function(_req, res)
      res:start(200, {})
      local chunk = string.rep("x", 64 * 1024)
      for _ = 1, 20000 do -- bounded: about 1.3 GB if nothing ever failed
        local ok, err, code = res:write(chunk)
        if not ok then
          result.err, result.code = err, code
          break
        end
      end
      result.done = true
    end, function(srv)
      local c = connect(srv)
      c:send(GET)
      assert(c:recv(T))
      c:close()
      helpers.eventually(function()
        return result.done
      end, "the handler's write failed")
      assert.equal("closed", result.code)
    end)
  end)

  it("res:abort() before res:start closes without answering and ends the handler", function()
    with_server(function(req, res, state)
      if req.path == "/lose" then
        res:abort()
        state.went_on = true -- never runs: abort ends the handler
      end
      return 200, {}, "fine"
    end, function(srv, state)
      local c = connect(srv)
      c:send("GET /lose HTTP/1.1\r\nHost: t\r\n\r\n" .. GET) -- the pipelined GET is dropped
      local buf, closed = recv_all(c)
      assert.equal("", buf)
      assert.is_true(closed)
      assert.is_nil(state.went_on)
      local err = fails_with("closed", http.request({ url = srv.url .. "/lose", body = "x" }))
      assert.matches("may have processed it", err)
      assert.equal("fine", assert(http.request({ url = srv.url .. "/ok" })).body)
    end)
  end)

  it("res:abort() after res:start cuts the response where it is", function()
    with_server(function(req, res)
      local headers = req.path == "/length" and { ["Content-Length"] = "100" } or {}
      assert(res:start(200, headers))
      assert(res:write("partial"))
      res:abort()
    end, function(srv)
      -- what was written arrives; no terminating chunk, and 7 bytes of the 100 promised
      for path, body in pairs({ ["/length"] = "partial", ["/chunked"] = "7\r\npartial\r\n" }) do
        local c = connect(srv)
        c:send("GET " .. path .. " HTTP/1.1\r\nHost: t\r\n\r\n")
        local buf, closed = recv_all(c)
        assert.is_true(closed)
        assert.matches("^HTTP/1%.1 200 OK\r\n", buf)
        assert.equal(body, buf:match("\r\n\r\n(.*)$"))
        fails_with("closed", http.request({ url = srv.url .. path }))
      end
    end)
  end)

  it("res:abort() ends the handler without a 500 or a traceback on stderr", function()
    -- in a child host, so that its stderr can be read
    local script = [[
      local http, task = require("host.http"), require("host.task")
      task.run(function()
        local srv = assert(http.serve({ handler = function(req, res)
          if req.path == "/after" then
            res:start(200, {})
            res:write("cut")
          end
          res:abort()
          error("not reached")
        end }))
        for _, path in ipairs({ "/before", "/after" }) do
          local _, _, code = http.request({ url = srv.url .. path, body = "x" })
          print(path, code)
        end
        srv:close()
      end)
    ]]
    local r = helpers.run(function()
      return assert(proc.run({ argv = { helpers.binary(), "-e", script }, timeout = 30 }))
    end)
    assert.equal(0, r.exit_code, r.stderr)
    assert.equal("/before\tclosed\n/after\tclosed\n", r.stdout)
    assert.equal("", r.stderr)
  end)

  it("res:abort() from another task closes the connection; the handler goes on", function()
    with_server(function(_req, res, state)
      assert(res:start(200, {}))
      task.spawn(function()
        res:abort()
        state.abort_returned = true
      end):wait(T)
      state.write = table.pack(res:write("more"))
    end, function(srv, state)
      fails_with("closed", http.request({ url = srv.url .. "/" }))
      assert.is_true(state.abort_returned)
      assert.same({ nil, "http: the response was aborted", "closed", n = 3 }, state.write)
    end)
  end)

  it("cancels running handlers and stops listening on close", function()
    local outcome
    helpers.run(function()
      local srv = assert(http.serve({
        handler = function()
          local ok, _, code = task.sleep(10)
          outcome = ok and "slept" or code
          return 200, {}, ""
        end,
      }))
      local port = srv.port
      local t = task.spawn(function()
        return http.request({ url = srv.url .. "/", timeout = 5 })
      end)
      task.sleep(0.2)
      srv:close()
      fails_with("closed", t:wait(T))
      task.sleep(0.05)
      assert.equal("canceled", outcome)
      local _, _, ccode = raw_connect("127.0.0.1", port, T)
      assert.equal("connect", ccode)
    end)
  end)

  it("fails with io when the port is taken", function()
    with_server(hello, function(srv)
      local err = fails_with("io", http.serve({ port = srv.port, handler = hello }))
      assert.matches("cannot listen on 127%.0%.0%.1:%d+", err)
    end)
  end)

  it("refuses misuse, blaming the caller", function()
    local ok, err = pcall(http.serve, { port = 1 })
    assert.is_false(ok)
    assert.matches("bad argument #1 to 'serve' %(field 'handler' must be a function%)", err)
    ok, err = pcall(http.serve, { handler = print, max_headers = 1000 })
    assert.is_false(ok)
    assert.matches("max_headers", err)
  end)
end)
