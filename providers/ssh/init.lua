-- providers/ssh: any machine you can reach over SSH becomes a sandbox. Each lease is a private
-- directory (mode 0700) under workspaceRoot on that machine, holding workspace/ (the commands'
-- cwd) and home/ (their HOME); it is removed on release unless the lease is reused.
-- Commands run through host.remote: one pooled SSH connection per machine, the caller's env
-- over a minimal base, stdin in full, live output, timeouts and cancels that stop exactly the
-- command's process group; ph-sandbox-helper runs them where it can (installed at acquire and
-- resume, said in the lease's commandRunner): one `ph-sandbox-helper serve` per lease, started
-- by its first execute and stopped at release and destroy. Copy this file to write your own
-- SSH-based provider.
local json = require("host.json")
local host_params = require("host.params")
local remote = require("host.remote")
local shell = require("host.shell")
local sync_tar = require("host.sync_tar")
local util = require("host.util")

local M = {
  driver_key = "ssh",
  display_name = "SSH Machine",
  description = "Runs commands in private workspaces on any machine reachable over SSH.",
  version = "0.1.0",
  schema = require("providers.ssh.schema"),
  capabilities = { reusableLeases = true, nativeSyncIn = true, nativeSyncOut = true },
  hooks = {},
}
local hooks = M.hooks

-- A root is absolute, or starts with ~/ or $HOME/ (resolved on the remote machine).
local function root_expr(root)
  local rest = root:match("^~/(.*)$") or root:match("^%$HOME/(.*)$")
  if root == "~" or root == "$HOME" then
    return '"$HOME"'
  end
  return rest and ('"$HOME"/' .. shell.quote(rest)) or shell.quote(root)
end

local function target(ctx)
  local c = ctx.config
  local t, err = remote.target({
    host = c.host, port = c.port, user = c.user,
    key = c.privateKey,
    key_file = c.identityFile,
    host_key_policy = c.hostKeyPolicy,
    known_hosts = c.knownHostsFile,
  })
  return t, err and ("ssh: " .. err)
end

-- Run a short management script; nil, message unless it exits 0 (or one of `ok_codes`).
local function run(ctx, what, script, ok_codes)
  local t, err = target(ctx)
  if not t then
    return nil, err
  end
  local res, code
  res, err, code = remote.run(t, script, { timeout = math.min(60, ctx:remaining()) })
  if not res then
    return nil, ("ssh: cannot %s on %s: %s"):format(what, ctx.config.host, err), code
  end
  if res.exit_code ~= 0 and not (ok_codes or {})[res.exit_code] then
    local detail = res.timed_out and "timed out" or res.stderr:gsub("%s+$", "")
    return nil, ("ssh: cannot %s on %s (exit %s): %s"):format(what, ctx.config.host,
      tostring(res.exit_code), detail ~= "" and detail or "no output")
  end
  return res
end

-- A lease id is the lease directory: absolute, no dot segments, named paperclip-<hex>.
local function lease_dir(id)
  if type(id) ~= "string" or not id:find("^/.*/paperclip%-%x+$") or id:find("/%.%.?/") then
    return nil
  end
  return id
end

-- Which runner the lease's commands use: ph-sandbox-helper, installed now (one round trip
-- when the machine has it already, the upload otherwise), or the shell wrapper.
local function command_runner(ctx, dir)
  if not ctx.config.useSandboxHelper then
    return remote.RUNNERS.wrapper
  end
  local t = target(ctx)
  return t and remote.runner(t, dir) or remote.RUNNERS.wrapper
end

-- The end of a lease script: its shell, and whether native sync can run there (GNU tar).
local function lease_tail_script()
  return remote.SHELL_DETECT .. "\nif " .. sync_tar.SUPPORT_SCRIPT
    .. "; then echo tar; else echo no-tar; fi"
end

local function last_line(s)
  return s:gsub("%s+$", ""):match("([^\n]*)$")
end

-- The shell and tar lines a lease script ended with.
local function lease_tail(stdout)
  return stdout:gsub("%s+$", ""):match("([^\n]*)\n([^\n]*)$")
end

