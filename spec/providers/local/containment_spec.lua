-- spec/providers/local/containment_spec.lua: local stays inside its root (issue 11, item 5).
-- Every case runs with a temp directory as the configured root and sentinel files and
-- directories outside it, and checks that nothing outside was created or deleted.
local client = require("host.client")
local fs = require("host.fs")
local helpers = require("spec.helpers")
local json = require("host.json")
local proc = require("host.proc")
local providers = require("host.providers")

local provider = assert(providers.load("local"))

local function session()
  return client.session({ provider })
end

local function sh(script)
  local r = assert(proc.run({ argv = { "sh", "-c", script }, timeout = 10 }))
  assert.equal(0, r.exit_code, r.stderr)
end

local function q(s)
  return "'" .. s:gsub("'", "'\\''") .. "'"
end

local function symlink(target, link)
  sh("ln -s " .. q(target) .. " " .. q(link))
end

-- with_world(fn): fn(s, w) in a task, w = { root, config, outside, sentinels, lease, lp, dir, ws }:
-- a root of its own with one lease in it, and an outside directory holding sentinels
-- (outside/keep/file, outside/file) that must all survive.
local function with_world(fn)
  helpers.run(function()
    local root <close> = helpers.tempdir("spec-local-root-")
    local outside <close> = helpers.tempdir("spec-local-outside-")
    local w = { root = root.path, outside = outside.path, config = { root = root.path } }
    assert(fs.mkdir(w.outside .. "/keep"))
    assert(fs.write(w.outside .. "/keep/file", "keep"))
    assert(fs.write(w.outside .. "/file", "keep"))
    local s = session()
    w.lease = assert(s:call("environmentAcquireLease", { config = w.config, runId = "r" }))
    w.lp = { providerLeaseId = w.lease.providerLeaseId, metadata = w.lease.metadata }
    w.dir = w.lease.providerLeaseId
    w.ws = w.dir .. "/workspace"
    local before = assert(fs.list(w.outside))
    fn(s, w)
    assert.same(before, assert(fs.list(w.outside)), "nothing created or deleted outside")
    assert.equal("keep", fs.read(w.outside .. "/keep/file"))
    assert.equal("keep", fs.read(w.outside .. "/file"))
  end)
end

local function exec(s, w, params, lp)
  params.config = w.config
  params.lease = lp or w.lp
  params.command = params.command or "sh"
  return s:call("environmentExecute", params)
end

local function realize(s, w, workspace, metadata, lp)
  lp = lp or { providerLeaseId = w.dir, metadata = metadata or { remoteCwd = " " } }
  return s:call("environmentRealizeWorkspace",
    { config = w.config, lease = lp, workspace = workspace or {} })
end

local function destroy(s, w, id, config)
  return s:call("environmentDestroyLease", { config = config or w.config, providerLeaseId = id })
end

local function release(s, w, id)
  return s:call("environmentReleaseLease", { config = w.config, providerLeaseId = id })
end

