-- spec/host/proc_drain_spec.lua: Process:drain, the back-pressure for Process:write, through
-- the real host binary. No clock is asserted: only the order of events and the results.
local helpers = require("spec.helpers")
local proc = require("host.proc")
local task = require("host.task")

-- Every process in this file is bounded: none may outlive its spec.
local T = 20

-- Far more than a pipe holds (64 KiB on Linux): the write stays pending until the child reads.
local BIG = 8 * 1024 * 1024
local big = ("z"):rep(BIG)

-- Wait for p's result, then fail unless its pid is gone for good.
local function finish(p)
  local r = assert(p:wait(T))
  helpers.eventually(function()
    return not helpers.alive(p.pid)
  end, "pid " .. p.pid .. " gone")
  return r
end

-- A child that counts what it reads on stdin, once the gate opens (prefix: a shell command).
local function counter(prefix)
  return assert(proc.spawn({ argv = { "/bin/sh", "-c", prefix .. "; wc -c" }, stdin = true,
    timeout = T }))
end

describe("Process:drain", function()
  it("returns true at once when nothing is pending", function()
    helpers.run(function()
      local p = counter(":")
      assert.is_true(p:drain())
      assert.is_true(p:drain(0))
      assert.is_true(p:write("abc"))
      assert.is_true(p:drain())
      assert.is_true(p:drain()) -- nothing pending again
      assert.is_true(p:close_stdin())
      assert.is_true(p:drain()) -- closed after every byte went: nothing was lost
      local r = finish(p)
      assert.equal(0, r.exit_code)
      assert.equal("3", r.stdout:match("%d+"))
    end)
  end)

  it("returns only once a slow reader took a big write", function()
    helpers.run(function()
      local dir <close> = helpers.tempdir("ph-drain-spec-")
      local marker = dir.path .. "/reading"
      local p = assert(proc.spawn({
        argv = { "/bin/sh", "-c", 'sleep 0.3; : > "$1"; wc -c', "sh", marker },
        stdin = true, timeout = T }))
      assert.is_true(p:write(big))
      assert.is_true(p:drain())
      -- the child made the marker before it read a byte: a drain that returned before the
      -- reader started would not see it
      assert.is_not_nil(helpers.read_file(marker))
      assert.is_false(p:done())
      assert.is_true(p:close_stdin())
      local r = finish(p)
      assert.equal(0, r.exit_code)
      assert.equal(tostring(BIG), r.stdout:match("%d+"))
    end)
  end)

  it("fails with closed when the child exits without reading", function()
    helpers.run(function()
      local p = assert(proc.spawn({ argv = { "true" }, stdin = true, timeout = T }))
      assert.is_true(p:write(big)) -- queued at once: the child has not even been looked at
      local err = helpers.fails_with("closed", p:drain())
      assert.matches("stdin of process %d+", err)
      helpers.fails_with("closed", p:drain()) -- the bytes are lost for good
      local r = finish(p)
      assert.equal(0, r.exit_code)
    end)
  end)

  it("times out while the child does not read, and a later drain succeeds", function()
    helpers.run(function()
      local gate <close> = helpers.gate()
      local p = counter(gate.sh)
      assert.is_true(p:write(big))
      local err = helpers.fails_with("timeout", p:drain(0.1))
      assert.matches("queued", err)
      assert.is_false(p:done()) -- a timeout only ends the wait
      gate:open()
      assert.is_true(p:drain())
      assert.is_true(p:close_stdin())
      local r = finish(p)
      assert.equal(0, r.exit_code)
      assert.equal(tostring(BIG), r.stdout:match("%d+")) -- nothing was dropped
    end)
  end)

  it("ends with canceled when the draining task is canceled; the process runs on", function()
    helpers.run(function()
      local gate <close> = helpers.gate()
      local p = counter(gate.sh)
      assert.is_true(p:write(big))
      local started = false
      local drainer = task.spawn(function()
        started = true
        return p:drain()
      end)
      helpers.eventually(function()
        return started
      end, "the drainer running")
      task.sleep(0.05)
      assert.is_false(drainer:done()) -- parked: the child reads nothing before the gate opens
      drainer:cancel()
      local err = helpers.fails_with("canceled", drainer:wait(T))
      assert.matches("canceled", err)
      assert.is_false(p:done())
      assert.is_true(helpers.alive(p.pid))
      gate:open()
      assert.is_true(p:drain()) -- the writes stayed queued
      assert.is_true(p:close_stdin())
      local r = finish(p)
      assert.equal(0, r.exit_code)
      assert.equal(tostring(BIG), r.stdout:match("%d+"))
    end)
  end)

  it("wakes every task draining at once", function()
    helpers.run(function()
      local gate <close> = helpers.gate()
      local p = counter(gate.sh)
      assert.is_true(p:write(big))
      local order = {}
      local drainers = {}
      for i = 1, 3 do
        drainers[i] = task.spawn(function()
          local ok, err, code = p:drain()
          order[#order + 1] = i
          return ok, err, code
        end)
      end
      task.sleep(0.05)
      assert.same({}, order) -- nobody gets through before the child reads
      gate:open()
      for i = 1, 3 do
        assert.is_true(drainers[i]:wait(T))
      end
      assert.equal(3, #order)
      assert.is_true(p:close_stdin())
      assert.equal(0, finish(p).exit_code)
    end)
  end)

  it("wakes drainers with closed when the process is closed", function()
    helpers.run(function()
      local gate <close> = helpers.gate()
      local p = counter(gate.sh)
      assert.is_true(p:write(big))
      local drainers = {}
      for i = 1, 2 do
        drainers[i] = task.spawn(function()
          return p:drain(T)
        end)
      end
      task.sleep(0.05)
      p:close() -- terminates it; its stdin goes with it, the bytes unsent
      for i = 1, 2 do
        helpers.fails_with("closed", drainers[i]:wait(T))
      end
      -- a closed Process refuses wait: done() and the pid tell when it is over
      helpers.eventually(function()
        return p:done()
      end, "the closed process finished")
      helpers.eventually(function()
        return not helpers.alive(p.pid)
      end, "pid " .. p.pid .. " gone")
    end)
  end)

  it("raises on a process without a stdin pipe, like write", function()
    helpers.run(function()
      local p = assert(proc.spawn({ argv = { "true" }, timeout = T }))
      local ok, err = pcall(p.drain, p)
      assert.is_false(ok)
      assert.matches("has no stdin pipe", tostring(err))
      assert.has_error(function()
        p:drain(-1)
      end)
      finish(p)
    end)
  end)
end)