local function lease(ctx, dir, shell_name, tar, resumed)
  return {
    providerLeaseId = dir,
    metadata = { provider = "ssh", shellCommand = shell_name, remoteCwd = dir .. "/workspace",
      remoteHome = dir .. "/home", timeoutMs = ctx.config.timeoutMs,
      reuseLease = ctx.config.reuseLease, resumedLease = resumed,
      commandRunner = command_runner(ctx, dir),
      nativeFileSyncUnsupported = tar ~= "tar" or nil },
  }
end

--- environmentProbe: can we log in, make the workspace root and write there? Which shell?
function hooks.probe(ctx, _params)
  local res, err = run(ctx, "check the workspace root", "r=" .. root_expr(ctx.config.workspaceRoot)
    .. ' && mkdir -p "$r" && test -w "$r" && ' .. remote.SHELL_DETECT)
  local meta = { provider = "ssh", host = ctx.config.host, error = err }
  if not res then
    return { ok = false, summary = "SSH machine probe failed.", metadata = meta }
  end
  meta.shellCommand = last_line(res.stdout)
  local user = ctx.config.user or (remote.account() or { name = "?" }).name
  return { ok = true, summary = ("Connected to %s@%s."):format(user, ctx.config.host),
    metadata = meta }
end

--- environmentAcquireLease: a new private (0700) lease directory with workspace/ and home/.
function hooks.acquire_lease(ctx, _params)
  local name = "paperclip-" .. util.hex(assert(util.random(8)))
  local res, err = run(ctx, "create a workspace", table.concat({
    "r=" .. root_expr(ctx.config.workspaceRoot),
    'd="$r/' .. name .. '"',
    'mkdir -p "$r" && mkdir -m 700 "$d" && mkdir -m 700 "$d/workspace" "$d/home" || exit 1',
    "printf '%s\\n' \"$d\"",
    lease_tail_script(),
  }, "\n"))
  if not res then
    return nil, err
  end
  local dir, shell_name, tar = res.stdout:match("([^\n]*)\n([^\n]*)\n([^\n]*)\n?$")
  if not lease_dir(dir) then
    return nil, "ssh: the workspace root must resolve to an absolute path, got " .. tostring(dir)
  end
  return lease(ctx, dir, shell_name, tar, false)
end

--- environmentResumeLease: the lease if its workspace/ still exists, else "expired".
function hooks.resume_lease(ctx, params)
  local dir = lease_dir(params.providerLeaseId)
  local expired = { providerLeaseId = json.null, metadata = { expired = true } }
  if not dir then
    return expired
  end
  local res, err = run(ctx, "check the workspace", "[ -d " .. shell.quote(dir)
    .. "/workspace ] || exit 3\n" .. lease_tail_script(), { [3] = true })
  if not res then
    return nil, err
  elseif res.exit_code == 3 then
    return expired
  end
  local shell_name, tar = lease_tail(res.stdout)
  return lease(ctx, dir, shell_name, tar, true)
end

-- The lease's command server (host.remote runs its commands there) ends with the lease's use;
-- its commands are stopped with it.
local function close_server(id)
  local dir = lease_dir(id)
  if dir then
    remote.close_server(nil, dir)
  end
end

local function remove(ctx, id)
  local dir = lease_dir(id)
  if not dir then
    return true -- not one of ours (or null): nothing to remove
  end
  close_server(dir)
  local ok, err = run(ctx, "remove the workspace", "rm -rf -- " .. shell.quote(dir))
  local t = target(ctx)
  if ok and t then
    remote.forget_helper(t, dir) -- the helper stays on the machine for its next leases
  end
  return ok and true, err
end

--- environmentReleaseLease: remove the lease directory unless the lease is reused.
function hooks.release_lease(ctx, params)
  close_server(params.providerLeaseId)
  return ctx.config.reuseLease or remove(ctx, params.providerLeaseId)
end

--- environmentDestroyLease: remove the lease directory (only one of ours; missing is fine).
function hooks.destroy_lease(ctx, params)
  return remove(ctx, params.providerLeaseId)
end

--- environmentRealizeWorkspace: mkdir -p of the lease's remoteCwd (or the workspace path).
function hooks.realize_workspace(ctx, params)
  local meta, ws = params.lease.metadata, params.workspace
  local cwd = (type(meta.remoteCwd) == "string" and meta.remoteCwd ~= "" and meta.remoteCwd)
    or (type(ws.remotePath) == "string" and ws.remotePath ~= "" and ws.remotePath)
  if not cwd then
    return nil, "ssh: no workspace path to realize (the lease has no remoteCwd)"
  end
  local ok, err = run(ctx, "create the workspace", "mkdir -p -- " .. shell.quote(cwd))
  if not ok then
    return nil, err
  end
  return { cwd = cwd, metadata = { provider = "ssh", remoteCwd = cwd } }
