-- spec/host/proc_spec.lua: host.proc (host.core.proc) through the real host binary.
local helpers = require("spec.helpers")
local proc = require("host.proc")
local sys = require("host.core.sys")
local core = require("host.core.proc") -- for the spec-only _force_uv_spawn
local task = require("host.task")

-- Every run in this file is bounded: a process may never outlive its spec.
local T = 10

local read_file, write_file = helpers.read_file, helpers.write_file

-- A fresh private directory for fn(dir), removed with everything in it afterwards.
local function with_dir(fn)
  local dir <close> = helpers.tempdir("ph-proc-spec-")
  fn(dir.path)
end

-- Wait (bounded) until a child wrote a pid into path.
local function wait_pid(path)
  return helpers.eventually(function()
    return tonumber((read_file(path) or ""):match("%d+"))
  end, "a pid written to " .. path)
end

-- Fails unless pid stops running (SIGKILL is asynchronous: the kernel gets a moment).
local function assert_gone(pid)
  helpers.run(helpers.eventually, function()
    return not helpers.alive(pid)
  end, "pid " .. pid .. " gone")
end

-- Every spec runs twice: with posix_spawn and a pidfd (the default), and with the uv_spawn
-- fallback used on kernels without pidfd_open, forced by a spec-only switch. (Under valgrind,
-- which has no pidfd_open, both runs take the fallback.)
for _, mode in ipairs({ "posix_spawn", "uv_spawn" }) do
  describe("host.proc (" .. mode .. ")", function()
    before_each(function()
      core._force_uv_spawn(mode == "uv_spawn")
    end)

    after_each(function()
      core._force_uv_spawn(false)
    end)

    it("returns the exit code of a process that exits on its own", function()
      local res = helpers.run(proc.run, { argv = { "/bin/sh", "-c", "exit 7" }, timeout = T })
      assert.equal(7, res.exit_code)
      assert.is_nil(res.signal)
      assert.is_false(res.timed_out)
      assert.is_false(res.truncated)
      assert.is_true(res.duration >= 0 and res.duration < T)
      assert.is_true(math.type(res.pid) == "integer" and res.pid > 0)
    end)

    it("reports a zero exit as exit_code 0", function()
      local res = helpers.run(proc.run, { argv = { "true" }, timeout = T })
      assert.equal(0, res.exit_code)
    end)

    it("names the signal that killed a process and gives no exit code", function()
      local res = helpers.run(proc.shell, "kill -KILL $$", { timeout = T })
      assert.is_nil(res.exit_code)
      assert.equal("SIGKILL", res.signal)
      assert.is_false(res.timed_out)
    end)

    it("captures stdout and stderr separately", function()
      local script = "printf out1; printf err1 >&2; printf out2"
      local res = helpers.run(proc.shell, script, { timeout = T })
      assert.equal("out1out2", res.stdout)
      assert.equal("err1", res.stderr)
      assert.equal(0, res.exit_code)
    end)

    it("gives exactly the env table as the environment, inheriting nothing", function()
      local res = helpers.run(proc.run, {
        argv = { "env" },
        env = { FOO = "bar", PATH = "/usr/bin:/bin" },
        timeout = T,
      })
      local lines = {}
      for line in res.stdout:gmatch("[^\n]+") do
        lines[#lines + 1] = line
      end
      table.sort(lines)
      assert.same({ "FOO=bar", "PATH=/usr/bin:/bin" }, lines)
    end)

    it("looks argv[1] up in the PATH of the child's environment", function()
      local res, err, code = helpers.run(proc.run, {
        argv = { "sh", "-c", "echo ok" },
        env = { PATH = "/nonexistent" },
        timeout = T,
      })
      assert.is_nil(res)
      assert.equal("exit", code)
      assert.matches("^spawn sh: ", err)
    end)

    it("inherits the host's environment when env is nil", function()
      local res = helpers.run(proc.shell, 'printf %s "$HOME"', { timeout = T })
      assert.equal(os.getenv("HOME") or "", res.stdout)
    end)

    it("runs in the given cwd", function()
      local dir = assert(sys.realpath("/tmp"))
      local res = helpers.run(proc.run, { argv = { "pwd" }, cwd = dir, timeout = T })
      assert.equal(dir .. "\n", res.stdout)
    end)

    it("delivers a large stdin in full (8 MiB through wc -c)", function()
      local input = ("0123456789abcdef"):rep(512 * 1024)
      local res = helpers.run(proc.run, { argv = { "wc", "-c" }, stdin = input, timeout = T })
      assert.equal(8 * 1024 * 1024, tonumber(res.stdout:match("%d+")))
    end)

    it("passes a large stdin through cat back unchanged", function()
      local input = ("0123456789abcdef"):rep(512 * 1024)
      local res = helpers.run(proc.run, { argv = { "cat" }, stdin = input, timeout = T })
      assert.equal(#input, #res.stdout)
      assert.is_true(input == res.stdout)
    end)

    it("gives the child EOF at once when there is no stdin", function()
      local res = helpers.run(proc.run, { argv = { "cat" }, timeout = T })
      assert.equal(0, res.exit_code)
      assert.equal("", res.stdout)
      assert.is_false(res.timed_out) -- cat ended on EOF, not at the timeout
    end)

    it("keeps every byte value of binary output", function()
      local input = helpers.all_bytes():rep(1000)
      local res = helpers.run(proc.run, { argv = { "cat" }, stdin = input, timeout = T })
      assert.is_true(input == res.stdout)
    end)

    it("times out: kills the whole group and keeps the partial output", function()
      local dir <close> = helpers.tempdir("ph-proc-spec-")
      local pidfile = dir.path .. "/pid"
      local res = helpers.run(proc.run, {
        argv = {
          "/bin/sh",
          "-c",
          'sleep 30 & echo $! > "$1"; echo partial; sleep 30',
          "-",
          pidfile,
        },
        timeout = 0.3,
      })
      local grandchild = tonumber(read_file(pidfile):match("%d+"))
      assert.is_true(res.timed_out)
      assert.is_nil(res.exit_code)
      assert.equal("SIGTERM", res.signal)
      assert.equal("partial\n", res.stdout)
      -- at the timeout, not before; and long before the command's own 30 s
      assert.is_true(res.duration >= 0.25 and res.duration < 15)
      assert_gone(grandchild)
    end)

    it("escalates to SIGKILL after kill_grace when SIGTERM is ignored", function()
      local res = helpers.run(proc.run, {
        argv = { "/bin/sh", "-c", 'trap "" TERM; echo ready; while :; do sleep 0.05; done' },
        timeout = 0.3,
        kill_grace = 0.3,
      })
      assert.is_true(res.timed_out)
      assert.equal("SIGKILL", res.signal)
      assert.equal("ready\n", res.stdout)
      -- after the timeout and the grace; the command itself never ends (a far guard)
      assert.is_true(res.duration >= 0.55 and res.duration < 15)
    end)

    it("kills the group when the waiting task is canceled", function()
      local dir <close> = helpers.tempdir("ph-proc-spec-")
      local pidfile = dir.path .. "/pid"
      local res, err, code, grandchild = helpers.run(function()
        local waiter = task.spawn(proc.run, {
          argv = { "/bin/sh", "-c", 'sleep 30 & echo $! > "$1"; wait', "sh", pidfile },
          timeout = T,
        })
        local pid = wait_pid(pidfile)
        waiter:cancel()
        local r, e, c = waiter:wait(T)
        return r, e, c, pid
      end)
      assert.is_nil(res)
      assert.equal("canceled", code)
      assert.matches("canceled", err)
      assert_gone(grandchild)
    end)

    it("streams chunks in order to on_stdout and on_stderr", function()
      local out, on_stdout = helpers.collector()
      local err, on_stderr = helpers.collector()
      local script = "for i in 1 2 3 4 5; do echo line$i; echo e$i >&2; sleep 0.02; done"
      local res = helpers.run(proc.shell, script, {
        timeout = T,
        on_stdout = on_stdout,
        on_stderr = on_stderr,
      })
      assert.is_true(#out >= 2)
      assert.equal(res.stdout, table.concat(out))
      assert.equal("line1\nline2\nline3\nline4\nline5\n", res.stdout)
      assert.equal(res.stderr, table.concat(err))
      assert.equal("e1\ne2\ne3\ne4\ne5\n", res.stderr)
    end)

    it("logs an error raised by an output callback and goes on", function()
      local res = helpers.run(proc.shell, "echo a; sleep 0.05; echo b", {
        timeout = T,
        on_stdout = function()
          error("callback failure (expected by the spec)")
        end,
      })
      assert.equal(0, res.exit_code)
      assert.equal("a\nb\n", res.stdout)
    end)

    it("caps the kept output at max_output and marks it truncated", function()
      local seen = 0
      local res = helpers.run(proc.run, {
        argv = { "head", "-c", "1000000", "/dev/zero" },
        max_output = 1000,
        timeout = T,
        on_stdout = function(chunk)
          seen = seen + #chunk
        end,
      })
      assert.equal(0, res.exit_code)
      assert.equal(1000, #res.stdout)
      assert.equal(1000, seen)
      assert.is_true(res.truncated)
    end)

    it("does not hang on a background grandchild holding the pipes (linger)", function()
      local res = helpers.run(proc.run, {
        argv = { "/bin/sh", "-c", "sleep 30 & echo started" },
        linger = 0.2,
        timeout = T,
      })
      sys.kill(-res.pid, "SIGKILL") -- the grandchild is still in the group: clean it up
      assert.equal(0, res.exit_code)
      assert.equal("started\n", res.stdout)
      assert.is_true(res.duration < 15) -- after linger, long before the grandchild's 30 s
    end)

    it("fails with code exit when the program does not exist", function()
      local res, err, code = helpers.run(proc.run, { argv = { "no-such-program-ph" }, timeout = T })
      assert.is_nil(res)
      assert.equal("exit", code)
      assert.matches("^spawn no%-such%-program%-ph: ", err)
    end)

    it("fails with code exit when cwd does not exist", function()
      local res, err, code = helpers.run(proc.run, {
        argv = { "pwd" },
        cwd = "/nonexistent/ph-dir",
        timeout = T,
      })
      assert.is_nil(res)
      assert.equal("exit", code)
      assert.matches("^spawn pwd: ", err)
    end)

    it("raises on misuse", function()
      local bad = {
        "not a table",
        {},
        { argv = {} },
        { argv = "ls" },
        { argv = { "ls", 1 } },
        { argv = { "l\0s" } },
        { argv = { "ls" }, env = { A = 1 } },
        { argv = { "ls" }, env = { ["A=B"] = "x" } },
        { argv = { "ls" }, env = { [""] = "x" } },
        { argv = { "ls" }, env = { [1] = "x" } },
        { argv = { "ls" }, env = { A = "x\0y" } },
        { argv = { "ls" }, cwd = 1 },
        { argv = { "ls" }, stdin = 1 },
        { argv = { "ls" }, timeout = -1 },
        { argv = { "ls" }, timeout = 0 / 0 },
        { argv = { "ls" }, kill_grace = -1 },
        { argv = { "ls" }, max_output = -1 },
        { argv = { "ls" }, max_output = 1.5 },
        { argv = { "ls" }, linger = "1" },
        { argv = { "ls" }, on_stdout = "print" },
      }
      for i, opts in ipairs(bad) do
        assert.has_error(function()
          proc.spawn(opts)
        end, nil, "case " .. i)
      end
      assert.has_error(function()
        proc.shell(42)
      end)
    end)

    it("blames the caller's line for bad options", function()
      local ok, err = pcall(function()
        proc.spawn({ argv = {} })
      end)
      assert.is_false(ok)
      assert.matches("proc_spec%.lua:%d+: bad argument #1 to 'spawn'", err)
    end)

    it("raises when waiting outside a task", function()
      local p = assert(proc.spawn({ argv = { "true" }, timeout = T }))
      assert.has_error(function()
        p:wait()
      end)
      helpers.run(function()
        assert(p:wait(T))
      end)
    end)

    it("exposes pid and done() on a Process", function()
      helpers.run(function()
        local p = assert(proc.spawn({ argv = { "/bin/sh", "-c", "sleep 0.1" }, timeout = T }))
        assert.is_true(math.type(p.pid) == "integer" and p.pid > 0)
        assert.is_false(p:done())
        local res = assert(p:wait(T))
        assert.is_true(p:done())
        assert.equal(p.pid, res.pid)
      end)
    end)

    it("signals the group with kill()", function()
      local res = helpers.run(function()
        local p = assert(proc.spawn({ argv = { "sleep", "30" }, timeout = T }))
        assert.is_true(p:kill("SIGINT"))
        return p:wait(T)
      end)
      assert.equal("SIGINT", res.signal)
      assert.is_false(res.timed_out)
    end)

    it("fails kill() with code closed once the process exited", function()
      local ok, err, code = helpers.run(function()
        local p = assert(proc.spawn({ argv = { "true" }, timeout = T }))
        assert(p:wait(T))
        return p:kill()
      end)
      assert.is_nil(ok)
      assert.matches("exited", err)
      assert.equal("closed", code)
    end)

    it("terminates the group with terminate()", function()
      local res = helpers.run(function()
        local p = assert(proc.spawn({ argv = { "sleep", "30" }, timeout = T }))
        p:terminate()
        return p:wait(T)
      end)
      assert.equal("SIGTERM", res.signal)
    end)

    it("terminates a running process when its <close> variable goes out of scope", function()
      local res = helpers.run(function()
        local keep
        do
          local p <close> = assert(proc.spawn({ argv = { "sleep", "30" }, timeout = T }))
          keep = p
        end
        assert.has_error(function()
          keep:wait(T)
        end)
        return helpers.eventually(function()
          return keep:done()
        end, "the process terminated")
      end)
      assert.is_true(res)
    end)

    it("keeps a dropped Process running until it exits, through garbage collection", function()
      local got = helpers.run(function()
        local chunks, on_stdout = helpers.collector()
        proc.spawn({
          argv = { "/bin/sh", "-c", "sleep 0.2; echo late" },
          timeout = T,
          on_stdout = on_stdout,
        })
        collectgarbage()
        collectgarbage()
        helpers.eventually(function()
          collectgarbage()
          return #chunks > 0
        end, "the output of the dropped process")
        return table.concat(chunks)
      end)
      assert.equal("late\n", got)
    end)

    it("gives every waiter, and a later wait, the same result", function()
      local a, b, later = helpers.run(function()
        local argv = { "/bin/sh", "-c", "sleep 0.1; echo x" }
        local p = assert(proc.spawn({ argv = argv, timeout = T }))
        local t1 = task.spawn(function()
          return p:wait(T)
        end)
        local t2 = task.spawn(function()
          return p:wait(T)
        end)
        return t1:wait(T), t2:wait(T), p:wait(T)
      end)
      assert.equal("x\n", a.stdout)
      assert.equal(a, b)
      assert.equal(a, later)
    end)

    it("times out a bounded wait while the process keeps running", function()
      local res, err, code, after = helpers.run(function()
        local p = assert(proc.spawn({ argv = { "sleep", "0.5" }, timeout = T }))
        local r, e, c = p:wait(0.05)
        return r, e, c, p:wait(T)
      end)
      assert.is_nil(res)
      assert.equal("timeout", code)
      assert.matches("keeps running", err)
      assert.equal(0, after.exit_code)
    end)

    it("applies the default timeout without changing the caller's options", function()
      local opts = { argv = { "true" } }
      local res = helpers.run(proc.run, opts)
      assert.equal(0, res.exit_code)
      assert.is_nil(opts.timeout)
    end)

    it("runs 200 processes concurrently", function()
      local results = helpers.run(function()
        local ps = {}
        for i = 1, 200 do
          local argv = { "/bin/sh", "-c", "sleep 0.2; echo $0", tostring(i) }
          ps[i] = assert(proc.spawn({ argv = argv }))
        end
        local out = {}
        for i = 1, 200 do
          out[i] = assert(ps[i]:wait(T))
        end
        return out
      end)
      for i = 1, 200 do
        assert.equal(0, results[i].exit_code)
        assert.equal(i .. "\n", results[i].stdout)
      end
    end)

    it("with keep_output = false hands every chunk to on_stdout and keeps none", function()
      helpers.run(function()
        local seen = {}
        local p = assert(proc.spawn({ argv = { "cat" }, stdin = true, timeout = 10,
          max_output = 10, keep_output = false,
          on_stdout = function(chunk) seen[#seen + 1] = chunk end }))
        assert.is_true(p:write("first"))
        helpers.eventually(function() return #seen > 0 end, "the first chunk")
        assert.equal("first", table.concat(seen)) -- before stdin closes: a stream
        assert.is_true(p:write(("y"):rep(100000)))
        assert.is_true(p:close_stdin())
        local r = assert(p:wait(10))
        assert.equal("first" .. ("y"):rep(100000), table.concat(seen))
        assert.equal("", r.stdout)
        assert.is_false(r.truncated)
      end)
    end)

    it("keeps a stdin pipe open for pieces written over time", function()
      helpers.run(function()
        local p = assert(proc.spawn({ argv = { "cat" }, stdin = true, timeout = 10 }))
        assert.is_true(p:write("one "))
        task.sleep(0.05)
        assert.is_true(p:write(("x"):rep(1000000)))
        assert.is_true(p:write(" two"))
        assert.is_true(p:close_stdin())
        local r = assert(p:wait(10))
        assert.equal(0, r.exit_code)
        assert.equal("one " .. ("x"):rep(1000000) .. " two", r.stdout)
        local ok, err, code = p:write("late")
        assert.is_nil(ok)
        assert.equal("closed", code)
        assert.matches("closed", err)
      end)
    end)

    it("refuses write on a process without a stdin pipe", function()
      helpers.run(function()
        local p = assert(proc.spawn({ argv = { "true" }, timeout = 10 }))
        assert.has_error(function()
          p:write("x")
        end)
        p:wait(10)
      end)
    end)

    it("starts the child as the leader of its own session and process group", function()
      local res = helpers.run(proc.run, { argv = { "cat", "/proc/self/stat" }, timeout = T })
      local pid, pgrp, session = res.stdout:match("^(%d+) %b() %a %d+ (%d+) (%d+)")
      assert.equal(res.pid, tonumber(pid))
      assert.equal(res.pid, tonumber(pgrp))
      assert.equal(res.pid, tonumber(session))
    end)

    it("starts the child with no signal blocked or ignored", function()
      -- the host ignores SIGPIPE and libuv handles signals: none of that reaches the child
      local res = helpers.run(proc.run, {
        argv = { "grep", "-E", "^Sig(Blk|Ign):", "/proc/self/status" },
        timeout = T,
      })
      assert.equal("SigBlk:\t0000000000000000\nSigIgn:\t0000000000000000\n", res.stdout)
    end)

    it("connects stdin to /dev/null, stdout and stderr to two pipes (socketpairs)", function()
      -- uv_spawn makes socketpairs; so does the posix_spawn mode where it falls back to
      -- uv_spawn for want of pidfd_open (valgrind)
      local _, way = core._force_uv_spawn(mode == "uv_spawn")
      local kind = way == "posix_spawn" and "pipe" or "socket"
      local res = helpers.run(proc.run, {
        argv = { "readlink", "/proc/self/fd/0", "/proc/self/fd/1", "/proc/self/fd/2" },
        timeout = T,
      })
      local dev_in, out, err = res.stdout:match("^([^\n]+)\n([^\n]+)\n([^\n]+)\n$")
      assert.equal("/dev/null", dev_in)
      assert.matches("^" .. kind .. ":%[%d+%]$", out)
      assert.matches("^" .. kind .. ":%[%d+%]$", err)
      assert.not_equal(out, err)
      res = helpers.run(proc.run, { argv = { "readlink", "/proc/self/fd/0" }, stdin = "x" })
      assert.matches("^" .. kind .. ":%[%d+%]\n$", res.stdout)
    end)

    it("finds argv[1] through an empty PATH entry in the child's cwd", function()
      with_dir(function(dir)
        write_file(dir .. "/ph-prog", "#!/bin/sh\necho found\n", "755")
        local res = helpers.run(proc.run, {
          argv = { "ph-prog" },
          env = { PATH = "/nonexistent::/usr/bin" },
          cwd = dir,
          timeout = T,
        })
        assert.equal("found\n", res.stdout)
      end)
    end)

    it("runs a relative argv[1] from the child's cwd", function()
      with_dir(function(dir)
        write_file(dir .. "/ph-prog", "#!/bin/sh\necho relative\n", "755")
        local res = helpers.run(proc.run, { argv = { "./ph-prog" }, cwd = dir, timeout = T })
        assert.equal("relative\n", res.stdout)
      end)
    end)

    it("skips a directory and a non-executable file named like the program", function()
      with_dir(function(dir)
        assert(sys.mkdir(dir .. "/a"))
        assert(sys.mkdir(dir .. "/a/ph-prog"))
        assert(sys.mkdir(dir .. "/b"))
        write_file(dir .. "/b/ph-prog", "#!/bin/sh\necho b\n", "644")
        assert(sys.mkdir(dir .. "/c"))
        write_file(dir .. "/c/ph-prog", "#!/bin/sh\necho c\n", "755")
        local path = ("%s/none:%s/a:%s/b:%s/c"):format(dir, dir, dir, dir)
        local res = helpers.run(proc.run, { argv = { "ph-prog" }, env = { PATH = path } })
        assert.equal("c\n", res.stdout)
      end)
    end)

    it("fails with permission denied when only non-executable files match", function()
      with_dir(function(dir)
        write_file(dir .. "/ph-prog", "#!/bin/sh\necho no\n", "644")
        local res, err, code = helpers.run(proc.run, {
          argv = { "ph-prog" },
          env = { PATH = "/nonexistent:" .. dir },
          timeout = T,
        })
        assert.is_nil(res)
        assert.equal("exit", code)
        assert.equal("spawn ph-prog: permission denied", err)
      end)
    end)

    it("hands a program without a #! line to /bin/sh, as execvp does", function()
      with_dir(function(dir)
        write_file(dir .. "/plain", "echo plain $1\n", "755")
        local res = helpers.run(proc.run, { argv = { dir .. "/plain", "a" }, timeout = T })
        assert.equal("plain a\n", res.stdout)
        res = helpers.run(proc.run, { argv = { "plain", "b" }, env = { PATH = dir } })
        assert.equal("plain b\n", res.stdout)
      end)
    end)

    it("searches execvp's default list when env has no PATH", function()
      local res = helpers.run(proc.run, { argv = { "sh", "-c", "echo ok" }, env = {} })
      assert.equal(0, res.exit_code)
      assert.equal("ok\n", res.stdout)
    end)

    it("fails with code exit for a cwd that is not a directory, or an empty argv[1]", function()
      with_dir(function(dir)
        write_file(dir .. "/file", "", "644")
        local res, err, code = helpers.run(proc.run, { argv = { "pwd" }, cwd = dir .. "/file" })
        assert.is_nil(res)
        assert.equal("exit", code)
        assert.equal(("spawn pwd: not a directory (cwd %s/file)"):format(dir), err)
        res, err, code = helpers.run(proc.run, { argv = { "" } })
        assert.is_nil(res)
        assert.equal("exit", code)
        assert.equal("spawn : no such file or directory", err)
      end)
    end)
  end)
end

-- No process group a process started outlives it (issue 11, item 1): at exit, however the
-- exit comes (a return, an error), the groups still running get SIGTERM then SIGKILL; with
-- the watchdog running, also after a SIGKILL. Each case is a script run by the binary, its
-- commands ignoring SIGTERM, each a shell whose $0 is the marker.
describe("host.proc process groups at exit", function()
  local cmdline = require("spec.support.cmdline")

  -- script(marker, way): spawns 3 stubborn commands, waits until they run, then ends `way`.
  local function script(marker, way, uv)
    return ([[
package.path = "./?.lua;" .. package.path
local proc, core = require("host.proc"), require("host.core.proc")
local sys = require("host.core.sys")
core._force_uv_spawn(%s)
require("spec.helpers").run(function()
  if %q == "sigkill" then assert(core.watchdog(0.5)) end
  for _ = 1, 3 do
    assert(proc.spawn({ argv = { "sh", "-c", "echo up; trap '' TERM; while :; do sleep 1; done",
      %q }, timeout = 60 }))
  end
  require("host.task").sleep(0.3)
  if %q == "error" then error("an internal error") end
  if %q == "sigkill" then sys.kill(sys.getpid(), "SIGKILL") end
  -- as busted ends a run: the state closed while the processes run, their output kept so far
  -- freed with them (a leak AddressSanitizer reported before)
  if %q == "close" then os.exit(0, true) end
end)
]]):format(tostring(uv), way, marker, way, way, way)
  end

  for _, uv in ipairs({ false, true }) do
    for _, way in ipairs({ "return", "error", "sigkill", "close" }) do
      it(("ends them on %s (%s)"):format(way, uv and "uv_spawn" or "posix_spawn"), function()
        helpers.run(function()
          local marker = cmdline.marker()
          local res = proc.run({ argv = { helpers.binary(), "-e", script(marker, way, uv) },
            timeout = 30 })
          if way == "return" or way == "close" then
            assert.equal(0, res.exit_code, res.stderr)
          elseif way == "error" then
            assert.equal(1, res.exit_code)
            assert.matches("an internal error", res.stderr)
          else
            assert.equal("SIGKILL", res.signal)
          end
          local ok = pcall(helpers.eventually, function()
            return #cmdline.holding(marker) == 0
          end, "the commands are gone", 10)
          for _, p in ipairs(cmdline.holding(marker)) do
            sys.kill(-p.pid, "SIGKILL") -- only after a failure
          end
          assert.is_true(ok, "a command outlived the script")
        end)
      end)
    end
  end
end)

describe("host.proc pause_output", function()
  it("reads nothing while paused, then every byte in order once resumed", function()
    helpers.run(function()
      local n, paused_at, p = 0, nil, nil
      local chunks = {}
      p = assert(proc.spawn({ argv = { "sh", "-c", "head -c 3000000 /dev/zero | tr '\\0' x; "
        .. "echo end >&2" }, keep_output = false, timeout = T,
        on_stdout = function(chunk)
          chunks[#chunks + 1] = chunk
          n = n + #chunk
          if not paused_at then
            paused_at = n
            p:pause_output() -- from the callback itself: the next read does not come
          end
        end }))
      helpers.eventually(function()
        return paused_at ~= nil
      end, "the first chunk")
      task.sleep(0.3) -- were it still read, more would come meanwhile
      assert.equal(paused_at, n)
      assert.is_false(p:done()) -- the writer is blocked on the full pipe, not finished
      p:resume_output()
      local r = assert(p:wait(T))
      assert.equal(0, r.exit_code)
      assert.equal(3000000, n)
      assert.equal(("x"):rep(3000000), table.concat(chunks))
    end)
  end)

  it("lets a process that exited while paused finish once resumed, its output whole", function()
    helpers.run(function()
      local n = 0
      local p = assert(proc.spawn({ argv = { "sh", "-c", "echo first; sleep 0.2; echo second" },
        keep_output = false, linger = 0, timeout = T,
        on_stdout = function(chunk)
          n = n + #chunk
        end }))
      helpers.eventually(function()
        return n > 0
      end, "the first line")
      p:pause_output()
      task.sleep(0.6) -- the shell exits; "second" waits in the pipe
      assert.is_false(p:done())
      p:resume_output()
      assert.equal(0, assert(p:wait(T)).exit_code)
      assert.equal(#"first\nsecond\n", n)
    end)
  end)
end)

describe("host.proc max_encoded", function()
  it("keeps raw bytes only as far as their cleaned, JSON-encoded text fits", function()
    helpers.run(function()
      -- 0xFF cleans to U+FFFD (3 bytes): 10 of them fit in 30; a quote encodes to 2 bytes
      local res = assert(proc.run({ argv = { "sh", "-c",
        "head -c 100 /dev/zero | tr '\\0' '\\377'" }, max_encoded = 30, timeout = T }))
      assert.equal(("\255"):rep(10), res.stdout)
      assert.is_true(res.truncated)
      res = assert(proc.run({ argv = { "printf", 'ab"cd' }, max_encoded = 3, timeout = T }))
      assert.equal('ab', res.stdout) -- the quote (\") would take it to 4
      assert.is_true(res.truncated)
      res = assert(proc.run({ argv = { "printf", 'ab"cd' }, max_encoded = 6, timeout = T }))
      assert.equal('ab"cd', res.stdout)
      assert.is_false(res.truncated)
      -- a character split between two reads is measured whole
      res = assert(proc.run({ argv = { "sh", "-c",
        "printf '\\342'; sleep 0.1; printf '\\202\\254x'" }, max_encoded = 3, timeout = T }))
      assert.equal("\226\130\172", res.stdout)
      assert.is_true(res.truncated)
    end)
  end)
end)

-- The cap on children running at once (issue 11, item 2): past it spawns wait their turn,
-- first come first served, within their own timeout, instead of failing for want of
-- descriptors.
describe("host.proc max_children", function()
  after_each(function()
    proc.max_children(0) -- back to the default
  end)

  it("has a default from the open-files limit and can be set", function()
    local limit, running, waiting = proc.max_children()
    assert.is_true(limit >= 1)
    assert.equal(0, running)
    assert.equal(0, waiting)
    assert.equal(3, (proc.max_children(3)))
    assert.equal(limit, (proc.max_children(0)))
    assert.has_error(function()
      proc.max_children(-1)
    end)
  end)

  it("runs spawns past the cap in order, never more at once than the cap", function()
    with_dir(function(dir)
      helpers.run(function()
        proc.max_children(2)
        local log = dir .. "/log"
        local tasks = {}
        for i = 1, 6 do
          tasks[i] = task.spawn(proc.run, { argv = { "sh", "-c",
            'echo "start $0" >> "$1"; sleep 0.2; echo "end $0" >> "$1"', tostring(i), log },
            timeout = T })
          task.sleep(0.01) -- asked for in this order
        end
        local _, _, waiting = proc.max_children()
        assert.is_true(waiting >= 1, "some spawns wait")
        for i = 1, 6 do
          assert.equal(0, assert(tasks[i]:wait(T)).exit_code)
        end
        local running, most, starts = 0, 0, {}
        for what, i in (read_file(log) or ""):gmatch("(%a+) (%d)") do
          running = running + (what == "start" and 1 or -1)
          most = math.max(most, running)
          if what == "start" then
            starts[#starts + 1] = tonumber(i)
          end
        end
        assert.equal(2, most)
        assert.same({ 1, 2, 3, 4, 5, 6 }, starts)
        local _, used, left = proc.max_children()
        assert.equal(0, used)
        assert.equal(0, left)
      end)
    end)
  end)

  it("never starts a command whose timeout passes while it waits", function()
    with_dir(function(dir)
      helpers.run(function()
        proc.max_children(1)
        local holder = assert(proc.spawn({ argv = { "sleep", "2" }, timeout = T }))
        local res, err, code = proc.run({ argv = { "touch", dir .. "/ran" }, timeout = 0.3 })
        assert.is_nil(res)
        assert.equal("timeout", code)
        assert.matches("did not start", err)
        holder:terminate()
        assert(holder:wait(T))
        task.sleep(0.2)
        assert.is_nil(read_file(dir .. "/ran"))
        -- the slot is free again: the next one starts at once
        assert.equal(0, assert(proc.run({ argv = { "true" }, timeout = T })).exit_code)
      end)
    end)
  end)

  it("lets a canceled waiter leave the line; the next one gets its slot", function()
    helpers.run(function()
      proc.max_children(1)
      local holder = assert(proc.spawn({ argv = { "sleep", "0.5" }, timeout = T }))
      local first = task.spawn(proc.run, { argv = { "true" }, timeout = T })
      local second = task.spawn(proc.run, { argv = { "echo", "second" }, timeout = T })
      task.sleep(0.05)
      first:cancel()
      local _, _, code = first:wait(T)
      assert.equal("canceled", code)
      assert.equal("second\n", assert(second:wait(T)).stdout)
      assert(holder:wait(T))
      local _, used, waiting = proc.max_children()
      assert.equal(0, used)
      assert.equal(0, waiting)
    end)
  end)
end)
