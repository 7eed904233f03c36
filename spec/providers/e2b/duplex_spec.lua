-- spec/providers/e2b/duplex_spec.lua: the E2B provider's bridge hooks on the fake E2B (issue 9):
-- hooks.duplex (envd Start with stdin kept open, SendInput, CloseStdin, SendSignal) and
-- hooks.sandbox_helper (ph-sandbox-helper uploaded once per lease). The fake runs commands on
-- this machine, so the helper uploaded to a sandbox really runs. Order is asserted, never time;
-- every wait is bounded.
local api = require("providers.e2b.api")
local duplex = require("providers.e2b.duplex")
local fake_paperclip = require("spec.support.fake_paperclip")
local frame = require("host.core.frame")
local harness = require("spec.support.e2b_harness")
local helpers = require("spec.helpers")
local provider = require("providers.e2b")
local rawtcp = require("host.core.rawtcp")
local sandbox_helper = require("host.sandbox_helper")
local task = require("host.task")

local T = 20 -- bounds every wait
local hooks = provider.hooks
local eventually = helpers.eventually

-- A fresh fake per spec (h.fake; h.logs: the warnings); no sandbox may be left running.
local h = harness.new({ logs = "warn" })
local run = h.run
after_each(h.assert_none_running)

before_each(harness.restorer(duplex.settings))

-- A session with a lease, and the ctx an execute on that lease would give the bridge hooks.
local function lease(s)
  return harness.duplex_lease(h, s)
end

