-- spec/cli/usability_spec.lua: each command's own help, global options anywhere, call's exit
-- status, --raw, --compact and --example, package --out's refusal of a non-empty directory
-- and --force; run as a user runs the binary.
local fs = require("host.fs")
local helpers = require("spec.helpers")
local json = require("host.json")
local proc = require("host.proc")

local LOCAL = helpers.root .. "/providers/local/init.lua"

local function ph(args, opts)
  opts = opts or {}
  local argv = { helpers.binary() }
  for _, a in ipairs(args) do
    argv[#argv + 1] = a
  end
  return assert(proc.run({ argv = argv, stdin = opts.stdin, cwd = opts.cwd, timeout = 60 }))
end

local COMMANDS = { "worker", "demo", "call", "run", "list", "check", "manifest", "package", "new" }

describe("provider-host help and global options", function()
  it("prints each command's own help for CMD --help, CMD -h and help CMD", function()
    helpers.run(function()
      for _, cmd in ipairs(COMMANDS) do
        for _, argv in ipairs({ { cmd, "--help" }, { cmd, "-h" }, { "help", cmd } }) do
          local r = ph(argv)
          assert.equal(0, r.exit_code, cmd)
          assert.matches("^usage: provider%-host " .. cmd, r.stdout)
          assert.matches("options:", r.stdout)
          assert.matches("%-%-providers DIR", r.stdout)
          assert.is_nil(r.stdout:find("commands:", 1, true), cmd)
        end
      end
      -- a command's help wins over its missing arguments
      local r = ph({ "package", "--help" })
      assert.matches("%-%-force", r.stdout)
      r = ph({ "call", "--help" })
      assert.matches("124", r.stdout)
      assert.matches("%-%-raw", r.stdout)
      assert.matches("%-%-example", r.stdout)
      r = ph({ "help", "frobnicate" })
      assert.equal(2, r.exit_code)
    end)
  end)

  it("mentions -e CODE, a provider file as NAME, and the environment in the global help", function()
    helpers.run(function()
      local r = ph({ "-h" })
      assert.equal(0, r.exit_code)
      assert.matches("%-e CODE", r.stdout)
      assert.matches("call %./", r.stdout)
      assert.matches("PROVIDER_HOST_PATH", r.stdout)
      assert.matches("PROVIDER_HOST_LOG", r.stdout)
    end)
  end)

  it("takes global options before or after the command", function()
    helpers.run(function()
      local dir <close> = helpers.tempdir("spec-global-")
      assert.equal(0, ph({ "new", "acme", "--dir", dir.path }).exit_code)
      for _, argv in ipairs({
        { "--providers", dir.path, "check", "acme" },
        { "--providers=" .. dir.path, "check", "acme" },
        { "check", "acme", "--providers", dir.path },
      }) do
        local r = ph(argv)
        assert.equal(0, r.exit_code, r.stdout .. r.stderr)
        assert.matches("^ok: acme", r.stdout)
      end
      assert.equal(3, ph({ "manifest", "acme" }).exit_code)
      for _, argv in ipairs({ { "-V", "list" }, { "list", "-V" }, { "--version" } }) do
        local r = ph(argv)
        assert.equal(0, r.exit_code)
        assert.matches("^provider%-host %d+%.%d+%.%d+", r.stdout)
      end
      local r = ph({ "-h", "check" })
      assert.equal(0, r.exit_code)
      assert.matches("^usage: provider%-host check", r.stdout)
      r = ph({ "--providers" })
      assert.equal(2, r.exit_code)
      r = ph({ "--out", "x", "package", "local" })
      assert.equal(2, r.exit_code)
      assert.matches("unknown option %-%-out", r.stderr)
      r = ph({ "check", "local", "--bogus" })
      assert.equal(2, r.exit_code)
      assert.matches("unknown option %-%-bogus", r.stderr)
    end)
  end)

  it("takes a provider file's path as NAME", function()
    helpers.run(function()
      local r = ph({ "call", LOCAL, "environmentProbe", '{"config":{}}' })
      assert.equal(0, r.exit_code, r.stderr)
      assert.is_true(json.decode(r.stdout).ok)
      r = ph({ "call", "./providers/local/init.lua", "health" }, { cwd = helpers.root })
      assert.equal(0, r.exit_code, r.stderr)
      assert.equal("ok", json.decode(r.stdout).status)
    end)
  end)
end)

describe("provider-host call", function()
  -- with(fn): fn(lease) with a fresh local lease, released afterwards.
  local function with_lease(fn)
    local r = ph({ "call", "local", "environmentAcquireLease", '{"config":{}}' })
    assert.equal(0, r.exit_code, r.stderr)
    local lease = json.decode(r.stdout)
    helpers.with_cleanup(fn, function()
      ph({ "call", "local", "environmentReleaseLease",
        json.encode({ config = {}, providerLeaseId = lease.providerLeaseId }) })
    end, lease)
    assert.is_nil(fs.stat(lease.providerLeaseId))
  end

  local function execute(lease, script, extra)
    local params = { config = {}, lease = lease, command = "sh", args = { "-c", script } }
    for k, v in pairs(extra or {}) do
      params[k] = v
    end
    return json.encode(params)
  end

  it("exits with the command's status: exitCode, 124 on timeout, 128+N for a signal", function()
    helpers.run(function()
      with_lease(function(lease)
        local r = ph({ "call", "local", "environmentExecute", execute(lease, "exit 0") })
        assert.equal(0, r.exit_code, r.stderr)
        r = ph({ "call", "local", "environmentExecute", execute(lease, "echo hi; exit 3") })
        assert.equal(3, r.exit_code, r.stderr)
        assert.equal("hi\n", json.decode(r.stdout).stdout)
        r = ph({ "call", "local", "environmentExecute", execute(lease, "kill -TERM $$") })
        assert.equal(128 + 15, r.exit_code, r.stderr)
        r = ph({ "call", "local", "environmentExecute",
          execute(lease, "sleep 5", { timeoutMs = 200 }) })
        assert.equal(124, r.exit_code, r.stderr)
        assert.is_true(json.decode(r.stdout).timedOut)
      end)
    end)
  end)

  it("--raw writes an execute's stdout and stderr as the command wrote them", function()
    helpers.run(function()
      with_lease(function(lease)
        local r = ph({ "call", "local", "environmentExecute", "--raw",
          execute(lease, "echo out; echo err >&2; printf 'no newline'; exit 4") })
        assert.equal(4, r.exit_code)
        assert.equal("out\nno newline", r.stdout)
        assert.equal("err\n", r.stderr)
        -- not an execute: the JSON as usual
        r = ph({ "call", "local", "health", "--raw" })
        assert.equal(0, r.exit_code)
        assert.equal("ok", json.decode(r.stdout).status)
      end)
    end)
  end)

  it("--compact prints the JSON on one line", function()
    helpers.run(function()
      local r = ph({ "call", "local", "environmentProbe", '{"config":{}}', "--compact" })
      assert.equal(0, r.exit_code, r.stderr)
      assert.matches("^{[^\n]+}\n$", r.stdout)
      assert.is_true(json.decode(r.stdout).ok)
      r = ph({ "call", "local", "environmentProbe", '{"config":{}}' })
      assert.matches("\n  ", r.stdout)
    end)
  end)

  it("--example prints params for every method the worker dispatches, and local accepts them",
    function()
      helpers.run(function()
        local methods = require("host.cli.examples").METHODS
        local dispatched = { "initialize", "health", "configChanged", "shutdown" }
        for _, pair in ipairs(require("host.providers").HOOKS) do
          dispatched[#dispatched + 1] = pair[2]
        end
        for _, m in ipairs(dispatched) do
          local found = false
          for _, e in ipairs(methods) do
            found = found or e == m
          end
          assert.is_true(found, m)
        end
        local r = ph({ "call", "local", "nosuchMethod", "--example" })
        assert.equal(2, r.exit_code)
        assert.matches("environmentExecute", r.stderr)
        local out <close> = helpers.tempdir("ph-usability-sync-")
        with_lease(function(lease)
          for _, m in ipairs(methods) do
            r = ph({ "call", "local", m, "--example" })
            assert.equal(0, r.exit_code, m .. ": " .. r.stderr)
            local params = assert(json.decode(r.stdout), m)
            -- a lease-bound example, pointed at a real lease
            if params.lease then
              params.lease = lease
            end
            if params.providerLeaseId and m ~= "environmentReleaseLease"
              and m ~= "environmentDestroyLease" then
              params.providerLeaseId, params.leaseMetadata = lease.providerLeaseId, lease.metadata
            end
            if params.cwd then
              params.cwd = lease.metadata.remoteCwd
            end
            if params.workspace then
              params.workspace.remotePath = lease.metadata.remoteCwd
            end
            if params.operations then -- sync: this README in, the workspace out to a temp dir
              local f = params.operations[1].files[1]
              if m == "environmentSyncIn" then
                f.sourcePath = assert(fs.realpath(helpers.root .. "/README.md"))
                f.targetPath = lease.metadata.remoteCwd .. "/README.md"
              else
                f.sourcePath, f.targetPath = lease.metadata.remoteCwd, out.path .. "/out"
              end
            end
            r = ph({ "call", "local", m, json.encode(params) })
            if r.exit_code == 1 then
              -- only what local does not implement may fail, never with bad params
              assert.matches("^error %-32004: ", r.stderr, m)
            elseif m == "environmentExecute" then
              assert.equal(3, r.exit_code, r.stderr)
              assert.equal("hello\n", json.decode(r.stdout).stdout)
            else
              assert.equal(0, r.exit_code, m .. ": " .. r.stderr)
            end
            if m == "environmentAcquireLease" then
              local extra = json.decode(r.stdout)
              ph({ "call", "local", "environmentReleaseLease",
                json.encode({ config = {}, providerLeaseId = extra.providerLeaseId }) })
            end
          end
        end)
      end)
    end)
end)

describe("provider-host package --out", function()
  it("refuses a non-empty directory; --force empties it without following symlinks", function()
    helpers.run(function()
      local dir <close> = helpers.tempdir("spec-pkg-")
      local out, outside = dir.path .. "/out", dir.path .. "/outside"
      assert(fs.mkdirs(out .. "/sub"))
      assert(fs.mkdirs(outside))
      helpers.write_file(outside .. "/keep", "keep")
      helpers.write_file(out .. "/junk", "junk")
      assert.equal(0, proc.run({ argv = { "ln", "-s", outside, out .. "/link" } }).exit_code)
      assert.equal(0, proc.run({ argv = { "ln", "-s", outside, out .. "/sub/link" } }).exit_code)
      local r = ph({ "package", "local", "--out", out })
      assert.equal(1, r.exit_code)
      assert.matches("not empty", r.stderr)
      assert.matches("%-%-force", r.stderr)
      assert.is_not_nil(fs.stat(out .. "/junk"))
      r = ph({ "package", "local", "--out", out, "--force" })
      assert.equal(0, r.exit_code, r.stderr)
      assert.is_nil(fs.stat(out .. "/junk"))
      assert.is_nil(fs.stat(out .. "/link", false))
      assert.is_not_nil(fs.stat(out .. "/package.json"))
      assert.equal("keep", helpers.read_file(outside .. "/keep"))
      -- / and the current directory's parents are never emptied
      r = ph({ "package", "local", "--out", "/", "--force" })
      assert.equal(1, r.exit_code)
      assert.matches("refusing", r.stderr)
      r = ph({ "package", "local", "--out", dir.path, "--force" }, { cwd = out .. "/bin" })
      assert.equal(1, r.exit_code)
      assert.matches("refusing", r.stderr)
      r = ph({ "package", "local", "--out", "..", "--force" }, { cwd = out .. "/bin" })
      assert.equal(1, r.exit_code)
      assert.is_not_nil(fs.stat(outside .. "/keep"))
      -- a missing or empty directory needs no --force
      assert(fs.mkdirs(dir.path .. "/empty"))
      r = ph({ "package", "local", "--out", dir.path .. "/empty" })
      assert.equal(0, r.exit_code, r.stderr)
    end)
  end)
end)

describe("provider-host's man page and bash completion", function()
  local function text(path)
    return assert(helpers.read_file(helpers.root .. "/" .. path))
  end

  it("the man page documents every command, option, exit code and environment variable",
    function()
      helpers.run(function()
        local man = text("docs/provider-host.1"):gsub("\\%-", "-"):gsub("\\f[BIRP]", "")
        assert.matches("^%.\\\"", man)
        assert.matches("\n%.TH PROVIDER%-HOST 1", man)
        for _, cmd in ipairs(COMMANDS) do
          assert.matches("\n%.B " .. cmd, man)
          local r = ph({ cmd, "--help" })
          for opt in r.stdout:gmatch("%-%-[%w-]+") do
            assert.is_truthy(man:find(opt, 1, true), cmd .. " " .. opt)
          end
        end
        for _, word in ipairs({ "PROVIDER_HOST_PATH", "PROVIDER_HOST_LOG", "124", "128+N", "70",
          "-e", "--version" }) do
          assert.is_truthy(man:find(word, 1, true), word)
        end
      end)
    end)

  it("bash completes commands, options, provider names and call's methods", function()
    helpers.run(function()
      local script = helpers.root .. "/contrib/bash-completion/provider-host"
      local bin_dir = helpers.binary():match("^(.*)/[^/]+$")
      local function complete(line)
        local words = {}
        for w in line:gmatch("%S+") do
          words[#words + 1] = ("%q"):format(w)
        end
        if line:sub(-1) == " " then
          words[#words + 1] = '""'
        end
        local sh = ('PATH=%q:$PATH; source %q; COMP_WORDS=(%s); COMP_CWORD=%d; _provider_host; '
          .. 'printf "%%s\\n" "${COMPREPLY[@]}"'):format(bin_dir, script,
          table.concat(words, " "), #words - 1)
        local r = assert(proc.run({ argv = { "bash", "-c", sh }, timeout = 30 }))
        assert.equal(0, r.exit_code, r.stderr)
        local got = {}
        for w in r.stdout:gmatch("%S+") do
          got[w] = true
        end
        return got
      end
      local got = complete("provider-host ")
      for _, cmd in ipairs(COMMANDS) do
        assert.is_true(got[cmd], cmd)
      end
      assert.is_true(complete("provider-host call ")["local"])
      got = complete("provider-host call local ")
      for _, m in ipairs(require("host.cli.examples").METHODS) do
        assert.is_true(got[m], m)
      end
      got = complete("provider-host call local environmentExecute --")
      assert.is_true(got["--raw"] and got["--compact"] and got["--example"])
      got = complete("provider-host package local --")
      assert.is_true(got["--out"] and got["--force"])
      got = complete("provider-host worker --provider ")
      assert.is_true(got["local"])
    end)
  end)
end)
