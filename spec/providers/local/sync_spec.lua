-- spec/providers/local/sync_spec.lua: native environmentSyncIn / environmentSyncOut on local
-- (issue 12, worker-protocol.md sections 3.9 and 6.3), through the worker's dispatch. Every case
-- runs with a temp directory as the configured root, a host directory of its own and sentinels
-- outside both, and checks that nothing is left behind (no temp file, nothing outside).
local client = require("host.client")
local fs = require("host.fs")
local helpers = require("spec.helpers")
local json = require("host.json")
local log = require("host.log")
local proc = require("host.proc")
local providers = require("host.providers")

local provider = assert(providers.load("local"))

local function oct(s)
  return tonumber(s, 8)
end

-- The provider's own sync module (its modules load in its sandbox, so not through require):
-- the upvalue of the hook that calls it.
local sync = (function()
  for i = 1, 50 do
    local name, value = debug.getupvalue(provider.hooks.sync_in, i)
    if name == "sync" then
      return value
    elseif name == nil then
      break
    end
  end
  error("no sync upvalue")
end)()

local glob = assert(loadfile(helpers.root .. "/providers/local/glob.lua"))()

local function sh(script, ...)
  local r = assert(proc.run({ argv = { "sh", "-c", script, "sh", ... }, timeout = 20 }))
  assert.equal(0, r.exit_code, r.stderr)
  return r.stdout
end

local function symlink(target, link)
  sh('ln -s -- "$1" "$2"', target, link)
end

local function readlink(path)
  return (sh('readlink -- "$1"', path):gsub("\n$", ""))
end

local function mode(path)
  return assert(fs.stat(path, false)).mode & oct("7777")
end

-- every name under dir (recursive), for checking that no temp file or directory is left
local function leftovers(dir)
  local out = sh('find "$1" -name "*.ph-sync-*"', dir)
  return out
end

