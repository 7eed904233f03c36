--- host.sync_tar: native environmentSyncIn / environmentSyncOut for a sandbox reached through
-- a provider's duplex hook (all four built-in providers): each mapping is one tar stream
-- between the system tar on the host and GNU tar in the sandbox, pumped chunk by chunk through
-- the duplex with back-pressure both ways (Process:pause_output and Duplex:write one way,
-- Duplex:pause_output and Process:drain the other), so nothing is ever held whole: the worker
-- keeps about a MiB of any transfer (M.settings.high_water plus a chunk). host.sync keeps the
-- rules every provider shares (params, order, errors, postUploadCommands' cwd, progress); this
-- file adds:
--
-- - The receiving side unpacks into a fresh temp directory (mode 0700) beside the target, so
--   no file is readable by others before it has its final mode; modes are set there, then a
--   file is renamed over its target (atomic) or a directory replaces its target (the old one
--   removed, then the temp directory renamed into place). A failure leaves the old target:
--   on SyncIn the sandbox installs nothing unless a commit member follows the mapping's
--   archive, sent only once the host's tar exited 0 and the stream ended whole (tar itself
--   takes an archive cut between two members for a whole one); on SyncOut the host installs
--   only after both tars exited 0 and the stream ended whole.
-- - mode: a file mapping's file gets mode; in a directory mapping every regular file gets
--   mode & 0o777 and every directory that plus the x bit beside each r bit. Without mode the
--   source's permission bits are kept (the root directory's too), but never a setuid, setgid
--   or sticky bit the sandbox sent back to the host.
-- - exclude: tar's own --exclude (plus `._*`), as the host's fallback runs it: the host's tar
--   on SyncIn, the sandbox's on SyncOut.
-- - followSymlinks: tar -h on the sending side. On SyncOut a symlink under the source that
--   leads outside the confinement root (the lease directory for ssh, else the mapping's own
--   source) is an error before anything is sent; the source itself must resolve inside the
--   lease directory. Whatever the sandbox sends back is checked as it passes (host.tar_reader
--   strict: no absolute or ".." names, no hard links or special files, nothing below a
--   symlink member, nothing GNU tar could read otherwise), unpacked by GNU tar, which refuses
--   the same, and walked before it is installed (only files, directories and symlinks).
-- - Size cap: syncMaxBytes per operation, counted over the regular files' bytes as the stream
--   passes; past it the stream stops and the mapping fails (its temp directory goes).
-- - Counts: filesTransferred counts regular files and symlinks, bytesTransferred regular
--   files' bytes, read from the stream's headers.
-- - postUploadCommands: `<shell> -c COMMAND` verbatim, started by a short sandbox script that
--   re-validates cwd (realpath under the sync root it lies in lexically) and then execs it in
--   that directory.
-- Providers advertise it only for sandboxes with GNU tar: M.SUPPORT_SCRIPT exits 0 there; a
-- lease without says nativeFileSyncUnsupported = true in its metadata (the host falls back).
local fs = require("host.fs")
local proc = require("host.proc")
local sync = require("host.sync")
local tar_reader = require("host.tar_reader")
local task = require("host.task")
local util = require("host.util")

local M = {}

local fail, oct = sync.fail, sync.oct
local PERMS = oct("777")

-- The mode a directory mapping's `mode` gives its directories: the x bit beside each r bit
-- (0600 -> 0700, 0644 -> 0755).
local function dir_mode(m)
  return m | ((m & oct("444")) >> 2)
end

--- SUPPORT_SCRIPT: exits 0 where native sync can run (GNU tar, and coreutils' readlink -e,
-- stat -c, mktemp -d, timeout).
M.SUPPORT_SCRIPT = "tar --version 2>/dev/null | head -n 1 | grep -q GNU"
  .. " && readlink -e / >/dev/null 2>&1 && stat -c %a / >/dev/null 2>&1"
  .. " && mktemp --version >/dev/null 2>&1 && timeout --version >/dev/null 2>&1"

local STDERR_KEEP = 4096

--- settings: knobs for specs.
M.settings = {
  abort_wait = 5, -- seconds a failed transfer waits for either side's tar to clean up and end
  high_water = 1024 * 1024, -- bytes queued in the worker before the source is paused
  low_water = 256 * 1024, -- bytes queued at most when it is resumed
  max_trailing = 64 * 1024, -- bytes a stream may carry past its end-of-archive marker (a
  -- tar pads its last record: 10 KiB by default)
}

