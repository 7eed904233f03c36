-- providers/local/workspace.lua: lease directories: <root>/paperclip-local-XXXX/{workspace,home}.
local fs = require("host.fs")
local util = require("host.util")

local M = {}

local PREFIX = "paperclip-local-"

--- root(ctx) -> the directory that holds lease directories
function M.root(ctx)
  local root = ctx.config.root
  if root then
    return root
  end
  local tmp = os.getenv("TMPDIR")
  return (tmp and tmp:match("^/") and tmp ~= "/") and tmp:gsub("/+$", "") or "/tmp"
end

--- cwd(dir) -> the command's default working directory inside a lease directory
function M.cwd(dir)
  return dir .. "/workspace"
end

--- create(ctx) -> lease directory (0700, with workspace/ and home/) | nil, msg, code
function M.create(ctx)
  local root = M.root(ctx)
  for _ = 1, 5 do
    local dir = root .. "/" .. PREFIX .. util.hex(util.random(8))
    local ok, err, code = fs.mkdir(dir, tonumber("700", 8), true)
    if ok then
      assert(fs.mkdir(M.cwd(dir), tonumber("700", 8)))
      assert(fs.mkdir(dir .. "/home", tonumber("700", 8)))
      return dir
    end
    if not tostring(err):find("exists", 1, true) then
      return nil, "local: cannot create a workspace under " .. root .. ": " .. tostring(err), code
    end
  end
  return nil, "local: cannot create a unique workspace under " .. root, "io"
end

--- check(lease_id) -> lease directory | nil when it is not one of ours or no longer exists.
-- The id comes back from the host, so it is checked before anything touches the disk.
function M.check(id)
  if type(id) ~= "string" or not id:match("^/") or id:find("/%.%.?/") or id:find("/%.%.?$") then
    return nil
  end
  local base = id:match("/(" .. PREFIX:gsub("%-", "%%-") .. "%x+)$")
  if not base then
    return nil
  end
  local st = fs.stat(id, false) -- a symlink is not a lease directory
  if not st or st.type ~= "directory" then
    return nil
  end
  return id
end

--- remove(dir) -> true | nil, msg, code (nil dir: nothing to do)
function M.remove(dir)
  if not dir then
    return true
  end
  local ok, err, code = fs.remove_tree(dir)
  if not ok then
    return nil, "local: cannot remove " .. dir .. ": " .. tostring(err), code
  end
  return true
end

--- mkdir_p(path) -> true | nil, msg, "io"
function M.mkdir_p(path)
  local sofar = ""
  for part in path:gmatch("[^/]+") do
    sofar = sofar .. "/" .. part
    local ok, err, code = fs.mkdir(sofar, tonumber("755", 8))
    if not ok then
      return nil, "local: " .. err, code
    end
  end
  return true
end

--- base_env(dir) -> the minimal environment every command starts from
function M.base_env(dir)
  local path = os.getenv("PATH")
  local home = dir .. "/home"
  return {
    PATH = (path and path ~= "") and path or "/usr/local/bin:/usr/bin:/bin",
    HOME = home,
    USERPROFILE = home,
    LANG = "C.UTF-8",
    TMPDIR = "/tmp",
  }
end

return M
