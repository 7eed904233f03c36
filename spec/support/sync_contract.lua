--- spec/support/sync_contract.lua: the native sync rules (worker-protocol.md 3.9, 6.3) as
-- specs, for every provider that syncs through host.sync_tar (ssh, exe-dev, e2b). Their
-- sandboxes live on this machine in the specs (a loopback sshd, the fake E2B's root dir), so
-- a spec reads and writes the sandbox's side directly.
--
-- contract.describe(name, world, busted) declares the specs (busted: {describe = describe,
-- it = it} of the spec file: they are not globals); world(fn) runs fn(w) in a task with
--   w.s       a host.client session on the provider
--   w.config  its config; w.lp the lease as sync takes it ({providerLeaseId, metadata})
--   w.box     a directory of the sandbox where specs may put anything (its real path), not
--             under w.ws
--   w.ws      the lease's workspace (the default cwd of postUploadCommands)
--   w.lease_dir  the lease directory every sandbox path must lie in, or nil (whole sandbox)
--   w.marker  text in the command line of every process of the sandbox (its dir), for
--             "nothing left"; w.except: text of the processes that may stay (command servers)
--   w.config_cap  the provider's config has syncMaxBytes (else host.sync's default applies)
--   w.host_tar    the sandbox is the host (local): no check for GNU tar at acquire
-- and removes everything it made afterwards. The contract adds w.host (a host temp dir).
local assert = require("luassert")
local cmdline = require("spec.support.cmdline")
local fs = require("host.fs")
local helpers = require("spec.helpers")
local host_sync = require("host.sync")
local proc = require("host.proc")
local sync_tar = require("host.sync_tar")
local sys = require("host.core.sys")
local tar_build = require("spec.support.tar_build")
local task = require("host.task")

local M = {}

local function oct(s)
  return tonumber(s, 8)
end

local function sh(script, ...)
  local r = assert(proc.run({ argv = { "sh", "-c", script, "sh", ... }, timeout = 60 }))
  assert.equal(0, r.exit_code, r.stderr)
  return r.stdout
end

local function mode(path)
  return assert(fs.stat(path, false)).mode & oct("7777")
end

-- A listing of a tree: "type mode size name -> link" lines and each file's sha256.
local function tree(dir)
  return sh([[cd "$1" && find . -mindepth 1 \( -type l -printf '%y %p -> %l\n' \) -o \
    \( -type d -printf '%y %m %p\n' \) -o \( -type f -printf '%y %m %s %p ' \
    -exec sh -c 'sha256sum < "$1" | cut -c1-16' sh {} \; \) | LC_ALL=C sort]], dir)
end

local function leftovers(dir)
  return sh('find "$1" -name "*.ph-sync-*" 2>/dev/null || true', dir)
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

-- A tree with what goes wrong most often: every byte value, a non-UTF-8 name, spaces and
-- quotes, an empty file and directory, a symlink, a nested directory.
local function sample_tree(root)
  assert(fs.mkdir(root, oct("755")))
  assert(fs.mkdir(root .. "/sub", oct("750")))
  assert(fs.mkdir(root .. "/sub/deeper", oct("755")))
  assert(fs.mkdir(root .. "/empty", oct("700")))
  helpers.write_file(root .. "/bytes.bin", helpers.all_bytes():rep(40), "644")
  helpers.write_file(root .. "/\xff\xfe latin1 \xe9.txt", "not utf-8", "640")
  helpers.write_file(root .. "/it's \"quoted\" $(x).txt", "quotes", "600")
  helpers.write_file(root .. "/empty.txt", "", "644")
  helpers.write_file(root .. "/sub/deeper/run.sh", "#!/bin/sh\necho hi\n", "755")
  sh('ln -s sub/deeper/run.sh "$1/link"', root)
end

