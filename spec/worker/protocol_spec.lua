-- spec/worker/protocol_spec.lua: the plugin-worker protocol over a spawned provider-host.
local helpers = require("spec.helpers")
local json = require("host.json")
local task = require("host.task")
local util = require("host.util")
local wp = require("spec.support.worker_process")

local FIXTURES = helpers.root .. "/spec/fixtures/providers"

-- with_worker(fn [, args [, opts]]): fn(w, tmp) with a worker whose TMPDIR (where `local`
-- makes its leases) is private to the test.
local with_worker = wp.with

-- call(w, id, method, params, timeout) -> the reply to the request (nil, message: none in time)
local function call(w, id, method, params, timeout)
  w:request(id, method, params)
  return w:reply_to(id, timeout)
end

-- The params of a call on the local provider as Paperclip sends them, with extra's fields.
local function local_params(extra)
  return helpers.merged({ driverKey = "local", companyId = "c1", environmentId = "e1",
    config = {} }, extra)
end

local function lease_for(w, id)
  local r = assert(call(w, id, "environmentAcquireLease", local_params({ runId = "r1" })))
  assert(r.result, r.error and r.error.message)
  return { providerLeaseId = r.result.providerLeaseId, metadata = r.result.metadata }
end

-- Sends (without waiting for the reply) an execute of `bash -c command` on the lease.
local function execute(w, id, lease, command, extra, invocation)
  local params = local_params(helpers.merged({ lease = lease, command = "bash",
    args = { "-c", command } }, extra))
  w:request(id, "environmentExecute", params, invocation and {
    paperclipInvocation = { id = invocation, scope = { companyId = "c1" } },
  } or nil)
end

-- The contents of a /proc file, "" when it cannot be read (the process is gone).
local function read_proc(path)
  return helpers.read_file(path) or ""
end

