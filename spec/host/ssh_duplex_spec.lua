-- host.ssh.open: duplex channels against a real OpenSSH sshd on loopback (spec/support/sshd.lua).
local helpers = require("spec.helpers")
local fs = require("host.fs")
local ssh = require("host.ssh")
local sshd = require("spec.support.sshd")
local task = require("host.task")
local util = require("host.util")

local run = helpers.run
local fails_with = helpers.fails_with
local eventually = helpers.eventually

local MiB = 1024 * 1024

describe("host.ssh.open #ssh", function()
  local server, keys, tmp, dir

  -- Options for srv (default: the shared server) as its user with the ed25519 key, plus extra.
  local function opts(extra, srv, key)
    srv = srv or server
    return helpers.merged({
      host = srv.host,
      port = srv.port,
      user = srv.user,
      key = (key or keys.ed25519).private,
      known_hosts = dir .. "/known_hosts",
      connect_timeout = 10,
    }, extra)
  end

  local function open(extra, srv, key)
    return ssh.open(opts(extra, srv, key))
  end

  local function exec(extra, srv)
    return ssh.exec(opts(helpers.merged({ timeout = 20 }, extra), srv))
  end

  -- A private sshd of this test alone (for tests that kill or pause it), closed at the end.
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

  -- stream() -> s: s.add is an on_stdout/on_stderr that keeps the chunks (s.chunks), their
  -- count of bytes (s.bytes) and the largest (s.max); s:text() is everything so far.
  local function stream()
    local s = { chunks = {}, bytes = 0, max = 0 }
    function s.add(chunk)
      s.chunks[#s.chunks + 1] = chunk
      s.bytes = s.bytes + #chunk
      s.max = math.max(s.max, #chunk)
    end
    function s.text()
      return table.concat(s.chunks)
    end
    return s
  end

  -- until_text(s, text, what): waits (bounded) until stream s holds exactly text.
  local function until_text(s, text, what)
    eventually(function()
      return s.text() == text
    end, what or ("output " .. ("%q"):format(text)))
  end

  setup(function()
    run(function()
      tmp = helpers.tempdir("ph-ssh-duplex-spec-")
      dir = tmp.path
      keys = {
        ed25519 = sshd.keygen(dir, "id_ed25519", "ed25519"),
        stranger = sshd.keygen(dir, "id_stranger", "ed25519"),
      }
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

  describe("streams", function()
    it("echoes writes back, interleaved with exec calls, on one TCP connection", function()
      run(function()
        local before, logins = ssh.stats().connects, server:count("Accepted publickey")
        local out = stream()
        local ch = assert(open({ cmd = "cat", on_stdout = out.add }))
        local expected = ""
        for i = 1, 5 do
          local line = ("line %d %s\n"):format(i, ("x"):rep(i * 100))
          assert.is_true(ch:write(line))
          expected = expected .. line
          until_text(out, expected, "echo " .. i)
          local res = assert(exec({ cmd = "echo exec" .. i }))
          assert.equal("exec" .. i .. "\n", res.stdout)
        end
        -- and many execs at once while the channel streams
        local fns = {}
        for i = 1, 20 do
          fns[i] = function()
            return exec({ cmd = "echo " .. i })
          end
        end
        fns[21] = function()
          return ch:write("concurrent\n")
        end
        local results = task.all(fns)
        for i = 1, 20 do
          assert.equal(i .. "\n", assert(results[i][1], results[i][2]).stdout)
        end
        assert.is_true(results[21][1])
        until_text(out, expected .. "concurrent\n")
        assert.equal(1, ssh.stats().connects - before)
        assert.equal(1, ssh.stats().sessions)
        assert(ch:close_stdin())
        assert.same({ exit_code = 0, timed_out = false }, assert(ch:wait(10)))
        eventually(function()
          return server:count("Accepted publickey") - logins == 1
        end, "the one login logged")
        ch:close()
      end)
    end)

    it("returns 8 MiB written through cat byte for byte, in order, in bounded chunks", function()
      run(function()
        local parts = {}
        for i = 1, 8 do
          parts[i] = util.random(MiB)
        end
        local data = table.concat(parts)
        local out = stream()
        local ch = assert(open({ cmd = "cat", on_stdout = out.add }))
        assert.is_true(ch:write(data)) -- one write, far beyond the SSH window
        assert(ch:close_stdin())
        assert.equal(0, assert(ch:wait(60)).exit_code)
        assert.equal(#data, out.bytes)
        assert.is_true(out.text() == data)
        assert.is_true(#out.chunks > 8) -- streamed as it came...
        assert.is_true(out.max <= MiB) -- ...never piled up
        ch:close()
      end)
    end)

    it("serves writes from several tasks in call order, each whole", function()
      run(function()
        local out = stream()
        local ch = assert(open({ cmd = "cat", on_stdout = out.add }))
        local pieces, order, fns = {}, {}, {}
        for i = 1, 10 do
          pieces[i] = (string.char(64 + i)):rep(100000 + i)
          fns[i] = function()
            order[#order + 1] = i -- the call order: tasks run one at a time until they yield
            return ch:write(pieces[i])
          end
        end
        local results = task.all(fns)
        for i = 1, 10 do
          assert.is_true(results[i][1], results[i][2])
        end
        local expected = {}
        for k, i in ipairs(order) do
          expected[k] = pieces[i]
        end
        assert(ch:close_stdin())
        assert.equal(0, assert(ch:wait(30)).exit_code)
        assert.is_true(out.text() == table.concat(expected))
        ch:close()
      end)
    end)

    it("holds writes back while the command does not read (back-pressure)", function()
      run(function()
        local gate <close> = helpers.gate()
        local out = stream()
        local ch = assert(open({ cmd = gate.sh .. "; wc -c", on_stdout = out.add }))
        local data = ("z"):rep(8 * MiB) -- more than the window and every buffer on the way
        local writer = task.spawn(function()
          return ch:write(data)
        end)
        task.sleep(0.3) -- a chance to finish early, which it must not take
        assert.is_false(writer:done()) -- the command reads nothing until the gate opens
        gate:open()
        assert.is_true(writer:wait(30))
        assert(ch:close_stdin())
        assert.equal(0, assert(ch:wait(30)).exit_code)
        assert.equal(tostring(8 * MiB), out.text():match("%d+"))
        ch:close()
      end)
    end)

    it("keeps stderr apart from stdout", function()
      run(function()
        local out, err = stream(), stream()
        local ch = assert(open({
          cmd = "while read l; do echo \"o:$l\"; echo \"e:$l\" >&2; done",
          on_stdout = out.add,
          on_stderr = err.add,
        }))
        assert(ch:write("a\n"))
        until_text(out, "o:a\n")
        until_text(err, "e:a\n")
        assert(ch:write("b\n"))
        until_text(out, "o:a\no:b\n")
        until_text(err, "e:a\ne:b\n")
        assert(ch:close_stdin())
        assert.equal(0, assert(ch:wait(10)).exit_code)
        ch:close()
      end)
    end)

    it("drops a stream that has no callback, and the command still runs", function()
      run(function()
        local err = stream()
        local ch = assert(open({
          cmd = "head -c 3000000 /dev/zero; echo done >&2; cat >/dev/null",
          on_stderr = err.add,
        }))
        until_text(err, "done\n")
        assert(ch:close_stdin())
        assert.equal(0, assert(ch:wait(10)).exit_code)
        ch:close()
      end)
    end)

    it("keeps going when a callback raises", function()
      run(function()
        local calls = 0
        local ch = assert(open({
          cmd = "cat",
          on_stdout = function()
            calls = calls + 1
            error("callback bug")
          end,
        }))
        assert(ch:write("a\n"))
        eventually(function()
          return calls == 1
        end, "the first call")
        assert(ch:write("b\n"))
        eventually(function()
          return calls == 2
        end, "the second call")
        assert(ch:close_stdin())
        assert.equal(0, assert(ch:wait(10)).exit_code)
        ch:close()
      end)
    end)
  end)

  describe("ending", function()
    it("close_stdin gives the command EOF, and wait returns its exit code", function()
      run(function()
        local out = stream()
        local ch = assert(open({ cmd = "wc -c; exit 3", on_stdout = out.add }))
        assert(ch:write("hello"))
        assert.is_true(ch:close_stdin())
        assert.is_true(ch:close_stdin()) -- idempotent
        local err = fails_with("closed", ch:write("late"))
        assert.matches("close_stdin", err)
        assert.same({ exit_code = 3, timed_out = false }, assert(ch:wait(10)))
        assert.equal("5", out.text():match("%d+"))
        -- once ended, wait answers at once, again and again
        assert.equal(3, assert(ch:wait()).exit_code)
        ch:close()
      end)
    end)

    it("reports a command killed by a signal, and later writes fail with closed", function()
      run(function()
        local ch = assert(open({ cmd = "read l; kill -TERM $$" }))
        assert(ch:write("go\n"))
        local res = assert(ch:wait(10))
        assert.is_nil(res.exit_code)
        assert.equal("TERM", res.signal)
        fails_with("closed", ch:write("more"))
        ch:close()
      end)
    end)

    it("returns the channel of a command that ended at once, and its exit code", function()
      run(function()
        local out = stream()
        local ch = assert(open({ cmd = "echo bye; exit 4", on_stdout = out.add }))
        assert.equal(4, assert(ch:wait(10)).exit_code)
        assert.equal("bye\n", out.text()) -- the output came before the end
        fails_with("closed", ch:write("x"))
        ch:close()
      end)
    end)

    it("a wait that times out leaves the channel running", function()
      run(function()
        local out = stream()
        local ch = assert(open({ cmd = "cat", on_stdout = out.add }))
        local err = fails_with("timeout", ch:wait(0.1))
        assert.matches("runs on", err)
        assert(ch:write("still\n"))
        until_text(out, "still\n")
        assert(ch:close_stdin())
        assert.equal(0, assert(ch:wait(10)).exit_code)
        ch:close()
      end)
    end)

    it("ends the command at its timeout with timed_out", function()
      run(function()
        -- the timeout counts from the open: 2 s leaves a slow (sanitized, loaded) run time to
        -- open the channel before it fires
        local ch = assert(open({ cmd = "while :; do echo tick; sleep 0.05; done", timeout = 2 }))
        local res = assert(ch:wait(15)) -- the 2 s timeout, not this wait's, ends it
        assert.is_true(res.timed_out)
        assert.is_nil(res.exit_code)
        fails_with("closed", ch:write("x"))
        eventually(function()
          return ssh.stats().channels == 0
        end, "the channel closed")
        ch:close()
      end)
    end)

    it("close() on a running cat frees the channel and the remote process ends", function()
      run(function()
        local pidfile = dir .. "/cat.pid"
        local out = stream()
        local cmd = "echo $$ > " .. pidfile .. "; exec cat"
        local ch = assert(open({ cmd = cmd, on_stdout = out.add }))
        assert(ch:write("x\n"))
        until_text(out, "x\n") -- running, its pid written
        local pid = assert(fs.read(pidfile)):match("%d+")
        assert.is_true(helpers.alive(pid))
        local waiter = task.spawn(function()
          return ch:wait()
        end)
        task.yield() -- the waiter parks
        local calls = #out.chunks
        ch:close()
        ch:close() -- idempotent
        fails_with("closed", waiter:wait(10))
        fails_with("closed", ch:write("y\n"))
        fails_with("closed", ch:wait())
        eventually(function()
          return not helpers.alive(pid)
        end, "the remote cat gone")
        eventually(function()
          return ssh.stats().channels == 0
        end, "the channel freed")
        assert.equal(calls, #out.chunks) -- nothing called after close
        assert.equal("still\n", assert(exec({ cmd = "echo still" })).stdout) -- session usable
      end)
    end)

    it("is kept alive by the host while it runs, and collected once it ended", function()
      run(function()
        local out = stream()
        local weak = setmetatable({}, { __mode = "v" })
        weak[1] = assert(open({ cmd = "cat", on_stdout = out.add }))
        collectgarbage()
        collectgarbage()
        assert.is_not_nil(weak[1]) -- no reference left but the host's: it runs on
        assert(weak[1]:write("x\n"))
        until_text(out, "x\n")
        assert(weak[1]:close_stdin())
        assert.equal(0, assert(weak[1]:wait(10)).exit_code)
        collectgarbage()
        collectgarbage()
        assert.is_nil(weak[1]) -- ended: the host let it go (__gc closed it)
      end)
    end)

    it("closes when a <close> variable goes out of scope", function()
      run(function()
        do
          local ch <close> = assert(open({ cmd = "cat" }))
          assert(ch:write("x"))
          assert.equal(1, ssh.stats().channels)
        end
        eventually(function()
          return ssh.stats().channels == 0
        end, "the channel freed")
      end)
    end)

    it("a killed connection ends pending writes and waits with closed", function()
      run(function()
        local srv = known_server()
        local out = stream()
        local ch = assert(open({ cmd = "echo ready; sleep 30", on_stdout = out.add }, srv))
        until_text(out, "ready\n")
        local big = ("w"):rep(8 * MiB) -- sleep reads nothing: this write stays pending
        local writer = task.spawn(function()
          return ch:write(big)
        end)
        local waiter = task.spawn(function()
          return ch:wait()
        end)
        task.yield() -- both park
        srv:kill_connections()
        -- the kill ended them: at most half way through the command's own 30 s
        assert.matches("connection to 127.0.0.1", fails_with("closed", writer:wait(15)), 1, true)
        fails_with("closed", waiter:wait(15))
        fails_with("closed", ch:write("more"))
        fails_with("closed", ch:wait(1))
        assert.equal(1, #out.chunks) -- nothing called after the end
        ch:close()
      end)
    end)

    it("stays open across keepalives while idle", function()
      run(function()
        local srv = known_server()
        local out = stream()
        local ch = assert(open({ cmd = "cat", keepalive = 0.1, on_stdout = out.add }, srv))
        task.sleep(1) -- ten keepalives, each answered
        assert(ch:write("alive\n"))
        until_text(out, "alive\n")
        ch:close()
      end)
    end)

    it("a stalled server ends pending waits with closed (unanswered keepalives)", function()
      run(function()
        local srv = known_server()
        local ch = assert(open({ cmd = "cat", keepalive = 0.2 }, srv))
        local waiter = task.spawn(function()
          return ch:wait()
        end)
        srv:pause()
        assert.matches("keepalive", fails_with("closed", waiter:wait(15)))
        fails_with("closed", ch:write("x"))
        ch:close()
      end)
    end)

    it("a canceled task's write returns canceled", function()
      run(function()
        local out = stream()
        local ch = assert(open({ cmd = "echo ready; sleep 30", on_stdout = out.add }))
        until_text(out, "ready\n")
        local big = ("c"):rep(8 * MiB) -- never taken: sleep reads nothing
        local first = task.spawn(function()
          return ch:write(big)
        end)
        local second = task.spawn(function()
          return ch:write("queued behind it")
        end)
        task.yield() -- both park
        second:cancel()
        fails_with("canceled", second:wait(10))
        first:cancel()
        fails_with("canceled", first:wait(10))
        ch:close()
        eventually(function()
          return ssh.stats().channels == 0
        end, "the channel freed")
      end)
    end)
  end)

  describe("opening", function()
    it("fails as exec does: connect, auth", function()
      run(function()
        local srv = sshd.start()
        local port = srv.port
        srv:close()
        local err = fails_with("connect", open({ cmd = "cat", port = port }))
        assert.matches("refused", err)
        fails_with("auth", open({ cmd = "cat" }, nil, keys.stranger))
        assert.equal(0, ssh.stats().channels)
      end)
    end)

    it("fails with timeout when the command does not start within open_timeout", function()
      run(function()
        local srv = known_server()
        srv:pause() -- accepts the TCP connection, never speaks
        local err = fails_with("timeout", open({ cmd = "cat", open_timeout = 0.5 }, srv))
        assert.matches("while connecting", err)
      end)
    end)

    it("a canceled open returns canceled and leaves no channel", function()
      run(function()
        local t = task.spawn(function()
          return open({ cmd = "cat" })
        end)
        t:cancel()
        fails_with("canceled", t:wait(10))
        eventually(function()
          return ssh.stats().channels == 0
        end, "no channel left")
      end)
    end)

    it("raises on misuse, with clear messages", function()
      run(function()
        local function raises(fn, pattern)
          local ok, err = pcall(fn)
          assert.is_false(ok)
          assert.matches(pattern, err)
        end
        raises(function()
          return ssh.open("cat")
        end, "bad argument #1 to 'open' %(table expected, got string%)")
        raises(function()
          return open({})
        end, "bad argument #1 to 'open' %(field 'cmd' is required%)")
        raises(function()
          return open({ cmd = "" })
        end, "field 'cmd' must not be empty")
        raises(function()
          return open({ cmd = "cat", timeout = -1 })
        end, "field 'timeout'")
        raises(function()
          return open({ cmd = "cat", on_stdout = "print" })
        end, "field 'on_stdout'")
        local ch = assert(open({ cmd = "cat" }))
        raises(function()
          return ch:write(42)
        end, "bad argument #1 to 'write' %(string expected, got number%)")
        raises(function()
          return ch:write()
        end, "bad argument #1 to 'write' %(string expected, got no value%)")
        raises(function()
          return ch:wait(-1)
        end, "bad argument #1 to 'wait'")
        raises(function()
          return ch.write({}, "x")
        end, "host.ssh.Channel expected")
        ch:close()
      end)
    end)

    it("write and wait must run inside a task", function()
      local ch = assert(run(open, { cmd = "cat" }))
      assert.has_error(function()
        ch:write("x")
      end)
      assert.has_error(function()
        ch:wait()
      end)
      assert.has_error(function()
        ssh.open(opts({ cmd = "cat" }))
      end)
      ch:close() -- close needs no task
      run(function()
        eventually(function()
          return ssh.stats().channels == 0
        end, "the channel freed")
      end)
    end)
  end)
end)
