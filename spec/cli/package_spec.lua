-- spec/cli/package_spec.lua: the generated Paperclip plugin package, driven by Node as
-- Paperclip drives it (import the manifest, fork the shim, NDJSON on stdio). The shim
-- replaces itself with the native worker (process.execve, else lib/execve.node); the
-- spawn fallback is forced with PROVIDER_HOST_SHIM=spawn so it stays tested.
local fs = require("host.fs")
local helpers = require("spec.helpers")
local json = require("host.json")
local proc = require("host.proc")

local function have_node()
  return helpers.run(function()
    local r = proc.run({ argv = { "sh", "-c", "command -v node" }, timeout = 10 })
    return r and r.exit_code == 0
  end)
end

-- The build under test has the shim's addon (it needs Node-API headers at configure time).
local function built_with_addon()
  return fs.stat(helpers.binary():match("^(.*)/[^/]+$") .. "/execve.node") ~= nil
end

-- run_unless(why, fn): the test is pending for the reason `why` when there is one, else fn
-- runs in a task.
local function run_unless(why, fn)
  if why then
    pending(why)
  else
    helpers.run(fn)
  end
end

-- Why the addon cannot be tried here (nil when it can).
local function no_addon()
  if not have_node() or not built_with_addon() then
    return "needs node and a build with execve.node"
  end
end

-- succeeds(argv [, timeout = 30 [, env]]) -> proc.run's result, asserting an exit code of 0.
local function succeeds(argv, timeout, env)
  local r = assert(proc.run({ argv = argv, timeout = timeout or 30, env = env }))
  assert.equal(0, r.exit_code, r.stdout .. r.stderr)
  return r
end

-- A Node script that forks itself with an IPC channel as Paperclip forks the shim. The child
-- makes Node's usual changes visible (stdin opened as a stream is O_NONBLOCK; Node ignores
-- SIGPIPE; fd 3 is the channel), records them, and execs sh through the addon; sh prints
-- what it was given. The parent prints {code, signal, pid, out}.
local EXEC_PROBE = [[
import { fork } from "node:child_process";
import { existsSync, readFileSync } from "node:fs";
import { createRequire } from "node:module";
const [addon, role] = process.argv.slice(2);
if (role === "child") {
  process.stdin.pause();
  const before = [
    `FLAGS0=${/^flags:\s+(\d+)/m.exec(readFileSync("/proc/self/fdinfo/0", "utf8"))[1]}`,
    `SIGIGN=${/^SigIgn:\s+(\S+)/m.exec(readFileSync("/proc/self/status", "utf8"))[1]}`,
    `FD3=${existsSync("/proc/self/fd/3")}`,
  ];
  // sh reads its signal state with builtins (dash blocks signals while it forks a child),
  // and its fd 0 flags with grep (a redirect in sh would replace its fd 0)
  const script = `echo "pid=$$ $FLAGS0 $SIGIGN $FD3"
    while read -r k v; do
      case $k in SigBlk:|SigIgn:) echo "$k $v";; esac
    done </proc/$$/status
    grep "^flags:" /proc/$$/fdinfo/0
    ls /proc/$$/fd`;
  createRequire(import.meta.url)(addon).execve("/bin/sh", ["sh", "-c", script], before);
} else {
  const child = fork(process.argv[1], [addon, "child"], {
    stdio: ["pipe", "pipe", "inherit", "ipc"],
    env: { PATH: process.env.PATH },
  });
  let out = "";
  child.stdout.on("data", (d) => (out += d));
  child.on("exit", (code, signal) => {
    console.log(JSON.stringify({ code, signal, pid: child.pid, out }));
  });
}
]]

