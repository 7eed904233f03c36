-- spec/providers/local/sync_spec.lua: native environmentSyncIn / environmentSyncOut on local
-- (host.sync_tar through the provider's duplex on this machine): the shared sync contract,
-- plus what only local shows (modification times, the params' checks, progress lines, the
-- network isolation of postUploadCommands).
local client = require("host.client")
local cmdline = require("spec.support.cmdline")
local contract = require("spec.support.sync_contract")
local fs = require("host.fs")
local helpers = require("spec.helpers")
local host_sync = require("host.sync")
local json = require("host.json")
local log = require("host.log")
local proc = require("host.proc")
local providers = require("host.providers")
local worker_process = require("spec.support.worker_process")

local provider = assert(providers.load("local"))


-- world(fn, config): fn(w) with a lease of its own under a private root (see the contract);
-- the lease is destroyed and the root removed afterwards.
local function world(fn, config)
  helpers.run(function()
    local root <close> = helpers.tempdir("spec-sync-root-")
    local cfg = helpers.merged({ root = root.path }, config)
    local s = client.session({ provider })
    local lease = assert(s:call("environmentAcquireLease", { config = cfg, runId = "r" }))
    local dir = lease.providerLeaseId
    local w = { s = s, config = cfg, lease_dir = dir, config_cap = true, host_tar = true,
      ws = dir .. "/workspace",
      box = dir .. "/home", lp = { providerLeaseId = dir, metadata = lease.metadata } }
    w.marker = dir
    helpers.with_cleanup(fn, function()
      s:call("environmentDestroyLease", { config = cfg, providerLeaseId = dir })
    end, w)
  end)
end

local function op(id, files, cmds)
  return { operationId = id, files = files, postUploadCommands = cmds }
end

local function call(w, method, ops)
  return w.s:call(method, { config = w.config, lease = w.lp, operations = ops })
end

describe("providers.local sync", function()
  it("declares native sync in its manifest and initialize", function()
    assert.is_true(provider.capabilities.nativeSyncIn)
    assert.is_true(provider.capabilities.nativeSyncOut)
    local set = {}
    for _, m in ipairs(providers.supported_methods({ provider })) do
      set[m] = true
    end
    assert.is_true(set.environmentSyncIn)
    assert.is_true(set.environmentSyncOut)
    local caps = require("host.cli.manifest").build(provider)
      .environmentDrivers[1].sandboxCapabilities
    assert.is_true(caps.nativeSyncIn)
    assert.is_true(caps.nativeSyncOut)
  end)

  contract.describe("providers.local", world, { describe = describe, it = it })

  it("keeps modification times, as the host's tar fallback does", function()
    world(function(w)
      local host <close> = helpers.tempdir("spec-sync-host-")
      helpers.write_file(host.path .. "/old.txt", "old")
      assert(fs.mkdir(host.path .. "/tree"))
      helpers.write_file(host.path .. "/tree/inner.txt", "inner")
      for _, p in ipairs({ host.path .. "/old.txt", host.path .. "/tree/inner.txt" }) do
        assert(proc.run({ argv = { "touch", "-d", "2001-02-03 04:05:06", p } }))
      end
      assert(call(w, "environmentSyncIn", { op("t", {
        { sourcePath = host.path .. "/old.txt", targetPath = w.ws .. "/old.txt", kind = "file" },
        { sourcePath = host.path .. "/tree", targetPath = w.ws .. "/tree", kind = "directory" },
      }) }))
      local want = fs.stat(host.path .. "/old.txt").mtime
      assert.equal(want, fs.stat(w.ws .. "/old.txt").mtime)
      assert.equal(want, fs.stat(w.ws .. "/tree/inner.txt").mtime)
    end)
  end)

  it("checks its params and names the bad field", function()
    world(function(w)
      local cases = {
        { {}, "operations must be an array" },
        { { { files = {} } }, "operation 1 of 1: operationId must be a non-empty string" },
        { { op("a", { { sourcePath = "/x", targetPath = w.ws .. "/x", kind = "link" } }) },
          'operation 1 of 1: files[1] kind must be "file" or "directory"' },
        { { op("a", { { sourcePath = "/x", targetPath = w.ws .. "/x", kind = "file",
          mode = -1 } }) }, "operation 1 of 1: files[1] mode must be an integer from 0 to 0o7777"
        },
        { { op("a", { { sourcePath = "/x", targetPath = w.ws .. "/x", kind = "file",
          mode = 1.5 } }) }, "operation 1 of 1: files[1] mode must be an integer from 0 to 0o7777"
        },
        { { op("a", { { sourcePath = "/x", targetPath = w.ws .. "/x", kind = "directory",
          exclude = { "a", 3 } } }) }, "operation 1 of 1: files[1] exclude[2] must be a non-empty "
          .. "string" },
        { { op("a", {}, { { command = " " } }) },
          "operation 1 of 1: postUploadCommands[1] command must be a non-empty string" },
      }
      for _, c in ipairs(cases) do
        local ops = c[1]
        local r, err = call(w, "environmentSyncIn", next(ops) and ops or json.null)
        assert.is_nil(r)
        assert.equal("local: environmentSyncIn: " .. c[2], err.message)
      end
      -- an empty list of operations is nothing to do
      assert.same({ operations = {} }, assert(call(w, "environmentSyncIn", json.array({}))))
      -- a lease that is not one of ours
      local _, err = w.s:call("environmentSyncIn", { config = w.config, lease = {
        providerLeaseId = "/etc", metadata = {} }, operations = json.array({}) })
      assert.matches("/etc", err.message)
    end)
  end)

  it("reports progress of a long transfer as log lines, at most one a period", function()
    world(function(w)
      local host <close> = helpers.tempdir("spec-sync-host-")
      assert(proc.run({ argv = { "sh", "-c", 'head -c 60000000 /dev/zero > "$1"', "sh",
        host.path .. "/big" } }))
      local lines = {}
      log.set_sink(function(_, msg)
        lines[#lines + 1] = msg
      end)
      local saved = host_sync.progress_every
      host_sync.progress_every = 0.05
      helpers.with_cleanup(function()
        assert(call(w, "environmentSyncIn", { op("slow", { { sourcePath = host.path .. "/big",
          targetPath = w.ws .. "/big", kind = "file" } }) }))
      end, function()
        log.set_sink(nil)
        host_sync.progress_every = saved
      end)
      local progress = 0
      for _, l in ipairs(lines) do
        if l:find("environmentSyncIn operation 1 of 1: %d+ files, %d+ bytes so far") then
          progress = progress + 1
        end
      end
      assert.is_true(progress >= 1, "a progress line")
      assert.equal("local: environmentSyncIn operation 1 of 1 done: 1 files, 60000000 bytes",
        lines[#lines])
    end)
  end)

  it("a worker killed mid-transfer leaves no process, and its temps go", function()
    -- a tar that stalls after 64 KiB of an archive it unpacks while the flag file exists,
    -- first on the worker's PATH: the worker is killed mid-transfer
    local bin <close> = helpers.tempdir("spec-sync-bin-")
    local flag = bin.path .. "/slow"
    local real_tar = "/usr/bin/tar"
    for dir in os.getenv("PATH"):gmatch("[^:]+") do
      if fs.stat(dir .. "/tar") then
        real_tar = dir .. "/tar"
        break
      end
    end
    helpers.write_file(bin.path .. "/tar", table.concat({
      "#!/bin/sh",
      'case " $* " in *" -x "*) if [ -e "' .. flag .. '" ]; then',
      '  { head -c 65536; sleep 60; cat; } | exec "' .. real_tar .. '" "$@"; fi ;; esac',
      'exec "' .. real_tar .. '" "$@"',
    }, "\n") .. "\n", "755")
    worker_process.with(function(w, tmp)
      local host = tmp.path .. "/host"
      assert(fs.mkdir(host))
      assert(w:initialize())
      local cfg = { timeoutMs = 300000 } -- leases go to the worker's TMPDIR, tmp.path
      local n = 0
      local function send(method, params)
        n = n + 1
        w:request(n, method, worker_process.params(helpers.merged({ config = cfg }, params)))
        return n
      end
      local lease = assert(assert(w:reply_to(send("environmentAcquireLease", { runId = "r" }),
        30)).result)
      local lp = { providerLeaseId = lease.providerLeaseId, metadata = lease.metadata }
      local ws = lease.providerLeaseId .. "/workspace"
      assert(proc.run({ argv = { "sh", "-c", 'head -c 3000000 /dev/urandom > "$1/big"; '
        .. 'cp "$1/big" "$2/big"', "sh", host, ws } }))
      helpers.write_file(flag, "")
      local function temps(dir)
        return (assert(proc.run({ argv = { "find", dir, "-name", "*.ph-sync-*" } })).stdout)
      end
      -- SyncIn: the sandbox's tar stalls with its temp made; SyncOut: the host's does
      send("environmentSyncIn", { lease = lp, operations = { { operationId = "i", files = {
        { sourcePath = host, targetPath = ws .. "/in", kind = "directory" } } } } })
      send("environmentSyncOut", { lease = lp, operations = { { operationId = "o", files = {
        { sourcePath = ws, targetPath = host .. "/out", kind = "directory" } } } } })
      helpers.eventually(function()
        return temps(ws) ~= "" and temps(host) ~= "" and #cmdline.holding("ph-sync") >= 2
      end, "both transfers under way, their sandbox scripts started")
      -- a process shows before the worker told its watchdog of it: a reply to a later
      -- request means every spawn before it was told (as spec/worker/no_orphans_spec.lua)
      w:request(n + 1, "health", {})
      assert(w:reply_to(n + 1, 30), "the health check was answered")
      w:kill("SIGKILL")
      w:wait(10)
      helpers.eventually(function()
        return #cmdline.holding(tmp.path) == 0
      end, "no process of the dead worker's transfers left")
      -- the sandbox's script removed its temp when its tar was stopped
      assert.equal("", temps(ws))
      -- the host's temp stays until the next SyncOut to that target, which removes it
      assert.matches("/%.out%.ph%-sync%-%d+%-%x+\n$", temps(host))
      fs.remove_tree(flag)
      local s = client.session({ provider })
      assert(s:call("environmentSyncOut", { config = helpers.merged(cfg, { root = tmp.path }),
        lease = lp, operations = { { operationId = "again", files = {
          { sourcePath = ws, targetPath = host .. "/out", kind = "directory" } } } } }))
      assert.equal("", temps(host))
      assert.equal(helpers.read_file(host .. "/big"), helpers.read_file(host .. "/out/big"))
    end, nil, { env = { PATH = bin.path .. ":" .. os.getenv("PATH") } })
  end)

  it("runs postUploadCommands without the network when isolateNetwork is on", function()
    world(function(w)
      local probe = proc.run({ argv = { "unshare", "--net", "--map-root-user", "--", "true" },
        timeout = 10 })
      if not (probe and probe.exit_code == 0) then
        pending("unshare --net --map-root-user does not work here")
        return
      end
      local r = assert(call(w, "environmentSyncIn", { op("n", {}, {
        { command = "tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' ' > nets" } }) }))
      assert.same({ { operationId = "n", filesTransferred = 0, bytesTransferred = 0 } },
        r.operations)
      assert.equal("lo\n", helpers.read_file(w.ws .. "/nets"))
    end, { isolateNetwork = true })
  end)
end)
