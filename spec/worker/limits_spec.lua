-- spec/worker/limits_spec.lua: bounded resources with back-pressure instead of failure (issue
-- 11, item 2). Under a low open-files limit, executes past the cap on children running at
-- once wait their turn and all succeed; a host that stops reading stdout stops the worker
-- reading stdin; the input buffer shrinks back after a huge line.
local helpers = require("spec.helpers")
local task = require("host.task")
local wp = require("spec.support.worker_process")

local params = wp.params

-- A worker under a hard open-files limit of nofile (it raises its soft limit to the hard one).
local function with_worker(nofile, env, fn)
  return wp.with(fn, { "-c", 'ulimit -n "$0" && exec "$@"', tostring(nofile), helpers.binary(),
    "worker", "--provider", "local" }, { binary = "sh",
    env = helpers.merged({ PROVIDER_HOST_LOG = "error" }, env) })
end

local function lease_of(w)
  w:request(1, "environmentAcquireLease", params({ runId = "r1" }))
  local r = assert(w:reply_to(1, 30))
  return { providerLeaseId = r.result.providerLeaseId, metadata = r.result.metadata }
end

-- VmRSS of a process, in bytes.
local function rss(pid)
  local status = require("host.fs").read("/proc/" .. pid .. "/status") or ""
  return tonumber(status:match("VmRSS:%s*(%d+)")) * 1024
end

-- Under AddressSanitizer freed memory stays in its quarantine: RSS says nothing there.
local function sanitized(pid)
  return (require("host.fs").read("/proc/" .. pid .. "/maps") or ""):find("libasan") ~= nil
end

describe("worker resources", function()
  it("runs 300 concurrent executes under a 128-descriptor limit, queueing past its cap",
    function()
      with_worker(128, nil, function(w)
        assert(w:initialize())
        local lease = lease_of(w)
        for id = 2, 301 do
          w:request(id, "environmentExecute", params({ lease = lease, command = "sh",
            args = { "-c", "sleep 0.05; echo ok $0", tostring(id) }, timeoutMs = 120000 }))
        end
        for id = 2, 301 do
          local r = assert(w:reply_to(id, 120), "no reply to execute " .. id)
          assert.is_table(r.result, r.error and r.error.message)
          assert.equal(0, r.result.exitCode, r.result.stderr)
          assert.equal("ok " .. id .. "\n", r.result.stdout)
        end
      end)
    end)

  it("stops reading requests while its host does not read its replies", function()
    local deadline = helpers.deadline
    helpers.deadline = 180 -- 300 commands and 30 MB through a pipe, on a loaded machine
    finally(function()
      helpers.deadline = deadline
    end)
    helpers.run(function()
      local tmp <close> = helpers.tempdir("ph-limits-spec-")
      local started = tmp.path .. "/started"
      -- the host's reader passes two lines on (the replies to initialize and the acquire),
      -- then reads nothing until told to: the worker's replies pile up in its queue
      local w = wp.start({ "-c", '"$@" | { for i in 1 2; do IFS= read -r l; printf "%s\\n" '
        .. '"$l"; done; while [ ! -e "$0.go" ]; do sleep 0.1; done; cat; }', started,
        helpers.binary(), "worker", "--provider", "local" }, { binary = "sh",
        env = { PATH = os.getenv("PATH"), TMPDIR = tmp.path, PROVIDER_HOST_LOG = "error" } })
      helpers.with_cleanup(function()
        assert(w:initialize())
        local lease = lease_of(w)
        local n = 300 -- replies of 100 kB each: 30 MB, past the 16 MiB bound
        local function count()
          local _, lines = (helpers.read_file(started) or ""):gsub("\n", "")
          return lines
        end
        -- in waves of 50, each sent once the one before ran: a worker that stops reading
        -- stops the count, one that reads on runs them all
        for wave = 0, n // 50 - 1 do
          for id = 2 + wave * 50, 1 + (wave + 1) * 50 do
            w:request(id, "environmentExecute", params({ lease = lease, command = "sh",
              args = { "-c", 'echo >> "$0"; head -c 100000 /dev/zero | tr "\\0" y', started } }))
          end
          if not pcall(helpers.eventually, function()
            return count() >= (wave + 1) * 50
          end, "the wave ran", 5) then
            break -- no longer read
          end
        end
        task.sleep(2) -- time for every request to be read, were it read
        assert.is_true(count() < n, ("all %d commands ran while the host read nothing"):format(n))
        helpers.write_file(started .. ".go", "")
        for id = 2, n + 1 do
          assert(w:reply_to(id, 120), "no reply to execute " .. id)
        end
        assert.equal(n, count())
      end, function()
        w:stop()
      end)
    end)
  end)

  it("gives back the memory of a huge request line", function()
    with_worker(4096, nil, function(w)
      assert(w:initialize())
      if sanitized(w.pid) then
        return -- nothing to measure under AddressSanitizer
      end
      local base = rss(w.pid)
      -- an unknown method with a 200 MB parameter: read, decoded, answered
      w:send('{"jsonrpc":"2.0","id":7,"method":"noSuchMethod","params":{"x":"'
        .. string.rep("a", 200 * 1024 * 1024) .. '"}}\n')
      assert(w:reply_to(7, 120))
      w:request(8, "health", {})
      assert(w:reply_to(8, 30))
      local after = rss(w.pid)
      assert.is_true(after < base + 64 * 1024 * 1024,
        ("%d MB still resident after the line (%d MB before it)"):format(after >> 20, base >> 20))
    end)
  end)

  it("serves local without loading the network module (libcurl, libssh2)", function()
    with_worker(4096, nil, function(w)
      assert(w:initialize())
      local lease = lease_of(w)
      w:request(2, "environmentExecute", params({ lease = lease, command = "true" }))
      assert.equal(0, assert(w:reply_to(2, 30)).result.exitCode)
      local maps = require("host.fs").read("/proc/" .. w.pid .. "/maps") or ""
      assert.is_nil(maps:find("provider-host-net", 1, true), "the network module is loaded")
      assert.is_nil(maps:find("libcurl", 1, true), "libcurl is loaded")
    end)
  end)

  it("answers timedOut for an execute whose deadline passes while it waits for a slot",
    function()
      with_worker(4096, { PROVIDER_HOST_MAX_CHILDREN = "1" }, function(w)
        assert(w:initialize())
        local lease = lease_of(w)
        w:request(2, "environmentExecute", params({ lease = lease, command = "sleep",
          args = { "3" }, timeoutMs = 60000 }))
        task.sleep(0.3)
        w:request(3, "environmentExecute", params({ lease = lease, command = "sh",
          args = { "-c", "echo ran" }, timeoutMs = 500 }))
        local r = assert(w:reply_to(3, 30)).result
        assert.is_true(r.timedOut)
        assert.equal(require("host.json").null, r.exitCode)
        assert.equal("", r.stdout)
        assert.matches("did not start", r.stderr)
        assert.equal(0, assert(w:reply_to(2, 30)).result.exitCode)
      end)
    end)
end)
