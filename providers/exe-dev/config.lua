-- providers/exe-dev/config.lua: upstream 0.1.2's SSH private-key validator
-- (validateSshPrivateKey, same texts), and the secret-reference test that skips it. The rest
-- of the config is schema.lua's.
local util = require("host.util")

local M = {}

local trim = util.trim

local UUID = "^%x%x%x%x%x%x%x%x%-%x%x%x%x%-%x%x%x%x%-%x%x%x%x%-%x%x%x%x%x%x%x%x%x%x%x%x$"

--- is_secret_ref(s): a secret UUID as the host stores secret-ref fields (upstream 0.1.1+).
function M.is_secret_ref(s)
  return s:find(UUID) ~= nil
end

------------------------------------------------------------------------------------------------
-- The SSH private-key validator (upstream's validateSshPrivateKey, same texts)

local PUBLIC_PREFIXES = {
  "^ssh%-rsa%s+%S", "^ssh%-dss%s+%S", "^ssh%-ed25519%s+%S", "^ecdsa%-sha2%-[a-z0-9-]+%s+%S",
  "^sk%-ssh%-ed25519@openssh%.com%s+%S", "^sk%-ecdsa%-sha2%-[a-z0-9-]+@openssh%.com%s+%S",
}

local function lines_of(s)
  local out = {}
  for line in (s .. "\n"):gmatch("([^\n]*)\n") do
    out[#out + 1] = line
  end
  return out
end

--- validate_key(text) -> nil when plausible (or blank) | the error text
function M.validate_key(raw)
  local key = trim(raw)
  if key == "" then
    return nil
  end
  local lines = lines_of(key)
  for _, l in ipairs(lines) do
    if l:find("^PuTTY%-User%-Key%-File%-%d") then
      return "sshPrivateKey looks like a PuTTY .ppk file. Convert it to OpenSSH format (PuTTYgen "
        .. "→ Conversions → Export OpenSSH key) and paste the resulting PEM."
    end
  end
  for _, p in ipairs(PUBLIC_PREFIXES) do
    if key:find(p) then
      return "sshPrivateKey looks like a PUBLIC key. Paste the matching private key (the file "
        .. "without the .pub extension)."
    end
  end
  local header_line, header_label, footer_line, footer_label
  for i, l in ipairs(lines) do
    local label = l:match("^%-%-%-%-%-BEGIN ([A-Z0-9 ]*)PRIVATE KEY%-%-%-%-%-")
    if label and not header_line then
      header_line, header_label = i, label
    end
  end
  if not header_line then
    return "sshPrivateKey must be a PEM-encoded private key starting with a line like "
      .. "'-----BEGIN OPENSSH PRIVATE KEY-----'."
  end
  for i, l in ipairs(lines) do
    local label = l:gsub("\r$", ""):match("^%-%-%-%-%-END ([A-Z0-9 ]*)PRIVATE KEY%-%-%-%-%-%s*$")
    if label and not footer_line then
      footer_line, footer_label = i, label
    end
  end
  if not footer_line then
    return "sshPrivateKey is missing its '-----END … PRIVATE KEY-----' footer. Make sure you "
      .. "copied the whole file, including the final line."
  end
  header_label, footer_label = trim(header_label), trim(footer_label)
  if header_label ~= footer_label then
    return ("sshPrivateKey header/footer mismatch (BEGIN %s vs END %s). The file is likely "
      .. "truncated or two keys are concatenated."):format(
      header_label ~= "" and header_label or "(none)",
      footer_label ~= "" and footer_label or "(none)"
    )
  end
  -- upstream takes the body up to the last occurrence of the footer line
  local last_footer = footer_line
  for i = #lines, footer_line, -1 do
    if lines[i]:find(lines[footer_line], 1, true) then
      last_footer = i
      break
    end
  end
  if header_line >= #lines or last_footer <= header_line then
    return "sshPrivateKey appears to be empty between its BEGIN and END markers."
  end
  local body = {}
  for i = header_line + 1, last_footer - 1 do
    local l = trim(lines[i])
    if l ~= "" then
      body[#body + 1] = l
    end
  end
  if #body == 0 then
    return "sshPrivateKey appears to be empty between its BEGIN and END markers."
  end
  for _, l in ipairs(body) do
    if not l:find("^[A-Za-z0-9+/=]+$") and not l:find("^[A-Za-z][A-Za-z0-9-]*:%s.+$") then
      return "sshPrivateKey body contains non-base64 characters. The key may have been "
        .. "corrupted by line-wrapping or copy-paste."
    end
  end
  return nil
end

return M
