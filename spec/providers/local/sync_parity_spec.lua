-- spec/providers/local/sync_parity_spec.lua: upstream's REAL host-side sandbox runtime
-- (@paperclipai/adapter-utils from npm: prepareAdapterExecutionTargetRuntime and its
-- restoreWorkspace) over our worker's `local` provider, with native sync (environmentSyncIn /
-- environmentSyncOut) and with the runtime's own tar + base64 fallback over
-- environmentExecute, must produce the same workspace (issue 12, item 4).
-- spec/queue_bridge/drive_sync.mjs plays the server: it runs `provider-host worker` with PATH
-- and a private TMPDIR only, syncs one host workspace (plus an asset and a referenced project)
-- into a lease, changes things in the sandbox, syncs back out, once per mode, and reports
-- manifests (path, type, mode, size, sha256, link target) and the worker's requests by method.
-- Upstream picks native sync when the sandbox runner has both syncIn and syncOut (the server
-- adds them when the lease's capabilities say nativeSyncIn/nativeSyncOut); the driver's
-- fallback mode builds the runner without them.
-- Needs Node and `npm ci --prefix spec/queue_bridge`; without them the case is pending.
local cmdline = require("spec.support.cmdline")
local fs = require("host.fs")
local helpers = require("spec.helpers")
local json = require("host.json")
local queue_bridge = require("spec.support.queue_bridge")

local unavailable = queue_bridge.unavailable
local processes_mentioning = cmdline.holding

-- Runs the driver with `tmp/node-tmp` as its TMPDIR; returns its report.
local function drive(tmp)
  local report, r = queue_bridge.drive("drive_sync.mjs", { "--binary", helpers.binary() }, tmp,
    { timeout = 250, max_output = 64 * 1024 * 1024 })
  assert(report.ok == true and r.exit_code == 0, ("drive_sync.mjs failed (exit %s): %s\n"
    .. "stderr:\n%s\nworker stderr:\n%s"):format(tostring(r.exit_code), tostring(report.error),
    r.stderr, tostring(report.workerStderr)))
  return report
end

-- "path: native {...} / fallback {...}" lines, for a failure message.
local function describe_differences(differences)
  local lines = {}
  for _, what in ipairs(helpers.sorted_keys(differences)) do
    for _, d in ipairs(differences[what]) do
      lines[#lines + 1] = ("%s: %s: native %s / fallback %s"):format(what, d.path,
        json.encode(d.native), json.encode(d.fallback))
    end
  end
  return table.concat(lines, "\n")
end

local function count(requests, method)
  local n = 0
  for _, by_method in pairs(requests) do
    n = n + (by_method[method] or 0)
  end
  return n
end

-- What the round trip must have done in either mode (so "the same" is not "both empty").
local function check_contents(m)
  local sb, host, out = m.sandboxAfterSyncIn, m.hostAfter, m.syncOutTree
  -- sync in: the workspace as it was, `._*`, excluded globs and heavy dirs left out
  assert.same({ type = "file", mode = "0600", size = 27,
    sha256 = m.hostBefore["conf/private.key"].sha256 }, sb["conf/private.key"])
  assert.equal("0755", sb["bin/run.sh"].mode)
  assert.equal("0664", sb["conf/shared.txt"].mode)
  assert.same(m.hostBefore["data/blob.bin"], sb["data/blob.bin"])
  assert.same({ type = "symlink", mode = "0777", target = "../src" }, sb["notes/src-dir-link"])
  assert.equal("dir", sb["empty-dir"].type)
  for _, gone in ipairs({ "._junk", "src/._mod00.js", "cache.skip", "src/a/tmp.skip",
    "private-notes", "node_modules" }) do
    assert.is_nil(sb[gone], gone)
  end
  -- the referenced project (a native directory mapping): non-UTF-8 names, links, modes
  local ref = ".paperclip-runtime/claude_local/project-ref1/"
  assert.equal("file", sb[ref .. "names/bad\\xff\\xfe-name"].type)
  assert.equal("file", sb[ref .. "names/caf\\xe9.txt"].type)
  assert.same({ type = "symlink", mode = "0777", target = "../lib" }, sb[ref .. "names/lib-link"])
  assert.equal("0600", sb[ref .. "secret.pem"].mode)
  for _, gone in ipairs({ "._junk", "lib/._part0.ts", "node_modules", "dist", ".git" }) do
    assert.is_nil(sb[ref .. gone], gone)
  end
  -- the asset: its link dereferenced (followSymlinks), *.tmp excluded
  assert.equal("file", sb[".paperclip-runtime/claude_local/skills/skill-link.md"].type)
  assert.is_nil(sb[".paperclip-runtime/claude_local/skills/scratch.tmp"])
  -- sync out: the sandbox's changes, nothing excluded, no runtime dir
  assert.is_nil(out[".paperclip-runtime"])
  assert.is_nil(out["added/scratch.skip"])
  assert.is_nil(out["added/._meta"])
  assert.is_nil(out["dist"])
  -- merged into the host
  assert.equal(29, host["notes/readme.md"].size)
  assert.equal("0640", host["conf/private.key"].mode)
  assert.equal("0750", host["added/new-tool"].mode)
  assert.same({ type = "symlink", mode = "0777", target = "nested/new.txt" },
    host["added/new-link"])
  assert.is_nil(host["src/delete-me.txt"])
  assert.equal("dir", host["src/becomes-dir"].type)
  assert.equal("file", host["src/becomes-dir/inner.txt"].type)
  -- excluded on the host stays as it was; the sandbox's excluded writes never come back
  assert.same(m.hostBefore["private-notes/todo.txt"], host["private-notes/todo.txt"])
  assert.is_nil(host["private-notes/sandbox.txt"])
  assert.is_nil(host["added/scratch.skip"])
  assert.is_nil(host["dist"])
  -- upstream's own behaviour, the same in both modes: its merge deletes from the host what
  -- its baseline snapshot kept but its sync-out (tar globs, or ours) left out: `._*` files, and
  -- files an exclude glob matches that its baseline matcher (exclude-patterns.js: literal
  -- paths, `*/x`, `x/*` only) does not, such as `*.skip`
  for _, gone in ipairs({ "._junk", "src/._mod00.js", "cache.skip", "src/a/tmp.skip" }) do
    assert.is_nil(host[gone], gone)
  end
end

describe("upstream's sandbox runtime (@paperclipai/adapter-utils) over local: native sync "
  .. "and the fallback give the same workspace #node", function()
  it("sync in, a change in the sandbox, sync out: same manifests in both modes", function()
    local why = unavailable()
    if why then
      pending(why)
      return
    end
    local saved = helpers.deadline
    helpers.deadline = 280
    local ok, err = pcall(helpers.run, function()
      local tmp = helpers.tempdir("ph-sync-parity-")
      local tmp_path = tmp.path
      local report, left
      helpers.with_cleanup(function()
        report = drive(tmp_path)
        helpers.eventually(function()
          left = { processes = processes_mentioning(tmp_path),
            dirs = fs.list(tmp_path .. "/node-tmp") }
          if report.workerPid and helpers.alive(report.workerPid) then
            left.processes[#left.processes + 1] = report.workerPid
          end
          return #left.processes == 0 and #left.dirs == 0
        end, "everything the run started gone", 10)
      end, function()
        tmp:remove()
      end)
      assert.same({ processes = {}, dirs = {} }, left)
      assert.is_nil(fs.stat(tmp_path))

      assert.equal("2026.824.1", report.adapterUtilsVersion)
      assert.same({ "PATH", "TMPDIR" }, report.workerEnvKeys)
      assert.is_true(report.capabilities.nativeSyncIn)
      assert.is_true(report.capabilities.nativeSyncOut)
      assert.same({ code = 0, signal = json.null }, report.workerExit)
      assert.is_true(report.rootRemoved)
      assert.same({}, report.leftInLeases)
      local native, fallback = report.modes.native, report.modes.fallback
      for _, m in ipairs({ native, fallback }) do
        assert.is_true(m.released, m.mode)
        assert.is_true(m.leaseGone, m.mode)
        assert.same({}, m.additionalSourceFailures)
      end

      -- native mode used the worker's sync methods; the fallback never did
      assert.equal(3, count({ native.requests.syncIn }, "environmentSyncIn"))
      assert.equal(0, count({ native.requests.syncIn }, "environmentExecute"))
      assert.equal(1, count({ native.requests.syncOut }, "environmentSyncOut"))
      assert.equal(0, count({ native.requests.syncOut }, "environmentExecute"))
      assert.equal(0, count(fallback.requests, "environmentSyncIn"))
      assert.equal(0, count(fallback.requests, "environmentSyncOut"))
      assert.is_true(count({ fallback.requests.syncIn }, "environmentExecute") > 3)
      assert.is_true(count({ fallback.requests.syncOut }, "environmentExecute") > 1)

      -- the same workspace, everywhere it was looked at
      local text = describe_differences(report.differences)
      assert(text == "", "native sync and the fallback differ:\n" .. text)
      for _, what in ipairs({ "hostBefore", "sandboxAfterSyncIn", "sandboxAfterChange",
        "syncOutTree", "hostAfter", "sandboxAfterSyncOut" }) do
        assert.same({}, report.differences[what], what)
        assert.same(native[what], fallback[what], what)
      end
      check_contents(native)
      check_contents(fallback)

      io.stderr:write(("# sync parity over local: native in %d ms, out %d ms; fallback in %d ms, "
        .. "out %d ms (%d sandbox entries after sync-in, %d host entries after); driver %d ms\n")
        :format(native.timings.syncInMs, native.timings.syncOutMs, fallback.timings.syncInMs,
          fallback.timings.syncOutMs, #helpers.sorted_keys(native.sandboxAfterSyncIn),
          #helpers.sorted_keys(native.hostAfter), report.totalMs))
    end)
    helpers.deadline = saved
    if not ok then
      error(err, 0)
    end
  end)
end)
