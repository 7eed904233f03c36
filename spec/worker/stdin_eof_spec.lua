-- spec/worker/stdin_eof_spec.lua: stdin ends with requests in flight (issue 10, item 6). The
-- worker answers every request it was given: those that finish within the grace with their
-- result, the others with an error reply that says stdin closed; then it exits 0.
local helpers = require("spec.helpers")
local json = require("host.json")
local proc = require("host.proc")
local task = require("host.task")
local wp = require("spec.support.worker_process")

-- Runs fn(w, tmp) with a worker whose TMPDIR (where `local` makes its leases) is private to
-- the test; env is added to the worker's environment.
local function with_worker(fn, env)
  return wp.with(fn, nil, { env = env })
end

local params = wp.params

local function lease_for(w, id)
  w:request(id, "environmentAcquireLease", params({ runId = "r1" }))
  local r = assert(w:reply_to(id))
  assert(r.result, r.error and r.error.message)
  return { providerLeaseId = r.result.providerLeaseId, metadata = r.result.metadata }
end

local function execute(w, id, lease, script)
  w:request(id, "environmentExecute", params({ lease = lease, command = "sh",
    args = { "-c", script } }))
end

-- Every reply (messages with an id) until the worker exits: id -> message.
local function replies_until_exit(w, timeout)
  local out = {}
  for _, msg in ipairs(w.other or {}) do
    if msg.id ~= nil then
      out[msg.id] = msg
    end
  end
  local deadline = task.now() + timeout
  while task.now() < deadline do
    local msg, err = w:recv(math.max(0, deadline - task.now()))
    if not msg then
      assert(err == "exited", "no exit in time: " .. tostring(err))
      break
    end
    if msg.id ~= nil and msg.method == nil then
      out[msg.id] = msg
    end
  end
  return out
end

