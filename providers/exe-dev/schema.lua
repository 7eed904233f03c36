-- providers/exe-dev/schema.lua: the config form of upstream 0.1.2's manifest, field for field:
-- same names, order, types, defaults, UI groups and descriptions. The hooks do not read the
-- normalized config this builds: they parse the raw config with upstream's own rules
-- (config.lua), so that e.g. an absent memory stays null (the manifest's "4GB" default only
-- pre-fills the form). Nothing here may reject a config that upstream accepts.
local schema = require("host.schema")

local function group(name)
  return { advanced = true, group = name }
end

return schema.new({
  -- Essentials (always visible, in this order)
  {
    "apiKey",
    "string",
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
    secret = true,
    trim = true,
    blank = "null",
    max_length = 8192,
    description = "Paste the SSH private key you registered with exe.dev, or pick a saved "
      .. "secret. Leave blank to fall back to an on-host key (see Advanced → SSH access).",
  },
  -- SSH access
  {
    "sshUser",
    "string",
    trim = true,
    blank = "null",
    description = "Login user on the VM. Leave blank to use the image default, usually `root`.",
    ui = group("SSH access"),
  },
  {
    "sshIdentityFile",
    "string",
    trim = true,
    blank = "null",
    description = "Absolute path to a private key on the Paperclip host. Used only when SSH "
      .. "Private Key is empty.",
    ui = group("SSH access"),
  },
  {
    "sshPort",
    "integer",
    default = 22,
    truncate = true,
    description = "SSH port for direct VM access.",
    ui = group("SSH access"),
  },
  {
    "strictHostKeyChecking",
    "string",
    default = "accept-new",
    trim = true,
    blank = "default",
    description = "Host key policy passed to ssh via StrictHostKeyChecking. Typical values are "
      .. "`accept-new`, `yes`, or `no`.",
    ui = group("SSH access"),
  },
  -- VM resources
  {
    "image",
    "string",
    trim = true,
    blank = "null",
    description = "Optional container image to use when creating the VM.",
    ui = group("VM resources"),
  },
  {
    "cpu",
    "integer",
    default = 4,
    truncate = true,
    description = "Optional CPU count passed to `exe.dev new --cpu`.",
    ui = group("VM resources"),
  },
  {
    "memory",
    "string",
    default = "4GB",
    trim = true,
    blank = "default",
    description = "Optional memory size such as `4GB`.",
    ui = group("VM resources"),
  },
  {
    "disk",
    "string",
    default = "20GB",
    trim = true,
    blank = "default",
    description = "Optional disk size such as `20GB`.",
    ui = group("VM resources"),
  },
  -- VM creation
  {
    "sourceVm",
    "string",
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
    trim = true,
    blank = "null",
    description = "Optional container command passed to `exe.dev new --command`.",
    ui = group("VM creation"),
  },
  {
    "env",
    "map",
    elements = "string",
    description = "Optional environment variables applied at VM creation time.",
    ui = group("VM creation"),
  },
  {
    "integrations",
    "array",
    elements = "string",
    comma_list = true,
    description = "Optional exe.dev integrations to attach during VM creation.",
    ui = group("VM creation"),
  },
  {
    "tags",
    "array",
    elements = "string",
    comma_list = true,
    description = "Optional tags to apply during VM creation.",
    ui = group("VM creation"),
  },
  {
    "setupScript",
    "string",
    trim = true,
    blank = "null",
    description = "Optional first-boot setup script passed to `exe.dev new --setup-script`.",
    ui = group("VM creation"),
  },
  {
    "prompt",
    "string",
    trim = true,
    blank = "null",
    description = "Optional Shelley prompt passed to `exe.dev new --prompt`.",
    ui = group("VM creation"),
  },
  {
    "comment",
    "string",
    trim = true,
    blank = "null",
    description = "Optional short note attached to created VMs.",
    ui = group("VM creation"),
  },
  {
    "namePrefix",
    "string",
    default = "paperclip",
    trim = true,
    blank = "default",
    description = "Optional prefix used when generating VM names.",
    ui = group("VM creation"),
  },
  -- API + runtime
  {
    "apiUrl",
    "string",
    trim = true,
    blank = "null",
    description = "Optional exe.dev HTTPS API base URL or /exec endpoint. Defaults to "
      .. "https://exe.dev/exec.",
    ui = group("API + runtime"),
  },
  {
    "timeoutMs",
    "integer",
    default = 300000,
    truncate = true,
    description = "Timeout for VM lifecycle and SSH operations in milliseconds.",
    ui = group("API + runtime"),
  },
  {
    "reuseLease",
    "boolean",
    default = false,
    description = "Whether to keep the VM alive between runs instead of deleting it on release.",
    ui = group("API + runtime"),
  },
})