describe("provider-host package", function()
  local dir, pkg

  setup(function()
    helpers.run(function()
      dir = helpers.tempdir("spec-pkg-")
      pkg = dir.path .. "/plugin"
      succeeds({ helpers.binary(), "package", "local", "--out", pkg }, 60)
    end)
  end)

  teardown(function()
    if dir then
      dir:remove()
    end
  end)

  it("writes package.json naming the manifest and the worker", function()
    local p = assert(json.decode(assert(fs.read(pkg .. "/package.json"))))
    assert.equal("paperclip-plugin-local", p.name)
    assert.equal("module", p.type)
    assert.same({ manifest = "./dist/manifest.js", worker = "./dist/worker.js" }, p.paperclipPlugin)
    assert.equal("file", fs.stat(pkg .. "/bin/provider-host").type)
    assert.equal(tonumber("755", 8), fs.stat(pkg .. "/bin/provider-host").mode)
    assert.equal("file", fs.stat(pkg .. "/bin/provider-host-net.so").type)
    -- the sandbox helper beside the worker, where host.sandbox_helper looks first
    assert.equal(tonumber("755", 8), fs.stat(pkg .. "/bin/ph-sandbox-helper").mode)
    assert.is_true(fs.read(pkg .. "/bin/ph-sandbox-helper") == fs.read(helpers.sandbox_helper()))
    assert.equal("file", fs.stat(pkg .. "/lib/libcurl.so.4").type)
    assert.equal("file", fs.stat(pkg .. "/share/provider-host/lua/host/worker.lua").type)
    assert.equal("file", fs.stat(pkg .. "/share/provider-host/providers/local/init.lua").type)
    if built_with_addon() then
      assert.equal("file", fs.stat(pkg .. "/lib/execve.node").type)
    end
  end)

  it("has an addon that execs a clean process: same pid, fds, no ignored signals", function()
    run_unless(no_addon(), function()
      assert(fs.write(dir.path .. "/exec_probe.mjs", EXEC_PROBE))
      local r = succeeds({ "node", dir.path .. "/exec_probe.mjs", pkg .. "/lib/execve.node" })
      local rep = assert(json.decode(r.stdout))
      assert.equal(0, rep.code, rep.out)
      -- what Node had changed before the call, so the checks below mean something
      local flags0, sigign, fd3 = rep.out:match("^pid=%d+ (%d+) (%x+) (%a+)\n")
      assert.is_true(tonumber(flags0, 8) & tonumber("4000", 8) ~= 0, "stdin was not non-blocking")
      assert.is_true(tonumber(sigign, 16) & (1 << 12) ~= 0, "Node did not ignore SIGPIPE") -- 13
      assert.equal("true", fd3)
      -- and what sh got
      assert.equal(tostring(rep.pid), rep.out:match("^pid=(%d+)"))
      assert.equal("0000000000000000", rep.out:match("SigBlk:%s+(%x+)"))
      assert.equal("0000000000000000", rep.out:match("SigIgn:%s+(%x+)"))
      assert.equal(0, tonumber(rep.out:match("\nflags:%s+(%d+)"), 8) & tonumber("4000", 8))
      assert.equal("0\n1\n2\n", rep.out:match("\n(0\n.*)$"))
    end)
  end)

  it("throws an Error with errno from the addon when execve fails, and Node goes on", function()
    run_unless(no_addon(), function()
      -- Executable, so the addon gets as far as execve, which fails with ENOEXEC.
      local bad = dir.path .. "/not-a-program"
      assert(fs.write(bad, "neither ELF nor #!\n", tonumber("755", 8)))
      local script = [==[
const { readFileSync } = require("node:fs");
const a = require(process.argv[1]);
const state = () =>
  [0, 1, 2].map((fd) => /^flags:\s+(\d+)/m.exec(readFileSync(`/proc/self/fdinfo/${fd}`, "utf8"))[1])
    .concat(/^SigIgn:\s+(\S+)/m.exec(readFileSync("/proc/self/status", "utf8"))[1]).join(" ");
process.stdin.pause();
const before = state();
const out = [];
const calls = [[process.argv[2], ["x"], []], ["/nonexistent", ["x"], []],
  ["/bin/true", "x", []], ["/bin/true", ["a\0b"], []]];
for (const args of calls) {
  try { a.execve(...args); } catch (e) { out.push(`${e.name} ${e.errno} ${e.message}`); }
}
out.push(state() === before ? "restored" : `changed: ${before} -> ${state()}`);
console.log(JSON.stringify(out));
]==]
      local r = succeeds({ "node", "-e", script, pkg .. "/lib/execve.node", bad })
      assert.same({
        "Error 8 execve " .. bad .. ": Exec format error",
        "Error 2 execve /nonexistent: No such file or directory",
        "TypeError undefined execve: argv must be an array of strings",
        "TypeError undefined execve: argv must be an array of strings",
        "restored",
      }, json.decode(r.stdout))
    end)
  end)

  local function drive(mode, shim)
    local r = succeeds({ "node", helpers.root .. "/spec/support/fork_shim.mjs", pkg, mode, shim },
      60)
    return assert(json.decode(r.stdout))
  end

  it("loads its network module from the package", function()
    helpers.run(function()
      local r = succeeds({
        pkg .. "/bin/provider-host",
        "-e",
        'local h = require("host.core.http"); print(type(h.request))',
      }, 30, { PATH = os.getenv("PATH"), LD_LIBRARY_PATH = pkg .. "/lib" })
      assert.equal("function\n", r.stdout)
    end)
  end)

  it("finds its ph-sandbox-helper in the package", function()
    helpers.run(function()
      local r = succeeds({
        pkg .. "/bin/provider-host",
        "-e",
        'print((assert(require("host.sandbox_helper").path())))',
      }, 30, { PATH = os.getenv("PATH"), LD_LIBRARY_PATH = pkg .. "/lib" })
      assert.equal(assert(fs.realpath(pkg .. "/bin")) .. "/ph-sandbox-helper\n", r.stdout)
    end)
  end)

  -- The forked pid after initialize. Replaced: it is the native worker itself, with its
  -- watchdog as its only child and a few MB resident. Spawned: a Node with the native worker
  -- as its only child.
  local function assert_tree(tree, replaced)
    local native = assert(fs.realpath(pkg .. "/bin/provider-host"))
    if replaced then
      assert.equal(native, tree.exe)
      assert.equal("provider-host", tree.comm)
      -- its only child is the watchdog that ends its commands should it be killed: a fork of
      -- it, named ph-watchdog once it ran (a moment after the fork)
      assert.equal(1, #tree.children)
      assert.equal(native, tree.children[1].exe)
      if not os.getenv("PH_SANITIZE") then -- AddressSanitizer's shadow memory: 23-25 MB
        assert.is_true(tree.rssKb < 16 * 1024, "the worker is " .. tree.rssKb .. " kB resident")
      end
    else
      assert.equal("node", tree.comm)
      assert.equal(1, #tree.children)
      assert.equal(native, tree.children[1].exe)
    end
  end

  -- default: as Paperclip starts it (process.execve, else the addon); "addon": the addon
  -- even on a Node with process.execve; "spawn": the fallback.
  for _, shim in ipairs({ "default", "addon", "spawn" }) do
    local arg = shim ~= "default" and shim or nil

    local function skip()
      if not have_node() then
        return "node is not installed"
      end
      if shim == "addon" and not built_with_addon() then
        return "built without execve.node"
      end
    end

    -- Whether the shim must have replaced itself, given what the run's Node has.
    local function replaced(rep)
      if shim == "default" then
        return built_with_addon() or rep.nodeHasExecve
      end
      return shim == "addon"
    end

    describe("(shim: " .. shim .. ")", function()
      it("starts through the shim with fork and serves a lease, then shuts down cleanly", function()
        run_unless(skip(), function()
          local rep = drive("shutdown", arg)
          assert.equal("provider-host.local", rep.manifestId)
          assert.equal("./dist/worker.js", rep.worker)
          assert.is_true(rep.initialize.ok)
          assert_tree(rep.tree, replaced(rep))
          assert.equal("ok", rep.health.status)
          assert.equal("from-package\n", rep.stdout)
          assert.equal(json.null, rep.shutdown)
          assert.equal(0, rep.exit.code)
          assert.is_true(rep.exitMs < 1000, "exit took " .. rep.exitMs .. " ms")
          -- the shim says nothing, also when it spawns because a package has no addon
          -- (Node >= 22.15 may print its ExperimentalWarning for process.execve)
          assert.is_nil(rep.stderr:match("provider%-host: "), rep.stderr)
        end)
      end)

      it("passes SIGTERM through and exits 0", function()
        run_unless(skip(), function()
          local rep = drive("sigterm", arg)
          assert_tree(rep.tree, replaced(rep))
          assert.equal(0, rep.exit.code)
        end)
      end)
    end)
  end

  it("stops the native worker when the spawning shim is killed", function()
    run_unless(not have_node() and "node is not installed", function()
      local rep = drive("kill-shim", "spawn")
      assert.is_true(rep.nativePid ~= rep.tree.pid)
      assert.is_true(rep.nativeGone)
    end)
  end)
end)
