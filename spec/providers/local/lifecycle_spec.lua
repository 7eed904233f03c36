-- spec/providers/local/lifecycle_spec.lua: the local provider through the worker's dispatch.
local client = require("host.client")
local cmdline = require("spec.support.cmdline")
local fs = require("host.fs")
local helpers = require("spec.helpers")
local json = require("host.json")
local providers = require("host.providers")
local task = require("host.task")

local provider = assert(providers.load("local"))

local function session(opts)
  return client.session({ provider }, opts)
end

local function acquire(s, config)
  local lease = assert(s:call("environmentAcquireLease", { config = config or {}, runId = "r" }))
  return lease, { providerLeaseId = lease.providerLeaseId, metadata = lease.metadata }
end

local function exec(s, lp, params, config)
  params.config = config or {}
  params.lease = lp
  params.command = params.command or "bash"
  return s:call("environmentExecute", params)
end

-- with_lease(fn): runs fn(s, lease, lp) in a task with a new session and a lease of its own
-- (lp: the lease as execute takes it), destroyed afterwards.
local function with_lease(fn)
  helpers.run(function()
    local s = session()
    local lease, lp = acquire(s)
    helpers.with_cleanup(fn, function()
      s:call("environmentDestroyLease", { config = {}, providerLeaseId = lease.providerLeaseId })
    end, s, lease, lp)
  end)
end

