-- providers/exe-dev/schema.lua: the config of upstream 0.1.2, field for field: the manifest's
-- form (names, order, types, form defaults, UI groups, descriptions) and upstream's own parse
-- (parseDriverConfig: JavaScript's loose reading, an absent memory stays null although the
-- form pre-fills "4GB"), validation (its errors in its order and words) and warnings. This is
-- the only config parser: the hooks read ctx.config. Nothing here may reject a config that
-- upstream accepts, except the host-key policies OpenSSH itself refuses.
local api = require("providers.exe-dev.api")
local config = require("providers.exe-dev.config")
local remote = require("host.remote")
local schema = require("host.schema")
local json = require("host.json")
local shell = require("host.shell")

local WARN_SSH = "The Paperclip host must have SSH access to the created exe.dev VM, and its SSH "
  .. "key must be registered with exe.dev. The API token only covers provisioning."
local WARN_REUSE = "reuseLease keeps the VM alive between runs; this provider does not suspend "
  .. "retained VMs."

local function group(name)
  return { advanced = true, group = name }
end

return schema.new({
  -- Essentials (always visible, in this order)
  {
    "apiKey",
    "string",
    loose = true,
    secret = true,
    trim = true,
    blank = "null",
    description = "Paste your exe.dev API token, or pick a saved Paperclip secret. Create one at "
      .. "exe.dev → Settings → API tokens with `/exec` scope (`new`, `ls`, `rm`, plus `cp` if you "
      .. "use Source VM).",
  },
  {
    "sshPrivateKey",
    "string",
    loose = true,
    secret = true,
    trim = true,
    blank = "null",
    max_length = 8192,
    check = function(v, _, mode) -- the key text is checked by validation only, as upstream
      if mode == "validate" and not config.is_secret_ref(v) then
        return config.validate_key(v)
      end
    end,
    description = "Paste the SSH private key you registered with exe.dev, or pick a saved "
      .. "secret. Leave blank to fall back to an on-host key (see Advanced → SSH access).",
  },
  -- SSH access
  {
    "sshUser",
    "string",
    loose = true,
    trim = true,
    blank = "null",
    description = "Login user on the VM. Leave blank to use the image default, usually `root`.",
    ui = group("SSH access"),
  },
  {
    "sshIdentityFile",
    "string",
    loose = true,
    trim = true,
    blank = "null",
    description = "Absolute path to a private key on the Paperclip host. Used only when SSH "
      .. "Private Key is empty.",
    ui = group("SSH access"),
  },
  {
    "sshPort",
    "integer",
    loose = true,
    default = 22,
    between = { 1, 65535 },
    message = "sshPort must be between 1 and 65535.",
    description = "SSH port for direct VM access.",
    ui = group("SSH access"),
  },
  {
    "strictHostKeyChecking",
    "string",
    loose = true,
    default = "accept-new",
    trim = true,
    blank = "error",
    message = "strictHostKeyChecking cannot be empty.",
    check = function(v) -- beyond upstream: what OpenSSH itself would refuse
      if not remote.POLICIES[v] then
        return "strictHostKeyChecking must be accept-new, yes or no (OpenSSH's ask, off, true "
          .. "and false are accepted too)."
      end
    end,
    description = "Host key policy passed to ssh via StrictHostKeyChecking. Typical values are "
      .. "`accept-new`, `yes`, or `no`.",
    ui = group("SSH access"),
  },
  -- VM resources
  {
    "image",
    "string",
    loose = true,
    trim = true,
    blank = "null",
    description = "Optional container image to use when creating the VM.",
    ui = group("VM resources"),
  },
  {
    "cpu",
    "integer",
    loose = true,
    form_default = 4,
    between = { 1, 9007199254740991 },
    message = "cpu must be greater than 0 when provided.",
    description = "Optional CPU count passed to `exe.dev new --cpu`.",
    ui = group("VM resources"),
  },
  {
    "memory",
    "string",
    loose = true,
    form_default = "4GB",
    trim = true,
    blank = "null",
    description = "Optional memory size such as `4GB`.",
    ui = group("VM resources"),
  },
  {
    "disk",
    "string",
    loose = true,
    form_default = "20GB",
    trim = true,
    blank = "null",
    description = "Optional disk size such as `20GB`.",
    ui = group("VM resources"),
  },
  -- VM creation
  {
    "sourceVm",
    "string",
    loose = true,
    title = "Source VM",
    trim = true,
    blank = "null",
    description = "Name of an existing exe.dev VM to copy for each run with `exe.dev cp`, disk "
      .. "and config included. Leave blank to create a fresh VM with `exe.dev new`. Your API "
      .. "token must allow `cp`: tokens list their permitted commands, and one without `cp` "
      .. "fails with a 403. When set, image, command, env, integrations, tags, setup script, "
      .. "prompt, and comment are ignored.",
    ui = group("VM creation"),
  },
  {
    "command",
    "string",
    loose = true,
    trim = true,
    blank = "null",
    description = "Optional container command passed to `exe.dev new --command`.",
    ui = group("VM creation"),
  },
  {
    "env",
    "map",
    elements = "string",
    loose = true,
    check = function(env)
      local errors = {}
      for _, k in ipairs(api.sorted_keys(env)) do
        if not shell.is_env_key(k) then
          errors[#errors + 1] = "env contains an invalid key: " .. k
        end
      end
      return errors[1] and errors
    end,
    description = "Optional environment variables applied at VM creation time.",
    ui = group("VM creation"),
  },
  {
    "integrations",
    "array",
    elements = "string",
    comma_list = true,
    loose = true,
    description = "Optional exe.dev integrations to attach during VM creation.",
    ui = group("VM creation"),
  },
  {
    "tags",
    "array",
    elements = "string",
    comma_list = true,
    loose = true,
    description = "Optional tags to apply during VM creation.",
    ui = group("VM creation"),
  },
  {
    "setupScript",
    "string",
    loose = true,
    trim = true,
    blank = "null",
    description = "Optional first-boot setup script passed to `exe.dev new --setup-script`.",
    ui = group("VM creation"),
  },
  {
    "prompt",
    "string",
    loose = true,
    trim = true,
    blank = "null",
    description = "Optional Shelley prompt passed to `exe.dev new --prompt`.",
    ui = group("VM creation"),
  },
  {
    "comment",
    "string",
    loose = true,
    trim = true,
    blank = "null",
    description = "Optional short note attached to created VMs.",
    ui = group("VM creation"),
  },
  {
    "namePrefix",
    "string",
    loose = true,
    default = "paperclip",
    trim = true,
    blank = "default",
    normalize = api.name_prefix,
    description = "Optional prefix used when generating VM names.",
    ui = group("VM creation"),
  },
  -- API + runtime
  {
    "apiUrl",
    "string",
    loose = true,
    fill = api.DEFAULT_API_URL,
    trim = true,
    blank = "default",
    normalize = api.normalize_url,
    check = function(v)
      if not api.valid_url(v) then
        return "apiUrl must be a valid URL."
      end
    end,
    description = "Optional exe.dev HTTPS API base URL or /exec endpoint. Defaults to "
      .. "https://exe.dev/exec.",
    ui = group("API + runtime"),
  },
  {
    "timeoutMs",
    "integer",
    loose = true,
    default = 300000,
    between = { 1, 86400000 },
    message = "timeoutMs must be between 1 and 86400000.",
    description = "Timeout for VM lifecycle and SSH operations in milliseconds.",
    ui = group("API + runtime"),
  },
  {
    "reuseLease",
    "boolean",
    loose = true,
    default = false,
    description = "Whether to keep the VM alive between runs instead of deleting it on release.",
    ui = group("API + runtime"),
  },
}, {
  checks = {
    { -- upstream refuses a config without a key only when validating; at use time the API
      -- call says the same (api.api_key)
      name = "API key",
      fn = function(c, mode)
        if mode == "validate" and c.apiKey == json.null and not api.env_api_key() then
          return api.API_KEY_MISSING
        end
      end,
    },
    { name = "warnings", fn = function(c)
      local warnings = { WARN_SSH }
      if c.sourceVm ~= json.null then
        local ignored = {}
        for _, pair in ipairs({
          { "image", c.image ~= json.null },
          { "command", c.command ~= json.null },
          { "comment", c.comment ~= json.null },
          { "env", next(c.env) ~= nil },
          { "integrations", #c.integrations > 0 },
          { "tags", #c.tags > 0 },
          { "setupScript", c.setupScript ~= json.null },
          { "prompt", c.prompt ~= json.null },
        }) do
          if pair[2] then
            ignored[#ignored + 1] = pair[1]
          end
        end
        if #ignored > 0 then
          warnings[#warnings + 1] = ("sourceVm copies an existing VM with `exe.dev cp`, which "
            .. "does not accept %s; these settings are ignored."):format(
            table.concat(ignored, ", "))
        end
      end
      if c.reuseLease then
        warnings[#warnings + 1] = WARN_REUSE
      end
      return nil, warnings
    end },
  },
  -- upstream's validation order
  error_order = { "apiUrl", "timeoutMs", "cpu", "sshPort", "API key", "env",
    "strictHostKeyChecking", "sshPrivateKey" },
  -- the key order of upstream's normalized config (`{ ...config }`)
  output_order = { "apiKey", "apiUrl", "namePrefix", "sourceVm", "image", "command", "cpu",
    "memory", "disk", "comment", "env", "integrations", "tags", "setupScript", "prompt",
    "timeoutMs", "reuseLease", "sshUser", "sshPrivateKey", "sshIdentityFile", "sshPort",
    "strictHostKeyChecking" },
})
