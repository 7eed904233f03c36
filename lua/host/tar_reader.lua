--- host.tar_reader: follows a tar stream as it passes (GNU, ustar and pax headers), without
-- keeping it: counts its files and bytes as the sync result reports them, and in strict mode
-- refuses what a sandbox must never send back to the host (absolute or ".." names, hard
-- links, devices and fifos, a member below a symlink member) and anything GNU tar might read
-- otherwise than this reader (a wrong checksum, a global or unknown pax key, a size that is
-- not plain octal or base-256, a file named like a directory, an entry for the root). Content
-- is skipped by count; only headers and long names are held (bounded). Bytes after the
-- end-of-archive marker are counted in reader.trailing, not read.
local M = {}

local BLOCK = 512
local MAX_META = 1024 * 1024 -- bytes of a long name or pax header we accept

local Reader = {}
Reader.__index = Reader

local ZERO_BLOCK = string.rep("\0", BLOCK)

local function cstr(s)
  return (s:gsub("%z.*$", ""))
end

local MAX_SIZE = 1 << 52 -- bytes: far past any cap, and exact as an integer

-- A numeric field: octal text, or GNU's base-256 (first byte 0x80) for big values; nil for what
-- no honest archive holds (a negative base-256 value, one past MAX_SIZE).
local function number(field)
  local first = field:byte(1)
  if first and first >= 0x80 then
    if first ~= 0x80 then
      return nil
    end
    local v = 0
    for i = 2, #field do
      v = v * 256 + field:byte(i)
      if v > MAX_SIZE then
        return nil
      end
    end
    return v
  end
  local digits = field:match("^ *([0-7]*)[ %z]*$") -- GNU's old base-64 ("+...") is not one
  if not digits then
    return nil
  end
  return tonumber(digits ~= "" and digits or "0", 8)
end

-- The header's checksum: its bytes summed with the checksum field as spaces.
local function checksum_ok(h)
  local want = number(h:sub(149, 156))
  local sum = 8 * 32
  for i = 1, 148 do
    sum = sum + h:byte(i)
  end
  for i = 157, BLOCK do
    sum = sum + h:byte(i)
  end
  return want == sum
end

-- The pax keys a sandbox's GNU tar may send back; any other (GNU.sparse.*, a global header's)
-- could make the host's tar read the stream otherwise than this reader does.
local PAX_KEYS = { path = true, linkpath = true, size = true, mtime = true, atime = true,
  ctime = true, uid = true, gid = true, uname = true, gname = true, comment = true,
  charset = true, hdrcharset = true }

