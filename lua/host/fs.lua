--- host.fs: small file-system calls for providers (local metadata operations; they do not yield).
local sys = require("host.core.sys")
local util = require("host.core.util")

local M = {}

--- stat(path [, follow = true]) -> {type = "file"|"directory"|"link"|"socket"|"other", mode, size,
-- mtime, uid, nlink} | nil, msg, "io". With follow = false a symlink is reported as "link".
M.stat = sys.stat

--- mkdir(path [, mode = 0755 [, exclusive]]) -> true | nil, msg, "io"
-- An existing directory is success unless exclusive is true.
M.mkdir = sys.mkdir

--- mkdirs(path [, mode = 0755]) -> true | nil, msg, "io": path and every missing directory
-- above it (mkdir -p); a relative path is taken from the current directory.
function M.mkdirs(path, mode)
  local sofar = path:sub(1, 1) == "/" and "" or "."
  for part in path:gmatch("[^/]+") do
    sofar = sofar .. "/" .. part
    local ok, err, code = sys.mkdir(sofar, mode)
    if not ok then
      return nil, err, code
    end
  end
  return true
end

--- list(path) -> sorted array of entry names | nil, msg, "io"
M.list = sys.list_dir

--- chmod(path, mode) -> true | nil, msg, "io"
M.chmod = sys.chmod

--- realpath(path) -> canonical absolute path | nil, msg, "io"
M.realpath = sys.realpath

--- remove_tree(path) -> true | nil, msg, "io": never follows symlinks; missing is success.
M.remove_tree = util.remove_tree

--- mkdtemp([prefix]) -> new private (0700) directory under $TMPDIR or /tmp | nil, msg, "io"
M.mkdtemp = util.mkdtemp

--- read(path) -> contents | nil, msg, "io"
function M.read(path)
  local f, err = io.open(path, "rb")
  if not f then
    return nil, err, "io"
  end
  local data = f:read("a")
  f:close()
  return data
end

--- write(path, data [, mode]) -> true | nil, msg, "io". The file is created with mode
-- (default 0644) before any byte is written, so it is never readable more widely.
function M.write(path, data, mode)
  local f, err = io.open(path, "wb")
  if not f then
    return nil, err, "io"
  end
  local ok, cerr = sys.chmod(path, mode or tonumber("644", 8))
  if not ok then
    f:close()
    return nil, cerr, "io"
  end
  local wok, werr = f:write(data)
  f:close()
  if not wok then
    return nil, werr, "io"
  end
  return true
end

return M
