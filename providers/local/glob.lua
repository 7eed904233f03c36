-- providers/local/glob.lua: the `exclude` globs of environmentSyncIn/SyncOut, with GNU tar's
-- --exclude semantics (--wildcards --wildcards-match-slash --no-anchored), which is what
-- Paperclip's own fallback (a host tar with `--exclude` per glob) applies, so that native and
-- fallback sync leave the same workspace.
--
-- A pattern is matched against an entry's path relative to the mapping's root, with "/"
-- between components (no leading "./"):
-- - `*` matches any run of characters, "/" included; `?` any one character; `[abc]`, `[a-z]`
--   and `[!abc]` (or `[^abc]`) one character of (not of) the set; `\x` the character x itself;
--   `**` is the same as `*`;
-- - not anchored: the pattern matches when it matches the whole path or any tail of it that
--   starts after a "/" (`node_modules` and `*.log` match at any depth, `a/b` matches `x/a/b`);
-- - our additions (tar has no such forms): a leading "/" anchors the pattern at the mapping's
--   root (`/build` is the root's build only), and a trailing "/" makes it match directories
--   only (`cache/`).
-- An excluded directory is skipped with everything under it. Matching is on bytes (names need
-- not be UTF-8). A file mapping is not filtered (the fallback writes it as it is).
local M = {}

local byte = string.byte

-- A character class starting at p[i] == "[": returns matched?, index after "]" | nil when the
-- class is not closed (then "[" is a literal).
local function class(p, i, c)
  local j = i + 1
  local negate = false
  local first = p:sub(j, j)
  if first == "!" or first == "^" then
    negate = true
    j = j + 1
  end
  local found, start = false, j
  while j <= #p do
    local ch = p:sub(j, j)
    if ch == "]" and j > start then
      return found ~= negate, j + 1
    end
    if ch == "\\" and j < #p then
      j = j + 1
      ch = p:sub(j, j)
    end
    local lo = byte(ch)
    if p:sub(j + 1, j + 1) == "-" and j + 2 <= #p and p:sub(j + 2, j + 2) ~= "]" then
      local hi = byte(p, j + 2)
      if c and c >= lo and c <= hi then
        found = true
      end
      j = j + 3
    else
      if c == lo then
        found = true
      end
      j = j + 1
    end
  end
  return nil
end

-- match(p, pi, s, si) -> true when p[pi..] matches s[si..] entirely.
local function match(p, pi, s, si)
  while pi <= #p do
    local pc = p:sub(pi, pi)
    if pc == "*" then
      while p:sub(pi + 1, pi + 1) == "*" do
        pi = pi + 1
      end
      if pi == #p then
        return true
      end
      for j = si, #s + 1 do
        if match(p, pi + 1, s, j) then
          return true
        end
      end
      return false
    end
    local c = byte(s, si)
    if c == nil then
      return false
    end
    if pc == "?" then
      pi = pi + 1
    elseif pc == "[" then
      local ok, after = class(p, pi, c)
      if ok == nil then -- not a class: a literal "["
        if c ~= byte("[") then
          return false
        end
        pi = pi + 1
      elseif not ok then
        return false
      else
        pi = after
      end
    else
      if pc == "\\" and pi < #p then
        pi = pi + 1
        pc = p:sub(pi, pi)
      end
      if c ~= byte(pc) then
        return false
      end
      pi = pi + 1
    end
    si = si + 1
  end
  return si > #s
end

--- compile(patterns) -> matcher | nil, message. matcher(rel, is_dir) -> true when excluded.
-- patterns is a list of strings; an empty or "/" pattern is refused.
function M.compile(patterns)
  local list = {}
  for i, pat in ipairs(patterns or {}) do
    if type(pat) ~= "string" then
      return nil, ("exclude[%d] must be a string"):format(i)
    end
    local dir_only = false
    local p = pat
    if p:sub(-1) == "/" then
      dir_only = true
      p = p:gsub("/+$", "")
    end
    local anchored = p:sub(1, 1) == "/"
    p = p:gsub("^/+", "")
    if p == "" then
      return nil, ("exclude[%d] %q matches nothing"):format(i, pat)
    end
    list[#list + 1] = { p = p, dir_only = dir_only, anchored = anchored }
  end
  return function(rel, is_dir)
    for _, g in ipairs(list) do
      if is_dir or not g.dir_only then
        if match(g.p, 1, rel, 1) then
          return true
        end
        if not g.anchored then
          local at = rel:find("/", 1, true)
          while at do
            if match(g.p, 1, rel, at + 1) then
              return true
            end
            at = rel:find("/", at + 1, true)
          end
        end
      end
    end
    return false
  end
end

--- match(pattern, path) -> true when the glob pattern matches path entirely (no tail rule).
function M.match(pattern, path)
  return match(pattern, 1, path, 1)
end

return M
