--- host.cli.examples: example params for every method the worker dispatches, printed by
-- `provider-host call NAME METHOD --example` (shapes from worker-protocol.md, section 3).
-- Each is a request the local provider accepts as it stands, where one applies; a lease-bound
-- one names a lease that does not exist (replace providerLeaseId with one that
-- environmentAcquireLease returned). driverKey, companyId and environmentId are left out:
-- `call` fills them in.
local json = require("host.json")

local M = {}

local LEASE_ID = "/tmp/paperclip-local-EXAMPLE"

local function lease()
  return json.ordered({ providerLeaseId = LEASE_ID, metadata = { remoteCwd = LEASE_ID } },
    { "providerLeaseId", "metadata" })
end

local function o(t, order)
  return json.ordered(t, order)
end

-- Builders, so every print is a fresh table.
local BUILD = {
  initialize = function()
    return o({
      manifest = { id = "example.plugin", apiVersion = 1 },
      config = {},
      instanceInfo = o({ instanceId = "default", hostVersion = "0.0.0" },
        { "instanceId", "hostVersion" }),
      apiVersion = 1,
    }, { "manifest", "config", "instanceInfo", "apiVersion" })
  end,
  health = function()
    return {}
  end,
  configChanged = function()
    return o({ config = {} }, { "config" })
  end,
  shutdown = function()
    return {}
  end,
  environmentValidateConfig = function()
    return o({ config = { timeoutMs = 60000 } }, { "config" })
  end,
  environmentProbe = function()
    return o({ config = {} }, { "config" })
  end,
  environmentAcquireLease = function()
    return o({ config = { reuseLease = false }, runId = "example-run" }, { "config", "runId" })
  end,
  environmentResumeLease = function()
    return o({ config = { reuseLease = true }, providerLeaseId = LEASE_ID,
      leaseMetadata = { remoteCwd = LEASE_ID } }, { "config", "providerLeaseId", "leaseMetadata" })
  end,
  environmentReleaseLease = function()
    return o({ config = {}, providerLeaseId = LEASE_ID, leaseMetadata = { remoteCwd = LEASE_ID } },
      { "config", "providerLeaseId", "leaseMetadata" })
  end,
  environmentDestroyLease = function()
    return o({ config = {}, providerLeaseId = LEASE_ID, leaseMetadata = { remoteCwd = LEASE_ID } },
      { "config", "providerLeaseId", "leaseMetadata" })
  end,
  environmentRealizeWorkspace = function()
    return o({ config = {}, lease = lease(),
      workspace = o({ remotePath = LEASE_ID .. "/work", mode = "isolated" },
        { "remotePath", "mode" }) },
      { "config", "lease", "workspace" })
  end,
  environmentExecute = function()
    return o({ config = {}, lease = lease(), command = "sh",
      args = json.array({ "-c", "echo hello; echo oops >&2; exit 3" }), cwd = LEASE_ID,
      env = { GREETING = "hello" }, timeoutMs = 10000, executionId = "example-execution" },
      { "config", "lease", "command", "args", "cwd", "env", "timeoutMs", "executionId" })
  end,
  environmentCancelExecution = function()
    return o({ config = {}, lease = lease(), executionId = "example-execution" },
      { "config", "lease", "executionId" })
  end,
  environmentSyncIn = function()
    return o({ config = {}, lease = lease(), operations = json.array({ o({
      operationId = "op-1",
      files = json.array({ o({ sourcePath = "/etc/hostname",
        targetPath = LEASE_ID .. "/workspace/hostname",
        kind = "file" }, { "sourcePath", "targetPath", "kind" }) }),
    }, { "operationId", "files" }) }) }, { "config", "lease", "operations" })
  end,
  environmentSyncOut = function()
    return o({ config = {}, lease = lease(), operations = json.array({ o({
      operationId = "op-1",
      files = json.array({ o({ sourcePath = LEASE_ID .. "/workspace/out",
        targetPath = "/path/on/the/host/out",
        kind = "directory" }, { "sourcePath", "targetPath", "kind" }) }),
    }, { "operationId", "files" }) }) }, { "config", "lease", "operations" })
  end,
}

--- METHODS: every method name with an example, in the order a lease's life uses them.
M.METHODS = { "initialize", "health", "configChanged", "environmentValidateConfig",
  "environmentProbe", "environmentAcquireLease", "environmentResumeLease",
  "environmentRealizeWorkspace", "environmentExecute", "environmentCancelExecution",
  "environmentSyncIn", "environmentSyncOut", "environmentReleaseLease",
  "environmentDestroyLease", "shutdown" }

--- get(method) -> example params (a fresh table) | nil
function M.get(method)
  local build = BUILD[method]
  return build and build()
end

return M