-- An on_stdout that keeps every chunk: out() is everything so far.
local function sink()
  local chunks = {}
  return function(chunk)
    chunks[#chunks + 1] = chunk
  end, function()
    return table.concat(chunks)
  end
end

-- open(ctx, lp, command, args, extra) -> Duplex, out: hooks.duplex with a keeping on_stdout.
local function open(ctx, lp, command, args, extra)
  local on_stdout, out = sink()
  local params = helpers.merged({ lease = lp, command = command, args = args or {},
    on_stdout = on_stdout }, extra)
  return assert(hooks.duplex(ctx, params)), out
end

-- The fake's record of the last process started (args[3] is the script bash ran).
local function last_command()
  return h.fake.commands[#h.fake.commands]
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

-- The files uploaded through envd's files API whose path names ph-sandbox-helper.
local function helper_uploads()
  local n = 0
  for _, r in ipairs(h.fake.requests) do
    local query = r.query or ""
    if r.method == "POST" and r.path == "/files" and query:find("ph%-sandbox%-helper") then
      n = n + 1
    end
  end
  return n
end

-- The process of pid is gone from the sandbox and from this machine.
local function assert_gone(sb, pid)
  eventually(function()
    return sb.processes[pid] == nil and not helpers.alive(pid)
  end, "process " .. pid .. " gone", T)
end

describe("providers.e2b duplex", function()
  it("echoes through cat as it goes: each write's echo arrives before stdin closes", function()
    run(function()
      local s = harness.session()
      local lp, ctx, sb = lease(s)
      local d, out = open(ctx, lp, "cat")
      assert.is_true(last_command().stdin)
      assert.is_not_nil(sb.processes[d.pid], "the pid envd reported is the command's own")
      local expect = ""
      for i = 1, 3 do
        local line = "line " .. i .. "\n"
        assert.is_true(d:write(line))
        expect = expect .. line
        eventually(function() -- stdin is still open: the echo needs no EOF
          return out() == expect
        end, "the echo of line " .. i, T)
      end
      assert.is_true(d:close_stdin())
      assert.are.same({ exit_code = 0 }, d:wait(T))
      assert.equal("line 1\nline 2\nline 3\n", out())
      assert.equal(3, h.fake:count("^/process%.Process/SendInput$"))
      assert.equal(1, h.fake:count("^/process%.Process/CloseStdin$"))
      assert.is_true(d:close()) -- nothing left to stop: no signal sent
      assert.equal(0, h.fake:count("^/process%.Process/SendSignal$"))
      harness.destroy(s, lp.providerLeaseId)
    end)
  end)

  it("moves 4 MiB both ways byte for byte, writes kept in call order", function()
    run(function()
      duplex.settings.max_input = 300 * 1000 -- several SendInput per write
      local s = harness.session()
      local lp, ctx = lease(s)
      local d, out = open(ctx, lp, "cat")
      local data = helpers.all_bytes() .. noise(4 * 1024 * 1024, 7) .. helpers.all_bytes()
      local parts = { data:sub(1, 1000), data:sub(1001, 2500000), data:sub(2500001) }
      -- three writers at once: each queues its write before it yields, so call order is A, B, C
      local writers = {}
      for i, part in ipairs(parts) do
        writers[i] = task.spawn(function()
          return d:write(part)
        end)
        task.yield()
      end
      for i, w in ipairs(writers) do
        assert.is_true(w:wait(T), "write " .. i)
      end
      assert.is_true(d:close_stdin())
      assert.are.same({ exit_code = 0 }, d:wait(T))
      local got = out()
      assert.equal(#data, #got)
      assert.is_true(data == got, "the bytes came back changed or reordered")
      assert.is_true(h.fake:count("^/process%.Process/SendInput$") >= 15)
      d:close()
      harness.destroy(s, lp.providerLeaseId)
    end)
  end)

  it("close_stdin gives the command EOF and wait its exit code; stdin is then closed", function()
    run(function()
      local s = harness.session()
      local lp, ctx = lease(s)
      local d, out = open(ctx, lp, "sh", { "-c", "wc -c; exit 7" })
      assert.is_true(d:write("12345"))
      assert.is_true(d:close_stdin())
      assert.is_true(d:close_stdin()) -- idempotent, no second request
      assert.are.same({ exit_code = 7 }, d:wait(T))
      assert.equal("5", out():match("%d+"))
      assert.equal(1, h.fake:count("^/process%.Process/CloseStdin$"))
      local ok, err, code = d:write("late")
      assert.is_nil(ok)
      assert.equal("closed", code, err)
      d:close()
      harness.destroy(s, lp.providerLeaseId)
    end)
  end)

  it("close_stdin on an envd older than 0.5.2: unsupported, nothing sent", function()
    run(function()
      h.fake.envd_version = "0.5.1"
      local s = harness.session()
      local lp, ctx, sb = lease(s)
      local d = open(ctx, lp, "cat")
      local ok, err, code = d:close_stdin()
      assert.is_nil(ok)
      assert.equal("unsupported", code, err)
      assert.equal(0, h.fake:count("^/process%.Process/CloseStdin$"))
      local pid = d.pid
      assert.is_true(d:close())
      assert_gone(sb, pid)
      harness.destroy(s, lp.providerLeaseId)
    end)
  end)

  it("the env arrives on stdin: minimal base, nothing on a command line", function()
    run(function()
      local s = harness.session()
      local lp, ctx = lease(s)
      local secret = "s3cr3t-value-" .. ("x"):rep(8)
      local d, out = open(ctx, lp, "env", {}, { env = { PAPERCLIP_TOKEN = secret,
        ODD = "it's \"quoted\"\nand two lines" } })
      assert.are.same({ exit_code = 0 }, d:wait(T))
      local names = {}
      for name in ("\n" .. out()):gmatch("\n([%w_]+)=") do
        names[#names + 1] = name
      end
      table.sort(names)
      assert.are.same({ "HOME", "ODD", "PAPERCLIP_TOKEN", "PATH", "USERPROFILE" }, names)
      assert.truthy(out():find("PAPERCLIP_TOKEN=" .. secret .. "\n", 1, true))
      assert.truthy(out():find("ODD=it's \"quoted\"\nand two lines\n", 1, true))
      local c = last_command()
      assert.is_nil(table.concat(c.args, " "):find(secret, 1, true))
      assert.are.same({}, c.envs) -- not in envd's process env either
      d:close()
      -- a HOME given is the command's HOME and USERPROFILE
      d, out = open(ctx, lp, "env", {}, { env = { HOME = "/somewhere/else" } })
      assert.are.same({ exit_code = 0 }, d:wait(T))
      assert.truthy(out():find("\nUSERPROFILE=/somewhere/else\n", 1, true)
        or out():find("^USERPROFILE=/somewhere/else\n"))
      assert.truthy(out():find("HOME=/somewhere/else\n", 1, true))
      d:close()
      harness.destroy(s, lp.providerLeaseId)
    end)
  end)

  it("close() ends a running command (TERM, then KILL) and leaves no process", function()
    run(function()
      duplex.settings.close_grace = 0.5
      local s = harness.session()
      local lp, ctx, sb = lease(s)
      -- cat goes at TERM
      local d = open(ctx, lp, "cat")
      local pid = d.pid
      assert.is_true(d:write("x"))
      assert.is_true(d:close())
      assert_gone(sb, pid)
      assert.are.same({ signal = "SIGTERM" }, d:wait(T))
      assert.is_true(d:close()) -- idempotent
      local ok, _, code = d:write("late")
      assert.is_nil(ok)
      assert.equal("closed", code)
      -- a command that ignores TERM goes at KILL, with the children it started
      local out
      d, out = open(ctx, lp, "sh", { "-c", "trap '' TERM; sleep 300 & echo $!; wait" })
      pid = d.pid
      local child = tonumber(eventually(function()
        return out():match("^(%d+)\n")
      end, "the child's pid", T))
      assert.is_true(helpers.alive(child))
      assert.is_true(d:close())
      assert_gone(sb, pid)
      eventually(function()
        return not helpers.alive(child)
      end, "the child gone", T)
      assert.are.same({ signal = "SIGKILL" }, d:wait(T))
      assert.equal("SIGKILL", last_command().signal)
      assert.is_nil(next(sb.processes))
      harness.destroy(s, lp.providerLeaseId)
    end)
  end)

  it("a <close> variable closes it on every path", function()
    run(function()
      local s = harness.session()
      local lp, ctx, sb = lease(s)
      local pid
      local ok = pcall(function()
        local d <close> = open(ctx, lp, "cat")
        pid = d.pid
        error("the caller failed")
      end)
      assert.is_false(ok)
      assert_gone(sb, pid)
      harness.destroy(s, lp.providerLeaseId)
    end)
  end)

  describe("transport loss ends wait and write with an error, never a hang", function()
    -- After the loss: wait and write fail (bounded, not "timeout"); close() still stops it.
    local function assert_lost(d)
      local res, err, code = d:wait(T)
      assert.is_nil(res)
      assert.are_not.equal("timeout", code, err)
      assert.equal("closed", code, err)
      local ok, werr, wcode = d:write("x")
      assert.is_nil(ok)
      assert.is_string(werr)
      assert.are_not.equal("timeout", wcode)
    end

    it("the stream cut after the start", function()
      run(function()
        local s = harness.session()
        local lp, ctx, sb = lease(s)
        h.fake:fail({ kind = "envd", path = "^/process%.Process/Start$", drop = true })
        local d = open(ctx, lp, "cat")
        local pid = d.pid
        assert_lost(d)
        assert.is_not_nil(sb.processes[pid]) -- still running: only the stream went
        assert.is_true(d:close())
        assert_gone(sb, pid)
        harness.destroy(s, lp.providerLeaseId)
      end)
    end)

    it("the sandbox gone under it", function()
      run(function()
        local s = harness.session()
        local lp, ctx, sb = lease(s)
        local d = open(ctx, lp, "cat")
        local pid = d.pid
        h.fake:expire(lp.providerLeaseId)
        assert_lost(d)
        local ok, err = d:close() -- nothing to reach: an error, at once
        assert.is_nil(ok)
        assert.matches("not running", err)
        assert_gone(sb, pid)
      end)
    end)

    it("the whole service gone (the fake stopped)", function()
      run(function()
        local s = harness.session()
        local lp, ctx = lease(s)
        local d = open(ctx, lp, "cat")
        h.fake:stop()
        assert_lost(d)
        assert.is_nil((d:close()))
        h.fake:expire(lp.providerLeaseId) -- its processes went with the fake; mark it gone
      end)
    end)
  end)
end)

describe("providers.e2b sandbox_helper", function()
  it("uploads it once per lease, named by its sha256, and it runs", function()
    run(function()
      local s = harness.session()
      local lp, ctx = lease(s)
      local path = assert(hooks.sandbox_helper(ctx, { lease = lp }))
      assert.equal(1, helper_uploads())
      assert.matches("^/.*/%.paperclip/ph%-sandbox%-helper%-" .. ("%x"):rep(16) .. "$", path)
      assert.is_true(helpers.read_file(path) == helpers.read_file(helpers.sandbox_helper()))
      -- the same worker again: no request at all
      local before = #h.fake.requests
      assert.equal(path, hooks.sandbox_helper(ctx, { lease = lp }))
      assert.equal(before, #h.fake.requests)
      -- a restarted worker: a connect and one command find it, no upload
      api.forget_all()
      assert.equal(path, hooks.sandbox_helper(ctx, { lease = lp }))
      assert.equal(1, helper_uploads())
      assert.equal(before + 2, #h.fake.requests)
      -- another lease, asked twice at once: one upload for both
      local lp2, ctx2 = lease(s)
      local a = task.spawn(hooks.sandbox_helper, ctx2, { lease = lp2 })
      local b = task.spawn(hooks.sandbox_helper, ctx2, { lease = lp2 })
      local pa, pb = assert(a:wait(T)), assert(b:wait(T))
      assert.equal(pa, pb)
      assert.are_not.equal(path, pa)
      assert.equal(2, helper_uploads())
      harness.destroy(s, lp.providerLeaseId)
      harness.destroy(s, lp2.providerLeaseId)
    end)
  end)

  it("without a helper on the host: unsupported, nothing sent", function()
    run(function()
      local s = harness.session()
      local lp, ctx = lease(s)
      local before = #h.fake.requests
      local path, err, code
      sandbox_helper.override = "/nonexistent/ph-sandbox-helper"
      helpers.with_cleanup(function()
        path, err, code = hooks.sandbox_helper(ctx, { lease = lp })
      end, function()
        sandbox_helper.override = nil
      end)
      assert.is_nil(path)
      assert.equal("unsupported", code, err)
      assert.matches("ph%-sandbox%-helper is not available on this host", err)
      assert.equal(before, #h.fake.requests)
      harness.destroy(s, lp.providerLeaseId)
    end)
  end)

  it("a helper that cannot run in the sandbox: unsupported, and remembered", function()
    run(function()
      local dir <close> = helpers.tempdir("e2b-helper-")
      local bogus = dir.path .. "/ph-sandbox-helper"
      helpers.write_file(bogus, "\127ELF not really a program\n", "755")
      local s = harness.session()
      local lp, ctx = lease(s)
      local path, err, code, again
      sandbox_helper.override = bogus
      helpers.with_cleanup(function()
        path, err, code = hooks.sandbox_helper(ctx, { lease = lp })
        local before = #h.fake.requests
        again = table.pack(hooks.sandbox_helper(ctx, { lease = lp }))
        assert.equal(before, #h.fake.requests) -- remembered: not tried again
      end, function()
        sandbox_helper.override = nil
      end)
      assert.is_nil(path)
      assert.equal("unsupported", code, err)
      assert.matches("cannot run in E2B sandbox", err)
      assert.are.same({ n = 3, nil, err, code }, again)
      harness.destroy(s, lp.providerLeaseId)
    end)
  end)

  it("`<helper> relay --port 0` through a duplex answers with HELLO and carries a connection",
  function()
    run(function()
      local s = harness.session()
      local lp, ctx, sb = lease(s)
      local path = assert(hooks.sandbox_helper(ctx, { lease = lp }))
      local decoder, frames = frame.decoder(), {}
      local d = assert(hooks.duplex(ctx, { lease = lp, command = path,
        args = { "relay", "--port", "0" }, on_stdout = function(chunk)
          for _, f in ipairs(assert(decoder:feed(chunk))) do
            frames[#frames + 1] = f
          end
        end }))
      local hello = eventually(function()
        return frames[1]
      end, "HELLO", T)
      assert.equal("HELLO", hello.type)
      assert.equal(0, hello.stream)
      assert.is_true(hello.port > 0 and hello.port < 65536)
      assert.equal(frame.MAGIC .. string.pack(">I2", hello.port), hello.payload)
      -- a client in the sandbox (this machine) reaches the host through the duplex, both ways
      local c <close> = assert(rawtcp.connect("127.0.0.1", hello.port, T))
      assert(c:send("ping"))
      local function frame_of(type_name)
        return eventually(function()
          for _, f in ipairs(frames) do
            if f.type == type_name then
              return f
            end
          end
        end, type_name .. " frame", T)
      end
      local opened = frame_of("OPEN")
      assert.equal("ping", frame_of("DATA").payload)
      assert.is_true(d:write(frame.encode("DATA", opened.stream, "pong")))
      assert.equal("pong", c:recv(T))
      -- stdin closed: the relay exits by itself
      assert.is_true(d:close_stdin())
      assert.are.same({ exit_code = 0 }, d:wait(T))
      assert.is_true(d:close())
      assert.is_nil(next(sb.processes))
      harness.destroy(s, lp.providerLeaseId)
    end)
  end)
end)

describe("providers.e2b execute with a bridge", function()
  -- The agent: curl with the env the bridge gave, printing the body then the status.
  local AGENT = [[curl -sS -o /dev/stdout -w '\n%{http_code}' ]]
    .. [[-H "Authorization: Bearer $PAPERCLIP_API_KEY" "$PAPERCLIP_API_URL$1"]]
  local PKEY = "the-real-paperclip-key-0123456789"

  it("the command reaches the API through the relay, which runs on a duplex", function()
    run(function()
      local papi <close> = fake_paperclip.start({ api_key = PKEY })
      local s = harness.session()
      local _, lp = harness.acquire(s)
      local sb = h.fake:sandbox(lp.providerLeaseId)
      for i = 1, 2 do
        local r = assert(harness.exec(s, lp, { command = "sh",
          args = { "-c", AGENT, "agent", "/api/agents/me" },
          bridge = { apiUrl = papi.url, apiKey = PKEY, runId = "run-" .. i } }))
        assert.equal(0, r.exitCode, r.stderr)
        assert.equal("200", r.stdout:match("\n(%d+)$"), r.stdout)
        assert.equal("Bearer " .. PKEY, papi.requests[i].headers.authorization)
        assert.is_nil(r.stdout:find(PKEY, 1, true))
        assert.is_nil(next(sb.processes), "the relay is gone with the execution")
      end
      assert.equal(2, #papi.requests)
      assert.equal(1, helper_uploads()) -- once for the lease
      harness.destroy(s, lp.providerLeaseId)
    end)
  end)
end)
