-- spec/host/tar_reader_spec.lua: host.tar_reader on archives made by the system GNU tar and
-- on hostile ones built here, each fed in several chunkings that must all agree.
local helpers = require("spec.helpers")
local proc = require("host.proc")
local tar_build = require("spec.support.tar_build")
local tar_reader = require("host.tar_reader")

local T = 20 -- seconds any tar or shell run here may take (a bound, never a timing check)
local KIB64 = 64 * 1024

-- Chunkings -----------------------------------------------------------------------------

-- A small linear congruential generator with a fixed seed: the same pieces on every run,
-- and no change to math.random's state that other specs may rely on.
local function pieces_random(data, seed)
  local out, pos, state = {}, 1, seed
  while pos <= #data do
    state = (state * 1103515245 + 12345) % 2147483648
    local len = 1 + (state >> 16) % 7
    out[#out + 1] = data:sub(pos, pos + len - 1)
    pos = pos + len
  end
  return out
end

local function pieces_of(data, size)
  local out = {}
  for pos = 1, #data, size do
    out[#out + 1] = data:sub(pos, pos + size - 1)
  end
  return out
end

-- The chunkings of data: name -> list of chunks. Byte by byte only for small streams.
local function chunkings(data)
  local c = {
    whole = { data },
    random_1_7 = pieces_random(data, 20240601),
    ["64KiB"] = pieces_of(data, KIB64),
    ["511"] = pieces_of(data, 511),
  }
  if #data <= KIB64 then
    c.bytes = pieces_of(data, 1)
  end
  return c
end

-- Feeds chunks into a new reader; the outcome as a table to compare: ok / err of the feeds
-- (the first failure stops them), the counts, the members seen and finish()'s answer.
local function read_chunks(chunks, opts)
  local members = {}
  local reader = tar_reader.new({
    strict = opts.strict,
    on_member = function(m)
      members[#members + 1] = m
    end,
  })
  local out = { ok = true, members = members }
  for _, chunk in ipairs(chunks) do
    local ok, err = reader:feed(chunk)
    if not ok then
      out.ok, out.err = false, err
      break
    end
  end
  out.files, out.bytes = reader.files, reader.bytes
  local fin, ferr = reader:finish()
  out.finished, out.finish_err = fin == true, ferr
  return out
end

-- read(data, opts) -> outcome: the same for every chunking, or the spec fails.
local function read(data, opts)
  opts = opts or {}
  local c = chunkings(data)
  local first = read_chunks(c.whole, opts)
  for _, name in ipairs(helpers.sorted_keys(c)) do
    if name ~= "whole" then
      assert.same(first, read_chunks(c[name], opts), "chunking " .. name .. " disagrees")
    end
  end
  return first
end

-- Hand-made archives --------------------------------------------------------------------

local header, entry, archive = tar_build.header, tar_build.entry, tar_build.archive
local pax_record, pax_entry, base256 = tar_build.pax_record, tar_build.pax_entry,
  tar_build.base256

-- Archives made by GNU tar ---------------------------------------------------------------

local function sh(dir, script)
  local res = assert(helpers.run(proc.shell, script, { cwd = dir, timeout = T }))
  assert.equal(0, res.exit_code, res.stderr)
end

local function tar(dir, args)
  local argv = { "tar", "-c", "-f", "-", "--sort=name" }
  table.move(args, 1, #args, #argv + 1, argv)
  local res = assert(helpers.run(proc.run, { argv = argv, cwd = dir, timeout = T }))
  assert.equal(0, res.exit_code, res.stderr)
  assert.is_false(res.truncated)
  return res.stdout
end

-- Content of n bytes that is not all zero (a zero block inside would look like an end).
local function content(n)
  return ("0123456789abcdefghijklmnopqrstuvwxyz\n"):rep(n // 37 + 1):sub(1, n)
end

local SIZES = { 0, 1, 511, 512, 513, 1024, 10240, 70000 }

-- Makes dir/tree (files of every size, a symlink, an empty dir, a non-UTF-8 name and a 186-char
-- path that ustar stores with its prefix field) and dir/long (a 300-char path). Returns the
-- expected members of each (name -> {type, size}).
local function make_trees(dir)
  local tree, long = {}, {}
  sh(dir, "mkdir -p tree/empty")
  tree["tree"] = { type = "directory", size = 0 }
  tree["tree/empty"] = { type = "directory", size = 0 }
  for _, n in ipairs(SIZES) do
    local name = "tree/f_" .. n
    helpers.write_file(dir .. "/" .. name, content(n))
    tree[name] = { type = "file", size = n }
  end
  local odd = "tree/caf\xe9-\xff\xfe"
  helpers.write_file(dir .. "/" .. odd, content(77))
  tree[odd] = { type = "file", size = 77 }
  sh(dir, "ln -s f_513 tree/link")
  tree["tree/link"] = { type = "link", size = 0 }
  local mid = "tree/" .. ("m"):rep(90)
  sh(dir, "mkdir " .. mid)
  tree[mid] = { type = "directory", size = 0 }
  local mid_file = mid .. "/" .. ("n"):rep(90)
  assert.equal(186, #mid_file)
  helpers.write_file(dir .. "/" .. mid_file, content(600))
  tree[mid_file] = { type = "file", size = 600 }

  local d1, d2 = "long/" .. ("a"):rep(100), ("b"):rep(100)
  sh(dir, ("mkdir -p %s/%s"):format(d1, d2))
  local long_file = d1 .. "/" .. d2 .. "/" .. ("c"):rep(300 - #d1 - #d2 - 2)
  assert.equal(300, #long_file)
  helpers.write_file(dir .. "/" .. long_file, content(1000))
  long["long"] = { type = "directory", size = 0 }
  long[d1] = { type = "directory", size = 0 }
  long[d1 .. "/" .. d2] = { type = "directory", size = 0 }
  long[long_file] = { type = "file", size = 1000 }
  return tree, long
end

-- files, bytes of expected members (regular files and symlinks; regular files' bytes).
local function counts(...)
  local files, bytes = 0, 0
  for i = 1, select("#", ...) do
    for _, m in pairs(select(i, ...)) do
      if m.type == "file" or m.type == "link" then
        files = files + 1
      end
      if m.type == "file" then
        bytes = bytes + m.size
      end
    end
  end
  return files, bytes
end

-- name -> {type, size} of the members an outcome saw.
local function seen(out)
  local by_name = {}
  for _, m in ipairs(out.members) do
    assert.is_nil(by_name[m.name], "member seen twice: " .. m.name)
    by_name[m.name] = { type = m.type, size = m.size }
  end
  return by_name
end

describe("host.tar_reader on GNU tar's archives", function()
  for _, format in ipairs({ "gnu", "pax", "ustar" }) do
    it("counts every file, symlink and byte of a --format=" .. format .. " archive", function()
      local dir <close> = helpers.tempdir("ph-tar-spec-")
      local tree, long = make_trees(dir.path)
      local expected, roots = helpers.merged(tree, long), { "tree", "long" }
      if format == "ustar" then -- ustar cannot hold a 300-char path
        expected, roots = tree, { "tree" }
      end
      local data = tar(dir.path, { "--format=" .. format, table.unpack(roots) })
      for _, strict in ipairs({ true, false }) do
        local out = read(data, { strict = strict })
        assert.is_true(out.ok, out.err)
        assert.is_true(out.finished, out.finish_err)
        local files, bytes = counts(expected)
        assert.equal(files, out.files)
        assert.equal(bytes, out.bytes)
        assert.same(expected, seen(out))
      end
    end)
  end

  it("counts a hard-linked pair as two files with --hard-dereference", function()
    local dir <close> = helpers.tempdir("ph-tar-spec-")
    sh(dir.path, "mkdir t && printf 0123456789 > t/one && ln t/one t/two")
    local data = tar(dir.path, { "--hard-dereference", "t" })
    local out = read(data, { strict = true })
    assert.is_true(out.ok, out.err)
    assert.is_true(out.finished)
    assert.equal(2, out.files)
    assert.equal(20, out.bytes)
  end)

  it("refuses the hard link GNU tar writes for the pair without --hard-dereference", function()
    local dir <close> = helpers.tempdir("ph-tar-spec-")
    sh(dir.path, "mkdir t && printf 0123456789 > t/one && ln t/one t/two")
    local data = tar(dir.path, { "t" })
    local out = read(data, { strict = true })
    assert.is_false(out.ok)
    assert.equal("the stream holds a hard link t/two", out.err)
    assert.equal(1, out.files)
    assert.equal(10, out.bytes)
    assert.is_false(out.finished)

    out = read(data, { strict = false })
    assert.is_true(out.ok, out.err)
    assert.is_true(out.finished)
    assert.equal(1, out.files) -- the link is no regular file and carries no content
    assert.equal(10, out.bytes)
    assert.same({ type = "hardlink", size = 0 }, seen(out)["t/two"])
  end)

  it("refuses a fifo in strict mode and passes over it otherwise", function()
    local dir <close> = helpers.tempdir("ph-tar-spec-")
    sh(dir.path, "mkdir t && mkfifo t/pipe && printf abc > t/z")
    for _, format in ipairs({ "gnu", "pax", "ustar" }) do
      local data = tar(dir.path, { "--format=" .. format, "t" })
      local out = read(data, { strict = true })
      assert.is_false(out.ok)
      assert.equal("the stream holds a device or fifo t/pipe", out.err)
      out = read(data, { strict = false })
      assert.is_true(out.ok, out.err)
      assert.is_true(out.finished)
      assert.equal(1, out.files)
      assert.equal(3, out.bytes)
      assert.same({ type = "special", size = 0 }, seen(out)["t/pipe"])
    end
  end)

  it("fails finish() on a GNU tar archive cut short, wherever it is cut", function()
    local dir <close> = helpers.tempdir("ph-tar-spec-")
    sh(dir.path, "mkdir t && printf abc > t/a && printf defg > t/b")
    local data = tar(dir.path, { "t" })
    -- t/, t/a + content, t/b + content: the end marker starts at byte 2560
    for _, cut in ipairs({ 0, 1, 511, 512, 1024, 1500, 2048, 2559, 2560, 3071 }) do
      local out = read(data:sub(1, cut), { strict = true })
      assert.is_true(out.ok, out.err)
      assert.is_false(out.finished, "cut at " .. cut)
      assert.equal("the tar stream ended before its end-of-archive marker", out.finish_err)
    end
    assert.is_true(read(data:sub(1, 3072)).finished)
  end)
end)

describe("host.tar_reader on hand-made archives", function()
  it("reads a plain ustar archive and ignores what follows its end marker", function()
    local data = archive(entry({ name = "d/", type = "5" }), entry({ name = "d/a" }, "hello"),
      entry({ name = "d/l", type = "2", linkname = "a" }),
      entry({ name = "d/b", type = "\0" }, content(513)), entry({ name = "d/c", type = "7" }, "xy"))
      .. "garbage after the end"
    local out = read(data, { strict = true })
    assert.is_true(out.ok, out.err)
    assert.is_true(out.finished)
    assert.equal(4, out.files)
    assert.equal(5 + 513 + 2, out.bytes)
    assert.same({
      { name = "d", type = "directory", size = 0 },
      { name = "d/a", type = "file", size = 5 },
      { name = "d/l", type = "link", size = 0 },
      { name = "d/b", type = "file", size = 513 },
      { name = "d/c", type = "file", size = 2 },
    }, out.members)
  end)

  local hostile = {
    {
      what = "an absolute name",
      data = archive(entry({ name = "/etc/passwd" }, "root:x:0:0")),
      err = "the stream holds an absolute name /etc/passwd",
      files = 1, bytes = 10,
    },
    {
      what = "a name with a .. component",
      data = archive(entry({ name = "a/../../x" }, "x")),
      err = "the stream holds a name with a .. component: a/../../x",
      files = 1, bytes = 1,
    },
    {
      what = "a .. component in the ustar prefix",
      data = archive(entry({ name = "y", prefix = "ok/../.." }, "y")),
      err = "the stream holds a name with a .. component: ok/../../y",
      files = 1, bytes = 1,
    },
    {
      what = "a member below an earlier symlink",
      data = archive(entry({ name = "a", type = "2", linkname = "/etc" }),
        entry({ name = "a/passwd" }, "pwned")),
      err = "the stream holds a/passwd below the symlink a",
      files = 2, bytes = 5, before = 1,
    },
    {
      what = "a member below a symlink named with ./ and a trailing slash",
      data = archive(entry({ name = "./d/a/", type = "2", linkname = "/etc" }),
        entry({ name = "d/a/x/y" }, "z")),
      err = "the stream holds d/a/x/y below the symlink d/a",
      files = 2, bytes = 1, before = 1,
    },
    {
      what = "a member below a symlink named with a . component",
      data = archive(entry({ name = "d/./a", type = "2", linkname = "/etc" }),
        entry({ name = "d/a/passwd" }, "z")),
      err = "the stream holds d/a/passwd below the symlink d/a",
      files = 2, bytes = 1, before = 1,
    },
    {
      what = "a member below a symlink named with a double slash",
      data = archive(entry({ name = "d//a", type = "2", linkname = "/etc" }),
        entry({ name = "d/a/passwd" }, "z")),
      err = "the stream holds d/a/passwd below the symlink d/a",
      files = 2, bytes = 1, before = 1,
    },
    {
      what = "a directory a/. after a symlink a",
      data = archive(entry({ name = "a", type = "2", linkname = "/etc" }),
        entry({ name = "a/.", type = "5" })),
      err = "the stream holds a/. below the symlink a",
      files = 1, bytes = 0, before = 1,
    },
    {
      what = "a hard link",
      data = archive(entry({ name = "h", type = "1", linkname = "/etc/shadow" })),
      err = "the stream holds a hard link h",
      files = 0, bytes = 0,
    },
    {
      what = "a character device",
      data = archive(entry({ name = "dev/null", type = "3" })),
      err = "the stream holds a device or fifo dev/null",
      files = 0, bytes = 0,
    },
    {
      what = "a pax path with ..",
      data = archive(pax_entry({ pax_record("path", "../evil") }),
        entry({ name = "harmless" }, "evil")),
      err = "the stream holds a name with a .. component: ../evil",
      files = 1, bytes = 4,
    },
    {
      what = "a GNU long name with ..",
      data = archive(entry({ name = "././@LongLink", type = "L" }, "x/../../../root/.ssh\0"),
        entry({ name = "short" }, "k")),
      err = "the stream holds a name with a .. component: x/../../../root/.ssh",
      files = 1, bytes = 1,
    },
    {
      what = "an unknown type flag",
      data = archive(entry({ name = "odd", type = "Z" }, "abc"), entry({ name = "after" }, "de")),
      err = "the stream holds odd of an unsupported type",
      files = 1, bytes = 2, -- its content is skipped as a file's would be
    },
  }

  for _, case in ipairs(hostile) do
    it("refuses " .. case.what .. " in strict mode only", function()
      local out = read(case.data, { strict = true })
      assert.is_false(out.ok)
      assert.equal(case.err, out.err)
      assert.equal(case.before or 0, #out.members) -- the refused member is never reported
      assert.is_false(out.finished)

      out = read(case.data, { strict = false })
      assert.is_true(out.ok, out.err)
      assert.is_true(out.finished, out.finish_err)
      assert.equal(case.files, out.files)
      assert.equal(case.bytes, out.bytes)
    end)
  end

  it("reports the names a pax header and a GNU long name give", function()
    local long = ("p"):rep(150) .. "/" .. ("q"):rep(200)
    local data = archive(pax_entry({ pax_record("mtime", "1.5"), pax_record("path", long) }),
      entry({ name = "truncated-name" }, "abc"),
      entry({ name = "././@LongLink", type = "L" }, long .. "/gnu\0"), entry({ name = "t2" }, "d"),
      entry({ name = "plain" }, ""))
    local out = read(data, { strict = true })
    assert.is_true(out.ok, out.err)
    assert.same({
      { name = long, type = "file", size = 3 },
      { name = long .. "/gnu", type = "file", size = 1 },
      { name = "plain", type = "file", size = 0 }, -- the long names held for one member only
    }, out.members)
  end)

  it("takes the size from a pax header over the header's size field", function()
    local data = archive(pax_entry({ pax_record("size", "1000") }),
      entry({ name = "big", size = 0 }, content(1000)), entry({ name = "next" }, "1234"))
    local out = read(data, { strict = true })
    assert.is_true(out.ok, out.err)
    assert.is_true(out.finished)
    assert.equal(2, out.files)
    assert.equal(1004, out.bytes)
  end)

  it("passes over a GNU long link name, and a global pax header unless strict", function()
    local data = archive(entry({ name = "g", type = "g" }, pax_record("comment", "hi")),
      entry({ name = "././@LongLink", type = "K" }, ("t"):rep(200) .. "\0"),
      entry({ name = "l", type = "2", linkname = "x" }), entry({ name = "f" }, "ab"))
    local out = read(data)
    assert.is_true(out.ok, out.err)
    assert.same({ { name = "l", type = "link", size = 0 }, { name = "f", type = "file",
      size = 2 } }, out.members)
    -- GNU tar applies a global header to every later member: the reader could lose step
    out = read(data, { strict = true })
    assert.equal("the stream holds a global pax header", out.err)
    out = read(archive(entry({ name = "././@LongLink", type = "K" }, ("t"):rep(200) .. "\0"),
      entry({ name = "l", type = "2", linkname = "x" })), { strict = true })
    assert.is_true(out.ok, out.err)
  end)

  -- What GNU tar would read otherwise than the reader: refused in strict mode (a review
  -- built each and had GNU tar 1.34 unpack a device node the reader never saw).
  it("refuses in strict mode what GNU tar reads otherwise", function()
    local good = entry({ name = "f" }, "ab")
    local cases = {
      { "a wrong checksum", archive((good:gsub("^f", "g", 1))),
        "the stream holds a header with a wrong checksum" },
      { "a file named like a directory", archive(entry({ name = "d/" }, ("x"):rep(1024))),
        "the stream holds a file named like a directory: d/" },
      { "an entry for the root", archive(entry({ name = "./", type = "5" })),
        "the stream holds an entry for its root" },
      { "a sparse pax key", archive(pax_entry({ pax_record("GNU.sparse.size", "10") }), good),
        "the stream holds a pax header with the key GNU.sparse.size" },
    }
    for _, c in ipairs(cases) do
      local out = read(c[2], { strict = true })
      assert.equal(c[3], out.err, c[1])
      assert.is_true(read(c[2]).ok or c[1] == "a wrong checksum", c[1])
    end
    -- a second review: a NUL in a pax path (GNU tar cuts the name there: "x/" is a
    -- directory, whose "content" it reads as headers), an empty long name (GNU tar takes ".")
    local fifo = entry({ name = "fifo", type = "6" })
    local cut = archive(pax_entry({ pax_record("path", "x/\0y") }), entry({ name = "p" }, fifo))
    assert.equal("the stream holds a pax path with a NUL byte", read(cut, { strict = true }).err)
    local empty = archive(entry({ name = "././@LongLink", type = "L" }),
      entry({ name = "x", type = "5" }))
    assert.equal("the stream holds an empty long name", read(empty, { strict = true }).err)
    assert.same({ { name = "", type = "directory", size = 0 } }, read(empty).members)
    -- a pax record without its newline: GNU tar drops it, so it is malformed here
    local bare = archive(pax_entry({ "12 size=5121" }), entry({ name = "f", size = 0 }))
    for _, strict in ipairs({ true, false }) do
      assert.equal("the stream holds a malformed pax header", read(bare, { strict = strict }).err)
    end
    -- GNU's obsolete base-64 size ("+" then digits of 64): malformed in both modes
    local plus = archive(entry({ name = "f", size_field = "+0000000001\0" }, ""))
    for _, strict in ipairs({ true, false }) do
      assert.equal("the stream holds a header with a malformed size",
        read(plus, { strict = strict }).err)
    end
  end)

  it("counts what comes after the end-of-archive marker without reading it", function()
    local reader = tar_reader.new({ strict = true })
    assert(reader:feed(archive(entry({ name = "f" }, "ab")) .. ("x"):rep(700)))
    assert(reader:feed(("y"):rep(300)))
    assert.equal(512 + 1000, reader.trailing) -- it stops at the marker's first zero block
    assert.equal(1, reader.files)
    assert(reader:finish())
  end)

  for _, bad in ipairs({ "nonsense", "99 path=x\n", "0 path=x\n", "x path=y\n" }) do
    local shown = bad:gsub("\n", "\\n")
    it(("refuses a malformed pax header '%s' in both modes"):format(shown), function()
      local data = archive(entry({ name = "p", type = "x" }, bad), entry({ name = "f" }, "a"))
      for _, strict in ipairs({ true, false }) do
        local out = read(data, { strict = strict })
        assert.is_false(out.ok)
        assert.equal("the stream holds a malformed pax header", out.err)
        assert.equal(0, out.files)
      end
    end)
  end

  it("refuses a GNU long name of 2 MiB without reading it", function()
    local data = header({ name = "././@LongLink", type = "L", size = 2 * 1024 * 1024 })
      .. ("n"):rep(4096)
    for _, strict in ipairs({ true, false }) do
      local out = read(data, { strict = strict })
      assert.is_false(out.ok)
      assert.equal("the stream holds a header record over 1 MiB", out.err)
    end
    -- 1 MiB exactly is still a name
    local name = ("n/"):rep(512 * 1024 - 1) .. "nn"
    local ok = read(archive(entry({ name = "././@LongLink", type = "L" }, name),
      entry({ name = "x" }, "y")), { strict = true })
    assert.is_true(ok.ok, ok.err)
    assert.equal(#name, #ok.members[1].name)
  end)

  it("reads a GNU base-256 size and skips that much content", function()
    local data = archive(entry({ name = "a", size_field = base256(1000) }, content(1000)),
      entry({ name = "b" }, "xyz"))
    local out = read(data, { strict = true })
    assert.is_true(out.ok, out.err)
    assert.is_true(out.finished)
    assert.equal(2, out.files)
    assert.equal(1003, out.bytes)
  end)

  it("counts a 10 GiB base-256 size from its header alone", function()
    local big = 10 * 1024 * 1024 * 1024 + 7
    local data = header({ name = "huge", size_field = base256(big) }) .. content(3000)
    local out = read(data, { strict = true })
    assert.is_true(out.ok, out.err)
    assert.equal(1, out.files)
    assert.equal(big, out.bytes)
    assert.same({ { name = "huge", type = "file", size = big } }, out.members)
    assert.is_false(out.finished) -- the content never came
  end)

  it("fails finish() on an archive cut short", function()
    local full = archive(entry({ name = "a" }, content(700)), entry({ name = "b" }, "b"))
    for _, cut in ipairs({ 0, 100, 512, 1000, 1536, 2047, 2048, 2560, #full - 512 - 1 }) do
      local out = read(full:sub(1, cut), { strict = true })
      assert.is_true(out.ok, out.err)
      assert.is_false(out.finished, "cut at " .. cut)
    end
    assert.is_true(read(full:sub(1, #full - 512)).finished) -- one zero block ends it
    local empty = read(archive(), { strict = true }) -- an archive of nothing is complete
    assert.is_true(empty.finished)
    assert.equal(0, empty.files)
  end)

  it("gives on_member every member in order, before its content", function()
    local data = archive(entry({ name = "1", type = "5" }), entry({ name = "1/a" }, "aa"),
      entry({ name = "1/b", type = "2", linkname = "a" }), entry({ name = "1/c", type = "6" }))
    local order = {}
    local reader = tar_reader.new({
      on_member = function(m)
        order[#order + 1] = ("%s:%s:%d"):format(m.name, m.type, m.size)
      end,
    })
    -- the header of 1/a alone: reported before any of its content came
    assert.is_true(reader:feed(data:sub(1, 1024)))
    assert.same({ "1:directory:0", "1/a:file:2" }, order)
    assert.is_true(reader:feed(data:sub(1025)))
    assert.same({ "1:directory:0", "1/a:file:2", "1/b:link:0", "1/c:special:0" }, order)
    assert.is_true(reader:finish())
  end)

  it("lets an error raised in on_member propagate out of feed", function()
    local data = archive(entry({ name = "ok" }, "1"), entry({ name = "stop-here" }, "2"))
    for name, chunks in pairs(chunkings(data)) do
      local seen_names = {}
      local reader = tar_reader.new({
        strict = true,
        on_member = function(m)
          seen_names[#seen_names + 1] = m.name
          if m.name == "stop-here" then
            error({ stop = m.name })
          end
        end,
      })
      local ok, err = pcall(function()
        for _, chunk in ipairs(chunks) do
          reader:feed(chunk)
        end
      end)
      assert.is_false(ok, name)
      assert.same({ stop = "stop-here" }, err)
      assert.same({ "ok", "stop-here" }, seen_names)
    end
  end)

  it("works without options", function()
    local reader = tar_reader.new()
    assert.is_true(reader:feed(archive(entry({ name = "/abs" }, "1"))))
    assert.is_true(reader:finish())
    assert.equal(1, reader.files)
  end)
end)
