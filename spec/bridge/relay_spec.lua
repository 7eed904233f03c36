-- spec/bridge/relay_spec.lua: ph-sandbox-helper relay, driven as the host drives it: frames
-- on its stdin and stdout (host.core.frame), TCP clients on loopback (host.core.rawtcp).
local frame = require("host.core.frame")
local helper_procs = require("spec.support.helper_procs")
local helpers = require("spec.helpers")
local proc = require("host.proc")
local rawtcp = require("host.core.rawtcp")

local T = 20 -- bounds every wait; no spec relies on time passing
local WINDOW = frame.WINDOW

local Relay = {}
Relay.__index = Relay

-- The host's view of the relay's output: every frame in order, and per stream what came.
function Relay:on_frame(f)
  self.frames[#self.frames + 1] = f
  local s = self:stream(f.stream)
  if f.type == "OPEN" then
    self.opens[#self.opens + 1] = f.stream
  elseif f.type == "DATA" then
    assert(not s.fin, "DATA after FIN on stream " .. f.stream)
    s.data[#s.data + 1] = f.payload
    s.len = s.len + #f.payload
  elseif f.type == "FIN" then
    s.fin = true
  elseif f.type == "RESET" then
    s.reset = true
  elseif f.type == "CREDIT" then
    s.credit = s.credit + f.credit
    s.credits = s.credits + 1
  end
end

function Relay:stream(id)
  local s = self.streams[id]
  if not s then
    s = { data = {}, len = 0, credit = 0, credits = 0 }
    self.streams[id] = s
  end
  return s
end

function Relay:bytes(id)
  return table.concat(self:stream(id).data)
end

-- Wait for pred() (polled), failing at once if the relay died or its output broke the format.
function Relay:await(pred, what)
  return helpers.eventually(function()
    assert(not self.decode_error, self.decode_error)
    local v = pred()
    if not v and self.proc:done() then
      error(what .. ": the relay exited: " .. table.concat(self.stderr), 0)
    end
    return v
  end, what, T)
end

function Relay:send(type_name, stream, payload)
  assert(self.proc:write(frame.encode(type_name, stream, payload)))
end

function Relay:credit(stream, n)
  self:send("CREDIT", stream, string.pack(">I4", n))
end

-- DATA frames of at most MAX_PAYLOAD bytes carrying bytes.
function Relay:send_data(stream, bytes)
  for i = 1, #bytes, frame.MAX_PAYLOAD do
    self:send("DATA", stream, bytes:sub(i, i + frame.MAX_PAYLOAD - 1))
  end
end

-- The id of the next stream OPENed (in order).
function Relay:next_open()
  local n = self.opens_taken + 1
  self:await(function()
    return self.opens[n]
  end, "OPEN #" .. n)
  self.opens_taken = n
  return self.opens[n]
end

-- A client connected through the relay, and the stream the relay made of it.
function Relay:connect()
  local c = assert(rawtcp.connect("127.0.0.1", self.port, T))
  return c, self:next_open()
end

-- The relay's exit: { exit_code, stderr, ... }.
function Relay:wait()
  return assert(self.proc:wait(T))
end

local function start(...)
  local r = setmetatable({
    frames = {},
    streams = {},
    opens = {},
    opens_taken = 0,
    stderr = {},
    decoder = frame.decoder(),
  }, Relay)
  local on_stdout, on_stderr = helper_procs.frames_to(r)
  r.proc = assert(proc.spawn({
    argv = { helpers.sandbox_helper(), "relay", ... },
    stdin = true,
    timeout = 120,
    max_output = 1 << 30,
    on_stdout = on_stdout,
    on_stderr = on_stderr,
  }))
  r.hello = helper_procs.hello(r)
  r.port = r.hello.port
  return r
end

-- Runs fn(relay, ...) as a task with a relay started with args; the relay is gone afterwards,
-- whether fn fails or not.
local function with_relay(args, fn)
  return helpers.run(function()
    local r = start(table.unpack(args))
    return helpers.with_cleanup(fn, function()
      if not r.proc:done() then
        r.proc:terminate()
      end
      r.proc:wait(T)
    end, r)
  end)
end

-- Exactly n bytes from the client c.
local function recv_n(c, n)
  local got, len = {}, 0
  while len < n do
    local chunk, err = c:recv(T)
    assert(chunk, err or "end of stream after " .. len .. " of " .. n .. " bytes")
    got[#got + 1] = chunk
    len = len + #chunk
  end
  local s = table.concat(got)
  assert.equal(n, #s)
  return s
end

-- Bytes from the client c up to and including a newline.
local function recv_line(c)
  local got = ""
  while not got:find("\n") do
    local chunk, err = c:recv(T)
    assert(chunk, err or "end of stream before a newline: " .. got)
    got = got .. chunk
  end
  return got
end

-- n pseudo-random bytes (deterministic), so that misordering shows.
local function noise(n, seed)
  local out, x = {}, seed or 1
  for i = 1, n do
    x = (x * 1103515245 + 12345) % 2147483648
    out[i] = string.char(x >> 16 & 255)
  end
  return table.concat(out)
end

describe("ph-sandbox-helper relay", function()
  it("announces its port in a HELLO frame", function()
    with_relay({}, function(r)
      assert.equal(1, #r.frames)
      assert.same("HELLO", r.hello.type)
      assert.equal(0, r.hello.stream)
      assert.is_true(r.port > 0 and r.port < 65536)
      assert.equal(frame.MAGIC .. string.pack(">I2", r.port), r.hello.payload)
      local c <close>, id = r:connect() -- the port is really it
      assert.equal(1, id)
      assert(c:send("x"))
    end)
  end)

  it("listens on the port given with --port", function()
    local port = with_relay({}, function(r)
      r.proc:close_stdin()
      assert.equal(0, r:wait().exit_code)
      return r.port
    end)
    with_relay({ "--port", tostring(port) }, function(r)
      assert.equal(port, r.port)
    end)
  end)

  it("carries bytes both ways for a connection, in order", function()
    with_relay({}, function(r)
      local c <close>, id = r:connect()
      local up = helpers.all_bytes() .. noise(150000, 7)
      for i = 1, #up, 10000 do
        assert(c:send(up:sub(i, i + 9999)))
      end
      r:await(function()
        return r:stream(id).len >= #up
      end, "the client's bytes")
      assert.is_true(up == r:bytes(id))

      local down = noise(200000, 11) .. helpers.all_bytes()
      r:send_data(id, down)
      assert.is_true(down == recv_n(c, #down))
      assert.is_nil(r:stream(id).fin)
      assert.is_nil(r:stream(id).reset)
    end)
  end)

  it("grants credit back to the host as the socket takes its bytes", function()
    with_relay({}, function(r)
      local c <close>, id = r:connect()
      -- a whole window, then (once granted back) another one: more than the relay could hold
      local first, second = noise(WINDOW, 3), noise(WINDOW, 5)
      r:send_data(id, first)
      assert.is_true(first == recv_n(c, #first))
      r:await(function()
        return r:stream(id).credit == WINDOW
      end, "credit for the first window")
      r:send_data(id, second)
      assert.is_true(second == recv_n(c, #second))
      r:await(function()
        return r:stream(id).credit == 2 * WINDOW
      end, "credit for the second window")
    end)
  end)

  it("many connections at once, each its own stream", function()
    with_relay({}, function(r)
      local N = 100
      local clients, ids = {}, {}
      for i = 1, N do
        clients[i] = assert(rawtcp.connect("127.0.0.1", r.port, T))
        assert(clients[i]:send("client " .. i .. "\n"))
      end
      for i = 1, N do
        ids[i] = r:next_open()
      end
      for i = 1, N do -- odd, increasing, distinct
        assert.equal(1, ids[i] % 2)
        assert.is_true(i == 1 or ids[i] > ids[i - 1])
      end
      -- which stream is which client: by what each sent
      local client_of = {}
      for _, id in ipairs(ids) do
        local line = r:await(function()
          return r:bytes(id):match("^client (%d+)\n$")
        end, "the line of stream " .. id)
        client_of[id] = tonumber(line)
      end
      for _, id in ipairs(ids) do
        r:send("DATA", id, "reply to " .. client_of[id] .. " on " .. id .. "\n")
      end
      local seen = {}
      for i = 1, N do
        local c = clients[i]
        local line = recv_line(c)
        local who, id = line:match("^reply to (%d+) on (%d+)\n$")
        assert.equal(i, tonumber(who))
        assert.is_nil(seen[id])
        seen[id] = true
        c:close()
      end
    end)
  end)

  it("a client's half-close arrives as FIN, and FIN from the host half-closes the socket",
  function()
    with_relay({}, function(r)
      local c <close>, id = r:connect()
      assert(c:send("last words"))
      c:shutdown()
      r:await(function()
        return r:stream(id).fin
      end, "FIN from the relay")
      assert.equal("last words", r:bytes(id)) -- all of it, before the FIN
      -- the other direction is still open
      r:send("DATA", id, "an answer")
      assert.equal("an answer", recv_n(c, 9))
      r:send("DATA", id, "and more")
      r:send("FIN", id)
      assert.equal("and more", recv_n(c, 8))
      assert.is_nil(c:recv(T)) -- end of stream, not a reset
      -- FIN went both ways: the stream is forgotten, late frames about it are dropped
      r:credit(id, 10)
      local c2, id2 = r:connect()
      c2:close()
      assert.equal(id + 2, id2)
      assert.is_nil(r:stream(id).reset)
    end)
  end)

  it("RESET from the host closes the connection", function()
    with_relay({}, function(r)
      local c <close>, id = r:connect()
      r:send("RESET", id)
      local res, err, code = c:recv(T)
      assert.is_nil(res)
      assert.equal("closed", code) -- an RST, not an orderly end of stream
      assert.matches("reset", err)
      -- frames that crossed the RESET on the wire are dropped; the relay goes on
      r:send("DATA", id, "late")
      r:send("FIN", id)
      local c2 <close>, id2 = r:connect()
      assert(c2:send("still here"))
      r:await(function()
        return r:bytes(id2) == "still here"
      end, "the next connection's bytes")
      assert.is_nil(r:stream(id).reset) -- the relay does not answer a RESET
    end)
  end)

  it("a socket that fails while the host writes to it ends in RESET", function()
    with_relay({}, function(r)
      local c, id = r:connect()
      c:close() -- the client is gone: the relay sees FIN, and its writes will fail
      local s = r:stream(id)
      r:await(function()
        return s.fin
      end, "FIN for the closed client")
      -- The first write may still succeed (the peer answers it with an RST); each DATA is
      -- answered by CREDIT while the socket takes it, or by RESET once it fails.
      for i = 1, 100 do
        r:send("DATA", id, "x")
        r:await(function()
          return s.reset or s.credit == i
        end, "the relay's answer to DATA " .. i)
        if s.reset then
          break
        end
      end
      assert.is_true(s.reset)
      r:send("DATA", id, "late") -- crossed the RESET: dropped
      local c2, id2 = r:connect()
      c2:close()
      assert.equal(id + 2, id2)
    end)
  end)

  it("stops reading a socket when its credit is used up, and resumes on CREDIT", function()
    with_relay({}, function(r)
      local c <close>, id = r:connect()
      local total = 1024 * 1024
      local up = noise(total, 13)
      assert(c:send(up))
      local s = r:stream(id)
      local pings = 0
      -- An ordering point: the relay wrote our ping to the socket and credited it, so it went
      -- round its loop with the socket readable. Whatever it read by then has arrived.
      local function sync()
        pings = pings + 1
        r:send("DATA", id, "p")
        r:await(function()
          return s.credit == pings
        end, "credit for ping " .. pings)
      end
      local granted = 0
      for _, grant in ipairs({ 0, 100000, 300000, total - WINDOW - 400000 }) do
        if grant > 0 then
          r:credit(id, grant)
          granted = granted + grant
        end
        local expect = math.min(WINDOW + granted, total)
        r:await(function()
          return s.len >= expect
        end, expect .. " bytes")
        sync()
        sync()
        assert.equal(expect, s.len) -- not one byte beyond the credit
      end
      assert.equal(total, s.len)
      assert.is_true(up == r:bytes(id))
      assert.equal(pings, #recv_n(c, pings))
    end)
  end)

  it("refuses connections beyond --max-streams, closing them at once", function()
    with_relay({ "--max-streams", "2" }, function(r)
      local a <close>, ida = r:connect()
      local b <close>, idb = r:connect()
      assert(b:send("b"))
      assert.same({ 1, 3 }, { ida, idb })
      local c <close> = assert(rawtcp.connect("127.0.0.1", r.port, T))
      local res, _, code = c:recv(T)
      assert.is_nil(res)
      assert.is_true(code == nil or code == "closed") -- closed at once, no stream for it
      a:close()
      r:await(function()
        return r:stream(ida).fin
      end, "FIN of the first client")
      r:send("FIN", ida) -- FIN both ways: the first stream is gone, so there is room
      r:send("DATA", idb, "sync") -- once this is credited, the relay has seen the FIN
      r:await(function()
        return r:stream(idb).credit == 4
      end, "credit for the sync")
      local d, idd = r:connect()
      d:close()
      assert.equal(5, idd) -- the refused connection never had an id
      assert.same({ 1, 3, 5 }, r.opens)
    end)
  end)

  it("exits when stdin closes, leaving no listening socket", function()
    with_relay({}, function(r)
      local c <close> = r:connect()
      assert(r.proc:close_stdin())
      local res = r:wait()
      assert.equal(0, res.exit_code)
      assert.equal("", res.stderr)
      assert.is_nil((c:recv(T))) -- its connections are closed too
      local conn, err, code = rawtcp.connect("127.0.0.1", r.port, T)
      assert.is_nil(conn, "something still listens on the relay's port")
      assert.equal("connect", code, err)
    end)
  end)

  it("exits on GOAWAY from the host", function()
    with_relay({}, function(r)
      local c <close> = r:connect()
      r:send("GOAWAY", 0, "done here")
      local res = r:wait()
      assert.equal(0, res.exit_code)
      assert.equal("", res.stderr)
      assert.is_nil((c:recv(T)))
    end)
  end)

  describe("a protocol error from the host ends it with a message on stderr", function()
    local raw = helper_procs.raw_frame
    local cases = {
      { "an unknown frame type", raw(9, 1), "frame: unknown type 0x09" },
      { "an oversized frame", raw(3, 1, ("x"):rep(frame.MAX_PAYLOAD + 1)), "exceeds the maximum" },
      { "DATA on stream 0", raw(3, 0, "x"), "DATA on stream 0" },
      { "DATA on a stream never opened", frame.encode("DATA", 5, "x"), "stream 5, which was" },
      { "an even stream id", frame.encode("FIN", 2), "stream 2, which was never opened" },
      { "OPEN from the host", frame.encode("OPEN", 1), "OPEN from the host" },
      { "DATA after FIN", frame.encode("FIN", 1) .. frame.encode("DATA", 1, "x"), "DATA after" },
      { "a second FIN", frame.encode("FIN", 1) .. frame.encode("FIN", 1), "a second FIN" },
      {
        "credit past 2^32-1",
        frame.encode("CREDIT", 1, string.pack(">I4", 0xffffffff)),
        "past 2^32%-1",
      },
      { "stdin ending inside a frame", raw(3, 1, "abc"):sub(1, 10), "stdin ended inside a frame" },
    }
    for _, case in ipairs(cases) do
      local what, bytes, message = case[1], case[2], case[3]
      it(what, function()
        with_relay({}, function(r)
          local c <close> = r:connect() -- stream 1 exists
          local _, last = helper_procs.protocol_error(r, r.proc,
            { what = what, bytes = bytes, subcommand = "relay", message = message })
          assert.matches(message, last.payload)
          assert.is_nil((c:recv(T)))
        end)
      end)
    end
  end)

  it("prints its version, and refuses a bad command line", function()
    helpers.run(function()
      local helper = helpers.sandbox_helper()
      local res = assert(proc.run({ argv = { helper, "--version" }, timeout = T }))
      assert.equal(0, res.exit_code)
      assert.matches("^ph%-sandbox%-helper %d+%.%d+%.%d+ %(frames PHRELAY1%)\n$", res.stdout)
      for _, argv in ipairs({ {}, { "nope" }, { "relay", "--port" }, { "relay", "--port", "x" },
        { "relay", "--port", "70000" }, { "relay", "--max-streams", "0" }, { "relay", "-x" } }) do
        table.insert(argv, 1, helper)
        res = assert(proc.run({ argv = argv, timeout = T }))
        assert.equal(2, res.exit_code, table.concat(argv, " "))
        assert.matches("usage: ph%-sandbox%-helper", res.stderr)
        assert.equal("", res.stdout)
      end
    end)
  end)
end)
