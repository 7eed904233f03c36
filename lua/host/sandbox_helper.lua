--- host.sandbox_helper: where the host finds ph-sandbox-helper, the static binary it copies into
-- sandboxes (bridge/: `relay` for the callback bridge, `exec` for host.remote's commands), and
-- what that binary is: its bytes, sha256 and version. Looked up, first found wins:
--   1. $PH_SANDBOX_HELPER (specs, an operator's own build), or M.override when set
--   2. beside the running binary: the build tree, a package's bin/
--   3. <libdir>/provider-host/ of an installed tree (`cmake --install`: lib/, lib64/ or a
--      Debian multiarch lib/<triplet>/ beside bin/)
local fs = require("host.fs")
local proc = require("host.proc")
local sys = require("host.core.sys")
local util = require("host.util")

local M = {}

M.NAME = "ph-sandbox-helper"

--- override: a path that wins over the search (specs point it at a helper that cannot run).
M.override = nil

local function dir_of(path)
  return path:match("^(.*)/[^/]*$") or "."
end

-- The places to look, in order.
local function candidates()
  local list = {}
  local env = os.getenv("PH_SANDBOX_HELPER")
  if M.override then
    list[1] = M.override
  elseif env and env ~= "" then
    list[1] = env
  end
  local exe = sys.exe_path()
  if exe then
    local bin = dir_of(exe)
    list[#list + 1] = bin .. "/" .. M.NAME
    local prefix = dir_of(bin)
    for _, lib in ipairs({ "lib", "lib64" }) do
      list[#list + 1] = ("%s/%s/provider-host/%s"):format(prefix, lib, M.NAME)
    end
    for _, name in ipairs(fs.list(prefix .. "/lib") or {}) do
      if name:find("%-linux%-") then -- a multiarch triplet: x86_64-linux-gnu
        list[#list + 1] = ("%s/lib/%s/provider-host/%s"):format(prefix, name, M.NAME)
      end
    end
  end
  return list
end

--- path() -> the local path of ph-sandbox-helper | nil, message, "io"
-- An override or $PH_SANDBOX_HELPER that names no file is an error, not a reason to look on.
function M.path()
  local list = candidates()
  local forced = M.override or (os.getenv("PH_SANDBOX_HELPER") or "") ~= ""
  for i, cand in ipairs(list) do
    local st = fs.stat(cand)
    if st and st.type == "file" then
      return cand
    end
    if i == 1 and forced then
      return nil, ("%s: %s is not a file"):format(M.NAME, cand), "io"
    end
  end
  return nil, ("%s: not found (looked in %s)"):format(M.NAME, table.concat(list, ", ")), "io"
end

-- Facts about a file, cached while its size and mtime stay the same (a rebuilt helper is
-- seen at once; the hash of ~1 MB is not taken again for every lease).
local cache = {}

local function cached(path, field, compute)
  local st, err, code = fs.stat(path)
  if not st then
    return nil, err, code
  end
  local c = cache[path]
  if not c or c.size ~= st.size or c.mtime ~= st.mtime then
    c = { size = st.size, mtime = st.mtime }
    cache[path] = c
  end
  if c[field] == nil then
    local v
    v, err, code = compute(path)
    if v == nil then
      return nil, err, code
    end
    c[field] = v
  end
  return c[field]
end

--- read() -> the helper's bytes, path | nil, message, "io"
function M.read()
  local path, err, code = M.path()
  if not path then
    return nil, err, code
  end
  local data
  data, err = fs.read(path)
  if not data then
    return nil, ("%s: cannot read %s: %s"):format(M.NAME, path, err), "io"
  end
  return data, path
end

--- sha256() -> the helper's sha256 (64 lowercase hex digits) | nil, message, "io"
function M.sha256()
  local path, err, code = M.path()
  if not path then
    return nil, err, code
  end
  return cached(path, "sha256", function(p)
    local data, rerr = fs.read(p)
    if not data then
      return nil, ("%s: cannot read %s: %s"):format(M.NAME, p, rerr), "io"
    end
    return util.sha256_hex(data)
  end)
end

--- size() -> the helper's size in bytes | nil, message, "io"
function M.size()
  local path, err, code = M.path()
  if not path then
    return nil, err, code
  end
  return fs.stat(path).size
end

--- version() -> the first line of `ph-sandbox-helper --version` ("ph-sandbox-helper 0.1.0
-- (...)") | nil, message, code. Runs the binary: call it inside a task.
function M.version()
  local path, err, code = M.path()
  if not path then
    return nil, err, code
  end
  return cached(path, "version", function(p)
    local res, rerr, rcode = proc.run({ argv = { p, "--version" }, timeout = 10 })
    if not res then
      return nil, ("%s --version: %s"):format(p, rerr), rcode
    elseif res.exit_code ~= 0 then
      return nil, ("%s --version exited %s"):format(p, tostring(res.exit_code)), "exit"
    end
    return (res.stdout:match("^[^\n]*"))
  end)
end

return M
