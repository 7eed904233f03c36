-- spec/bridge/frame_spec.lua: host.core.frame, ph-sandbox-helper's frame codec as the host sees
-- it, the relay's frames and the command server's (bridge/frame.h has the format;
-- spec/c/test_frame.c tests the C codec itself).
local helpers = require("spec.helpers")
local frame = require("host.core.frame")

local function credit(n)
  return string.pack(">I4", n)
end

describe("host.core.frame", function()
  it("exposes the format's constants", function()
    assert.equal(262144, frame.WINDOW)
    assert.equal(65536, frame.MAX_PAYLOAD)
    assert.equal(9, frame.HEADER_SIZE)
    assert.equal("PHRELAY1", frame.MAGIC)
    assert.equal("PHSERVE1", frame.SERVE_MAGIC)
    assert.equal(1048576, frame.REQUEST_MAX)
    assert.same({ HELLO = 1, OPEN = 2, DATA = 3, FIN = 4, RESET = 5, CREDIT = 6, GOAWAY = 7,
      EXEC = 0x10, STDERR = 0x11, EXIT = 0x12, SIGNAL = 0x13 }, frame.TYPES)
  end)

  it("encodes the header as type, then stream and length big-endian", function()
    assert.equal("\3\0\0\1\2\0\0\0\3abc", frame.encode("DATA", 258, "abc"))
    assert.equal("\4\0\0\0\1\0\0\0\0", frame.encode("FIN", 1))
    assert.equal("\6\255\255\255\255\0\0\0\4\0\0\1\0",
      frame.encode("CREDIT", 0xffffffff, credit(256)))
  end)

  it("decodes what it encodes, for every type", function()
    local frames = {
      { "HELLO", 0, frame.MAGIC .. string.pack(">I2", 8080) },
      { "OPEN", 1, "" },
      { "DATA", 1, helpers.all_bytes() },
      { "DATA", 3, ("x"):rep(frame.MAX_PAYLOAD) },
      { "CREDIT", 1, credit(4096) },
      { "FIN", 1, "" },
      { "RESET", 3, "" },
      { "GOAWAY", 0, "bye" },
      { "HELLO", 0, frame.SERVE_MAGIC .. string.pack(">I2", 256) },
      { "EXEC", 2, ("r"):rep(frame.MAX_PAYLOAD) },
      { "STDERR", 2, "oops\n" },
      { "SIGNAL", 2, string.pack(">BI4", 15, 2000) },
      { "EXIT", 2, "\0\127\0" },
      { "EXIT", 4, "\1\9\1" },
    }
    local bytes = {}
    for i, f in ipairs(frames) do
      bytes[i] = frame.encode(f[1], f[2], f[3])
    end
    local got = assert(frame.decoder():feed(table.concat(bytes)))
    assert.equal(#frames, #got)
    for i, f in ipairs(frames) do
      assert.equal(f[1], got[i].type)
      assert.equal(f[2], got[i].stream)
      assert.is_true(f[3] == got[i].payload, "payload of frame " .. i)
    end
    assert.equal(8080, got[1].port)
    assert.equal(frame.MAGIC, got[1].magic)
    assert.is_nil(got[1].max_commands)
    assert.equal(4096, got[5].credit)
    -- the server's: what the host needs, decoded
    assert.same({ frame.SERVE_MAGIC, 256 }, { got[9].magic, got[9].max_commands })
    assert.is_nil(got[9].port)
    assert.same({ 15, 2000 }, { got[12].signal, got[12].kill_after_ms })
    assert.same({ 127, false }, { got[13].exit_code, got[13].timed_out })
    assert.is_nil(got[13].signal)
    assert.same({ 9, true }, { got[14].signal, got[14].timed_out })
    assert.is_nil(got[14].exit_code)
  end)

  it("takes input split anywhere, holding an unfinished frame", function()
    local bytes = frame.encode("DATA", 5, "hello") .. frame.encode("CREDIT", 5, credit(7))
      .. frame.encode("FIN", 5)
    local d = frame.decoder()
    local got = {}
    for i = 1, #bytes do
      local list = assert(d:feed(bytes:sub(i, i)))
      for _, f in ipairs(list) do
        got[#got + 1] = f.type .. ":" .. f.payload
      end
      if i == 3 then
        assert.equal(3, d:buffered())
      end
    end
    assert.same({ "DATA:hello", "CREDIT:" .. credit(7), "FIN:" }, got)
    assert.equal(0, d:buffered())
    assert.same({}, d:feed(""))
  end)

  it("fails with nil, message, \"protocol\" on input that breaks the format, and stays failed",
  function()
    local bad = {
      { "\9\0\0\0\1\0\0\0\0", "unknown type 0x09" },
      { "\20\0\0\0\1\0\0\0\0", "unknown type 0x14" },
      { "\3\0\0\0\1\0\1\0\1", "exceeds the maximum of 65536" },
      { "\3\0\0\0\1\0\0\0\0", "empty DATA on stream 1" },
      { "\1\0\0\0\1\0\0\0\10PHRELAY1\0\80", "HELLO on stream 1" },
      { "\7\0\0\0\2\0\0\0\0", "GOAWAY on stream 2" },
      { "\5\0\0\0\0\0\0\0\0", "RESET on stream 0" },
      { "\6\0\0\0\1\0\0\0\3abc", "CREDIT of 3 bytes" },
      { "\6\0\0\0\1\0\0\0\4\0\0\0\0", "CREDIT of 0 bytes" },
      { "\1\0\0\0\0\0\0\0\10PHRELAY2\0\80", "HELLO without the magic" },
      { "\2\0\0\0\1\0\0\0\1x", "OPEN with a payload" },
      { "\1\0\0\0\0\0\0\0\10PHSERVE1\0\0", "HELLO with 0 commands" },
      { "\16\0\0\0\1\0\0\0\0", "empty EXEC on stream 1" },
      { "\17\0\0\0\1\0\0\0\0", "empty STDERR on stream 1" },
      { "\18\0\0\0\1\0\0\0\2\0\0", "EXIT of 2 bytes" },
      { "\18\0\0\0\1\0\0\0\3\2\0\0", "EXIT of an unknown kind 2" },
      { "\18\0\0\0\1\0\0\0\3\1\0\0", "EXIT by signal 0" },
      { "\18\0\0\0\1\0\0\0\3\0\0\4", "EXIT with unknown flags 0x04" },
      { "\19\0\0\0\1\0\0\0\5\65\0\0\0\0", "SIGNAL of signal 65" },
      { "\19\0\0\0\0\0\0\0\5\15\0\0\0\0", "SIGNAL on stream 0" },
    }
    for _, case in ipairs(bad) do
      local d = frame.decoder()
      local err = helpers.fails_with("protocol", d:feed(frame.encode("FIN", 1) .. case[1]))
      assert.matches("^frame: .*" .. case[2], err)
      assert.equal(err, helpers.fails_with("protocol", d:feed(frame.encode("FIN", 1))))
    end
  end)

  it("raises on a frame that it would refuse to decode", function()
    local misuse = {
      { "PING", 1, "" },
      { "DATA", 0, "x" },
      { "DATA", 1, "" },
      { "DATA", -1, "x" },
      { "DATA", 1 << 32, "x" },
      { "DATA", 1, ("x"):rep(frame.MAX_PAYLOAD + 1) },
      { "HELLO", 0, "PHRELAY1" },
      { "GOAWAY", 1, "" },
      { "CREDIT", 1, "abc" },
      { "FIN", 1, "x" },
      { "EXEC", 1, "" },
      { "EXIT", 1, "\0\0" },
      { "SIGNAL", 1, "\0\0\0\0\0" },
      { "HELLO", 0, frame.SERVE_MAGIC .. "\0\0" },
    }
    for i, args in ipairs(misuse) do
      assert.has_error(function()
        frame.encode(args[1], args[2], args[3])
      end, nil, "case " .. i)
    end
  end)
end)
