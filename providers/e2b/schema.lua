-- providers/e2b/schema.lua: the four config fields of upstream's E2B provider, same names,
-- defaults and messages (worker-protocol.md 5.5). Never add a field: the manifest must match.
local schema = require("host.schema")

return schema.new({
  {
    "template",
    "string",
    default = "base",
    trim = true,
    blank = "error",
    message = "E2B sandbox environments require a template.",
    description = "E2B sandbox template name. Defaults to base when omitted.",
  },
  {
    "apiKey",
    "string",
    secret = true,
    trim = true,
    blank = "null",
    description = "Environment-specific E2B API key. Paste a key or an existing Paperclip secret "
      .. "reference; saved environments store pasted values as company secrets. Falls back to "
      .. "E2B_API_KEY if omitted.",
  },
  {
    "timeoutMs",
    "integer",
    default = 3600000,
    between = { 1, 86400000 },
    truncate = true,
    message = "timeoutMs must be between 1 and 86400000.",
    description = "Sandbox lifetime in milliseconds, refreshed on each command. Defaults to 1 "
      .. "hour. Raise this if your runs commonly idle longer than the default between commands.",
  },
  {
    "reuseLease",
    "boolean",
    default = false,
    description = "Whether to pause and reuse sandboxes across runs.",
  },
})