describe("worker protocol", function()
  it("answers initialize with ok and the methods its providers implement", function()
    with_worker(function(w)
      local r = w:initialize()
      assert.is_true(r.result.ok)
      local m = {}
      for _, name in ipairs(r.result.supportedMethods) do
        m[name] = true
      end
      for _, name in ipairs({
        "health",
        "environmentValidateConfig",
        "environmentProbe",
        "environmentAcquireLease",
        "environmentResumeLease",
        "environmentReleaseLease",
        "environmentDestroyLease",
        "environmentRealizeWorkspace",
        "environmentExecute",
        "environmentCancelExecution",
        "environmentSyncIn",
        "environmentSyncOut",
      }) do
        assert.is_true(m[name], name)
      end
    end)
  end)

  it("sends a log notification without an id while starting", function()
    with_worker(function(w)
      w:initialize()
      local saw = false
      for _, msg in ipairs(w.other) do
        if msg.method == "log" then
          saw = true
          assert.is_nil(msg.id)
          assert.matches("ready", msg.params.message)
        end
      end
      assert.is_true(saw)
    end)
  end)

  it("refuses a second initialize with -32002", function()
    with_worker(function(w)
      w:initialize()
      local r = call(w, 9, "initialize", {})
      assert.equal(-32002, r.error.code)
      assert.equal("Worker already initialized", r.error.message)
    end)
  end)

  it("echoes ids with their exact JSON type and value", function()
    with_worker(function(w)
      w:send('{"jsonrpc":"2.0","id":"7","method":"health","params":{}}\n')
      assert.matches('"id":"7"', w:recv_line())
      w:send('{"jsonrpc":"2.0","id":8,"method":"health","params":{}}\n')
      assert.matches('"id":8[,}]', w:recv_line())
      w:send('{"jsonrpc":"2.0","id":-3,"method":"health","params":{}}\n')
      assert.matches('"id":%-3[,}]', w:recv_line())
      w:send('{"jsonrpc":"2.0","id":2.5,"method":"health","params":{}}\n')
      assert.matches('"id":2%.5[,}]', w:recv_line())
    end)
  end)

  it("replies to void methods with an explicit null result", function()
    with_worker(function(w)
      w:send('{"jsonrpc":"2.0","id":5,"method":"configChanged","params":{"config":{}}}\n')
      local line = w:recv_line()
      assert.matches('"result":null', line)
      local lease = lease_for(w, 6)
      w:request(7, "environmentReleaseLease", local_params({
        providerLeaseId = lease.providerLeaseId,
      }))
      line = w:recv_line()
      assert.matches('"result":null', line)
      assert.matches('"id":7', line)
    end)
  end)

  it("answers health", function()
    with_worker(function(w)
      assert.equal("ok", call(w, 1, "health", {}).result.status)
    end)
  end)

  it("answers an unknown method with -32601 and an unimplemented one with -32004", function()
    with_worker(function(w)
      local r = call(w, 1, "bogus", {})
      assert.equal(-32601, r.error.code)
      assert.equal("Unknown method: bogus", r.error.message)
      -- echo (a fixture) has no sync hooks
      r = call(w, 2, "environmentSyncIn", { driverKey = "echo", config = {} })
      assert.equal(-32004, r.error.code)
      assert.equal("environmentSyncIn is not implemented by this plugin", r.error.message)
      assert.equal(-32004, call(w, 3, "onEvent", {}).error.code)
    end, { "worker", "--providers", FIXTURES, "--provider", "local", "--provider", "echo" })
  end)

  it("answers an unparseable line with -32700 and id null, then keeps serving", function()
    with_worker(function(w)
      w:send("not json\n")
      local line = w:recv_line()
      assert.matches('"id":null', line)
      assert.equal(-32700, json.decode(line).error.code)
      w:send('{"jsonrpc":"2.0","id":1,"method":\n')
      assert.equal(-32700, w:recv().error.code)
      assert.equal("ok", call(w, 2, "health", {}).result.status)
    end)
  end)

  it("answers a message that is not JSON-RPC 2.0 with -32600", function()
    with_worker(function(w)
      w:send('{"id":4,"method":"health"}\n')
      local r = w:recv()
      assert.equal(-32600, r.error.code)
      assert.equal(4, r.id)
      w:send("[1,2,3]\n")
      assert.equal(-32600, w:recv().error.code)
    end)
  end)

  it("ignores notifications and blank lines", function()
    with_worker(function(w)
      w:send('{"jsonrpc":"2.0","method":"onEvent","params":{}}\n\n   \n')
      w:request(1, "health", {})
      local r = w:recv()
      assert.equal(1, r.id)
    end)
  end)

  it("serves requests concurrently and replies in completion order", function()
    with_worker(function(w)
      local lease = lease_for(w, 1)
      execute(w, 2, lease, "sleep 0.5; echo slow")
      w:request(3, "health", {})
      local first = w:recv()
      assert.equal(3, first.id)
      local second = w:reply_to(2)
      assert.equal("slow\n", second.result.stdout)
    end)
  end)

  it("runs many executes on one lease at once", function()
    with_worker(function(w)
      local lease = lease_for(w, 1)
      local t0 = task.now()
      for i = 1, 50 do
        execute(w, 100 + i, lease, "sleep 0.6; echo " .. i)
      end
      local seen = 0
      for _ = 1, 50 do
        local r = assert(w:recv(10))
        if r.id and r.id > 100 then
          assert.equal(("%d\n"):format(r.id - 100), r.result.stdout)
          seen = seen + 1
        end
      end
      assert.equal(50, seen)
      -- one after another they would take 30 s: concurrently far less, however slow the machine
      assert.is_true(task.now() - t0 < 15, "50 sleeps of 0.6 s ran one after another")
    end)
  end)

  it("streams execute.log tagged with the invocation id, as a prefix of the output", function()
    with_worker(function(w)
      local lease = lease_for(w, 1)
      execute(
        w,
        2,
        lease,
        "for i in 1 2 3; do echo line $i; echo err $i >&2; sleep 0.05; done",
        nil,
        "inv-42"
      )
      local r = w:reply_to(2)
      local out, errs = {}, {}
      for _, msg in ipairs(w.other) do
        if msg.method == "execute.log" then
          assert.equal("inv-42", msg.paperclipInvocationId)
          assert.is_nil(msg.id)
          local into = msg.params.stream == "stdout" and out or errs
          into[#into + 1] = msg.params.chunk
        end
      end
      assert.equal(r.result.stdout, table.concat(out))
      assert.equal(r.result.stderr, table.concat(errs))
      assert.equal("line 1\nline 2\nline 3\n", r.result.stdout)
    end)
  end)

  it("keeps streamed text an exact UTF-8-safe prefix of binary and invalid output", function()
    with_worker(function(w)
      local lease = lease_for(w, 1)
      -- a euro sign split across writes, a stray continuation byte, 0xff, then every byte
      local script = [[printf '\342'; sleep 0.05; printf '\202\254 ok \200 \377\n'; sleep 0.05;]]
        .. [[ head -c 4096 /dev/urandom; printf 'caf\303']]
      execute(w, 2, lease, script, nil, "inv-utf8")
      local r = w:reply_to(2)
      local streamed = {}
      for _, msg in ipairs(w.other) do
        if msg.method == "execute.log" and msg.params.stream == "stdout" then
          streamed[#streamed + 1] = msg.params.chunk
          assert.is_true(util.utf8_valid(msg.params.chunk))
        end
      end
      local final = r.result.stdout
      assert.is_true(util.utf8_valid(final))
      assert.equal("\u{20AC} ok \u{FFFD} \u{FFFD}\n", final:sub(1, 15))
      local s = table.concat(streamed)
      assert.equal(final:sub(1, #s), s)
      assert.equal("caf\u{FFFD}", final:sub(-6))
    end)
  end)

  it("round-trips non-ASCII, CR and surrogate pairs through env and output", function()
    with_worker(function(w)
      local lease = lease_for(w, 1)
      w:send(json
        .encode({
          jsonrpc = "2.0",
          id = 2,
          method = "environmentExecute",
          params = local_params({
            lease = lease,
            command = "bash",
            args = { "-c", 'printf %s "$X"' },
            env = { X = "x" },
          }),
        })
        :gsub('"X":"x"', '"X":"h\\u00e9\\r\\nllo \\ud83d\\ude00 \\ud800!"') .. "\n")
      local line = w:recv_line()
      assert.is_nil(line:find("\r", 1, true), "a raw CR would split the line for the host")
      local r = json.decode(line)
      assert.equal("h\u{e9}\r\nllo \u{1F600} \u{FFFD}!", r.result.stdout)
    end)
  end)

  it("accepts a 50 MB request line and answers with a 16 MiB reply", function()
    with_worker(function(w)
      local lease = lease_for(w, 1)
      local stdin = ("0123456789"):rep(5 * 1024 * 1024)
      execute(w, 2, lease, "wc -c", { stdin = stdin })
      local r = w:reply_to(2, 60)
      assert.equal(tostring(#stdin), r.result.stdout:match("%d+"))
      execute(w, 3, lease, "head -c 16777216 /dev/zero | tr '\\0' a")
      r = w:reply_to(3, 60)
      assert.equal(16777216, #r.result.stdout)
    end)
  end)

  it("dispatches several providers in one worker by driverKey", function()
    with_worker(function(w)
      local r = call(w, 1, "environmentExecute", {
        driverKey = "echo",
        config = {},
        lease = { providerLeaseId = "x" },
        command = "hi",
      })
      assert.equal("hi", r.result.stdout)
      local lease = lease_for(w, 2)
      execute(w, 3, lease, "echo local")
      assert.equal("local\n", w:reply_to(3).result.stdout)
      r = call(w, 4, "environmentExecute", { driverKey = "nope", config = {} })
      assert.equal(-32602, r.error.code)
      assert.matches("unknown driverKey", r.error.message)
    end, { "worker", "--provider", "local", "--provider", "echo", "--providers", FIXTURES })
  end)

  it("turns a raising hook into -32002 without a traceback and keeps serving", function()
    with_worker(function(w)
      local r = call(w, 1, "environmentProbe", { driverKey = "echo", config = {} })
      assert.equal(-32002, r.error.code)
      assert.equal("probe exploded", r.error.message)
      assert.equal("ok", call(w, 2, "health", {}).result.status)
      assert.matches("stack traceback", w:stderr_text())
    end, { "worker", "--provider", "echo", "--providers", FIXTURES })
  end)

  it("keeps secrets out of error messages and logs", function()
    with_worker(function(w)
      local secret = "sk-live-" .. util.hex(util.random(12))
      local r = call(w, 1, "environmentAcquireLease", {
        driverKey = "echo",
        companyId = "c1",
        config = { token = secret },
      })
      assert.equal(-32002, r.error.code)
      assert.matches("no capacity for token %[REDACTED%]", r.error.message)
      local all = table.concat(w.raw) .. w:stderr_text()
      assert.is_nil(all:find(secret, 1, true))
    end, { "worker", "--provider", "echo", "--providers", FIXTURES })
  end)

  it("rejects params of the wrong type with a clear error", function()
    with_worker(function(w)
      w:send('{"jsonrpc":"2.0","id":1,"method":"environmentExecute","params":"x"}\n')
      local r = w:recv()
      assert.equal(-32602, r.error.code)
      local lease = lease_for(w, 2)
      r = call(w, 3, "environmentExecute", {
        driverKey = "local",
        config = {},
        lease = lease,
        command = "echo",
        args = { 1, 2 },
      })
      assert.equal(-32002, r.error.code)
      assert.matches("args%[1%] must be a string", r.error.message)
      r = call(w, 4, "environmentExecute", {
        driverKey = "local",
        config = { timeoutMs = "soon" },
        lease = lease,
        command = "true",
      })
      assert.equal(-32002, r.error.code)
      assert.matches("timeoutMs", r.error.message)
    end)
  end)

  it("replies null to shutdown and exits 0 within 500 ms", function()
    with_worker(function(w)
      w:initialize()
      local lease = lease_for(w, 1)
      execute(w, 2, lease, "sleep 30")
      task.sleep(0.1)
      local r = call(w, 3, "shutdown", {})
      local replied = task.now()
      assert.equal(json.null, r.result)
      local res = w:wait(5)
      assert.equal(0, res.exit_code)
      -- the protocol's own limit (the host sends SIGTERM 500 ms after the reply), counted from
      -- the reply, so the request's round trip is not charged to it
      assert.is_true(task.now() - replied < 0.5, ("took %.3f s"):format(task.now() - replied))
    end)
  end)

  it("exits 0 when stdin closes", function()
    with_worker(function(w)
      w:initialize()
      w:close_stdin()
      assert.equal(0, w:wait(5).exit_code)
    end)
  end)

  it("exits 0 promptly on SIGTERM, even with work in flight", function()
    with_worker(function(w)
      local lease = lease_for(w, 1)
      execute(w, 2, lease, "sleep 30")
      task.sleep(0.1)
      w:kill("SIGTERM")
      -- it does not wait for the work in flight (sleep 30): w:wait gives up long before that
      assert.equal(0, assert(w:wait(15)).exit_code)
    end)
  end)

  it("writes nothing but protocol lines to stdout", function()
    with_worker(function(w)
      w:initialize()
      local lease = lease_for(w, 1)
      execute(w, 2, lease, "echo out; echo err >&2", nil, "inv")
      w:reply_to(2)
      call(w, 3, "shutdown", {})
      w:wait(5)
      for line in table.concat(w.raw):gmatch("([^\n]*)\n") do
        local msg = json.decode(line)
        assert.is_table(msg, line)
        assert.equal("2.0", msg.jsonrpc)
      end
    end)
  end)

  it("refuses to start when a provider script has a syntax error", function()
    with_worker(
      function(w)
        local res = w:wait(10)
        assert.equal(3, res.exit_code)
        assert.matches("syntax%.lua:4:", w:stderr_text())
      end,
      { "worker", "--provider", "syntax", "--providers", helpers.root .. "/spec/fixtures/broken" }
    )
  end)

  it("exits when its parent dies", function()
    helpers.run(function()
      local fifo <close> = helpers.tempdir("spec-")
      local script = [[mkfifo "$1/in"; sleep 30 > "$1/in" & exec 3<"$1/in";]]
        .. [[ "$2" worker --provider local <&3 >/dev/null 2>&1 & echo $!; wait]]
      local proc = require("host.proc")
      local p <close> = assert(proc.spawn({
        argv = { "sh", "-c", script, "sh", fifo.path, helpers.binary() },
        timeout = 30,
      }))
      local pid = helpers.eventually(function()
        local kids = read_proc("/proc/" .. p.pid .. "/task/" .. p.pid .. "/children")
        for k in kids:gmatch("%d+") do
          if read_proc("/proc/" .. k .. "/cmdline"):find("worker", 1, true) then
            return tonumber(k)
          end
        end
      end, "the worker started")
      task.sleep(0.2) -- lets it start up: the spec is about a parent dying later
      -- only the shell: the worker shares its process group, so no group kill here
      require("host.core.sys").kill(p.pid, "SIGKILL")
      helpers.eventually(function()
        return not helpers.alive(pid)
      end, "the worker exited after its parent died")
      p:wait(5)
    end)
  end)
end)
