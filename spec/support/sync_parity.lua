--- spec.support.sync_parity: what the sync parity specs (spec/providers/*/sync_parity_spec.lua)
-- share: running spec/queue_bridge/drive_sync.mjs (upstream's real host-side sandbox runtime
-- over our worker, native sync vs the runtime's tar + base64 fallback) and judging its report.
-- Needs Node and `npm ci --prefix spec/queue_bridge` (queue_bridge.unavailable says why not).
local assert = require("luassert")
local helpers = require("spec.helpers")
local json = require("host.json")
local queue_bridge = require("spec.support.queue_bridge")

local M = {}

--- drive(tmp [, args [, env]]) -> report: drive_sync.mjs with `tmp/node-tmp` as its TMPDIR,
-- the binary under test, args (e.g. { "--provider", "ssh" }) and env's variables (e.g. the
-- config, which holds a key: never on a command line); asserts it ran.
function M.drive(tmp, args, env)
  local argv = { "--binary", helpers.binary() }
  table.move(args or {}, 1, #(args or {}), #argv + 1, argv)
  local report, r = queue_bridge.drive("drive_sync.mjs", argv, tmp,
    { timeout = 250, max_output = 64 * 1024 * 1024, env = env })
  assert(report.ok == true and r.exit_code == 0, ("drive_sync.mjs failed (exit %s): %s\n"
    .. "stderr:\n%s\nworker stderr:\n%s"):format(tostring(r.exit_code), tostring(report.error),
    r.stderr, tostring(report.workerStderr)))
  return report
end

--- describe_differences(differences) -> "what: path: native {...} / fallback {...}" lines,
-- for a failure message ("" when there are none).
function M.describe_differences(differences)
  local lines = {}
  for _, what in ipairs(helpers.sorted_keys(differences)) do
    for _, d in ipairs(differences[what]) do
      lines[#lines + 1] = ("%s: %s: native %s / fallback %s"):format(what, d.path,
        json.encode(d.native), json.encode(d.fallback))
    end
  end
  return table.concat(lines, "\n")
end

--- count(requests, method) -> how many `method` requests the phases in requests made.
function M.count(requests, method)
  local n = 0
  for _, by_method in pairs(requests) do
    n = n + (by_method[method] or 0)
  end
  return n
end

--- check_contents(m): what the round trip must have done in either mode (so "the same" is not
-- "both empty").
function M.check_contents(m)
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

--- check(report, provider): everything a parity run's report must say, for either provider:
-- the worker and the leases gone, native sync used only in native mode, both modes' manifests
-- the same everywhere, and the expected contents (check_contents) in each. Writes the timings
-- to stderr as a TAP comment.
function M.check(report, provider)
  assert.equal("2026.824.1", report.adapterUtilsVersion)
  assert.equal(provider, report.provider)
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
  local count = M.count
  assert.equal(3, count({ native.requests.syncIn }, "environmentSyncIn"))
  assert.equal(0, count({ native.requests.syncIn }, "environmentExecute"))
  assert.equal(1, count({ native.requests.syncOut }, "environmentSyncOut"))
  assert.equal(0, count({ native.requests.syncOut }, "environmentExecute"))
  assert.equal(0, count(fallback.requests, "environmentSyncIn"))
  assert.equal(0, count(fallback.requests, "environmentSyncOut"))
  assert.is_true(count({ fallback.requests.syncIn }, "environmentExecute") > 3)
  assert.is_true(count({ fallback.requests.syncOut }, "environmentExecute") > 1)

  -- the same workspace, everywhere it was looked at
  local text = M.describe_differences(report.differences)
  assert(text == "", "native sync and the fallback differ:\n" .. text)
  for _, what in ipairs({ "hostBefore", "sandboxAfterSyncIn", "sandboxAfterChange",
    "syncOutTree", "hostAfter", "sandboxAfterSyncOut" }) do
    assert.same({}, report.differences[what], what)
    assert.same(native[what], fallback[what], what)
  end
  M.check_contents(native)
  M.check_contents(fallback)

  io.stderr:write(("# sync parity over %s: native in %d ms, out %d ms; fallback in %d ms, "
    .. "out %d ms (%d sandbox entries after sync-in, %d host entries after); driver %d ms\n")
    :format(provider, native.timings.syncInMs, native.timings.syncOutMs,
      fallback.timings.syncInMs, fallback.timings.syncOutMs,
      #helpers.sorted_keys(native.sandboxAfterSyncIn), #helpers.sorted_keys(native.hostAfter),
      report.totalMs))
end

return M
