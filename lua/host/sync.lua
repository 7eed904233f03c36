--- host.sync: what native environmentSyncIn / environmentSyncOut needs whatever moves the
-- bytes (worker-protocol.md sections 3.9 and 6.3): checking the params, the loop over
-- operations and mappings with errors that name where they failed, host-side
-- temp-beside-then-rename, the cwd rules of postUploadCommands, progress lines and the result.
-- The caller supplies how one mapping is applied and how one postUploadCommand runs
-- (host.sync_tar: tar streams through a provider's duplex, for all four built-in providers).
--
-- Rules kept here:
-- - Operations are applied in order, and each mapping of an operation in order; the first
--   failure is an error reply naming the operation and mapping ("operation 2 of 3, mapping 1
--   of 4 (SRC -> DST): why"); operations before it stay applied, nothing after it runs.
--   operationId is only echoed.
-- - Paths are absolute, have no NUL and no "." or ".." component; a path that breaks that is
--   refused by name, never widened or cleaned up into another one.
-- - postUploadCommands only on SyncIn, run after every mapping of their operation landed, in
--   order, stopping at the first failure. Their cwd defaults to the lease's remoteCwd; a given
--   one must lie under the sync roots (the workspace and the operation's targetPaths): the
--   lexical check is here, the symlink check is the provider's (it sees the sandbox).
-- - Progress: a `log` notification at most every M.progress_every seconds while an
--   operation runs.
local fs = require("host.fs")
local json = require("host.json")
local proc = require("host.proc")
local sys = require("host.core.sys")
local task = require("host.task")
local util = require("host.util")

local M = {}

--- DEFAULT_MAX_BYTES: the per-operation cap when the config sets none (10 GiB).
M.DEFAULT_MAX_BYTES = 10 * 1024 * 1024 * 1024

M.progress_every = 1 -- seconds between progress lines (specs may shorten it)

function M.oct(s)
  return tonumber(s, 8)
end

--- normalize(path) -> an absolute path with "//", "." and ".." resolved lexically, no
-- trailing "/" (".." at the root stays there).
function M.normalize(path)
  local parts = {}
  for part in path:gmatch("[^/]+") do
    if part == ".." then
      parts[#parts] = nil
    elseif part ~= "." then
      parts[#parts + 1] = part
    end
  end
  return "/" .. table.concat(parts, "/")
end

function M.dirname(path)
  local d = path:match("^(.*)/[^/]*$")
  return (d == nil or d == "") and "/" or d
end

function M.basename(path)
  return path:match("([^/]*)$")
end

function M.join(dir, name)
  return (dir == "/" and "" or dir) .. "/" .. name
end

--- inside(root, path) -> path is root or below it (both normalized).
function M.inside(root, path)
  return root == "/" or path == root or path:sub(1, #root + 1) == root .. "/"
end

-- The error raised by a step: carries its message to the operation's loop.
local Failure = {}
Failure.__index = Failure

--- fail(msg [, code]): raise a sync failure (code defaults to "io"); caught by M.run.
function M.fail(msg, code)
  error(setmetatable({ msg = msg, code = code or "io" }, Failure), 0)
end

--- is_failure(e) -> e was raised by fail.
function M.is_failure(e)
  return getmetatable(e) == Failure
end

-- no_dots(path, what): a "." or ".." component is refused by name, never resolved away.
local function no_dots(path, what)
  for part in path:gmatch("[^/]+") do
    if part == ".." or part == "." then
      M.fail(("%s %s has a %s component"):format(what, path, part), "conflict")
    end
  end
end

--- check_path(path, what) -> path normalized: absolute, no NUL, no "." or ".." component,
-- not "/".
function M.check_path(path, what)
  if type(path) ~= "string" or path == "" then
    M.fail(what .. " must be a non-empty string", "protocol")
  elseif path:find("\0", 1, true) then
    M.fail(what .. " contains a NUL byte", "protocol")
  elseif not path:match("^/") then
    M.fail(("%s %s is not an absolute path"):format(what, path), "protocol")
  end
  no_dots(path, what)
  local norm = M.normalize(path)
  if norm == "/" then -- a mapping replaces its target whole: never the file system's root
    M.fail(("%s %s is the file system's root"):format(what, path), "conflict")
  end
  return norm
end

--- confined(root, path, what) -> path normalized, strictly inside root (nil root: anywhere).
function M.confined(root, path, what)
  local norm = M.check_path(path, what)
  if root and (norm == root or not M.inside(root, norm)) then
    M.fail(("%s %s is outside the lease directory %s"):format(what, path, root), "conflict")
  end
  return norm
end

-- ---------------------------------------------------------------------------------------------
-- Checking the params

local function is_array(v)
  return type(v) == "table" and (next(v) == nil or #v > 0)
end

-- check_mapping(f, i): kind, mode, followSymlinks, exclude (strings).
local function check_mapping(f, i)
  local where = ("files[%d]"):format(i)
  if type(f) ~= "table" or json.is_array(f) then
    M.fail(where .. " must be an object", "protocol")
  end
  if f.kind ~= "file" and f.kind ~= "directory" then
    M.fail(where .. ' kind must be "file" or "directory"', "protocol")
  end
  if f.mode ~= nil then
    if type(f.mode) ~= "number" or f.mode ~= math.floor(f.mode) or f.mode < 0
      or f.mode > M.oct("7777") then
      M.fail(where .. " mode must be an integer from 0 to 0o7777", "protocol")
    end
    f.mode = math.tointeger(f.mode)
  end
  if f.followSymlinks ~= nil and type(f.followSymlinks) ~= "boolean" then
    M.fail(where .. " followSymlinks must be a boolean", "protocol")
  end
  if f.exclude ~= nil and not is_array(f.exclude) then
    M.fail(where .. " exclude must be an array of strings", "protocol")
  end
  f.exclude = f.exclude or {}
  for k, pattern in ipairs(f.exclude) do
    if type(pattern) ~= "string" or pattern == "" then
      M.fail(("%s exclude[%d] must be a non-empty string"):format(where, k), "protocol")
    elseif pattern:find("\0", 1, true) then
      M.fail(("%s exclude[%d] contains a NUL byte"):format(where, k), "protocol")
    end
  end
end

local function check_command(c, cw)
  if type(c) ~= "table" or type(c.command) ~= "string" or not c.command:find("%S") then
    M.fail(cw .. " command must be a non-empty string", "protocol")
  elseif c.command:find("\0", 1, true) then
    M.fail(cw .. " command contains a NUL byte", "protocol")
  elseif c.cwd ~= nil and type(c.cwd) ~= "string" then
    M.fail(cw .. " cwd must be a string", "protocol")
  elseif c.timeoutMs ~= nil and type(c.timeoutMs) ~= "number" then
    M.fail(cw .. " timeoutMs must be a number", "protocol")
  end
end

--- check_operations(params, method) -> the operations, checked and filled in
-- (files and postUploadCommands default to empty arrays). Raises a failure naming the bad
-- field.
function M.check_operations(params, method)
  local ops = params.operations
  if not is_array(ops) then
    M.fail("operations must be an array", "protocol")
  end
  for n, op in ipairs(ops) do
    local where = ("operation %d of %d"):format(n, #ops)
    if type(op) ~= "table" or json.is_array(op) then
      M.fail(where .. " must be an object", "protocol")
    end
    if type(op.operationId) ~= "string" or op.operationId == "" then
      M.fail(where .. ": operationId must be a non-empty string", "protocol")
    end
    op.files = op.files or {}
    if not is_array(op.files) then
      M.fail(where .. ": files must be an array", "protocol")
    end
    for i, f in ipairs(op.files) do
      local ok, e = pcall(check_mapping, f, i)
      if not ok then
        if M.is_failure(e) then
          e.msg = where .. ": " .. e.msg
        end
        error(e, 0)
      end
    end
    local cmds = op.postUploadCommands or {}
    if not is_array(cmds) then
      M.fail(where .. ": postUploadCommands must be an array", "protocol")
    end
    if method == "environmentSyncOut" and #cmds > 0 then
      M.fail(where .. ": postUploadCommands are only run on environmentSyncIn", "protocol")
    end
    for i, c in ipairs(cmds) do
      check_command(c, ("%s: postUploadCommands[%d]"):format(where, i))
    end
    op.postUploadCommands = cmds
  end
  return ops
end

-- ---------------------------------------------------------------------------------------------
-- postUploadCommands: where they run

--- post_cwd(roots, default, cwd) -> the lexical directory a postUploadCommand runs in, and
-- the root it lies under. roots: normalized sync roots; default: the default cwd.
function M.post_cwd(roots, default, cwd)
  if cwd == nil or not cwd:find("%S") then
    cwd = default
  end
  if cwd:find("\0", 1, true) then
    M.fail("cwd contains a NUL byte", "protocol")
  end
  no_dots(cwd, "cwd")
  local abs = M.normalize(cwd:match("^/") and cwd or (default .. "/" .. cwd))
  for _, r in ipairs(roots) do
    if M.inside(r, abs) then
      return abs, r
    end
  end
  M.fail(("cwd %s is outside the sync roots (%s)"):format(cwd, table.concat(roots, ", ")),
    "conflict")
end

--- post_timeout(ctx, c) -> milliseconds the command may run, seconds left for it.
function M.post_timeout(ctx, c)
  local ms = (c.timeoutMs and c.timeoutMs >= 1) and math.floor(c.timeoutMs) or ctx.config.timeoutMs
    or 300000
  return ms, math.min(ms / 1000, math.max(ctx:remaining(), 0.001))
end

-- ---------------------------------------------------------------------------------------------
-- Host-side files

local function temp_prefix(target)
  return ("." .. M.basename(target)):sub(1, 100) .. ".ph-sync-"
end

--- temp_beside(target) -> a fresh name beside target for a temp file or directory (never a
-- .paperclip-upload* name): .NAME.ph-sync-<this worker's pid>-<hex>.
function M.temp_beside(target)
  return M.join(M.dirname(target), temp_prefix(target) .. sys.getpid() .. "-"
    .. util.hex(util.random(6)))
end

--- sweep_stale(target): remove the host-side temps beside target that a worker left when it
-- was killed mid-transfer (their pid is gone); a live worker's are left alone.
function M.sweep_stale(target)
  local dir, prefix = M.dirname(target), temp_prefix(target)
  for _, name in ipairs(fs.list(dir) or {}) do
    local pid = name:sub(1, #prefix) == prefix and name:sub(#prefix + 1):match("^(%d+)%-%x+$")
    if pid and not fs.stat("/proc/" .. pid, false) then
      fs.remove_tree(M.join(dir, name)) -- never through a link; opens what its owner may not
    end
  end
end

--- rename(ctx, env, from, to): mv -f -T (a directory target is replaced, never entered).
function M.rename(ctx, env, from, to)
  local r, err = proc.run({ argv = { "mv", "-f", "-T", "--", from, to }, env = env,
    timeout = math.max(ctx:remaining(), 0.001), max_output = 64 * 1024 })
  if not r or r.exit_code ~= 0 then
    M.fail(("cannot rename %s to %s: %s"):format(from, to,
      r and util.trim(util.utf8_clean(r.stderr or "", true)) or tostring(err)))
  end
end

--- clear_target(target, keep_files): remove what is at target, unless keep_files and it is
-- what a rename may replace (a file or a link).
function M.clear_target(target, keep_files)
  local st = fs.stat(target, false)
  if not st or (keep_files and st.type ~= "directory") then
    return
  end
  local ok, err = fs.remove_tree(target)
  if not ok then
    M.fail(("cannot remove %s: %s"):format(target, err))
  end
end

-- ---------------------------------------------------------------------------------------------
-- The loop

local function progress(ctx, name, method)
  local state = { files = 0, bytes = 0 } -- extra: nil or fn() -> bytes in flight
  state.ticker = task.spawn(function()
    while task.sleep(M.progress_every) do
      if state.op then
        ctx.log.info("%s: %s %s: %d files, %d bytes so far", name, method, state.op,
          state.files, state.bytes + (state.extra and state.extra() or 0))
      end
    end
  end)
  return setmetatable(state, { __close = function(s)
    s.ticker:cancel()
  end })
end

--- count(state, files, bytes, cap): what landed; past cap (the operation's total) is an error.
function M.count(state, files, bytes, cap)
  state.files, state.op_files = state.files + files, state.op_files + files
  state.bytes, state.op_bytes = state.bytes + bytes, state.op_bytes + bytes
  if cap and state.op_bytes > cap then
    M.fail(("the operation passed its size cap of %d bytes (config syncMaxBytes)"):format(cap),
      "conflict")
  end
end

--- run(ctx, params, method, impl) -> result | nil, msg, code
-- impl: name ("local", "ssh"...), and
--   apply(ctx, method, f, state, cap) applies one mapping (raising failures), counting with
--                                      M.count(state, ...)
--   post(ctx, c, roots, default)      runs one postUploadCommand (raising failures)
--   workspace                         the lease's workspace (a sync root, the default cwd)
function M.run(ctx, params, method, impl)
  local ok, ops = pcall(M.check_operations, params, method)
  if not ok then
    if not M.is_failure(ops) then
      error(ops, 0)
    end
    return nil, ("%s: %s: %s"):format(impl.name, method, ops.msg), ops.code
  end
  local cap = ctx.config.syncMaxBytes or M.DEFAULT_MAX_BYTES
  local state <close> = progress(ctx, impl.name, method)
  local results = {}
  local meta = params.lease.metadata or {}
  local remote = util.nonblank(meta.remoteCwd)
  local default = impl.workspace
  if remote and remote:match("^/") and (not default or M.inside(default, M.normalize(remote))) then
    default = M.normalize(remote)
  end
  local first_root = impl.workspace or default
  for n, op in ipairs(ops) do
    local where = ("operation %d of %d"):format(n, #ops)
    state.op, state.op_files, state.op_bytes = where, 0, 0
    for i, f in ipairs(op.files) do
      local fok, ferr = pcall(impl.apply, ctx, method, f, state, cap)
      if not fok then
        if not M.is_failure(ferr) then
          error(ferr, 0)
        end
        return nil, util.utf8_clean(("%s: %s %s, mapping %d of %d (%s -> %s): %s"):format(
          impl.name, method, where, i, #op.files, tostring(f.sourcePath), tostring(f.targetPath),
          ferr.msg), true), ferr.code
      end
    end
    local roots = { first_root }
    for _, f in ipairs(op.files) do -- (first_root nil: only the targets)
      roots[#roots + 1] = M.normalize(f.targetPath)
    end
    for i, c in ipairs(op.postUploadCommands) do
      local cok, cerr = pcall(function()
        if not default then
          M.fail("the lease has no remoteCwd to run the command in", "conflict")
        end
        impl.post(ctx, c, roots, default)
      end)
      if not cok then
        if not M.is_failure(cerr) then
          error(cerr, 0)
        end
        return nil, util.utf8_clean(("%s: %s %s, postUploadCommands[%d]: %s"):format(impl.name,
          method, where, i, cerr.msg), true), cerr.code
      end
    end
    results[n] = json.ordered({ operationId = op.operationId, filesTransferred = state.op_files,
      bytesTransferred = state.op_bytes }, { "operationId", "filesTransferred",
      "bytesTransferred" })
    ctx.log.info("%s: %s %s done: %d files, %d bytes", impl.name, method, where, state.op_files,
      state.op_bytes)
  end
  return { operations = json.array(results) }
end

return M