-- ---------------------------------------------------------------------------------------------
-- Sandbox scripts (sh -c SCRIPT ph-sync ARGS...: every path is an argument, never spliced in)

local COMMON = [[
set -f
fail() { printf 'ph-sync: %s\n' "$2" >&2; exit "$1"; }
]]

-- $1 target, $2 kind, $3 member (file), $4 file mode, $5 dir mode, $6 root mode (directory
-- without mode), $7 the lease directory ("" for none), $8 the temp template, $9 the name of
-- the commit member: the host sends it, in an archive of its own after the mapping's, only
-- once its tar exited 0 and the stream ended whole; without it nothing is installed (tar
-- exits 0 on an archive cut between two members).
local RECEIVE = COMMON .. [[
T=$1 KIND=$2 MEMBER=$3 FMODE=$4 DMODE=$5 RMODE=$6 ROOT=$7 TMPL=$8 COMMIT=$9
P=${T%/*}
[ -n "$P" ] || P=/
if [ -n "$ROOT" ]; then
  { [ -d "$ROOT" ] && [ ! -L "$ROOT" ]; } || fail 2 "the lease directory $ROOT is missing"
  d=$ROOT
  rest=${P#"$ROOT"}
  IFS=/
  for c in $rest; do
    [ -n "$c" ] || continue
    d=$d/$c
    [ ! -L "$d" ] || fail 3 "$d is a symlink: the target's parents are never followed"
    [ -e "$d" ] || mkdir -- "$d" || fail 4 "cannot create $d"
    [ -d "$d" ] || fail 3 "$d is not a directory"
  done
  unset IFS
else
  mkdir -p -- "$P" || fail 4 "cannot create $P"
fi
umask 077 # the parents above got the sandbox's own umask, as the fallback's mkdir -p
tmp=$(mktemp -d -- "$TMPL") || fail 4 "cannot create a temp directory in $P"
# rm -rf as the owner: read-only directories (kept by tar -p, or given by mode) opened first
rmtree() {
  find "$1" -type d ! -perm -u=rwx -exec chmod u+rwx {} \; 2>/dev/null
  rm -rf -- "$1"
}
trap 'rmtree "$tmp"; exit 4' HUP INT TERM PIPE
bail() { rmtree "$tmp"; fail "$@"; }
tar -x -i -p --no-same-owner -f - -C "$tmp" || bail 4 "tar could not unpack the stream"
{ [ -f "$tmp/$COMMIT" ] && [ ! -L "$tmp/$COMMIT" ]; } ||
  bail 4 "the stream ended before the host committed it"
rm -f -- "$tmp/$COMMIT"
if [ "$KIND" = file ]; then
  f=$tmp/$MEMBER
  { [ -f "$f" ] && [ ! -L "$f" ]; } || bail 4 "the stream held no regular file"
  [ -z "$FMODE" ] || chmod "$FMODE" "$f" || bail 4 "cannot chmod $f"
  if [ -d "$T" ] && [ ! -L "$T" ]; then rmtree "$T" || bail 4 "cannot remove $T"; fi
  mv -f -T -- "$f" "$T" || bail 4 "cannot rename into $T"
  rmdir -- "$tmp"
else
  if [ -n "$FMODE" ]; then
    find "$tmp" -type f -exec chmod "$FMODE" {} + || bail 4 "cannot chmod the files"
    find "$tmp" -depth -type d -exec chmod "$DMODE" {} + || bail 4 "cannot chmod the directories"
  else
    chmod "$RMODE" "$tmp" || bail 4 "cannot chmod $tmp"
  fi
  if [ -e "$T" ] || [ -L "$T" ]; then rmtree "$T" || bail 4 "cannot remove $T"; fi
  mv -f -T -- "$tmp" "$T" || bail 4 "cannot rename into $T"
fi
]]

-- $1 source, $2 kind, $3 follow ("1" or ""), $4 the lease directory ("" for none), then
-- tar's exclude options and "--".
local SEND = COMMON .. [[
S=$1 KIND=$2 FOLLOW=$3 ROOT=$4
shift 4
real=$(readlink -e -- "$S") || fail 2 "sourcePath $S does not exist"
if [ -n "$ROOT" ]; then
  rroot=$(readlink -e -- "$ROOT") || fail 2 "the lease directory $ROOT is missing"
  case $real in
    "$rroot"/*) ;;
    *) fail 3 "sourcePath $S resolves outside the lease directory $ROOT" ;;
  esac
else
  rroot=$real
fi
if [ "$KIND" = file ]; then
  [ -f "$real" ] || fail 3 "sourcePath $S is not a regular file (kind is file)"
else
  [ -d "$real" ] || fail 3 "sourcePath $S is not a directory (kind is directory)"
fi
printf 'ph-sync-mode %s\n' "$(stat -c %a -- "$real")" >&2
if [ -n "$FOLLOW" ] && [ "$KIND" = directory ]; then
  find -L "$real" -xtype l -exec sh -c '
    r=$1; shift
    for l do
      t=$(readlink -e -- "$l") || continue
      case $t in
        "$r"|"$r"/*) ;;
        *) printf "ph-sync: symlink %s points outside %s\n" "$l" "$r" >&2; exit 3 ;;
      esac
    done' ph-sync "$rroot" {} + || exit 3
fi
if [ "$KIND" = file ]; then
  dir=${real%/*}
  cd -- "${dir:-/}" || fail 4 "cannot enter ${dir:-/}"
  exec tar -c -f - --no-xattrs --hard-dereference --no-unquote -- "${real##*/}"
fi
cd -- "$real" || fail 4 "cannot enter $real"
n=$#
set +f
for e in * .[!.]* ..?*; do
  [ -e "$e" ] || [ -L "$e" ] || continue
  set -- "$@" "$e"
done
set -f
[ "$#" -gt "$n" ] || exec tar -c -f - -T /dev/null
exec tar -c -f - --no-xattrs --hard-dereference --no-unquote ${FOLLOW:+-h} "$@"
]]

