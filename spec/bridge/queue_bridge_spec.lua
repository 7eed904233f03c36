-- spec/bridge/queue_bridge_spec.lua: upstream's own queue bridge (queue_v1, the REAL
-- @paperclipai/adapter-utils from npm) keeps working over our worker. Paperclip's server drives
-- that bridge through environmentExecute: it uploads and launches upstream's Node gateway in the
-- sandbox, then polls request files (list, base64 read, response write on stdin under a pid
-- lock, mv, rm) every 100 ms. spec/queue_bridge/drive_bridge.mjs plays the server: it runs
-- `provider-host worker` with Paperclip's scrubbed env, and an agent inside the sandbox calls
-- a fake Paperclip API (spec/support/fake_paperclip.lua) through upstream's gateway and
-- host-side worker loop.
-- Runs on the local provider and on the ssh provider (a real sshd on loopback). Everything
-- started (worker, gateway, lease workspaces, bridge asset temp dirs, sshd) must be gone after.
-- Needs Node and `npm ci --prefix spec/queue_bridge`; without them each case is pending.
local cmdline = require("spec.support.cmdline")
local fake_paperclip = require("spec.support.fake_paperclip")
local fs = require("host.fs")
local helpers = require("spec.helpers")
local json = require("host.json")
local queue_bridge = require("spec.support.queue_bridge")
local sshd = require("spec.support.sshd")

