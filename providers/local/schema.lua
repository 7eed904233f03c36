-- providers/local/schema.lua: configuration of the local provider. Its errors read as the
-- generic schema's do ("timeoutMs: must be between 1 and 86400000"): local mirrors no upstream
-- provider, so it has no upstream texts to keep.
local schema = require("host.schema")

return schema.new({
  {
    "timeoutMs",
    "integer",
    default = 300000,
    between = { 1, 86400000 },
    truncate = true,
    description = "Default command timeout in milliseconds.",
  },
  {
    "reuseLease",
    "boolean",
    default = false,
    description = "Keep the workspace on release so a later run can resume it.",
  },
  {
    "root",
    "string",
    trim = true,
    blank = "default",
    pattern = "^/",
    message = "root: must be an absolute path", -- the generic "name: text" form
    description = "Directory that holds the lease workspaces (default: $TMPDIR or /tmp).",
    ui = { advanced = true, group = "Workspace" },
  },
  {
    "shell",
    "string",
    default = "bash",
    one_of = { "bash", "sh" },
    description = "Shell declared to Paperclip as the lease's shellCommand.",
    ui = { advanced = true, group = "Workspace" },
  },
  {
    "syncMaxBytes",
    "integer",
    default = 10 * 1024 * 1024 * 1024,
    between = { 1, 1 << 50 },
    truncate = true,
    description = "Largest environmentSyncIn/SyncOut operation in bytes (default 10 GiB).",
    ui = { advanced = true, group = "Workspace" },
  },
  {
    "isolateNetwork",
    "boolean",
    default = false,
    description = "Run commands without network access (unshare --net; needs user namespaces).",
    ui = { advanced = true, group = "Isolation" },
  },
})
