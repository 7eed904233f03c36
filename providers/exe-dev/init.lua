-- providers/exe-dev: exe.dev VMs, a drop-in for upstream's exe-dev provider 0.1.2
-- (paperclip.exe-dev-sandbox-provider): lifecycle through exe.dev's HTTPS `/exec` API, commands
-- over SSH through host.ssh's pooled sessions (host.remote). See README.md in this folder for
-- the behaviour and every deviation from upstream.
local api = require("providers.exe-dev.api")
local http = require("host.http")
local json = require("host.json")
local host_params = require("host.params")
local log = require("host.log")
local remote = require("host.remote")
local sync_tar = require("host.sync_tar")
local util = require("host.util")

local M = {
  driver_key = "exe-dev",
  display_name = "exe.dev VM",
  description = "Provisions exe.dev VMs through the HTTPS API, then runs commands over direct SSH "
    .. "for long-lived Paperclip workloads.",
  version = "0.1.2",
  schema = require("providers.exe-dev.schema"),
  env_label = "exe.dev", -- upstream's words: "Invalid exe.dev environment variable key: K"
  -- Declared so the host reuses retained VMs (upstream declares nothing, so reuseLease only
  -- ever kept VMs that were never resumed).
  capabilities = { reusableLeases = true, nativeSyncIn = true, nativeSyncOut = true },
  manifest = {
    id = "paperclip.exe-dev-sandbox-provider",
    package_name = "@paperclipai/plugin-exe-dev",
    display_name = "exe.dev Sandbox Provider",
    description = "Sandbox provider plugin that provisions exe.dev VMs as Paperclip execution "
      .. "environments.",
    author = "Paperclip",
    categories = { "automation" },
    driver_display_name = "exe.dev VM",
    driver_description = "Provisions exe.dev VMs through the HTTPS API, then runs commands over "
      .. "direct SSH for long-lived Paperclip workloads.",
  },
  hooks = {},
}

local hooks = M.hooks

local ONBOARDING = "Please complete registration by running: ssh exe.dev"
local EMAIL_PROMPT = "Please enter your email address:"
local NO_KEY = "exe.dev: no SSH identity to reach the VM: set sshPrivateKey or sshIdentityFile, "
  .. "run an ssh-agent (SSH_AUTH_SOCK), or put the key registered with exe.dev in ~/.ssh of the "
  .. "account running Paperclip"

------------------------------------------------------------------------------------------------
-- Helpers

-- The config (schema.lua parsed it as upstream does); its secrets are redacted from everything
-- from now on (the schema registers only the secret fields: env values, the prompt and a
-- custom setup script are secrets here too).
local function config_of(ctx)
  local c = ctx.config
  api.register_secrets(c)
  return c
end

local function failure(action, vm, detail)
  return ("Failed to %s exe.dev VM %s: %s"):format(action, vm, detail)
end

--- format_failure(action, vm, stdout, stderr): upstream's formatSshFailure.
local function format_failure(action, vm, stdout, stderr)
  local combined = stderr .. "\n" .. stdout
  if combined:find(ONBOARDING, 1, true) or combined:find(EMAIL_PROMPT, 1, true) then
    return failure(action, vm, "the Paperclip host SSH key is not registered with exe.dev. "
      .. "Complete exe.dev's one-time SSH onboarding on this host by running `ssh exe.dev` and "
      .. "following the email verification prompt, then retry.")
  end
  if combined:lower():find("load key [^\n]*invalid format") then
    return failure(action, vm, "the configured SSH private key isn't an OpenSSH-format private "
      .. "key. Confirm the secret starts with `-----BEGIN … PRIVATE KEY-----` and isn't the "
      .. "`.pub` file or a PuTTY `.ppk` export.")
  end
  local detail = util.trim(stderr) ~= "" and util.trim(stderr) or util.trim(stdout)
  return failure(action, vm, detail ~= "" and detail or "unknown error")
end