describe("worker at stdin EOF", function()
  it("answers every request in flight, a slow execute included, then exits 0", function()
    with_worker(function(w)
      w:initialize()
      local lease = lease_for(w, 1)
      local started = task.now()
      execute(w, 2, lease, "sleep 1; echo slow")
      execute(w, 3, lease, "echo fast")
      w:request(4, "health", {})
      w:request(5, "environmentValidateConfig", params({ config = { timeoutMs = 5 } }))
      w:request(6, "environmentProbe", params())
      w:close_stdin()
      local got = replies_until_exit(w, 15)
      local res = assert(w:wait(5))
      assert.equal(0, res.exit_code)
      assert.equal("slow\n", got[2] and got[2].result and got[2].result.stdout)
      assert.equal("fast\n", got[3] and got[3].result and got[3].result.stdout)
      assert.equal("ok", got[4].result.status)
      assert.is_true(got[5].result.ok)
      assert.is_true(got[6].result.ok)
      assert.is_true(task.now() - started >= 1)
    end)
  end)

  it("cancels what outlasts the grace with a reply that says stdin closed", function()
    with_worker(function(w, tmp)
      w:initialize()
      local lease = lease_for(w, 1)
      local pidfile = tmp.path .. "/pid"
      execute(w, 2, lease, "echo $$ > " .. pidfile .. "; exec sleep 30")
      execute(w, 3, lease, "sleep 0.2; echo quick")
      helpers.eventually(function()
        return helpers.read_file(pidfile)
      end, "the slow command started")
      local pid = tonumber((helpers.read_file(pidfile):match("%d+")))
      local closed = task.now()
      w:close_stdin()
      local got = replies_until_exit(w, 15)
      assert.equal(0, assert(w:wait(5)).exit_code)
      assert.is_true(task.now() - closed < 10, "the grace (1 s) was not kept")
      assert.equal("quick\n", got[3] and got[3].result and got[3].result.stdout)
      assert.is_table(got[2] and got[2].error, "no error reply for the execute")
      assert.equal(-32002, got[2].error.code)
      assert.equal("environmentExecute was canceled: stdin closed", got[2].error.message)
      helpers.eventually(function()
        return not helpers.alive(pid)
      end, "the canceled command was stopped")
    end, { PROVIDER_HOST_STDIN_GRACE = "1" })
  end)

  it("answers what `printf ... | provider-host worker` gives it", function()
    helpers.run(function()
      local tmp <close> = helpers.tempdir("ph-eof-spec-")
      -- a workspace as `local` makes them, so the lease id is known before the pipe starts
      local dir = tmp.path .. "/paperclip-local-0123456789abcdef"
      assert(require("host.fs").mkdirs(dir .. "/workspace"))
      helpers.write_file(dir .. "/.paperclip-local", dir .. "\n") -- the marker local writes
      local lines = {
        { id = 0, method = "initialize", params = {} },
        { id = 1, method = "environmentExecute", params = params({
          lease = { providerLeaseId = dir }, command = "sh",
          args = { "-c", "sleep 1; echo a" } }) },
        { id = 2, method = "environmentExecute", params = params({
          lease = { providerLeaseId = dir }, command = "echo", args = { "b" } }) },
        { id = 3, method = "health", params = {} },
      }
      local input = {}
      for i, l in ipairs(lines) do
        l.jsonrpc = "2.0"
        input[i] = assert(json.encode(l))
      end
      local r = assert(proc.run({
        argv = { "sh", "-c", 'printf "%s\\n" "$@" | "$0" worker --provider local',
          helpers.binary(), table.unpack(input) },
        env = { PATH = os.getenv("PATH"), TMPDIR = tmp.path, PROVIDER_HOST_LOG = "error" },
        timeout = 30,
      }))
      assert.equal(0, r.exit_code, r.stderr)
      local got = {}
      for line in r.stdout:gmatch("[^\n]+") do
        local msg = assert(json.decode(line))
        if msg.id ~= nil then
          got[msg.id] = msg
        end
      end
      assert.is_true(got[0].result.ok)
      assert.equal("a\n", got[1].result and got[1].result.stdout)
      assert.equal("b\n", got[2].result and got[2].result.stdout)
      assert.equal("ok", got[3].result.status)
    end)
  end)

  -- found by fuzz_ndjson (fuzz/crashes/worker-spins-after-eof.sh): the watcher of stdout, once
  -- canceled, looped on a sleep that failed at once, and the worker never exited
  it("delivers every queued reply to a host that reads late, then exits 0", function()
    helpers.run(function()
      local tmp <close> = helpers.tempdir("ph-eof-spec-")
      local lines = {}
      for id = 1, 3000 do
        lines[id] = ('{"jsonrpc":"2.0","id":%d,"method":"health"}'):format(id)
      end
      helpers.write_file(tmp.path .. "/requests", table.concat(lines, "\n") .. "\n")
      local res = assert(proc.run({ argv = { "sh", "-c",
        '"$0" worker --provider local < "$1/requests" | { sleep 1; cat > "$1/replies"; }',
        helpers.binary(), tmp.path },
        env = { PATH = os.getenv("PATH"), TMPDIR = tmp.path }, timeout = 30 }))
      assert.equal(0, res.exit_code)
      local _, n = (helpers.read_file(tmp.path .. "/replies") or ""):gsub("\n", "")
      assert.equal(3000, n)
    end)
  end)

  -- found by fuzz_ndjson (fuzz/crashes/worker-shutdown-unanswered.sh): stdin's end while a
  -- shutdown settled made serve() return before the shutdown and what it canceled replied
  it("answers a shutdown and what it cancels when stdin ends as it settles", function()
    helpers.run(function()
      local tmp <close> = helpers.tempdir("ph-eof-spec-")
      helpers.write_file(tmp.path .. "/requests", table.concat({
        '{"jsonrpc":"2.0","id":1,"method":"health"}',
        '{"jsonrpc":"2.0","id":2,"method":"environmentProbe","params":{"driverKey":"local",'
          .. '"config":{}}}',
        '{"jsonrpc":"2.0","id":3,"method":"shutdown"}',
      }, "\n") .. "\n")
      for _ = 1, 3 do -- a race: stdin is a file, its end comes on the loop's next turn
        local res = assert(proc.run({ argv = { "sh", "-c",
          'exec "$0" worker --provider local < "$1/requests"', helpers.binary(), tmp.path },
          env = { PATH = os.getenv("PATH"), TMPDIR = tmp.path }, timeout = 60 }))
        assert.equal(0, res.exit_code)
        local ids = {}
        for line in res.stdout:gmatch("[^\n]+") do
          local msg = json.decode(line)
          if msg.id then
            ids[#ids + 1] = msg.id
          end
        end
        table.sort(ids)
        assert.same({ 1, 2, 3 }, ids)
      end
    end)
  end)
end)
