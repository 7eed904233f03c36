-- host.ssh against a real OpenSSH sshd on loopback (spec/support/sshd.lua).
local helpers = require("spec.helpers")
local fs = require("host.fs")
local log = require("host.log")
local ssh = require("host.ssh")
local sshd = require("spec.support.sshd")
local task = require("host.task")
local util = require("host.util")

local run = helpers.run
local fails_with = helpers.fails_with

describe("host.ssh #ssh", function()
  local server, keys, tmp, dir

  -- Options for server as its user with key (default: the ed25519 key), plus extra.
  local function opts(extra, srv, key)
    srv = srv or server
    return helpers.merged({
      host = srv.host,
      port = srv.port,
      user = srv.user,
      key = (key or keys.ed25519).private,
      known_hosts = dir .. "/known_hosts",
      timeout = 20,
      connect_timeout = 10,
    }, extra)
  end

  local function exec(extra, srv, key)
    return ssh.exec(opts(extra, srv, key))
  end

  -- private_server([opts]) -> a fresh sshd (sshd.start(opts)) of this test alone, for tests
  -- that stop, pause or restart theirs; closed when the test ends, whatever happens. (busted's
  -- finally runs outside any task and keeps one function per test: one such server per test.)
  local function private_server(sopts)
    local srv = sshd.start(sopts)
    finally(function()
      run(function()
        srv:close()
      end)
    end)
    return srv
  end

  -- known_server([opts]) -> a private_server(opts) that accepts the default (ed25519) key.
  local function known_server(sopts)
    local srv = private_server(sopts)
    srv:authorize(keys.ed25519.public)
    return srv
  end

  local eventually = helpers.eventually

  -- start_long([extra, srv]) -> the task running "echo started; sleep 30" (exec with extra
  -- options on srv), returned once the command's first output arrived: it is running.
  local function start_long(extra, srv)
    local started = false
    local o = helpers.merged({
      cmd = "echo started; sleep 30",
      on_stdout = function()
        started = true
      end,
    }, extra)
    local t = task.spawn(function()
      return exec(o, srv)
    end)
    eventually(function()
      return started
    end, "the command started")
    return t
  end

  setup(function()
    run(function()
      tmp = helpers.tempdir("ph-ssh-spec-")
      dir = tmp.path
      keys = {}
      for _, kind in ipairs({ "ed25519", "ecdsa", "rsa", "rsa-pem", "ecdsa-pem" }) do
        keys[kind] = sshd.keygen(dir, "id_" .. kind:gsub("%-", "_"), kind)
      end
      keys.encrypted = sshd.keygen(dir, "id_encrypted", "ed25519", "correct horse")
      keys.encrypted_pem = sshd.keygen(dir, "id_encrypted_pem", "rsa-pem", "battery staple")
      keys.stranger = sshd.keygen(dir, "id_stranger", "ed25519")
      server = sshd.start({ allow_rsa = true, accept_env = "PH_*" })
      for name, k in pairs(keys) do
        if name ~= "stranger" then
          server:authorize(k.public)
        end
      end
    end)
  end)

  teardown(function()
    ssh.close_all()
    run(function()
      if server then
        server:close()
      end
    end)
    if tmp then
      tmp:remove()
    end
  end)

  after_each(function()
    ssh.close_all()
  end)

  describe("exec", function()
    it("returns exit code 0 with stdout and stderr", function()
      local res = assert(run(exec, { cmd = "echo out; echo err >&2" }))
      assert.equal(0, res.exit_code)
      assert.equal("out\n", res.stdout)
      assert.equal("err\n", res.stderr)
      assert.is_false(res.timed_out)
      assert.is_false(res.truncated)
      assert.is_nil(res.signal)
      assert.is_true(res.duration > 0)
    end)

    it("returns a non-zero exit as a result", function()
      local res = assert(run(exec, { cmd = "echo partial; exit 42" }))
      assert.equal(42, res.exit_code)
      assert.equal("partial\n", res.stdout)
    end)

    it("reports a command killed by a signal", function()
      local res = assert(run(exec, { cmd = "kill -TERM $$" }))
      assert.is_nil(res.exit_code)
      assert.equal("TERM", res.signal)
    end)

    it("delivers stdin in full, then EOF (1 MiB through wc -c and sha256sum)", function()
      local data = util.random(1024 * 1024)
      local res = assert(run(exec, { cmd = "wc -c", stdin = data }))
      assert.equal(0, res.exit_code)
      assert.equal("1048576", res.stdout:match("%d+"))
      res = assert(run(exec, { cmd = "sha256sum", stdin = data }))
      assert.equal(util.sha256_hex(data), res.stdout:match("^(%x+)"))
    end)

    it("gives EOF on stdin when no stdin is given", function()
      local res = assert(run(exec, { cmd = "cat; echo done" }))
      assert.equal("done\n", res.stdout)
    end)

    it("still delivers stdin to a command that closed its output", function()
      local res = assert(run(exec, {
        cmd = "exec 3>&1 >&- 2>&-; wc -c > " .. dir .. "/count.txt",
        stdin = string.rep("y", 100000),
      }))
      assert.equal(0, res.exit_code)
      assert.equal("100000", assert(fs.read(dir .. "/count.txt")):match("%d+"))
    end)

    it("drains 8 MiB of stdout and 1 MiB of stderr", function()
      local res = assert(run(exec, {
        cmd = "head -c 8388608 /dev/zero & head -c 1048576 /dev/zero >&2; wait",
      }))
      assert.equal(8388608, #res.stdout)
      assert.equal(1048576, #res.stderr)
      assert.equal(0, res.exit_code)
    end)

    it("returns binary output byte for byte", function()
      local data = helpers.all_bytes():rep(64) .. util.random(200000)
      local res = assert(run(exec, { cmd = "cat; cat >&2 </dev/null", stdin = data }))
      assert.equal(#data, #res.stdout)
      assert.is_true(res.stdout == data)
    end)

    it("streams chunks in order, adding up to the final output", function()
      local out, on_stdout = helpers.collector()
      local err, on_stderr = helpers.collector()
      local res = assert(run(exec, {
        cmd = "for i in 1 2 3 4 5; do echo out$i; echo err$i >&2; sleep 0.05; done",
        on_stdout = on_stdout,
        on_stderr = on_stderr,
      }))
      assert.is_true(#out >= 2) -- arrived in pieces, as they were written
      assert.equal(res.stdout, table.concat(out))
      assert.equal(res.stderr, table.concat(err))
      assert.equal("out1\nout2\nout3\nout4\nout5\n", res.stdout)
    end)

    it("keeps running when a callback raises, and logs it", function()
      local res = assert(run(exec, {
        cmd = "echo a; sleep 0.05; echo b",
        on_stdout = function()
          error("callback bug")
        end,
      }))
      assert.equal("a\nb\n", res.stdout)
    end)

    it("truncates output beyond max_output", function()
      local res = assert(run(exec, { cmd = "head -c 100000 /dev/zero", max_output = 1000 }))
      assert.equal(1000, #res.stdout)
      assert.is_true(res.truncated)
      assert.equal(0, res.exit_code)
    end)

    it("sets variables with env when sshd accepts them, and fails when it refuses", function()
      local res =
        assert(run(exec, { cmd = "printf %s \"$PH_GREETING\"", env = { PH_GREETING = "hi" } }))
      assert.equal("hi", res.stdout)
      local err = fails_with("protocol", run(exec, { cmd = "true", env = { OTHER_NAME = "x" } }))
      assert.matches("OTHER_NAME", err)
    end)
  end)

  describe("pooling", function()
    it("runs 100 concurrent commands on one TCP connection", function()
      run(function()
        local before, logins = ssh.stats().connects, server:count("Accepted publickey")
        local fns = {}
        for i = 1, 100 do
          fns[i] = function()
            return exec({ cmd = "echo " .. i })
          end
        end
        local results = task.all(fns)
        for i = 1, 100 do
          local res = results[i][1]
          assert(res, results[i][2])
          assert.equal(i .. "\n", res.stdout)
          assert.equal(0, res.exit_code)
        end
        assert.equal(1, ssh.stats().connects - before)
        assert.equal(1, ssh.stats().sessions)
        eventually(function()
          return server:count("Accepted publickey") - logins == 1
        end, "the one login logged")
        eventually(function()
          return ssh.stats().channels == 0
        end, "every channel closed")
      end)
    end)

    it("queues commands beyond the server's channel limit (MaxSessions)", function()
      run(function()
        local srv = known_server({ max_sessions = 2 })
        local before = ssh.stats().connects
        local fns = {}
        for i = 1, 12 do
          fns[i] = function()
            return exec({ cmd = "sleep 0.05; echo " .. i }, srv)
          end
        end
        local results = task.all(fns)
        for i = 1, 12 do
          assert.equal(i .. "\n", assert(results[i][1], results[i][2]).stdout)
        end
        assert.equal(1, ssh.stats().connects - before)
      end)
    end)

    it("retries once on a fresh connection when the pooled one died unnoticed", function()
      run(function()
        local srv = known_server()
        assert(exec({ cmd = "true" }, srv))
        local before = ssh.stats().connects
        srv:pause() -- the pooled connection stops answering...
        local t = task.spawn(function()
          return exec({ cmd = "echo fresh" }, srv)
        end)
        task.sleep(0.2) -- ...while the command waits on it for a channel
        srv:kill_connections() -- then dies: the command had not started
        srv:resume()
        local res = assert(t:wait(10))
        assert.equal("fresh\n", res.stdout)
        assert.equal(before + 1, ssh.stats().connects)
      end)
    end)

    it("reuses the warm session for sequential commands", function()
      run(function()
        assert(exec({ cmd = "true" }))
        local before = ssh.stats().connects
        for _ = 1, 5 do
          assert(exec({ cmd = "true" }))
        end
        assert.equal(before, ssh.stats().connects)
      end)
    end)

    it("closes idle sessions after idle_timeout", function()
      run(function()
        assert(exec({ cmd = "true", idle_timeout = 0.2 }))
        assert.equal(1, ssh.stats().sessions)
        eventually(function()
          return ssh.stats().sessions == 0
        end, "the idle session closed")
      end)
    end)

    it("close_all closes every session", function()
      run(function()
        assert(exec({ cmd = "true" }))
        ssh.close_all()
        assert.same(0, ssh.stats().sessions)
      end)
    end)
  end)

  describe("keys", function()
    for _, kind in ipairs({ "ed25519", "ecdsa", "rsa", "rsa-pem", "ecdsa-pem" }) do
      it("authenticates with a " .. kind .. " key", function()
        local res = assert(run(exec, { cmd = "echo ok" }, nil, keys[kind]))
        assert.equal("ok\n", res.stdout)
      end)
    end

    it("authenticates with an encrypted OpenSSH key and its passphrase", function()
      local res =
        assert(run(exec, { cmd = "echo ok", passphrase = "correct horse" }, nil, keys.encrypted))
      assert.equal("ok\n", res.stdout)
    end)

    it("authenticates with an encrypted PEM key and its passphrase", function()
      local res = assert(
        run(exec, { cmd = "echo ok", passphrase = "battery staple" }, nil, keys.encrypted_pem)
      )
      assert.equal("ok\n", res.stdout)
    end)

    it("refuses an encrypted key without a passphrase before connecting", function()
      run(function()
        local before = ssh.stats().connects
        for _, k in ipairs({ keys.encrypted, keys.encrypted_pem }) do
          local err = fails_with("auth", exec({ cmd = "true" }, nil, k))
          assert.equal("ssh: private key is encrypted; give a passphrase", err)
        end
        assert.equal(before, ssh.stats().connects)
      end)
    end)

    it("refuses a malformed key before connecting", function()
      run(function()
        local before = ssh.stats().connects
        local good = keys.ed25519.private
        local bad = {
          "not a key at all",
          good:sub(1, #good // 2), -- truncated: no END line
          (good:gsub("\n[A-Za-z0-9+/=]+\n", "\n!!!!\n", 1)), -- bad base64
          keys.ed25519.public, -- a public key
          "PuTTY-User-Key-File-3: ssh-ed25519\nEncryption: none\n",
          "-----BEGIN OPENSSH PRIVATE KEY-----\n-----END OPENSSH PRIVATE KEY-----\n",
        }
        for _, text in ipairs(bad) do
          local err = fails_with("auth", exec({ cmd = "true", key = text }))
          assert.matches("^ssh: private key is not a valid OpenSSH or PEM key", err)
        end
        assert.equal(before, ssh.stats().connects)
      end)
    end)

    it("fails with auth for a key the server does not know, naming user and host", function()
      local err = fails_with("auth", run(exec, { cmd = "true" }, nil, keys.stranger))
      assert.matches(server.user .. "@127.0.0.1:" .. server.port, err, 1, true)
      assert.matches("refused the key", err, 1, true)
    end)

    it("fails with auth for a wrong passphrase", function()
      local err =
        fails_with("auth", run(exec, { cmd = "true", passphrase = "wrong" }, nil, keys.encrypted))
      assert.matches("passphrase", err)
    end)

    it("explains that libssh2 1.10 RSA keys need ssh-rsa on the server", function()
      run(function()
        local plain = private_server()
        plain:authorize(keys.rsa.public)
        local err = fails_with("auth", exec({ cmd = "true" }, plain, keys.rsa))
        assert.matches("ssh-rsa (SHA-1)", err, 1, true)
      end)
    end)
  end)

  describe("host keys", function()
    it("accept-new records a new host in known_hosts and refuses a changed key", function()
      run(function()
        local srv = known_server()
        local kh = dir .. "/known_hosts_accept_new"
        assert(exec({ cmd = "true", known_hosts = kh }, srv))
        local text = assert(fs.read(kh))
        assert.matches("[127.0.0.1]:" .. srv.port, text, 1, true)
        assert.equal(tonumber("600", 8), fs.stat(kh).mode & tonumber("777", 8))
        -- the entry is what OpenSSH's client accepts as well
        local check = assert(require("host.proc").run({
          argv = { "ssh-keygen", "-F", "[127.0.0.1]:" .. srv.port, "-f", kh },
          timeout = 10,
        }))
        assert.equal(0, check.exit_code)

        ssh.close_all()
        local strict = { cmd = "true", known_hosts = kh, host_key_policy = "yes" }
        assert(exec(strict, srv))

        srv:restart_with_new_host_key()
        ssh.close_all()
        local err = fails_with("protocol", exec({ cmd = "true", known_hosts = kh }, srv))
        local fp = srv:fingerprint()
        assert.equal(
          "ssh: host key for 127.0.0.1:" .. srv.port .. " changed (fingerprint " .. fp .. ")",
          err:sub(1, #("ssh: host key for 127.0.0.1:" .. srv.port .. " changed (fingerprint ")
            + #fp + 1)
        )
        assert.equal(text, fs.read(kh)) -- never silently replaced
        err = fails_with("protocol", exec(strict, srv))
        assert.matches("changed", err)
      end)
    end)

    it("policy yes refuses a host that is not in known_hosts", function()
      run(function()
        local kh = dir .. "/known_hosts_empty"
        local err =
          fails_with("protocol", exec({ cmd = "true", known_hosts = kh, host_key_policy = "yes" }))
        assert.matches(server:fingerprint(), err, 1, true)
        assert.is_nil(fs.stat(kh)) -- nothing written
      end)
    end)

    it("policy no accepts any key with a warning in host.log", function()
      run(function()
        local warned = {}
        local s = stub(log, "warn", function(fmt, ...)
          warned[#warned + 1] = select("#", ...) > 0 and fmt:format(...) or fmt
        end)
        finally(function()
          s:revert()
        end)
        local res = assert(exec({ cmd = "echo ok", host_key_policy = "no", known_hosts = nil }))
        assert.equal("ok\n", res.stdout)
        assert.equal(1, #warned)
        assert.matches("host key checking is off", warned[1], 1, true)
        assert.matches(server:fingerprint(), warned[1], 1, true)
      end)
    end)

    it("fingerprint returns the server's host key fingerprint", function()
      run(function()
        local fp = assert(ssh.fingerprint({ host = server.host, port = server.port }))
        assert.equal(server:fingerprint(), fp)
      end)
    end)
  end)

  describe("failures", function()
    it("times out with partial output, and the remote process goes away", function()
      run(function()
        local pidfile = dir .. "/ticker.pid"
        local t0 = task.now()
        local res = assert(exec({
          cmd = "echo $$ > " .. pidfile .. "; while :; do echo tick; sleep 0.05; done",
          timeout = 1,
        }))
        -- the command never ends: only the timeout ended it (10 s: far from its 1 s)
        assert.is_true(task.now() - t0 < 10)
        assert.is_true(res.timed_out)
        assert.is_nil(res.exit_code)
        assert.matches("^tick\n", res.stdout)
        local pid = assert(fs.read(pidfile)):match("%d+")
        eventually(function()
          return not helpers.alive(pid)
        end, "the remote process gone")
      end)
    end)

    it("fails with closed within a deadline when sshd dies mid-command", function()
      run(function()
        local srv = known_server()
        local t = start_long(nil, srv)
        srv:kill()
        -- the kill ended it: at most half way through the command's own 30 s
        fails_with("closed", t:wait(15))
      end)
    end)

    it("times out against a server that accepts but never speaks", function()
      run(function()
        local srv = private_server()
        srv:pause()
        local t0 = task.now()
        local err = fails_with("timeout", exec({ cmd = "true", timeout = 1 }, srv))
        assert.matches("while connecting", err)
        -- the 1 s timeout, before the 10 s connect_timeout of opts() could end it
        assert.is_true(task.now() - t0 < 10)
        err = fails_with("timeout", exec({ cmd = "true", connect_timeout = 0.5 }, srv))
        assert.matches("connecting to", err)
      end)
    end)

    it("marks a stalled session dead after unanswered keepalives", function()
      run(function()
        local srv = known_server()
        local t = start_long({ keepalive = 0.2 }, srv)
        srv:pause()
        local err = fails_with("closed", t:wait(10))
        assert.matches("keepalive", err)
      end)
    end)

    it("reconnects after sshd restarts", function()
      run(function()
        local srv = known_server()
        assert(exec({ cmd = "true" }, srv))
        local before = ssh.stats().connects
        srv:restart()
        local res = assert(exec({ cmd = "echo again" }, srv))
        assert.equal("again\n", res.stdout)
        assert.equal(before + 1, ssh.stats().connects)
      end)
    end)

    it("fails with connect when nothing listens, and dns for an unknown name", function()
      run(function()
        local srv = sshd.start()
        local port = srv.port
        srv:close()
        local err = fails_with("connect", exec({ cmd = "true", port = port }))
        assert.matches("refused", err)
        err = fails_with("dns", exec({ cmd = "true", host = "no-such-host.invalid" }))
        assert.matches("no%-such%-host%.invalid", err)
      end)
    end)

    it("cancel closes the channel and returns canceled", function()
      run(function()
        local t = start_long()
        t:cancel()
        fails_with("canceled", t:wait(15)) -- the cancel, not the command's own 30 s, ends it
        eventually(function()
          return ssh.stats().channels == 0
        end, "every channel closed")
        -- the session stays usable
        assert.equal("still\n", assert(exec({ cmd = "echo still" })).stdout)
      end)
    end)
  end)

  describe("upload", function()
    it("writes bytes to a remote path with the mode applied at creation", function()
      run(function()
        local data = util.random(300000) .. "\0tail"
        local path = dir .. "/uploaded.bin"
        assert(ssh.upload(opts({ path = path, data = data, mode = tonumber("600", 8) })))
        assert.equal(data, fs.read(path))
        assert.equal(tonumber("600", 8), fs.stat(path).mode & tonumber("777", 8))
        local script = dir .. "/script.sh"
        local code = "#!/bin/sh\necho run\n"
        assert(ssh.upload(opts({ path = script, data = code, mode = tonumber("755", 8) })))
        assert.equal("run\n", assert(exec({ cmd = script })).stdout)
        assert(ssh.upload(opts({ path = dir .. "/empty", data = "" })))
        assert.equal("", fs.read(dir .. "/empty"))
      end)
    end)

    it("fails with io when the remote path cannot be written", function()
      local err = fails_with("io", run(function()
        return ssh.upload(opts({ path = dir .. "/missing/dir/file", data = "x" }))
      end))
      assert.matches("missing/dir/file", err, 1, true)
    end)
  end)

  describe("arguments", function()
    it("raises on misuse, blamed on the caller", function()
      run(function()
        local function raises(name, o, pattern)
          local ok, err = pcall(function()
            local res = ssh[name](o) -- the line blamed (not a tail call: that drops the frame)
            return res
          end)
          assert.is_false(ok)
          assert.matches("^spec/host/ssh_spec%.lua:%d+: bad argument #1 to '" .. name .. "'", err)
          assert.matches(pattern, err)
        end
        raises("exec", "echo", "table expected")
        raises("exec", opts({ cmd = nil }), "field 'cmd' is required")
        raises("exec", opts({ cmd = "true", known_hosts = false }), "must be a string")
        local o = opts({ cmd = "true" })
        o.known_hosts = nil
        raises("exec", o, "'known_hosts' is required")
        raises("exec", opts({ cmd = "true", host_key_policy = "maybe" }), "host_key_policy")
        raises("exec", opts({ cmd = "true", port = 70000 }), "field 'port'")
        raises("exec", opts({ cmd = "true", env = { ["A=B"] = "x" } }), "not a valid name")
        raises("exec", opts({ cmd = "true", timeout = -1 }), "field 'timeout'")
        raises("upload", opts({ path = "a\nb", data = "" }), "line breaks")
        raises("upload", opts({ path = "/tmp/x" }), "field 'data' is required")
      end)
    end)

    it("must run inside a task", function()
      assert.has_error(function()
        ssh.exec(opts({ cmd = "true" }))
      end)
    end)
  end)
end)
