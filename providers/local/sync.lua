-- providers/local/sync.lua: native environmentSyncIn / environmentSyncOut (issue 12) for the
-- local provider: direct copies between host paths and the lease directory, no tar.
--
-- Rules (worker-protocol.md section 6.3), as this file keeps them:
-- - Operations are applied in order, and each mapping of an operation in order; the first
--   failure is an error reply naming the operation and mapping ("operation 2 of 3, mapping 1
--   of 4 (SRC -> DST): why"); operations before it stay applied, nothing after it runs.
--   operationId is only echoed.
-- - Sandbox paths (targetPath on SyncIn, sourcePath on SyncOut) are absolute, have no "." or
--   ".." component and lie strictly inside the lease directory; others are refused by name.
--   A SyncIn target's parents are created one at a time under the lease and never through a
--   symlink. A SyncOut source must also resolve (realpath) inside the lease directory, so a
--   symlink planted in the sandbox is never followed out of it.
-- - Copies stream through cp(1), run with umask 077: nothing is ever read whole into memory,
--   and every file is created owner-only. A file mapping is copied to a temp file in the
--   target's directory (".NAME.ph-sync-<hex>"), given its final mode, then renamed over the
--   target. A directory mapping is copied into a temp directory (mode 0700) beside the target,
--   every file and directory given its final mode there, then the old target (file, link or
--   directory) is removed and the temp directory renamed into place. So no file is ever
--   readable by others before it has its final mode, and a failed copy leaves the old target.
-- - mode: a file mapping's file gets mode (& 0o7777, as the fallback's chmod); in a directory
--   mapping every regular file gets mode & 0o777 and every directory that plus the x bit
--   beside each r bit (0600 -> 0700, 0644 -> 0755). Without mode, permission bits (0o777) are
--   the source's.
-- - exclude: GNU tar's --exclude globs (providers/local/glob.lua), only on directory mappings
--   (the fallback does not filter a single file), plus `._*` always, as the fallback's tar.
-- - followSymlinks falsy: symlinks inside a directory are copied as symlinks (their text as
--   is; nothing is followed). True: they are dereferenced (tar -h); on SyncOut a link whose
--   target resolves outside the lease directory is an error, and a dangling link is an error
--   either way. The mapping's own root is always resolved (the host named it; on SyncOut it
--   must resolve inside the lease). A link leading back into a directory it is in (a loop) is
--   an error.
--   Sockets are skipped with a warning (as tar does); other special files are an error.
-- - Size cap: syncMaxBytes (config, default 10 GiB) per operation, summed over the regular
--   files of all its mappings before anything is copied, and again as files land.
-- - Counts: filesTransferred counts regular files and symlinks, bytesTransferred the bytes of
--   regular files as they landed.
-- - postUploadCommands (SyncIn only): after all of the operation's mappings landed, in order,
--   each run verbatim as `<shell> -c COMMAND` with the process cwd set (no `cd ... &&`), the
--   lease's minimal environment, and timeoutMs (default the config's); the first one that
--   fails (non-zero exit, signal, timeout) is the operation's error. cwd defaults to the lease's
--   remoteCwd (its workspace/). The sync roots are the workspace and each of the operation's
--   targetPaths (Paperclip's own check confines cwd to the latter); a given cwd must be
--   absolute (or relative to the default), have no "." or ".." component, lie under one of the
--   roots, and resolve (realpath) to a directory under that same root, so no symlink escapes.
-- - Progress: a `log` notification at most every second while an operation runs.
local fs = require("host.fs")
local glob = require("providers.local.glob")
local json = require("host.json")
local proc = require("host.proc")
local task = require("host.task")
local util = require("host.util")
local workspace = require("providers.local.workspace")

local M = {}

--- DEFAULT_MAX_BYTES: the per-operation cap when the config sets none (10 GiB).
M.DEFAULT_MAX_BYTES = 10 * 1024 * 1024 * 1024

--- copy_argv(args) -> the argv that copies: specs may replace it to watch the copies.
-- args are cp's own arguments; cp runs with umask 077 and keeps the files' modification times,
-- as the host's tar fallback does (build tools compare them).
function M.copy_argv(args)
  local argv = { "/bin/sh", "-c", 'umask 077 && exec cp --preserve=timestamps "$@"', "sh" }
  table.move(args, 1, #args, #argv + 1, argv)
  return argv
end

-- what the fallback's tar always leaves out of a directory (macOS AppleDouble files)
local ALWAYS_EXCLUDED = assert(glob.compile({ "._*" }))
local ARGV_BUDGET = 96 * 1024 -- bytes of paths per cp call
M.progress_every = 1 -- seconds between progress lines (specs may shorten it)

local function oct(s)
  return tonumber(s, 8)
end

local function missing(err)
  return tostring(err):find("No such file", 1, true) ~= nil
end

local function dirname(path)
  local d = path:match("^(.*)/[^/]*$")
  return (d == nil or d == "") and "/" or d
end

local function basename(path)
  return path:match("([^/]*)$")
end

local function join(dir, name)
  return (dir == "/" and "" or dir) .. "/" .. name
end

local function inside(root, path)
  return path == root or path:sub(1, #root + 1) == root .. "/"
end

-- The error raised by a step: carries its message to the operation's loop.
local Failure = {}
Failure.__index = Failure

local function fail(msg, code)
  error(setmetatable({ msg = msg, code = code or "io" }, Failure), 0)
end

-- check_path(path, what) -> path: absolute, no NUL, no "." or ".." component.
local function check_path(path, what)
  if type(path) ~= "string" or path == "" then
    fail(what .. " must be a non-empty string", "protocol")
  elseif path:find("\0", 1, true) then
    fail(what .. " contains a NUL byte", "protocol")
  elseif not path:match("^/") then
    fail(("%s %s is not an absolute path"):format(what, path), "protocol")
  end
  for part in path:gmatch("[^/]+") do
    if part == ".." or part == "." then
      fail(("%s %s has a %s component"):format(what, path, part), "conflict")
    end
  end
  return workspace.normalize(path)
end

-- A sandbox path: checked, and strictly inside the lease directory.
local function sandbox_path(dir, path, what)
  local norm = check_path(path, what)
  if norm == dir or not inside(dir, norm) then
    fail(("%s %s is outside the lease directory %s"):format(what, path, dir), "conflict")
  end
  if norm == join(dir, workspace.MARKER) then
    fail(("%s %s is the lease's marker file"):format(what, path), "conflict")
  end
  return norm
end

-- The permission bits a mapping gives a file and a directory.
local function file_mode(mapping, st)
  return mapping.mode or (st.mode & oct("777"))
end

local function inner_file_mode(mapping, st)
  return (mapping.mode or st.mode) & oct("777")
end

local function dir_mode(mapping, st)
  if not mapping.mode then
    return st.mode & oct("777")
  end
  local m = mapping.mode & oct("777")
  return m | ((m & oct("444")) >> 2)
end

-- ---------------------------------------------------------------------------------------------
-- Checking the params

local function check_mapping(f, i)
  local where = ("files[%d]"):format(i)
  if type(f) ~= "table" or json.is_array(f) then
    fail(where .. " must be an object", "protocol")
  end
  if f.kind ~= "file" and f.kind ~= "directory" then
    fail(where .. ' kind must be "file" or "directory"', "protocol")
  end
  if f.mode ~= nil then
    if type(f.mode) ~= "number" or f.mode ~= math.floor(f.mode) or f.mode < 0
      or f.mode > oct("7777") then
      fail(where .. " mode must be an integer from 0 to 0o7777", "protocol")
    end
    f.mode = math.tointeger(f.mode)
  end
  if f.followSymlinks ~= nil and type(f.followSymlinks) ~= "boolean" then
    fail(where .. " followSymlinks must be a boolean", "protocol")
  end
  if f.exclude ~= nil and (type(f.exclude) ~= "table" or (next(f.exclude) ~= nil
      and #f.exclude == 0)) then
    fail(where .. " exclude must be an array of strings", "protocol")
  end
  local matcher, err = glob.compile(f.exclude)
  if not matcher then
    fail(where .. " " .. err, "protocol")
  end
  f.excluded = function(rel, is_dir)
    return ALWAYS_EXCLUDED(rel, is_dir) or matcher(rel, is_dir)
  end
end

local function check_operations(params, method)
  local ops = params.operations
  if type(ops) ~= "table" or (next(ops) ~= nil and #ops == 0) then
    fail("operations must be an array", "protocol")
  end
  for n, op in ipairs(ops) do
    local where = ("operation %d of %d"):format(n, #ops)
    if type(op) ~= "table" or json.is_array(op) then
      fail(where .. " must be an object", "protocol")
    end
    if type(op.operationId) ~= "string" or op.operationId == "" then
      fail(where .. ": operationId must be a non-empty string", "protocol")
    end
    local files = op.files or {}
    if type(files) ~= "table" or (next(files) ~= nil and #files == 0) then
      fail(where .. ": files must be an array", "protocol")
    end
    op.files = files
    for i, f in ipairs(files) do
      local ok, e = pcall(check_mapping, f, i)
      if not ok then
        if getmetatable(e) == Failure then
          e.msg = where .. ": " .. e.msg
        end
        error(e, 0)
      end
    end
    local cmds = op.postUploadCommands or {}
    if type(cmds) ~= "table" or (next(cmds) ~= nil and #cmds == 0) then
      fail(where .. ": postUploadCommands must be an array", "protocol")
    end
    if method == "environmentSyncOut" and #cmds > 0 then
      fail(where .. ": postUploadCommands are only run on environmentSyncIn", "protocol")
    end
    for i, c in ipairs(cmds) do
      local cw = ("%s: postUploadCommands[%d]"):format(where, i)
      if type(c) ~= "table" or type(c.command) ~= "string" or not c.command:find("%S") then
        fail(cw .. " command must be a non-empty string", "protocol")
      elseif c.command:find("\0", 1, true) then
        fail(cw .. " command contains a NUL byte", "protocol")
      elseif c.cwd ~= nil and type(c.cwd) ~= "string" then
        fail(cw .. " cwd must be a string", "protocol")
      elseif c.timeoutMs ~= nil and type(c.timeoutMs) ~= "number" then
        fail(cw .. " timeoutMs must be a number", "protocol")
      end
    end
    op.postUploadCommands = cmds
  end
  return ops
end

-- ---------------------------------------------------------------------------------------------
-- Progress

local function progress(ctx, method)
  local state = { files = 0, bytes = 0, last = task.now() }
  state.ticker = task.spawn(function()
    while task.sleep(M.progress_every) do
      if state.op then
        local extra = 0
        local st = state.current and fs.stat(state.current, false)
        if st and st.type == "file" then
          extra = st.size
        end
        ctx.log.info("local: %s %s: %d files, %d bytes so far", method, state.op, state.files,
          state.bytes + extra)
      end
    end
  end)
  return setmetatable(state, { __close = function(s)
    s.ticker:cancel()
  end })
end

-- ---------------------------------------------------------------------------------------------
-- Walking a source

-- plan(mapping, src, side) -> list of entries {rel, type, src, size, mode}, total bytes.
-- src is the resolved root. side.confine: the directory every followed link must resolve in
-- (SyncOut), or nil. The root itself is entry 1 (rel "").
local function plan(mapping, root, root_st, side)
  local entries, total = {}, 0
  local follow = mapping.followSymlinks == true
  local excluded = mapping.excluded
  local function add(e)
    entries[#entries + 1] = e
    if e.type == "file" then
      total = total + e.size
    end
  end
  local function walk(src, rel, chain)
    local names, err = fs.list(src)
    if not names then
      fail(("cannot list %s: %s"):format(src, err))
    end
    for _, name in ipairs(names) do
      local path = join(src, name)
      local r = rel == "" and name or (rel .. "/" .. name)
      local st, serr = fs.stat(path, false)
      if not st then
        fail(("cannot stat %s: %s"):format(path, serr))
      end
      if excluded(r, st.type == "directory") then
        goto continue
      end
      if st.type == "link" and follow then
        local real
        real, serr = fs.realpath(path)
        if not real then
          fail(("symlink %s cannot be followed: %s"):format(path, serr))
        end
        if side.confine and not inside(side.confine, real) then
          fail(("symlink %s points outside the lease directory %s"):format(path, side.confine),
            "conflict")
        end
        st, serr = fs.stat(real, false)
        if not st then
          fail(("cannot stat %s: %s"):format(real, serr))
        end
        path = real
        if st.type == "directory" and excluded(r, true) then
          goto continue
        end
      end
      if st.type == "socket" then
        side.ctx.log.warn("local: %s: socket ignored", util.utf8_clean(path, true))
      elseif st.type == "directory" then
        local key = fs.realpath(path) or path
        if chain[key] then
          fail(("symlink %s leads back into %s"):format(join(src, name), key), "conflict")
        end
        add({ rel = r, type = "directory", src = path, mode = dir_mode(mapping, st) })
        chain[key] = true
        walk(path, r, chain)
        chain[key] = nil
      else
        add({ rel = r, type = st.type, src = path, size = st.size,
          mode = st.type == "file" and inner_file_mode(mapping, st) or nil })
      end
      ::continue::
    end
  end
  if mapping.kind == "directory" then
    add({ rel = "", type = "directory", src = root, mode = dir_mode(mapping, root_st) })
    walk(root, "", { [root] = true })
  else
    add({ rel = "", type = "file", src = root, size = root_st.size,
      mode = file_mode(mapping, root_st) })
  end
  return entries, total
end

-- ---------------------------------------------------------------------------------------------
-- Copying

local function run_cp(ctx, env, args, cwd)
  local r, err = proc.run({
    argv = M.copy_argv(args),
    env = env,
    cwd = cwd,
    timeout = math.max(ctx:remaining(), 0.001),
    max_output = 64 * 1024,
  })
  if not r then
    fail("cp failed: " .. tostring(err))
  elseif r.timed_out then
    fail("cp did not finish before the request's deadline", "timeout")
  elseif r.exit_code ~= 0 then
    fail(("cp exited with %s: %s"):format(tostring(r.exit_code or r.signal),
      util.trim(util.utf8_clean(r.stderr or "", true))))
  end
end

-- landed(e, dst, state, cap): count a copied entry, give it its final mode.
local function landed(e, dst, state, cap)
  local st, err = fs.stat(dst, false)
  if not st then
    fail(("copied %s but cannot stat %s: %s"):format(e.src, dst, err))
  end
  if e.type == "file" then
    if st.type ~= "file" then
      fail(("%s changed while it was copied"):format(e.src))
    end
    state.bytes = state.bytes + st.size
    state.op_bytes = state.op_bytes + st.size
    if state.op_bytes > cap then
      fail(("%s grew while it was copied: the operation passed its size cap of %d bytes")
        :format(e.src, cap), "conflict")
    end
    local ok, cerr = fs.chmod(dst, e.mode)
    if not ok then
      fail(("cannot chmod %s: %s"):format(dst, cerr))
    end
  end
  state.files = state.files + 1
  state.op_files = state.op_files + 1
end

-- A name beside target for a temp file or directory (never a .paperclip-upload* name).
local function temp_beside(target)
  return join(dirname(target), ("." .. basename(target)):sub(1, 100) .. ".ph-sync-"
    .. util.hex(util.random(6)))
end

local function rename(ctx, env, from, to)
  local r, err = proc.run({ argv = { "mv", "-f", "-T", "--", from, to }, env = env,
    timeout = math.max(ctx:remaining(), 0.001), max_output = 64 * 1024 })
  if not r or r.exit_code ~= 0 then
    fail(("cannot rename %s to %s: %s"):format(from, to,
      r and util.trim(util.utf8_clean(r.stderr or "", true)) or tostring(err)))
  end
end

-- Remove what is at target unless it is what a file mapping can rename over (a file or link).
local function clear_target(target, keep_files)
  local st = fs.stat(target, false)
  if not st or (keep_files and st.type ~= "directory") then
    return
  end
  local ok, err = fs.remove_tree(target)
  if not ok then
    fail(("cannot remove %s: %s"):format(target, err))
  end
end

local function copy_file(ctx, env, e, target, state, cap)
  local tmp = temp_beside(target)
  state.current = tmp
  local ok, err = pcall(function()
    run_cp(ctx, env, { "-P", "-T", "--", e.src, tmp })
    landed(e, tmp, state, cap)
    clear_target(target, true)
    rename(ctx, env, tmp, target)
  end)
  state.current = nil
  if not ok then
    fs.remove_tree(tmp)
    error(err, 0)
  end
end

local function copy_tree(ctx, env, entries, target, state, cap)
  local tmp = temp_beside(target)
  local ok, err = fs.mkdir(tmp, oct("700"), true)
  if not ok then
    fail(("cannot create %s: %s"):format(tmp, err))
  end
  local done
  done, err = pcall(function()
    local dirs = {}
    -- directories first (owner-only until the end), then files in batches per directory pair
    for _, e in ipairs(entries) do
      if e.type == "directory" then
        local d = e.rel == "" and tmp or join(tmp, e.rel)
        dirs[#dirs + 1] = { path = d, mode = e.mode }
        if e.rel ~= "" then
          local mok, merr = fs.mkdir(d, oct("700"), true)
          if not mok then
            fail(("cannot create %s: %s"):format(d, merr))
          end
        end
      end
    end
    -- the files in as few cp processes as the argv allows: named relative to the source's
    -- root and copied with --parents, so one cp fills many directories (a process per
    -- directory made a 500-file tree slower than the tar fallback)
    local root = entries[1].src
    local batch, size = {}, 0
    local function flush()
      if #batch == 0 then
        return
      end
      local args = { "-P", "--parents", "-t", tmp, "--" }
      for _, e in ipairs(batch) do
        args[#args + 1] = e.rel
      end
      run_cp(ctx, env, args, root)
      state.current = nil
      for _, e in ipairs(batch) do
        landed(e, join(tmp, e.rel), state, cap)
      end
      batch, size = {}, 0
    end
    for _, e in ipairs(entries) do
      if e.type ~= "directory" then
        if e.src ~= join(root, e.rel) then -- reached through a followed link: from where it leads
          flush()
          local dst = join(tmp, e.rel)
          state.current = dst
          run_cp(ctx, env, { "-P", "-T", "--", e.src, dst })
          landed(e, dst, state, cap)
        else
          if size + #e.rel > ARGV_BUDGET then
            flush()
          end
          batch[#batch + 1] = e
          size = size + #e.rel + 1
          if e.size and e.size > 64 * 1024 * 1024 then
            state.current = join(tmp, e.rel) -- a big file: report it as it grows
          end
        end
      end
    end
    flush()
    for i = #dirs, 1, -1 do
      local cok, cerr = fs.chmod(dirs[i].path, dirs[i].mode)
      if not cok then
        fail(("cannot chmod %s: %s"):format(dirs[i].path, cerr))
      end
    end
    clear_target(target, false)
    rename(ctx, env, tmp, target)
  end)
  state.current = nil
  if not done then
    fs.chmod(tmp, oct("700"))
    fs.remove_tree(tmp)
    error(err, 0)
  end
end

-- ---------------------------------------------------------------------------------------------
-- postUploadCommands

-- post_cwd(roots, default, cwd) -> the directory a postUploadCommand runs in.
local function post_cwd(roots, default, cwd)
  if cwd == nil or not cwd:find("%S") then
    cwd = default
  end
  if cwd:find("\0", 1, true) then
    fail("cwd contains a NUL byte", "protocol")
  end
  for part in cwd:gmatch("[^/]+") do
    if part == ".." or part == "." then
      fail(("cwd %s has a %s component"):format(cwd, part), "conflict")
    end
  end
  local abs = workspace.normalize(cwd:match("^/") and cwd or (default .. "/" .. cwd))
  local root
  for _, r in ipairs(roots) do
    if inside(r, abs) then
      root = r
      break
    end
  end
  if not root then
    fail(("cwd %s is outside the sync roots (%s)"):format(cwd, table.concat(roots, ", ")),
      "conflict")
  end
  local real, err = fs.realpath(abs)
  if not real then
    fail(("cwd %s cannot be used: %s"):format(cwd, err), "not_found")
  end
  local real_root = fs.realpath(root) or root
  if not inside(real_root, real) then
    fail(("cwd %s leads outside the sync root %s through a symlink"):format(cwd, root), "conflict")
  end
  local st = fs.stat(real)
  if not st or st.type ~= "directory" then
    fail(("cwd %s is not a directory"):format(cwd), "not_found")
  end
  return real
end

local function run_post(ctx, dir, c, wrap, roots, default)
  local cwd = post_cwd(roots, default, c.cwd)
  local timeout_ms = (c.timeoutMs and c.timeoutMs >= 1) and math.floor(c.timeoutMs)
    or ctx.config.timeoutMs
  local timeout = math.min(timeout_ms / 1000, math.max(ctx:remaining(), 0.001))
  ctx.log.info("local: running a postUploadCommand in %s", util.utf8_clean(cwd, true))
  local r, err, code = proc.run({
    argv = wrap(ctx, { ctx.config.shell, "-c", c.command }),
    env = workspace.base_env(dir),
    cwd = cwd,
    timeout = timeout,
    max_output = 64 * 1024,
  })
  if not r then
    fail(("command %q could not run: %s"):format(c.command, tostring(err)), code)
  end
  local tail = util.trim(util.utf8_clean((r.stderr or ""):sub(-2000), true))
  if r.timed_out then
    fail(("command %q timed out after %dms"):format(c.command, timeout_ms), "timeout")
  elseif r.exit_code ~= 0 then
    fail(("command %q %s%s"):format(c.command,
      r.exit_code and ("exited with " .. r.exit_code) or ("was killed by " .. tostring(r.signal)),
      tail ~= "" and (": " .. tail) or ""), "exit")
  end
end

-- ---------------------------------------------------------------------------------------------
-- The hooks

-- One mapping: resolve both sides, plan, check the cap, copy.
local function apply_mapping(ctx, dir, method, f, state, cap, env)
  local side = { ctx = ctx }
  local src, target
  if method == "environmentSyncIn" then
    src = check_path(f.sourcePath, "sourcePath")
    target = sandbox_path(dir, f.targetPath, "targetPath")
    local ok, err = workspace.mkdir_under(dir, dirname(target))
    if not ok then
      fail((err:gsub("^local: ", "")), "conflict")
    end
  else
    local lexical = sandbox_path(dir, f.sourcePath, "sourcePath")
    local real, err = fs.realpath(lexical)
    if not real then
      fail(("sourcePath %s cannot be read: %s"):format(f.sourcePath, err),
        missing(err) and "not_found" or "io")
    end
    local real_dir = fs.realpath(dir) or dir
    if real == real_dir or not inside(real_dir, real) then
      fail(("sourcePath %s resolves outside the lease directory %s"):format(f.sourcePath, dir),
        "conflict")
    end
    src = real
    side.confine = real_dir
    target = check_path(f.targetPath, "targetPath")
    local ok
    ok, err = fs.mkdirs(dirname(target))
    if not ok then
      fail(("cannot create %s: %s"):format(dirname(target), err))
    end
  end
  local st, err = fs.stat(src, true)
  if not st then
    fail(("sourcePath %s cannot be read: %s"):format(f.sourcePath, err),
      missing(err) and "not_found" or "io")
  end
  if f.kind == "file" and st.type ~= "file" then
    fail(("sourcePath %s is not a regular file (kind is file)"):format(f.sourcePath), "conflict")
  elseif f.kind == "directory" and st.type ~= "directory" then
    fail(("sourcePath %s is not a directory (kind is directory)"):format(f.sourcePath), "conflict")
  end
  src = fs.realpath(src) or src
  local entries, total = plan(f, src, st, side)
  if state.op_planned + total > cap then
    fail(("%d bytes to copy: over the operation's size cap of %d bytes (config syncMaxBytes)")
      :format(state.op_planned + total, cap), "conflict")
  end
  state.op_planned = state.op_planned + total
  if f.kind == "file" then
    copy_file(ctx, env, entries[1], target, state, cap)
  else
    copy_tree(ctx, env, entries, target, state, cap)
  end
end

--- run(ctx, params, method, wrap) -> result | nil, msg, code. wrap(ctx, argv) -> the argv a
-- postUploadCommand runs with (the provider's network isolation).
function M.run(ctx, params, method, wrap)
  local dir, err, code = workspace.lease(ctx, params.lease.providerLeaseId)
  if not dir then
    return nil, err, code
  end
  local ok, ops = pcall(check_operations, params, method)
  if not ok then
    if getmetatable(ops) ~= Failure then
      error(ops, 0)
    end
    return nil, ("local: %s: %s"):format(method, ops.msg), ops.code
  end
  local cap = ctx.config.syncMaxBytes or M.DEFAULT_MAX_BYTES
  local env = workspace.base_env(dir)
  env.LC_ALL = "C"
  local state <close> = progress(ctx, method)
  local results = {}
  for n, op in ipairs(ops) do
    local where = ("operation %d of %d"):format(n, #ops)
    state.op, state.op_files, state.op_bytes, state.op_planned = where, 0, 0, 0
    for i, f in ipairs(op.files) do
      local fok, ferr = pcall(apply_mapping, ctx, dir, method, f, state, cap, env)
      if not fok then
        if getmetatable(ferr) ~= Failure then
          error(ferr, 0)
        end
        return nil, util.utf8_clean(("local: %s %s, mapping %d of %d (%s -> %s): %s"):format(
          method, where, i, #op.files, tostring(f.sourcePath), tostring(f.targetPath), ferr.msg),
          true), ferr.code
      end
    end
    local roots = { workspace.cwd(dir) }
    for _, f in ipairs(op.files) do
      roots[#roots + 1] = workspace.normalize(f.targetPath)
    end
    local remote = util.nonblank(params.lease.metadata.remoteCwd)
    local default = workspace.cwd(dir)
    if remote and remote:match("^/") and inside(default, workspace.normalize(remote)) then
      default = workspace.normalize(remote)
    end
    for i, c in ipairs(op.postUploadCommands) do
      local cok, cerr = pcall(run_post, ctx, dir, c, wrap, roots, default)
      if not cok then
        if getmetatable(cerr) ~= Failure then
          error(cerr, 0)
        end
        return nil, ("local: %s %s, postUploadCommands[%d]: %s"):format(method, where, i,
          cerr.msg), cerr.code
      end
    end
    results[n] = json.ordered({ operationId = op.operationId, filesTransferred = state.op_files,
      bytesTransferred = state.op_bytes }, { "operationId", "filesTransferred",
      "bytesTransferred" })
    ctx.log.info("local: %s %s done: %d files, %d bytes", method, where, state.op_files,
      state.op_bytes)
  end
  return { operations = json.array(results) }
end

return M
