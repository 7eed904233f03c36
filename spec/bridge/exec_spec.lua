-- spec/bridge/exec_spec.lua: ph-sandbox-helper exec, run here through host.proc as host.remote
-- runs it over SSH: exit statuses, output relayed as it comes, stdin passed through, the
-- process group published for host.remote's cancel script, the cancel marker, --timeout, a
-- closed stdout, signals, usage errors. No process and no control dir is left behind. Then
-- host.sandbox_helper, which finds the binary for the host.
local fs = require("host.fs")
local helper_procs = require("spec.support.helper_procs")
local helpers = require("spec.helpers")
local proc = require("host.proc")
local shell = require("host.shell")

local T = helper_procs.T -- bounds every wait; no spec relies on time passing

local read_file = helpers.read_file

local pids_in, all_gone = helper_procs.pids_in, helper_procs.all_gone

describe("ph-sandbox-helper exec", function()
  local dir, ctl

  -- argv running the helper on `script` (sh -c) with control dir ctl and the options given.
  local function argv(script, ...)
    local a = { helpers.sandbox_helper(), "exec", "--ctl", ctl }
    for _, o in ipairs({ ... }) do
      a[#a + 1] = o
    end
    a[#a + 1] = "--"
    a[#a + 1] = "sh"
    a[#a + 1] = "-c"
    a[#a + 1] = script
    return a
  end

  local function exec(script, opts, ...)
    return assert(proc.run(helpers.merged({ argv = argv(script, ...), timeout = T }, opts)))
  end

  before_each(function()
    dir = helpers.tempdir("ph-exec-spec-")
    ctl = dir.path .. "/executions/ctl"
  end)

  after_each(function()
    helper_procs.none_left(dir.path, T)
    dir:remove()
  end)

  it("passes the command's exit status through and removes the control dir", function()
    helpers.run(function()
      assert.equal(0, exec("true").exit_code)
      assert.equal(7, exec("exit 7").exit_code)
      assert.is_nil(fs.stat(ctl))
      -- its parents stay (mkdir -p), the dir itself was private
      assert.equal("directory", fs.stat(dir.path .. "/executions").type)
    end)
  end)

  it("gives 128 + N for a command ended by signal N, as sh's wait", function()
    helpers.run(function()
      assert.equal(143, exec("kill -TERM $$").exit_code)
      assert.equal(137, exec("kill -KILL $$").exit_code)
    end)
  end)

  it("keeps stdout and stderr apart", function()
    helpers.run(function()
      local r = exec("echo out; echo err >&2; echo out2")
      assert.equal("out\nout2\n", r.stdout)
      assert.equal("err\n", r.stderr)
    end)
  end)

  it("relays output as it comes: the first chunk arrives before the command ends", function()
    helpers.run(function()
      local gate <close> = helpers.gate()
      local chunks = {}
      local r = exec("echo first; " .. gate.sh .. "; echo second", {
        on_stdout = function(chunk)
          chunks[#chunks + 1] = chunk
          gate:open() -- the command goes on only once "first" got here
        end,
      })
      assert.equal(0, r.exit_code, r.stderr)
      assert.equal("first\n", chunks[1])
      assert.equal("first\nsecond\n", r.stdout)
    end)
  end)

  it("hands its stdin to the command, every byte", function()
    helpers.run(function()
      local data = helpers.all_bytes():rep(300) -- 76800 bytes: more than one pipe buffer
      local r = exec("cat", { stdin = data })
      assert.equal(0, r.exit_code)
      assert.equal(data, r.stdout)
      -- and the command reads a head of it first, as host.remote's env block
      r = exec("IFS= read -r line; echo \"[$line]\"; cat", { stdin = "head\nrest" })
      assert.equal("[head]\nrest", r.stdout)
    end)
  end)

  it("relays a lot of output on both streams in full", function()
    helpers.run(function()
      local r = exec("head -c 3000000 /dev/zero | tr '\\0' a & "
        .. "head -c 500000 /dev/zero | tr '\\0' b >&2; wait; exit 5")
      assert.equal(5, r.exit_code)
      assert.equal(3000000, #r.stdout)
      assert.equal(500000, #r.stderr)
    end)
  end)

  it("returns once the command exits, while a background child still holds stdout", function()
    helpers.run(function()
      local bg = dir.path .. "/bg"
      local r = exec(helper_procs.background_script(bg))
      assert.same({ 0, "done\n", "" }, { r.exit_code, r.stdout, r.stderr })
      helper_procs.background_outlived(bg, "the helper")
    end)
  end)

  it("publishes its group in DIR/pid: host.remote's cancel script stops the whole group",
    function()
      helpers.run(function()
        local pids = dir.path .. "/pids"
        local p = assert(proc.spawn({ timeout = T, argv = argv("sleep 60 & echo $! > " .. pids
          .. "; echo $$ >> " .. pids .. "; wait") }))
        local list = pids_in(pids, 2)
        helper_procs.cancels_group(ctl, list[2], T)
        local r = assert(p:wait(T))
        assert.equal(143, r.exit_code) -- the command's TERM, passed on
        all_gone(list) -- the background child too: it was in the group
        assert.is_nil(fs.stat(ctl)) -- the helper removed the dir, cancel marker included
      end)
    end)

  it("never starts a command canceled before it started: exit 130", function()
    helpers.run(function()
      assert(fs.mkdirs(ctl, tonumber("700", 8)))
      helpers.write_file(ctl .. "/cancelled", "")
      local marker = dir.path .. "/ran"
      local r = exec("touch " .. marker)
      assert.equal(130, r.exit_code)
      assert.is_nil(fs.stat(marker))
      assert.is_nil(fs.stat(ctl))
    end)
  end)

  it("--timeout: TERMs the group, KILLs what ignores TERM 2 s later, exits 124", function()
    helpers.run(function()
      local pids = dir.path .. "/pids"
      -- the background child ignores TERM (inherited from the trap): only KILL ends it
      local r = exec("(trap '' TERM; sleep 60) & echo $! > " .. pids .. "; echo $$ >> " .. pids
        .. "; echo started; wait", {}, "--timeout", "0.3")
      assert.equal(124, r.exit_code)
      assert.equal("started\n", r.stdout)
      assert.matches("exec: timed out after 0.3s", r.stderr)
      all_gone(pids_in(pids, 2))
      assert.is_nil(fs.stat(ctl))
    end)
  end)

  it("stops the group when its stdout is closed (the host went away)", function()
    helpers.run(function()
      local pids, rc = dir.path .. "/pids", dir.path .. "/rc"
      -- head takes one byte and exits: the helper's stdout has no reader any more; the
      -- command writes nothing after that, so only the helper can notice
      local cmd = shell.join(argv("sleep 60 & echo $! > " .. pids .. "; echo $$ >> " .. pids
        .. "; echo go; while :; do sleep 1; done"))
      local r = assert(proc.run({ timeout = T, argv = { "sh", "-c",
        "{ " .. cmd .. "; echo $? > " .. rc .. "; } | head -c 1" } }))
      assert.equal("g", r.stdout)
      assert.equal("141\n", read_file(rc)) -- 128 + SIGPIPE
      all_gone(pids_in(pids, 2))
      assert.is_nil(fs.stat(ctl))
    end)
  end)

  it("forwards TERM to the command's group", function()
    helpers.run(function()
      local ready = false
      local p = assert(proc.spawn({ timeout = T,
        argv = argv("trap 'echo got-term; exit 3' TERM; echo ready; "
          .. "while :; do sleep 0.05; done"),
        on_stdout = function(chunk)
          ready = ready or chunk:find("ready", 1, true) ~= nil
        end }))
      helpers.eventually(function()
        return ready
      end, "the command ready", T)
      assert(p:kill("SIGTERM")) -- the helper's own group: the command is not in it
      local r = assert(p:wait(T))
      assert.equal(3, r.exit_code)
      assert.equal("ready\ngot-term\n", r.stdout)
    end)
  end)

  it("says when it cannot run the command: 127 when it is not found, 126 otherwise", function()
    helpers.run(function()
      local r = assert(proc.run({ timeout = T, argv = { helpers.sandbox_helper(), "exec",
        "--ctl", ctl, "--", dir.path .. "/no-such-program" } }))
      assert.equal(127, r.exit_code)
      assert.matches("cannot run '.*/no%-such%-program': No such file", r.stderr)
      helpers.write_file(dir.path .. "/not-executable", "#!/bin/sh\n")
      r = assert(proc.run({ timeout = T, argv = { helpers.sandbox_helper(), "exec",
        "--ctl", ctl, "--", dir.path .. "/not-executable" } }))
      assert.equal(126, r.exit_code)
      assert.is_nil(fs.stat(ctl))
    end)
  end)

  it("exits 125 when the control dir cannot be made", function()
    helpers.run(function()
      helpers.write_file(dir.path .. "/file", "")
      ctl = dir.path .. "/file/ctl"
      local marker = dir.path .. "/ran"
      local r = exec("touch " .. marker)
      assert.equal(125, r.exit_code)
      assert.matches("cannot create the control dir .*/file/ctl", r.stderr)
      assert.is_nil(fs.stat(marker))
    end)
  end)

  it("refuses bad usage with exit 2 and a line naming the problem", function()
    helpers.run(function()
      helper_procs.refuses_usage({
        { { "exec" }, "%-%-ctl DIR is required" },
        { { "exec", "--ctl", ctl }, "no command to run" },
        { { "exec", "--ctl", ctl, "--" }, "no command to run" },
        { { "exec", "--ctl" }, "%-%-ctl needs a value" },
        { { "exec", "--ctl", "", "--", "true" }, "bad %-%-ctl ''" },
        { { "exec", "--ctl", ctl, "--bogus", "--", "true" }, "unknown option '%-%-bogus'" },
        { { "exec", "--ctl", ctl, "--timeout", "soon", "--", "true" }, "bad %-%-timeout 'soon'" },
        { { "exec", "--ctl", ctl, "--timeout", "0", "--", "true" }, "bad %-%-timeout '0'" },
        { { "exec", "--ctl", ctl, "--timeout", "-1", "--", "true" }, "bad %-%-timeout '%-1'" },
      }, "exec %-%-ctl DIR", T)
      assert.is_nil(fs.stat(ctl)) -- nothing was made
    end)
  end)

  it("lists exec in its help", function()
    helpers.run(function()
      local r = assert(proc.run({ argv = { helpers.sandbox_helper(), "--help" }, timeout = T }))
      assert.equal(0, r.exit_code)
      assert.matches("exec %-%-ctl DIR %[%-%-timeout SECONDS%] %-%- PROGRAM", r.stdout)
    end)
  end)
end)

describe("host.sandbox_helper", function()
  local sandbox_helper = require("host.sandbox_helper")
  local util = require("host.util")

  after_each(function()
    sandbox_helper.override = nil
  end)

  it("finds the helper the specs use, and says what it is", function()
    helpers.run(function()
      local path = assert(sandbox_helper.path())
      assert.equal(assert(fs.realpath(helpers.sandbox_helper())), assert(fs.realpath(path)))
      local data = assert(sandbox_helper.read())
      assert.equal(util.sha256_hex(data), sandbox_helper.sha256())
      assert.equal(#data, sandbox_helper.size())
      assert.matches("^ph%-sandbox%-helper %d+%.%d+%.%d+", assert(sandbox_helper.version()))
    end)
  end)

  it("takes an override, and says so when it names no file", function()
    helpers.run(function()
      local dir <close> = helpers.tempdir("ph-helper-spec-")
      local other = dir.path .. "/ph-sandbox-helper"
      helpers.write_file(other, "#!/bin/sh\necho 'ph-sandbox-helper 9.9.9 (fake)'\n", "755")
      sandbox_helper.override = other
      assert.equal(other, sandbox_helper.path())
      assert.equal(util.sha256_hex(helpers.read_file(other)), sandbox_helper.sha256())
      assert.equal("ph-sandbox-helper 9.9.9 (fake)", sandbox_helper.version())
      sandbox_helper.override = dir.path .. "/missing"
      local path, err, code = sandbox_helper.path()
      assert.is_nil(path)
      assert.equal("io", code)
      assert.matches("/missing is not a file", err)
      assert.is_nil((sandbox_helper.sha256()))
    end)
  end)
end)
