-- host.ssh.open: Channel:pause_output / resume_output (back-pressure from the consumer)
-- against a real OpenSSH sshd on loopback (spec/support/sshd.lua). No wall-clock assertions:
-- order and results only; the sleeps give the loop turns in which nothing may happen.
local helpers = require("spec.helpers")
local ssh = require("host.ssh")
local sshd = require("spec.support.sshd")
local task = require("host.task")

local run = helpers.run
local fails_with = helpers.fails_with
local eventually = helpers.eventually

-- seq(n) -> what `seq 1 n` prints.
local function seq(n)
  local t = {}
  for i = 1, n do
    t[i] = tostring(i)
  end
  return table.concat(t, "\n") .. "\n"
end

describe("host.ssh Channel:pause_output #ssh", function()
  local server, keys, tmp, dir

  local function open(extra, srv)
    srv = srv or server
    return ssh.open(helpers.merged({
      host = srv.host,
      port = srv.port,
      user = srv.user,
      key = keys.ed25519.private,
      known_hosts = dir .. "/known_hosts",
      connect_timeout = 10,
    }, extra))
  end

  -- A private sshd of this test alone (for tests that kill its connections), closed at the end.
  local function known_server()
    local srv = sshd.start()
    finally(function()
      run(function()
        srv:close()
      end)
    end)
    srv:authorize(keys.ed25519.public)
    return srv
  end

  -- stream() -> s: s.add keeps the chunks; s:text() is everything so far; s.calls counts them.
  local function stream()
    local s = { chunks = {}, bytes = 0, calls = 0 }
    function s.add(chunk)
      s.calls = s.calls + 1
      s.chunks[#s.chunks + 1] = chunk
      s.bytes = s.bytes + #chunk
    end
    function s.text()
      return table.concat(s.chunks)
    end
    return s
  end

  setup(function()
    run(function()
      tmp = helpers.tempdir("ph-ssh-pause-spec-")
      dir = tmp.path
      keys = { ed25519 = sshd.keygen(dir, "id_ed25519", "ed25519") }
      server = sshd.start()
      server:authorize(keys.ed25519.public)
    end)
  end)

  teardown(function()
    ssh.close_all()
    run(function()
      if server then
        server:close()
      end
    end)
    if tmp then
      tmp:remove()
    end
  end)

  after_each(function()
    ssh.close_all()
  end)

  it("holds a large output back while paused, then delivers all of it in order", function()
    run(function()
      local n = 1000000 -- about 6.9 MB: far beyond the SSH window and every buffer on the way
      local expected = seq(n)
      local marker = dir .. "/big.done"
      local out, ch = stream(), nil
      local paused_calls -- callbacks while paused: must stay 0
      local function on_stdout(chunk)
        out.add(chunk)
        if paused_calls then
          paused_calls = paused_calls + 1
        end
        if out.calls == 1 then
          assert(ch:pause_output() == true)
          paused_calls = 0
        end
      end
      ch = assert(open({ cmd = ("seq 1 %d; touch %s"):format(n, marker), on_stdout = on_stdout }))
      eventually(function()
        return paused_calls ~= nil
      end, "the first chunk")
      local waiter = task.spawn(function()
        return ch:wait()
      end)
      task.sleep(0.3) -- the loop turns: nothing may be delivered, the command must not end
      assert.equal(0, paused_calls)
      assert.equal(1, out.calls)
      assert.is_nil(helpers.read_file(marker)) -- stalled by the SSH window before its end
      assert.is_false(waiter:done())
      paused_calls = nil
      assert.is_true(ch:resume_output())
      local res = assert(waiter:wait(60))
      assert.same({ exit_code = 0, timed_out = false }, res)
      assert.equal(#expected, out.bytes) -- every byte, exactly
      assert.is_true(out.text() == expected) -- in order
      assert.equal("", helpers.read_file(marker))
      local max = 0
      for _, chunk in ipairs(out.chunks) do
        max = math.max(max, #chunk)
      end
      assert.is_true(max <= 256 * 1024 + 64 * 1024, max) -- high-water mark plus one read
      ch:close()
    end)
  end)

  it("pauses in every callback and resumes from a task: the exact stream", function()
    run(function()
      local n = 1000000 -- about 6.9 MB: many rounds, each bounded by the high-water mark
      local expected = seq(n)
      local out, ch = stream(), nil
      local paused, violations, resumes = false, 0, 0
      local function on_stdout(chunk)
        if paused then
          violations = violations + 1 -- called while paused
        end
        out.add(chunk)
        paused = true
        assert(ch:pause_output() == true)
      end
      ch = assert(open({ cmd = ("seq 1 %d"):format(n), on_stdout = on_stdout }))
      local waiter = task.spawn(function()
        return ch:wait()
      end)
      while true do
        eventually(function()
          return paused
        end, "a callback after resume " .. resumes, 30)
        if out.bytes >= #expected then
          break
        end
        task.yield() -- a turn of the loop while paused
        paused = false
        resumes = resumes + 1
        assert(ch:resume_output() == true)
      end
      local res = assert(waiter:wait(30))
      assert.equal(0, res.exit_code)
      assert.equal(0, violations)
      assert.equal(resumes + 1, out.calls) -- one before the first resume, one after each
      assert.is_true(resumes > 5)
      assert.is_true(out.calls > 1)
      assert.equal(#expected, out.bytes)
      assert.is_true(out.text() == expected)
      ch:close()
    end)
  end)

  it("does not end a command that exited while paused before its output", function()
    run(function()
      local events = {}
      local out, ch = stream(), nil
      local paused_calls
      local function on_stdout(chunk)
        out.add(chunk)
        events[#events + 1] = "out"
        if paused_calls then
          paused_calls = paused_calls + 1
        end
        if out.calls == 1 then
          ch:pause_output()
          paused_calls = 0
        end
      end
      local marker = dir .. "/quick.done"
      ch = assert(open({
        cmd = ("echo a; sleep 0.2; echo b; echo e >&2; touch %s; exit 3"):format(marker),
        on_stdout = on_stdout,
        on_stderr = function(chunk)
          out.add(chunk)
          events[#events + 1] = "err"
        end,
      }))
      eventually(function()
        return paused_calls ~= nil
      end, "the first chunk")
      assert.equal("a\n", out.text())
      local waiter = task.spawn(function()
        local r, err, code = ch:wait()
        events[#events + 1] = "exit"
        return r, err, code
      end)
      eventually(function()
        return helpers.read_file(marker) ~= nil
      end, "the command's end")
      task.sleep(0.3) -- the exit status had its turns: it must wait for the output
      assert.is_false(waiter:done())
      assert.equal(0, paused_calls)
      assert.same({ "out" }, events)
      assert.is_true(ch:resume_output())
      local res = assert(waiter:wait(10))
      assert.equal(3, res.exit_code)
      assert.equal("a\nb\ne\n", out.text())
      assert.same({ "out", "out", "err", "exit" }, events) -- the end after every byte
      assert.same(res, assert(ch:wait())) -- and from now on at once
      ch:close()
    end)
  end)

  it("runs no callback before open returned the Channel (a callback may pause it)", function()
    run(function()
      local early, calls = 0, 0
      local fns = {}
      for i = 1, 10 do
        fns[i] = function()
          local ch
          ch = assert(open({
            cmd = "echo now",
            on_stdout = function()
              calls = calls + 1
              if ch == nil then
                early = early + 1
              end
            end,
          }))
          local res = ch:wait(10)
          ch:close()
          return res
        end
      end
      for _, r in ipairs(task.all(fns)) do
        assert.equal(0, assert(r[1], r[2]).exit_code)
      end
      assert.equal(10, calls)
      assert.equal(0, early)
    end)
  end)

  it("ends normally when the command ended while paused with nothing undelivered", function()
    run(function()
      local out, ch = stream(), nil
      ch = assert(open({
        cmd = "echo only",
        on_stdout = function(chunk)
          out.add(chunk)
          ch:pause_output()
        end,
      }))
      assert.equal(0, assert(ch:wait(10)).exit_code)
      assert.equal("only\n", out.text())
      assert.is_true(ch:resume_output()) -- harmless once ended
      ch:close()
    end)
  end)

  it("close() while paused drops what was kept: no callback after it, waits fail", function()
    run(function()
      local out, ch = stream(), nil
      ch = assert(open({
        cmd = "seq 1 1000000",
        on_stdout = function(chunk)
          out.add(chunk)
          ch:pause_output()
        end,
        on_stderr = out.add,
      }))
      eventually(function()
        return out.calls == 1
      end, "the first chunk")
      local waiter = task.spawn(function()
        return ch:wait()
      end)
      task.sleep(0.2) -- more output piles up in C and in the window
      assert.equal(1, out.calls)
      ch:close()
      fails_with("closed", waiter:wait(10))
      fails_with("closed", ch:write("x"))
      fails_with("closed", ch:wait())
      assert.is_true(ch:resume_output()) -- a closed channel: nothing to resume, no error
      task.sleep(0.3) -- no callback may come
      assert.equal(1, out.calls)
      eventually(function()
        return ssh.stats().channels == 0
      end, "the channel freed")
    end)
  end)

  it("is idempotent: pausing twice, resuming twice, one delivery", function()
    run(function()
      local out = stream()
      local ch = assert(open({ cmd = "cat", on_stdout = out.add }))
      assert.is_true(ch:pause_output())
      assert.is_true(ch:pause_output())
      assert.is_true(ch:write("x\n"))
      assert.is_true(ch:write("y\n"))
      task.sleep(0.3) -- cat echoed them: held back
      assert.equal(0, out.calls)
      assert.is_true(ch:resume_output())
      assert.is_true(ch:resume_output())
      eventually(function()
        return out.text() == "x\ny\n"
      end, "the echo")
      assert.is_true(ch:write("z\n")) -- running again
      eventually(function()
        return out.text() == "x\ny\nz\n"
      end, "the echo after resume")
      assert(ch:close_stdin())
      assert.equal(0, assert(ch:wait(10)).exit_code)
      assert.equal("x\ny\nz\n", out.text()) -- nothing twice
      ch:close()
      assert.is_true(ch:pause_output()) -- closed: still true
      assert.is_true(ch:resume_output())
    end)
  end)

  it("a connection lost while paused fails waits and writes with closed", function()
    run(function()
      local srv = known_server()
      local out, ch = stream(), nil
      ch = assert(open({
        cmd = "seq 1 1000000",
        on_stdout = function(chunk)
          out.add(chunk)
          ch:pause_output()
        end,
      }, srv))
      eventually(function()
        return out.calls == 1
      end, "the first chunk")
      local waiter = task.spawn(function()
        return ch:wait()
      end)
      task.yield() -- it parks
      srv:kill_connections()
      fails_with("closed", waiter:wait(15))
      fails_with("closed", ch:write("more"))
      assert.is_true(ch:resume_output())
      task.sleep(0.2)
      assert.equal(1, out.calls) -- nothing called after the end
      ch:close()
    end)
  end)
end)
