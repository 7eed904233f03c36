-- spec/host/http_parse_spec.lua: host.core.http_parse, the server's strict request parser for
-- byte streams (the bridge's relayed connections): events, split feeds, pipelining, refusals.
local parse = require("host.core.http_parse")

-- Every event of feeding the pieces in order, bodies joined per request:
-- { {head..., body = "..."}, ... } plus the refusal (status, message) if any.
local function run(pieces, opts)
  local p = parse.new(opts)
  local requests, cur = {}, nil
  local status, message
  local function take(events)
    for _, e in ipairs(events) do
      if e.type == "head" then
        assert.is_nil(cur, "a head inside a request")
        cur = e
        cur.body = ""
      elseif e.type == "body" then
        assert.is_true(#e.data > 0)
        cur.body = cur.body .. e.data
      else
        assert.equal("end", e.type)
        requests[#requests + 1] = cur
        cur = nil
      end
    end
  end
  for _, piece in ipairs(pieces) do
    local events, st, msg = p:feed(piece)
    if not events then
      status, message = st, msg
      break
    end
    take(events)
  end
  if not status then -- a refusal after events of the same feed comes with the next call
    local events, st, msg = p:feed("")
    if events then
      take(events)
    else
      status, message = st, msg
    end
  end
  return requests, status, message, cur, p
end

-- s split into pieces of n bytes.
local function split(s, n)
  local out = {}
  for i = 1, #s, n do
    out[#out + 1] = s:sub(i, i + n - 1)
  end
  return out
end

local GET = "GET /api/agents/me?x=1 HTTP/1.1\r\nHost: h\r\nAccept: a\r\nAccept: b\r\n\r\n"
local POST = "POST /p HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello"
local CHUNKED = "POST /c HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
  .. "3\r\nabc\r\n4;ext=1\r\ndefg\r\n0\r\nTrailer: t\r\n\r\n"

describe("host.core.http_parse", function()
  it("gives the head as sent, with its framing, then the end", function()
    local reqs, status = run({ GET })
    assert.is_nil(status)
    assert.equal(1, #reqs)
    local r = reqs[1]
    assert.equal("GET", r.method)
    assert.equal("/api/agents/me?x=1", r.target)
    assert.equal("1.1", r.version)
    assert.same({ { "Host", "h" }, { "Accept", "a" }, { "Accept", "b" } }, r.header_list)
    assert.is_nil(r.content_length)
    assert.is_false(r.chunked)
    assert.is_true(r.keep_alive)
    assert.is_false(r.expect_continue)
    assert.equal("", r.body)
  end)

  it("gives a Content-Length body and a chunked one, decoded", function()
    local reqs = run({ POST .. CHUNKED })
    assert.equal(2, #reqs)
    assert.equal(5, reqs[1].content_length)
    assert.equal("hello", reqs[1].body)
    assert.is_true(reqs[2].chunked)
    assert.is_nil(reqs[2].content_length)
    assert.equal("abcdefg", reqs[2].body)
  end)

  it("gives the same whatever the split, one byte at a time included", function()
    local all = GET .. POST .. CHUNKED
    local whole = run({ all })
    assert.equal(3, #whole)
    for _, n in ipairs({ 1, 2, 3, 7, 13, 64 }) do
      local reqs, status = run(split(all, n))
      assert.is_nil(status)
      assert.same(whole, reqs)
    end
  end)

  it("gives body bytes as they come, before the request is complete", function()
    local p = parse.new()
    local events = assert(p:feed("POST /p HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\n01"))
    assert.equal(2, #events)
    assert.equal("head", events[1].type)
    assert.same({ type = "body", data = "01" }, events[2])
    assert.is_true(p:pending())
    events = assert(p:feed("23456789GET"))
    assert.same({ { type = "body", data = "23456789" }, { type = "end" } }, events)
    assert.is_true(p:pending()) -- "GET": the start of the next head
    assert.same({}, assert(p:feed(" / HTTP/1.1\r\nHost: h\r\n")))
    events = assert(p:feed("\r\n"))
    assert.equal("GET", events[1].type == "head" and events[1].method)
    assert.same({ type = "end" }, events[2])
    assert.is_false(p:pending())
  end)

  it("serves pipelined requests in order, and keep-alive as HTTP/1.0 asks it", function()
    local reqs = run({ GET .. GET:gsub("x=1", "x=2") .. POST })
    assert.equal(3, #reqs)
    assert.equal("/api/agents/me?x=2", reqs[2].target)
    reqs = run({ "GET /a HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET /b HTTP/1.0\r\n\r\n" })
    assert.equal(2, #reqs)
    assert.is_true(reqs[1].keep_alive)
    assert.equal("1.0", reqs[2].version)
    assert.is_false(reqs[2].keep_alive)
  end)

  it("ignores what follows a request that closes the connection", function()
    local reqs, status, _, cur, p = run({
      "GET /a HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n", GET, "garbage\r\n\r\n" })
    assert.is_nil(status)
    assert.is_nil(cur)
    assert.equal(1, #reqs)
    assert.is_false(reqs[1].keep_alive)
    assert.is_false(p:pending())
    assert.same({}, assert(p:feed(GET)))
  end)

  it("says when a client wants 100 Continue", function()
    local reqs = run({ "POST /p HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\n"
      .. "Content-Length: 2\r\n\r\nok" })
    assert.is_true(reqs[1].expect_continue)
    assert.equal("ok", reqs[1].body)
  end)

  describe("refuses as the host's server answers", function()
    local cases = {
      { "both Content-Length and chunked", "POST /p HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n"
        .. "Transfer-Encoding: chunked\r\n\r\n", 400 },
      { "two Content-Lengths", "POST /p HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n"
        .. "Content-Length: 4\r\n\r\n", 400 },
      { "a bare LF", "GET / HTTP/1.1\nHost: h\r\n\r\n", 400 },
      { "obs-fold", "GET / HTTP/1.1\r\nHost: h\r\nX: a\r\n b\r\n\r\n", 400 },
      { "no Host in HTTP/1.1", "GET / HTTP/1.1\r\n\r\n", 400 },
      { "chunked in HTTP/1.0", "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", 400 },
      { "a bad chunk size", "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
        .. "zz\r\n", 400 },
      { "another transfer coding", "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip\r\n\r\n",
        501 },
      { "HTTP/2.0", "GET / HTTP/2.0\r\nHost: h\r\n\r\n", 505 },
      { "a head over max_head", "GET /" .. ("a"):rep(300) .. " HTTP/1.1\r\nHost: h\r\n\r\n", 431 },
      { "a Content-Length over max_body",
        "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 11\r\n\r\n", 413 },
      { "a chunked body over max_body", "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked"
        .. "\r\n\r\n8\r\n01234567\r\n8\r\n", 413 },
    }
    for _, case in ipairs(cases) do
      local what, bytes, want = case[1], case[2], case[3]
      it(what .. " with " .. want, function()
        for _, pieces in ipairs({ { bytes }, split(bytes, 1) }) do
          local reqs, status, message, _, p = run(pieces, { max_head = 256, max_body = 10 })
          assert.equal(0, #reqs)
          assert.equal(want, status)
          assert.matches("^http_parse: .* refused: " .. want .. " ", message)
          -- sticky: nothing more is parsed
          local res, again = p:feed(GET)
          assert.is_nil(res)
          assert.equal(want, again)
        end
      end)
    end

    it("after the requests before it, which are given first", function()
      local p = parse.new()
      local events = assert(p:feed(GET .. "GET / HTTP/1.1\nHost: h\r\n\r\n"))
      assert.equal(2, #events) -- the first request, whole
      assert.equal("end", events[2].type)
      local res, status, message = p:feed("")
      assert.is_nil(res)
      assert.equal(400, status)
      assert.matches("request head refused: 400 Bad Request", message)
    end)

    it("more headers than max_headers with 431", function()
      local _, status = run({ "GET / HTTP/1.1\r\nHost: h\r\nA: 1\r\nB: 2\r\n\r\n" },
        { max_headers = 2 })
      assert.equal(431, status)
    end)
  end)

  it("names reasons, and raises on misuse", function()
    assert.equal("Content Too Large", parse.reason(413))
    assert.equal("Unknown", parse.reason(299))
    assert.has_error(function()
      parse.new({ max_head = 10 })
    end, "bad argument #1 to 'http_parse.new' (field 'max_head' must be an integer in [256, "
      .. "16777216])")
    assert.has_error(function()
      parse.new("x")
    end)
    assert.has_error(function()
      parse.new():feed(1 < 2)
    end)
  end)
end)
