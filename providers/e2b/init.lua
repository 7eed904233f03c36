-- providers/e2b: E2B cloud sandboxes, a drop-in for upstream's newest E2B provider
-- (paperclip.e2b-sandbox-provider) that speaks E2B's REST API and envd's Connect-RPC directly.
-- See README.md in this folder for behaviour, settings and every deviation from upstream.
local api = require("providers.e2b.api")
local duplex = require("providers.e2b.duplex")
local envd = require("providers.e2b.envd")
local helper = require("providers.e2b.helper")
local json = require("host.json")
local host_params = require("host.params")
local log = require("host.log")
local script = require("providers.e2b.script")
local sync_tar = require("host.sync_tar")
local task = require("host.task")
local util = require("host.util")

local M = {
  driver_key = "e2b",
  display_name = "E2B Cloud Sandbox",
  description = "Provisions E2B cloud sandboxes with configurable templates, timeouts, and lease "
    .. "reuse.",
  version = "0.1.0",
  schema = require("providers.e2b.schema"),
  -- Declared so the host honours reuseLease (upstream declares nothing, so reuse was ignored).
  capabilities = { reusableLeases = true, nativeSyncIn = true, nativeSyncOut = true },
  manifest = {
    id = "paperclip.e2b-sandbox-provider",
    package_name = "@paperclipai/plugin-e2b",
    display_name = "E2B Sandbox Provider",
    description = "First-party sandbox provider plugin that provisions E2B cloud sandboxes as "
      .. "Paperclip execution environments.",
    author = "Paperclip",
    categories = { "automation" },
    driver_display_name = "E2B Cloud Sandbox",
    driver_description = "Provisions E2B cloud sandboxes with configurable templates, timeouts, "
      .. "and lease reuse.",
  },
  hooks = {},
}

local hooks = M.hooks

local WORKSPACE_TIMEOUT_MS = 60000 -- the SDK's default command timeout, which upstream uses
local CANCEL_TIMEOUT_MS = 10000

------------------------------------------------------------------------------------------------
-- Helpers

local function lease_metadata(ctx, sbx, remote_cwd, resumed, no_tar)
  local c = ctx.config
  return json.ordered({
    provider = "e2b",
    shellCommand = "bash",
    template = c.template,
    timeoutMs = c.timeoutMs,
    reuseLease = c.reuseLease,
    sandboxId = sbx.id,
    sandboxDomain = sbx.domain,
    remoteCwd = remote_cwd,
    resumedLease = resumed,
    nativeFileSyncUnsupported = no_tar or nil, -- only where the template has no GNU tar
  }, {
    "provider",
    "shellCommand",
    "template",
    "timeoutMs",
    "reuseLease",
    "sandboxId",
    "sandboxDomain",
    "remoteCwd",
    "resumedLease",
    "nativeFileSyncUnsupported",
  })
end

local function expired()
  return { providerLeaseId = json.null, metadata = { expired = true } }
end

-- The labels a new sandbox carries in E2B (visible in its dashboard and list API).
local function sandbox_labels(params)
  local labels = { paperclipProvider = "e2b" }
  for key, field in pairs({
    paperclipCompanyId = "companyId",
    paperclipEnvironmentId = "environmentId",
    paperclipRunId = "runId",
  }) do
    local v = params[field]
    if type(v) == "string" and v ~= "" and #v <= 256 then
      labels[key] = v
    end
  end
  return labels
end