local CALLS = tonumber(os.getenv("QUEUE_BRIDGE_CALLS")) or 5 -- calls the agent times
local WARMUP = 1 -- untimed calls before them (the agent's fetch() start-up)
local JWT = "real-run-jwt-for-the-queue-bridge-spec"

local unavailable = queue_bridge.unavailable
local processes_mentioning = cmdline.holding

-- Runs the driver for `provider` with `config` against a fake Paperclip API. tmp: the spec's
-- private dir (the driver's TMPDIR, where upstream makes its bridge asset temp dirs).
local function drive(provider, config, tmp)
  local fake <close> = fake_paperclip.start({ api_key = JWT })
  local report, r = queue_bridge.drive("drive_bridge.mjs", { "--binary", helpers.binary(),
    "--provider", provider, "--config", json.encode(config), "--api-url", fake.url,
    "--api-key", JWT, "--calls", tostring(CALLS), "--warmup", tostring(WARMUP) }, tmp,
    { timeout = 280, max_output = 16 * 1024 * 1024 })
  local failed = {}
  for _, c in ipairs(report.checks or {}) do
    if not c.ok then
      failed[#failed + 1] = c.name .. ": " .. json.encode(c.detail or json.null)
    end
  end
  assert(report.ok == true and r.exit_code == 0, ("upstream's queue bridge failed over the %s "
    .. "provider (exit %s):\n%s\n%s\nfailed commands: %s\nslow commands: %s\nstderr:\n%s\n"
    .. "worker stderr:\n%s"):format(provider, tostring(r.exit_code), tostring(report.error or ""),
    table.concat(failed, "\n"), json.encode(report.failedExecs or {}),
    json.encode(report.slowExecs or {}), r.stderr, tostring(report.workerStderr)))
  return report, fake.requests
end

-- The checks every provider shares: what the agent and the API saw, what the bridge ran.
local function check_run(report, requests)
  assert.equal("2026.824.1", report.adapterUtilsVersion)
  -- the worker ran with Paperclip's scrubbed env: PATH and PAPERCLIP_* only
  for _, k in ipairs(report.workerEnvKeys) do
    assert.is_truthy(k == "PATH" or k:find("^PAPERCLIP_"), k)
  end
  assert.equal(#report.checks, report.passed)
  assert.is_true(report.passed >= 18 + CALLS, report.passed)
  assert.equal(CALLS, #report.latenciesMs)
  -- the API saw each agent call once, with the real credential (else 401) and the run id;
  -- the denied route and the wrong token never reached it
  local seen = {}
  for _, req in ipairs(requests) do
    assert.equal("Bearer " .. JWT, req.headers.authorization)
    assert.equal(report.runId, req.headers["x-paperclip-run-id"])
    local what = req.method .. " " .. req.path
    seen[what] = (seen[what] or 0) + 1
  end
  -- the timed calls, the warm-up, the header check, the run-log-tailed agent's call; a POST
  assert.same({ ["GET /api/agents/me"] = WARMUP + CALLS + 2,
    ["POST /api/issues/issue-1/comments"] = 1 }, seen)
  -- upstream's response header allowlist: etag kept, set-cookie and x-secret-header dropped
  assert.same({ etag = '"v1"', setCookie = json.null, secret = json.null }, report.answerHeaders)
  -- upstream's own commands, all through our environmentExecute: one sync, one launch, one
  -- readiness, one stop, and per call a read, a response write and a remove (warm-up and
  -- timed calls, + the header check, the POST, the tailed run's call and the 403)
  local e = report.execs
  for _, kind in ipairs({ "mkdir", "syncEntrypoint", "launch", "readiness", "stop" }) do
    assert.equal(1, e[kind] and e[kind].count, kind)
  end
  for _, kind in ipairs({ "read", "writeResponse", "remove" }) do
    assert.equal(WARMUP + CALLS + 4, e[kind] and e[kind].count, kind)
  end
  assert.is_true(e.list.count >= CALLS, "list")
  assert.is_true(e.runLogTick.count >= 1, "runLogTick")
  assert.same({}, report.failedExecs)
  -- no command of the bridge stalled (a lost wakeup in the SSH dispatcher once held finished
  -- commands for up to 10 s, until other traffic came)
  for _, slow in ipairs(report.slowExecs) do
    assert.is_true(slow.ms < 5000, json.encode(slow))
  end
  assert.same({}, report.bridgeWarnings)
  assert.is_true(report.gatewayGoneAfterStop)
end

-- What must be gone afterwards, counted: processes, sandbox dirs, temp dirs.
local function leftovers(report, tmp, lease_root)
  local left = { processes = {}, dirs = {} }
  for _, pid in ipairs({ report.workerPid, report.gatewayPid }) do
    if pid and helpers.alive(pid) then
      left.processes[#left.processes + 1] = pid
    end
  end
  for _, p in ipairs(processes_mentioning(tmp)) do
    left.processes[#left.processes + 1] = p
  end
  for _, d in ipairs({ lease_root, tmp .. "/node-tmp" }) do
    for _, name in ipairs(fs.list(d) or {}) do
      left.dirs[#left.dirs + 1] = d .. "/" .. name
    end
  end
  if report.providerLeaseId and fs.stat(report.providerLeaseId) then
    left.dirs[#left.dirs + 1] = report.providerLeaseId
  end
  return left
end

local function run_case(fn)
  local why = unavailable()
  if why then
    pending(why)
    return
  end
  local saved = helpers.deadline
  helpers.deadline = 300
  local ok, err = pcall(helpers.run, fn)
  helpers.deadline = saved
  if not ok then
    error(err, 0)
  end
end

-- One TAP comment with the per-call latency the agent measured and what each of upstream's
-- commands cost through environmentExecute (mean ms).
local function report_latency(provider, report)
  local l, costs = report.latency, {}
  for _, kind in ipairs({ "list", "read", "writeResponse", "remove" }) do
    local e = report.execs[kind]
    costs[#costs + 1] = ("%s %.1f"):format(kind, e.totalMs / e.count)
  end
  io.stderr:write(("# queue bridge over %s: %d calls, per-call ms median %s (min %s, p90 %s, "
    .. "max %s, mean %s); exec ms: %s; bridge start %d ms, stop %d ms\n"):format(provider, l.n,
    l.median, l.min, l.p90, l.max, l.mean, table.concat(costs, ", "), report.bridgeStartMs,
    report.bridgeStopMs))
end

describe("upstream's queue bridge (@paperclipai/adapter-utils) over our worker #node", function()
  it("local provider: an agent's API calls go through upstream's gateway and host loop", function()
    run_case(function()
      local tmp = helpers.tempdir("ph-qb-local-")
      local tmp_path = tmp.path
      local lease_root = tmp_path .. "/leases"
      assert(fs.mkdir(lease_root))
      local report, left
      helpers.with_cleanup(function()
        local requests
        report, requests = drive("local", { root = lease_root, timeoutMs = 120000 }, tmp_path)
        check_run(report, requests)
        assert.equal("bash", report.shellCommand)
        helpers.eventually(function()
          left = leftovers(report, tmp_path, lease_root)
          return #left.processes == 0 and #left.dirs == 0
        end, "everything the run started gone", 10)
      end, function()
        tmp:remove()
      end)
      assert.same({ processes = {}, dirs = {} }, left)
      assert.is_nil(fs.stat(tmp_path))
      report_latency("local", report)
    end)
  end)

  it("ssh provider (a real sshd on loopback): the same, over SSH", function()
    run_case(function()
      assert(sshd.available(), "sshd and ssh-keygen are needed (Debian's openssh-server)")
      local tmp = helpers.tempdir("ph-qb-ssh-")
      local tmp_path = tmp.path
      local lease_root = tmp_path .. "/leases"
      assert(fs.mkdir(lease_root))
      -- its commands get a HOME of its own (what a provider keeps there goes with the server)
      local server = sshd.start()
      local server_pid, server_dir = server.pid, server.dir
      local report, left
      helpers.with_cleanup(function()
        local key = sshd.keygen(tmp_path, "client", "ed25519")
        server:authorize(key.public)
        local requests
        report, requests = drive("ssh", { host = "127.0.0.1", port = server.port,
          user = server.user, privateKey = key.private, hostKeyPolicy = "accept-new",
          knownHostsFile = tmp_path .. "/known_hosts", workspaceRoot = lease_root,
          timeoutMs = 120000 }, tmp_path)
        check_run(report, requests)
        helpers.eventually(function()
          left = leftovers(report, tmp_path, lease_root)
          return #left.processes == 0 and #left.dirs == 0
        end, "everything the run started gone", 10)
      end, function()
        server:close()
        tmp:remove()
      end)
      assert.same({ processes = {}, dirs = {} }, left)
      assert.is_false(helpers.alive(server_pid))
      assert.same({}, processes_mentioning(server_dir)) -- its connections, commands in its HOME
      assert.is_nil(fs.stat(server_dir))
      assert.is_nil(fs.stat(tmp_path))
      report_latency("ssh", report)
    end)
  end)
end)