local ALL_BYTES = (function()
  local t = {}
  for i = 0, 255 do
    t[#t + 1] = string.char(i)
  end
  return table.concat(t):rep(300) -- 76800 bytes, every byte value, NULs included
end)()

-- with_world(fn): fn(s, w) in a task. w = { root, host, outside, config, dir (the lease
-- directory), ws (its workspace), lp (the lease as sync takes it) }; the lease is destroyed and
-- every temp dir removed afterwards; outside's sentinels must survive untouched.
local function with_world(fn, config)
  helpers.run(function()
    local root <close> = helpers.tempdir("spec-sync-root-")
    local host <close> = helpers.tempdir("spec-sync-host-")
    local outside <close> = helpers.tempdir("spec-sync-outside-")
    local w = { root = root.path, host = host.path, outside = outside.path,
      config = helpers.merged({ root = root.path }, config) }
    helpers.write_file(w.outside .. "/secret", "top secret", "600")
    assert(fs.mkdir(w.outside .. "/dir"))
    helpers.write_file(w.outside .. "/dir/file", "keep")
    local s = client.session({ provider })
    local lease = assert(s:call("environmentAcquireLease", { config = w.config, runId = "r" }))
    w.dir = lease.providerLeaseId
    w.ws = w.dir .. "/workspace"
    w.lp = { providerLeaseId = w.dir, metadata = lease.metadata }
    local before = sh('cd "$1" && find . -exec stat -c "%n %a %s" {} + | sort', w.outside)
    helpers.with_cleanup(fn, function()
      s:call("environmentDestroyLease", { config = w.config, providerLeaseId = w.dir })
    end, s, w)
    assert.equal(before, sh('cd "$1" && find . -exec stat -c "%n %a %s" {} + | sort', w.outside),
      "nothing outside changed")
    assert.equal("", leftovers(w.root) .. leftovers(w.host), "no temp file left")
  end)
end

local function sync_in(s, w, ops)
  return s:call("environmentSyncIn", { config = w.config, lease = w.lp, operations = ops })
end

local function sync_out(s, w, ops)
  return s:call("environmentSyncOut", { config = w.config, lease = w.lp, operations = ops })
end

local function file(src, dst, extra)
  return helpers.merged({ sourcePath = src, targetPath = dst, kind = "file" }, extra)
end

local function dir(src, dst, extra)
  return helpers.merged({ sourcePath = src, targetPath = dst, kind = "directory" }, extra)
end

local function op(id, files, cmds)
  return { operationId = id, files = files, postUploadCommands = cmds }
end

-- watch_copies(fn): runs fn(records) with every copy of the provider going through a wrapper
-- that, once cp is done and before the provider touches the result, records the permission
-- bits, type and path of what cp made ({mode, type, path} per file or directory). It shows the
-- mode every file and directory had before it got its final one.
local function watch_copies(fn, slow)
  local logdir <close> = helpers.tempdir("spec-sync-log-")
  local logfile = logdir.path .. "/log"
  local original = sync.copy_argv
  sync.copy_argv = function(args)
    -- the provider's own argv runs first, unchanged (its umask included); cp's own arguments
    -- are the 5th on ("/bin/sh", "-c", script, "sh", cp args...)
    local argv = { "/bin/sh", "-c", [[
      log=$1 slow=$2; shift 2
      [ "$slow" = 0 ] || sleep "$slow"
      "$@" || exit
      shift 4
      if [ "$2" = --parents ]; then # many files into the tree at $4: everything in it
        find "$4" -exec stat -c "%a %F %n" -- {} + >> "$log"
        exit
      fi
      if [ "$2" = -T ]; then set -- "$5"; else set -- "$3" "$3"/* "$3"/.[!.]*; fi
      for f in "$@"; do
        [ -e "$f" ] || [ -L "$f" ] || continue
        stat -c "%a %F %n" -- "$f" >> "$log"
      done
    ]], "sh", logfile, tostring(slow or 0) }
    local inner = original(args)
    table.move(inner, 1, #inner, #argv + 1, argv)
    return argv
  end
  helpers.with_cleanup(function()
    fn(function()
      local out = {}
      for line in (helpers.read_file(logfile) or ""):gmatch("[^\n]+") do
        local m, t, p = line:match("^(%d+) ([^/]-) (/.*)$")
        out[#out + 1] = { mode = tonumber(m, 8), type = t, path = p }
      end
      return out
    end)
  end, function()
    sync.copy_argv = original
  end)
end

describe("providers.local sync", function()
  it("declares native sync in its manifest and initialize", function()
    assert.is_true(provider.capabilities.nativeSyncIn)
    assert.is_true(provider.capabilities.nativeSyncOut)
    local methods = providers.supported_methods({ provider })
    local set = {}
    for _, m in ipairs(methods) do
      set[m] = true
    end
    assert.is_true(set.environmentSyncIn)
    assert.is_true(set.environmentSyncOut)
    local manifest = require("host.cli.manifest").build(provider)
    local caps = manifest.environmentDrivers[1].sandboxCapabilities
    assert.is_true(caps.nativeSyncIn)
    assert.is_true(caps.nativeSyncOut)
  end)

  it("keeps modification times, as the host's tar fallback does", function()
    with_world(function(s, w)
      helpers.write_file(w.host .. "/old.txt", "old")
      assert(require("host.fs").mkdir(w.host .. "/tree", oct("755")))
      helpers.write_file(w.host .. "/tree/inner.txt", "inner")
      for _, p in ipairs({ w.host .. "/old.txt", w.host .. "/tree/inner.txt" }) do
        assert(require("host.proc").run({ argv = { "touch", "-d", "2001-02-03 04:05:06", p } }))
      end
      assert(sync_in(s, w, { op("t", { file(w.host .. "/old.txt", w.ws .. "/old.txt"),
        dir(w.host .. "/tree", w.ws .. "/tree") }) }))
      local want = require("host.fs").stat(w.host .. "/old.txt").mtime
      assert.equal(want, require("host.fs").stat(w.ws .. "/old.txt").mtime)
      assert.equal(want, require("host.fs").stat(w.ws .. "/tree/inner.txt").mtime)
    end)
  end)

  it("copies a binary file in and out, atomically through a temp file beside the target",
    function()
      with_world(function(s, w)
        helpers.write_file(w.host .. "/bin.dat", ALL_BYTES, "644")
        watch_copies(function(records)
          local r = assert(sync_in(s, w, { op("op-1", { file(w.host .. "/bin.dat",
            w.ws .. "/deep/er/bin.dat") }) }))
          assert.same({ operations = { { operationId = "op-1", filesTransferred = 1,
            bytesTransferred = #ALL_BYTES } } }, r)
          assert.equal(ALL_BYTES, helpers.read_file(w.ws .. "/deep/er/bin.dat"))
          assert.equal(oct("644"), mode(w.ws .. "/deep/er/bin.dat")) -- the source's bits
          local rec = records()
          assert.equal(1, #rec)
          -- the temp file: in the target's directory, not a .paperclip-upload name, and
          -- owner-only while the bytes landed (the final 0644 came after)
          assert.matches("^" .. (w.ws .. "/deep/er/"):gsub("%p", "%%%0")
            .. "%.bin%.dat%.ph%-sync%-%x+$", rec[1].path)
          assert.is_nil(rec[1].path:find("paperclip-upload", 1, true))
          assert.equal(oct("600"), rec[1].mode)
        end)
        -- replacing an existing file (and back out to the host, over an existing file)
        helpers.write_file(w.host .. "/bin.dat", "v2", "644")
        assert(sync_in(s, w, { op("op-2", { file(w.host .. "/bin.dat",
          w.ws .. "/deep/er/bin.dat") }) }))
        assert.equal("v2", helpers.read_file(w.ws .. "/deep/er/bin.dat"))
        helpers.write_file(w.host .. "/out.dat", "old")
        local r = assert(sync_out(s, w, { op("back", { file(w.ws .. "/deep/er/bin.dat",
          w.host .. "/out.dat") }) }))
        assert.same({ { operationId = "back", filesTransferred = 1, bytesTransferred = 2 } },
          r.operations)
        assert.equal("v2", helpers.read_file(w.host .. "/out.dat"))
      end)
    end)

  it("applies mode with no window in which others could read, in files and directories",
    function()
      with_world(function(s, w)
        assert(fs.mkdir(w.host .. "/keys"))
        assert(fs.mkdir(w.host .. "/keys/sub"))
        helpers.write_file(w.host .. "/keys/id", "private", "644")
        helpers.write_file(w.host .. "/keys/sub/deep", "private too", "666")
        helpers.write_file(w.host .. "/token", "t0k3n", "644")
        watch_copies(function(records)
          local r = assert(sync_in(s, w, { op("m", {
            file(w.host .. "/token", w.ws .. "/token", { mode = oct("600") }),
            dir(w.host .. "/keys", w.ws .. "/keys", { mode = oct("600") }),
          }) }))
          assert.same({ { operationId = "m", filesTransferred = 3,
            bytesTransferred = 5 + 7 + 11 } }, r.operations)
          -- what cp made, before any chmod: nothing readable by group or others, ever
          local rec = records()
          assert.is_true(#rec >= 4)
          for _, x in ipairs(rec) do
            assert.equal(0, x.mode & oct("077"), x.path .. " was " .. ("%o"):format(x.mode))
          end
        end)
        assert.equal(oct("600"), mode(w.ws .. "/token"))
        assert.equal(oct("600"), mode(w.ws .. "/keys/id"))
        assert.equal(oct("600"), mode(w.ws .. "/keys/sub/deep"))
        assert.equal(oct("700"), mode(w.ws .. "/keys")) -- r gets its x on directories
        assert.equal(oct("700"), mode(w.ws .. "/keys/sub"))
        -- 0644 on a directory mapping: files 0644, directories 0755
        assert(sync_in(s, w, { op("m2", { dir(w.host .. "/keys", w.ws .. "/keys",
          { mode = oct("644") }) }) }))
        assert.equal(oct("644"), mode(w.ws .. "/keys/sub/deep"))
        assert.equal(oct("755"), mode(w.ws .. "/keys/sub"))
        -- without mode: the source's bits
        assert(sync_in(s, w, { op("m3", { dir(w.host .. "/keys", w.ws .. "/k3") }) }))
        assert.equal(oct("666"), mode(w.ws .. "/k3/sub/deep"))
      end)
    end)

  it("replaces a directory mapping whole, with binary content and non-UTF-8 names", function()
    with_world(function(s, w)
      local src = w.host .. "/tree"
      assert(fs.mkdir(src))
      assert(fs.mkdir(src .. "/a"))
      assert(fs.mkdir(src .. "/a/b"))
      assert(fs.mkdir(src .. "/empty"))
      local odd = "caf\xe9 \xff\xfe name\tx"
      helpers.write_file(src .. "/" .. odd, ALL_BYTES)
      helpers.write_file(src .. "/a/b/c.txt", "c")
      helpers.write_file(src .. "/.hidden", "h")
      helpers.write_file(src .. "/with 'quote' and $x", "q")
      -- an old tree at the target: it goes, whole
      assert(fs.mkdirs(w.ws .. "/tree/stale"))
      helpers.write_file(w.ws .. "/tree/stale/old", "old")
      local r = assert(sync_in(s, w, { op("t", { dir(src, w.ws .. "/tree") }) }))
      assert.same({ { operationId = "t", filesTransferred = 4,
        bytesTransferred = #ALL_BYTES + 3 } }, r.operations)
      assert.same({ ".hidden", "a", "caf\xe9 \xff\xfe name\tx", "empty", "with 'quote' and $x" },
        fs.list(w.ws .. "/tree"))
      assert.equal(ALL_BYTES, helpers.read_file(w.ws .. "/tree/" .. odd))
      assert.equal("c", helpers.read_file(w.ws .. "/tree/a/b/c.txt"))
      assert.equal("directory", fs.stat(w.ws .. "/tree/empty").type)
      -- and back out, to the host, over an old tree there
      assert(fs.mkdirs(w.host .. "/back/old"))
      r = assert(sync_out(s, w, { op("o", { dir(w.ws .. "/tree", w.host .. "/back") }) }))
      assert.same({ { operationId = "o", filesTransferred = 4,
        bytesTransferred = #ALL_BYTES + 3 } }, r.operations)
      assert.same(fs.list(src), fs.list(w.host .. "/back"))
      assert.equal(ALL_BYTES, helpers.read_file(w.host .. "/back/" .. odd))
      assert.equal("c", helpers.read_file(w.host .. "/back/a/b/c.txt"))
    end)
  end)

  it("replaces a file by a directory and a directory by a file, both ways", function()
    with_world(function(s, w)
      assert(fs.mkdir(w.host .. "/d"))
      helpers.write_file(w.host .. "/d/x", "x")
      helpers.write_file(w.host .. "/f", "f")
      -- in: a file where the directory goes, a directory (with content) where the file goes
      helpers.write_file(w.ws .. "/d", "i was a file")
      assert(fs.mkdirs(w.ws .. "/f/inner"))
      helpers.write_file(w.ws .. "/f/inner/y", "y")
      assert(sync_in(s, w, { op("1", { dir(w.host .. "/d", w.ws .. "/d"),
        file(w.host .. "/f", w.ws .. "/f") }) }))
      assert.equal("x", helpers.read_file(w.ws .. "/d/x"))
      assert.equal("f", helpers.read_file(w.ws .. "/f"))
      -- a symlink at the target is replaced, never written through
      symlink(w.outside .. "/dir", w.ws .. "/ld")
      symlink(w.outside .. "/secret", w.ws .. "/lf")
      assert(sync_in(s, w, { op("2", { dir(w.host .. "/d", w.ws .. "/ld"),
        file(w.host .. "/f", w.ws .. "/lf") }) }))
      assert.equal("directory", fs.stat(w.ws .. "/ld", false).type)
      assert.equal("file", fs.stat(w.ws .. "/lf", false).type)
      -- out: the same swaps on the host side
      helpers.write_file(w.host .. "/od", "file")
      assert(fs.mkdirs(w.host .. "/of/z"))
      assert(sync_out(s, w, { op("3", { dir(w.ws .. "/d", w.host .. "/od"),
        file(w.ws .. "/f", w.host .. "/of") }) }))
      assert.equal("x", helpers.read_file(w.host .. "/od/x"))
      assert.equal("f", helpers.read_file(w.host .. "/of"))
      -- kind must match the source
      local _, err = sync_in(s, w, { op("4", { file(w.host .. "/d", w.ws .. "/k") }) })
      assert.matches("is not a regular file %(kind is file%)", err.message)
      _, err = sync_in(s, w, { op("4", { dir(w.host .. "/f", w.ws .. "/k") }) })
      assert.matches("is not a directory %(kind is directory%)", err.message)
      assert.is_nil(fs.stat(w.ws .. "/k"))
    end)
  end)

  it("excludes by glob, matched on the path relative to the mapping's root", function()
    -- the glob semantics themselves
    local function ex(pats, rel, is_dir)
      return assert(glob.compile(pats))(rel, is_dir)
    end
    assert.is_true(ex({ "*.log" }, "a/b/x.log"))
    assert.is_false(ex({ "*.log" }, "a/b/x.logs"))
    assert.is_true(ex({ "node_modules" }, "pkg/node_modules", true))
    assert.is_false(ex({ "modules" }, "pkg/node_modules", true)) -- tails start after a "/"
    assert.is_true(ex({ "a/b" }, "x/a/b")) -- not anchored: any tail of the path
    assert.is_true(ex({ "/build" }, "build", true)) -- ours: a leading "/" anchors
    assert.is_false(ex({ "/build" }, "src/build", true))
    assert.is_true(ex({ "src/*.o" }, "src/x.o"))
    assert.is_true(ex({ "src/*.o" }, "src/deep/x.o")) -- tar: "*" matches "/" too
    assert.is_true(ex({ "a*c" }, "a/b/c"))
    assert.is_true(ex({ "src/**/*.o" }, "src/deep/er/x.o")) -- "**" is "*"
    assert.is_false(ex({ "src/**/*.o" }, "src/x.o"))
    assert.is_true(ex({ "a/**" }, "a/b/c"))
    assert.is_true(ex({ "file?.[ch]" }, "x/file1.c"))
    assert.is_false(ex({ "file?.[!ch]" }, "x/file1.c"))
    assert.is_true(ex({ "[a-c]x" }, "bx"))
    assert.is_true(ex({ "cache/" }, "cache", true)) -- ours: a trailing "/" is directories only
    assert.is_false(ex({ "cache/" }, "cache", false))
    assert.is_true(ex({ "\\*" }, "*"))
    assert.is_false(ex({ "\\*" }, "x"))
    assert.is_nil((glob.compile({ "/" })))
    with_world(function(s, w)
      local src = w.host .. "/p"
      assert(fs.mkdirs(src .. "/node_modules/dep"))
      assert(fs.mkdirs(src .. "/src/deep"))
      assert(fs.mkdirs(src .. "/cache"))
      assert(fs.mkdirs(src .. "/build"))
      helpers.write_file(src .. "/node_modules/dep/i.js", "1")
      helpers.write_file(src .. "/src/a.c", "12")
      helpers.write_file(src .. "/src/a.o", "123")
      helpers.write_file(src .. "/src/deep/b.o", "1234")
      helpers.write_file(src .. "/src/deep/b.log", "1")
      helpers.write_file(src .. "/cache/c", "1")
      helpers.write_file(src .. "/build/keep", "1")
      helpers.write_file(src .. "/src/build", "12345") -- a file named build, not at the root
      helpers.write_file(src .. "/src/._build", "AppleDouble") -- always left out, as tar's
      local r = assert(sync_in(s, w, { op("x", { dir(src, w.ws .. "/p", { exclude = {
        "node_modules", "*.o", "*.log", "cache/", "/build" } }) }) }))
      assert.same({ { operationId = "x", filesTransferred = 2, bytesTransferred = 7 } },
        r.operations)
      assert.equal("a.c\nbuild\n", sh('cd "$1" && find . -type f | sed "s|.*/||" | sort',
        w.ws .. "/p"))
      -- a file mapping is not filtered (the fallback writes the file as it is)
      r = assert(sync_in(s, w, { op("y", { file(src .. "/src/a.o", w.ws .. "/a.o",
        { exclude = { "*.o" } }) }) }))
      assert.same({ { operationId = "y", filesTransferred = 1, bytesTransferred = 3 } },
        r.operations)
      assert.equal("123", helpers.read_file(w.ws .. "/a.o"))
      -- bad globs are refused by name
      local _, err = sync_in(s, w, { op("z", { dir(src, w.ws .. "/q", { exclude = { "/" } }) }) })
      assert.matches('exclude%[1%] "/" matches nothing', err.message)
    end)
  end)

  it("keeps symlinks as links unless followSymlinks, which dereferences them (tar -h)",
    function()
      with_world(function(s, w)
        local src = w.host .. "/l"
        assert(fs.mkdirs(src .. "/real"))
        helpers.write_file(src .. "/real/f", "content")
        symlink("real/f", src .. "/rel-link")
        symlink(src .. "/real", src .. "/dir-link")
        symlink("nowhere", src .. "/dangling")
        local r = assert(sync_in(s, w, { op("a", { dir(src, w.ws .. "/a") }) }))
        -- 1 file, 3 links; links copied verbatim, never followed
        assert.same({ { operationId = "a", filesTransferred = 4, bytesTransferred = 7 } },
          r.operations)
        assert.equal("real/f", readlink(w.ws .. "/a/rel-link"))
        assert.equal(src .. "/real", readlink(w.ws .. "/a/dir-link"))
        assert.equal("nowhere", readlink(w.ws .. "/a/dangling"))
        -- followed: content instead of links; a dangling link is an error, named
        local _, err = sync_in(s, w, { op("b", { dir(src, w.ws .. "/b",
          { followSymlinks = true }) }) })
        assert.matches("symlink " .. (src .. "/dangling"):gsub("%p", "%%%0")
          .. " cannot be followed", err.message)
        assert.is_nil(fs.stat(w.ws .. "/b"))
        r = assert(sync_in(s, w, { op("b", { dir(src, w.ws .. "/b",
          { followSymlinks = true, exclude = { "dangling" } }) }) }))
        assert.same({ { operationId = "b", filesTransferred = 3, bytesTransferred = 21 } },
          r.operations)
        assert.equal("file", fs.stat(w.ws .. "/b/rel-link", false).type)
        assert.equal("content", helpers.read_file(w.ws .. "/b/rel-link"))
        assert.equal("directory", fs.stat(w.ws .. "/b/dir-link", false).type)
        assert.equal("content", helpers.read_file(w.ws .. "/b/dir-link/f"))
        -- a link loop is an error, not a hang
        symlink("..", src .. "/real/up")
        _, err = sync_in(s, w, { op("c", { dir(src, w.ws .. "/c",
          { followSymlinks = true, exclude = { "dangling" } }) }) })
        assert.matches("leads back into", err.message)
      end)
    end)

  it("never follows a symlink planted in the sandbox out of the lease on the way back",
    function()
      with_world(function(s, w)
        -- planted: a link to a host file, one to a host directory, inside a synced directory
        assert(fs.mkdirs(w.ws .. "/out"))
        helpers.write_file(w.ws .. "/out/ok", "ok")
        symlink(w.outside .. "/secret", w.ws .. "/out/steal")
        symlink(w.outside .. "/dir", w.ws .. "/out/stealdir")
        -- without followSymlinks: the links come back as links; nothing is read through them
        local r = assert(sync_out(s, w, { op("1", { dir(w.ws .. "/out", w.host .. "/o1") }) }))
        assert.same({ { operationId = "1", filesTransferred = 3, bytesTransferred = 2 } },
          r.operations)
        assert.equal("link", fs.stat(w.host .. "/o1/steal", false).type)
        assert.equal("link", fs.stat(w.host .. "/o1/stealdir", false).type)
        -- with followSymlinks: refused, named, and the host target is left as it was
        helpers.write_file(w.host .. "/o2", "before")
        local _, err = sync_out(s, w, { op("2", { dir(w.ws .. "/out", w.host .. "/o2",
          { followSymlinks = true }) }) })
        assert.equal(("local: environmentSyncOut operation 1 of 1, mapping 1 of 1 (%s -> %s): "
          .. "symlink %s points outside the lease directory %s"):format(w.ws .. "/out",
          w.host .. "/o2", w.ws .. "/out/steal", w.dir), err.message)
        assert.equal("before", helpers.read_file(w.host .. "/o2"))
        -- a link inside the lease is followed
        symlink(w.ws .. "/out/ok", w.ws .. "/inside")
        assert(sync_out(s, w, { op("3", { file(w.ws .. "/inside", w.host .. "/o3") }) }))
        assert.equal("ok", helpers.read_file(w.host .. "/o3"))
        -- the source itself, or a directory on its way, a link out: refused
        symlink(w.outside .. "/secret", w.ws .. "/s")
        symlink(w.outside, w.ws .. "/sd")
        for _, m in ipairs({ file(w.ws .. "/s", w.host .. "/o4"),
          file(w.ws .. "/sd/secret", w.host .. "/o4"), dir(w.ws .. "/sd", w.host .. "/o4"),
          file(w.ws .. "/s", w.host .. "/o4", { followSymlinks = true }) }) do
          _, err = sync_out(s, w, { op("4", { m }) })
          assert.matches("resolves outside the lease directory", err.message)
        end
        assert.is_nil(fs.stat(w.host .. "/o4"))
      end)
    end)

  it("refuses sandbox paths with .. or outside the lease, by name, and creates nothing",
    function()
      with_world(function(s, w)
        helpers.write_file(w.host .. "/f", "f")
        local cases = {
          { w.ws .. "/../../x", "targetPath " .. w.ws .. "/../../x has a .. component" },
          { w.ws .. "/a/../b", "targetPath " .. w.ws .. "/a/../b has a .. component" },
          { w.ws .. "/./b", "targetPath " .. w.ws .. "/./b has a . component" },
          { w.outside .. "/new", "targetPath " .. w.outside .. "/new is outside the lease "
            .. "directory " .. w.dir },
          { w.dir, "targetPath " .. w.dir .. " is outside the lease directory " .. w.dir },
          { w.dir .. "/.paperclip-local", "targetPath " .. w.dir
            .. "/.paperclip-local is the lease's marker file" },
          { "workspace/x", "targetPath workspace/x is not an absolute path" },
        }
        for _, c in ipairs(cases) do
          local r, err = sync_in(s, w, { op("p", { file(w.host .. "/f", c[1]) }) })
          assert.is_nil(r)
          assert.equal(("local: environmentSyncIn operation 1 of 1, mapping 1 of 1 (%s -> %s): %s")
            :format(w.host .. "/f", c[1], c[2]), err.message)
        end
        -- a target under a symlinked directory of the sandbox: never written through
        symlink(w.outside .. "/dir", w.ws .. "/via")
        local _, err = sync_in(s, w, { op("p", { file(w.host .. "/f", w.ws .. "/via/f") }) })
        assert.matches("will not create .* is a symlink", err.message)
        -- SyncOut sources the same way
        for _, src in ipairs({ w.ws .. "/../home", w.outside .. "/secret", w.dir }) do
          _, err = sync_out(s, w, { op("p", { file(src, w.host .. "/g") }) })
          assert.matches("sourcePath .* (.*)", err.message)
        end
        assert.is_nil(fs.stat(w.host .. "/g"))
        -- the operationId is opaque: never a path
        local r = assert(sync_in(s, w, { op("../../evil", { file(w.host .. "/f",
          w.ws .. "/f") }) }))
        assert.equal("../../evil", r.operations[1].operationId)
        assert.is_nil(fs.stat(w.root .. "/evil"))
        assert.is_nil(fs.stat(w.dir .. "/evil"))
        -- a lease that is not one
        _, err = s:call("environmentSyncIn", { config = w.config, lease = { providerLeaseId =
          w.outside }, operations = {} })
        assert.matches("is not a workspace of this provider", err.message)
      end)
    end)

  it("checks its params and names the bad field", function()
    with_world(function(s, w)
      local cases = {
        { {}, "operations must be an array" },
        { { { files = {} } }, "operation 1 of 1: operationId must be a non-empty string" },
        { { op("a", { { sourcePath = "/x", targetPath = w.ws .. "/x", kind = "link" } }) },
          'operation 1 of 1: files[1] kind must be "file" or "directory"' },
        { { op("a", { file("/x", w.ws .. "/x", { mode = -1 }) }) },
          "operation 1 of 1: files[1] mode must be an integer from 0 to 0o7777" },
        { { op("a", { file("/x", w.ws .. "/x", { mode = 1.5 }) }) },
          "operation 1 of 1: files[1] mode must be an integer from 0 to 0o7777" },
        { { op("a", {}, { { command = " " } }) },
          "operation 1 of 1: postUploadCommands[1] command must be a non-empty string" },
      }
      for _, c in ipairs(cases) do
        local ops = c[1]
        local r, err = s:call("environmentSyncIn", { config = w.config, lease = w.lp,
          operations = next(ops) and ops or json.null })
        assert.is_nil(r)
        assert.equal("local: environmentSyncIn: " .. c[2], err.message)
      end
      -- postUploadCommands only on SyncIn
      local _, err = sync_out(s, w, { op("a", {}, { { command = "true" } }) })
      assert.equal("local: environmentSyncOut: operation 1 of 1: postUploadCommands are only "
        .. "run on environmentSyncIn", err.message)
      -- an empty list of operations is nothing to do
      local r = assert(sync_in(s, w, json.array({})))
      assert.same({ operations = {} }, r)
    end)
  end)

  it("runs postUploadCommands verbatim after the files, in order, stopping at the first failure",
    function()
      with_world(function(s, w)
        helpers.write_file(w.host .. "/f", "data")
        assert(fs.mkdirs(w.ws .. "/sub/deeper"))
        local r = assert(sync_in(s, w, { op("c", { file(w.host .. "/f", w.ws .. "/f") }, {
          { command = "cat f > first; pwd >> order" },              -- default cwd: the sync root
          { command = "pwd >> ../order; echo \"$HOME\" 'quoted' > out", cwd = "sub" },
          { command = "pwd >> " .. w.ws .. "/order", cwd = w.ws .. "/sub/deeper" },
        }) }))
        assert.same({ { operationId = "c", filesTransferred = 1, bytesTransferred = 4 } },
          r.operations)
        assert.equal("data", helpers.read_file(w.ws .. "/first")) -- the files landed first
        assert.equal(w.ws .. "\n" .. w.ws .. "/sub\n" .. w.ws .. "/sub/deeper\n",
          helpers.read_file(w.ws .. "/order"))
        assert.equal(w.dir .. "/home quoted\n", helpers.read_file(w.ws .. "/sub/out"))
        -- stop at the first failure: the third never runs, the error names the second
        local _, err = sync_in(s, w, { op("d", {}, {
          { command = "echo one >> log" },
          { command = "echo broken >&2; exit 3" },
          { command = "echo three >> log" },
        }) })
        assert.equal("local: environmentSyncIn operation 1 of 1, postUploadCommands[2]: "
          .. "command \"echo broken >&2; exit 3\" exited with 3: broken", err.message)
        assert.equal("one\n", helpers.read_file(w.ws .. "/log"))
        -- a later operation does not run either
        _, err = sync_in(s, w, { op("e", {}, { { command = "exit 1" } }),
          op("f", { file(w.host .. "/f", w.ws .. "/never") }) })
        assert.matches("operation 1 of 2, postUploadCommands%[1%]", err.message)
        assert.is_nil(fs.stat(w.ws .. "/never"))
        -- timeoutMs is honoured
        local took
        took, _, err = helpers.timed(sync_in, s, w, { op("t", {}, {
          { command = "sleep 10", timeoutMs = 300 } }) })
        assert.is_true(took < 5, "took " .. took)
        assert.matches("command \"sleep 10\" timed out after 300ms", err.message)
        -- cwd re-validated under the sync root: no .., no absolute escape, no symlink escape
        symlink(w.outside, w.ws .. "/esc")
        local bad = {
          { "../home", "cwd ../home has a .. component" },
          { w.ws .. "/sub/../..", "cwd " .. w.ws .. "/sub/../.. has a .. component" },
          { w.dir .. "/home", "cwd " .. w.dir .. "/home is outside the sync roots (" .. w.ws
            .. ")" },
          { w.outside, "cwd " .. w.outside .. " is outside the sync roots (" .. w.ws .. ")" },
          { "esc", "cwd esc leads outside the sync root " .. w.ws .. " through a symlink" },
          { "nope", "cwd nope cannot be used" },
          { "first", "cwd first is not a directory" },
        }
        for _, c in ipairs(bad) do
          _, err = sync_in(s, w, { op("v", {}, { { command = "touch ran", cwd = c[1] } }) })
          assert.equal("local: environmentSyncIn operation 1 of 1, postUploadCommands[1]: "
            .. c[2], err.message:sub(1, #("local: environmentSyncIn operation 1 of 1, "
            .. "postUploadCommands[1]: ") + #c[2]))
        end
        assert.is_nil(fs.stat(w.outside .. "/ran"))
        assert.is_nil(fs.stat(w.dir .. "/home/ran"))
        -- the operation's own targets are sync roots too (Paperclip confines cwd to them)
        assert(fs.mkdir(w.host .. "/cfg"))
        assert(sync_in(s, w, { op("h", { dir(w.host .. "/cfg", w.dir .. "/home/cfg") },
          { { command = "pwd > here", cwd = w.dir .. "/home/cfg" } }) }))
        assert.equal(w.dir .. "/home/cfg\n", helpers.read_file(w.dir .. "/home/cfg/here"))
        -- the default cwd is the lease's remoteCwd when it lies in the workspace
        w.lp.metadata.remoteCwd = w.ws .. "/sub"
        assert(sync_in(s, w, { op("r", {}, { { command = "pwd > here" } }) }))
        assert.equal(w.ws .. "/sub\n", helpers.read_file(w.ws .. "/sub/here"))
      end)
    end)

  it("caps each operation's size with a clear error and copies nothing past it", function()
    with_world(function(s, w)
      helpers.write_file(w.host .. "/small", "12345")
      helpers.write_file(w.host .. "/big", "12345678901")
      assert(fs.mkdir(w.host .. "/d"))
      helpers.write_file(w.host .. "/d/a", "123456")
      helpers.write_file(w.ws .. "/big", "old")
      local _, err = sync_in(s, w, { op("c", { file(w.host .. "/big", w.ws .. "/big") }) })
      assert.equal(("local: environmentSyncIn operation 1 of 1, mapping 1 of 1 (%s -> %s): 11 "
        .. "bytes to copy: over the operation's size cap of 10 bytes (config syncMaxBytes)")
        :format(w.host .. "/big", w.ws .. "/big"), err.message)
      assert.equal("old", helpers.read_file(w.ws .. "/big"))
      -- summed over the operation's mappings; each operation has its own cap
      _, err = sync_in(s, w, { op("c", { file(w.host .. "/small", w.ws .. "/s"),
        dir(w.host .. "/d", w.ws .. "/d") }) })
      assert.matches("mapping 2 of 2 .* 11 bytes to copy: over the operation's size cap",
        err.message)
      assert.is_nil(fs.stat(w.ws .. "/d"))
      local r = assert(sync_in(s, w, { op("c1", { file(w.host .. "/small", w.ws .. "/s") }),
        op("c2", { dir(w.host .. "/d", w.ws .. "/d") }) }))
      assert.same({ { operationId = "c1", filesTransferred = 1, bytesTransferred = 5 },
        { operationId = "c2", filesTransferred = 1, bytesTransferred = 6 } }, r.operations)
      -- the default cap is 10 GiB
      assert.equal(10 * 1024 * 1024 * 1024, sync.DEFAULT_MAX_BYTES)
      local v = assert(s:call("environmentValidateConfig", { config = {} }))
      assert.equal(10 * 1024 * 1024 * 1024, v.normalizedConfig.syncMaxBytes)
    end, { syncMaxBytes = 10 })
  end)

  it("reports progress of a long transfer as log lines, at most one a second or so", function()
    with_world(function(s, w)
      helpers.write_file(w.host .. "/f", "slow")
      local lines = {}
      log.set_sink(function(_, msg)
        lines[#lines + 1] = msg
      end)
      local saved = sync.progress_every
      sync.progress_every = 0.3
      local took = 0
      helpers.with_cleanup(function()
        watch_copies(function()
          took = helpers.timed(function()
            assert(sync_in(s, w, { op("slow", { file(w.host .. "/f", w.ws .. "/f") }) }))
          end)
        end, 1)
      end, function()
        log.set_sink(nil)
        sync.progress_every = saved
      end)
      local progress = 0
      for _, l in ipairs(lines) do
        if l:find("environmentSyncIn operation 1 of 1: %d+ files, %d+ bytes so far") then
          progress = progress + 1
        end
      end
      -- one line per period at most (the copy alone took 1 s: at least 2 periods of 0.3 s)
      assert.is_true(progress >= 2 and progress <= took / 0.3 + 1,
        ("progress lines: %d in %.2fs"):format(progress, took))
      assert.equal("local: environmentSyncIn operation 1 of 1 done: 1 files, 4 bytes",
        lines[#lines])
    end)
  end)
end)