-- pax records "LEN key=value\n": the keys we use.
local function pax(data)
  local out, pos = {}, 1
  while pos <= #data do
    local len = tonumber(data:match("^(%d+) ", pos))
    if not len or len < 1 or pos + len - 1 > #data then
      return nil
    end
    if data:sub(pos + len - 1, pos + len - 1) ~= "\n" then
      return nil -- GNU tar drops such a record (and keeps the header's values)
    end
    local record = data:sub(pos, pos + len - 2) -- without the newline
    local key, value = record:match("^%d+ ([^=]+)=(.*)$")
    if key then
      out[key] = value
    end
    pos = pos + len
  end
  return out
end

local function padded(size)
  return (size + BLOCK - 1) // BLOCK * BLOCK
end

--- new(opts) -> Reader. opts.strict: refuse what a sandbox must not send (see above);
-- opts.on_member(member): called for each member {name, type ("file", "link", "directory",
-- "hardlink", "special"), size} before its content; it may raise to stop the stream.
function M.new(opts)
  opts = opts or {}
  return setmetatable({ strict = opts.strict, on_member = opts.on_member, files = 0, bytes = 0,
    skip = 0, want = BLOCK, have = 0, pieces = {}, kind = "header", ended = false,
    trailing = 0, links = {} }, Reader)
end

local TYPES = { ["0"] = "file", ["\0"] = "file", ["7"] = "file", ["2"] = "link",
  ["5"] = "directory", ["1"] = "hardlink", ["3"] = "special", ["4"] = "special",
  ["6"] = "special" }

function Reader:check_name(name, t)
  if name:sub(1, 1) == "/" then
    return ("the stream holds an absolute name %s"):format(name)
  end
  -- walk the tree of symlink names (linear: a 1 MiB name of many parts stays cheap)
  local node, stop = self.links, 1
  for part, next_stop in name:gmatch("([^/]+)()") do
    if part == ".." then
      return ("the stream holds a name with a .. component: %s"):format(name)
    end
    if node == true then -- "." too: "a/." is the symlink's target
      return ("the stream holds %s below the symlink %s"):format(name, name:sub(1, stop - 1))
    end
    if part ~= "." then
      node, stop = node and node[part], next_stop
    end
  end
  if t == "hardlink" then
    return ("the stream holds a hard link %s"):format(name)
  elseif t == "special" then
    return ("the stream holds a device or fifo %s"):format(name)
  elseif t == nil then
    return ("the stream holds %s of an unsupported type"):format(name)
  end
end

-- Notes a symlink member in self.links, a tree with a table per directory and true for a
-- symlink, by its parts without "." ones: "d/./a" and "d//a" are the symlink d/a.
function Reader:add_link(name)
  local node, parts = self.links, {}
  for part in name:gmatch("[^/]+") do
    if part ~= "." then
      parts[#parts + 1] = part
    end
  end
  for i = 1, #parts - 1 do
    local child = node[parts[i]]
    if child == true then
      return -- already below a symlink
    elseif child == nil then
      child = {}
      node[parts[i]] = child
    end
    node = child
  end
  if #parts > 0 then
    node[parts[#parts]] = true
  end
end

-- A header block is complete.
function Reader:header(h)
  if h == ZERO_BLOCK then
    self.ended = true
    return true
  end
  if self.strict and not checksum_ok(h) then
    return nil, "the stream holds a header with a wrong checksum"
  end
  local flag = h:sub(157, 157)
  if self.strict and flag == "g" then
    return nil, "the stream holds a global pax header"
  end
  local size = number(h:sub(125, 136))
  if not size or size > MAX_SIZE then
    return nil, "the stream holds a header with a malformed size"
  end
  if flag == "L" or flag == "K" or flag == "x" or flag == "g" then
    if size > MAX_META then
      return nil, "the stream holds a header record over 1 MiB"
    end
    self.kind, self.meta_flag, self.meta_size = "meta", flag, size
    self.want = padded(size)
    if self.want == 0 then -- an empty record: GNU tar takes "" for the name (then ".")
      self.kind, self.want = "header", BLOCK
      if self.strict and (flag == "L" or flag == "K") then
        return nil, "the stream holds an empty long name"
      elseif flag == "L" then
        self.long_name = ""
      end
    end
    return true
  end
  local name, raw_name
  name, size = self:member_name(h, size)
  if not name then
    return nil, size
  end
  name, raw_name = name:gsub("^%./", ""):gsub("/+$", ""), name
  local t = TYPES[flag]
  if self.strict then
    local err = self:strict_check(name, raw_name, t)
    if err then
      return nil, err
    end
  end
  if t == "file" or t == "link" then
    self.files = self.files + 1
  end
  if t == "file" then
    self.bytes = self.bytes + size
  end
  if self.on_member then
    self.on_member({ name = name, type = t or "special", size = size })
  end
  -- only regular files (and GNU's odd types we refused above) carry content
  self.skip = (t == "file" or t == nil) and padded(size) or 0
  return true
end

-- member_name(h, size) -> the member's name and size, from its header and the long name or
-- pax records before it | nil, message.
function Reader:member_name(h, size)
  local name = cstr(h:sub(1, 100))
  if h:sub(258, 263) == "ustar\0" then -- POSIX ustar: a prefix field
    local prefix = cstr(h:sub(346, 500))
    if prefix ~= "" then
      name = prefix .. "/" .. name
    end
  end
  local ext = self.ext or {}
  name = ext.path or self.long_name or name
  if ext.size then
    size = ext.size:match("^%d+$") and tonumber(ext.size)
    if not size or size > MAX_SIZE then
      return nil, "the stream holds a pax header with a malformed size"
    end
  end
  self.ext, self.long_name = nil, nil
  return name, size
end

-- strict_check(name, raw_name, t) -> nil | why the member is refused; notes a symlink.
function Reader:strict_check(name, raw_name, t)
  if name == "" or name == "." then
    return "the stream holds an entry for its root" -- ours never sends one
  elseif t == "file" and raw_name:find("/$") then
    return ("the stream holds a file named like a directory: %s"):format(raw_name)
  end
  local err = self:check_name(name, t)
  if err then
    return err
  end
  if t == "link" then
    self:add_link(name)
  end
end

function Reader:meta(data)
  data = data:sub(1, self.meta_size)
  local flag = self.meta_flag
  self.kind, self.want = "header", BLOCK
  if flag == "L" then
    self.long_name = cstr(data)
  elseif flag == "x" then
    local rec = pax(data)
    if not rec then
      return nil, "the stream holds a malformed pax header"
    end
    if self.strict then
      for key, value in pairs(rec) do
        if not PAX_KEYS[key] then
          return nil, ("the stream holds a pax header with the key %s"):format(key)
        elseif value:find("\0", 1, true) then -- GNU tar cuts the value there
          return nil, ("the stream holds a pax %s with a NUL byte"):format(key)
        end
      end
    end
    self.ext = rec
  end -- "K" (long link name) and "g" (global pax) change nothing we count
  return true
end

--- Reader:feed(chunk) -> true | nil, message: the next bytes of the stream.
function Reader:feed(chunk)
  local pos, n = 1, #chunk
  if self.ended then
    self.trailing = self.trailing + n
    return true
  end
  while pos <= n and not self.ended do
    if self.skip > 0 then
      local take = math.min(self.skip, n - pos + 1)
      self.skip = self.skip - take
      pos = pos + take
    else
      local take = math.min(self.want - self.have, n - pos + 1)
      self.pieces[#self.pieces + 1] = chunk:sub(pos, pos + take - 1)
      self.have = self.have + take
      pos = pos + take
      if self.have == self.want then
        local data = table.concat(self.pieces)
        self.pieces, self.have = {}, 0
        local ok, err
        if self.kind == "header" then
          ok, err = self:header(data)
        else
          ok, err = self:meta(data)
        end
        if not ok then
          return nil, err
        end
      end
    end
  end
  if self.ended then
    self.trailing = self.trailing + (n - pos + 1)
  end
  return true
end

--- Reader:finish() -> true | nil, message: the stream ended where an archive may end.
function Reader:finish()
  if not self.ended then
    return nil, "the tar stream ended before its end-of-archive marker"
  end
  return true
end

return M