-- watch(fn): fn(records) with the sandbox's receiving script wrapped: right after tar unpacks
-- and the commit member is checked, before any chmod or rename, it records "mode path" of
-- everything in its temp directory.
local function watch(record, fn)
  local original = sync_tar.scripts.receive
  local anchor = 'rm -f -- "$tmp/$COMMIT"\n'
  assert(original:find(anchor, 1, true), "the receiving script changed: find a new anchor")
  sync_tar.scripts.receive = original:gsub(anchor:gsub("%p", "%%%0"), function()
    return anchor .. "find \"$tmp\" -exec stat -c '%a %n' {} + >> '" .. record .. "'\n"
  end)
  helpers.with_cleanup(function()
    fn(function()
      local out = {}
      for line in (helpers.read_file(record) or ""):gmatch("[^\n]+") do
        local m, p = line:match("^(%d+) (.*)$")
        out[#out + 1] = { mode = oct(m), path = p }
      end
      return out
    end)
  end, function()
    sync_tar.scripts.receive = original
  end)
end

function M.describe(name, world, busted)
  local describe, it = busted.describe, busted.it
  local function with(fn)
    world(function(w)
      local host <close> = helpers.tempdir("spec-sync-host-")
      w.host = host.path
      local function call(method, ops)
        return w.s:call(method, { config = w.config, lease = w.lp, operations = ops })
      end
      w.sync_in = function(ops)
        return call("environmentSyncIn", ops)
      end
      w.sync_out = function(ops)
        return call("environmentSyncOut", ops)
      end
      fn(w)
      assert.equal("", leftovers(w.box) .. leftovers(w.host), "no temp file left")
      helpers.eventually(function()
        for _, p in ipairs(cmdline.holding(w.marker)) do
          if not (w.except and p.cmdline:find(w.except, 1, true)) then
            return false
          end
        end
        return true
      end, "no process left in the sandbox")
    end)
  end

  describe(name .. " native sync", function()
    it("says so in the lease where the sandbox has no GNU tar, and leaves sync to the host",
      function()
        local saved = sync_tar.SUPPORT_SCRIPT
        sync_tar.SUPPORT_SCRIPT = "tar --version | grep -q 'NOT GNU'" -- what busybox would do
        helpers.with_cleanup(function()
          with(function(w)
            if w.host_tar then
              return -- the sandbox is this machine: its tar is the host's
            end
            assert.is_true(w.lp.metadata.nativeFileSyncUnsupported)
            local _, err = w.sync_in({ op("x", {}) })
            assert.matches("cannot run GNU tar %(nativeFileSyncUnsupported%)", err.message)
          end)
        end, function()
          sync_tar.SUPPORT_SCRIPT = saved
        end)
      end)

    it("round-trips a tree: every byte, non-UTF-8 names, modes, empty dirs, symlinks", function()
      with(function(w)
        assert.is_nil(w.lp.metadata.nativeFileSyncUnsupported) -- GNU tar is there
        sample_tree(w.host .. "/src")
        local r = assert(w.sync_in({ op("in", { dir(w.host .. "/src", w.box .. "/t") }) }))
        assert.same({ { operationId = "in", filesTransferred = 6,
          bytesTransferred = 256 * 40 + 9 + 6 + 0 + 18 } }, r.operations)
        assert.equal(tree(w.host .. "/src"), tree(w.box .. "/t"))
        assert.equal(oct("755"), mode(w.box .. "/t")) -- the source root's bits
        r = assert(w.sync_out({ op("out", { dir(w.box .. "/t", w.host .. "/back") }) }))
        assert.same({ { operationId = "out", filesTransferred = 6,
          bytesTransferred = 256 * 40 + 9 + 6 + 0 + 18 } }, r.operations)
        assert.equal(tree(w.host .. "/src"), tree(w.host .. "/back"))
        assert.equal(oct("755"), mode(w.host .. "/back"))
      end)
    end)

    it("replaces a file atomically through a temp beside it, never a .paperclip-upload name",
      function()
        with(function(w)
          helpers.write_file(w.host .. "/f", "v1", "640")
          local record = w.host .. "/record"
          watch(record, function(records)
            assert(w.sync_in({ op("a", { file(w.host .. "/f", w.box .. "/p/q/f.txt") }) }))
            local rec = records()
            -- the temp: in the target's directory, owner-only, not a .paperclip-upload name
            assert.matches("^" .. (w.box .. "/p/q/"):gsub("%p", "%%%0")
              .. "%.f%.txt%.ph%-sync%-%d+%-%x+%-%w+$", rec[1].path)
            assert.is_nil(rec[1].path:find("paperclip-upload", 1, true))
            assert.equal(oct("700"), rec[1].mode)
          end)
          assert.equal("v1", helpers.read_file(w.box .. "/p/q/f.txt"))
          assert.equal(oct("640"), mode(w.box .. "/p/q/f.txt"))
          -- a directory in its way is replaced by the file; and back out over a directory
          assert(fs.mkdir(w.box .. "/p/d"))
          helpers.write_file(w.box .. "/p/d/x", "x")
          assert(w.sync_in({ op("b", { file(w.host .. "/f", w.box .. "/p/d") }) }))
          assert.equal("v1", helpers.read_file(w.box .. "/p/d"))
          assert(fs.mkdir(w.host .. "/back"))
          local r = assert(w.sync_out({ op("c", { file(w.box .. "/p/d", w.host .. "/back") }) }))
          assert.same({ { operationId = "c", filesTransferred = 1, bytesTransferred = 2 } },
            r.operations)
          assert.equal("v1", helpers.read_file(w.host .. "/back"))
        end)
      end)

    it("sweeps the temp a killed worker left beside a host target, never a live one's", function()
      with(function(w)
        sample_tree(w.box .. "/t")
        local dead = w.host .. "/.back.ph-sync-2147483646-00aa11bb22cc"
        local live = w.host .. "/.back.ph-sync-" .. sys.getpid() .. "-00aa11bb22cc"
        for _, p in ipairs({ dead, live }) do
          assert(fs.mkdir(p, oct("700")))
          helpers.write_file(p .. "/half", "half a transfer")
        end
        assert(w.sync_out({ op("o", { dir(w.box .. "/t", w.host .. "/back") }) }))
        assert.is_nil(fs.stat(dead))
        assert.equal("half a transfer", helpers.read_file(live .. "/half"))
        fs.remove_tree(live)
      end)
    end)

    it("replaces a directory whole: stale files go, a file in its way goes", function()
      with(function(w)
        sample_tree(w.host .. "/src")
        assert(fs.mkdir(w.box .. "/t"))
        helpers.write_file(w.box .. "/t/stale", "old")
        assert(w.sync_in({ op("a", { dir(w.host .. "/src", w.box .. "/t") }) }))
        assert.is_nil(fs.stat(w.box .. "/t/stale"))
        helpers.write_file(w.box .. "/t2", "a file")
        assert(w.sync_in({ op("b", { dir(w.host .. "/src", w.box .. "/t2") }) }))
        assert.equal(tree(w.host .. "/src"), tree(w.box .. "/t2"))
        helpers.write_file(w.host .. "/stale-out", "a file")
        assert(w.sync_out({ op("c", { dir(w.box .. "/t2", w.host .. "/stale-out") }) }))
        assert.equal(tree(w.host .. "/src"), tree(w.host .. "/stale-out"))
      end)
    end)

    it("gives mode with no window in which others could read, files in directories too",
      function()
        with(function(w)
          sample_tree(w.host .. "/keys")
          helpers.write_file(w.host .. "/token", "t0k3n", "644")
          local record = w.host .. "/record"
          watch(record, function(records)
            assert(w.sync_in({ op("m", {
              file(w.host .. "/token", w.box .. "/token", { mode = oct("600") }),
              dir(w.host .. "/keys", w.box .. "/keys", { mode = oct("600") }),
            }) }))
            -- as tar left them: under a temp directory nobody else may enter
            local rec = records()
            assert.is_true(#rec >= 8)
            for _, x in ipairs(rec) do
              if x.path:match("%.ph%-sync%-%d+%-%x+%-%w+$") then
                assert.equal(oct("700"), x.mode, x.path)
              end
            end
          end)
          assert.equal(oct("600"), mode(w.box .. "/token"))
          assert.equal(oct("600"), mode(w.box .. "/keys/bytes.bin"))
          assert.equal(oct("600"), mode(w.box .. "/keys/sub/deeper/run.sh"))
          assert.equal(oct("700"), mode(w.box .. "/keys/sub")) -- r gets its x on directories
          assert.equal(oct("700"), mode(w.box .. "/keys"))
          -- nothing setuid, setgid or sticky comes back from the sandbox
          helpers.write_file(w.box .. "/keys/suid", "#!/bin/sh\n", "755")
          assert(fs.chmod(w.box .. "/keys/suid", oct("6755")))
          assert(fs.chmod(w.box .. "/keys/sub", oct("1777")))
          assert(w.sync_out({ op("s", { dir(w.box .. "/keys", w.host .. "/k1"),
            file(w.box .. "/keys/suid", w.host .. "/suid") }) }))
          assert.equal(oct("755"), mode(w.host .. "/k1/suid"))
          assert.equal(oct("777"), mode(w.host .. "/k1/sub"))
          assert.equal(oct("755"), mode(w.host .. "/suid"))
          -- and on the way back: 0644 files, 0755 directories
          assert(w.sync_out({ op("o", { dir(w.box .. "/keys", w.host .. "/k2",
            { mode = oct("644") }) }) }))
          assert.equal(oct("644"), mode(w.host .. "/k2/sub/deeper/run.sh"))
          assert.equal(oct("755"), mode(w.host .. "/k2/sub"))
          assert.equal(oct("755"), mode(w.host .. "/k2"))
        end)
      end)

    it("leaves out exclude globs both ways, and ._* always", function()
      with(function(w)
        sample_tree(w.host .. "/src")
        assert(fs.mkdir(w.host .. "/src/node_modules"))
        helpers.write_file(w.host .. "/src/node_modules/big", "x")
        helpers.write_file(w.host .. "/src/a.log", "log")
        helpers.write_file(w.host .. "/src/sub/b.log", "log")
        helpers.write_file(w.host .. "/src/._mac", "apple")
        local r = assert(w.sync_in({ op("x", { dir(w.host .. "/src", w.box .. "/t",
          { exclude = { "node_modules", "*.log" } }) }) }))
        assert.equal(6, r.operations[1].filesTransferred)
        assert.is_nil(fs.stat(w.box .. "/t/node_modules"))
        assert.is_nil(fs.stat(w.box .. "/t/a.log"))
        assert.is_nil(fs.stat(w.box .. "/t/sub/b.log"))
        assert.is_nil(fs.stat(w.box .. "/t/._mac"))
        helpers.write_file(w.box .. "/t/c.log", "log")
        helpers.write_file(w.box .. "/t/._x", "apple")
        r = assert(w.sync_out({ op("y", { dir(w.box .. "/t", w.host .. "/back",
          { exclude = { "*.log" } }) }) }))
        assert.equal(6, r.operations[1].filesTransferred)
        assert.is_nil(fs.stat(w.host .. "/back/c.log"))
        assert.is_nil(fs.stat(w.host .. "/back/._x"))
      end)
    end)

    it("follows symlinks only when asked, and never a sandbox's link out of its root", function()
      with(function(w)
        sample_tree(w.host .. "/src")
        local r = assert(w.sync_in({ op("h", { dir(w.host .. "/src", w.box .. "/t",
          { followSymlinks = true }) }) }))
        assert.equal(6, r.operations[1].filesTransferred)
        assert.equal("file", fs.stat(w.box .. "/t/link", false).type) -- tar -h
        -- a link planted in the sandbox pointing at a host secret
        helpers.write_file(w.host .. "/secret", "host secret", "600")
        sh('ln -s "$1" "$2"', w.host .. "/secret", w.box .. "/t/planted")
        local _, err = w.sync_out({ op("o", { dir(w.box .. "/t", w.host .. "/back",
          { followSymlinks = true }) }) })
        assert.matches("symlink .*planted points outside", err.message)
        assert.is_nil(fs.stat(w.host .. "/back"))
        -- without followSymlinks it comes back as the link it is, never its content
        assert(w.sync_out({ op("o", { dir(w.box .. "/t", w.host .. "/back") }) }))
        assert.equal("link", fs.stat(w.host .. "/back/planted", false).type)
        -- nor a file mapping whose source is such a link: the link is resolved in the sandbox
        -- and must stay in its lease directory
        if w.lease_dir then
          _, err = w.sync_out({ op("f", { file(w.box .. "/t/planted", w.host .. "/f") }) })
          assert.matches("resolves outside the lease directory", err.message)
          assert.is_nil(fs.stat(w.host .. "/f"))
        end
      end)
    end)

    it("lets nothing a hostile sandbox sends land on the host", function()
      with(function(w)
        local tb = tar_build
        local device = tb.entry({ name = "dev", type = "3", major = 1, minor = 3,
          mode = oct("666") })
        local cases = {
          -- GNU tar takes a file named "d/" for a directory and reads its "content" as headers
          { tb.archive(tb.entry({ name = "d/", size = 1024 }, device .. ("\0"):rep(512))),
            "the stream holds a file named like a directory: d/" },
          { tb.archive(tb.entry({ name = "h", type = "1", linkname = "/etc/passwd" })),
            "the stream holds a hard link h" },
          { tb.archive(tb.entry({ name = "a", type = "2", linkname = w.host }),
            tb.entry({ name = "a/x" }, "x")), "the stream holds a/x below the symlink a" },
          { tb.archive(tb.entry({ name = w.host .. "/abs" }, "x")),
            "the stream holds an absolute name " .. w.host .. "/abs" },
          { tb.archive(device), "the stream holds a device or fifo dev" },
        }
        helpers.write_file(w.host .. "/evil", "old")
        local original = sync_tar.scripts.send
        helpers.with_cleanup(function()
          for i, c in ipairs(cases) do
            local path = ("%s/evil%d.tar"):format(w.box, i)
            helpers.write_file(path, c[1])
            -- the sandbox's side, replaced by one that sends the prepared stream
            sync_tar.scripts.send = "exec cat -- '" .. path .. "'"
            local _, err = w.sync_out({ op("e", { dir(w.box, w.host .. "/evil") }) })
            assert.matches(c[2], err.message, 1, true)
            assert.equal("old", helpers.read_file(w.host .. "/evil"))
          end
        end, function()
          sync_tar.scripts.send = original
        end)
        assert.equal("", sh('find "$1" \\( -type c -o -type b -o -name x -o -name abs \\)',
          w.host))
      end)
    end)

    it("refuses relative paths, . and .. components, and (confined) paths outside the lease",
      function()
        with(function(w)
          helpers.write_file(w.host .. "/f", "f")
          local _, err = w.sync_in({ op("a", { file(w.host .. "/f", w.box .. "/../escape") }) })
          assert.matches("targetPath .* has a %.%. component", err.message)
          _, err = w.sync_in({ op("a", { file(w.host .. "/f", "relative/x") }) })
          assert.matches("is not an absolute path", err.message)
          _, err = w.sync_out({ op("a", { file(w.box .. "/./x", w.host .. "/x") }) })
          assert.matches("sourcePath .* has a %. component", err.message)
          -- never the root: a mapping replaces its target whole
          _, err = w.sync_in({ op("a", { dir(w.host, "/") }) })
          assert.matches("targetPath / is the file system's root", err.message)
          _, err = w.sync_out({ op("a", { dir(w.box, "//") }) })
          assert.matches("targetPath // is the file system's root", err.message)
          if w.lease_dir then
            _, err = w.sync_in({ op("a", { file(w.host .. "/f", w.host .. "/elsewhere") }) })
            assert.matches("outside the lease directory", err.message)
            assert.is_nil(fs.stat(w.host .. "/elsewhere"))
          end
        end)
      end)

    it("runs postUploadCommands after the files, in order, verbatim, in a checked cwd",
      function()
        with(function(w)
          assert(fs.mkdir(w.host .. "/pd"))
          helpers.write_file(w.host .. "/pd/f", "f")
          local out = w.box .. "/t/log"
          local r = assert(w.sync_in({ op("p", { dir(w.host .. "/pd", w.box .. "/t") }, {
            { command = "pwd -P >> log; cat f >> log" , cwd = w.box .. "/t" },
            { command = 'printf "%s\\n" "second" >> "' .. out .. '"' },
          }) }))
          assert.equal(1, r.operations[1].filesTransferred)
          local real_t = sh('cd "$1" && pwd -P', w.box .. "/t")
          assert.equal(real_t .. "f" .. "second\n", helpers.read_file(out))
          -- the first failure stops the rest
          local _, err = w.sync_in({ op("q", {}, {
            { command = "exit 7", cwd = w.ws },
            { command = "touch never", cwd = w.ws },
          }) })
          assert.matches('postUploadCommands%[1%]: command "exit 7" exited with 7', err.message)
          assert.is_nil(fs.stat(w.ws .. "/never"))
          -- a cwd leaving the sync roots, through a symlink or lexically
          sh('ln -s "$1" "$2"', w.host, w.ws .. "/out")
          _, err = w.sync_in({ op("q", {}, { { command = "touch escaped",
            cwd = w.ws .. "/out" } }) })
          assert.matches("leads outside the sync root", err.message)
          assert.is_nil(fs.stat(w.host .. "/escaped"))
          _, err = w.sync_in({ op("q", {}, { { command = "true", cwd = w.box .. "/t" } }) })
          assert.matches("outside the sync roots", err.message)
          _, err = w.sync_in({ op("q", {}, { { command = "true", cwd = w.host } }) })
          assert.matches("outside the sync roots", err.message)
          _, err = w.sync_out({ op("q", {}, { { command = "true" } }) })
          assert.matches("only run on environmentSyncIn", err.message)
        end)
      end)

    it("fails loudly: earlier operations stay, the failing one names itself, nothing after",
      function()
        with(function(w)
          helpers.write_file(w.host .. "/f", "f")
          local _, err = w.sync_in({
            op("one", { file(w.host .. "/f", w.box .. "/one") }),
            op("two", { file(w.host .. "/f", w.box .. "/two"),
              file(w.host .. "/missing", w.box .. "/three") }),
            op("four", { file(w.host .. "/f", w.box .. "/four") }),
          })
          assert.matches("operation 2 of 3, mapping 2 of 2 %(.*/missing %-> .*/three%): "
            .. "sourcePath .* cannot be read", err.message)
          assert.equal("f", helpers.read_file(w.box .. "/one"))
          assert.is_nil(fs.stat(w.box .. "/three"))
          assert.is_nil(fs.stat(w.box .. "/four"))
          -- a source the sandbox cannot read halfway: the host keeps its old target
          assert(fs.mkdir(w.box .. "/bad"))
          helpers.write_file(w.box .. "/bad/a", ("a"):rep(300000))
          sh('mkfifo "$1"', w.box .. "/bad/z") -- never sent to the host
          helpers.write_file(w.host .. "/keep", "old")
          _, err = w.sync_out({ op("o", { dir(w.box .. "/bad", w.host .. "/keep") }) })
          assert.matches("the stream holds a device or fifo z", err.message)
          assert.equal("old", helpers.read_file(w.host .. "/keep"))
          _, err = w.sync_out({ op("o", { dir(w.box .. "/nothing", w.host .. "/x") }) })
          assert.matches("does not exist", err.message)
          assert.equal("not_found", err.data and err.data.code or "not_found")
        end)
      end)

    it("caps each operation's size, and streams: the worker never holds a transfer", function()
      with(function(w)
        assert(fs.mkdir(w.host .. "/big"))
        sh('head -c 48000000 /dev/urandom > "$1/a" && head -c 16000000 /dev/zero > "$1/b"',
          w.host .. "/big")
        -- while 64 MB pass each way, Lua's heap stays small (sampled every 10 ms)
        local peak, done = collectgarbage("count"), false
        local sampler = task.spawn(function()
          while not done do
            peak = math.max(peak, collectgarbage("count"))
            task.sleep(0.01)
          end
        end)
        local base = collectgarbage("count")
        local r = assert(w.sync_in({ op("big", { dir(w.host .. "/big", w.box .. "/big") }) }))
        assert.equal(64000000, r.operations[1].bytesTransferred)
        r = assert(w.sync_out({ op("big", { dir(w.box .. "/big", w.host .. "/back") }) }))
        assert.equal(64000000, r.operations[1].bytesTransferred)
        done = true
        sampler:wait(5)
        assert.equal(tree(w.host .. "/big"), tree(w.host .. "/back"))
        assert.is_true(peak - base < 16 * 1024, ("Lua heap grew by %.0f KiB"):format(peak - base))
        -- the cap, per operation: the config's syncMaxBytes where the provider has one (the
        -- drop-ins keep upstream's fields: they use host.sync's default)
        local saved = host_sync.DEFAULT_MAX_BYTES
        helpers.with_cleanup(function()
          if w.config_cap then
            w.config = helpers.merged(w.config, { syncMaxBytes = 1000000 })
          else
            host_sync.DEFAULT_MAX_BYTES = 1000000
          end
          -- the old targets stay whole (the sandbox's tar would take a stream cut between two
          -- members for a whole one: only the host's commit member installs it)
          helpers.write_file(w.box .. "/capped", "old")
          helpers.write_file(w.host .. "/capped", "old")
          local _, err = w.sync_in({ op("c", { dir(w.host .. "/big", w.box .. "/capped") }) })
          assert.matches("passed its size cap of 1000000 bytes", err.message)
          assert.equal("old", helpers.read_file(w.box .. "/capped"))
          _, err = w.sync_out({ op("c", { dir(w.box .. "/big", w.host .. "/capped") }) })
          assert.matches("passed its size cap of 1000000 bytes", err.message)
          assert.equal("old", helpers.read_file(w.host .. "/capped"))
        end, function()
          host_sync.DEFAULT_MAX_BYTES = saved
        end)
      end)
    end)
  end)
end

return M
