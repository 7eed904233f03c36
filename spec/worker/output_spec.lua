-- spec/worker/output_spec.lua: command output through a real worker on the local provider.
-- A reply carries each stream capped at MAX_OUTPUT bytes once JSON-encoded (and says
-- metadata.truncated exactly when something was cut), live output stays an exact prefix of
-- it, and a 50 MB output leaves the worker's peak resident size within 2 x the cap + 32 MB.
local helpers = require("spec.helpers")
local json = require("host.json")
local proc = require("host.proc")
local task = require("host.task")
local util = require("host.util")

local CAP = require("host.worker").MAX_OUTPUT
local PEAK_KB = (2 * CAP + 32 * 1000 * 1000) // 1024

-- Under AddressSanitizer (.ci/sanitize) freed memory waits in its quarantine: no peak to check.
local function assert_peak(peak)
  if not os.getenv("PH_SANITIZE") then
    assert.is_true(peak <= PEAK_KB, ("peak %d kB, bound %d kB"):format(peak, PEAK_KB))
  end
end
local LINE_LIMIT = 128 * 1024 * 1024 -- the host's limit on one line, in UTF-16 code units
local R = "\u{FFFD}"
local EMOJI = "\u{1F600}" -- 4 bytes of UTF-8, 2 UTF-16 units

