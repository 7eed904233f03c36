-- spec/providers/e2b/conformance_spec.lua: upstream's E2B provider tests (providers.md section 2,
-- assertions 1-19 and N1-N9) ported to the fake E2B, through the worker's own dispatch.
local api = require("providers.e2b.api")
local fs = require("host.fs")
local harness = require("spec.support.e2b_harness")
local helpers = require("spec.helpers")
local json = require("host.json")
local provider = require("providers.e2b")
local script = require("providers.e2b.script")
local task = require("host.task")

local KEY = harness.KEY
local session, config, acquire, destroy, exec, eventually = harness.session, harness.config,
  harness.acquire, harness.destroy, harness.exec, harness.eventually

-- A fresh fake per spec (h.fake, h.env; h.logs: the warnings); no sandbox may be left running.
local h = harness.new({ logs = "warn" })
local run = h.run
after_each(h.assert_none_running)

-- The command string of the last process the fake started (bash -l -c <script>).
local function last_script()
  local c = h.fake.commands[#h.fake.commands]
  return c and c.args[3], c
end

-- The staged stdin paths the fake saw (POST /files?path=...).
local function staged_paths()
  local out = {}
  for _, r in ipairs(h.fake.requests) do
    if r.path == "/files" and r.method == "POST" then
      out[#out + 1] = (r.query or ""):match("path=([^&]+)"):gsub("%%(%x%x)", function(hex)
        return string.char(tonumber(hex, 16))
      end)
    end
  end
  return out
end

-- start_group(s, lease, lp, id) -> task, pids: runs, as execution id in the lease's sandbox, a
-- command whose shell and child (a sleep 30 it waits for) write their pids to a file; returns
-- once both are written (so a spec can watch the whole process group). The task ends with
-- true, then execute's answer.
local function start_group(s, lease, lp, id)
  local file = h.fake.sandboxes[lease.providerLeaseId].home .. "/pids"
  local t = task.spawn(function()
    return true, exec(s, lp, {
      args = { "-c", "echo $$ > " .. file .. "; sleep 30 & echo $! >> " .. file .. "; wait" },
      executionId = id,
    })
  end)
  return t, eventually(function()
    local pids = {}
    for pid in (helpers.read_file(file) or ""):gmatch("%d+") do
      pids[#pids + 1] = tonumber(pid)
    end
    return #pids == 2 and pids
  end, "the command's pids")
end

-- Fails unless every pid stops running (soon: nothing else would stop a sleep 30).
local function assert_stopped(pids)
  for _, pid in ipairs(pids) do
    eventually(function()
      return not helpers.alive(pid)
    end, "the whole group stopped, not only the wrapper: pid " .. pid)
  end
end

describe("providers.e2b conformance", function()
  it("1. registers its hooks, answers health and declares reusable leases", function()
    run(function()
      for _, hook in ipairs({
        "probe",
        "acquire_lease",
        "resume_lease",
        "release_lease",
        "destroy_lease",
        "realize_workspace",
        "execute",
        "cancel_execution",
      }) do
        assert.is_function(provider.hooks[hook], hook)
      end
      assert.is_true(provider.capabilities.reusableLeases)
      local s = session()
      s.worker.initialized = false
      local line = json.encode({ jsonrpc = "2.0", id = 1, method = "health", params = {} })
      local reply
      s.worker.write = function(l)
        reply = json.decode(l)
      end
      s.worker:handle_line(line)
      assert.equal("ok", reply.result.status)
    end)
  end)

  describe("validateConfig", function()
    it("2. trims and truncates into exactly upstream's normalized config", function()
      run(function()
        local r = assert(session():call("environmentValidateConfig", {
          config = {
            template = "  base  ",
            apiKey = "  e2b_test_key  ",
            timeoutMs = "450000.9",
            reuseLease = true,
          },
        }))
        assert.same({
          ok = true,
          normalizedConfig = {
            template = "base",
            apiKey = "e2b_test_key",
            timeoutMs = 450000,
            reuseLease = true,
          },
        }, r)
      end)
    end)

    it("3. defaults a missing template to base and a missing apiKey to null", function()
      run(function()
        local r = assert(session():call("environmentValidateConfig", {
          config = { timeoutMs = "450000.9", reuseLease = true },
        }))
        assert.same({
          ok = true,
          normalizedConfig = {
            template = "base",
            apiKey = json.null,
            timeoutMs = 450000,
            reuseLease = true,
          },
        }, r)
        r = assert(session():call("environmentValidateConfig", { config = {} }))
        assert.same(
          { template = "base", apiKey = json.null, timeoutMs = 3600000, reuseLease = false },
          r.normalizedConfig
        )
      end)
    end)

    it("4. rejects a blank template and an out-of-range timeoutMs with upstream's texts", function()
      run(function()
        local r = assert(session():call("environmentValidateConfig", {
          config = { template = "   " },
        }))
        assert.same({ ok = false, errors = { "E2B sandbox environments require a template." } }, r)
        r = assert(session():call("environmentValidateConfig", {
          config = { timeoutMs = 86400001 },
        }))
        assert.same({ ok = false, errors = { "timeoutMs must be between 1 and 86400000." } }, r)
        r = assert(session():call("environmentValidateConfig", { config = { timeoutMs = 0.5 } }))
        assert.same({ "timeoutMs must be between 1 and 86400000." }, r.errors)
      end)
    end)
  end)

  describe("acquireLease", function()
    it("5. prefers the config key over E2B_API_KEY and prepares the workspace", function()
      run(function()
        h.env.E2B_API_KEY = "e2b_wrong_host_key"
        local s = session()
        local lease = acquire(s, config({ timeoutMs = 300000 }))
        local sb = h.fake.sandboxes[lease.providerLeaseId]
        assert.equal("running", sb.state)
        assert.equal("base", sb.template)
        assert.equal(300000, sb.timeout_ms)
        -- plus a unique create id: what an ambiguous create is reconciled by
        assert.matches("^%x+%-%x+%-%x+%-%x+%-%x+$", sb.metadata.paperclipCreateId)
        assert.same({ paperclipProvider = "e2b", paperclipCompanyId = "cli",
          paperclipEnvironmentId = "cli", paperclipRunId = "r",
          paperclipCreateId = sb.metadata.paperclipCreateId }, sb.metadata)
        assert.same({
          provider = "e2b",
          shellCommand = "bash",
          template = "base",
          timeoutMs = 300000,
          reuseLease = false,
          sandboxId = sb.id,
          sandboxDomain = h.fake.domain,
          remoteCwd = sb.home .. "/paperclip-workspace",
          resumedLease = false,
        }, lease.metadata)
        assert.equal("directory", fs.stat(sb.home .. "/paperclip-workspace").type)
        -- upstream's "pwd" then "mkdir -p '<pwd>/paperclip-workspace'", in one command
        assert.equal(1, #h.fake.commands)
        local cmd = last_script()
        assert.matches("pwd", cmd, 1, true)
        assert.matches('mkdir -p "$paperclip_cwd"', cmd, 1, true)
        assert.same({ "-l", "-c" }, { h.fake.commands[1].args[1], h.fake.commands[1].args[2] })
        -- create, then one Start: setTimeout after create is redundant (create sets it)
        assert.equal(1, h.fake:count("^/v2/sandboxes$", "POST"))
        assert.equal(0, h.fake:count("/timeout$"))
        destroy(s, lease.providerLeaseId)
      end)
    end)

    it("6. kills a half-made sandbox and reports the original error", function()
      run(function()
        h.fake:fail({ path = "^/process%.Process/Start$", status = 503,
          body = { code = "unavailable", message = "setup exploded" } })
        local r, err = session():call("environmentAcquireLease", { config = config(), runId = "r" })
        assert.is_nil(r)
        assert.matches("prepare the workspace", err.message)
        local id = next(h.fake.sandboxes)
        assert.equal("killed", h.fake.sandboxes[id].state)
        assert.equal(1, h.fake:count("^/sandboxes/[^/]+$", "DELETE"))
      end)
    end)

    it("7. falls back to E2B_API_KEY (read at call time) and names both when missing", function()
      run(function()
        local s = session()
        h.env.E2B_API_KEY = "  " .. KEY .. "  "
        local lease = acquire(s, { apiKey = json.null })
        assert.is_string(lease.providerLeaseId)
        destroy(s, lease.providerLeaseId, {})
        h.env.E2B_API_KEY = nil
        local r, err = s:call("environmentAcquireLease", { config = {}, runId = "r" })
        assert.is_nil(r)
        assert.equal("E2B sandbox environments require an API key in config or E2B_API_KEY.",
          err.message)
      end)
    end)
  end)

  describe("resumeLease", function()
    it("8. kills the reconnected sandbox when setTimeout fails", function()
      run(function()
        local s = session()
        local lease = acquire(s)
        h.fake:fail({ path = "^/sandboxes/[^/]+/timeout$", status = 500 })
        local r, err = s:call("environmentResumeLease", {
          config = config(),
          providerLeaseId = lease.providerLeaseId,
        })
        assert.is_nil(r)
        assert.matches("set the lifetime", err.message)
        assert.equal("killed", h.fake.sandboxes[lease.providerLeaseId].state)
      end)
    end)

    it("8b. reports a gone sandbox as expired and resumes a paused one", function()
      run(function()
        local s = session()
        local lease = acquire(s, config({ reuseLease = true }))
        local id = lease.providerLeaseId
        assert.equal(json.null, s:call("environmentReleaseLease", {
          config = config({ reuseLease = true }),
          providerLeaseId = id,
        }))
        assert.equal("paused", h.fake.sandboxes[id].state)
        local r = assert(s:call("environmentResumeLease", {
          config = config({ reuseLease = true, timeoutMs = 120000 }),
          providerLeaseId = id,
          leaseMetadata = lease.metadata,
        }))
        assert.equal(id, r.providerLeaseId)
        assert.is_true(r.metadata.resumedLease)
        assert.equal(lease.metadata.remoteCwd, r.metadata.remoteCwd)
        assert.equal("running", h.fake.sandboxes[id].state)
        assert.equal(120000, h.fake.sandboxes[id].timeout_ms)
        destroy(s, id)
        r = assert(s:call("environmentResumeLease", { config = config(), providerLeaseId = id }))
        assert.same({ providerLeaseId = json.null, metadata = { expired = true } }, r)
        r = assert(s:call("environmentResumeLease", {
          config = config(),
          providerLeaseId = "no-such-sandbox",
        }))
        assert.same({ providerLeaseId = json.null, metadata = { expired = true } }, r)
      end)
    end)
  end)

  describe("execute", function()
    it("9. stages stdin through the files API and removes it afterwards", function()
      run(function()
        local s = session()
        local lease, lp = acquire(s)
        local before = #h.fake.requests
        local r = assert(exec(s, lp, {
          command = "sh",
          args = { "-c", 'cat; printf "%s" "$FOO" >&2' },
          env = { FOO = "bar" },
          stdin = "stdin\n",
          cwd = lease.metadata.remoteCwd,
          timeoutMs = 1000,
          executionId = "e9",
        }))
        assert.same({ exitCode = 0, timedOut = false, stdout = "stdin\n", stderr = "bar" }, r)
        local paths = staged_paths()
        assert.equal(1, #paths)
        assert.matches("^/tmp/paperclip%-stdin%-%x+%-%x+%-%x+%-%x+%-%x+$", paths[1])
        local base, env_script = script.command("sh", { "-c", 'cat; printf "%s" "$FOO" >&2' },
          { FOO = "bar" }, script.env_file("e9"))
        local staged = base .. " < " .. script.quote(paths[1])
        -- upstream's `env FOO='bar' 'sh' ...`, with the env sourced from a private file instead
        assert.is_truthy(staged:find(" 'sh' '-c' 'cat; printf \"%s\" \"$FOO\" >&2' < '"
          .. paths[1] .. "'", 1, true))
        assert.is_nil(staged:find("bar", 1, true))
        local cmd, record = last_script()
        assert.equal(script.wrap("e9", staged, paths[1]), cmd)
        assert.equal("export FOO='bar'\n", env_script)
        assert.same({ [script.ENV_VAR] = env_script }, record.envs)
        assert.equal(lease.metadata.remoteCwd, record.cwd)
        assert.equal(1000, record.timeout_ms)
        assert.is_false(record.stdin) -- no stdin pipe, no sendStdin/closeStdin
        assert.equal(0, h.fake:count("SendInput") + h.fake:count("CloseStdin"))
        assert.is_nil(fs.stat(paths[1])) -- removed by the wrapper, without another request
        assert.equal(2, #h.fake.requests - before)
        destroy(s, lease.providerLeaseId)
      end)
    end)

    it("9b. delivers a large stdin in full", function()
      run(function()
        local s = session()
        local _, lp = acquire(s)
        local data = ("abc\n"):rep(1500000) -- 6 MB, as a big base64 upload would be
        local r = assert(exec(s, lp, { args = { "-c", "sha256sum | cut -c1-64" }, stdin = data }))
        assert.equal(require("host.util").sha256_hex(data) .. "\n", r.stdout)
        destroy(s, lp.providerLeaseId)
      end)
    end)

    it("10. runs without stdin in one request, the command last on its line", function()
      run(function()
        local s = session()
        local lease, lp = acquire(s)
        local before = #h.fake.requests
        local r = assert(exec(s, lp, {
          command = "printf",
          args = { "foreground\\n" },
          env = { FOO = "bar" },
          cwd = lease.metadata.remoteCwd,
          timeoutMs = 1000,
          executionId = "e10",
        }))
        assert.same({ exitCode = 0, timedOut = false, stdout = "foreground\n", stderr = "" }, r)
        local base = assert(script.command("printf", { "foreground\\n" }, { FOO = "bar" },
          script.env_file("e10")))
        local tail = " 'printf' 'foreground\\n'"
        assert.equal(tail, base:sub(-#tail))
        assert.is_nil(base:find("bar", 1, true))
        local cmd, record = last_script()
        assert.equal(script.wrap("e10", base), cmd)
        assert.equal(1000, record.timeout_ms)
        assert.equal(0, #staged_paths())
        assert.equal(1, #h.fake.requests - before)
        destroy(s, lease.providerLeaseId)
      end)
    end)

    it("11. refreshes the sandbox lifetime to config.timeoutMs (rate-limited)", function()
      run(function()
        local s = session()
        local cfg = config({ timeoutMs = 1800000 })
        local lease, lp = acquire(s, cfg)
        local id = lease.providerLeaseId
        h.fake.sandboxes[id].timeout_ms = 0 -- so the refresh shows
        assert(exec(s, lp, { args = { "-c", "true" } }, cfg))
        assert.equal(0, h.fake:count("/timeout$"), "just created: no refresh due yet")
        api.settings.refresh_fraction = 0 -- every execute is due
        assert(exec(s, lp, { args = { "-c", "true" } }, cfg))
        eventually(function()
          return h.fake:count("^/sandboxes/" .. id .. "/timeout$") == 1
        end, "the lifetime refresh")
        assert.equal(1800000, h.fake.sandboxes[id].timeout_ms)
        destroy(s, id)
      end)
    end)

    it("12. runs the command even when the refresh fails", function()
      run(function()
        local s = session()
        local lease, lp = acquire(s)
        api.settings.refresh_fraction = 0
        h.fake:fail({ path = "/timeout$", status = 500,
          body = { code = 500, message = "transient" } })
        local r = assert(exec(s, lp, { args = { "-c", "echo ran" } }))
        assert.equal(0, r.exitCode)
        assert.equal("ran\n", r.stdout)
        eventually(function()
          return #h.logs > 0
        end, "the refresh failure's warning")
        assert.matches("Could not refresh the lifetime", h.logs[1])
        destroy(s, lease.providerLeaseId)
      end)
    end)

    it("13. removes the staged stdin when its write fails and runs nothing", function()
      run(function()
        local s = session()
        local lease, lp = acquire(s)
        local starts = h.fake:count("/process%.Process/Start$")
        h.fake:fail({ path = "^/files$", status = 500,
          body = { code = 500, message = "write failed" } })
        local r, err = exec(s, lp, { args = { "-c", "cat" }, stdin = "input" })
        assert.is_nil(r)
        assert.matches("write failed", err.message)
        assert.equal(1, h.fake:count("/filesystem%.Filesystem/Remove$"))
        assert.equal(starts, h.fake:count("/process%.Process/Start$"))
        destroy(s, lease.providerLeaseId)
      end)
    end)

    it("14. keeps partial output on a timeout and appends the message", function()
      run(function()
        local s = session()
        local lease, lp = acquire(s)
        local took, r = helpers.timed(function()
          return assert(exec(s, lp, {
            args = { "-c", "echo partial stdout; echo partial stderr >&2; sleep 60" },
            timeoutMs = 500,
          }))
        end)
        assert.is_true(took < 30, "the timeout, not the command, ended it")
        assert.same({
          exitCode = json.null,
          timedOut = true,
          stdout = "partial stdout\n",
          stderr = "partial stderr\nCommand timed out after 500ms\n",
        }, r)
        destroy(s, lease.providerLeaseId)
      end)
    end)

    it("15. keeps partial output of a command fed by stdin on a timeout", function()
      run(function()
        local s = session()
        local lease, lp = acquire(s)
        local r = assert(exec(s, lp, {
          args = { "-c", "cat; printf 'stdin stderr' >&2; sleep 5" },
          stdin = "stdin stdout\n",
          timeoutMs = 500,
        }))
        assert.same({
          exitCode = json.null,
          timedOut = true,
          stdout = "stdin stdout\n",
          stderr = "stdin stderr\nCommand timed out after 500ms\n",
        }, r)
        -- the timed-out wrapper could not clean up: the reaper removes the staged file
        local path = staged_paths()[1]
        eventually(function()
          return fs.stat(path) == nil
        end, "the staged stdin removed")
        destroy(s, lease.providerLeaseId)
      end)
    end)

    it("returns a non-zero exit as a result and streams output live", function()
      run(function()
        -- the command goes on past its first line only once the spec has received that line
        local gate <close>, log, on_log = helpers.log_gate()
        local s = session({ on_log = on_log })
        local _, lp = acquire(s)
        local r = assert(exec(s, lp, {
          args = { "-c", "echo first; " .. gate.sh .. "; echo second; echo oops >&2; exit 42" },
        }))
        assert.same(
          { exitCode = 42, timedOut = false, stdout = "first\nsecond\n", stderr = "oops\n" },
          r
        )
        assert.equal("stdout", log[1][1])
        assert.equal("first\n", log[1][2])
        assert.equal(r.stdout, helpers.logged(log, "stdout"))
        r = assert(exec(s, lp, { command = "definitely-not-a-command-xyz" }))
        assert.equal(127, r.exitCode)
        destroy(s, lp.providerLeaseId)
      end)
    end)

    it("answers exit 1 without a lease id, as upstream", function()
      run(function()
        local r = assert(exec(session(), { providerLeaseId = json.null }, { args = {} }))
        assert.same({
          exitCode = 1,
          timedOut = false,
          stdout = "",
          stderr = "No provider lease ID available for execution.",
        }, r)
        assert.equal(0, #h.fake.requests)
      end)
    end)
  end)

  describe("release, destroy, realize", function()
    it("16. pauses when reusing and kills otherwise", function()
      run(function()
        local s = session()
        local kept = acquire(s, config({ reuseLease = true }))
        assert.equal(json.null, s:call("environmentReleaseLease", {
          config = config({ reuseLease = true }),
          providerLeaseId = kept.providerLeaseId,
        }))
        assert.equal("paused", h.fake.sandboxes[kept.providerLeaseId].state)
        assert.equal(0, h.fake:count("DELETE /sandboxes/" .. kept.providerLeaseId))
        local gone = acquire(s)
        assert.equal(json.null, s:call("environmentReleaseLease", {
          config = config(),
          providerLeaseId = gone.providerLeaseId,
        }))
        assert.equal("killed", h.fake.sandboxes[gone.providerLeaseId].state)
        -- a null id is a no-op; a second release of a gone sandbox is success
        assert.equal(json.null, s:call("environmentReleaseLease", {
          config = config(),
          providerLeaseId = json.null,
        }))
        assert.equal(json.null, s:call("environmentReleaseLease", {
          config = config(),
          providerLeaseId = gone.providerLeaseId,
        }))
        assert.same({}, h.logs)
        destroy(s, kept.providerLeaseId)
      end)
    end)

    it("17. falls back to kill when the pause fails, with upstream's warning", function()
      run(function()
        local s = session()
        local lease = acquire(s, config({ reuseLease = true }))
        h.fake:fail({ path = "/pause$", status = 500, times = 2, -- tried once more on a 5xx
          body = { code = 500, message = "no pause" } })
        assert.equal(json.null, s:call("environmentReleaseLease", {
          config = config({ reuseLease = true }),
          providerLeaseId = lease.providerLeaseId,
        }))
        assert.equal("killed", h.fake.sandboxes[lease.providerLeaseId].state)
        assert.equal(1, #h.logs)
        assert.matches("^Failed to pause E2B sandbox during lease release: .*no pause.*%. "
          .. "Attempting kill instead%.$", h.logs[1])
      end)
    end)

    it("18. realizes the workspace in upstream's cwd order and creates it", function()
      run(function()
        local s = session()
        local lease = acquire(s)
        local sb = h.fake.sandboxes[lease.providerLeaseId]
        local remote = sb.home .. "/paperclip-workspace"
        local r = assert(s:call("environmentRealizeWorkspace", {
          config = config(),
          lease = { providerLeaseId = lease.providerLeaseId, metadata = { remoteCwd = remote } },
          workspace = {},
        }))
        assert.same({ cwd = remote, metadata = { provider = "e2b", remoteCwd = remote } }, r)
        assert.equal(script.mkdir(remote), last_script())
        local other = sb.home .. "/other/dir"
        r = assert(s:call("environmentRealizeWorkspace", {
          config = config(),
          lease = { providerLeaseId = lease.providerLeaseId, metadata = { remoteCwd = "  " } },
          workspace = { remotePath = other, localPath = "/elsewhere" },
        }))
        assert.equal(other, r.cwd)
        assert.equal("directory", fs.stat(other).type)
        r = assert(s:call("environmentRealizeWorkspace", {
          config = config(),
          lease = { providerLeaseId = json.null },
          workspace = { localPath = "/local/path" },
        }))
        assert.equal("/local/path", r.cwd)
        r = assert(s:call("environmentRealizeWorkspace", {
          config = config(),
          lease = { providerLeaseId = json.null },
          workspace = {},
        }))
        assert.equal("/paperclip-workspace", r.cwd)
        destroy(s, lease.providerLeaseId)
      end)
    end)

    it("19. destroy tries a failed kill once more, then says it failed (upstream only warned)",
      function()
        run(function()
          local s = session()
          local lease = acquire(s)
          h.fake:fail({ method = "DELETE", status = 500, times = 1,
            body = { code = 500, message = "kill exploded" } })
          assert.equal(json.null, s:call("environmentDestroyLease", {
            config = config(),
            providerLeaseId = lease.providerLeaseId,
          }))
          assert.equal("killed", h.fake.sandboxes[lease.providerLeaseId].state)
          lease = acquire(s)
          h.fake:fail({ method = "DELETE", status = 500, times = 2,
            body = { code = 500, message = "kill exploded" } })
          local ok, err = s:call("environmentDestroyLease", {
            config = config(),
            providerLeaseId = lease.providerLeaseId,
          })
          assert.is_nil(ok)
          assert.matches("kill sandbox .*kill exploded", err.message)
          h.fake:fail({ method = "DELETE", status = 403, times = 1,
            body = { code = 403, message = "not yours" } })
          ok, err = s:call("environmentReleaseLease", {
            config = config(),
            providerLeaseId = lease.providerLeaseId,
          })
          assert.is_nil(ok)
          assert.matches("refused to kill sandbox .*not yours", err.message)
          -- a sandbox already gone counts as killed
          destroy(s, lease.providerLeaseId)
          assert.equal("killed", h.fake.sandboxes[lease.providerLeaseId].state)
          destroy(s, lease.providerLeaseId)
        end)
      end)

    it("cleans up a paused sandbox by id, without resuming it first", function()
      run(function()
        local s = session()
        local lease = acquire(s, config({ reuseLease = true }))
        local id = lease.providerLeaseId
        s:call("environmentReleaseLease", { config = config({ reuseLease = true }),
          providerLeaseId = id })
        assert.equal("paused", h.fake.sandboxes[id].state)
        -- a second release while paused: pause answers 409, nothing is resumed
        s:call("environmentReleaseLease", { config = config({ reuseLease = true }),
          providerLeaseId = id })
        assert.equal("paused", h.fake.sandboxes[id].state)
        destroy(s, id)
        assert.equal("killed", h.fake.sandboxes[id].state)
        assert.equal(0, h.fake:count("/connect$"))
        assert.same({}, h.logs)
      end)
    end)
  end)

  describe("v-newest command (N1-N9)", function()
    it("N1. sources /etc/profile and runs under env -i, without profiles or nvm", function()
      run(function()
        local base = assert(script.command("env", {}, { FOO = "bar" }, script.env_file("n1")))
        assert.equal(1, base:find("if [ -f /etc/profile ]; then . /etc/profile >/dev/null 2>&1 "
          .. "|| true; fi", 1, true))
        assert.matches('env -i PATH="$PATH"', base, 1, true)
        for _, banned in ipairs({ ".profile ", "bash_profile", "bashrc", "nvm", "NVM_DIR" }) do
          assert.is_nil(base:find(banned, 1, true), banned)
        end
        local s = session()
        local _, lp = acquire(s)
        local r = assert(exec(s, lp, { command = "env", env = { FOO = "bar" } }))
        local names = {}
        for name in r.stdout:gmatch("([%w_]+)=") do
          names[#names + 1] = name
        end
        table.sort(names)
        assert.same({ "FOO", "HOME", "PATH", "USERPROFILE" }, names)
        destroy(s, lp.providerLeaseId)
      end)
    end)

    it("N2. makes a private HOME unless env gives one", function()
      run(function()
        local base = assert(script.command("true", {}, {}, script.env_file("n2")))
        assert.matches('paperclip_provider_home="$(mktemp -d /tmp/paperclip-provider-home.XXXXXX)"',
          base, 1, true)
        assert.matches("trap 'rm -rf -- \"$paperclip_provider_home\"' EXIT", base, 1, true)
        assert.is_nil(base:find("exec env", 1, true))
        local env_script
        base, env_script = script.command("true", {}, { HOME = "/h" }, script.env_file("n2"))
        assert.is_nil(base:find("mktemp", 1, true))
        assert.truthy(base:find(" && exec env -i PATH=\"$PATH\" sh -c ", 1, true))
        assert.equal("'true'", base:sub(-6))
        assert.equal("export HOME='/h'\nexport USERPROFILE='/h'\n", env_script)
        local s = session()
        local lease, lp = acquire(s)
        local r = assert(exec(s, lp, { args = { "-c", 'echo "$HOME"; echo "$USERPROFILE"' } }))
        local home = r.stdout:match("^([^\n]+)\n")
        assert.matches("^/tmp/paperclip%-provider%-home%.", home)
        assert.equal(home .. "\n" .. home .. "\n", r.stdout)
        assert.is_nil(fs.stat(home), "the private HOME is removed")
        local mine = h.fake.sandboxes[lease.providerLeaseId].home
        r = assert(exec(s, lp, {
          args = { "-c", 'echo "$HOME"; echo "$USERPROFILE"' },
          env = { HOME = mine },
        }))
        assert.equal(mine .. "\n" .. mine .. "\n", r.stdout)
        destroy(s, lp.providerLeaseId)
      end)
    end)

    it("N1b. never shows an env value in any process's command line", function()
      run(function()
        local _, lp = acquire(session())
        require("spec.support.cmdline").check(function(on_log, params)
          params.executionId = "secret-1"
          return exec(session({ on_log = on_log }), lp, params)
        end)
        destroy(session(), lp.providerLeaseId)
      end)
    end)

    it("N3. rejects a bad env key with upstream's message", function()
      run(function()
        local s = session()
        local _, lp = acquire(s)
        local r, err = exec(s, lp, { args = { "-c", "true" }, env = { ["BAD-KEY"] = "x" } })
        assert.is_nil(r)
        assert.equal("Invalid sandbox environment variable key: BAD-KEY", err.message)
        destroy(s, lp.providerLeaseId)
      end)
    end)

    it("N4. wraps the command with the control dir and setsid", function()
      run(function()
        local s = session()
        local _, lp = acquire(s)
        assert(exec(s, lp, { args = { "-c", "true" }, executionId = "exec-42" }))
        local cmd = last_script()
        assert.matches("/tmp/.paperclip-execution-657865632d3432", cmd, 1, true)
        assert.matches("setsid sh -c", cmd, 1, true)
        assert.equal("/tmp/.paperclip-execution-657865632d3432", script.control_dir("exec-42"))
        assert.is_nil(fs.stat(script.control_dir("exec-42")), "the wrapper removes its dir")
        destroy(s, lp.providerLeaseId)
      end)
    end)

    it("N5. cancels a running command's process group, and a command not yet launched", function()
      run(function()
        local s = session()
        local lease, lp = acquire(s)
        local t, group = start_group(s, lease, lp, "exec-cancel")
        local r = assert(s:call("environmentCancelExecution", {
          config = config(),
          lease = lp,
          executionId = "exec-cancel",
          reason = "user",
        }))
        assert.same({ executionId = "exec-cancel", cancelled = true }, r)
        local ended, res = t:wait(15)
        assert(ended, "the cancel, not the command's own 30 s, ended it")
        assert.is_false(assert(res).timedOut)
        assert.is_true(res.exitCode ~= 0)
        assert_stopped(group)
        -- before launch: the cancel lands while stdin is being staged (the upload is held
        -- until the cancel has been answered)
        local cancel_answered = false
        h.fake:fail({ path = "^/files$", hold = function()
          return cancel_answered
        end })
        local starts = h.fake:count("/process%.Process/Start$")
        local done
        t = task.spawn(function()
          done = table.pack(exec(s, lp, {
            args = { "-c", "echo should-not-run" },
            stdin = "x",
            executionId = "exec-early",
          }))
        end)
        eventually(function()
          return h.fake:count("^/files$") == 1
        end, "the stdin upload")
        r = assert(s:call("environmentCancelExecution", {
          config = config(),
          lease = lp,
          executionId = "exec-early",
        }))
        assert.is_true(r.cancelled)
        cancel_answered = true
        t:wait(10)
        assert.same({ exitCode = 130, timedOut = false, stdout = "", stderr = "" }, done[1])
        assert.equal(starts, h.fake:count("/process%.Process/Start$"))
        destroy(s, lp.providerLeaseId)
      end)
    end)

    it("N6. cancels an untracked execution with the remote script", function()
      run(function()
        local s = session()
        local lease, lp = acquire(s)
        local t, group = start_group(s, lease, lp, "exec-other-worker")
        -- another worker (a restart): nothing tracked there, and no cached credentials
        api.forget_all()
        local other = session()
        local r = assert(other:call("environmentCancelExecution", {
          config = config({ timeoutMs = 5000 }),
          lease = lp,
          executionId = "exec-other-worker",
        }))
        assert.same({ executionId = "exec-other-worker", cancelled = true }, r)
        local record = h.fake.commands[#h.fake.commands]
        for _, c in ipairs(h.fake.commands) do
          if c.args[3] == script.cancel("exec-other-worker") then
            record = c
          end
        end
        assert.equal(script.cancel("exec-other-worker"), record.args[3])
        assert.equal("/", record.cwd)
        assert.equal(5000, record.timeout_ms)
        local ended, res = t:wait(15)
        assert(ended, "the cancel, not the command's own 30 s, ended it")
        assert.is_true(res.exitCode ~= 0)
        assert_stopped(group)
        -- min(timeoutMs, 10000)
        other:call("environmentCancelExecution", {
          config = config(),
          lease = lp,
          executionId = "exec-none",
        })
        assert.equal(10000, h.fake.commands[#h.fake.commands].timeout_ms)
        -- exit 7 from the cancel script is an error with upstream's text
        local function env_(flags, v)
          local p = json.encode(v)
          return string.pack(">BI4", flags, #p) .. p
        end
        h.fake:fail({
          path = "^/process%.Process/Start$",
          status = 200,
          headers = { ["content-type"] = "application/connect+json" },
          body = env_(0, { event = { start = { pid = 1 } } })
            .. env_(0, { event = { ["end"] = { exitCode = 7, exited = true,
              status = "exit status 7", error = "exit status 7" } } })
            .. env_(2, {}),
        })
        local _, err = other:call("environmentCancelExecution", {
          config = config(),
          lease = lp,
          executionId = "exec-seven",
        })
        assert.equal("E2B exact command cancellation failed with exit code 7.", err.message)
        -- no lease id: nothing to cancel
        r = assert(other:call("environmentCancelExecution", {
          config = config(),
          lease = { providerLeaseId = json.null },
          executionId = "exec-none",
        }))
        assert.same({ executionId = "exec-none", cancelled = false }, r)
        destroy(s, lp.providerLeaseId)
      end)
    end)

    it("N7. refuses a duplicate active executionId", function()
      run(function()
        local s = session()
        local _, lp = acquire(s)
        local gate <close> = helpers.gate() -- "dup" stays active until the spec is done
        local t = task.spawn(function()
          return exec(s, lp, { args = { "-c", gate.sh }, executionId = "dup" })
        end)
        eventually(function()
          return h.fake:count("/process%.Process/Start$") >= 2
        end, "both commands started")
        local r, err = exec(s, lp, { args = { "-c", "true" }, executionId = "dup" })
        assert.is_nil(r)
        assert.equal('Environment execution "dup" is already active.', err.message)
        gate:open()
        assert.equal(0, assert(t:wait(10)).exitCode)
        destroy(s, lp.providerLeaseId)
      end)
    end)

    it("N8. refuses a blank executionId (a missing one is allowed: the host omits it)", function()
      run(function()
        local s = session()
        local _, lp = acquire(s)
        local r, err = exec(s, lp, { args = { "-c", "true" }, executionId = "  " })
        assert.is_nil(r)
        assert.equal("Environment executionId must be a non-empty opaque string.", err.message)
        r, err = exec(s, lp, { args = { "-c", "true" }, executionId = ("x"):rep(513) })
        assert.is_nil(r)
        assert.equal("Environment executionId exceeds the 512-character limit.", err.message)
        r = assert(exec(s, lp, { args = { "-c", "echo ok" } }))
        assert.equal("ok\n", r.stdout)
        local _, cerr = s:call("environmentCancelExecution", { config = config(), lease = lp })
        assert.equal("Environment executionId must be a non-empty opaque string.", cerr.message)
        destroy(s, lp.providerLeaseId)
      end)
    end)

    it("N9. stages an empty stdin too", function()
      run(function()
        local s = session()
        local _, lp = acquire(s)
        local r = assert(exec(s, lp, { args = { "-c", "cat; echo done" }, stdin = "" }))
        assert.equal("done\n", r.stdout)
        assert.equal(1, #staged_paths())
        destroy(s, lp.providerLeaseId)
      end)
    end)
  end)

  describe("probe", function()
    it("creates a sandbox, prepares the workspace and always kills it", function()
      run(function()
        local r = assert(session():call("environmentProbe", { config = config() }))
        assert.is_true(r.ok)
        assert.equal("Connected to E2B sandbox template base.", r.summary)
        local sb = h.fake.sandboxes[r.metadata.sandboxId]
        assert.same({
          provider = "e2b",
          template = "base",
          timeoutMs = 3600000,
          reuseLease = false,
          sandboxId = sb.id,
          sandboxDomain = h.fake.domain,
          remoteCwd = sb.home .. "/paperclip-workspace",
        }, r.metadata)
        assert.equal("killed", sb.state)
      end)
    end)

    it("reports a failure as ok = false and still kills its sandbox; never raises", function()
      run(function()
        local r = assert(session():call("environmentProbe", { config = { apiKey = "e2b_bad" } }))
        assert.is_false(r.ok)
        assert.equal("E2B sandbox probe failed for template base.", r.summary)
        assert.matches("HTTP 401", r.metadata.error)
        assert.is_nil(r.metadata.error:find("e2b_bad", 1, true))
        h.fake:fail({ path = "^/process%.Process/Start$", status = 500 })
        r = assert(session():call("environmentProbe", { config = config() }))
        assert.is_false(r.ok)
        assert.equal("killed", h.fake.sandboxes[next(h.fake.sandboxes)].state)
        r = assert(session():call("environmentProbe", { config = {} }))
        assert.is_false(r.ok)
        assert.equal("E2B sandbox environments require an API key in config or E2B_API_KEY.",
          r.metadata.error)
      end)
    end)
  end)
end)