end

--- environmentExecute: the command through host.remote, in the lease's workspace and HOME.
function hooks.execute(ctx, params)
  local dir = lease_dir(params.lease.providerLeaseId)
  if not dir then
    return host_params.no_lease_result({ signal = json.null })
  end
  local t, err = target(ctx)
  if not t then
    return nil, err
  end
  local meta = params.lease.metadata
  local helper -- nil: host.remote installs ph-sandbox-helper once per lease, or falls back
  if not ctx.config.useSandboxHelper then
    helper = false
  end
  local res
  res, err = remote.execute(ctx, t, params, {
    cwd = type(meta.remoteCwd) == "string" and meta.remoteCwd or dir .. "/workspace",
    home = dir .. "/home",
    scope = dir,
    metadata = { provider = "ssh", host = ctx.config.host },
    helper = helper,
  })
  if not res then
    return nil, ("ssh: cannot run the command on %s: %s"):format(ctx.config.host, err)
  end
  return res
end

--- sandbox_helper (our extension): the path of ph-sandbox-helper on the machine, installed
-- once (host.remote.install_helper, kept per lease); "unsupported" where it cannot run or
-- useSandboxHelper is false.
function hooks.sandbox_helper(ctx, params)
  local dir = lease_dir(params.lease.providerLeaseId)
  if not dir then
    return nil, "ssh: no lease to install ph-sandbox-helper for", "unsupported"
  elseif not ctx.config.useSandboxHelper then
    return nil, "ssh: ph-sandbox-helper is disabled (useSandboxHelper is false)", "unsupported"
  end
  local t, err = target(ctx)
  if not t then
    return nil, err, "config"
  end
  local path, code
  path, err, code = remote.install_helper(t, { scope = dir })
  if not path then
    return nil, ("ssh: ph-sandbox-helper cannot be used on %s: %s"):format(ctx.config.host, err),
      code
  end
  return path
end

--- duplex (our extension): a long-lived command on one SSH channel of the pooled session,
-- run as execute runs one (host.remote.duplex); the bridge's relay rides on it.
function hooks.duplex(ctx, params)
  local dir = lease_dir(params.lease.providerLeaseId)
  if not dir then
    return nil, "ssh: no lease to run a duplex command in", "not_found"
  end
  local t, err = target(ctx)
  if not t then
    return nil, err, "config"
  end
  local meta = params.lease.metadata
  local d, code
  d, err, code = remote.duplex(t, params, {
    cwd = type(meta.remoteCwd) == "string" and meta.remoteCwd or dir .. "/workspace",
    home = dir .. "/home",
  })
  if not d then
    return nil, ("ssh: cannot start the command on %s: %s"):format(ctx.config.host, err), code
  end
  return d
end

--- environmentSyncIn / environmentSyncOut: tar streams through a duplex on the pooled SSH
-- connection (host.sync_tar), every sandbox path inside the lease directory.
hooks.sync_in, hooks.sync_out = sync_tar.hooks(function(_, params, method)
  local dir = lease_dir(params.lease.providerLeaseId)
  if not dir then
    return nil, ("ssh: %s: %s is not a lease directory of this provider"):format(method,
      tostring(params.lease.providerLeaseId)), "not_found"
  end
  return { name = "ssh", duplex = hooks.duplex, confine = dir, workspace = dir .. "/workspace" }
end)

--- environmentCancelExecution: an execution this worker does not track (the worker cancels
-- its own): the remote cancel script finds its process group by lease and executionId.
function hooks.cancel_execution(ctx, params)
  local id = params.executionId
  local dir = lease_dir(params.lease.providerLeaseId)
  if not dir then
    return { executionId = id, cancelled = false }
  end
  local t, err = target(ctx) -- not tracked here (e.g. after a restart): the remote script
  if not t then
    return nil, err
  end
  local ok
  ok, err = remote.cancel(t, { execution_id = id, scope = dir })
  if not ok then
    return nil, "ssh: cannot cancel the command: " .. tostring(err)
  end
  return { executionId = id, cancelled = true }
end

return M
