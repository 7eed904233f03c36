--- host.cli.manifest: the Paperclip plugin manifest generated from a provider (worker-protocol
-- section 5).
local json = require("host.json")

local M = {}

--- build(provider) -> manifest table (key order kept for a readable, stable file)
function M.build(p)
  local m = p.manifest or {}
  local driver = json.ordered({
    driverKey = p.driver_key,
    kind = "sandbox_provider",
    displayName = m.driver_display_name or p.display_name,
    description = m.driver_description or p.description or p.display_name,
    configSchema = p.schema:json_schema(),
  }, { "driverKey", "kind", "displayName", "description", "configSchema" })
  local caps = {}
  for k, v in pairs(p.capabilities or {}) do
    caps[k] = v
  end
  if next(caps) then
    driver.sandboxCapabilities = caps -- unlisted keys follow the ordered ones
  end
  return json.ordered({
    id = m.id or ("provider-host." .. p.driver_key),
    apiVersion = 1,
    version = p.version,
    displayName = m.display_name or p.display_name,
    description = m.description or p.description or (p.display_name .. " sandbox provider"),
    author = m.author or "provider-host",
    categories = json.array(m.categories or { "automation" }),
    capabilities = json.array({ "environment.drivers.register" }),
    entrypoints = { worker = "./dist/worker.js" },
    environmentDrivers = json.array({ driver }),
  }, {
    "id",
    "apiVersion",
    "version",
    "displayName",
    "description",
    "author",
    "categories",
    "capabilities",
    "entrypoints",
    "environmentDrivers",
  })
end

return M
