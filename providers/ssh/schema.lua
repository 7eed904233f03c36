-- providers/ssh/schema.lua: the ssh provider's config: where the machine is, how to log in,
-- where the lease workspaces live, and the command timeout.
local schema = require("host.schema")

return schema.new({
  { "host", "string", required = true, trim = true, blank = "error",
    description = "Host name or address of the machine." },
  { "port", "integer", default = 22, between = { 1, 65535 }, description = "SSH port." },
  { "user", "string", trim = true, blank = "null",
    description = "Login user on the machine (default: the account running Paperclip, as ssh)." },
  { "privateKey", "string", secret = true, trim = true, blank = "null",
    description = "Private key (OpenSSH or PEM, unencrypted). Kept in memory only. Without it "
      .. "and identityFile: the ssh-agent, then ~/.ssh/id_rsa, id_ecdsa, id_ed25519, as ssh." },
  { "identityFile", "string", trim = true, blank = "null", pattern = "^/",
    description = "Absolute path of a private key file on this host, used without privateKey." },
  { "hostKeyPolicy", "string", default = "accept-new", one_of = { "accept-new", "yes", "no" },
    description = "accept-new: remember a new host, refuse a changed key; yes: the host must be "
      .. "in the known_hosts file already; no: accept any key (not recommended)." },
  { "knownHostsFile", "string", trim = true, blank = "null", pattern = "^/",
    description = "known_hosts file to use (default: ~/.ssh/known_hosts of the account running "
      .. "Paperclip, as ssh)." },
  { "workspaceRoot", "string", default = "$HOME/paperclip-workspaces", trim = true,
    blank = "default", description = "Remote directory holding the lease workspaces.",
    check = function(v)
      if not (v:find("^/") or v:find("^~/") or v:find("^%$HOME/") or v == "~" or v == "$HOME") then
        return "workspaceRoot must be absolute or start with ~/ or $HOME/."
      end
    end },
  { "timeoutMs", "integer", default = 300000, between = { 1, 86400000 }, truncate = true,
    description = "Default command timeout in milliseconds." },
  { "reuseLease", "boolean", default = false,
    description = "Keep the workspace on release so a later run can resume it." },
  { "syncMaxBytes", "integer", default = 10 * 1024 * 1024 * 1024, between = { 1, 1 << 50 },
    truncate = true,
    description = "Largest environmentSyncIn/SyncOut operation in bytes (default 10 GiB)." },
  { "useSandboxHelper", "boolean", default = true,
    description = "Run commands through ph-sandbox-helper (a static binary copied once into "
      .. "~/.paperclip/bin on the machine): one process per command instead of a shell "
      .. "wrapper's ten. Where it cannot run, commands use the shell wrapper anyway." },
})