describe("providers.local", function()
  it("acquires a private 0700 workspace and declares remoteCwd and shellCommand", function()
    helpers.run(function()
      local s = session()
      local lease = acquire(s)
      local st = assert(fs.stat(lease.providerLeaseId))
      assert.equal("directory", st.type)
      assert.equal(tonumber("700", 8), st.mode)
      assert.equal(lease.providerLeaseId .. "/workspace", lease.metadata.remoteCwd)
      assert.equal("bash", lease.metadata.shellCommand)
      assert.equal("local", lease.metadata.provider)
      assert.is_false(lease.metadata.resumedLease)
      assert(
        s:call("environmentDestroyLease", { config = {}, providerLeaseId = lease.providerLeaseId })
      )
    end)
  end)

  it("validates its config and returns the normalized config", function()
    helpers.run(function()
      local s = session()
      local r = assert(s:call("environmentValidateConfig", { config = { timeoutMs = "1500.7" } }))
      assert.is_true(r.ok)
      assert.equal(1500, r.normalizedConfig.timeoutMs)
      assert.equal(false, r.normalizedConfig.reuseLease)
      r = assert(s:call("environmentValidateConfig", { config = { timeoutMs = 0, shell = "zsh" } }))
      assert.is_false(r.ok)
      -- the generic schema's "name: text" form, like every other local error
      assert.equal("timeoutMs: must be between 1 and 86400000", r.errors[1])
      assert.equal('shell: must be one of "bash", "sh"', r.errors[2])
      r = assert(s:call("environmentValidateConfig", { config = { timeoutMs = "soon",
        root = "tmp", reuseLease = "yes" } }))
      assert.same({ "timeoutMs: expected an integer, got a non-numeric string",
        "reuseLease: expected a boolean, got string", "root: must be an absolute path" },
        r.errors)
      r = assert(s:call("environmentValidateConfig", { config = "x" }))
      assert.same({ ok = false, errors = { "config must be an object" } }, r)
    end)
  end)

  it("probes by running its shell in a throwaway workspace", function()
    helpers.run(function()
      local r = assert(session():call("environmentProbe", { config = {} }))
      assert.is_true(r.ok)
      assert.matches("Local sandbox ready", r.summary)
    end)
  end)

  it("reports a probe failure as ok = false with the error", function()
    helpers.run(function()
      local r = assert(session():call("environmentProbe", { config = { root = "/nonexistent/x" } }))
      assert.is_false(r.ok)
      assert.matches("cannot create a workspace", r.metadata.error)
    end)
  end)

  it("resumes a workspace that exists and reports a gone one as expired", function()
    helpers.run(function()
      local s = session()
      local lease = acquire(s)
      local r = assert(s:call("environmentResumeLease", {
        config = {},
        providerLeaseId = lease.providerLeaseId,
        leaseMetadata = lease.metadata,
      }))
      assert.equal(lease.providerLeaseId, r.providerLeaseId)
      assert.is_true(r.metadata.resumedLease)
      assert(
        s:call("environmentDestroyLease", { config = {}, providerLeaseId = lease.providerLeaseId })
      )
      r = assert(
        s:call("environmentResumeLease", { config = {}, providerLeaseId = lease.providerLeaseId })
      )
      assert.equal(json.null, r.providerLeaseId)
      assert.same({ expired = true }, r.metadata)
    end)
  end)

  it("deletes the workspace on release unless the lease is reused", function()
    helpers.run(function()
      local s = session()
      local kept = acquire(s, { reuseLease = true })
      assert.equal(
        json.null,
        s:call("environmentReleaseLease", {
          config = { reuseLease = true },
          providerLeaseId = kept.providerLeaseId,
        })
      )
      assert.is_table(fs.stat(kept.providerLeaseId))
      local gone = acquire(s)
      assert.equal(
        json.null,
        s:call("environmentReleaseLease", {
          config = {},
          providerLeaseId = gone.providerLeaseId,
        })
      )
      assert.is_nil(fs.stat(gone.providerLeaseId))
      -- a second release, a null id and a missing workspace are all success
      assert.equal(
        json.null,
        s:call("environmentReleaseLease", { config = {}, providerLeaseId = gone.providerLeaseId })
      )
      assert.equal(
        json.null,
        s:call("environmentReleaseLease", { config = {}, providerLeaseId = json.null })
      )
      assert(
        s:call("environmentDestroyLease", { config = {}, providerLeaseId = kept.providerLeaseId })
      )
      assert.is_nil(fs.stat(kept.providerLeaseId))
    end)
  end)

  it("never deletes a path that is not one of its workspaces", function()
    helpers.run(function()
      local s = session()
      local dir <close> = helpers.tempdir("spec-victim-")
      local victim = dir.path
      -- an existing path that is not one of its workspaces is refused with an error saying why
      -- (issue 11, item 5: every refusal is a clear error); containment_spec.lua has the rest
      for _, id in ipairs({ victim, "/", "/tmp", victim .. "/../" .. victim:match("[^/]+$") }) do
        local r, err = s:call("environmentDestroyLease", { config = {}, providerLeaseId = id })
        assert.is_nil(r)
        assert.matches("^local: will not delete ", err.message)
      end
      assert.is_table(fs.stat(victim))
    end)
  end)

  it("realizes the workspace in upstream's cwd order and creates it", function()
    with_lease(function(s, lease, lp)
      local r =
        assert(s:call("environmentRealizeWorkspace", { config = {}, lease = lp, workspace = {} }))
      assert.equal(lease.metadata.remoteCwd, r.cwd)
      local other = lease.providerLeaseId .. "/workspace/sub/dir"
      r = assert(s:call("environmentRealizeWorkspace", {
        config = {},
        lease = { providerLeaseId = lp.providerLeaseId, metadata = { remoteCwd = "  " } },
        workspace = { remotePath = other, localPath = "/elsewhere" },
      }))
      assert.equal(other, r.cwd)
      assert.equal("directory", fs.stat(other).type)
      assert.same({ provider = "local", remoteCwd = other }, r.metadata)
    end)
  end)

  it("runs with exactly the caller's env over a minimal base", function()
    with_lease(function(s, lease, lp)
      local r = assert(exec(s, lp, { args = { "-c", "env | sort" }, env = { FOO = "bar baz" } }))
      local names = {}
      for name in r.stdout:gmatch("([%w_]+)=") do
        names[name] = true
      end
      assert.is_true(names.FOO and names.PATH and names.HOME and true)
      assert.matches("FOO=bar baz", r.stdout)
      assert.is_nil(names.PROVIDER_HOST_LOG or names.USER or names.SSH_AUTH_SOCK)
      assert.matches(
        "^" .. lease.providerLeaseId:gsub("%p", "%%%0") .. "/home$",
        r.stdout:match("HOME=([^\n]+)")
      )
      r = assert(exec(s, lp, { args = { "-c", "pwd" } }))
      assert.equal(lease.metadata.remoteCwd .. "\n", r.stdout)
    end)
  end)

  it("rejects an invalid env key with upstream's message", function()
    with_lease(function(s, _, lp)
      local r, err = exec(s, lp, { args = { "-c", "true" }, env = { ["BAD-KEY"] = "x" } })
      assert.is_nil(r)
      assert.equal("Invalid sandbox environment variable key: BAD-KEY", err.message)
    end)
  end)

  it("says a cwd that does not exist does not exist, not \"command not found\"", function()
    with_lease(function(s, lease, lp)
      local missing = lease.providerLeaseId .. "/no/such/dir"
      local r, err = exec(s, lp, { args = { "-c", "true" }, cwd = missing })
      assert.is_nil(r)
      assert.equal("local: cwd " .. missing .. " does not exist", err.message)
      -- the lease's remoteCwd is the default cwd: the same check applies
      r, err = exec(s, { providerLeaseId = lp.providerLeaseId,
        metadata = { remoteCwd = missing } }, { args = { "-c", "true" } })
      assert.is_nil(r)
      assert.equal("local: cwd " .. missing .. " does not exist", err.message)
      local file = lease.metadata.remoteCwd .. "/f"
      assert(fs.write(file, "x"))
      r, err = exec(s, lp, { args = { "-c", "true" }, cwd = file })
      assert.is_nil(r)
      assert.equal("local: cwd " .. file .. " is not a directory", err.message)
      -- a missing command in a cwd that exists is still the shell's 127
      r = assert(exec(s, lp, { command = "definitely-not-a-command",
        cwd = lease.metadata.remoteCwd }))
      assert.equal(127, r.exitCode)
    end)
  end)

  it("refuses a timeoutMs of the wrong type, naming it, and runs none", function()
    with_lease(function(s, lease, lp)
      local mark = lease.metadata.remoteCwd .. "/ran"
      local r, err = exec(s, lp, { args = { "-c", "touch " .. mark }, timeoutMs = "5000" })
      assert.is_nil(r)
      assert.equal("environmentExecute: timeoutMs must be a number of milliseconds, got a string",
        err.message)
      assert.is_nil(fs.stat(mark))
      r, err = exec(s, lp, { args = { "-c", "true" } }, { timeoutMs = "soon" })
      assert.is_nil(r)
      assert.equal("invalid local config: timeoutMs: expected an integer, got a non-numeric string",
        err.message)
    end)
  end)

  it("delivers stdin in full, and an empty stdin as immediate end of input", function()
    with_lease(function(s, _, lp)
      local data = ("abc\n"):rep(300000)
      local r = assert(exec(s, lp, { args = { "-c", "sha256sum | cut -c1-64" }, stdin = data }))
      assert.equal(require("host.util").sha256_hex(data) .. "\n", r.stdout)
      r = assert(exec(s, lp, { args = { "-c", "cat; echo done" }, stdin = "" }))
      assert.equal("done\n", r.stdout)
      r = assert(exec(s, lp, { args = { "-c", "cat; echo done" } }))
      assert.equal("done\n", r.stdout)
    end)
  end)

  it("returns a non-zero exit as a result", function()
    with_lease(function(s, _, lp)
      local r = assert(exec(s, lp, { args = { "-c", "echo oops >&2; exit 42" } }))
      assert.equal(42, r.exitCode)
      assert.is_false(r.timedOut)
      assert.equal("oops\n", r.stderr)
      r = assert(exec(s, lp, { command = "definitely-not-a-command" }))
      assert.equal(127, r.exitCode)
    end)
  end)

  it("times out with exitCode null, timedOut true and the partial output", function()
    with_lease(function(s, _, lp)
      local took, r = helpers.timed(function()
        return assert(exec(s, lp, {
          args = { "-c", "echo before; sleep 30 & wait; echo after" },
          timeoutMs = 300,
        }))
      end)
      assert.is_true(took < 15, "the timeout, not the command's own 30 s, ended it")
      assert.equal(json.null, r.exitCode)
      assert.is_true(r.timedOut)
      assert.equal("before\n", r.stdout)
      assert.matches("timed out after 300ms", r.stderr)
    end)
  end)

  it("streams live output while the command runs", function()
    helpers.run(function()
      -- the command goes on past its first line only once the spec has received that line
      local gate <close>, log, on_log = helpers.log_gate()
      local s = session({ on_log = on_log })
      local lease, lp = acquire(s)
      local script = "echo first; " .. gate.sh .. "; echo second"
      local r = assert(exec(s, lp, { args = { "-c", script } }))
      assert.equal("first\nsecond\n", r.stdout)
      assert.equal("", r.stderr)
      assert.equal("first\n", log[1][2])
      s:call("environmentDestroyLease", { config = {}, providerLeaseId = lease.providerLeaseId })
    end)
  end)

  it("answers an execute without a lease id with upstream's exit-1 result", function()
    helpers.run(function()
      local r = assert(session():call("environmentExecute", {
        config = {},
        lease = { providerLeaseId = json.null },
        command = "true",
      }))
      assert.same({
        exitCode = 1,
        timedOut = false,
        stdout = "",
        stderr = "No provider lease ID available for execution.",
      }, r)
    end)
  end)

  it("cancels exactly one execution by its id, leaving the others running", function()
    with_lease(function(s, _, lp)
      local results = {}
      local function run(id, script)
        return task.spawn(function()
          results[id] = assert(exec(s, lp, { executionId = id, args = { "-c", script } }))
          return true
        end)
      end
      -- both run until the spec opens the gate, after the cancel
      local gate <close> = helpers.gate()
      local dir <close> = helpers.tempdir()
      local a = run("exec-a", "touch " .. dir.path .. "/a; " .. gate.sh .. "; echo a")
      local b = run("exec-b", "touch " .. dir.path .. "/b; " .. gate.sh .. "; echo b")
      helpers.eventually(function()
        return fs.stat(dir.path .. "/a") and fs.stat(dir.path .. "/b")
      end, "both commands started")
      local c = assert(s:call("environmentCancelExecution", {
        config = {},
        lease = lp,
        executionId = "exec-a",
        reason = "user",
      }))
      assert.same({ executionId = "exec-a", cancelled = true }, c)
      assert(a:wait(10))
      assert.is_false(b:done()) -- the other one runs on
      gate:open()
      assert(b:wait(10))
      assert.equal("SIGTERM", results["exec-a"].signal)
      assert.equal(json.null, results["exec-a"].exitCode)
      assert.equal("b\n", results["exec-b"].stdout)
      c = assert(
        s:call("environmentCancelExecution", { config = {}, lease = lp, executionId = "exec-a" })
      )
      assert.is_false(c.cancelled)
    end)
  end)

  it("refuses a duplicate active executionId and a blank one", function()
    with_lease(function(s, _, lp)
      local gate <close> = helpers.gate() -- "dup" stays active until the spec opens it
      local started = gate.dir.path .. "/started"
      local script = "touch " .. started .. "; " .. gate.sh
      local first = task.spawn(function()
        return exec(s, lp, { executionId = "dup", args = { "-c", script } })
      end)
      helpers.eventually(function()
        return fs.stat(started)
      end, "the first command started")
      local r, err = exec(s, lp, { executionId = "dup", args = { "-c", "true" } })
      assert.is_nil(r)
      assert.equal('Environment execution "dup" is already active.', err.message)
      gate:open()
      assert.equal(0, assert(first:wait(10)).exitCode)
      r, err = exec(s, lp, { executionId = "  ", args = { "-c", "true" } })
      assert.is_nil(r)
      assert.equal("Environment executionId must be a non-empty opaque string.", err.message)
    end)
  end)

  it("never shows an env value in any process's command line", function()
    helpers.run(function()
      local _, lp = acquire(session())
      cmdline.check(function(on_log, params)
        return exec(session({ on_log = on_log }), lp, params)
      end)
      session():call("environmentDestroyLease",
        { config = {}, providerLeaseId = lp.providerLeaseId })
    end)
  end)

  it("cuts a command off the network when isolateNetwork is on", function()
    helpers.run(function()
      local probe = require("host.proc").run({
        argv = { "unshare", "--net", "--map-root-user", "--", "true" },
        timeout = 10,
      })
      if not probe or probe.exit_code ~= 0 then
        pending("this machine does not allow unshare --net --map-root-user")
        return
      end
      local server = assert(require("host.http").serve({
        handler = function()
          return 200, {}, "ok"
        end,
      }))
      local script = ("exec 3<>/dev/tcp/127.0.0.1/%d && echo connected || echo unreachable")
        :format(server.port)
      local s = session()
      local lease, lp = acquire(s)
      local open = assert(exec(s, lp, { args = { "-c", script } }))
      local closed = assert(exec(s, lp, { args = { "-c", script } }, { isolateNetwork = true }))
      assert.equal("connected\n", open.stdout)
      assert.equal("unreachable\n", closed.stdout)
      local r = assert(s:call("environmentProbe", { config = { isolateNetwork = true } }))
      assert.is_true(r.ok)
      server:close()
      s:call("environmentDestroyLease", { config = {}, providerLeaseId = lease.providerLeaseId })
    end)
  end)
end)
