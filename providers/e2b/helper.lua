-- providers/e2b/helper.lua: ph-sandbox-helper in an E2B sandbox (the provider contract's
-- hooks.sandbox_helper): the host's static binary, uploaded with envd's files API once per
-- lease as ~/.paperclip/ph-sandbox-helper-<first 16 hex of its sha256>, made runnable and
-- checked by running `<path> --version`. The path is kept in the sandbox's cache entry (worker
-- memory); a worker that lost it finds the file still there with one command, no upload.
local api = require("providers.e2b.api")
local envd = require("providers.e2b.envd")
local fs = require("host.fs")
local script = require("providers.e2b.script")
local task = require("host.task")
local util = require("host.util")

local M = {}

local TIMEOUT_MS = 60000 -- each of the two commands (look, install)
local VERSION = "^ph%-sandbox%-helper %d"

-- The host binary's digest, by path, size and mtime: read and hashed once.
local known = {}

local function hex_digest(v)
  if type(v) ~= "string" then
    return nil
  elseif #v == 32 then
    return util.hex(v)
  elseif v:match("^%x+$") and #v == 64 then
    return v:lower()
  end
end

--- host_binary() -> {path, sha256, read()} | nil, message, "unsupported"
-- The ph-sandbox-helper to upload: host.sandbox_helper's ($PH_SANDBOX_HELPER, else beside the
-- host binary...); on a host without that module, $PH_SANDBOX_HELPER.
function M.host_binary()
  local ok, mod = pcall(require, "host.sandbox_helper")
  local path, sha, reader, err
  if ok and type(mod) == "table" and type(mod.path) == "function" then
    path, err = mod.path()
    sha = path and type(mod.sha256) == "function" and hex_digest((mod.sha256())) or nil
    reader = type(mod.read) == "function" and mod.read or nil
  else
    path = util.nonblank(os.getenv("PH_SANDBOX_HELPER"))
    err = "not found (set PH_SANDBOX_HELPER to its path)"
  end
  if not path then
    return nil, "ph-sandbox-helper is not available on this host: " .. tostring(err),
      "unsupported"
  end
  reader = reader or function()
    return fs.read(path)
  end
  if not sha then
    local st, serr = fs.stat(path)
    if not st then
      return nil, "ph-sandbox-helper is not available on this host: " .. tostring(serr),
        "unsupported"
    end
    local key = ("%s\0%d\0%d"):format(path, st.size or 0, st.mtime or 0)
    sha = known[key]
    if not sha then
      local data, rerr = reader()
      if not data then
        return nil, "cannot read ph-sandbox-helper on this host: " .. tostring(rerr),
          "unsupported"
      end
      sha = util.sha256_hex(data)
      known[key] = sha
    end
  end
  return { path = path, sha256 = sha, read = reader }
end

-- The ready answer of the look and install scripts: path | nil.
local function ready(res)
  if not res or res.timed_out or res.exit_code ~= 0 then
    return nil
  end
  local path, version = res.stdout:match("^ready ([^\n]+)\n([^\n]*)")
  if path and version:match(VERSION) and path:sub(1, 1) == "/" then
    return path
  end
end

local function run(conn, sbx, text, what)
  return envd.run(conn, sbx, { script = text, cwd = "/", timeout_ms = TIMEOUT_MS, what = what })
end

-- install(conn, sbx, bin) -> path | nil, message, kind: look for it; upload and install when
-- it is not there.
local function install(conn, sbx, bin)
  local name = "ph-sandbox-helper-" .. bin.sha256:sub(1, 16)
  local res, err, kind = run(conn, sbx, script.helper_probe(name, bin.sha256),
    "look for ph-sandbox-helper")
  if not res then
    return nil, err, kind
  end
  local path = ready(res)
  if path then
    return path
  end
  local data, rerr = bin.read()
  if not data then
    return nil, "cannot read ph-sandbox-helper on this host: " .. tostring(rerr), "unsupported"
  elseif util.sha256_hex(data) ~= bin.sha256 then
    return nil, "ph-sandbox-helper changed on this host while it was being installed", "io"
  end
  local upload = name .. ".upload-" .. util.hex(assert(util.random(6)))
  local ok
  ok, err, kind = envd.upload(conn, sbx, "~/" .. script.HELPER_DIR .. "/" .. upload, data,
    "upload ph-sandbox-helper")
  if not ok then
    return nil, err, kind
  end
  res, err, kind = run(conn, sbx, script.helper_install(upload, name, bin.sha256),
    "install ph-sandbox-helper")
  if not res then
    return nil, err, kind
  end
  path = ready(res)
  if path then
    return path
  end
  local why = util.trim(res.stderr or "") ~= "" and util.trim(res.stderr):sub(1, 300)
    or ("exit code " .. tostring(res.exit_code))
  if res.exit_code == 5 or (res.exit_code == 0 and not path) then
    return nil, ("ph-sandbox-helper cannot run in E2B sandbox %s: %s"):format(sbx.id,
      api.redact(conn, why)), "unsupported"
  end
  return nil, ("E2B sandbox %s could not install ph-sandbox-helper: %s"):format(sbx.id,
    res.timed_out and "timed out" or api.redact(conn, why)), "upstream"
end

--- ensure(conn, sbx, bin) -> path | nil, message, kind
-- The helper's path in the sandbox whose cache entry is sbx (installed once; concurrent calls
-- for the same sandbox share one installation). "unsupported" is remembered as well.
function M.ensure(conn, sbx, bin)
  sbx.helpers = sbx.helpers or {}
  local cached = sbx.helpers[bin.sha256]
  if cached then
    return table.unpack(cached, 1, cached.n)
  end
  sbx.installing = sbx.installing or {}
  local job = sbx.installing[bin.sha256]
  if not job then
    job = task.spawn(function()
      local res = table.pack(install(conn, sbx, bin))
      if res[1] or res[3] == "unsupported" then
        sbx.helpers[bin.sha256] = res
      end
      sbx.installing[bin.sha256] = nil
      return table.unpack(res, 1, res.n)
    end)
    sbx.installing[bin.sha256] = job
  end
  return job:wait()
end

return M
