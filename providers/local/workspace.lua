-- providers/local/workspace.lua: lease directories: <root>/paperclip-local-XXXX/{workspace,home}.
--
-- Containment (issue 11, item 5): everything this provider creates or deletes stays inside
-- its root.
-- - A lease directory is one of ours only when it is a real directory (not a symlink) named
--   paperclip-local-<16 hex> directly under the configured root, holding the marker file
--   .paperclip-local that create() wrote with the directory's own path in it. Destroy and
--   release delete nothing else; an id that names nothing is already gone (success), an id
--   that names something else is refused with an error saying why.
-- - A relative cwd or workspace path resolves against the lease's workspace (<lease>/workspace),
--   never the worker's directory, and must stay inside the lease directory.
-- - realize_workspace creates directories only under the lease directory, one component at a
--   time, and refuses to pass through a symlink.
-- Removal itself (host.fs.remove_tree) never follows a symlink, so a link inside a lease that
-- points out is removed, not its target.
local fs = require("host.fs")
local sync = require("host.sync")
local util = require("host.util")

local M = {}

local PREFIX = "paperclip-local-"
local MARKER = ".paperclip-local"
M.MARKER = MARKER

--- normalize(path) -> path with "//", "." and ".." resolved lexically, no trailing "/"
-- (an absolute path; ".." at the root stays at the root).
M.normalize = sync.normalize

local function join(dir, name)
  return (dir == "/" and "" or dir) .. "/" .. name
end

--- root(ctx) -> the directory that holds lease directories (normalized)
function M.root(ctx)
  local root = ctx.config.root
  if not root then
    local tmp = os.getenv("TMPDIR")
    root = (tmp and tmp:match("^/") and M.normalize(tmp) ~= "/") and tmp or "/tmp"
  end
  return M.normalize(root)
end

--- cwd(dir) -> the command's default working directory inside a lease directory
function M.cwd(dir)
  return dir .. "/workspace"
end

--- create(ctx) -> lease directory (0700, with workspace/, home/ and the marker) | nil, msg, code
function M.create(ctx)
  local root = M.root(ctx)
  for _ = 1, 5 do
    local dir = join(root, PREFIX .. util.hex(util.random(8)))
    local ok, err, code = fs.mkdir(dir, tonumber("700", 8), true)
    if ok then
      local mok, merr = fs.write(join(dir, MARKER), dir .. "\n", tonumber("600", 8))
      if not mok then
        fs.remove_tree(dir)
        return nil, "local: cannot write the workspace marker in " .. dir .. ": " .. tostring(merr),
          "io"
      end
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

local function missing(err)
  return tostring(err):find("No such file", 1, true) ~= nil
end

--- owned(ctx, id) -> lease directory | nil when id names nothing | nil, reason when id names
-- something that is not a lease directory of this provider under the configured root. The id
-- comes back from the host, so it is checked before anything touches it.
function M.owned(ctx, id)
  if type(id) ~= "string" then
    return nil, "it is not a path"
  end
  if not id:match("^/") then
    return nil, "it is not an absolute path"
  end
  for part in id:gmatch("[^/]+") do
    if part == "." or part == ".." then
      return nil, "it has a . or .. component"
    end
  end
  local st, err = fs.stat(id, false)
  if not st then
    if missing(err) then
      return nil
    end
    return nil, tostring(err)
  end
  if st.type == "link" then
    return nil, "it is a symlink"
  elseif st.type ~= "directory" then
    return nil, "it is not a directory"
  end
  local root = M.root(ctx)
  local norm = M.normalize(id)
  local parent, base = norm:match("^(.*)/([^/]+)$")
  if not base then
    return nil, "it is the file system's root"
  elseif (parent == "" and "/" or parent) ~= root then
    return nil, "it is not directly under the configured root " .. root
  end
  if not base:match("^" .. PREFIX:gsub("%-", "%%-") .. ("%x"):rep(16) .. "$") then
    return nil, "its name is not " .. PREFIX .. "<16 hex digits>"
  end
  local mark = join(norm, MARKER)
  local mst = fs.stat(mark, false)
  local content = mst and mst.type == "file" and mst.size <= 4096 and fs.read(mark)
  if content ~= norm .. "\n" then
    return nil, "it has no " .. MARKER .. " marker naming it (this provider did not make it)"
  end
  return norm
end

--- check(ctx, id) -> lease directory | nil (not one of ours, or gone)
function M.check(ctx, id)
  return (M.owned(ctx, id))
end

--- lease(ctx, id) -> lease directory | nil, msg, code: for the hooks that use a lease.
function M.lease(ctx, id)
  local dir, why = M.owned(ctx, id)
  if dir then
    return dir
  elseif not why then
    return nil, ("local sandbox %s no longer exists"):format(tostring(id)), "not_found"
  end
  return nil, ("local: lease %s is not a workspace of this provider: %s"):format(tostring(id), why),
    "conflict"
end

--- delete(ctx, id) -> true | nil, msg, code: remove a lease directory; an id that names nothing
-- (or no id) is success, one that names anything else is refused and nothing is deleted.
function M.delete(ctx, id)
  if id == nil or id == require("host.json").null then
    return true
  end
  local dir, why = M.owned(ctx, id)
  if not dir then
    if not why then
      return true
    end
    return nil, ("local: will not delete %s: %s"):format(tostring(id), why), "conflict"
  end
  return M.remove(dir)
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

--- inside(dir, path) -> path (absolute, normalized) | nil, msg, code: path taken relative to
-- the lease's workspace when relative; it must be dir or below it. what names the path in the
-- error ("cwd", "workspace path").
function M.inside(dir, path, what)
  local abs = path:match("^/") and path or (M.cwd(dir) .. "/" .. path)
  local norm = M.normalize(abs)
  if norm ~= dir and norm:sub(1, #dir + 1) ~= dir .. "/" then
    return nil, ("local: %s %s is outside the lease directory %s"):format(what, path, dir),
      "conflict"
  end
  return norm
end

--- mkdir_under(dir, path) -> true | nil, msg, code: create path (normalized, dir or below it)
-- one component at a time below dir, never through a symlink.
function M.mkdir_under(dir, path)
  local cur = dir
  for part in path:sub(#dir + 2):gmatch("[^/]+") do
    cur = cur .. "/" .. part
    local st, err = fs.stat(cur, false)
    if not st and missing(err) then
      local ok, merr, code = fs.mkdir(cur, tonumber("755", 8))
      if not ok then
        return nil, "local: cannot create " .. path .. ": " .. tostring(merr), code
      end
      st, err = fs.stat(cur, false)
    end
    if not st then
      return nil, "local: cannot create " .. path .. ": " .. tostring(err), "io"
    elseif st.type == "link" then
      return nil, ("local: will not create %s: %s is a symlink"):format(path, cur), "conflict"
    elseif st.type ~= "directory" then
      return nil, ("local: cannot create %s: %s is not a directory"):format(path, cur), "io"
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
