-- spec/host/owner_removal_spec.lua: trees with read-only and unreadable directories (kept by
-- tar -p from a workspace, or given by a sync's mode) are removed by their owner, on the
-- host (host.util.remove_tree) and in a sandbox (host.sync_tar's receiving script replacing
-- its target). Root ignores permissions, so each case runs as nobody (setpriv); without root
-- or setpriv they are pending.
local helpers = require("spec.helpers")
local proc = require("host.proc")
local sync_tar = require("host.sync_tar")
local tar_build = require("spec.support.tar_build")

local NOBODY = "65534"

local function sh(script, ...)
  local r = assert(helpers.run(proc.run, { argv = { "sh", "-c", script, "sh", ... },
    timeout = 30 }))
  assert.equal(0, r.exit_code, r.stderr)
  return r.stdout
end

-- as_nobody(argv, stdin) -> host.proc's result of argv run as uid/gid 65534
local function as_nobody(argv, stdin)
  local full = { "setpriv", "--reuid=" .. NOBODY, "--regid=" .. NOBODY, "--clear-groups" }
  table.move(argv, 1, #argv, #full + 1, full)
  return assert(helpers.run(proc.run, { argv = full, stdin = stdin, timeout = 60,
    env = { PATH = os.getenv("PATH") } }))
end

local function usable()
  local id = helpers.run(proc.run, { argv = { "id", "-u" }, timeout = 10 })
  return id and id.stdout == "0\n" and helpers.run(proc.run, { argv = { "sh", "-c",
    "command -v setpriv" }, timeout = 10 }).exit_code == 0
end

-- A tree owned by nobody, in a world-enterable temp dir: a 0555 directory with a file, a 0000
-- directory with a subdirectory and a file, a 0500 one.
local function locked_tree(base)
  sh([[chmod 755 "$1" && mkdir -p "$1/t/ro" "$1/t/none/sub" "$1/t/rx" &&
    echo a > "$1/t/ro/f" && echo b > "$1/t/none/sub/g" && echo c > "$1/t/rx/h" &&
    chown -R 65534:65534 "$1/t" && chmod 555 "$1/t/ro" && chmod 000 "$1/t/none" &&
    chmod 500 "$1/t/rx"]], base)
  return base .. "/t"
end

describe("removing as the owner", function()
  it("host.util.remove_tree removes read-only and unreadable directories", function()
    if not usable() then
      return pending("needs root and setpriv to run as nobody")
    end
    local tmp <close> = helpers.tempdir("spec-owner-")
    local tree = locked_tree(tmp.path)
    helpers.write_file(tmp.path .. "/rm.lua", "assert(require('host.util').remove_tree(arg[1]))\n",
      "644")
    sh('chown 65534:65534 "$1"', tmp.path) -- the tree's parent: its owner's
    local r = as_nobody({ helpers.binary(), tmp.path .. "/rm.lua", tree })
    assert.equal(0, r.exit_code, r.stderr)
    assert.equal("", sh('ls -A "$1"', tmp.path):gsub("rm%.lua\n", ""))
  end)

  it("the sandbox's receiving script replaces a target holding them", function()
    if not usable() then
      return pending("needs root and setpriv to run as nobody")
    end
    local tmp <close> = helpers.tempdir("spec-owner-")
    local target = locked_tree(tmp.path)
    sh('chown 65534:65534 "$1"', tmp.path) -- the target's parent: the sandbox user's
    local commit = ".ph-sync-commit-0011223344556677"
    local stream = tar_build.archive(tar_build.entry({ name = "new.txt" }, "new\n"))
      .. tar_build.archive(tar_build.entry({ name = commit, mode = tonumber("600", 8) }))
    local r = as_nobody({ "sh", "-c", sync_tar.scripts.receive, "ph-sync", target, "directory",
      "", "", "", "755", "", tmp.path .. "/.t.ph-sync-1-aa-XXXXXX", commit }, stream)
    assert.equal(0, r.exit_code, r.stderr)
    assert.equal("new\n", helpers.read_file(target .. "/new.txt"))
    assert.equal("new.txt\n", sh('ls -A "$1"', target))
  end)
end)
