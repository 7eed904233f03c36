-- spec/host/http_client_spec.lua: host.http's client (curl multi on the loop) against our own
-- server on 127.0.0.1, through the real host binary.
local helpers = require("spec.helpers")
local http = require("host.http")
local task = require("host.task")

local MiB = 1024 * 1024
local BIG = string.rep("0123456789abcdef", 10 * MiB // 16) -- 10 MiB

-- Routes of the test server, by path. Handlers that wait long are canceled by server:close.
local routes = {}

routes["/hello"] = function()
  return 200, { ["Content-Type"] = "text/plain", ["X-Twice"] = { "a", "b" } }, "hello"
end

routes["/echo"] = function(req)
  return 200, {
    ["X-Method"] = req.method,
    ["X-Content-Type"] = req.headers["content-type"] or "(none)",
    ["X-Test"] = req.headers["x-test"] or "(none)",
    ["X-Length"] = #req.body,
  }, req.body
end

routes["/status"] = function(req)
  return math.tointeger(tonumber(req.query)), {}, "status " .. req.query
end

routes["/big"] = function()
  return 200, {}, BIG
end

routes["/chunks"] = function(_req, res, state) -- three chunks, 50 ms apart
  res:start(200, { ["Content-Type"] = "text/plain" })
  for i = 1, 3 do
    res:write(("chunk-%d;"):format(i))
    task.sleep(0.05)
  end
  state.chunks_done = true
end

routes["/never"] = function()
  task.sleep(30)
  return 200, {}, "too late"
end

routes["/stall"] = function(_req, res)
  res:start(200, {})
  res:write("x")
  task.sleep(30)
end

routes["/short"] = function(_req, res) -- promises 1000 bytes, sends 10
  res:start(200, { ["Content-Length"] = "1000" })
  res:write("0123456789")
  res:finish()
end

routes["/redirect"] = function()
  return 302, { Location = "/hello" }, ""
end

routes["/sleep"] = function(req)
  task.sleep(tonumber(req.query) or 0.1)
  return 200, {}, req.query
end

-- Runs fn(server, state) inside a task with a fresh server; the server is closed afterwards.
-- state is shared with extra handlers (routes given in `extra`, by path).
local function with_server(fn, extra)
  local state = { remote_ports = {} }
  return helpers.serving({
    max_body = 16 * MiB,
    handler = function(req, res)
      state.remote_ports[req.remote_port] = true
      local route = (extra and extra[req.path]) or routes[req.path]
      if not route then
        return 404, {}, "no route"
      end
      return route(req, res, state)
    end,
  }, fn, state)
end

local fails_with = helpers.fails_with

-- A port with nobody listening on it.
local function closed_port()
  local srv = assert(http.serve({ handler = function() end }))
  local port = srv.port
  srv:close()
  return port
end

describe("host.http client", function()
  it("gets a status, lowercase headers, the body and the effective url", function()
    with_server(function(srv)
      local res, err = http.request({ url = srv.url .. "/hello" })
      assert.is_nil(err)
      assert.equal(200, res.status)
      assert.equal("hello", res.body)
      assert.equal("text/plain", res.headers["content-type"])
      assert.equal("5", res.headers["content-length"])
      assert.equal(srv.url .. "/hello", res.url)
      assert.is_true(res:ok())
      assert.equal("text/plain", res:header("Content-Type"))
    end)
  end)

  it("joins repeated response headers with a comma", function()
    with_server(function(srv)
      local res = assert(http.request({ url = srv.url .. "/hello" }))
      assert.equal("a, b", res.headers["x-twice"])
    end)
  end)

  it("posts a body, defaulting the method to POST and sending no content type", function()
    with_server(function(srv)
      local res = assert(http.request({ url = srv.url .. "/echo", body = "payload" }))
      assert.equal("POST", res.headers["x-method"])
      assert.equal("(none)", res.headers["x-content-type"])
      assert.equal("payload", res.body)
    end)
  end)

  it("sends the method and headers given", function()
    with_server(function(srv)
      local res = assert(http.request({
        url = srv.url .. "/echo",
        method = "PUT",
        headers = { ["X-Test"] = "yes", ["Content-Type"] = "text/x" },
        body = "b",
      }))
      assert.equal("PUT", res.headers["x-method"])
      assert.equal("yes", res.headers["x-test"])
      assert.equal("text/x", res.headers["x-content-type"])
    end)
  end)

  it("encodes opts.json and decodes a JSON response", function()
    with_server(function(srv)
      local res = assert(http.request({ url = srv.url .. "/echo", json = { a = 1 } }))
      assert.equal("application/json", res.headers["x-content-type"])
      assert.same({ a = 1 }, res:json())
    end)
  end)

  it("returns an HTTP error status as a response, not a failure", function()
    with_server(function(srv)
      local res, err = http.request({ url = srv.url .. "/status?404" })
      assert.is_nil(err)
      assert.equal(404, res.status)
      assert.equal("status 404", res.body)
      assert.is_false(res:ok())
    end)
  end)

  it("answers HEAD without a body", function()
    with_server(function(srv)
      local res = assert(http.request({ url = srv.url .. "/hello", method = "HEAD" }))
      assert.equal(200, res.status)
      assert.equal("5", res.headers["content-length"])
      assert.equal("", res.body)
    end)
  end)

  it("carries 10 MiB bodies both ways", function()
    with_server(function(srv)
      local res = assert(http.request({ url = srv.url .. "/big" }))
      assert.equal(#BIG, #res.body)
      assert.is_true(res.body == BIG)
      res = assert(http.request({ url = srv.url .. "/echo", body = BIG, max_body = 16 * MiB }))
      assert.equal(tostring(#BIG), res.headers["x-length"])
      assert.is_true(res.body == BIG)
    end)
  end)

  it("reuses one connection for sequential requests", function()
    with_server(function(srv, state)
      for _ = 1, 5 do
        assert.equal(200, assert(http.request({ url = srv.url .. "/hello" })).status)
      end
      assert.equal(1, srv:stats().accepted)
      assert.equal(1, #(function()
        local ports = {}
        for p in pairs(state.remote_ports) do
          ports[#ports + 1] = p
        end
        return ports
      end)())
    end)
  end)

  it("follows redirects only when asked", function()
    with_server(function(srv)
      local res = assert(http.request({ url = srv.url .. "/redirect" }))
      assert.equal(302, res.status)
      assert.equal("/hello", res.headers.location)
      res = assert(http.request({ url = srv.url .. "/redirect", follow_redirects = true }))
      assert.equal(200, res.status)
      assert.equal("hello", res.body)
      assert.equal(srv.url .. "/hello", res.url)
      assert.is_nil(res.headers.location)
    end)
  end)

  it("sends a path with dot segments as it is only with path_as_is", function()
    local targets = {}
    local function record(req)
      targets[#targets + 1] = req.target
      return 200, {}, req.target
    end
    with_server(function(srv)
      local res = assert(http.request({ url = srv.url .. "/a/../b?x=/../y", path_as_is = true }))
      assert.equal("/a/../b?x=/../y", res.body)
      res = assert(http.request({ url = srv.url .. "/a/../b?x=/../y" }))
      assert.equal("/b?x=/../y", res.body) -- libcurl's default: dot segments removed
      assert.same({ "/a/../b?x=/../y", "/b?x=/../y" }, targets)
    end, { ["/a/../b"] = record, ["/b"] = record })
  end)

  it("hands body chunks to on_chunk in order and keeps no body", function()
    with_server(function(srv)
      local chunks, on_chunk = helpers.collector()
      local res = assert(http.request({ url = srv.url .. "/chunks", on_chunk = on_chunk }))
      assert.equal("chunk-1;chunk-2;chunk-3;", table.concat(chunks))
      assert.is_true(#chunks >= 2) -- 50 ms apart: they arrive separately
      assert.equal("", res.body)
    end)
  end)

  it("aborts the transfer when on_chunk raises", function()
    with_server(function(srv)
      local err = fails_with("internal", http.request({
        url = srv.url .. "/chunks",
        on_chunk = function()
          error("boom")
        end,
      }))
      assert.matches("on_chunk failed: .*boom", err)
    end)
  end)

  it("opens a stream that returns once the head arrived and reads chunks as they come", function()
    with_server(function(srv, state)
      local s = assert(http.open({ url = srv.url .. "/chunks" }))
      assert.equal(200, s.status)
      assert.equal("chunked", s.headers["transfer-encoding"])
      local first = assert(s:read(5))
      assert.equal("chunk-1;", first)
      assert.is_nil(state.chunks_done) -- it came while the server was still writing
      local rest = {}
      while true do
        local chunk, err = s:read(5)
        assert.is_nil(err)
        if not chunk then
          break
        end
        rest[#rest + 1] = chunk
      end
      assert.equal("chunk-2;chunk-3;", table.concat(rest))
      assert.is_nil(s:read()) -- the end stays the end
      s:close()
    end)
  end)

  it("returns a stream for an error status too", function()
    with_server(function(srv)
      local s = assert(http.open({ url = srv.url .. "/status?503" }))
      assert.equal(503, s.status)
      assert.equal("status 503", s:read(5))
      assert.is_nil(s:read(5))
    end)
  end)

  it("fails only the read whose own timeout expires", function()
    with_server(function(srv)
      local s = assert(http.open({ url = srv.url .. "/stall" }))
      assert.equal("x", s:read(5))
      local chunk, err, code = s:read(0.1)
      assert.is_nil(chunk)
      assert.equal("timeout", code)
      assert.matches("no data within", err)
      s:close()
      assert.has_error(function()
        s:read()
      end)
    end)
  end)

  it("pauses a stream nobody reads and resumes it without loss", function()
    local total, chunk = 32 * MiB, string.rep("z", 64 * 1024)
    local extra = {
      ["/flood"] = function(_req, res, state)
        res:start(200, { ["Content-Length"] = tostring(total) })
        state.written = 0
        while state.written < total do
          if not res:write(chunk) then
            return
          end
          state.written = state.written + #chunk
        end
      end,
    }
    with_server(function(srv, state)
      -- stall_timeout does not count the time the stream is paused for us
      local s = assert(http.open({ url = srv.url .. "/flood", timeout = 30, stall_timeout = 0.3 }))
      task.sleep(0.5)
      -- 1 MiB buffered by us plus what the kernel holds: far from all of it.
      assert.is_true(state.written < 24 * MiB, "server wrote " .. state.written)
      local got = 0
      while true do
        local data, err = s:read(10)
        assert.is_nil(err)
        if not data then
          break
        end
        got = got + #data
      end
      assert.equal(total, got)
    end, extra)
  end)

  it("times out a server that never answers, within the deadline", function()
    with_server(function(srv)
      local t0 = task.now()
      local err = fails_with("timeout", http.request({ url = srv.url .. "/never", timeout = 0.5 }))
      local took = task.now() - t0
      assert.matches("^http: GET http://127%.0%.0%.1:%d+/never: ", err)
      -- at the deadline, not before; long before the server's answer (after 30 s)
      assert.is_true(took >= 0.45 and took < 15, "took " .. took)
    end)
  end)

  it("gives up on a stalled transfer after stall_timeout", function()
    with_server(function(srv)
      local t0 = task.now()
      local opts = { url = srv.url .. "/stall", stall_timeout = 0.5, timeout = 20 }
      local err = fails_with("timeout", http.request(opts))
      local took = task.now() - t0
      assert.matches("stalled", err)
      -- the stall limit, not the 20 s timeout nor the server's 30 s pause, ended it
      assert.is_true(took >= 0.45 and took < 10, "took " .. took)
    end)
  end)

  it("reports a refused connection as connect", function()
    helpers.run(function()
      local url = ("http://127.0.0.1:%d/x"):format(closed_port())
      local err = fails_with("connect", http.request({ url = url }))
      assert.equal("http: GET " .. url .. ": Connection refused", err)
    end)
  end)

  it("reports a body cut short by the server as closed", function()
    with_server(function(srv)
      fails_with("closed", http.request({ url = srv.url .. "/short" }))
    end)
  end)

  it("fails with protocol when the body exceeds max_body", function()
    with_server(function(srv)
      local err = fails_with("protocol", http.request({ url = srv.url .. "/big", max_body = 1000 }))
      assert.matches("max_body %(1000 bytes%)", err)
    end)
  end)

  it("ends with canceled when its task is canceled, and removes the transfer", function()
    with_server(function(srv)
      local t = task.spawn(function()
        return http.request({ url = srv.url .. "/never" })
      end)
      task.sleep(0.2)
      t:cancel()
      local err = fails_with("canceled", t:wait(5))
      assert.matches("canceled", err)
      -- the connection is dropped: a new request works and opens a new one
      assert.equal(200, assert(http.request({ url = srv.url .. "/hello" })).status)
    end)
  end)

  it("fails at once in a task canceled before the call", function()
    with_server(function(srv)
      local t = task.spawn(function()
        task.cancel(task.current())
        return http.request({ url = srv.url .. "/hello" })
      end)
      fails_with("canceled", t:wait(5))
      assert.equal(0, srv:stats().accepted)
    end)
  end)

  it("runs 100 requests concurrently", function()
    with_server(function(srv)
      local fns = {}
      for i = 1, 100 do
        fns[i] = function()
          return http.request({ url = srv.url .. "/sleep?0.2" })
        end
      end
      local t0 = task.now()
      local results = task.all(fns)
      local took = task.now() - t0
      for i = 1, 100 do
        assert.equal(200, results[i][1].status)
      end
      assert.is_true(took < 10, "took " .. took) -- 20 s one after another
      assert.equal(100, srv:stats().requests)
    end)
  end)

  it("raises on misuse, blaming the caller", function()
    helpers.run(function()
      local function misuse(opts, pattern)
        local ok, err = pcall(http.request, opts)
        assert.is_false(ok)
        assert.matches("bad argument #1 to 'request'", err)
        assert.matches(pattern, err)
      end
      misuse({}, "field 'url' is required")
      misuse({ url = "ftp://example.com/" }, "http:// or https://")
      misuse({ url = "http://x/", headers = { ["X-A"] = "a\r\nb" } }, "CR, LF")
      misuse({ url = "http://x/", headers = { ["Bad Name"] = "a" } }, "not an HTTP token")
      misuse({ url = "http://x/", timeout = -1 }, "timeout")
      misuse({ url = "http://x/", method = "GE T" }, "method")
      misuse({ url = "http://x/", idempotent = "yes" }, "field 'idempotent' must be a boolean")
      misuse({ url = "http://x/", path_as_is = 1 }, "field 'path_as_is' must be a boolean")
    end)
    local ok, err = pcall(http.request, { url = "http://127.0.0.1:1/" })
    assert.is_false(ok)
    assert.matches("inside a task", err)
  end)
end)

-- A server that loses its answer: the first request of every connection is answered and the
-- connection kept alive; the second request on a connection is read in full and then
-- res:abort() closes the connection without a byte of answer, as a server that processed a
-- request and died before answering. On a reused connection that is the race where libcurl
-- re-sends on a fresh connection by itself ("Connection died, retrying a fresh connect"). Paths
-- under /lose-now are lost on any connection. fn(srv, seen) gets every request the handler saw:
-- {method, path, port (the client's), size (of the body), accepted (connections so far)}.
local function with_lossy_server(fn)
  local seen, server = {}, nil
  return helpers.serving({
    max_body = 4 * MiB,
    handler = function(req, res)
      local before = 0
      for _, s in ipairs(seen) do
        if s.port == req.remote_port then
          before = before + 1
        end
      end
      seen[#seen + 1] = {
        method = req.method,
        path = req.path,
        port = req.remote_port,
        size = #req.body,
        accepted = server:stats().accepted,
      }
      if before == 1 or req.path:find("^/lose%-now") then
        res:abort() -- does not return
      end
      return 200, {}, "done " .. req.path
    end,
  }, function(srv)
    server = srv -- before any request can come
    return fn(srv, seen)
  end)
end

-- The requests in seen for path.
local function seen_at(seen, path)
  local out = {}
  for _, s in ipairs(seen) do
    if s.path == path then
      out[#out + 1] = s
    end
  end
  return out
end

-- One answered GET to open a keep-alive connection, then call(opts): its request is the
-- second one on that connection, which the server loses. Checks that it really went out on
-- the warm connection (same client port, still the only connection accepted).
local function lose_on_reused(srv, seen, call, opts)
  assert.equal(200, assert(http.request({ url = srv.url .. "/warm" })).status)
  local r = table.pack(call(opts))
  local first = seen_at(seen, opts.url:match("^http://[^/]+(/.*)$"))[1]
  assert.is_table(first, "the server never saw the request")
  assert.equal(seen[1].port, first.port, "the request did not reuse the warm connection")
  assert.equal(1, first.accepted)
  return table.unpack(r, 1, r.n)
end

local LOST = ": connection lost after the request was sent and before any response; the "
  .. "server may have processed it; it was not re-sent"

describe("host.http client, a request whose answer is lost", function()
  it("does not re-send a POST on a reused connection, and says so", function()
    with_lossy_server(function(srv, seen)
      local url = srv.url .. "/create"
      local err = fails_with("closed", lose_on_reused(srv, seen, http.request, {
        url = url,
        body = "vm-1",
      }))
      assert.equal("http: POST " .. url .. LOST, err)
      assert.equal(1, #seen_at(seen, "/create"))
      assert.equal(2, srv:stats().requests)
    end)
  end)

  it("does not re-send a POST without a body, nor a PATCH, nor a DELETE with a body", function()
    for _, case in ipairs({
      { method = "POST" }, -- Content-Length: 0: no body byte that a rewind could refuse
      { method = "PATCH", body = "{}" },
      { method = "DELETE", body = "{}" },
    }) do
      with_lossy_server(function(srv, seen)
        local url = srv.url .. "/thing"
        local opts = { url = url, method = case.method, body = case.body }
        local err = fails_with("closed", lose_on_reused(srv, seen, http.request, opts))
        assert.equal("http: " .. case.method .. " " .. url .. LOST, err)
        assert.equal(1, #seen_at(seen, "/thing"), case.method)
      end)
    end
  end)

  it("does not re-send a 1 MiB POST (sent after the head, not with it)", function()
    with_lossy_server(function(srv, seen)
      local body = string.rep("x", MiB)
      local opts = { url = srv.url .. "/upload", body = body }
      fails_with("closed", lose_on_reused(srv, seen, http.request, opts))
      local got = seen_at(seen, "/upload")
      assert.equal(1, #got)
      assert.equal(MiB, got[1].size)
    end)
  end)

  it("does not re-send a POST opened as a stream", function()
    with_lossy_server(function(srv, seen)
      local url = srv.url .. "/run"
      local err = fails_with("closed", lose_on_reused(srv, seen, http.open, {
        url = url,
        body = "cmd",
      }))
      assert.equal("http: POST " .. url .. LOST, err)
      assert.equal(1, #seen_at(seen, "/run"))
    end)
  end)

  it("says the same when the connection was fresh (libcurl would not retry anyway)", function()
    with_lossy_server(function(srv, seen)
      local url = srv.url .. "/lose-now"
      local err = fails_with("closed", http.request({ url = url, body = "vm-1" }))
      assert.equal("http: POST " .. url .. LOST, err)
      assert.equal(1, #seen)
    end)
  end)

  it("lets libcurl retry a GET on a fresh connection, which then succeeds", function()
    with_lossy_server(function(srv, seen)
      local url = srv.url .. "/thing"
      local res = assert(lose_on_reused(srv, seen, http.request, { url = url }))
      assert.equal(200, res.status)
      assert.equal("done /thing", res.body)
      local got = seen_at(seen, "/thing")
      assert.equal(2, #got)
      assert.are_not.equal(got[1].port, got[2].port)
      assert.equal(2, got[2].accepted)
    end)
  end)

  it("lets libcurl retry a PUT, and a POST marked idempotent", function()
    for _, opts in ipairs({
      { method = "PUT", body = "state" },
      { method = "POST", body = "lookup", idempotent = true },
    }) do
      with_lossy_server(function(srv, seen)
        opts.url = srv.url .. "/thing"
        local res = assert(lose_on_reused(srv, seen, http.request, opts))
        assert.equal(200, res.status)
        assert.equal(2, #seen_at(seen, "/thing"), opts.method)
      end)
    end
  end)

  it("does not retry a GET marked idempotent = false", function()
    with_lossy_server(function(srv, seen)
      local url = srv.url .. "/thing"
      local err = fails_with("closed", lose_on_reused(srv, seen, http.request, {
        url = url,
        idempotent = false,
      }))
      assert.equal("http: GET " .. url .. LOST, err)
      assert.equal(1, #seen_at(seen, "/thing"))
    end)
  end)
end)