describe("providers.local containment", function()
  it("creates its lease directly under the configured root, with its marker", function()
    with_world(function(s, w)
      assert.matches("^" .. w.root:gsub("%p", "%%%0") .. "/paperclip%-local%-%x+$", w.dir)
      assert.equal(w.dir .. "\n", fs.read(w.dir .. "/.paperclip-local"))
      -- a root given with a trailing slash names the same directory
      local cfg = { root = w.root .. "/" }
      local l2 = assert(s:call("environmentAcquireLease", { config = cfg, runId = "r" }))
      assert.matches("^" .. w.root:gsub("%p", "%%%0") .. "/paperclip%-local%-%x+$",
        l2.providerLeaseId)
      assert.equal(json.null, destroy(s, w, l2.providerLeaseId, cfg))
      assert.is_nil(fs.stat(l2.providerLeaseId))
      assert.equal(json.null, destroy(s, w, w.dir))
    end)
  end)

  it("resolves a relative cwd against the lease's workspace, never the worker's directory",
    function()
      with_world(function(s, w)
        assert(fs.mkdir(w.ws .. "/sub"))
        local r = assert(exec(s, w, { args = { "-c", "pwd" }, cwd = "sub" }))
        assert.equal(w.ws .. "/sub\n", r.stdout)
        r = assert(exec(s, w, { args = { "-c", "pwd" }, cwd = "." }))
        assert.equal(w.ws .. "\n", r.stdout)
        r = assert(exec(s, w, { args = { "-c", "pwd" }, cwd = "./sub/../sub/" }))
        assert.equal(w.ws .. "/sub\n", r.stdout)
        -- still inside the lease directory: allowed
        r = assert(exec(s, w, { args = { "-c", "pwd" }, cwd = "../home" }))
        assert.equal(w.dir .. "/home\n", r.stdout)
        -- a relative cwd that does not exist is reported with its resolved path
        local _, err = exec(s, w, { args = { "-c", "true" }, cwd = "../x" })
        assert.equal("local: cwd " .. w.dir .. "/x does not exist", err.message)
        -- out of the lease: refused, naming the cwd, and nothing runs
        local out = "sub/../../../" .. w.outside:match("[^/]+$")
        for _, cwd in ipairs({ "../..", "../../x", out }) do
          local r2, err2 = exec(s, w, { args = { "-c", "touch ran" }, cwd = cwd })
          assert.is_nil(r2)
          assert.equal("local: cwd " .. cwd .. " is outside the lease directory " .. w.dir,
            err2.message)
        end
        assert.is_nil(fs.stat(w.root .. "/ran"))
        assert.equal(json.null, destroy(s, w, w.dir))
      end)
    end)

  it("realizes a workspace path only under the lease", function()
    with_world(function(s, w)
      -- relative paths resolve against the workspace and are returned absolute
      local r = assert(realize(s, w, { remotePath = "sub/dir" }))
      assert.equal(w.ws .. "/sub/dir", r.cwd)
      assert.equal("directory", fs.stat(w.ws .. "/sub/dir").type)
      assert.same({ provider = "local", remoteCwd = w.ws .. "/sub/dir" }, r.metadata)
      r = assert(realize(s, w, { remotePath = "." }))
      assert.equal(w.ws, r.cwd)
      r = assert(realize(s, w, { remotePath = w.dir .. "//workspace/./a/../b/" }))
      assert.equal(w.ws .. "/b", r.cwd)
      -- outside the lease, by any of the three paths: refused, naming the path, nothing made
      local cases = {
        { ws = { remotePath = w.outside .. "/new/deep" }, path = w.outside .. "/new/deep" },
        { ws = { remotePath = "../../x" }, path = "../../x" },
        { ws = { remotePath = "../../../" .. w.outside:match("[^/]+$") .. "/new" },
          path = "../../../" .. w.outside:match("[^/]+$") .. "/new" },
        { ws = { remotePath = " ", localPath = w.outside .. "/new" }, path = w.outside .. "/new" },
        { ws = { remotePath = w.ws .. "/../../x" }, path = w.ws .. "/../../x" },
        { ws = {}, meta = { remoteCwd = w.outside .. "/new" }, path = w.outside .. "/new" },
        { ws = {}, meta = { remoteCwd = "/" }, path = "/" },
      }
      for _, c in ipairs(cases) do
        local r2, err = realize(s, w, c.ws, c.meta)
        assert.is_nil(r2)
        assert.equal("local: workspace path " .. c.path .. " is outside the lease directory "
          .. w.dir, err.message)
      end
      assert.is_nil(fs.stat(w.root .. "/x"))
      assert.is_nil(fs.stat(w.outside .. "/new"))
      -- a symlink inside the lease is never passed through, wherever it points
      symlink(w.outside, w.ws .. "/out")
      symlink(w.outside .. "/keep", w.ws .. "/keep")
      for _, path in ipairs({ "out/new", "keep", "keep/new" }) do
        local r2, err = realize(s, w, { remotePath = path })
        assert.is_nil(r2)
        assert.equal(("local: will not create %s/%s: %s/%s is a symlink"):format(w.ws, path,
          w.ws, path:match("^[^/]+")), err.message)
      end
      -- a gone lease is not re-created
      local gone = w.root .. "/paperclip-local-0123456789abcdef"
      local r2, err = realize(s, w, { remotePath = gone .. "/workspace" }, nil,
        { providerLeaseId = gone, metadata = { remoteCwd = gone .. "/workspace" } })
      assert.is_nil(r2)
      assert.equal("local sandbox " .. gone .. " no longer exists", err.message)
      assert.is_nil(fs.stat(gone))
      assert.equal(json.null, destroy(s, w, w.dir))
      assert.is_nil(fs.stat(w.dir))
    end)
  end)

  it("deletes only a directory it made under the configured root", function()
    with_world(function(s, w)
      local root = w.root
      local function refused(id, why, fn)
        for _, call in ipairs({ fn or destroy, release }) do
          local r, err = call(s, w, id)
          assert.is_nil(r, tostring(id))
          assert.equal("local: will not delete " .. id .. ": " .. why, err.message)
        end
      end
      -- a symlink named like a lease, pointing out, even with a copied marker
      local fake = root .. "/paperclip-local-00000000000000aa"
      symlink(w.outside, fake)
      refused(fake, "it is a symlink")
      -- a directory named like a lease without a marker, or with another lease's marker
      local nomark = root .. "/paperclip-local-00000000000000bb"
      assert(fs.mkdir(nomark))
      assert(fs.write(nomark .. "/data", "keep"))
      refused(nomark, "it has no .paperclip-local marker naming it (this provider did not make it)")
      assert(fs.write(nomark .. "/.paperclip-local", w.dir .. "\n"))
      refused(nomark, "it has no .paperclip-local marker naming it (this provider did not make it)")
      assert.equal("keep", fs.read(nomark .. "/data"))
      -- a real directory under the root that is not named like a lease
      local other = root .. "/other"
      assert(fs.mkdir(other))
      assert(fs.write(other .. "/.paperclip-local", other .. "\n"))
      refused(other, "its name is not paperclip-local-<16 hex digits>")
      -- outside the root, the root itself, a file, dot paths, relative paths
      refused(w.outside, "it is not directly under the configured root " .. root)
      refused(w.outside .. "/keep/file", "it is not a directory")
      refused(root, "it is not directly under the configured root " .. root)
      refused("/", "it is the file system's root")
      refused(w.dir .. "/workspace/..", "it has a . or .. component")
      refused(w.dir .. "/.", "it has a . or .. component")
      refused(root .. "/../" .. w.outside:match("[^/]+$"), "it has a . or .. component")
      refused(w.dir:match("[^/]+$"), "it is not an absolute path")
      -- all of them still there, the lease too
      for _, p in ipairs({ fake, nomark, other, root, w.dir, w.outside .. "/keep" }) do
        assert.is_table(fs.stat(p, false), p)
      end
      -- an id that names nothing is already gone: success
      assert.equal(json.null, destroy(s, w, root .. "/paperclip-local-00000000000000cc"))
      assert.equal(json.null, release(s, w, "/nonexistent/paperclip-local-EXAMPLE"))
      assert.equal(json.null, destroy(s, w, json.null))
      -- resume and execute treat them as not theirs
      local r = assert(s:call("environmentResumeLease", { config = w.config,
        providerLeaseId = nomark }))
      assert.same({ providerLeaseId = json.null, metadata = { expired = true } }, r)
      local r2, err = exec(s, w, { args = { "-c", "true" } },
        { providerLeaseId = nomark, metadata = {} })
      assert.is_nil(r2)
      assert.equal("local: lease " .. nomark .. " is not a workspace of this provider: it has no "
        .. ".paperclip-local marker naming it (this provider did not make it)", err.message)
      assert.equal(json.null, destroy(s, w, w.dir))
      assert.is_nil(fs.stat(w.dir))
    end)
  end)

  it("refuses a lease made under another root than the one configured now", function()
    with_world(function(s, w)
      local elsewhere <close> = helpers.tempdir("spec-local-root2-")
      local cfg = { root = elsewhere.path }
      local r, err = destroy(s, w, w.dir, cfg)
      assert.is_nil(r)
      assert.equal(("local: will not delete %s: it is not directly under the configured root %s")
        :format(w.dir, elsewhere.path), err.message)
      r, err = s:call("environmentReleaseLease", { config = cfg, providerLeaseId = w.dir })
      assert.is_nil(r)
      assert.matches("not directly under the configured root", err.message)
      assert.is_table(fs.stat(w.dir))
      r = assert(s:call("environmentResumeLease", { config = cfg, providerLeaseId = w.dir }))
      assert.is_true(r.metadata.expired)
      -- with the root it was made under, it goes
      assert.equal(json.null, destroy(s, w, w.dir))
      assert.is_nil(fs.stat(w.dir))
    end)
  end)

  it("removes a lease without following the symlinks inside it", function()
    with_world(function(s, w)
      symlink(w.outside, w.ws .. "/dir-link")
      symlink(w.outside .. "/file", w.ws .. "/file-link")
      symlink(w.outside .. "/keep", w.dir .. "/home/keep")
      symlink("/", w.ws .. "/root-link")
      assert(fs.mkdir(w.ws .. "/deep"))
      symlink("../../..", w.ws .. "/deep/up")
      local r = assert(exec(s, w, { args = { "-c", "ls dir-link/keep" } }))
      assert.equal("file\n", r.stdout) -- the links work from inside
      assert.equal(json.null, release(s, w, w.dir))
      assert.is_nil(fs.stat(w.dir))
    end)
  end)

  it("probes, acquires and destroys under a root that holds other files, touching none", function()
    with_world(function(s, w)
      assert(fs.write(w.root .. "/unrelated", "keep"))
      local r = assert(s:call("environmentProbe", { config = w.config }))
      assert.is_true(r.ok, r.metadata.error)
      assert.equal(json.null, destroy(s, w, w.dir))
      assert.same({ "unrelated" }, assert(fs.list(w.root)))
    end)
  end)
end)