-- $1 cwd, $2 its sync root, $3 shell, $4 command, $5 seconds it may run: timeout(1) ends it
-- (TERM, KILL 5 s later), since closing an SSH channel cannot signal a command that neither
-- reads nor writes.
local POST = COMMON .. [[
real=$(readlink -e -- "$1") || fail 2 "cwd $1 cannot be used: it does not exist"
rroot=$(readlink -e -- "$2") || rroot=$2
case $real in
  "$rroot"|"$rroot"/*) ;;
  *) fail 3 "cwd $1 leads outside the sync root $2 through a symlink" ;;
esac
[ -d "$real" ] || fail 2 "cwd $1 is not a directory"
cd -- "$real" || fail 4 "cannot enter $real"
printf 'ph-sync-run\n' >&2
exec timeout -k 5 "$5" "$3" -c "$4"
]]

--- scripts: the sandbox side, read at each use (specs may wrap them to watch the sandbox).
M.scripts = { receive = RECEIVE, send = SEND, post = POST }

local CODES = { [2] = "not_found", [3] = "conflict" }

-- ---------------------------------------------------------------------------------------------
-- Streams

-- A queue of chunks between a callback that cannot yield and the pumping task. push -> true
-- once it holds M.settings.high_water bytes: the source must pause until pump resumes it.
local function queue()
  local q = { head = 1, tail = 0, items = {}, bytes = 0, signal = task.signal(), ended = false }
  function q.push(chunk)
    q.tail = q.tail + 1
    q.items[q.tail] = chunk
    q.bytes = q.bytes + #chunk
    q.signal:notify()
    return q.bytes >= M.settings.high_water
  end
  function q.finish()
    q.ended = true
    q.signal:notify()
  end
  -- pop(ctx) -> chunk | nil at the end; fails at the request's deadline
  function q.pop(ctx)
    while q.head > q.tail do
      if q.ended then
        return nil
      end
      local ok, err, code = q.signal:wait(math.max(ctx:remaining(), 0.001))
      if not ok then
        fail(code == "timeout" and "the transfer did not finish before the request's deadline"
          or ("the transfer stopped: " .. tostring(err)), code)
      end
    end
    local chunk = q.items[q.head]
    q.items[q.head] = nil
    q.head = q.head + 1
    q.bytes = q.bytes - #chunk
    return chunk
  end
  return q
end

-- Keeps the tail of a stderr stream, and the notes of our sandbox scripts: lines
-- "ph-sync-WHAT VALUE" anywhere in it (a login profile may print before them).
local function stderr_keeper()
  local k = { tail = "", notes = {}, partial = "" }
  function k.push(chunk)
    k.tail = (k.tail .. chunk):sub(-STDERR_KEEP)
    local buf = k.partial .. chunk
    for line in buf:gmatch("([^\n]*)\n") do
      local what, value = line:match("^ph%-sync%-(%a+) ?(.*)$")
      if what and not k.notes[what] then
        k.notes[what] = value
      end
    end
    k.partial = buf:match("([^\n]*)$"):sub(-256)
  end
  function k.message()
    local lines = {}
    for line in k.tail:gmatch("[^\n]+") do
      if not line:find("^ph%-sync%-") then
        lines[#lines + 1] = (line:gsub("^ph%-sync: ", ""))
      end
    end
    return util.trim(util.utf8_clean(table.concat(lines, "; "), true))
  end
  return k
end

-- The sandbox's side failed: its own message (exit 2, 3) or tar's words.
local function sandbox_failed(name, r, keeper)
  local why = keeper.message()
  if r.signal then
    fail(("the sandbox's %s was killed by %s%s"):format(name, r.signal,
      why ~= "" and (": " .. why) or ""))
  end
  fail(why ~= "" and why or ("the sandbox's %s exited with %s"):format(name,
    tostring(r.exit_code)), CODES[r.exit_code] or "io")
end

local function host_failed(what, r, err)
  if not r then
    fail(("the host's %s could not run: %s"):format(what, tostring(err)))
  end
  fail(("the host's %s exited with %s: %s"):format(what, tostring(r.exit_code or r.signal),
    util.trim(util.utf8_clean((r.stderr or ""):sub(-2000), true))))
end

-- Opens the duplex running script in the sandbox. handlers: on_stdout (may be nil: dropped).
local function open(ctx, o, script, args, handlers)
  local argv = { "-c", script, "ph-sync" }
  table.move(args, 1, #args, #argv + 1, argv)
  local keeper = stderr_keeper()
  local d, err, code = o.duplex(ctx, { lease = o.lease, command = "sh", args = argv, env = {},
    cwd = "/", timeout = math.max(ctx:remaining(), 0.001),
    on_stdout = handlers.on_stdout or function() end, on_stderr = keeper.push })
  if not d then
    fail("cannot start tar in the sandbox: " .. tostring(err), code)
  end
  return d, keeper
end

local function end_of(d, ctx)
  local r, err, code = d:wait(math.max(ctx:remaining(), 0.001))
  if not r then
    fail("the sandbox's side of the transfer failed: " .. tostring(err), code)
  end
  return r
end

-- A task that calls fn and then finishes q; canceled with the transfer.
local function watch(fn, q)
  return task.spawn(function()
    pcall(fn)
    q.finish()
  end)
end

-- ---------------------------------------------------------------------------------------------
-- One transfer: a source whose chunks land in q (paused after each), a sink, the reader

-- pump(ctx, q, reader, state, cap, sink, resume): every chunk of q through the reader (counts,
-- checks, the cap) into sink(chunk) -> true | false (the sink is gone); resume() once the
-- queue is down to M.settings.low_water (the source may have paused at high_water).
local function pump(ctx, q, reader, state, cap, sink, resume)
  state.extra = function() -- progress: what this mapping moved so far
    return reader.bytes
  end
  while true do
    local chunk = q.pop(ctx)
    if not chunk then
      return true
    end
    local ok, err = reader:feed(chunk)
    if not ok then
      fail(err, "conflict")
    elseif reader.trailing > M.settings.max_trailing then
      fail("the stream goes on past the end of its archive", "conflict")
    end
    if state.op_bytes + reader.bytes > cap then
      fail(("the operation passed its size cap of %d bytes (config syncMaxBytes)"):format(cap),
        "conflict")
    end
    if not sink(chunk) then
      return false
    end
    if q.bytes <= M.settings.low_water then
      resume()
    end
  end
end

local function finish_reader(reader)
  local ok, err = reader:finish()
  if not ok then
    fail(err)
  end
end

local function stat_source(f, path)
  local st, err = fs.stat(path, true)
  if not st then
    fail(("sourcePath %s cannot be read: %s"):format(f.sourcePath, err),
      tostring(err):find("No such file", 1, true) and "not_found" or "io")
  end
  if f.kind == "file" and st.type ~= "file" then
    fail(("sourcePath %s is not a regular file (kind is file)"):format(f.sourcePath), "conflict")
  elseif f.kind == "directory" and st.type ~= "directory" then
    fail(("sourcePath %s is not a directory (kind is directory)"):format(f.sourcePath), "conflict")
  end
  return st
end

-- The permission bits a mapping gives: file mode, directory mode (both "" without mode).
local function mapping_modes(f)
  if not f.mode then
    return "", ""
  elseif f.kind == "file" then
    return ("%o"):format(f.mode), ""
  end
  local m = f.mode & PERMS
  return ("%o"):format(m), ("%o"):format(dir_mode(m))
end

-- cleanup(fn): fn() -> true | nil, code. Runs it now; when the calling task is being canceled
-- (its waits fail at once), again in a task of its own, so the cleanup still happens.
local function cleanup(fn)
  local _, code = fn()
  if code == "canceled" then
    task.spawn(fn)
  end
end

-- commit_archive(name) -> a tar archive of one empty file `name` (ustar, mode 0600): what the
-- host sends after a mapping's archive once it is whole, for the sandbox to install it.
local function commit_archive(name)
  local function field(v, n)
    return v .. ("\0"):rep(n - #v)
  end
  local function octal(v, n)
    return ("%0" .. (n - 1) .. "o"):format(v) .. "\0"
  end
  local function with(sum)
    return field(name, 100) .. octal(oct("600"), 8) .. octal(0, 8) .. octal(0, 8)
      .. octal(0, 12) .. octal(0, 12) .. sum .. "0" .. field("", 100) .. "ustar\0" .. "00"
      .. field("", 32) .. field("", 32) .. octal(0, 8) .. octal(0, 8) .. field("", 155)
      .. field("", 12)
  end
  local blank, sum = with("        "), 0
  for i = 1, #blank do
    sum = sum + blank:byte(i)
  end
  return with(("%06o"):format(sum) .. "\0 ") .. ("\0"):rep(1024)
end

-- ---------------------------------------------------------------------------------------------
-- SyncIn: host tar -> duplex -> sandbox tar

-- host_tar_create(f, real) -> argv, the NUL-separated list of names for its stdin, member
local function host_tar_create(f, real)
  local argv = { "tar", "-c", "-f", "-", "--no-xattrs", "--hard-dereference" }
  local function add(...)
    table.move({ ... }, 1, select("#", ...), #argv + 1, argv)
  end
  if f.kind == "file" then
    local member = sync.basename(real)
    add("--no-unquote", "-C", sync.dirname(real), "--", member)
    return argv, nil, member
  end
  if f.followSymlinks then
    add("-h")
  end
  add("-C", real, "--exclude", "._*")
  for _, pattern in ipairs(f.exclude) do
    add("--exclude", pattern)
  end
  local names, err = fs.list(real)
  if not names then
    fail(("cannot list %s: %s"):format(real, err))
  end
  table.sort(names)
  add("--null", "--no-unquote", "-T", "-")
  return argv, #names > 0 and (table.concat(names, "\0") .. "\0") or "", ""
end

-- host_source(ctx, o, t, argv, list): the host's tar, its output queued in t.q and paused
-- past high water; t.result is its result once t.q ended.
local function host_source(ctx, o, t, argv, list)
  local held = false -- on_stdout asked for a pause before spawn returned the process
  local p, err = proc.spawn({ argv = argv, env = o.env, stdin = list, keep_output = false,
    timeout = math.max(ctx:remaining(), 0.001), on_stderr = t.host_err.push,
    on_stdout = function(chunk)
      if not t.q.push(chunk) then
        return
      elseif not t.p then
        held = true
      elseif not t.stopped then
        t.p:pause_output() -- until the sandbox took most of it
      end
    end })
  if not p then
    fail("cannot start tar on the host: " .. tostring(err))
  end
  t.p = p
  if held then
    p:pause_output()
  end
  t.watcher = watch(function()
    t.result = p:wait()
  end, t.q)
end

-- The mapping's stream into the sandbox's receiving script, then the commit member.
local function send_in(ctx, o, f, state, cap, t, target, st, real)
  local argv, list, member = host_tar_create(f, real)
  local fmode, dmode = mapping_modes(f)
  local rmode = (f.kind == "directory" and not f.mode) and ("%o"):format(st.mode & PERMS)
    or ""
  local commit = ".ph-sync-commit-" .. util.hex(util.random(8))
  t.d, t.keeper = open(ctx, o, M.scripts.receive, { target, f.kind, member, fmode, dmode, rmode,
    o.confine or "", sync.temp_beside(target) .. "-XXXXXX", commit }, {})
  host_source(ctx, o, t, argv, list)
  local function send(chunk)
    if not t.d:write(chunk) then -- the sandbox's side ended, or its transport failed
      local r = t.d:wait(math.min(M.settings.abort_wait, math.max(ctx:remaining(), 0.001)))
      if r and r.exit_code ~= 0 then
        sandbox_failed("tar", r, t.keeper)
      end
      fail("the sandbox's side stopped taking the stream")
    end
    return true
  end
  pump(ctx, t.q, t.reader, state, cap, send, function()
    t.p:resume_output()
  end)
  local result = t.result
  if not result or result.exit_code ~= 0 then
    fail(("the host's tar failed (%s): %s"):format(result and tostring(result.exit_code
      or result.signal) or "no result", t.host_err.message()))
  end
  finish_reader(t.reader)
  send(commit_archive(commit)) -- the stream is whole: the sandbox may install it
  t.d:close_stdin()
  local r = end_of(t.d, ctx)
  if r.exit_code ~= 0 then
    sandbox_failed("tar", r, t.keeper)
  end
end

-- After send_in, whatever happened: the host's tar closed, the duplex ended (on a failure its
-- stdin closes first, and without the commit member the sandbox's script removes its temp).
local function close_in(t, ok)
  if t.watcher then
    t.watcher:cancel()
  end
  if t.p then
    t.stopped = true
    t.p:close()
  end
  local d = t.d
  if d then
    cleanup(function()
      if not ok then
        d:close_stdin()
        local _, _, code = d:wait(M.settings.abort_wait)
        if code == "canceled" then
          return nil, code
        end
      end
      d:close()
      return true
    end)
  end
end

local function sync_in(ctx, o, f, state, cap)
  local src = sync.check_path(f.sourcePath, "sourcePath")
  local target = sync.confined(o.confine, f.targetPath, "targetPath")
  local st = stat_source(f, src)
  local real = fs.realpath(src) or src
  local t = { reader = tar_reader.new({}), q = queue(), host_err = stderr_keeper() }
  local ok, err = pcall(send_in, ctx, o, f, state, cap, t, target, st, real)
  state.extra = nil
  close_in(t, ok)
  if not ok then
    error(err, 0)
  end
  sync.count(state, t.reader.files, t.reader.bytes, cap)
end

-- ---------------------------------------------------------------------------------------------
-- SyncOut: sandbox tar -> duplex -> host tar, into a temp directory beside the target

local function chmod(path, mode)
  local ok, err = fs.chmod(path, mode)
  if not ok then
    fail(("cannot chmod %s: %s"):format(path, err))
  end
end

-- walk(dir, fmode, dmode): check and settle what the host's tar unpacked from the sandbox's
-- stream under dir, deepest first: only files, directories and symlinks, no file with another
-- link; files get fmode and directories dmode, or without them keep their bits but never a
-- setuid, setgid or sticky one (a worker running as root would keep them). A directory the
-- walk cannot enter is opened for it and then given its mode.
local function walk(dir, fmode, dmode)
  local names, err = fs.list(dir)
  if not names then
    fail(("cannot list %s: %s"):format(dir, err))
  end
  for _, name in ipairs(names) do
    local path = sync.join(dir, name)
    local st, serr = fs.stat(path, false)
    if not st then
      fail(("cannot stat %s: %s"):format(path, serr))
    elseif st.type == "directory" then
      if st.mode & oct("700") ~= oct("700") then
        chmod(path, oct("700"))
      end
      walk(path, fmode, dmode)
      chmod(path, dmode or (st.mode & PERMS))
    elseif st.type == "file" then
      if st.nlink > 1 then
        fail(("the sandbox's stream made a hard link %s"):format(path), "conflict")
      end
      if fmode or st.mode & ~PERMS ~= 0 then
        chmod(path, fmode or (st.mode & PERMS))
      end
    elseif st.type ~= "link" then
      fail(("the sandbox's stream made a special file %s"):format(path), "conflict")
    end
  end
end

-- Give the unpacked temp directory its final modes; the path that replaces the target.
local function settle(f, tmp, remote_mode)
  if f.kind == "file" then
    local names = fs.list(tmp) or {}
    local path = names[1] and sync.join(tmp, names[1])
    local st = path and fs.stat(path, false)
    if #names ~= 1 or not st or st.type ~= "file" or st.nlink > 1 then
      fail("the sandbox sent no regular file")
    end
    chmod(path, f.mode or (st.mode & PERMS))
    return path
  end
  if f.mode then
    local m = f.mode & PERMS
    walk(tmp, m, dir_mode(m))
    chmod(tmp, dir_mode(m))
  else
    walk(tmp)
    chmod(tmp, (remote_mode or oct("700")) & PERMS)
  end
  return tmp
end

local function remove_temp(tmp)
  if fs.stat(tmp, false) then
    fs.remove_tree(tmp) -- it opens the directories tar left read-only or unreadable
  end
end

-- out_temp(target) -> a fresh 0700 temp directory beside the host's target (after sweeping
-- what a worker killed mid-transfer left there).
local function out_temp(target)
  local ok, err = fs.mkdirs(sync.dirname(target))
  if not ok then
    fail(("cannot create %s: %s"):format(sync.dirname(target), err))
  end
  sync.sweep_stale(target)
  local tmp = sync.temp_beside(target)
  ok, err = fs.mkdir(tmp, oct("700"))
  if not ok then
    fail(("cannot create %s: %s"):format(tmp, err))
  end
  return tmp
end

-- The sandbox's sending script through the host's tar into t.tmp.
local function receive_out(ctx, o, f, state, cap, t)
  local args = { f.sourcePath, f.kind, f.followSymlinks and "1" or "", o.confine or "",
    "--exclude", "._*" }
  for _, pattern in ipairs(f.exclude) do
    table.move({ "--exclude", pattern }, 1, 2, #args + 1, args)
  end
  args[#args + 1] = "--"
  local err
  -- tar stops reading at the end-of-archive marker: cat takes the rest of the record
  t.p, err = proc.spawn({ argv = { "sh", "-c",
    'tar -x -p --no-same-owner --no-overwrite-dir -f - -C "$1" && exec cat >/dev/null',
    "sh", t.tmp }, env = o.env, stdin = true, timeout = math.max(ctx:remaining(), 0.001),
    max_output = 64 * 1024 })
  if not t.p then
    fail("cannot start tar on the host: " .. tostring(err))
  end
  local held = false -- on_stdout asked for a pause before open returned the duplex
  t.d, t.keeper = open(ctx, o, M.scripts.send, args, { on_stdout = function(chunk)
    if not t.q.push(chunk) then
      return
    elseif t.d then
      t.d:pause_output() -- until the host's tar took most of it
    else
      held = true
    end
  end })
  if held then
    t.d:pause_output()
  end
  local r
  t.watcher = watch(function()
    r = t.d:wait(math.max(ctx:remaining(), 0.001))
  end, t.q)
  local p = t.p
  local taken = pump(ctx, t.q, t.reader, state, cap, function(chunk)
    return p:write(chunk) and p:drain(math.max(ctx:remaining(), 0.001))
  end, function()
    t.d:resume_output()
  end)
  if not taken then -- the host's tar stopped reading: it says why
    p:close_stdin()
    host_failed("tar", p:wait(math.max(ctx:remaining(), 0.001)))
  end
  r = r or end_of(t.d, ctx)
  if r.exit_code ~= 0 then
    sandbox_failed("tar", r, t.keeper)
  end
  finish_reader(t.reader)
  p:close_stdin()
  local res, werr = p:wait(math.max(ctx:remaining(), 0.001))
  if not res or res.exit_code ~= 0 then
    host_failed("tar", res, werr)
  end
end

-- After receive_out, whatever happened; on a failure the host's tar is stopped before its
-- temp directory goes.
local function close_out(t, ok)
  if t.watcher then
    t.watcher:cancel()
  end
  if t.d then
    t.d:close()
  end
  local p = t.p
  if ok then
    p:close()
    return
  end
  cleanup(function()
    if p and not p:done() then
      p:terminate()
      local _, _, code = p:wait(M.settings.abort_wait)
      if code == "canceled" then
        return nil, code
      end
    end
    if p then
      p:close()
    end
    remove_temp(t.tmp)
    return true
  end)
end

local function sync_out(ctx, o, f, state, cap)
  sync.confined(o.confine, f.sourcePath, "sourcePath")
  local target = sync.check_path(f.targetPath, "targetPath")
  local t = { reader = tar_reader.new({ strict = true }), q = queue(), tmp = out_temp(target) }
  local ok, err = pcall(receive_out, ctx, o, f, state, cap, t)
  state.extra = nil
  close_out(t, ok)
  if not ok then
    error(err, 0)
  end
  ok, err = pcall(function()
    local landed = settle(f, t.tmp, tonumber(t.keeper.notes.mode or "", 8))
    sync.clear_target(target, f.kind == "file")
    sync.rename(ctx, o.env, landed, target)
  end)
  remove_temp(t.tmp)
  if not ok then
    error(err, 0)
  end
  sync.count(state, t.reader.files, t.reader.bytes, cap)
end

-- ---------------------------------------------------------------------------------------------
-- postUploadCommands

local function post(ctx, o, c, roots, default)
  local cwd, root = sync.post_cwd(roots, default, c.cwd)
  local ms, timeout = sync.post_timeout(ctx, c)
  ctx.log.info("%s: running a postUploadCommand in %s", o.name, util.utf8_clean(cwd, true))
  local keeper = stderr_keeper()
  -- timeout(1) in the sandbox ends the command; the duplex outlives it a little, so its own
  -- limit (which on SSH cannot signal the command) never comes first
  local d, err, code = o.duplex(ctx, { lease = o.lease, command = "sh",
    args = { "-c", M.scripts.post, "ph-sync", cwd, root, o.shell, c.command,
      ("%.3f"):format(timeout) }, env = {}, cwd = "/", timeout = timeout + 10,
    on_stdout = function() end, on_stderr = keeper.push })
  if not d then
    fail(("command %q could not start: %s"):format(c.command, tostring(err)), code)
  end
  d:close_stdin() -- the command's stdin is empty, as execute's without stdin
  local r
  r, err, code = d:wait(timeout + 15)
  d:close()
  if not r then
    if code == "timeout" then
      fail(("command %q timed out after %dms"):format(c.command, ms), "timeout")
    end
    fail(("command %q failed: %s"):format(c.command, tostring(err)), code)
  end
  if not keeper.notes.run then
    sandbox_failed("cwd check", r, keeper)
  elseif r.exit_code == 124 or r.exit_code == 137 then -- timeout(1): TERM, or KILL after 5 s
    fail(("command %q timed out after %dms"):format(c.command, ms), "timeout")
  elseif r.exit_code ~= 0 then
    local tail = keeper.message()
    fail(("command %q %s%s"):format(c.command,
      r.exit_code and ("exited with " .. r.exit_code) or ("was killed by " .. tostring(r.signal)),
      tail ~= "" and (": " .. tail) or ""), "exit")
  end
end

-- ---------------------------------------------------------------------------------------------
-- The hooks

--- run(ctx, params, method, opts) -> result | nil, message, code. opts:
--   name       the provider's name in messages ("ssh")
--   duplex     the provider's duplex hook: fn(ctx, {lease, command, args, env, cwd, timeout,
--              on_stdout, on_stderr}) -> Duplex (write, close_stdin, wait, close,
--              pause_output, resume_output)
--   confine    the lease directory every sandbox path must lie in (nil: the whole sandbox)
--   workspace  the lease's workspace (the first sync root); default: lease metadata remoteCwd
function M.run(ctx, params, method, opts)
  local meta = params.lease and params.lease.metadata or {}
  if meta.nativeFileSyncUnsupported == true then
    return nil, ("%s: %s: this sandbox cannot run GNU tar (nativeFileSyncUnsupported): the "
      .. "host's fallback must be used"):format(opts.name, method), "unsupported"
  end
  local o = { name = opts.name, duplex = opts.duplex, lease = params.lease,
    confine = opts.confine, env = { PATH = os.getenv("PATH") or "/usr/bin:/bin", LC_ALL = "C" },
    shell = util.nonblank(meta.shellCommand) or "sh" }
  local apply = method == "environmentSyncIn" and sync_in or sync_out
  return sync.run(ctx, params, method, {
    name = opts.name,
    workspace = opts.workspace,
    apply = function(_, _, f, state, cap)
      apply(ctx, o, f, state, cap)
    end,
    post = function(_, c, roots, default)
      post(ctx, o, c, roots, default)
    end,
  })
end

--- hooks(options) -> sync_in, sync_out: a provider's two hooks. options(ctx, params, method)
-- -> the opts of run | nil, message, code (a lease that is not one of the provider's).
function M.hooks(options)
  local function hook(method)
    return function(ctx, params)
      local opts, err, code = options(ctx, params, method)
      if not opts then
        return nil, err, code
      end
      return M.run(ctx, params, method, opts)
    end
  end
  return hook("environmentSyncIn"), hook("environmentSyncOut")
end

return M