-- A worker with its stdout cut into lines as they come, nothing else kept (the raw chunks
-- spec.support.worker_process keeps too would double what 33 MB lines cost this spec).
local function start_worker()
  local w = { lines = {} }
  w.process = assert(proc.spawn({
    argv = { helpers.binary(), "worker", "--provider", "local" },
    stdin = true,
    timeout = 300,
    max_output = 256 * 1024 * 1024,
    on_stdout = require("spec.support.lines").splitter(function(line)
      w.lines[#w.lines + 1] = line
    end),
  }))
  return w
end

-- The next line from the worker, or an error after 60 s.
local function next_line(w)
  local deadline = task.now() + 60
  while #w.lines == 0 do
    assert(task.now() < deadline, "no line from the worker in 60s")
    assert(not w.process:done(), "the worker exited")
    task.sleep(0.005)
  end
  return table.remove(w.lines, 1)
end

-- The worker's peak resident size so far, in kB.
local function peak_kb(w)
  local status = assert(helpers.read_file("/proc/" .. w.process.pid .. "/status"))
  return tonumber(status:match("VmHWM:%s*(%d+)"))
end

-- Code units of s in UTF-16, as the host measures a line.
local function utf16_units(s)
  local _, astral = s:gsub("[\240-\244]", "")
  return assert(utf8.len(s)) + astral
end

local function encoded_size(s)
  return #assert(json.encode(s)) - 2
end

-- Runs `bash -c command` on a fresh lease of a fresh worker (leases under a temp dir, removed
-- after). fn(line, result, streamed, peak) gets the raw reply line, its result, the stdout
-- execute.log chunks in order, and the worker's peak resident size in kB at the reply.
local function execute(command, fn)
  helpers.run(function()
    local root <close> = helpers.tempdir("ph-output-spec-")
    local w = start_worker()
    local ok, err = pcall(function()
      local base = { driverKey = "local", companyId = "c1", environmentId = "e1" }
      local function params(extra)
        return helpers.merged({ config = { root = root.path } }, base, extra)
      end
      local function send(msg)
        assert(w.process:write(assert(json.encode(msg)) .. "\n"))
      end
      send({ jsonrpc = "2.0", id = 1, method = "environmentAcquireLease",
        params = params({ runId = "r1" }) })
      local lease = assert(json.decode(next_line(w)))
      while lease.id ~= 1 do
        lease = assert(json.decode(next_line(w)))
      end
      assert(lease.result, lease.error and lease.error.message)
      local acquired = lease.result
      send({
        jsonrpc = "2.0",
        id = 2,
        method = "environmentExecute",
        params = params({
          lease = { providerLeaseId = acquired.providerLeaseId, metadata = acquired.metadata },
          command = "bash",
          args = { "-c", command },
        }),
        paperclipInvocation = { id = "inv-output", scope = { companyId = "c1" } },
      })
      local streamed = {}
      while true do
        local line = next_line(w)
        local msg = assert(json.decode(line))
        if msg.method == "execute.log" then
          assert.equal("inv-output", msg.paperclipInvocationId)
          assert.is_true(utf16_units(msg.params.chunk) <= 1000000)
          if msg.params.stream == "stdout" then
            streamed[#streamed + 1] = msg.params.chunk
          end
        elseif msg.id == 2 then
          local peak = peak_kb(w)
          assert(msg.result, msg.error and msg.error.message)
          return fn(line, msg.result, streamed, peak)
        end
      end
    end)
    w.process:kill("SIGKILL")
    w.process:wait(5)
    assert(root:remove())
    if not ok then
      error(err, 0)
    end
  end)
end

describe("worker output", function()
  it("leaves a small output whole and does not say truncated", function()
    execute([[printf 'hello "world" /\n\001\n'; printf 'oops\n' >&2]], function(_, result)
      assert.equal('hello "world" /\n\1\n', result.stdout)
      assert.equal("oops\n", result.stderr)
      assert.equal(0, result.exitCode)
      assert.is_nil(result.metadata.truncated)
      assert.is_number(result.metadata.durationMs)
    end)
  end)

  it("caps 50 MB of NUL bytes by encoded size, with the worker's peak within bounds", function()
    execute("head -c 50000000 /dev/zero", function(line, result, streamed, peak)
      local n = CAP // 6 -- each NUL is \u0000
      assert.equal(n, #result.stdout)
      assert.equal(("\0"):rep(n), result.stdout)
      assert.is_true(result.metadata.truncated)
      assert.is_true(#line > 6 * n and #line < CAP + 4096, "reply line of " .. #line .. " bytes")
      local s = table.concat(streamed)
      assert.equal(result.stdout:sub(1, #s), s)
      assert_peak(peak)
    end)
  end)

  it("caps 50 MB of text by encoded size, with the worker's peak within bounds", function()
    local unit = 'text with "quotes" and a/slash\n'
    execute("yes '" .. unit:sub(1, -2) .. "' | head -c 50000000",
      function(line, result, streamed, peak)
        local out = result.stdout
        local whole = #out // #unit
        assert.equal(unit:rep(whole), out:sub(1, whole * #unit))
        assert.equal(unit:sub(1, #out - whole * #unit), out:sub(whole * #unit + 1))
        local size = encoded_size(out)
        local next_char = unit:sub(#out % #unit + 1, #out % #unit + 1)
        assert.is_true(size <= CAP and size + encoded_size(next_char) > CAP)
        assert.is_true(result.metadata.truncated)
        assert.is_true(#line < CAP + 4096)
        local s = table.concat(streamed)
        assert.equal(out:sub(1, #s), s)
        assert_peak(peak)
      end)
  end)

  it("cleans invalid UTF-8 to U+FFFD and caps it by encoded size", function()
    -- 20 MB is under what the process primitive keeps: only the encoded cap cuts, and the
    -- worker itself reports it
    execute([[head -c 20000000 /dev/zero | tr '\0' '\377']], function(line, result)
      assert.equal(R:rep(CAP // 3), result.stdout)
      assert.is_true(result.metadata.truncated)
      assert.is_true(#line < CAP + 4096)
    end)
  end)

  it("never splits a 4-byte character, and the line stays under the host's limit", function()
    -- "a" then emoji lines: 1 + 6 per line encoded, so the cap leaves room for 1 byte after
    -- the last whole line, too little for the next emoji
    execute("{ printf a; yes '" .. EMOJI .. "'; } | head -c 30000000", function(line, result)
      local n = (CAP - 1) // 6
      assert.equal("a" .. (EMOJI .. "\n"):rep(n), result.stdout)
      assert.equal(CAP - 1, encoded_size(result.stdout))
      assert.equal(1 + 3 * n, utf16_units(result.stdout)) -- 2 units per emoji, 1 per newline
      assert.is_true(result.metadata.truncated)
      assert.is_true(utf16_units(line) < LINE_LIMIT)
    end)
  end)

  it("streams an exact prefix of the capped stdout", function()
    -- random bytes: invalid sequences, escapes and characters split between reads, paced so
    -- that the live output keeps up; about 50 MB once encoded
    execute("for i in $(seq 40); do head -c 500000 /dev/urandom; sleep 0.05; done",
      function(_, result, streamed)
        local out = result.stdout
        assert.is_true(util.utf8_valid(out))
        assert.is_true(encoded_size(out) <= CAP)
        assert.is_true(result.metadata.truncated)
        assert.is_true(#streamed > 0)
        for _, chunk in ipairs(streamed) do
          assert.is_true(util.utf8_valid(chunk))
        end
        local s = table.concat(streamed)
        assert.is_true(#s > 0 and #s <= #out)
        assert.equal(out:sub(1, #s), s)
      end)
  end)
end)
