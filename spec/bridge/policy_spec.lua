-- Specs for host.bridge_policy and host.bridge_routes: the bridge's host-side policy (token,
-- canonical targets, routes, bodies, headers, responses), against the hostile inputs of
-- reference/bridge-upstream.md 7.1.
local policy = require("host.bridge_policy")
local routes = require("host.bridge_routes")

local TOKEN = "tok-" .. string.rep("x", 28) -- 32 characters
local MAX = 10 * 1024 * 1024 + 64 * 1024

-- A request as the transport hands it over; o overrides the fields, o.extra adds headers
-- after the Authorization header.
local function request(o)
  o = o or {}
  local headers = o.headers or { { "Authorization", "Bearer " .. TOKEN } }
  for _, h in ipairs(o.extra or {}) do
    headers[#headers + 1] = h
  end
  return { method = o.method or "GET", target = o.target or "/api/agents/me", headers = headers,
    body_length = o.body_length, chunked = o.chunked }
end

local function check(p, o)
  return p:check_request(request(o))
end

-- s quoted for a test name, control and non-ASCII bytes as \xNN (TAP names are one line).
local function quoted(s)
  return '"' .. s:gsub("[%z\1-\31\127-\255]", function(c)
    return ("\\x%02x"):format(c:byte())
  end) .. '"'
end

-- A path that a pattern matches: every parameter replaced by a sample id.
local function sample_path(pattern)
  return (pattern:gsub(":[%a_][%w_]*", "id-1"))
end

local function json_post(target, extra)
  local headers = { { "Content-Type", "application/json" } }
  for _, h in ipairs(extra or {}) do
    headers[#headers + 1] = h
  end
  return { method = "POST", target = target, extra = headers, body_length = 2 }
end

describe("host.bridge_routes", function()
  it("lists upstream's 58 rules, 67 once optional segments and alternations are expanded",
    function()
      assert.equal(58, #routes.UPSTREAM)
      assert.equal(67, #routes.rules)
      local seen = {}
      for _, rule in ipairs(routes.rules) do
        seen[rule.upstream] = (seen[rule.upstream] or 0) + 1
      end
      for i = 1, 58 do
        assert.is_true(seen[i] >= 1, "upstream rule " .. i)
      end
      assert.equal(5, seen[36]) -- interactions/:id/{accept|reject|respond|verdicts|withdraw}
      assert.equal(3, seen[50]) -- runtime-services/{start|stop|restart}
    end)

  it("writes every rule as an uppercase method and a pattern of literals and :params", function()
    for _, rule in ipairs(routes.rules) do
      assert.matches("^[A-Z]+$", rule.method)
      assert.matches("^/", rule.pattern)
      for seg in rule.pattern:sub(2):gmatch("[^/]+") do
        assert.is_truthy(seg:find("^[%w%-%.]+$") or seg:find("^:[%a_][%w_]*[%w%.]*$"), seg)
      end
    end
  end)

  it("has no rule twice", function()
    local seen = {}
    for _, rule in ipairs(routes.rules) do
      local key = rule.method .. " " .. rule.pattern
      assert.is_nil(seen[key], key)
      seen[key] = true
    end
  end)
end)

describe("host.bridge_policy", function()
  local p
  before_each(function()
    p = policy.new({ token = TOKEN })
  end)

  describe("default routes", function()
    it("accepts every default rule with a sample path", function()
      for _, rule in ipairs(routes.rules) do
        local o = { method = rule.method, target = sample_path(rule.pattern) }
        if rule.method ~= "GET" and rule.method ~= "DELETE" then
          o = json_post(o.target)
          o.method = rule.method
        end
        local d, status, msg = check(p, o)
        assert.is_table(d, rule.method .. " " .. rule.pattern .. ": " .. tostring(msg))
        assert.equal(rule.method, d.method)
        assert.equal(o.target, d.path)
        assert.is_nil(status)
      end
    end)

    local allowed = {
      { "GET", "/api/agents/me" }, { "GET", "/api/agents/me/inbox/mine" },
      { "POST", "/api/agents/a1/skills/sync" }, { "GET", "/api/companies/c1/org" },
      { "GET", "/api/issues/ISS-1/comments/cm-9" }, { "PUT", "/api/issues/i1/documents/plan" },
      { "PATCH", "/api/work-products/wp-1" }, { "POST", "/api/issues/i1/interactions/x/withdraw" },
      { "GET", "/llms/agent-configuration/claude_local.txt" }, { "GET", "/llms/agent-icons.txt" },
      { "POST", "/api/approvals/ap-1/comments" },
      { "POST", "/api/execution-workspaces/w1/runtime-services/restart" },
      { "DELETE", "/api/routine-triggers/t1" },
    }
    for _, case in ipairs(allowed) do
      it("allows " .. case[1] .. " " .. case[2], function()
        assert.is_true(p:allows(case[1], case[2]))
      end)
    end

    -- upstream's denied list (bridge-upstream.md 6.A item 21) and a few of our own
    local denied = {
      { "DELETE", "/api/secrets" },
      { "POST", "/api/execution-workspaces/w1/runtime-services/delete" },
      { "POST", "/api/companies/co-1/agents" },
      { "GET", "/llms/agent-configuration" }, { "GET", "/llms/secrets.txt" },
      { "GET", "/llms/agent-configuration/.txt" }, { "GET", "/llms/agent-configuration/a/b.txt" },
      { "GET", "/llms/agent-configuration/a.txtx" },
      { "POST", "/api/companies/co-1/agent-hires/ap-1" },
      { "POST", "/api/issues/issue-1/approvals/ap-1" },
      { "POST", "/api/agents/agent-1/pause" }, { "POST", "/api/agents/agent-1/terminate" },
      { "POST", "/api/agents/agent-1/keys" },
      { "POST", "/api/companies/co-1/exports" }, { "POST", "/api/companies/co-1/imports/apply" },
      { "POST", "/api/companies/co-1/archive" }, { "POST", "/api/companies/co-1/logo" },
      { "DELETE", "/api/issues/issue-1/documents/plan" },
      { "DELETE", "/api/issues/issue-1/approvals" }, { "DELETE", "/api/work-products/wp-1" },
      { "POST", "/api/approvals/ap-1/approve" }, { "POST", "/api/approvals/ap-1/reject" },
      { "GET", "/api/companies/co-1/secrets" }, { "PATCH", "/api/secrets/secret-1" },
      { "GET", "/api/secrets" }, { "GET", "/api/approvals" }, { "GET", "/" },
      { "HEAD", "/api/agents/me" }, { "OPTIONS", "/api/agents/me" },
      { "GET", "/api/issues/i1/comments/c1/x" }, { "POST", "/api/issues/i1" },
    }
    for _, case in ipairs(denied) do
      it("denies " .. case[1] .. " " .. case[2] .. " with 403", function()
        local d, status, msg = check(p, { method = case[1], target = case[2] })
        assert.is_nil(d)
        assert.equal(403, status)
        assert.equal("Route not allowed: " .. case[1] .. " " .. case[2], msg)
      end)
    end

    it("maps no HEAD to GET, but uppercases the method it forwards", function()
      assert.equal(403, select(2, check(p, { method = "HEAD" })))
      local d = check(p, { method = "get" })
      assert.equal("GET", d.method)
    end)

    it("matches the path only: the query cannot smuggle an allowed path", function()
      local d, status = check(p, { target = "/api/secrets?next=/api/agents/me" })
      assert.is_nil(d)
      assert.equal(403, status)
    end)

    it("lets a parameter match only pchar bytes and valid escapes", function()
      for _, id in ipairs({ "ISS-1", "a.b", "...", "a:b@c", "a%20b", "%e2%82%ac", "a;v=1",
        "x~y_z", "(1)*+,=!$&'" }) do
        assert.is_true(p:allows("GET", "/api/issues/" .. id), id)
      end
      for _, id in ipairs({ 'a"b', "a<b", "{x}", "a|b", "a^b", "a`b", "[1]" }) do
        assert.equal(403, select(2, check(p, { target = "/api/issues/" .. id })), id)
      end
    end)

    it("escapes control bytes of a method in the 403 message", function()
      local _, status, msg = check(p, { method = "GE\rT\0" })
      assert.equal(403, status)
      assert.equal("Route not allowed: GE\\x0dT\\x00 /api/agents/me", msg)
    end)
  end)

  describe("operator routes", function()
    it("are appended to the defaults", function()
      local q = policy.new({ token = TOKEN, routes = {
        { method = "GET", pattern = "/api/openapi.json" },
        { method = "POST", pattern = "/api/companies/:companyId/agent-commentary" },
      } })
      assert.equal(69, #q.rules)
      assert.is_true(q:allows("GET", "/api/openapi.json"))
      assert.is_true(q:allows("POST", "/api/companies/c1/agent-commentary"))
      assert.is_true(q:allows("GET", "/api/agents/me"))
      assert.is_false(p:allows("GET", "/api/openapi.json"))
    end)

    local bad_rules = {
      { { method = "get", pattern = "/x" }, "route 1 %(get /x%): method must be an uppercase" },
      { { method = "G T", pattern = "/x" }, "method must be an uppercase token" },
      { { pattern = "/x" }, "route 1 %(nil /x%): method" },
      { { method = "GET", pattern = "x" }, 'pattern must start with "/"' },
      { { method = "GET", pattern = "http://x/y" }, 'pattern must start with "/"' },
      { { method = "GET" }, "pattern must be a string" },
      { { method = "GET", pattern = "/a//b" }, "empty segment 2" },
      { { method = "GET", pattern = "/a/" }, "empty segment 2" },
      { { method = "GET", pattern = "/a/../b" }, "dot segment 2" },
      { { method = "GET", pattern = "/a/%2e" }, "segment 2: a literal" },
      { { method = "GET", pattern = "/a\\b" }, "segment 1: a literal" },
      { { method = "GET", pattern = "/a/:1x" }, "segment 2: a parameter" },
      { { method = "GET", pattern = "/a/:" }, "segment 2: a parameter" },
      { { method = "GET", pattern = "/a/:id%2f" }, "segment 2: a parameter" },
      { "GET /x", "route 1: a rule is a table" },
    }
    for _, case in ipairs(bad_rules) do
      it("refuses a bad rule, naming it: " .. case[2], function()
        local ok, err = pcall(policy.new, { token = TOKEN, routes = { case[1] } })
        assert.is_false(ok)
        assert.matches("bad argument #1 to 'new'", err, 1, true)
        assert.matches(case[2], err)
      end)
    end

    it("names the position of a bad rule among several", function()
      local ok, err = pcall(policy.new, { token = TOKEN, routes = {
        { method = "GET", pattern = "/ok" }, { method = "GET", pattern = "/bad/" } } })
      assert.is_false(ok)
      assert.matches("route 2 (GET /bad/): empty segment 2", err, 1, true)
    end)

    it("escapes control bytes of a bad rule in the message", function()
      local ok, err = pcall(policy.new, { token = TOKEN,
        routes = { { method = "GET", pattern = "/a\nb" } } })
      assert.is_false(ok)
      assert.matches("(GET /a\\x0ab)", err, 1, true)
    end)
  end)

  describe("new", function()
    local bad_opts = {
      { nil, "table expected, got nil" },
      { {}, "field 'token'" },
      { { token = string.rep("x", 31) }, "field 'token'" },
      { { token = string.rep("x", 31) .. " " }, "field 'token'" },
      { { token = 12345678901234567890 }, "field 'token'" },
      { { token = TOKEN, max_request_body = 0 }, "field 'max_request_body'" },
      { { token = TOKEN, max_response_body = 1.5 }, "field 'max_response_body'" },
      { { token = TOKEN, routes = "GET /x" }, "field 'routes'" },
      { { token = TOKEN, request_headers = { "Authorization" } }, "authorization may never" },
      { { token = TOKEN, request_headers = { "X-Forwarded-Host" } }, "x-forwarded-host may" },
      { { token = TOKEN, request_headers = { "cookie" } }, "cookie may never" },
      { { token = TOKEN, request_headers = { "host" } }, "host may never" },
      { { token = TOKEN, request_headers = { "x-paperclip-run-id" } }, "x-paperclip-run-id" },
      { { token = TOKEN, request_headers = { "bad name" } }, "entry 1 is not a header name" },
      { { token = TOKEN, response_headers = { "Set-Cookie" } }, "set-cookie may never" },
      { { token = TOKEN, response_headers = { "content-length" } }, "content-length may never" },
    }
    for i, case in ipairs(bad_opts) do
      it("raises on misuse " .. i .. ": " .. case[2], function()
        local ok, err = pcall(policy.new, case[1])
        assert.is_false(ok)
        assert.matches(case[2], err, 1, true)
      end)
    end

    it("defaults both body limits to 10 MiB + 64 KiB", function()
      assert.equal(MAX, p.max_request_body)
      assert.equal(MAX, p.max_response_body)
      assert.equal(10551296, policy.DEFAULT_MAX_BODY)
    end)
  end)

  describe("token", function()
    local bad_auth = {
      { "missing", {} },
      { "lowercase bearer", { { "Authorization", "bearer " .. TOKEN } } },
      { "two spaces", { { "Authorization", "Bearer  " .. TOKEN } } },
      { "no space", { { "Authorization", "Bearer" .. TOKEN } } },
      { "another scheme", { { "Authorization", "Basic " .. TOKEN } } },
      { "wrong token", { { "Authorization", "Bearer " .. TOKEN:gsub("x$", "y") } } },
      { "shorter", { { "Authorization", "Bearer " .. TOKEN:sub(1, -2) } } },
      { "longer", { { "Authorization", "Bearer " .. TOKEN .. "x" } } },
      { "trailing space", { { "Authorization", "Bearer " .. TOKEN .. " " } } },
      { "empty", { { "Authorization", "" } } },
      { "duplicated", { { "Authorization", "Bearer " .. TOKEN },
        { "authorization", "Bearer " .. TOKEN } } },
      { "duplicated, one wrong", { { "Authorization", "Bearer nope" },
        { "Authorization", "Bearer " .. TOKEN } } },
      { "in another header", { { "X-Authorization", "Bearer " .. TOKEN } } },
    }
    for _, case in ipairs(bad_auth) do
      it("refuses a " .. case[1] .. " Authorization header with 401", function()
        local d, status, msg = check(p, { headers = case[2] })
        assert.is_nil(d)
        assert.equal(401, status)
        assert.equal("Invalid bridge token.", msg)
      end)
    end

    it("accepts the exact header, its name in any case", function()
      assert.is_table(check(p, { headers = { { "authorization", "Bearer " .. TOKEN } } }))
      assert.is_table(check(p, { headers = { { "AUTHORIZATION", "Bearer " .. TOKEN } } }))
    end)

    it("is checked first: a bad token with a bad target answers 401", function()
      local _, status = check(p, { headers = {}, target = "/api/issues/%2e%2e/approvals" })
      assert.equal(401, status)
    end)
  end)

  describe("targets", function()
    local hostile = {
      -- upstream's measured bypasses (7.1-2)
      "/api/issues/x\\..\\..\\secrets",
      "/api/issues/%2e%2e/approvals",
      "/api/companies/c1\\..\\..\\companies\\c1\\secrets",
      -- dot segments, raw and encoded in every case
      "/api/issues/../secrets", "/api/issues/./i1", "/api/agents/me/..", "/../api/agents/me",
      "/api/issues/..", "/api/issues/.", "/api/issues/%2E%2E", "/api/issues/%2e%2E",
      "/api/issues/.%2e", "/api/issues/%2e.", "/api/issues/.%2E", "/api/issues/%2E.",
      "/api/issues/%2e", "/api/issues/%2E", "/api/issues/a%2eb",
      -- encoded slashes and backslashes
      "/api/issues/a%2Fb", "/api/issues/a%2fb", "/api/issues/%2F..%2F",
      "/api/issues/a\\b", "/api/issues\\i1", "/api/issues/a%5cb", "/api/issues/a%5Cb",
      -- NUL and controls, raw and encoded
      "/api/issues/a\0b", "/api/issues/a\tb", "/api/issues/a\rb", "/api/issues/a\nb",
      "/api/issues/a\127b", "/api/issues/a\27b", "/api/issues/a%00b", "/api/issues/a%0ab",
      "/api/issues/a%0D%0Ab", "/api/issues/a%1fb", "/api/issues/a%7Fb", "/api/issues/a%7fb",
      -- empty segments and a trailing slash
      "/api//agents/me", "/api/agents//me", "/api/agents/me/", "/api/issues/i1//",
      -- other origins and forms
      "//evil.example/api/agents/me", "http://evil/api/agents/me",
      "https://evil.example/api/agents/me", "evil.example:443", "api/agents/me", "*", "",
      -- overlong and invalid %-escapes
      "/api/issues/%", "/api/issues/%2", "/api/issues/a%zz", "/api/issues/%g0",
      "/api/issues/%%32%65", "/api/issues/%c0%ae%c0%ae", "/api/issues/%c0%af",
      "/api/issues/%e0%80%ae", "/api/issues/%ff", "/api/issues/%e2%82",
      -- fragments
      "/api/agents/me#x", "/api/agents/me?view=1#x", "/api/agents/me#",
      -- spaces and raw non-ASCII
      "/api/agents/me x", "/api/issues/ i1", "/api/agents/me?view=a b",
      "/api/issues/\195\169", "/api/agents/me?q=\195\169",
      -- controls in the query
      "/api/agents/me?a=\r\nX-Evil: 1", "/api/agents/me?a=\0", "/api/agents/me?a=\127",
    }
    for _, target in ipairs(hostile) do
      it("refuses " .. quoted(target) .. " with 400", function()
        local path, reason = policy.canonical_target(target)
        assert.is_nil(path)
        assert.is_string(reason)
        for _, method in ipairs({ "GET", "POST" }) do
          local d, status, msg = check(p, { method = method, target = target })
          assert.is_nil(d)
          assert.equal(400, status)
          assert.equal("Bad request target: " .. reason, msg)
          assert.is_nil(msg:find("[%z\1-\31\127-\255]"), "raw control byte in the message")
        end
      end)
    end

    it("says why, without echoing the target", function()
      local cases = {
        { "/api/issues/%2e%2e/approvals", 'encoded "." (%2e) in path' },
        { "/api/issues/a%2Fb", 'encoded "/" (%2F) in path' },
        { "/api/issues/a%5cb", 'encoded "\\" (%5c) in path' },
        { "/api/issues/x\\..", 'backslash ("\\") in path' },
        { "/api/issues/a%0ab", "encoded control byte (%0a) in path" },
        { "/api/issues/a\nb", "control byte 0x0a in path" },
        { "/api/issues/a b", "space in path" },
        { "/a?b=\0", "control byte 0x00 in query" },
        { "/api/issues/\255", "non-ASCII byte 0xff in path" },
        { "/api/issues/%zz", "malformed %-escape in path" },
        { "/api/issues/%c0%ae", "%-escapes in path do not decode to valid UTF-8" },
        { "/api/issues/..", "dot segment in path" },
        { "/api/agents/me/", "empty segment in path" },
        { "//evil.example/api", 'starts with "//"' },
        { "http://evil/api", 'not origin-form (must start with "/")' },
        { "*", "asterisk-form is not allowed" },
        { "/a#b", 'fragment ("#") is not allowed' },
      }
      for _, case in ipairs(cases) do
        assert.same({ nil, case[2] }, { policy.canonical_target(case[1]) })
      end
    end)

    it("keeps a canonical path and its query exactly as sent", function()
      local cases = {
        { "/api/agents/me", "/api/agents/me", "" },
        { "/api/agents/me?", "/api/agents/me", "" },
        { "/api/agents/me?view=compact", "/api/agents/me", "view=compact" },
        { "/api/issues/a%20b?x=%zz&y=../..&z=a?b", "/api/issues/a%20b", "x=%zz&y=../..&z=a?b" },
        { "/api/issues/%E2%82%AC", "/api/issues/%E2%82%AC", "" },
        { "/api/issues/%25", "/api/issues/%25", "" },
        { "/", "/", "" },
      }
      for _, case in ipairs(cases) do
        assert.same({ case[2], case[3] }, { policy.canonical_target(case[1]) })
      end
      local d = check(p, { target = "/api/agents/me?view=compact&x=1" })
      assert.equal("/api/agents/me", d.path)
      assert.equal("view=compact&x=1", d.query)
    end)
  end)

  describe("bodies", function()
    local target = "/api/issues/i1/comments"

    local json_types = { "application/json", "application/json; charset=utf-8",
      "Application/JSON", " application/json ;charset=UTF-8", "application/problem+json",
      "application/merge-patch+json" }
    for _, ct in ipairs(json_types) do
      it("accepts a body of type " .. ct, function()
        local d = check(p, { method = "POST", target = target, body_length = 12,
          extra = { { "Content-Type", ct } } })
        assert.is_table(d)
        assert.equal(12, d.body_length)
        assert.same({ { "content-type", (ct:gsub("^%s+", ""):gsub("%s+$", "")) } }, d.headers)
      end)
    end

    local refused = { "application/jsonp", "text/plain", "text/json", "application/x-json",
      "application/json-seq", "json", "+json", "", "application/jsonx; charset=utf-8",
      "text/plain; note=application/json" }
    for _, ct in ipairs(refused) do
      it("refuses a body of type " .. quoted(ct) .. " with 415", function()
        local d, status, msg = check(p, { method = "POST", target = target, body_length = 2,
          extra = { { "Content-Type", ct } } })
        assert.is_nil(d)
        assert.equal(415, status)
        assert.equal("Bridge only accepts JSON request bodies.", msg)
      end)
    end

    it("refuses a body without a content type, by length or chunked", function()
      assert.equal(415, select(2, check(p, { method = "POST", target = target, body_length = 2 })))
      assert.equal(415, select(2, check(p, { method = "POST", target = target, chunked = true })))
      assert.equal(415, select(2, check(p, { method = "POST", target = target,
        extra = { { "Content-Length", "5" } } })))
    end)

    it("refuses a body with two content types", function()
      local _, status = check(p, { method = "POST", target = target, body_length = 2,
        extra = { { "Content-Type", "application/json" }, { "Content-Type", "text/plain" } } })
      assert.equal(415, status)
    end)

    it("needs no content type without a body (DELETE, GET, a bare POST)", function()
      assert.is_table(check(p, { method = "DELETE", target = "/api/routine-triggers/t1" }))
      assert.is_table(check(p, { method = "DELETE", target = "/api/routine-triggers/t1",
        body_length = 0 }))
      assert.is_table(check(p, { method = "GET", target = "/api/issues/i1" }))
      assert.is_table(check(p, { method = "POST", target = "/api/issues/i1/checkout",
        extra = { { "Content-Length", "0" } } }))
    end)

    local ambiguous = {
      { "Content-Length and chunked", { body_length = 5, chunked = true } },
      { "a Content-Length header and chunked", { chunked = true,
        extra = { { "Content-Length", "5" } } } },
      { "Content-Length and a Transfer-Encoding header", { body_length = 5,
        extra = { { "Transfer-Encoding", "chunked" } } } },
      { "two differing Content-Length headers", { extra = { { "Content-Length", "5" },
        { "content-length", "50" } } } },
      { "a Content-Length list", { extra = { { "Content-Length", "5, 5" } } } },
      { "a Content-Length that is not a number", { extra = { { "Content-Length", "5x" } } } },
      { "a negative Content-Length", { extra = { { "Content-Length", "-1" } } } },
      { "an empty Content-Length", { extra = { { "Content-Length", "" } } } },
      { "a huge Content-Length", { extra = { { "Content-Length", "99999999999999999999" } } } },
      { "a Content-Length header unlike body_length", { body_length = 6,
        extra = { { "Content-Length", "5" } } } },
      { "a negative body_length", { body_length = -1 } },
      { "a fractional body_length", { body_length = 1.5 } },
      { "a coding other than chunked", { extra = { { "Transfer-Encoding", "gzip, chunked" } } } },
      { "two Transfer-Encoding headers", { extra = { { "Transfer-Encoding", "chunked" },
        { "Transfer-Encoding", "chunked" } } } },
      { "a disguised chunked", { extra = { { "Transfer-Encoding", "xchunked" } } } },
      { "a chunked header the transport did not read as chunked", { chunked = false,
        extra = { { "Transfer-Encoding", "chunked" } } } },
    }
    for _, case in ipairs(ambiguous) do
      it("refuses " .. case[1] .. " with 400", function()
        local extra = { { "Content-Type", "application/json" } }
        for _, h in ipairs(case[2].extra or {}) do
          extra[#extra + 1] = h
        end
        local d, status, msg = check(p, { method = "POST", target = target, extra = extra,
          body_length = case[2].body_length, chunked = case[2].chunked })
        assert.is_nil(d)
        assert.equal(400, status)
        assert.equal("Bad request framing.", msg)
      end)
    end

    it("accepts a repeated identical Content-Length, and a chunked body", function()
      local d = check(p, json_post(target, { { "Content-Length", "2" },
        { "Content-Length", "2" } }))
      assert.equal(2, d.body_length)
      assert.is_false(d.chunked)
      d = check(p, { method = "POST", target = target, chunked = true,
        extra = { { "Content-Type", "application/json" }, { "Transfer-Encoding", "Chunked" } } })
      assert.is_nil(d.body_length)
      assert.is_true(d.chunked)
      assert.equal(MAX, d.max_body) -- the transport enforces it while the body streams
    end)

    it("refuses a body over the limit with 413, naming the limit", function()
      local o = json_post(target)
      o.body_length = MAX + 1
      local d, status, msg = check(p, o)
      assert.is_nil(d)
      assert.equal(413, status)
      assert.equal("Bridge request body exceeds 10551296 bytes.", msg)
      o.body_length = MAX
      assert.is_table(check(p, o))
    end)

    it("takes the limit from the options and the length from either source", function()
      local q = policy.new({ token = TOKEN, max_request_body = 100 })
      local o = json_post(target, { { "Content-Length", "101" } })
      o.body_length = nil
      local _, status, msg = check(q, o)
      assert.equal(413, status)
      assert.equal("Bridge request body exceeds 100 bytes.", msg)
      assert.equal(100, check(q, json_post(target)).max_body)
    end)
  end)

  describe("headers", function()
    it("forwards only the allowlist, lowercased, never credentials or routing", function()
      local d = check(p, { extra = {
        { "Accept", "application/json" }, { "If-None-Match", '"abc"' },
        { "If-Match", '"def"' }, { "Cookie", "session=1" }, { "X-Paperclip-Run-Id", "run-1" },
        { "X-Forwarded-For", "10.0.0.1" }, { "X-Forwarded-Host", "evil" }, { "Host", "evil" },
        { "X-Bridge-Debug", "1" }, { "Proxy-Authorization", "Basic x" },
        { "Connection", "close" }, { "Content-Length", "0" },
      } })
      assert.same({ { "accept", "application/json" }, { "if-none-match", '"abc"' },
        { "if-match", '"def"' } }, d.headers)
    end)

    it("joins repeats with \", \" in order, trims values and skips blank ones", function()
      local d = check(p, { extra = { { "Accept", " text/html " }, { "x-other", "1" },
        { "ACCEPT", "application/json" }, { "accept", "   " }, { "If-Match", "" },
        { "If-None-Match", "a\tb" } } })
      assert.same({ { "accept", "text/html, application/json" }, { "if-none-match", "a\tb" } },
        d.headers)
    end)

    local smuggled = {
      { "Accept", "application/json\r\nX-Evil: 1" }, { "If-Match", "a\nb" },
      { "If-None-Match", "a\0b" }, { "Accept", "a\rb" }, { "X-Dropped", "a\r\nHost: evil" },
      { "Accept", "a\27b" },
    }
    for _, h in ipairs(smuggled) do
      it("refuses " .. h[1] .. ": " .. quoted(h[2]) .. " with 400", function()
        local d, status, msg = check(p, { extra = { h } })
        assert.is_nil(d)
        assert.equal(400, status)
        assert.equal("Bad header value: " .. h[1], msg)
      end)
    end

    it("escapes control bytes of a header name in the message", function()
      local _, status, msg = check(p, { extra = { { "X\r\nY", "a\nb" } } })
      assert.equal(400, status)
      assert.equal("Bad header value: X\\x0d\\x0aY", msg)
    end)

    it("takes another allowlist from the options", function()
      local q = policy.new({ token = TOKEN,
        request_headers = { "Accept", "X-Paperclip-GitHub-Capability" } })
      local d = check(q, { extra = { { "accept", "a" }, { "Content-Type", "b" },
        { "x-paperclip-github-capability", "c" } } })
      assert.same({ { "accept", "a" }, { "x-paperclip-github-capability", "c" } }, d.headers)
    end)

    it("returns the whole decision", function()
      local d = check(p, { target = "/api/agents/me?view=compact",
        extra = { { "Accept", "application/json" } } })
      assert.same({ method = "GET", path = "/api/agents/me", query = "view=compact",
        headers = { { "accept", "application/json" } }, max_body = MAX, chunked = false }, d)
    end)

    it("raises on a malformed request (misuse)", function()
      assert.has_error(function()
        p:check_request({ method = "GET", target = "/", headers = { { "a" } } })
      end, "bad argument #1 to 'check_request' (header 1 must be {name, value} strings)")
      assert.has_error(function()
        p:check_request({ method = "GET", headers = {} })
      end, "bad argument #1 to 'check_request' (field 'target' must be a string)")
    end)
  end)

  describe("responses", function()
    it("keeps the allowlisted headers only, lowercased and trimmed", function()
      local status, headers = p:filter_response(200, {
        { "Content-Type", "application/json" }, { "ETag", ' "v1" ' },
        { "Last-Modified", "Tue, 01 Jul 2025 00:00:00 GMT" }, { "Set-Cookie", "s=1" },
        { "X-Secret-Header", "x" }, { "Content-Length", "12" }, { "Location", "/x" },
        { "Connection", "keep-alive" }, { "etag", "" },
      })
      assert.equal(200, status)
      assert.same({ { "content-type", "application/json" }, { "etag", '"v1"' },
        { "last-modified", "Tue, 01 Jul 2025 00:00:00 GMT" } }, headers)
    end)

    it("accepts a map of headers too", function()
      local _, headers = p:filter_response(200, { ["content-type"] = "application/json",
        ["set-cookie"] = "s=1", etag = "e" })
      assert.same({ { "content-type", "application/json" }, { "etag", "e" } }, headers)
    end)

    it("drops a value holding CR, LF or NUL", function()
      local _, headers = p:filter_response(200, { { "Content-Type", "a\r\nSet-Cookie: x" },
        { "etag", "a\0" } })
      assert.same({}, headers)
    end)

    it("turns an indeterminate outcome into 409 and keeps the marker", function()
      for _, upstream in ipairs({ 504, 200, 502 }) do
        local status, headers = p:filter_response(upstream, {
          { "X-Paperclip-Bridge-Outcome", "indeterminate" },
          { "content-type", "application/json" } })
        assert.equal(409, status)
        assert.same({ { "x-paperclip-bridge-outcome", "indeterminate" },
          { "content-type", "application/json" } }, headers)
      end
      assert.equal(504, (p:filter_response(504, { { "x-paperclip-bridge-outcome", "done" } })))
    end)

    it("passes every other status unchanged, redirects included", function()
      for _, status in ipairs({ 200, 201, 204, 301, 302, 304, 307, 400, 404, 409, 500, 503 }) do
        assert.equal(status, (p:filter_response(status, {})))
      end
    end)
  end)

  describe("new_token", function()
    it("gives 32 base64url characters, different every time", function()
      local seen = {}
      for _ = 1, 50 do
        local t = assert(policy.new_token())
        assert.equal(32, #t)
        assert.matches("^[A-Za-z0-9_-]+$", t)
        assert.is_nil(seen[t])
        seen[t] = true
      end
    end)

    it("makes tokens a policy accepts", function()
      local t = policy.new_token()
      local q = policy.new({ token = t })
      assert.is_table(q:check_request(request({ headers = { { "Authorization",
        "Bearer " .. t } } })))
      assert.equal(401, select(2, check(q, {})))
    end)
  end)

  describe("catalogue", function()
    it("holds upstream's statuses and messages", function()
      local c = policy.CATALOGUE
      assert.same({ 401, "Invalid bridge token." }, { c.bad_token.status, c.bad_token.message })
      assert.equal(403, c.route_denied.status)
      assert.equal(415, c.not_json.status)
      assert.equal(413, c.too_large.status)
      assert.equal(400, c.bad_target.status)
      assert.equal(409, c.indeterminate.status)
      assert.equal(502, c.forward_failed.status)
      assert.equal("Bridge response body exceeded the configured size limit of 32 bytes.",
        c.response_too_large.message:format(32))
      assert.same({ 503, "Bridge worker stopped before request could be handled." },
        { c.closing.status, c.closing.message })
    end)

    it("writes error bodies as JSON", function()
      assert.equal('{"error":"Invalid bridge token."}', policy.error_body("Invalid bridge token."))
      assert.equal('{"error":"a \\"q\\"\\n"}', policy.error_body('a "q"\n'))
      local status, headers, body = policy.reply(403, "Route not allowed: GET /x")
      assert.equal(403, status)
      assert.same({ { "content-type", "application/json" } }, headers)
      assert.equal('{"error":"Route not allowed: GET /x"}', body)
    end)

    it("writes the indeterminate answer as upstream's backstop, with 409", function()
      local status, headers, body = policy.indeterminate_reply("timed out")
      assert.equal(409, status)
      assert.same({ { "content-type", "application/json" },
        { "x-paperclip-bridge-outcome", "indeterminate" } }, headers)
      assert.equal('{"error":"timed out","outcome":"indeterminate","retryable":false}', body)
    end)
  end)
end)