-- with_sandbox(ctx, conn, id, fn) -> fn(sandbox)'s results. The sandbox's envd credentials
-- come from this worker's memory when it has them (no request at all); otherwise, and once
-- more when envd answers that a cached sandbox is unreachable or its token is refused before
-- anything ran, a connect fetches them (it also resumes a paused sandbox, as upstream's
-- connect-per-call did, and extends the lifetime). fn returns result | nil, message, kind,
-- partial; partial.started means the command ran, so it is not retried.
local function with_sandbox(ctx, conn, id, fn)
  local entry = api.cached(conn, id)
  local cached = entry ~= nil
  if not entry then
    local sbx, err, kind = api.connect(conn, id, ctx.config.timeoutMs)
    if not sbx then
      return nil, err, kind
    end
    entry = api.remember(conn, sbx)
  end
  local res = table.pack(fn(entry))
  local kind, partial = res[3], res[4]
  if
    res[1] == nil
    and cached
    and (kind == "unavailable" or kind == "auth")
    and not (partial and partial.started)
  then
    api.forget(conn, id)
    local sbx, err, ckind = api.connect(conn, id, ctx.config.timeoutMs)
    if not sbx then
      return nil, err, ckind
    end
    res = table.pack(fn(api.remember(conn, sbx)))
  end
  return table.unpack(res, 1, res.n)
end

-- resolve_workspace(conn, sbx) -> remoteCwd, nil, nil, no_tar | nil, message, kind: upstream's
-- pwd + mkdir -p of <pwd>/paperclip-workspace, in one command that also says whether native
-- sync can run there (no_tar: it cannot).
local function resolve_workspace(conn, sbx)
  local res, err, kind = envd.run(conn, sbx, {
    script = script.workspace(sync_tar.SUPPORT_SCRIPT),
    timeout_ms = WORKSPACE_TIMEOUT_MS,
    what = "prepare the workspace",
  })
  if not res then
    return nil, err, kind
  end
  if res.timed_out then
    return nil, ("E2B sandbox %s did not prepare its workspace within %ds"):format(
      sbx.id,
      WORKSPACE_TIMEOUT_MS // 1000
    ),
      "timeout"
  end
  local cwd, tar = util.trim(res.stdout):match("([^\n]*)\n([^\n]*)$")
  if res.exit_code ~= 0 or not cwd or cwd:sub(1, 1) ~= "/" then
    return nil,
      ("E2B sandbox %s could not prepare its workspace (exit code %s): %s"):format(
        sbx.id,
        tostring(res.exit_code),
        util.trim(res.stderr) ~= "" and util.trim(res.stderr) or "no output"
      ),
      "upstream"
  end
  return cwd, nil, nil, tar ~= "tar"
end

--- kill(conn, id) -> true | nil, message: by id (no connect, so a paused sandbox is not
-- resumed first); once more after a transport failure or a 5xx; a sandbox already gone is
-- killed.
local function kill(conn, id)
  local ok, err, kind, status = api.kill(conn, id)
  if ok == nil and api.ambiguous(kind, status) and kind ~= "canceled" then
    ok, err = api.kill(conn, id)
  end
  if ok == nil then
    return nil, err
  end
  return true
end

-- kill, as a cleanup: retried with backoff while the answer may still change (lost, 5xx, 429)
-- and the cleanup's budget lasts, since nobody else will ever learn this sandbox's id.
local function kill_for_good(cctx, conn, id)
  local wait = 0.2
  while true do
    local ok, err, kind, status = api.kill(conn, id)
    if ok ~= nil then
      return true
    end
    local again = kind ~= "canceled" and (api.ambiguous(kind, status) or kind == "busy")
    if not again or cctx.deadline - task.now() <= wait or not task.sleep(wait) then
      return nil, err
    end
    wait = math.min(wait * 2, 2)
  end
end