-- An SSH failure before any command ran (host.ssh's nil, message, code), in upstream's words
-- where upstream had some.
local function transport_failure(action, vm, err, code)
  if code == "auth" and err:find("not a valid OpenSSH or PEM key", 1, true) then
    return format_failure(action, vm, "", 'Load key "sshPrivateKey": invalid format')
  elseif code == "auth" and err:find("encrypted", 1, true) then
    return failure(action, vm, err .. " (exe.dev's config has no passphrase field: use a key "
      .. "without one)")
  elseif code == "auth" then
    return failure(action, vm, err .. " (is its public key registered with exe.dev?)")
  end
  return failure(action, vm, err)
end

-- The SSH target of a VM: its record's port when it has one, else sshPort. The identity is
-- sshPrivateKey, else sshIdentityFile, else what `ssh` would offer (the agent, ~/.ssh keys),
-- and the user sshUser, else the account's name, as upstream's `ssh` did.
local function target(c, vm)
  local t, err, code = remote.target({
    host = vm.sshDest,
    port = vm.sshPort or c.sshPort,
    user = c.sshUser,
    key = c.sshPrivateKey,
    key_file = not c.sshPrivateKey and c.sshIdentityFile or nil,
    host_key_policy = c.strictHostKeyChecking,
  })
  if not t then
    if code == "config" and err:find("^no SSH identity") then
      return nil, NO_KEY .. " (" .. err:gsub("^no SSH identity to offer %(", "")
    end
    return nil, "exe.dev: " .. err
  end
  return t
end

-- Before making a VM: nil, message when nothing could ever log in to it.
local function identity_problem(c)
  local t, err = target(c, { sshDest = "exe.dev" })
  return not t and err or nil
end

local function seconds(ctx, c)
  return math.max(0.001, math.min(c.timeoutMs / 1000, ctx:remaining()))
end

-- upstream's buildLease in one SSH command: home and shell (detectRemoteContext), then
-- mkdir -p of the workspace (ensureRemoteWorkspace), then whether native sync can run there
-- (GNU tar: host.sync_tar). Exit 97: the mkdir failed.
local function lease_script(requested)
  return table.concat({
    'paperclip_home="${HOME:-}"',
    'if [ -z "$paperclip_home" ]; then paperclip_home="$(pwd)"; fi',
    'if [ -z "$paperclip_home" ]; then paperclip_home=/tmp; fi',
    "paperclip_shell=$(" .. remote.SHELL_DETECT .. ")",
    requested and ("paperclip_cwd=" .. api.quote(requested))
      or 'paperclip_cwd="${paperclip_home%/}/paperclip-workspace"',
    "printf '%s\\n%s\\n%s\\n' \"$paperclip_home\" \"$paperclip_shell\" \"$paperclip_cwd\"",
    'mkdir -p "$paperclip_cwd" || exit 97',
    "if " .. sync_tar.SUPPORT_SCRIPT .. "; then echo tar; else echo no-tar; fi",
  }, "\n")
end

local LEASE_KEYS = {
  "provider", "vmName", "sshDest", "httpsUrl", "region", "regionDisplay", "shellCommand",
  "remoteCwd", "timeoutMs", "reuseLease", "resumedLease", "vmSshPort", "commandRunner",
  "nativeFileSyncUnsupported",
}

-- build_lease(ctx, c, vm, requested, resumed [, runner]): runner (acquire, resume) also
-- installs ph-sandbox-helper on the VM (host.remote.runner: one SSH round trip when it is
-- there, the upload otherwise) and says in commandRunner which runner commands will use; a
-- probe, whose VM is deleted at once, skips it.
local function build_lease(ctx, c, vm, requested, resumed, runner)
  local t, err = target(c, vm)
  if not t then
    return nil, err
  end
  if type(requested) == "string" then
    requested = requested:find("%S") and util.trim(requested) or nil
  else
    requested = nil
  end
  local res, code
  res, err, code = remote.run(t, lease_script(requested), { timeout = seconds(ctx, c) })
  if not res then
    return nil, transport_failure("inspect", vm.name, err, code)
  end
  if res.timed_out or res.exit_code ~= 0 then
    local action = res.exit_code == 97 and "create workspace for" or "inspect"
    return nil, format_failure(action, vm.name, res.stdout, res.stderr)
  end
  local lines = {}
  for line in (res.stdout .. "\n"):gmatch("([^\n]*)\n") do
    lines[#lines + 1] = line:gsub("\r$", "")
  end
  local shell = util.trim(lines[#lines - 3] or "") == "bash" and "bash" or "sh"
  local cwd = lines[#lines - 2] or ""
  local tar = lines[#lines - 1]
  local function null(v)
    return v == nil and json.null or v
  end
  return {
    providerLeaseId = vm.name,
    metadata = json.ordered({
      provider = "exe-dev",
      vmName = vm.name,
      sshDest = vm.sshDest,
      httpsUrl = null(vm.httpsUrl),
      region = null(vm.region),
      regionDisplay = null(vm.regionDisplay),
      shellCommand = shell,
      remoteCwd = cwd,
      timeoutMs = c.timeoutMs,
      reuseLease = c.reuseLease,
      resumedLease = resumed,
      vmSshPort = vm.sshPort, -- only when the VM record names a port
      commandRunner = runner and (remote.runner(t, vm.name) or remote.RUNNERS.wrapper) or nil,
      nativeFileSyncUnsupported = tar ~= "tar" or nil,
    }, LEASE_KEYS),
  }
end

-- A failure that says nothing about whether exe.dev ran the command: the answer was lost or
-- cut (transport), or a 5xx came from somewhere between us and it. The request itself went
-- out: host.http never re-sends it, so the caller must look before it acts again.
local function ambiguous(kind, status)
  return http.ambiguous(kind) or (kind == "upstream" and (status or 0) >= 500)
end

--- delete_vm(ctx, config, name) -> true | nil, message: `rm`, once more after a transport
-- failure or a 5xx; a VM that is already gone counts as deleted (api.delete). The VM's
-- command server (host.remote) is stopped first; what host.remote keeps about its
-- ph-sandbox-helper goes with it.
local function delete_vm(ctx, c, name)
  remote.close_server(nil, name)
  local ok, err, kind, status = api.delete(ctx, c, name)
  if not ok and ambiguous(kind, status) and kind ~= "canceled" then
    ok, err = api.delete(ctx, c, name)
  end
  if ok then
    remote.forget_helper(nil, name)
  end
  return ok, err
end

-- The cleanup a failed probe or acquire owes: delete the VM with a budget of its own (the
-- request's deadline may be spent); a failure is logged and worded for the caller's error.
local function cleanup(ctx, c, name, reason)
  local ok, err = ctx:cleanup(function(cctx)
    local done, derr = delete_vm(cctx, c, name)
    if not done then
      cctx.log.warn("Failed to delete exe.dev VM %s during %s: %s", name, reason, derr)
    end
    return done, derr
  end)
  if not ok and err then
    return (" The VM %s may still exist and could not be deleted: %s"):format(name, err)
  end
  return ""
end

--- create(ctx, config, name) -> record | nil, message: `new` (or `cp`), reconciled when the
-- answer is ambiguous: `ls` the name it chose and adopt the VM found; when there is none, send
-- `new` once more (exe.dev refuses a name that is taken, so this never makes a second VM) and
-- take a "taken" answer to it as the lost first create: look again. What stays unknown is
-- deleted by name.
local function create(ctx, c, name)
  local vm, err, kind, status = api.create(ctx, c, name)
  if vm or not ambiguous(kind, status) then
    return vm, err
  end
  local first = err
  ctx.log.info("exe.dev create of VM %s answered ambiguously (%s): looking it up", name, err)
  local function lookup()
    if kind == "canceled" or ctx:remaining() <= 0 then
      return nil
    end
    local found = api.lookup(ctx, c, name)
    if found then
      ctx.log.info("exe.dev VM %s exists after all: adopting it", name)
    end
    return found
  end
  local found = lookup()
  if found then
    return found
  elseif found == false then -- not there: the lost create did not run
    vm, err, kind, status = api.create(ctx, c, name)
    if vm then
      return vm
    elseif kind == "conflict" or ambiguous(kind, status) then -- taken: made by the lost one
      found = lookup()
      if found then
        return found
      end
    else
      return nil, err .. cleanup(ctx, c, name, "cleanup of a failed create")
    end
  end
  return nil, first .. cleanup(ctx, c, name, "cleanup of an ambiguous create")
end

------------------------------------------------------------------------------------------------
-- Hooks

--- environmentProbe: create a VM, inspect it and prepare the workspace, always delete it.
function hooks.probe(ctx, params)
  local c = config_of(ctx)
  local keys = { "provider", "timeoutMs", "reuseLease", "error" }
  local function failed(err)
    return {
      ok = false,
      summary = "exe.dev environment probe failed.",
      metadata = json.ordered({ provider = "exe-dev", timeoutMs = c.timeoutMs,
        reuseLease = c.reuseLease, error = log.redact(tostring(err)) }, keys),
    }
  end
  local unreachable = identity_problem(c)
  if unreachable then
    return failed(unreachable)
  end
  local name = api.vm_name(c, params, true)
  local vm, err = create(ctx, c, name)
  if not vm then
    return failed(err)
  end
  local done, lease, lerr = pcall(build_lease, ctx, c, vm, nil, false)
  local left = cleanup(ctx, c, vm.name, "probe cleanup")
  if not done or not lease then
    return failed((done and lerr or tostring(lease):gsub("^[^\n]-%.lua:%d+: ", "")) .. left)
  end
  return {
    ok = true,
    summary = ("Connected to exe.dev VM %s."):format(vm.name),
    metadata = json.ordered({
      provider = "exe-dev",
      vmName = vm.name,
      sshDest = vm.sshDest,
      timeoutMs = c.timeoutMs,
      reuseLease = c.reuseLease,
      remoteCwd = lease.metadata.remoteCwd,
      shellCommand = lease.metadata.shellCommand,
    }, { "provider", "vmName", "sshDest", "timeoutMs", "reuseLease", "remoteCwd",
      "shellCommand" }),
  }
end

--- environmentAcquireLease: `new` (or `cp` from sourceVm), then inspect and prepare the
-- workspace; a half-made VM is deleted and the original error reported.
function hooks.acquire_lease(ctx, params)
  local c = config_of(ctx)
  local unreachable = identity_problem(c)
  if unreachable then
    return nil, unreachable -- before creating a VM nobody could reach
  end
  local name = api.vm_name(c, params, false)
  local vm, err = create(ctx, c, name)
  if not vm then
    return nil, err
  end
  local lease
  lease, err = build_lease(ctx, c, vm, params.requestedCwd, false, true)
  if not lease then
    return nil, err .. cleanup(ctx, c, vm.name, "cleanup of a failed acquire")
  end
  return lease
end

--- environmentResumeLease: `ls` the VM; gone -> {providerLeaseId = null, expired}; otherwise
-- inspect it again and keep the lease's remoteCwd.
function hooks.resume_lease(ctx, params)
  local c = config_of(ctx)
  local id = params.providerLeaseId
  local vm, err
  if id then
    vm, err = api.lookup(ctx, c, id)
    if vm == nil then
      return nil, err
    end
  end
  if not vm then
    return { providerLeaseId = json.null, metadata = { expired = true } }
  end
  return build_lease(ctx, c, vm, util.nonblank(params.leaseMetadata.remoteCwd), true, true)
end

--- environmentReleaseLease: keep the VM with reuseLease, else delete it. A VM already gone is
-- deleted; a transport failure or a 5xx is tried once more; any other failure is an error
-- reply (an exe.dev VM never expires: an unseen failure would bill on).
function hooks.release_lease(ctx, params)
  local id = params.providerLeaseId
  if not id then
    return true
  end
  local c = config_of(ctx)
  if c.reuseLease then
    remote.close_server(nil, id) -- the VM stays, its command server ends with the lease's use
    return true
  end
  return delete_vm(ctx, c, id)
end

--- environmentDestroyLease: delete the VM, as release does.
function hooks.destroy_lease(ctx, params)
  local id = params.providerLeaseId
  if not id then
    return true
  end
  return delete_vm(ctx, config_of(ctx), id)
end

--- environmentRealizeWorkspace: upstream's cwd order, then mkdir -p on the VM.
function hooks.realize_workspace(ctx, params)
  local c = config_of(ctx)
  local meta, ws = params.lease.metadata, params.workspace
  local function given(v)
    return util.nonblank(v) and v
  end
  local cwd = util.nonblank(meta.remoteCwd) or given(ws.remotePath)
    or given(ws.localPath) or "/tmp/paperclip-workspace"
  local vm = api.from_lease(params.lease.providerLeaseId, meta)
  if vm then
    local t, err = target(c, vm)
    if not t then
      return nil, err
    end
    local res, code
    res, err, code = remote.run(t, "mkdir -p " .. api.quote(cwd), { timeout = seconds(ctx, c) })
    if not res then
      return nil, transport_failure("create workspace for", vm.name, err, code)
    elseif res.timed_out or res.exit_code ~= 0 then
      return nil, format_failure("create workspace for", vm.name, res.stdout, res.stderr)
    end
  end
  return { cwd = cwd, metadata = { provider = "exe-dev", remoteCwd = cwd } }
end

--- environmentExecute: the command over the VM's pooled SSH session (host.remote): the
-- caller's env over a minimal base (no profile), stdin in full, a non-zero exit a result, a
-- timeout exitCode null with the partial output and the remote process group killed.
function hooks.execute(ctx, params)
  local id = params.lease.providerLeaseId
  if not id then
    return host_params.no_lease_result({ signal = json.null })
  end
  local c = config_of(ctx)
  local meta = params.lease.metadata
  local vm = api.from_lease(id, meta)
  local t, err = target(c, vm)
  if not t then
    return nil, err
  end
  local res, code
  res, err, code = remote.execute(ctx, t, params, {
    cwd = util.nonblank(meta.remoteCwd),
    scope = id,
    timeout_ms = c.timeoutMs,
    metadata = json.ordered({ provider = "exe-dev", vmName = vm.name, sshDest = vm.sshDest },
      { "provider", "vmName", "sshDest" }),
  })
  if not res then
    return nil, transport_failure("execute commands on", vm.name, err, code)
  end
  -- upstream's onboarding and key-format guidance; any other stderr is left as it is
  if not res.timedOut and res.exitCode ~= 0 and res.exitCode ~= json.null then
    local guided = format_failure("execute commands on", vm.name, res.stdout, res.stderr)
    if guided:find("not registered with exe.dev", 1, true)
      or guided:find("isn't an OpenSSH-format private key", 1, true) then
      res.stderr = guided
    end
  end
  return res
end

--- sandbox_helper (our extension): the path of ph-sandbox-helper on the VM, installed once
-- (host.remote.install_helper, kept per lease); "unsupported" where it cannot run.
function hooks.sandbox_helper(ctx, params)
  local vm = api.from_lease(params.lease.providerLeaseId, params.lease.metadata)
  if not vm then
    return nil, "exe.dev: no VM to install ph-sandbox-helper on", "unsupported"
  end
  local t, err = target(config_of(ctx), vm)
  if not t then
    return nil, err, "config"
  end
  local path, code
  path, err, code = remote.install_helper(t, { scope = vm.name })
  if not path then
    return nil, ("exe.dev: ph-sandbox-helper cannot be used on VM %s: %s"):format(vm.name, err),
      code
  end
  return path
end

--- duplex (our extension): a long-lived command on one SSH channel of the VM's pooled session
-- (host.remote.duplex), run as execute runs one; the bridge's relay rides on it.
function hooks.duplex(ctx, params)
  local vm = api.from_lease(params.lease.providerLeaseId, params.lease.metadata)
  if not vm then
    return nil, "exe.dev: no VM to run a duplex command on", "not_found"
  end
  local t, err = target(config_of(ctx), vm)
  if not t then
    return nil, err, "config"
  end
  local d, code
  d, err, code = remote.duplex(t, params, { cwd = util.nonblank(params.lease.metadata.remoteCwd) })
  if not d then
    return nil, transport_failure("start a command on", vm.name, err, code), code
  end
  return d
end

--- environmentSyncIn / environmentSyncOut (upstream has neither: the host's fallback moved
-- the workspace as base64 through execute): tar streams through a duplex on the VM's pooled
-- SSH connection (host.sync_tar); the whole VM is the sandbox.
hooks.sync_in, hooks.sync_out = sync_tar.hooks(function()
  return { name = "exe.dev", duplex = hooks.duplex }
end)

--- environmentCancelExecution: exactly that command's process group, for an execution this
-- worker does not track (the worker cancels its own through execute): the remote cancel
-- script, which finds the group by the lease and the executionId, also after a restart.
function hooks.cancel_execution(ctx, params)
  local exec_id = params.executionId
  local vm = api.from_lease(params.lease.providerLeaseId, params.lease.metadata)
  if not vm then
    return { executionId = exec_id, cancelled = false }
  end
  local t, err = target(config_of(ctx), vm)
  if not t then
    return nil, err
  end
  local ok, cerr, code = remote.cancel(t, { execution_id = exec_id, scope = vm.name })
  if not ok then
    return nil, code and transport_failure("cancel a command on", vm.name, cerr, code) or cerr
  end
  return { executionId = exec_id, cancelled = true }
end

return M
