-- spec/providers/e2b/duplex_pause_spec.lua: back-pressure on the E2B duplex (pause_output,
-- resume_output) on the fake E2B, and bulk transfers both ways (tens of MB through real
-- commands, as tar will). Order and bytes are asserted, never time; every wait is bounded.
local duplex = require("providers.e2b.duplex")
local fake_e2b = require("spec.support.fake_e2b")
local harness = require("spec.support.e2b_harness")
local helpers = require("spec.helpers")
local provider = require("providers.e2b")
local task = require("host.task")
local util = require("host.util")

local T = 30 -- bounds every wait
local hooks = provider.hooks
local eventually = helpers.eventually

local h = harness.new({ logs = "warn" })
local run = h.run
after_each(h.assert_none_running)

before_each(harness.restorer(duplex.settings))

local function lease(s)
  return harness.duplex_lease(h, s)
end

-- A consumer: on_stdout keeps each chunk and counts the calls; when(chunk) runs in it after.
local function consumer()
  local c = { chunks = {}, calls = 0 }
  function c.on_stdout(chunk)
    c.calls = c.calls + 1
    c.chunks[#c.chunks + 1] = chunk
    if c.when then
      c.when(chunk)
    end
  end
  function c.out()
    return table.concat(c.chunks)
  end
  return c
end

-- What `seq 1 n` prints.
local function seq(n)
  local t = {}
  for i = 1, n do
    t[i] = i .. "\n"
  end
  return table.concat(t)
end

local N = 500000 -- seq 1 N: about 3.4 MB
-- Prints nothing until stdin gives it a line, so no output can arrive before open returns.
local GATED = "read go; seq 1 " .. N

-- Lets the loop run a while (several reads' worth), nothing asserted about the time.
local function settle()
  for _ = 1, 10 do
    task.sleep(0.02)
  end
end

local function assert_gone(sb, pid)
  eventually(function()
    return sb.processes[pid] == nil and not helpers.alive(pid)
  end, "process " .. pid .. " gone", T)
end

describe("providers.e2b duplex back-pressure", function()
  it("paused in the first callback: nothing delivered and no exit until resumed, then all",
  function()
    run(function()
      local s = harness.session()
      local lp, ctx = lease(s)
      local c = consumer()
      local d
      c.when = function()
        if c.calls == 1 then
          assert.is_true(d:pause_output())
        end
      end
      d = assert(hooks.duplex(ctx, { lease = lp, command = "sh", args = { "-c", GATED },
        on_stdout = c.on_stdout }))
      assert.is_true(d:write("go\n"))
      eventually(function()
        return c.calls >= 1
      end, "the first chunk", T)
      local waiter = task.spawn(d.wait, d, T)
      settle()
      assert.equal(1, c.calls, "a callback while paused")
      assert.is_false(waiter:done(), "the exit reported while output waits")
      settle()
      assert.equal(1, c.calls)
      assert.is_false(waiter:done())
      assert.is_true(#c.out() < #seq(N))
      assert.is_true(d:resume_output())
      assert.are.same({ exit_code = 0 }, waiter:wait(T))
      local want, got = seq(N), c.out()
      assert.equal(#want, #got)
      assert.is_true(want == got, "the bytes came back changed or reordered")
      assert.is_true(c.calls > 1)
      assert.is_true(d:close())
      harness.destroy(s, lp.providerLeaseId)
    end)
  end)

  it("paused in every callback, resumed from a task each time: one callback per resume, "
    .. "the exact stream", function()
    run(function()
      local s = harness.session()
      local lp, ctx = lease(s)
      local c = consumer()
      local d
      c.when = function()
        assert.is_true(d:pause_output())
      end
      d = assert(hooks.duplex(ctx, { lease = lp, command = "sh", args = { "-c", GATED },
        on_stdout = c.on_stdout }))
      assert.is_true(d:write("go\n"))
      local waiter = task.spawn(d.wait, d, T)
      local seen = 0
      while not waiter:done() do
        eventually(function()
          return c.calls > seen or waiter:done()
        end, "the callback after resume " .. seen, T)
        if waiter:done() then
          break
        end
        task.yield()
        task.yield()
        assert.equal(seen + 1, c.calls, "more than one callback per resume")
        seen = c.calls
        assert.is_true(d:resume_output())
      end
      assert.are.same({ exit_code = 0 }, waiter:wait(T))
      assert.is_true(seen > 10)
      local want, got = seq(N), c.out()
      assert.equal(#want, #got)
      assert.is_true(want == got, "the bytes came back changed or reordered")
      assert.is_true(d:close())
      harness.destroy(s, lp.providerLeaseId)
    end)
  end)

  it("close while paused: no callback after it, the command goes", function()
    run(function()
      duplex.settings.close_grace = 0.5
      local s = harness.session()
      local lp, ctx, sb = lease(s)
      local c = consumer()
      local d
      c.when = function()
        d:pause_output()
      end
      -- endless output: only close ends it
      d = assert(hooks.duplex(ctx, { lease = lp, command = "sh",
        args = { "-c", "read go; yes 0123456789abcdef" }, on_stdout = c.on_stdout }))
      local pid = d.pid
      assert.is_true(d:write("go\n"))
      eventually(function()
        return c.calls >= 1
      end, "the first chunk", T)
      settle()
      assert.equal(1, c.calls)
      assert.is_true(d:close())
      assert.equal(1, c.calls, "a callback during close")
      assert_gone(sb, pid)
      local res, err, code = d:wait(T)
      if res then
        assert.is_string(res.signal)
      else
        assert.equal("closed", code, err)
      end
      assert.is_true(d:resume_output()) -- after close: harmless, still no callback
      settle()
      assert.equal(1, c.calls)
      assert.is_true(d:close())
      -- closed while paused with the whole output already written and the command gone
      c = consumer()
      c.when = function()
        d:pause_output()
      end
      d = assert(hooks.duplex(ctx, { lease = lp, command = "sh", args = { "-c", GATED },
        on_stdout = c.on_stdout }))
      pid = d.pid
      assert.is_true(d:write("go\n"))
      eventually(function()
        return c.calls >= 1
      end, "the first chunk", T)
      settle()
      assert.is_true(d:close())
      assert.equal(1, c.calls)
      assert_gone(sb, pid)
      local res2, err2, code2 = d:wait(T) -- bounded: an exit, or the stream closed
      assert.is_true(res2 ~= nil or code2 == "closed", err2)
      harness.destroy(s, lp.providerLeaseId)
    end)
  end)

  it("pause and resume are idempotent, and work from a task before any output", function()
    run(function()
      local s = harness.session()
      local lp, ctx = lease(s)
      local c = consumer()
      local d = assert(hooks.duplex(ctx, { lease = lp, command = "sh", args = { "-c", GATED },
        on_stdout = c.on_stdout }))
      assert.is_true(d:pause_output())
      assert.is_true(d:pause_output())
      assert.is_true(d:write("go\n"))
      local waiter = task.spawn(d.wait, d, T)
      settle()
      assert.equal(0, c.calls)
      assert.is_false(waiter:done())
      assert.is_true(d:resume_output())
      assert.is_true(d:resume_output())
      -- paused twice from the callback, one resume is enough
      c.when = function()
        if c.calls == 2 then
          d:pause_output()
          d:pause_output()
        end
      end
      eventually(function()
        return c.calls >= 2 or waiter:done()
      end, "two chunks", T)
      settle()
      if not waiter:done() then
        assert.equal(2, c.calls)
      end
      assert.is_true(d:resume_output())
      assert.are.same({ exit_code = 0 }, waiter:wait(T))
      assert.is_true(seq(N) == c.out(), "the bytes came back changed or reordered")
      -- paused and resumed inside the same callback: delivery goes on
      c = consumer()
      c.when = function()
        d:pause_output()
        d:resume_output()
      end
      d = assert(hooks.duplex(ctx, { lease = lp, command = "sh", args = { "-c", GATED },
        on_stdout = c.on_stdout }))
      assert.is_true(d:write("go\n"))
      assert.are.same({ exit_code = 0 }, d:wait(T))
      assert.is_true(seq(N) == c.out(), "the bytes came back changed or reordered")
      assert.is_true(d:close())
      harness.destroy(s, lp.providerLeaseId)
    end)
  end)
end)

describe("providers.e2b duplex bulk transfers (as tar through sh -c will)", function()
  local MB20 = 20 * 1000 * 1000

  -- The unsent chunks the fake (envd) holds for the streams of the sandbox's processes.
  local function held_chunks(sb)
    local most = 0
    for _, p in pairs(sb.processes) do
      for _, sub in ipairs(p.subs) do
        most = math.max(most, sub.tail - sub.head + 1)
      end
    end
    return most
  end

  it("paused, the back-pressure reaches the command: bounded buffering all the way", function()
    run(function()
      local s = harness.session()
      local lp, ctx, sb = lease(s)
      local n, calls, d = 0, 0, nil
      d = assert(hooks.duplex(ctx, { lease = lp, command = "sh",
        args = { "-c", "read go; head -c " .. MB20 .. " /dev/zero" }, on_stdout = function(c)
          n, calls = n + #c, calls + 1
          if calls == 1 then
            d:pause_output()
          end
        end }))
      local pid = d.pid
      assert.is_true(d:write("go\n"))
      eventually(function()
        return calls >= 1
      end, "the first chunk", T)
      local most = 0
      for _ = 1, 20 do
        most = math.max(most, held_chunks(sb))
        task.sleep(0.02)
      end
      assert.equal(1, calls)
      assert.is_not_nil(sb.processes[pid], "the command ran to its end while its reader paused")
      assert.is_true(most <= fake_e2b.BUFFERED_CHUNKS + 4, most)
      assert.is_true(d:resume_output())
      assert.are.same({ exit_code = 0 }, d:wait(T))
      assert.equal(MB20, n)
      assert.is_true(d:close())
      harness.destroy(s, lp.providerLeaseId)
    end)
  end)

  local function urandom(n)
    local f = assert(io.open("/dev/urandom", "rb"))
    local data = f:read(n)
    f:close()
    assert.equal(n, #data)
    return data
  end

  -- The Lua heap's peak (KiB) while fn runs, sampled by a task.
  local function peak_kib(fn)
    local peak, stop = collectgarbage("count"), false
    local sampler = task.spawn(function()
      while not stop do
        peak = math.max(peak, collectgarbage("count"))
        task.sleep(0.01)
      end
    end)
    local res = table.pack(pcall(fn))
    stop = true
    sampler:wait(T)
    assert(res[1], res[2])
    return peak
  end

  it("20 MB of random bytes into `sh -c sha256sum` with write() and close_stdin()", function()
    run(function()
      local s = harness.session()
      local lp, ctx = lease(s)
      local data = urandom(MB20)
      local want = util.sha256_hex(data)
      local c = consumer()
      local t0 = task.now()
      collectgarbage("collect")
      local base = collectgarbage("count")
      local peak = peak_kib(function()
        local d = assert(hooks.duplex(ctx, { lease = lp, command = "sh",
          args = { "-c", "sha256sum | cut -d' ' -f1" }, on_stdout = c.on_stdout }))
        local piece = 1024 * 1024
        for i = 1, #data, piece do
          assert.is_true(d:write(data:sub(i, i + piece - 1)))
        end
        assert.is_true(d:close_stdin())
        assert.are.same({ exit_code = 0 }, d:wait(T))
        assert.is_true(d:close())
      end)
      print(("# in: %d bytes in %.2fs, Lua heap peak +%.1f MiB"):format(#data,
        task.now() - t0, (peak - base) / 1024))
      assert.equal(want .. "\n", c.out())
      harness.destroy(s, lp.providerLeaseId)
    end)
  end)

  it("20 MB out of `head -c | tee file`, in order, its hash and the file's agree", function()
    run(function()
      local s = harness.session()
      local lp, ctx = lease(s)
      local c, errs = consumer(), {}
      local t0 = task.now()
      collectgarbage("collect")
      local base = collectgarbage("count")
      local peak = peak_kib(function()
        local d = assert(hooks.duplex(ctx, { lease = lp, command = "sh",
          args = { "-c", "head -c " .. MB20 .. " /dev/urandom | tee out.bin; "
            .. "sha256sum out.bin | cut -d' ' -f1 >&2; rm -f out.bin" },
          on_stdout = c.on_stdout, on_stderr = function(chunk)
            errs[#errs + 1] = chunk
          end }))
        assert.is_true(d:close_stdin())
        assert.are.same({ exit_code = 0 }, d:wait(T))
        assert.is_true(d:close())
      end)
      local got = c.out()
      print(("# out: %d bytes in %.2fs, Lua heap peak +%.1f MiB (%.1f MiB of it kept "
        .. "by the spec)"):format(#got, task.now() - t0, (peak - base) / 1024, #got / 1048576))
      assert.equal(MB20, #got)
      assert.equal(util.sha256_hex(got) .. "\n", table.concat(errs))
      harness.destroy(s, lp.providerLeaseId)
    end)
  end)

  it("a tar stream out of one sandbox directory and into another, through two duplexes",
  function()
    run(function()
      local s = harness.session()
      local lp, ctx = lease(s)
      -- a tree of a few files, one of 5 MB of random bytes
      local mk = assert(hooks.duplex(ctx, { lease = lp, command = "sh", args = { "-c",
        "mkdir -p src/sub dst && head -c 5000000 /dev/urandom > src/big.bin && "
          .. "printf 'hello\\n' > src/sub/a.txt && : > src/empty" } }))
      assert.are.same({ exit_code = 0 }, mk:wait(T))
      mk:close()
      local into = assert(hooks.duplex(ctx, { lease = lp, command = "sh",
        args = { "-c", "tar -x -f - -C dst" } }))
      -- the pump a consumer with a slow sink would be: pause in the callback, write from a task
      local q, wake = {}, task.signal()
      local from
      from = assert(hooks.duplex(ctx, { lease = lp, command = "sh",
        args = { "-c", "read go; tar -c -f - -C src ." }, on_stdout = function(chunk)
          q[#q + 1] = chunk
          from:pause_output()
          wake:notify()
        end }))
      local waiter = task.spawn(from.wait, from, T)
      assert.is_true(from:write("go\n"))
      assert.is_true(from:close_stdin())
      local moved = 0
      while true do
        while q[1] do
          local chunk = table.remove(q, 1)
          assert.is_true(into:write(chunk))
          moved = moved + #chunk
        end
        if waiter:done() then
          break
        end
        from:resume_output()
        wake:wait(1)
      end
      assert.are.same({ exit_code = 0 }, waiter:wait(T))
      assert.is_true(moved > 5000000)
      assert.is_true(into:close_stdin())
      assert.are.same({ exit_code = 0 }, into:wait(T))
      from:close()
      into:close()
      local c = consumer()
      local cmp = assert(hooks.duplex(ctx, { lease = lp, command = "sh", args = { "-c",
        "diff -r src dst && cat dst/sub/a.txt && test -f dst/empty" },
        on_stdout = c.on_stdout }))
      assert.are.same({ exit_code = 0 }, cmp:wait(T))
      cmp:close()
      assert.equal("hello\n", c.out())
      harness.destroy(s, lp.providerLeaseId)
    end)
  end)
end)