-- The cleanup a failed probe, acquire or resume owes: kill the sandbox with a budget of its own
-- (the request's deadline may be spent); a failure is logged and worded for the caller's error.
local function cleanup(ctx, conn, id, reason)
  api.forget(conn, id)
  local ok, err = ctx:cleanup(function(cctx)
    local kconn = setmetatable({ deadline = cctx.deadline }, { __index = conn })
    local done, kerr = kill_for_good(cctx, kconn, id)
    if not done then
      cctx.log.warn("Failed to kill E2B sandbox during %s: %s", reason, kerr)
    end
    return done, kerr
  end)
  if not ok and err then
    return (" The sandbox %s may still run until its timeout: %s"):format(id, err)
  end
  return ""
end

-- create(ctx, conn, labels) -> sandbox | nil, message: a create tagged with a unique
-- paperclipCreateId; when its answer is ambiguous (lost, cut, 5xx), the sandboxes carrying
-- that tag are listed: the first is adopted (a connect gets its envd credentials), any other
-- is killed, and none found means none was made.
local function create(ctx, conn, labels)
  local c = ctx.config
  local tag = util.uuid()
  labels.paperclipCreateId = tag
  local sbx, err, kind, status = api.create(conn, c.template, c.timeoutMs, labels)
  if sbx or not api.ambiguous(kind, status) then
    return sbx, err
  end
  ctx.log.info("E2B sandbox create answered ambiguously (%s): looking for it", err)
  local ids, lerr
  for _ = 1, 2 do
    if kind == "canceled" or ctx:remaining() <= 0 then
      break
    end
    ids, lerr, kind = api.list(conn, "paperclipCreateId", tag)
    if ids then
      break
    end
  end
  if not ids then -- still unknown: whatever carries the tag goes, with a budget of its own
    ctx:cleanup(function(cctx)
      local kconn = setmetatable({ deadline = cctx.deadline }, { __index = conn })
      for _, id in ipairs(api.list(kconn, "paperclipCreateId", tag) or {}) do
        kill(kconn, id)
      end
    end)
    return nil, err .. (lerr and (" (and the sandboxes could not be listed: " .. lerr .. ")")
      or "")
  end
  for i = 2, #ids do
    cleanup(ctx, conn, ids[i], "cleanup of a duplicate create")
  end
  if #ids == 0 then
    return nil, err
  end
  local found, cerr = api.connect(conn, ids[1], c.timeoutMs)
  if not found then
    return nil, err .. " (the sandbox it made could not be adopted: " .. cerr .. ")"
      .. cleanup(ctx, conn, ids[1], "cleanup of an ambiguous create")
  end
  ctx.log.info("E2B sandbox %s exists after all: adopting it", ids[1])
  return found
end

------------------------------------------------------------------------------------------------
-- Hooks

-- conn, the sandbox created for this request | nil, message.
local function new_sandbox(ctx, params)
  local conn, err = api.connection(ctx)
  if not conn then
    return nil, err
  end
  local sbx
  sbx, err = create(ctx, conn, sandbox_labels(params))
  if not sbx then
    return nil, err
  end
  return conn, sbx
end

--- environmentProbe: create a sandbox, prepare the workspace, always kill it; never raises.
function hooks.probe(ctx, params)
  local c = ctx.config
  local keys = { "provider", "template", "timeoutMs", "reuseLease" }
  local meta = {
    provider = "e2b",
    template = c.template,
    timeoutMs = c.timeoutMs,
    reuseLease = c.reuseLease,
  }
  local ok, res, failure = pcall(function()
    local conn, sbx = new_sandbox(ctx, params)
    if not conn then
      return nil, sbx
    end
    local entry = api.remember(conn, sbx)
    local done, cwd, werr = pcall(resolve_workspace, conn, entry)
    cleanup(ctx, conn, sbx.id, "probe cleanup") -- always; a failure is a warning (as upstream)
    if not done then
      error(cwd, 0)
    elseif not cwd then
      return nil, werr
    end
    meta.sandboxId, meta.sandboxDomain, meta.remoteCwd = sbx.id, sbx.domain, cwd
    return true
  end)
  if ok and res then
    table.move({ "sandboxId", "sandboxDomain", "remoteCwd" }, 1, 3, #keys + 1, keys)
    return {
      ok = true,
      summary = ("Connected to E2B sandbox template %s."):format(c.template),
      metadata = json.ordered(meta, keys),
    }
  end
  meta.error = ok and tostring(failure) or tostring(res):gsub("^[^\n]-%.lua:%d+: ", "")
  keys[#keys + 1] = "error"
  return {
    ok = false,
    summary = ("E2B sandbox probe failed for template %s."):format(c.template),
    metadata = json.ordered(meta, keys),
  }
end

--- environmentAcquireLease: create a sandbox (its lifetime set by the create itself) and
-- prepare the workspace; a half-made sandbox is killed and the original error reported.
function hooks.acquire_lease(ctx, params)
  local conn, sbx = new_sandbox(ctx, params)
  if not conn then
    return nil, sbx
  end
  local cwd, err, _, no_tar = resolve_workspace(conn, api.remember(conn, sbx))
  if not cwd then
    return nil, err .. cleanup(ctx, conn, sbx.id, "cleanup of a failed acquire")
  end
  return { providerLeaseId = sbx.id, metadata = lease_metadata(ctx, sbx, cwd, false, no_tar) }
end

--- environmentResumeLease: connect (resumes a paused sandbox), set the lifetime and prepare
-- the workspace; a gone sandbox is {providerLeaseId = null, metadata = {expired = true}}.
function hooks.resume_lease(ctx, params)
  local id = params.providerLeaseId
  if not api.valid_id(id) then
    return expired()
  end
  local conn, err = api.connection(ctx)
  if not conn then
    return nil, err
  end
  local sbx, kind
  sbx, err, kind = api.connect(conn, id, ctx.config.timeoutMs)
  if not sbx then
    if kind == "not_found" then
      return expired()
    end
    return nil, err
  end
  local entry = api.remember(conn, sbx)
  local steps = task.all({
    function()
      return api.set_timeout(conn, id, ctx.config.timeoutMs)
    end,
    function()
      return resolve_workspace(conn, entry)
    end,
  })
  local failed = (steps[1][1] == nil and steps[1]) or (steps[2][1] == nil and steps[2]) or nil
  if failed then
    local left = cleanup(ctx, conn, id, "cleanup of a failed resume")
    if failed[3] == "not_found" or failed[3] == "unavailable" then
      return expired()
    end
    return nil, failed[2] .. left
  end
  return { providerLeaseId = id,
    metadata = lease_metadata(ctx, sbx, steps[2][1], true, steps[2][4]) }
end

-- The connection for releasing or destroying sandbox id, whose cached sandbox entry is dropped.
local function releasing(ctx, id)
  local conn, err = api.connection(ctx)
  if conn then
    api.forget(conn, id)
  end
  return conn, err
end

--- environmentReleaseLease: pause when reusing (a failed pause falls back to kill), kill
-- otherwise; both by id, so a paused sandbox is never resumed just to be cleaned up. A
-- sandbox already gone is released; a transport failure or a 5xx is tried once more; any
-- other failure (upstream only warned) is an error reply.
function hooks.release_lease(ctx, params)
  local id = params.providerLeaseId
  if not id then
    return true
  end
  local conn, err = releasing(ctx, id)
  if not conn then
    return nil, err
  end
  if not ctx.config.reuseLease then
    return kill(conn, id)
  end
  local ok, perr, kind, status = api.pause(conn, id)
  if ok == nil and api.ambiguous(kind, status) and kind ~= "canceled" then
    ok, perr, kind = api.pause(conn, id)
  end
  if ok == nil and kind ~= "not_found" then
    ctx.log.warn(
      "Failed to pause E2B sandbox during lease release: %s. Attempting kill instead.",
      perr
    )
    local killed, kerr = kill(conn, id)
    if not killed then
      return nil, ("E2B sandbox %s could be neither paused (%s) nor killed: %s"):format(id,
        perr, kerr)
    end
  end
  return true
end

--- environmentDestroyLease: kill by id; a missing sandbox is success, a failure an error.
function hooks.destroy_lease(ctx, params)
  local id = params.providerLeaseId
  if not id then
    return true
  end
  local conn, err = releasing(ctx, id)
  if not conn then
    return nil, err
  end
  return kill(conn, id)
end

--- environmentRealizeWorkspace: upstream's cwd order, then mkdir -p it in the sandbox.
function hooks.realize_workspace(ctx, params)
  local meta, ws = params.lease.metadata, params.workspace
  local function given(v)
    return util.nonblank(v) and v
  end
  local cwd = (given(meta.remoteCwd) and util.trim(meta.remoteCwd))
    or given(ws.remotePath)
    or given(ws.localPath)
    or "/paperclip-workspace"
  local id = params.lease.providerLeaseId
  if id then
    local conn, err = api.connection(ctx)
    if not conn then
      return nil, err
    end
    local res
    res, err = with_sandbox(ctx, conn, id, function(sbx)
      return envd.run(conn, sbx, {
        script = script.mkdir(cwd),
        timeout_ms = WORKSPACE_TIMEOUT_MS,
        what = "create the workspace",
      })
    end)
    if not res then
      return nil, err
    elseif res.timed_out or res.exit_code ~= 0 then
      return nil,
        ("E2B sandbox %s could not create the workspace %s (%s): %s"):format(
          id,
          cwd,
          res.timed_out and "timed out" or ("exit code " .. tostring(res.exit_code)),
          util.trim(res.stderr) ~= "" and util.trim(res.stderr) or "no output"
        )
    end
  end
  return { cwd = cwd, metadata = { provider = "e2b", remoteCwd = cwd } }
end

-- Lifetime refresh, best effort and rate-limited: setTimeout(timeoutMs) once more than
-- refresh_fraction of timeoutMs has passed since this worker last refreshed (or connected to)
-- the sandbox. Runs as its own task, concurrently with the command; a failure is logged and
-- the next command tries again.
local function refresh(ctx, conn, entry)
  local timeout_ms = ctx.config.timeoutMs
  local interval = timeout_ms / 1000 * api.settings.refresh_fraction
  local last = entry.refreshed_at or -math.huge
  if task.now() - last < interval then
    return
  end
  entry.refreshed_at = task.now()
  task.spawn(function()
    local ok, err = api.set_timeout(conn, entry.id, timeout_ms)
    if not ok then
      if entry.refreshed_at and entry.refreshed_at <= task.now() then
        entry.refreshed_at = last
      end
      -- host.log, not ctx.log: this task may outlive the execute's invocation
      log.warn("Could not refresh the lifetime of E2B sandbox %s (the command runs on): %s",
        entry.id, err)
    end
  end)
end

-- While a long command runs, keep refreshing its sandbox's lifetime at the same rate.
local function refresher(ctx, conn, entry)
  local every = math.max(1, ctx.config.timeoutMs / 1000 * api.settings.refresh_fraction)
  return task.spawn(function()
    while task.sleep(every) do
      refresh(ctx, conn, entry)
    end
  end)
end

-- Best effort, in the background: stop the process group of a command whose wrapper was
-- killed (a timeout) or whose stream was lost, and remove its control dir and staged stdin.
local function reap(conn, sbx, exec_id, stdin_path)
  task.spawn(function()
    local res, err = envd.run(conn, sbx, {
      script = script.reap(exec_id, stdin_path),
      cwd = "/",
      timeout_ms = CANCEL_TIMEOUT_MS,
      what = "stop the command",
    })
    if not res then
      log.debug("E2B: could not stop the processes of a command in sandbox %s: %s", sbx.id, err)
    end
  end)
end

local function random_id()
  return "provider-host-" .. util.hex(assert(util.random(8)))
end

-- What upstream answers when a cancel arrives before the command was launched.
local function cancelled_result()
  return { exitCode = 130, timedOut = false, stdout = "", stderr = "" }
end

-- Upstream's timeout result: partial output kept, the message appended to stderr.
local function timeout_result(ctx, res, message)
  local stdout, stderr = ctx:output(res.stdout), ctx:output(res.stderr)
  if stderr ~= "" then
    if not stderr:find(message, 1, true) then
      stderr = stderr .. (stderr:sub(-1) == "\n" and "" or "\n") .. message .. "\n"
    end
  else
    stderr = message .. "\n"
  end
  return { exitCode = json.null, timedOut = true, stdout = stdout, stderr = stderr }
end

-- new_job(ctx, params) -> job | nil, message: one execute's command, wrapped for the sandbox
-- (its control dir, the staged stdin file), plus the state its cancel shares: cancelled,
-- launched, sbx and pid of the launched command, canceller, and staged (the sandbox holding
-- the staged stdin file, until the wrapper owns it).
local function new_job(ctx, params)
  local stdin = params.stdin
  local exec_id = ctx.execution and params.executionId or random_id()
  local base, env_script = script.command(params.command, params.args, params.env,
    script.env_file(exec_id))
  local conn, err = api.connection(ctx)
  if not conn then
    return nil, err
  end
  local timeout_ms = params.timeoutMs or ctx.config.timeoutMs
  local stdin_path = stdin and ("/tmp/paperclip-stdin-" .. util.uuid()) or nil
  return {
    conn = conn,
    exec_id = exec_id,
    stdin = stdin,
    stdin_path = stdin_path,
    env_script = env_script,
    wrapped = script.wrap(
      exec_id,
      stdin_path and (base .. " < " .. script.quote(stdin_path)) or base,
      stdin_path
    ),
    timeout_ms = timeout_ms,
    cwd = params.cwd,
    cancelled = false,
    launched = false,
  }
end

-- cancel_command(ctx, job) -> true | nil, message: marks job cancelled; once launched, the
-- remote cancel script stops its process group, else SIGKILL at least takes the wrapper.
local function cancel_command(ctx, job)
  job.cancelled = true
  if not job.launched then
    return true -- the command never starts: execute answers 130
  end
  local res, cerr = envd.run(job.conn, job.sbx, {
    script = script.cancel(job.exec_id),
    cwd = "/",
    timeout_ms = math.min(ctx.config.timeoutMs, CANCEL_TIMEOUT_MS),
    what = "cancel the command",
  })
  if res and not res.timed_out and res.exit_code == 0 then
    return true
  end
  if job.pid then -- last resort: at least the wrapper goes
    local ok = envd.unary(job.conn, job.sbx, "process.Process/SendSignal", {
      process = { pid = job.pid },
      signal = "SIGNAL_SIGKILL",
    }, "kill the command")
    if ok then
      return true
    end
  end
  return nil,
    cerr
      or ("E2B exact command cancellation failed with exit code %s."):format(
        res.timed_out and "null (timed out)" or tostring(res.exit_code)
      )
end

-- ctx.execution.cancel for job (environmentCancelExecution of this worker's own execution):
-- one cancel task however often it is called; each call waits for it and raises its failure.
local function canceller(ctx, job)
  return function()
    job.canceller = job.canceller
      or task.spawn(function()
        return cancel_command(ctx, job)
      end)
    local ok, cerr = job.canceller:wait()
    if not ok then
      error(cerr or "E2B exact command cancellation failed", 0)
    end
  end
end

-- stage_stdin(job, sbx) -> true | nil, message, kind: uploads the stdin to job.stdin_path; a
-- failed upload's file is removed (best effort) unless the sandbox itself is out of reach.
local function stage_stdin(job, sbx)
  local ok, err, kind = envd.upload(job.conn, sbx, job.stdin_path, job.stdin)
  if not ok then
    if kind ~= "unavailable" and kind ~= "auth" then
      envd.remove(job.conn, sbx, job.stdin_path) -- best effort, as upstream
    end
    return nil, err, kind
  end
  job.staged = sbx
  return true
end

-- The envd.run options of job's command: output goes out live, and once the command starts
-- the wrapper owns (and removes) the staged stdin file.
local function command_opts(ctx, job)
  return {
    script = job.wrapped,
    envs = { [script.ENV_VAR] = job.env_script }, -- process env, not a command line
    cwd = job.cwd,
    timeout_ms = job.timeout_ms,
    max_output = ctx.max_output,
    what = "run the command",
    on_start = function(pid)
      job.pid = pid
      job.staged = nil -- the wrapper removes the staged file when it exits
    end,
    on_output = function(stream, bytes)
      ctx:emit(stream, bytes)
    end,
  }
end

-- launch(ctx, job, sbx) -> envd.run's answers | cancelled_result(): with_sandbox's fn (it may
-- run twice): refresh the lifetime, stage stdin, run the command while refreshing.
local function launch(ctx, job, sbx)
  refresh(ctx, job.conn, sbx)
  if job.cancelled then
    return cancelled_result()
  end
  if job.stdin_path then
    local ok, err, kind = stage_stdin(job, sbx)
    if not ok then
      return nil, err, kind
    end
    if job.cancelled then
      return cancelled_result()
    end
  end
  job.launched, job.sbx = true, sbx
  local ticker = refresher(ctx, job.conn, sbx)
  local res, err, kind, partial = envd.run(job.conn, sbx, command_opts(ctx, job))
  ticker:cancel()
  if not res and not (partial and partial.started) then
    job.launched = false
  end
  return res, err, kind, partial
end

-- A stdin file staged but never launched: nobody else removes it, so remove it in the
-- background.
local function discard_staged(job)
  if job.staged then
    task.spawn(function()
      envd.remove(job.conn, job.staged, job.stdin_path)
    end)
  end
end

-- execute_failed(job, id, err, kind, partial) -> nil, message: a command that started is
-- reaped (its stream was lost); a sandbox that is gone is forgotten.
local function execute_failed(job, id, err, kind, partial)
  if partial and partial.started and job.sbx then
    reap(job.conn, job.sbx, job.exec_id, job.stdin_path)
  end
  if kind == "not_found" or kind == "unavailable" then
    api.forget(job.conn, id)
  end
  return nil, err
end

-- The execute result for launch's answer: as is when canceled before launch, upstream's
-- timeout result (the processes reaped) when timed out, else the exit code and output.
local function execute_result(ctx, job, res)
  if res.exitCode ~= nil then -- canceled before launch
    return res
  end
  if res.timed_out then
    if job.sbx then
      reap(job.conn, job.sbx, job.exec_id, job.stdin_path)
    end
    return timeout_result(ctx, res, ("Command timed out after %dms"):format(job.timeout_ms))
  end
  local out = {
    exitCode = res.exit_code,
    timedOut = false,
    stdout = ctx:output(res.stdout),
    stderr = ctx:output(res.stderr),
  }
  if res.truncated then
    out.metadata = { truncated = true }
  end
  return out
end

--- environmentExecute: upstream v-newest's command, one request on a warm lease (two with
-- stdin), output streamed live.
function hooks.execute(ctx, params)
  local id = params.lease.providerLeaseId
  if not id then
    return host_params.no_lease_result()
  end
  local job, err = new_job(ctx, params)
  if not job then
    return nil, err
  end
  if ctx.execution then
    ctx.execution.cancel = canceller(ctx, job)
  end
  local res, kind, partial
  res, err, kind, partial = with_sandbox(ctx, job.conn, id, function(sbx)
    return launch(ctx, job, sbx)
  end)
  discard_staged(job)
  if not res then
    return execute_failed(job, id, err, kind, partial)
  end
  return execute_result(ctx, job, res)
end

--- environmentCancelExecution: exactly that command's process group, for an execution this
-- worker does not track (the worker cancels its own through execute), e.g. after a restart:
-- the remote cancel script.
function hooks.cancel_execution(ctx, params)
  local exec_id = params.executionId
  local id = params.lease.providerLeaseId
  if not id then
    return { executionId = exec_id, cancelled = false }
  end
  local conn, err = api.connection(ctx)
  if not conn then
    return nil, err
  end
  local timeout_ms = math.min(ctx.config.timeoutMs, CANCEL_TIMEOUT_MS)
  local res
  res, err = with_sandbox(ctx, conn, id, function(sbx)
    return envd.run(conn, sbx, {
      script = script.cancel(exec_id),
      cwd = "/",
      timeout_ms = timeout_ms,
      what = "cancel the command",
    })
  end)
  if not res then
    return nil, err
  end
  if res.timed_out then
    return nil, ("E2B exact command cancellation timed out after %dms."):format(timeout_ms)
  end
  if res.exit_code ~= 0 then
    return nil,
      ("E2B exact command cancellation failed with exit code %s."):format(tostring(res.exit_code))
  end
  return { executionId = exec_id, cancelled = true }
end

------------------------------------------------------------------------------------------------
-- The bridge's hooks (the duplex contract of issue 9; not protocol methods)

-- fn(conn, sbx) on the sandbox of params.lease (with_sandbox: connected when not cached),
-- forgetting a sandbox that turned out gone. -> fn's results | nil, message, code
-- ("not_found" without a sandbox in the lease).
local function on_lease_sandbox(ctx, params, what, fn)
  local lease = type(params) == "table" and params.lease
  local id = type(lease) == "table" and lease.providerLeaseId or nil
  if not api.valid_id(id) then
    return nil, ("E2B %s needs a lease with a sandbox"):format(what), "not_found"
  end
  local conn, err, code = api.connection(ctx)
  if not conn then
    return nil, err, code
  end
  local res, kind
  res, err, kind = with_sandbox(ctx, conn, id, function(sbx)
    return fn(conn, sbx)
  end)
  if not res then
    if kind == "not_found" or kind == "unavailable" then
      api.forget(conn, id)
    end
    return nil, err, kind
  end
  return res
end

--- sandbox_helper(ctx, {lease}) -> the path of a runnable ph-sandbox-helper in the lease's
-- sandbox | nil, message, code ("unsupported" when it cannot run there). Uploaded once per
-- lease (see helper.lua); later calls on this worker make no request at all.
function hooks.sandbox_helper(ctx, params)
  local bin, err, code = helper.host_binary()
  if not bin then
    return nil, err, code
  end
  return on_lease_sandbox(ctx, params, "ph-sandbox-helper", function(conn, sbx)
    return helper.ensure(conn, sbx, bin)
  end)
end

local function string_list(v)
  if v == nil then
    return {}
  elseif type(v) ~= "table" then
    return nil
  end
  for i, a in ipairs(v) do
    if type(a) ~= "string" then
      return nil, i
    end
  end
  return v
end

--- environmentSyncIn / environmentSyncOut (upstream has neither: the host's fallback moved the
-- workspace as base64 through execute): tar streams through a duplex on envd, stdin written
-- with SendInput as it is read (host.sync_tar); the whole sandbox is the sandbox.
hooks.sync_in, hooks.sync_out = sync_tar.hooks(function()
  return { name = "e2b", duplex = hooks.duplex }
end)

--- duplex(ctx, {lease, command, args, env, cwd, on_stdout, on_stderr, timeout}) -> Duplex |
-- nil, message, code: a long-lived command whose stdin is written at any time and whose output
-- streams to on_stdout / on_stderr (see duplex.lua). It runs with the minimal environment of
-- execute, the caller's env never on a command line (script.duplex). envd kills it at the end
-- of its life: params.timeout seconds, and never later than the hook's deadline.
function hooks.duplex(ctx, params)
  local args = string_list(params.args)
  if type(params.command) ~= "string" or params.command == "" or not args
    or (params.env ~= nil and type(params.env) ~= "table")
    or (params.cwd ~= nil and type(params.cwd) ~= "string") then
    return nil, "E2B duplex execution: command must be a non-empty string, args strings, env "
      .. "a table and cwd a string", "internal"
  end
  local text, prefix, code = script.duplex(params.command, args, params.env or {})
  if not text then
    return nil, prefix, code
  end
  -- envd kills it at the end of its life: params.timeout, never past the hook's deadline
  local life = math.min(type(params.timeout) == "number" and params.timeout or math.huge,
    ctx.deadline and ctx.deadline - task.now() or math.huge)
  if life == math.huge then
    life = ctx.config.timeoutMs / 1000
  end
  if life <= 0 then
    return nil, "no time left to start the duplex execution", "timeout"
  end
  return on_lease_sandbox(ctx, params, "duplex execution", function(conn, sbx)
    refresh(ctx, conn, sbx)
    return duplex.open(conn, sbx, {
      script = text,
      stdin_prefix = prefix,
      cwd = params.cwd,
      life = life,
      on_stdout = params.on_stdout,
      on_stderr = params.on_stderr,
      what = "start the duplex command",
    })
  end)
end

return M
