-- spec/worker/replies_spec.lua: every request gets a well-formed reply (issue 11, item 6). An
-- id JSON can write but not carry back (1e400) is answered with id null and -32600; bytes that
-- are not UTF-8 are never echoed raw (every line is valid UTF-8 JSON); a fractional or huge
-- timeoutMs is rounded or refused with a message that names it.
local json = require("host.json")
local util = require("host.util")
local wp = require("spec.support.worker_process")

local function with_worker(fn)
  return wp.with(fn, nil, { env = { PROVIDER_HOST_LOG = "error" } })
end

local params = wp.params

-- The next line, checked: valid UTF-8, one JSON object -> the decoded message.
local function next_message(w)
  local line = assert(w:recv_line(20))
  assert.is_true(util.utf8_valid(line), "a reply line is not valid UTF-8: " .. line)
  local msg = json.decode(line)
  assert.is_table(msg, "not JSON: " .. line)
  return msg, line
end

-- The next reply (a message without a method), every line before it checked too.
local function next_reply(w)
  while true do
    local msg, line = next_message(w)
    if msg.method == nil then
      return msg, line
    end
  end
end

local function line_of(t)
  return assert(json.encode(t)) .. "\n"
end

describe("worker replies", function()
  it("answers an id it cannot echo (1e400, -1e400) with id null and -32600", function()
    with_worker(function(w)
      for _, id in ipairs({ "1e400", "-1e400" }) do
        w:send('{"jsonrpc":"2.0","id":' .. id .. ',"method":"health"}\n')
        local r = next_reply(w)
        assert.equal(json.null, r.id)
        assert.equal(-32600, r.error.code)
        assert.matches("id must be a finite number", r.error.message)
      end
      -- and with a method that is not a string, or no JSON-RPC 2.0 at all
      w:send('{"jsonrpc":"2.0","id":1e400,"method":7}\n')
      local r = next_reply(w)
      assert.equal(json.null, r.id)
      assert.equal(-32600, r.error.code)
      w:send('{"jsonrpc":"1.0","id":1e400,"method":"health"}\n')
      r = next_reply(w)
      assert.equal(json.null, r.id)
      assert.equal(-32600, r.error.code)
      -- ids it can carry keep being echoed as they came
      w:send('{"jsonrpc":"2.0","id":1.5,"method":"health"}\n')
      r = next_reply(w)
      assert.equal(1.5, r.id)
      assert.equal("ok", r.result.status)
      w:send('{"jsonrpc":"2.0","id":1e300,"method":"health"}\n')
      r = next_reply(w)
      assert.equal(1e300, r.id)
    end)
  end)

  it("never echoes bytes that are not UTF-8: id, method, driverKey, command", function()
    with_worker(function(w)
      assert(w:initialize())
      -- an id: it cannot be echoed, even cleaned (that would be another id)
      w:send('{"jsonrpc":"2.0","id":"a\255b","method":"health"}\n')
      local r = next_reply(w)
      assert.equal(json.null, r.id)
      assert.equal(-32600, r.error.code)
      assert.equal("Invalid Request: id is not valid UTF-8", r.error.message)
      -- a method
      w:send('{"jsonrpc":"2.0","id":2,"method":"bad\254\192\128"}\n')
      r = next_reply(w)
      assert.equal(2, r.id)
      assert.equal(-32601, r.error.code)
      assert.equal("Unknown method: bad\u{FFFD}\u{FFFD}\u{FFFD}", r.error.message)
      -- a driverKey
      w:send(line_of({ jsonrpc = "2.0", id = 3, method = "environmentProbe",
        params = params({ driverKey = "lo\255cal" }) }))
      r = next_reply(w)
      assert.equal(3, r.id)
      assert.equal(-32602, r.error.code)
      assert.matches("unknown driverKey \"lo\u{FFFD}cal\"", r.error.message, 1, true)
      -- a command name, on a real lease
      w:request(4, "environmentAcquireLease", params({ runId = "r1" }))
      r = next_reply(w)
      assert.equal(4, r.id)
      local lease = { providerLeaseId = r.result.providerLeaseId, metadata = r.result.metadata }
      w:send(line_of({ jsonrpc = "2.0", id = 5, method = "environmentExecute",
        params = params({ lease = lease, command = "no-such-\255command" }) }))
      r = next_reply(w)
      assert.equal(5, r.id)
      local text = r.error and r.error.message or (r.result.stderr .. r.result.stdout)
      assert.is_nil(text:find("\255", 1, true))
      -- a lone surrogate escaped in the JSON (valid JSON, not valid UTF-8 once decoded)
      w:send('{"jsonrpc":"2.0","id":6,"method":"x\\ud800y"}\n')
      r = next_reply(w)
      assert.equal(6, r.id)
      assert.equal(-32601, r.error.code)
      -- (host.json decodes a lone surrogate as U+FFFD: the id comes back as that, valid)
      w:send('{"jsonrpc":"2.0","id":"\\udc00","method":"health"}\n')
      r = next_reply(w)
      assert.is_true(r.id == json.null or r.id == "\u{FFFD}", tostring(r.id))
      -- still serving
      w:request(7, "health", {})
      assert.equal("ok", next_reply(w).result.status)
    end)
  end)

  it("rounds a fractional timeoutMs and refuses a huge one, naming timeoutMs", function()
    with_worker(function(w)
      assert(w:initialize())
      w:request(1, "environmentAcquireLease", params({ runId = "r1" }))
      local r = next_reply(w)
      local lease = { providerLeaseId = r.result.providerLeaseId, metadata = r.result.metadata }
      w:request(2, "environmentExecute", params({ lease = lease, command = "echo",
        args = { "hi" }, timeoutMs = 100.5 }))
      r = next_reply(w)
      assert.equal(2, r.id)
      assert.is_table(r.result, r.error and r.error.message)
      assert.equal("hi\n", r.result.stdout)
      for id, t in pairs({ [3] = "1e15", [4] = "86400001", [5] = "1e400" }) do
        w:send('{"jsonrpc":"2.0","id":' .. id .. ',"method":"environmentExecute","params":'
          .. assert(json.encode(params({ lease = lease, command = "echo" }))):sub(1, -2)
          .. ',"timeoutMs":' .. t .. '}}\n')
        r = next_reply(w)
        assert.equal(id, r.id)
        assert.equal(-32002, r.error.code)
        assert.matches("^environmentExecute: timeoutMs must be at most 86400000", r.error.message)
        assert.is_nil(r.error.message:find("bad argument", 1, true))
      end
      -- a huge config.timeoutMs: the config's own check answers, never a Lua error
      w:request(6, "environmentExecute", params({ lease = lease, command = "echo",
        config = { timeoutMs = 1e15 } }))
      r = next_reply(w)
      assert.equal(6, r.id)
      local msg = r.error and r.error.message or ""
      assert.is_nil(msg:find("bad argument", 1, true), msg)
      assert.matches("timeoutMs", msg)
    end)
  end)
end)
