-- bench/sync_bench.lua: native workspace sync against the host's fallback (issue 12, item 5),
-- side by side in one run, for each workspace size (default 5,000 files / 50 MB, then 500
-- files / 5 MB): the workspace synced IN to a lease and back OUT. (a) runs on the `local`
-- provider; (b) on each of --providers (default local,ssh), one after the other on the same
-- workspace.
--
--   (a) upstream's REAL host-side runtime (@paperclipai/adapter-utils, spec/queue_bridge) over
--       our worker: spec/queue_bridge/drive_sync.mjs, unchanged, run with --extra-files
--       FILES/2 --extra-bytes BYTES/FILES (it puts that many files in the workspace and as many
--       in a referenced project, all of one size). Native: its runner sends
--       environmentSyncIn/SyncOut; fallback: the runtime's tar + base64 over environmentExecute.
--       Times are the driver's own (prepareAdapterExecutionTargetRuntime, restoreWorkspace).
--   (b) the raw transfer at the worker level, on a workspace of mixed sizes and nested dirs
--       that this script writes: native = one environmentSyncIn and one environmentSyncOut of
--       a directory mapping of the whole workspace, sent straight to the worker; fallback = the
--       fallback's own mechanism done directly, with upstream's chunk sizes
--       (command-managed-runtime.js): `tar -cf` on the host (upstream does not compress),
--       `base64 -d >> TMP` with 4 MiB of base64 (3 MiB decoded) on stdin per execute, `mv`,
--       `rm -rf DIR && mkdir -p DIR && tar -xf`; back: `tar -cf` in the sandbox, `wc -c`, then
--       `dd bs=3145728 skip=I count=1 | base64` per execute, decoded and `tar -xf` on the host.
--       On `local` the leases are directories of the temp dir. On `ssh` they are on a real
--       OpenSSH sshd started on 127.0.0.1 for the size (spec/support/sshd.lua), its dir, HOME
--       and the leases (workspaceRoot) inside the temp dir: the worker (scrubbed environment)
--       gets an ed25519 client key as privateKey, knownHostsFile in the temp dir with
--       hostKeyPolicy accept-new, never ~/.ssh. Native there is host.sync_tar: tar streams over
--       a duplex on the pooled SSH connection; fallback's executes ride the same connection.
--
-- Peak memory is the worker process's VmHWM (/proc/PID/status; its children, cp, tar and sh,
-- are not counted). In (b) every candidate gets a fresh worker, read just before shutdown.
-- In (a) one worker serves both modes (the driver runs native, then fallback): its VmHWM
-- when the driver logs "mode fallback" is native's peak, at the end the peak of both; the
-- largest VmRSS sampled every 20 ms in each mode's window is printed beside them.
-- A measurement, not a test: it reports the targets (>= 10x faster, worker < 64 MB), it does
-- not judge; it exits 1 only when a run failed (a transfer error, a tree that differs).
--
--   build/provider-host bench/sync_bench.lua [--files=5000] [--mb=50] [--second=500:5|none]
--     [--parts=a,b] [--providers=local,ssh] [--quick] [--out=FILE]
--   bench/run --bench=sync [--files=N] [--mb=N] [--second=F:MB|none] [--sync-parts=a,b]
--     [--providers=local,ssh]
--
-- --quick: only the second size. (a) needs node and `npm ci --prefix spec/queue_bridge`;
-- without them it is skipped and said so. (b) on ssh needs /usr/sbin/sshd and ssh-keygen;
-- without them it is skipped and said so. MB are 10^6 bytes. Everything (workspaces, leases,
-- the driver's temp dir, workers, sshd) lives in one temp dir removed on every path; every
-- wait is bounded (a Node driver 280 s, a request 300 s, sshd's start 10 s, the whole run
-- 1500 s). JSON: a size's (b) on local is `b`, on ssh `b_ssh` (the same fields).
local root = arg and arg[0] and arg[0]:match("^(.*)/bench/[^/]+$") or "."
package.path = root .. "/?.lua;" .. package.path

local fs = require("host.fs")
local helpers = require("spec.helpers")
local json = require("host.json")
local lines = require("spec.support.lines")
local proc = require("host.proc")
local sshd = require("spec.support.sshd")
local sys = require("host.core.sys")
local task = require("host.task")
local util = require("host.util")

local MB = 1000 * 1000
local MIB = 1024 * 1024
local B64_CHUNK = 4 * MIB -- REMOTE_WRITE_FALLBACK_BASE64_CHUNK_SIZE
local RAW_CHUNK = B64_CHUNK // 4 * 3 -- its decoded size, also REMOTE_READ_CHUNK_BYTES
local TARGET_SPEEDUP = 10
local TARGET_PEAK_MIB = 64
local B_KEY = { ["local"] = "b", ssh = "b_ssh" } -- a size's (b) results in the JSON, by provider

local PROVIDERS = { "local", "ssh" }
local opts = { files = 5000, mb = 50, second = "500:5", parts = "a,b", providers = "local,ssh",
  out = root .. "/bench/results/sync.json" }
for _, a in ipairs(arg) do
  local k, v = a:match("^%-%-([%w-]+)=(.*)$")
  if (k == "files" or k == "mb") and tonumber(v) and tonumber(v) > 0 then
    opts[k] = tonumber(v)
  elseif k == "second" and (v == "none" or v:match("^%d+:[%d.]+$")) then
    opts.second = v
  elseif k == "parts" or k == "sync-parts" then
    opts.parts = v
  elseif k == "providers" then
    opts.providers = v
  elseif k == "out" then
    opts.out = v
  elseif a == "--quick" then
    opts.quick = true
  elseif not (k == "only" or a == "--no-floor") then -- bench/run's common options
    io.stderr:write("bench/sync_bench.lua: unknown option " .. a .. "\n")
    os.exit(2)
  end
end
local wanted = {}
for p in opts.parts:gmatch("[^,%s]+") do
  wanted[p] = true
end
local wanted_providers = {}
for p in opts.providers:gmatch("[^,%s]+") do
  if p ~= "local" and p ~= "ssh" then
    io.stderr:write("bench/sync_bench.lua: --providers: unknown provider " .. p
      .. " (local, ssh)\n")
    os.exit(2)
  end
  wanted_providers[p] = true
end

local binary = assert(fs.realpath(helpers.binary()))
local QB = assert(fs.realpath(root)) .. "/spec/queue_bridge"
helpers.deadline = 1500

local stopping = false
local function check_stop()
  if stopping then
    error("interrupted", 0)
  end
end

local function say(fmt, ...)
  io.stderr:write(("sync: " .. fmt .. "\n"):format(...))
end

-- status(pid) -> { rss = MiB, hwm = MiB } | nil once the process is gone.
local function status(pid)
  local text = pid and fs.read("/proc/" .. pid .. "/status")
  local rss = text and text:match("VmRSS:%s*(%d+) kB")
  if not rss then
    return nil
  end
  return { rss = tonumber(rss) / 1024, hwm = tonumber(text:match("VmHWM:%s*(%d+) kB")) / 1024 }
end

local function sh(script, timeout, ...)
  local r, err = proc.run({ argv = { "/bin/sh", "-c", script, "sh", ... }, timeout = timeout or 120,
    env = { PATH = os.getenv("PATH"), COPYFILE_DISABLE = "1" } })
  assert(r, err)
  assert(r.exit_code == 0, ("%s: exit %s: %s"):format(script:sub(1, 80), tostring(r.exit_code),
    r.stderr:sub(1, 400)))
  return r.stdout
end

-- ---- the workspace of (b): FILES files, BYTES in all, mixed sizes, nested dirs ------------
-- Sizes are log-uniform over a 1:1000 range, scaled to the total (the largest about 7x the
-- mean); contents are slices of a random pool (incompressible); files sit 1 to 3 levels
-- deep in 10 x 10 directories; one in 7 is 0755, one in 11 0600.
local function build_workspace(dir, files, bytes)
  local f = assert(io.open("/dev/urandom", "rb"))
  local pool = f:read(2 * MIB)
  f:close()
  local x, w, sum = 12345, {}, 0
  for i = 1, files do
    x = (x * 1103515245 + 12345) % 2147483648
    w[i] = math.exp(x / 2147483648 * math.log(1000))
    sum = sum + w[i]
  end
  local sizes, total = {}, 0
  for i = 1, files do
    sizes[i] = math.floor(w[i] / sum * bytes)
    total = total + sizes[i]
  end
  sizes[files] = sizes[files] + (bytes - total)
  local made = {}
  for i = 1, files do
    local d = ("d%02d"):format(i % 10)
    if i % 3 ~= 1 then
      d = d .. ("/s%02d"):format((i // 10) % 10)
    end
    if i % 3 == 2 then
      d = d .. "/deep"
    end
    if not made[d] then
      assert(fs.mkdirs(dir .. "/" .. d))
      made[d] = true
    end
    local path = ("%s/%s/f%05d.bin"):format(dir, d, i)
    local out = assert(io.open(path, "wb"))
    local off = (i * 7919) % (#pool - sizes[i] + 1)
    assert(out:write(pool:sub(off + 1, off + sizes[i])))
    out:close()
    if i % 7 == 0 then
      assert(fs.chmod(path, tonumber("755", 8)))
    elseif i % 11 == 0 then
      assert(fs.chmod(path, tonumber("600", 8)))
    end
  end
  assert(fs.mkdir(dir .. "/empty-dir"))
  return sizes
end

-- ---- a worker spoken to directly (b) ----------------------------------------------------
local Worker = {}
Worker.__index = Worker

local function start_worker(tmp, provider)
  local self = setmetatable({ replies = {}, next_id = 1, stderr = {} }, Worker)
  self.process = assert(proc.spawn({
    argv = { binary, "worker", "--provider", provider },
    env = { PATH = os.getenv("PATH"), TMPDIR = tmp, PROVIDER_HOST_LOG = "error" },
    stdin = true,
    timeout = 900,
    keep_output = false,
    on_stdout = lines.splitter(function(line)
      self:line(line)
    end),
    on_stderr = function(chunk)
      if #self.stderr < 50 then
        self.stderr[#self.stderr + 1] = chunk
      end
    end,
  }))
  self.pid = self.process.pid
  return self
end

function Worker:line(line)
  local msg = json.decode(line)
  if type(msg) == "table" and msg.id ~= nil and msg.method == nil then
    self.replies[msg.id] = msg
  end
end


-- call(method, params [, seconds = 300]) -> result; an error reply or a timeout raises.
function Worker:call(method, params, seconds)
  local id = self.next_id
  self.next_id = id + 1
  assert(self.process:write(assert(json.encode({ jsonrpc = "2.0", id = id, method = method,
    params = params })) .. "\n"))
  local deadline = task.now() + (seconds or 300)
  while not self.replies[id] do
    check_stop()
    if self.process:done() then
      error(method .. ": the worker exited: " .. table.concat(self.stderr):sub(1, 500), 0)
    end
    if task.now() > deadline then
      error(method .. ": no reply in " .. (seconds or 300) .. " s", 0)
    end
    task.sleep(0.002)
  end
  local msg = self.replies[id]
  self.replies[id] = nil
  if msg.error then
    error(method .. ": " .. tostring(msg.error.message), 0)
  end
  return msg.result
end

function Worker:stop()
  if not self.process:done() then
    pcall(self.process.write, self.process, '{"jsonrpc":"2.0","id":0,"method":"shutdown",'
      .. '"params":{}}\n')
    if not self.process:wait(15) then
      sys.kill(-self.pid, "SIGKILL")
      self.process:wait(5)
    end
  end
  sys.kill(-self.pid, "SIGKILL") -- anything of its group still running
end

local BASE = { companyId = "company-1", environmentId = "env-bench" }

-- with_lease(tmp, prov, fn): fn(w, base, cwd) on a fresh worker of prov.name (its lease
-- config prov.config) and a fresh lease; released, stopped after.
local function with_lease(tmp, prov, fn)
  local wtmp = tmp .. "/worker-tmp-" .. util.hex(assert(util.random(4)))
  assert(fs.mkdir(wtmp, tonumber("700", 8)))
  local w = start_worker(wtmp, prov.name)
  local common = helpers.merged(BASE, { driverKey = prov.name, config = prov.config })
  local base, lease
  return helpers.with_cleanup(function()
    w:call("initialize", { manifest = {}, config = {}, apiVersion = 1,
      databaseNamespace = json.null,
      instanceInfo = { instanceId = "default", hostVersion = "0.0.0" } }, 30)
    lease = w:call("environmentAcquireLease", helpers.merged(common, { runId = "run-bench" }), 60)
    base = helpers.merged(common, { lease = { providerLeaseId = lease.providerLeaseId,
      metadata = lease.metadata } })
    if lease.metadata.nativeFileSyncUnsupported then
      error(prov.name .. ": the lease says nativeFileSyncUnsupported (no GNU tar there?)", 0)
    end
    return fn(w, base, lease.metadata.remoteCwd)
  end, function()
    if lease and not w.process:done() then
      pcall(w.call, w, "environmentReleaseLease", helpers.merged(common, {
        providerLeaseId = lease.providerLeaseId, leaseMetadata = lease.metadata }), 60)
    end
    w:stop()
  end)
end

local function shq(s)
  return "'" .. s:gsub("'", "'\"'\"'") .. "'"
end

-- execute(w, base, cwd, script [, stdin]) -> result; a non-zero exit raises.
local function execute(w, base, cwd, script, stdin)
  local r = w:call("environmentExecute", helpers.merged(base, { command = "sh",
    args = { "-c", script }, cwd = cwd, stdin = stdin, timeoutMs = 300000 }), 330)
  if r.exitCode ~= 0 then
    error(("execute %q: exit %s: %s"):format(script:sub(1, 80), tostring(r.exitCode),
      tostring(r.stderr):sub(1, 400)), 0)
  end
  return r
end

local function same_tree(a, b)
  sh('diff -r -- "$1" "$2" >/dev/null', 300, a, b)
  -- diff does not compare modes: the permission bits of every entry too, and files' sizes (a
  -- directory's own size depends on its history, not on what is in it)
  local list = 'cd "$1" && find . \\( -type f -printf "%p f %m %s\\n" \\) -o -printf "%p %y %m\\n"'
    .. " | LC_ALL=C sort"
  local la, lb = sh(list, 120, a), sh(list, 120, b)
  assert(la == lb, ("%s and %s differ in names, types, modes or sizes"):format(a, b))
end

-- (b), native: one directory mapping each way.
local function raw_native(tmp, prov, ws, out)
  return with_lease(tmp, prov, function(w, base, cwd)
    local target = cwd .. "/bench-ws"
    local t0 = task.now()
    local rin = w:call("environmentSyncIn", helpers.merged(base, { operations = { {
      operationId = "in", files = { { kind = "directory", sourcePath = ws, targetPath = target } },
    } } }))
    local t1 = task.now()
    local rout = w:call("environmentSyncOut", helpers.merged(base, { operations = { {
      operationId = "out",
      files = { { kind = "directory", sourcePath = target, targetPath = out } },
    } } }))
    local t2 = task.now()
    local st = assert(status(w.pid), "the worker is gone")
    return { in_s = t1 - t0, out_s = t2 - t1, hwm_mib = st.hwm, rss_end_mib = st.rss,
      requests = 2, in_result = rin.operations, out_result = rout.operations }
  end)
end

-- (b), fallback: upstream's mechanism (writeFile's chunked append, then readFile's dd chunks).
local function raw_fallback(tmp, prov, ws, out)
  return with_lease(tmp, prov, function(w, base, cwd)
    local target = cwd .. "/bench-ws"
    local requests = 0
    local function run(script, stdin)
      requests = requests + 1
      return execute(w, base, cwd, script, stdin)
    end
    local archive = tmp .. "/fallback-in.tar"
    local t0 = task.now()
    -- host: tar of the top-level entries by name, as createTarballFromDirectory
    local entries = assert(fs.list(ws))
    local argv = { "tar", "-c", "--no-xattrs", "-f", archive, "-C", ws, "--exclude", "._*", "--" }
    table.move(entries, 1, #entries, #argv + 1, argv)
    local r = assert(proc.run({ argv = argv, timeout = 300, env = { PATH = os.getenv("PATH"),
      COPYFILE_DISABLE = "1" } }))
    assert(r.exit_code == 0, "tar: " .. r.stderr)
    local tar = assert(fs.read(archive)) -- upstream reads it whole too (fs.readFile)
    local remote_tar = target .. ".paperclip-syncin.tar." .. util.hex(assert(util.random(8)))
    local upload = remote_tar .. ".paperclip-upload." .. util.hex(assert(util.random(8)))
    run(("mkdir -p %s && rm -f %s && : > %s"):format(shq(cwd), shq(upload), shq(upload)))
    for off = 1, #tar, RAW_CHUNK do
      run("base64 -d >> " .. shq(upload), util.base64_encode(tar:sub(off, off + RAW_CHUNK - 1)))
    end
    run(("mv -f %s %s"):format(shq(upload), shq(remote_tar)))
    run(("rm -rf %s && mkdir -p %s && tar -xf %s -C %s && rm -f %s"):format(shq(target),
      shq(target), shq(remote_tar), shq(target), shq(remote_tar)))
    run("rm -rf " .. shq(upload)) -- writeFile's finally
    local tar_bytes = #tar
    tar = nil -- luacheck: ignore 311
    local t1 = task.now()
    -- sandbox: tar of the top-level entries by name, as createRemoteTarballFromDirectoryCommand
    local runtime = cwd .. "/.paperclip-runtime"
    local remote = runtime .. "/workspace-download.tar"
    run(("mkdir -p %s && cd %s && set -- * && if [ \"$#\" -eq 1 ] && [ \"$1\" = \"*\" ] && "
      .. "[ ! -e \"$1\" ] && [ ! -L \"$1\" ]; then set --; fi && for entry in .[!.]* ..?*; do "
      .. "[ -e \"$entry\" ] || [ -L \"$entry\" ] || continue; set -- \"$@\" \"$entry\"; done && "
      .. "if [ \"$#\" -eq 0 ]; then dd if=/dev/zero of=%s bs=1024 count=1; else tar -cf %s "
      .. "--exclude '._*' -- \"$@\"; fi"):format(shq(runtime), shq(target), shq(remote),
      shq(remote)))
    local total = assert(tonumber((run("wc -c < " .. shq(remote)).stdout:match("%d+"))))
    local back = tmp .. "/fallback-out.tar"
    local f = assert(io.open(back, "wb"))
    local got, chunk_index = 0, 0
    while got < total do
      local o = run(("dd if=%s bs=%d skip=%d count=1 2>/dev/null | base64"):format(shq(remote),
        RAW_CHUNK, chunk_index))
      local bytes = assert(util.base64_decode((o.stdout:gsub("%s", ""))))
      if #bytes == 0 then
        break
      end
      assert(f:write(bytes))
      got, chunk_index = got + #bytes, chunk_index + 1
    end
    f:close()
    assert(got == total, ("read back %d of %d bytes"):format(got, total))
    assert(fs.mkdirs(out))
    sh('tar -xf "$1" -C "$2"', 300, back, out)
    run("rm -f " .. shq(remote))
    local t2 = task.now()
    local st = assert(status(w.pid), "the worker is gone")
    os.remove(archive)
    os.remove(back)
    return { in_s = t1 - t0, out_s = t2 - t1, hwm_mib = st.hwm, rss_end_mib = st.rss,
      requests = requests, tar_bytes = tar_bytes, chunks_in = (tar_bytes + RAW_CHUNK - 1)
        // RAW_CHUNK, chunks_out = chunk_index }
  end)
end

-- start_sshd(tmp) -> spec.support.sshd's server, its private dir (host keys, config, HOME)
-- inside tmp: sshd.start makes it with host.util.mkdtemp, which only knows $TMPDIR, so that is
-- pointed at tmp for the call.
local function start_sshd(tmp)
  local mkdtemp = util.mkdtemp
  util.mkdtemp = function(prefix)
    local path = tmp .. "/" .. prefix .. util.hex(assert(util.random(4)))
    local ok, err, code = fs.mkdir(path, tonumber("700", 8))
    if not ok then
      return nil, err, code
    end
    return path
  end
  local ok, server = pcall(sshd.start, {})
  util.mkdtemp = mkdtemp
  if not ok then
    error(server, 0)
  end
  return server
end

-- (b) on one provider: native, then fallback, each on a fresh worker and lease.
local function b_provider(tmp, prov, ws, files)
  local res = {}
  for _, c in ipairs({ { "native", raw_native }, { "fallback", raw_fallback } }) do
    check_stop()
    local out = tmp .. "/out-" .. c[1]
    say("(b) %d files, %s: %s", files, prov.name, c[1])
    local ok, r = pcall(c[2], tmp, prov, ws, out)
    if stopping then
      error(r, 0)
    end
    if ok then
      local same, why = pcall(same_tree, ws, out)
      r.same_tree = same
      r.difference = not same and tostring(why) or nil
    else
      r = { failed = tostring(r) }
    end
    res[c[1]] = r
    assert(fs.remove_tree(out))
  end
  return res
end

-- b_ssh(tmp, ws, files) -> (b) on ssh against a loopback sshd of its own, stopped after.
local function b_ssh(tmp, ws, files)
  local missing = not sshd.available() and (sshd.sshd .. " or ssh-keygen is not installed")
  if missing then
    return { skipped = missing }
  end
  local keys = tmp .. "/ssh-client"
  assert(fs.mkdir(keys, tonumber("700", 8)))
  local key = sshd.keygen(keys, "id_ed25519", "ed25519")
  assert(fs.mkdir(tmp .. "/ssh-leases", tonumber("700", 8)))
  local server = start_sshd(tmp)
  return helpers.with_cleanup(function()
    server:authorize(key.public)
    say("(b) ssh: sshd on %s:%d (user %s), dir %s", server.host, server.port, server.user,
      server.dir)
    local prov = { name = "ssh", config = { host = server.host, port = server.port,
      user = server.user, privateKey = key.private, knownHostsFile = keys .. "/known_hosts",
      hostKeyPolicy = "accept-new", workspaceRoot = tmp .. "/ssh-leases", timeoutMs = 300000 } }
    local res = b_provider(tmp, prov, ws, files)
    res.sshd = { host = server.host, port = server.port, user = server.user }
    return res
  end, function()
    server:close()
  end)
end

-- part_b(tmp, files, bytes) -> { local = result, ssh = result } for the wanted providers;
-- each result has the workspace's shape and the floor, and native and fallback.
local function part_b(tmp, files, bytes)
  local ws = tmp .. "/ws"
  assert(fs.mkdir(ws))
  local sizes = build_workspace(ws, files, bytes)
  table.sort(sizes)
  local shape = { files = files, bytes = bytes, smallest = sizes[1],
    median = sizes[#sizes // 2 + 1], largest = sizes[#sizes] }
  -- the floor: one `cp -a` of the workspace and back (what any copy of these files costs here)
  local t0 = task.now()
  sh('cp -a -- "$1" "$2" && cp -a -- "$2" "$3"', 300, ws, tmp .. "/floor-in", tmp .. "/floor-out")
  shape.floor_s = task.now() - t0
  assert(fs.remove_tree(tmp .. "/floor-in"))
  assert(fs.remove_tree(tmp .. "/floor-out"))
  local all = {}
  for _, name in ipairs(PROVIDERS) do
    if wanted_providers[name] then
      check_stop()
      local ok, r
      if name == "local" then
        -- timeoutMs as validateConfig normalizes it: the host gives a sync request
        -- max(timeoutMs, bridgeRequestTimeoutMs) + 30 s, and 30 s without it
        ok, r = pcall(b_provider, tmp, { name = "local", config = { root = tmp .. "/leases",
          timeoutMs = 300000 } }, ws, files)
      else
        ok, r = pcall(b_ssh, tmp, ws, files)
      end
      if stopping then
        error(r, 0)
      end
      r = ok and r or { failed = tostring(r) }
      if not r.failed and not r.skipped then
        r = helpers.merged(shape, r)
      end
      r.provider = name
      all[name] = r
    end
  end
  assert(fs.remove_tree(ws))
  return all
end

-- ---- (a): upstream's runtime, drive_sync.mjs --------------------------------------------
local function a_unavailable()
  local r = proc.run({ argv = { "node", "--version" }, timeout = 30 })
  if not r or r.exit_code ~= 0 then
    return "node is not installed"
  end
  if not fs.stat(QB .. "/node_modules/@paperclipai/adapter-utils/package.json") then
    return "@paperclipai/adapter-utils is not installed: npm ci --prefix spec/queue_bridge"
  end
end

-- The worker under the driver: a child of the node process running `... worker ...`.
local function child_worker(node_pid)
  for _, t in ipairs(fs.list("/proc/" .. node_pid .. "/task") or {}) do
    for pid in (fs.read(("/proc/%d/task/%s/children"):format(node_pid, t)) or ""):gmatch("%d+") do
      local cl = fs.read("/proc/" .. pid .. "/cmdline") or ""
      if cl:find("%zworker%z") then
        return tonumber(pid)
      end
    end
  end
end

local function part_a(tmp, files, bytes)
  local per = files // 2
  local size = bytes // files
  local node_tmp = tmp .. "/node-tmp"
  assert(fs.mkdir(node_tmp, tonumber("700", 8)))
  local stdout, errlines = {}, {}
  local mode, wpid = "setup", nil
  local win = { native = { rss = 0 }, fallback = { rss = 0 } }
  local hwm_native
  local err_buf = ""
  local p = assert(proc.spawn({
    argv = { "node", QB .. "/drive_sync.mjs", "--binary", binary, "--extra-files", tostring(per),
      "--extra-bytes", tostring(size) },
    cwd = QB,
    env = { PATH = os.getenv("PATH"), TMPDIR = node_tmp },
    timeout = 280,
    keep_output = false,
    on_stdout = function(chunk)
      stdout[#stdout + 1] = chunk
    end,
    on_stderr = function(chunk)
      err_buf = err_buf .. chunk
      for line in err_buf:gmatch("([^\n]*)\n") do
        errlines[#errlines + 1] = line
        if line:find("] mode native$") then
          mode = "native"
        elseif line:find("] mode fallback$") then
          local st = status(wpid)
          hwm_native = st and st.hwm
          mode = "fallback"
        elseif line:find("] mode fallback:") then
          mode = "done"
        end
      end
      err_buf = err_buf:match("[^\n]*$")
    end,
  }))
  local last
  local ok, err = pcall(function()
    while not p:done() do
      check_stop()
      wpid = wpid or child_worker(p.pid)
      local st = status(wpid)
      if st then
        last = st
        if win[mode] then
          win[mode].rss = math.max(win[mode].rss, st.rss)
        end
      end
      task.sleep(0.02)
    end
  end)
  if not p:done() then
    sys.kill(-p.pid, "SIGKILL")
    p:wait(5)
  end
  if not ok then
    error(err, 0)
  end
  local text = table.concat(stdout)
  local report = json.decode(text:match("([^\n]+)\n?$") or "")
  if type(report) ~= "table" or not report.ok then
    return { failed = ("drive_sync.mjs failed: %s; stderr: %s"):format(
      type(report) == "table" and tostring(report.error) or "no report",
      table.concat(errlines, "\n"):sub(-1500)) }
  end
  local res = { files = 2 * per, bytes = 2 * per * size, per_file = size, worker_pid = wpid,
    hwm_end_mib = last and last.hwm, adapter_utils = report.adapterUtilsVersion,
    node = report.node }
  local diffs = 0
  for _, list in pairs(report.differences or {}) do
    diffs = diffs + #list
  end
  res.differences = diffs
  for _, m in ipairs({ "native", "fallback" }) do
    local r = report.modes[m]
    res[m] = { in_s = r.timings.syncInMs / 1000, out_s = r.timings.syncOutMs / 1000,
      requests = r.requests, peak_rss_sampled_mib = win[m].rss }
  end
  res.native.hwm_mib = hwm_native
  -- the fallback's own peak shows only when it passed native's; else it is at most that
  res.fallback.hwm_mib = last and last.hwm
  res.fallback.hwm_at_most_native = hwm_native and last and last.hwm <= hwm_native + 0.01
  return res
end

-- ---- output -----------------------------------------------------------------------------
-- the driver's requests of its syncIn and syncOut phases (not its `change` command)
local function count_requests(reqs)
  local n = 0
  for _, phase in ipairs({ "syncIn", "syncOut" }) do
    for _, c in pairs(reqs and reqs[phase] or {}) do
      n = n + c
    end
  end
  return n
end

local function fmt_s(v)
  return v and ("%.2f s"):format(v) or "-"
end

local function fmt_mib(v)
  return v and ("%.1f MiB"):format(v) or "-"
end

local function ratio(f, n)
  return (f and n and n > 0) and ("%.1fx"):format(f / n) or "-"
end

local function print_rows(title, n, f, extra)
  print(("  %s"):format(title))
  if n.failed or f.failed then
    print(("    FAILED: native %s; fallback %s"):format(tostring(n.failed), tostring(f.failed)))
    return
  end
  local rows = {
    { "sync in", n.in_s, f.in_s, fmt_s },
    { "sync out", n.out_s, f.out_s, fmt_s },
    { "in + out", n.in_s + n.out_s, f.in_s + f.out_s, fmt_s },
    { "worker peak (VmHWM)", n.hwm_mib, f.hwm_mib, fmt_mib },
  }
  for _, row in ipairs(extra or {}) do
    rows[#rows + 1] = row
  end
  for _, row in ipairs(rows) do
    print(("    %-28s %14s %14s %10s"):format(row[1], row[4](row[2]), row[4](row[3]),
      ratio(row[3], row[2])))
  end
end

local function verdicts(n, f)
  if n.failed or f.failed then
    return nil
  end
  local speed = (f.in_s + f.out_s) / (n.in_s + n.out_s)
  return { speedup = speed, speed_met = speed >= TARGET_SPEEDUP, native_peak_mib = n.hwm_mib,
    peak_met = n.hwm_mib ~= nil and n.hwm_mib < TARGET_PEAK_MIB }
end

helpers.run(function()
  sys.parent_death_signal("SIGTERM")
  local me = task.current()
  local watchers = {}
  for _, sig in ipairs({ "SIGINT", "SIGTERM", "SIGHUP" }) do
    watchers[#watchers + 1] = task.spawn(function()
      if sys.wait_signal(sig) then
        io.stderr:write("bench/sync_bench.lua: ", sig, ": stopping\n")
        stopping = true
        me:cancel()
      end
    end)
  end
  local sizes = {}
  if not opts.quick then
    sizes[#sizes + 1] = { files = math.floor(opts.files), bytes = math.floor(opts.mb * MB) }
  end
  if opts.second ~= "none" then
    local f, m = opts.second:match("^(%d+):([%d.]+)$")
    sizes[#sizes + 1] = { files = tonumber(f), bytes = math.floor(tonumber(m) * MB) }
  end
  local why_not_a = wanted.a and a_unavailable()
  if why_not_a then
    say("(a) skipped: %s", why_not_a)
  end
  local results = { binary = binary, target_speedup = TARGET_SPEEDUP,
    target_peak_mib = TARGET_PEAK_MIB, chunk = { base64_in = B64_CHUNK, raw_out = RAW_CHUNK },
    b_providers = opts.providers, a_skipped = why_not_a, sizes = {} }
  local failed = false
  for _, size in ipairs(sizes) do
    local tmpdir <close> = helpers.tempdir("ph-sync-bench-")
    local tmp = assert(fs.realpath(tmpdir.path))
    assert(fs.mkdir(tmp .. "/leases", tonumber("700", 8)))
    local entry = { files = size.files, bytes = size.bytes }
    if wanted.a and not why_not_a then
      say("(a) %d files, %.1f MB: drive_sync.mjs", size.files, size.bytes / MB)
      local ok, r = pcall(part_a, tmp, size.files, size.bytes)
      if stopping then
        error(r, 0)
      end
      entry.a = ok and r or { failed = tostring(r) }
    end
    if wanted.b then
      local ok, r = pcall(part_b, tmp, size.files, size.bytes)
      if stopping then
        error(r, 0)
      end
      for _, name in ipairs(PROVIDERS) do
        if wanted_providers[name] then
          entry[B_KEY[name]] = ok and r[name] or { failed = tostring(r), provider = name }
        end
      end
    end
    results.sizes[#results.sizes + 1] = entry
    print(("%d files, %.1f MB%s"):format(size.files, size.bytes / MB, "  (native | fallback | "
      .. "fallback/native)"))
    local a = entry.a
    if a and a.failed then
      failed = true
      print("  (a) FAILED: " .. a.failed)
    elseif a then
      print_rows(("(a) upstream runtime (adapter-utils %s): %d files of %d B + ~50 fixed")
        :format(tostring(a.adapter_utils), a.files, a.per_file), a.native, a.fallback, {
          { "worker RSS peak, sampled", a.native.peak_rss_sampled_mib,
            a.fallback.peak_rss_sampled_mib, fmt_mib },
          { "worker requests, in + out", count_requests(a.native.requests),
            count_requests(a.fallback.requests), tostring },
        })
      if a.fallback.hwm_at_most_native then
        print("    (fallback VmHWM: one worker for both modes; the fallback stayed under "
          .. "native's peak)")
      end
      print(("    modes' workspaces differ in %d entries"):format(a.differences))
      a.verdict = verdicts(a.native, a.fallback)
      failed = failed or a.differences > 0
    end
    for _, name in ipairs(PROVIDERS) do
      local b = entry[B_KEY[name]]
      if b and b.failed then
        failed = true
        print(("  (b) %s: FAILED: %s"):format(name, b.failed))
      elseif b and b.skipped then
        print(("  (b) %s: skipped: %s"):format(name, b.skipped))
      elseif b then
        local where = b.sshd and (", sshd %s:%d"):format(b.sshd.host, b.sshd.port) or ""
        print_rows(("(b) worker level, %s%s: sizes %d B .. %d B (median %d)"):format(name, where,
          b.smallest, b.largest, b.median), b.native, b.fallback, {
            { "worker requests, in + out", b.native.requests, b.fallback.requests, tostring },
          })
        print(("    %-28s %14s   (one `cp -a` of the workspace there and back)"):format(
          "floor: cp -a, in + out", fmt_s(b.floor_s)))
        for _, c in ipairs({ "native", "fallback" }) do
          if b[c].failed then
            failed = true
          elseif not b[c].same_tree then
            failed = true
            print(("    %s: the tree back differs: %s"):format(c, b[c].difference))
          end
        end
        b.verdict = verdicts(b.native, b.fallback)
      end
    end
    for _, part in ipairs({ { "a", "(a)" }, { "b", "(b) local" }, { "b_ssh", "(b) ssh" } }) do
      local v = entry[part[1]] and entry[part[1]].verdict
      if v then
        print(("  %s targets: %.1fx faster (>= %dx): %s; native worker peak %.1f MiB (< %d MiB)"
          .. ": %s"):format(part[2], v.speedup, TARGET_SPEEDUP, v.speed_met and "met" or "NOT met",
          v.native_peak_mib or -1, TARGET_PEAK_MIB, v.peak_met and "met" or "NOT met"))
      end
    end
    tmpdir:remove()
  end
  for _, t in ipairs(watchers) do
    t:cancel()
  end
  local f = assert(io.open(opts.out, "w"))
  f:write(assert(json.encode(results)), "\n")
  f:close()
  print("wrote " .. opts.out)
  if failed then
    os.exit(1)
  end
end)
