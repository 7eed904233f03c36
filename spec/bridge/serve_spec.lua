-- spec/bridge/serve_spec.lua: ph-sandbox-helper serve, the command server of host.remote, run
-- here through host.duplex as host.remote runs it over SSH, and driven with frames
-- (host.core.frame; bridge/frame.h has the contract): commands at once, exit statuses and
-- signals, stdout and stderr apart and streamed, stdin, the env merged over the server's,
-- sh's 127, background children, the group published for host.remote's cancel script, the
-- cancelled marker, SIGNAL, RESET, the timeout backstop, its stdin's end, credit flow
-- control, limits and protocol errors. No process and no control dir is left behind; no spec
-- relies on time passing.
local duplex = require("host.duplex")
local frame = require("host.core.frame")
local fs = require("host.fs")
local helper_procs = require("spec.support.helper_procs")
local helpers = require("spec.helpers")

local T = helper_procs.T -- bounds every wait
local WINDOW = frame.WINDOW
local read_file = helpers.read_file

local pids_in, all_gone = helper_procs.pids_in, helper_procs.all_gone

--- request(o) -> the bytes of a request (bridge/frame.h): o.ctl, o.cwd, o.argv, o.env
-- (name -> value, sent sorted), o.timeout_ms.
local function request(o)
  local parts = { string.pack(">I4", o.timeout_ms or 0), string.pack(">s4", o.ctl),
    string.pack(">s4", o.cwd or ""), string.pack(">I4", #o.argv) }
  for _, a in ipairs(o.argv) do
    parts[#parts + 1] = string.pack(">s4", a)
  end
  local names = helpers.sorted_keys(o.env or {})
  parts[#parts + 1] = string.pack(">I4", #names)
  for _, k in ipairs(names) do
    parts[#parts + 1] = string.pack(">s4s4", k, o.env[k])
  end
  local body = table.concat(parts)
  return string.pack(">I4", #body + 4) .. body
end

------------------------------------------------------------------------------------------------
-- The host's end, as a spec drives it

local Server = {}
Server.__index = Server

function Server:stream(id)
  local s = self.streams[id]
  if not s then
    s = { out = {}, err = {}, order = {}, len = 0, credit = WINDOW, taken = 0 }
    self.streams[id] = s
  end
  return s
end

function Server:on_frame(f)
  self.frames[#self.frames + 1] = f
  if f.type == "HELLO" or f.type == "GOAWAY" then
    return
  end
  local s = self:stream(f.stream)
  assert(not s.exit, f.type .. " after EXIT on stream " .. f.stream)
  if f.type == "DATA" or f.type == "STDERR" then
    local list = f.type == "DATA" and s.out or s.err
    list[#list + 1] = f.payload
    s.order[#s.order + 1] = f.type
    s.len = s.len + #f.payload
    if self.auto_credit then
      self:send("CREDIT", f.stream, string.pack(">I4", #f.payload))
    end
  elseif f.type == "CREDIT" then
    s.credit = s.credit + f.credit
  elseif f.type == "EXIT" then
    s.exit = f
  end
end

-- Frames go out in order through a queue: on_stdout callbacks cannot yield.
function Server:send(type_name, stream, payload)
  self.queue[#self.queue + 1] = frame.encode(type_name, stream, payload)
  if not self.flushing then
    self.flushing = true
    require("host.task").spawn(function()
      while #self.queue > 0 do
        local data = table.concat(self.queue)
        self.queue = {}
        self.duplex:write(data) -- may fail once the server exited: the specs look at that
      end
      self.flushing = false
    end)
  end
end

-- Wait for pred() (polled), failing at once if the server's output broke the format.
function Server:await(pred, what)
  return helpers.eventually(function()
    assert(not self.decode_error, self.decode_error)
    return pred()
  end, what, T)
end

-- Starts a command on a new stream: the request in one EXEC (or pieces of `split` bytes),
-- then stdin (within the stream's credit) and FIN unless o.keep_stdin. Returns the id.
function Server:exec(o)
  self.next_id = self.next_id + 2
  local id = self.next_id
  local req = request(helpers.merged({ ctl = "c" .. id, timeout_ms = 0 }, o))
  local step = o.split or frame.MAX_PAYLOAD
  for i = 1, #req, step do
    self:send("EXEC", id, req:sub(i, i + step - 1))
  end
  local s = self:stream(id)
  if o.stdin then
    self:feed(id, o.stdin)
  end
  if not o.keep_stdin then
    self:send("FIN", id)
  end
  s.ctl = self.ctl_base .. "/" .. (o.ctl or ("c" .. id))
  return id
end

-- stdin bytes as DATA, each piece within the credit the server granted.
function Server:feed(id, bytes)
  local s = self:stream(id)
  local pos = 1
  while pos <= #bytes do
    self:await(function()
      return s.credit > 0 or s.exit
    end, "stdin credit on stream " .. id)
    if s.exit then
      return
    end
    local n = math.min(s.credit, frame.MAX_PAYLOAD, #bytes - pos + 1)
    self:send("DATA", id, bytes:sub(pos, pos + n - 1))
    s.credit = s.credit - n
    pos = pos + n
  end
end

-- The command's end: { exit_code | signal, timed_out, stdout, stderr }.
function Server:result(id)
  local s = self:stream(id)
  local f = self:await(function()
    return s.exit
  end, "EXIT on stream " .. id)
  return { exit_code = f.exit_code, signal = f.signal, timed_out = f.timed_out,
    stdout = table.concat(s.out), stderr = table.concat(s.err) }
end

-- The server's own end: its exit and what it said on stderr.
function Server:wait()
  local r = assert(self.duplex:wait(T))
  r.stderr = table.concat(self.stderr)
  return r
end

local function start(dir, opts)
  opts = opts or {}
  local s = setmetatable({ frames = {}, streams = {}, stderr = {}, queue = {}, next_id = 1,
    decoder = frame.decoder(), auto_credit = opts.auto_credit ~= false,
    ctl_base = dir .. "/ctl" }, Server)
  local argv = { helpers.sandbox_helper(), "serve", "--ctl-base", s.ctl_base }
  for _, a in ipairs(opts.args or {}) do
    argv[#argv + 1] = a
  end
  local on_stdout, on_stderr = helper_procs.frames_to(s)
  s.duplex = assert(duplex.process({ argv = argv, env = opts.env, cwd = opts.cwd, timeout = 120,
    on_stdout = on_stdout, on_stderr = on_stderr }))
  s.hello = helper_procs.hello(s)
  return s
end

------------------------------------------------------------------------------------------------

describe("ph-sandbox-helper serve", function()
  local dir

  -- fn(server) as a task with a server on a fresh dir (opts: args, env, cwd, auto_credit);
  -- the server is asked to end (its stdin closed), or killed when it does not.
  local function with_server(opts, fn)
    helpers.run(function()
      local server = start(dir.path, opts)
      helpers.with_cleanup(fn, function()
        server.duplex:close_stdin()
        server.duplex:wait(T)
        server.duplex:close()
      end, server)
    end)
  end

  -- sh -c script as a command's argv.
  local function sh(script)
    return { "sh", "-c", script }
  end

  before_each(function()
    dir = helpers.tempdir("ph-serve-spec-")
  end)

  after_each(function()
    helper_procs.none_left(dir.path, T)
    helpers.run(helpers.eventually, function()
      return #(fs.list(dir.path .. "/ctl") or {}) == 0
    end, "no control dir left", T)
    dir:remove()
  end)

  it("says HELLO first: PHSERVE1 and how many commands it runs at once", function()
    with_server({ args = { "--max-commands", "7" } }, function(s)
      assert.equal("HELLO", s.hello.type)
      assert.equal(frame.SERVE_MAGIC, s.hello.magic)
      assert.equal(7, s.hello.max_commands)
      assert.is_nil(s.hello.port)
    end)
  end)

  it("runs many commands at once, each with its own exit status", function()
    with_server({}, function(s)
      local ids = {}
      for i = 1, 60 do
        ids[i] = s:exec({ argv = sh("echo " .. i .. "; exit " .. i) })
      end
      for i, id in ipairs(ids) do
        local r = s:result(id)
        assert.same({ i, i .. "\n", "" }, { r.exit_code, r.stdout, r.stderr })
      end
    end)
  end)

  it("says which signal ended a command", function()
    with_server({}, function(s)
      local r = s:result(s:exec({ argv = sh("kill -TERM $$") }))
      assert.same({ nil, 15, false }, { r.exit_code, r.signal, r.timed_out })
      r = s:result(s:exec({ argv = sh("kill -KILL $$") }))
      assert.equal(9, r.signal)
    end)
  end)

  it("keeps stdout and stderr apart, in the order they came", function()
    with_server({}, function(s)
      local id = s:exec({ argv = sh("echo out; echo err >&2; echo out2") })
      local r = s:result(id)
      assert.equal("out\nout2\n", r.stdout)
      assert.equal("err\n", r.stderr)
      assert.equal("DATA", s:stream(id).order[1])
    end)
  end)

  it("streams output: the first chunk arrives before the command ends", function()
    with_server({}, function(s)
      local gate <close> = helpers.gate()
      local id = s:exec({ argv = sh("echo first; echo first-err >&2; " .. gate.sh
        .. "; echo second") })
      local st = s:stream(id)
      s:await(function()
        return #st.out >= 1 and #st.err >= 1
      end, "the first chunks")
      assert.is_nil(st.exit)
      assert.equal("first\n", st.out[1])
      assert.equal("first-err\n", st.err[1])
      gate:open() -- the command goes on only once "first" got here
      local r = s:result(id)
      assert.equal(0, r.exit_code)
      assert.equal("first\nsecond\n", r.stdout)
    end)
  end)

  it("hands the command its stdin, every byte, within the credit it grants", function()
    with_server({}, function(s)
      local data = helpers.all_bytes():rep(4000) -- 1 MiB: four windows
      local id = s:exec({ argv = { "cat" }, stdin = data })
      local r = s:result(id)
      assert.equal(0, r.exit_code)
      assert.is_true(r.stdout == data, "stdin came back changed")
      -- a command that never reads it: the rest is dropped, its credit given back
      id = s:exec({ argv = sh("exec 0<&-; echo closed"), stdin = ("x"):rep(3 * WINDOW) })
      assert.same({ 0, "closed\n" }, { s:result(id).exit_code, s:result(id).stdout })
    end)
  end)

  it("gives a command its env over the server's, its cwd, and no descriptor of ours", function()
    local env = { PATH = os.getenv("PATH"), HOME = "/nowhere", FROM_SERVER = "kept",
      OVERRIDDEN = "server" }
    -- the descriptors a shell started as the server is has: what the server inherited
    local fds = 'for f in /proc/$$/fd/*; do printf "%s " "${f##*/}"; done'
    local inherited = helpers.run(function()
      return assert(require("host.proc").run({ argv = sh(fds), env = env, timeout = T })).stdout
    end)
    with_server({ env = env, cwd = "/" }, function(s)
      local wd = dir.path .. "/wd"
      assert(fs.mkdir(wd))
      local gate <close> = helpers.gate()
      local other = s:exec({ argv = sh(gate.sh), keep_stdin = true }) -- its pipes are open
      local script = 'printf "%s|%s|%s|%s|%s\\n" "$FROM_SERVER" "$OVERRIDDEN" "$FOO" "$HOME" '
        .. '"$(pwd)"; ' .. fds
      local r = s:result(s:exec({ argv = sh(script), cwd = wd,
        env = { OVERRIDDEN = "request", FOO = "bar baz\nline" } }))
      assert.equal(0, r.exit_code, r.stderr)
      local line, list = r.stdout:match("^(.-)\n([%d ]+)$")
      assert.equal("kept|request|bar baz\nline|/nowhere|" .. wd, line)
      assert.equal(inherited, list) -- nothing of the server's leaked in
      -- without a cwd: the server's
      r = s:result(s:exec({ argv = { "pwd" } }))
      assert.equal("/\n", r.stdout)
      gate:open()
      s:send("FIN", other)
      assert.equal(0, s:result(other).exit_code)
    end)
  end)

  it("takes a request in several EXEC frames (a big env)", function()
    with_server({}, function(s)
      local big = ("v"):rep(100000) -- under Linux's 128 KiB for one string
      local r = s:result(s:exec({ argv = sh('printf %s "$BIG" | wc -c'), env = { BIG = big },
        split = 7000 }))
      assert.equal(0, r.exit_code, r.stderr)
      assert.equal(tostring(#big), (r.stdout:gsub("%s", "")))
    end)
  end)

  it("answers sh's 127 and 'not found' for a missing program, 126 when it cannot run",
    function()
      with_server({}, function(s)
        local r = s:result(s:exec({ argv = { "no-such-program-here", "x" } }))
        assert.same({ 127, "", "no-such-program-here: not found\n" },
          { r.exit_code, r.stdout, r.stderr })
        helpers.write_file(dir.path .. "/not-executable", "#!/bin/sh\n")
        r = s:result(s:exec({ argv = { dir.path .. "/not-executable" } }))
        assert.equal(126, r.exit_code)
        assert.matches("not%-executable: Permission denied", r.stderr)
        r = s:result(s:exec({ argv = { "true" }, cwd = dir.path .. "/missing" }))
        assert.equal(2, r.exit_code)
        assert.matches("^cd: .*/missing: No such file or directory\n$", r.stderr)
      end)
    end)

  it("answers once the command exits, while a background child still holds stdout", function()
    with_server({}, function(s)
      local bg = dir.path .. "/bg"
      local r = s:result(s:exec({ argv = sh(helper_procs.background_script(bg)) }))
      assert.same({ 0, "done\n" }, { r.exit_code, r.stdout })
      helper_procs.background_outlived(bg, "the server")
    end)
  end)

  it("publishes the group in <ctl-base>/<name>/pid: host.remote's cancel script stops it",
    function()
      with_server({}, function(s)
        local pids = dir.path .. "/pids"
        local id = s:exec({ ctl = "exec-1", argv = sh("sleep 60 & echo $! > " .. pids
          .. "; echo $$ >> " .. pids .. "; wait") })
        local list = pids_in(pids, 2)
        local ctl = s.ctl_base .. "/exec-1"
        helper_procs.cancels_group(ctl, list[2], T)
        assert.equal(15, s:result(id).signal)
        all_gone(list) -- the background child too: it was in the group
        assert.is_nil(fs.stat(ctl)) -- removed, cancel marker included
      end)
    end)

  it("never starts a command canceled before it started: exit 130", function()
    with_server({}, function(s)
      local ctl = s.ctl_base .. "/exec-2"
      assert(fs.mkdirs(ctl, tonumber("700", 8)))
      helpers.write_file(ctl .. "/cancelled", "")
      local marker = dir.path .. "/ran"
      local r = s:result(s:exec({ ctl = "exec-2", argv = { "touch", marker } }))
      assert.equal(130, r.exit_code)
      assert.is_nil(fs.stat(marker))
      assert.is_nil(fs.stat(ctl))
    end)
  end)

  it("SIGNAL: sends the signal to the group, and KILL when it is still there later",
    function()
      with_server({}, function(s)
        local id = s:exec({ argv = sh("trap 'echo got-term; exit 3' TERM; echo ready; "
          .. "while :; do sleep 0.05; done") })
        s:await(function()
          return #s:stream(id).out > 0
        end, "ready")
        s:send("SIGNAL", id, string.pack(">BI4", 15, 0))
        local r = s:result(id)
        assert.same({ 3, "ready\ngot-term\n" }, { r.exit_code, r.stdout })
        -- a group that ignores TERM: KILLed kill_after_ms later
        local pids = dir.path .. "/pids"
        id = s:exec({ argv = sh("trap '' TERM; sleep 60 & echo $! > " .. pids .. "; echo $$ >> "
          .. pids .. "; wait") })
        local list = pids_in(pids, 2)
        s:send("SIGNAL", id, string.pack(">BI4", 15, 200))
        assert.equal(9, s:result(id).signal)
        all_gone(list)
      end)
    end)

  it("RESET: the host gave the command up: its group is stopped, nothing more is sent",
    function()
      with_server({}, function(s)
        local pids = dir.path .. "/pids"
        local id = s:exec({ ctl = "gone", argv = sh("sleep 60 & echo $! > " .. pids
          .. "; echo $$ >> " .. pids .. "; while :; do echo tick; sleep 0.05; done") })
        local list = pids_in(pids, 2)
        s:send("RESET", id)
        all_gone(list)
        helpers.eventually(function()
          return not fs.stat(s.ctl_base .. "/gone")
        end, "its control dir removed", T)
        -- the server goes on: a later command runs, and nothing came after for the first
        local n = #s.frames
        assert.equal(0, s:result(s:exec({ argv = { "true" } })).exit_code)
        for i = n + 1, #s.frames do
          assert.are_not.equal(id, s.frames[i].stream)
        end
        assert.is_nil(s:stream(id).exit)
      end)
    end)

  it("stops a command at its timeout (TERM, KILL 2 s later) and says so in EXIT", function()
    with_server({}, function(s)
      local pids = dir.path .. "/pids"
      -- the background child ignores TERM: only KILL ends it
      local r = s:result(s:exec({ timeout_ms = 300, argv = sh("(trap '' TERM; sleep 60) & "
        .. "echo $! > " .. pids .. "; echo $$ >> " .. pids .. "; echo started; wait") }))
      assert.is_true(r.timed_out)
      assert.equal(15, r.signal)
      assert.equal("started\n", r.stdout)
      all_gone(pids_in(pids, 2))
    end)
  end)

  it("stops every command when its stdin ends, removes their control dirs, exits 0",
    function()
      helpers.run(function()
        local s = start(dir.path)
        local pids = dir.path .. "/pids"
        for i = 1, 3 do
          s:exec({ argv = sh("trap '' TERM; sleep 60 & echo $! >> " .. pids .. "; echo $$ >> "
            .. pids .. "; echo " .. i .. "; wait") })
        end
        local list = pids_in(pids, 6)
        assert.equal(3, #fs.list(s.ctl_base))
        s.duplex:close_stdin()
        local r = s:wait()
        assert.equal(0, r.exit_code, r.stderr)
        all_gone(list) -- TERM ignored: KILLed
        assert.same({}, fs.list(s.ctl_base))
        s.duplex:close()
      end)
    end)

  it("relays 8 MiB within the host's credit, never more, and keeps its memory small",
    function()
      with_server({ auto_credit = false }, function(s)
        local total = 8 * 1024 * 1024
        local id = s:exec({ argv = sh("head -c " .. total .. " /dev/zero | tr '\\0' a; "
          .. "echo end >&2") })
        local st = s:stream(id)
        s:await(function()
          return st.len == WINDOW
        end, "a window of output")
        -- the command is stalled, not the server: another command runs meanwhile
        s.auto_credit = true
        assert.equal(0, s:result(s:exec({ argv = { "true" } })).exit_code)
        s.auto_credit = false
        assert.equal(WINDOW, st.len) -- not a byte beyond the credit
        local rss = read_file("/proc/" .. s.duplex.pid .. "/status"):match("VmRSS:%s*(%d+)")
        assert.is_true(tonumber(rss) < 8 * 1024, "server RSS " .. rss .. " kB")
        while not st.exit do -- grant a window at a time, once the last one was used
          local used = st.len
          s:send("CREDIT", id, string.pack(">I4", WINDOW))
          s:await(function()
            return st.exit or st.len == used + WINDOW or st.len >= total
          end, "the next window")
          if st.len >= total then
            s:send("CREDIT", id, string.pack(">I4", WINDOW))
            s:await(function()
              return st.exit
            end, "EXIT")
          end
        end
        local r = s:result(id)
        assert.equal(0, r.exit_code)
        assert.equal(total, #r.stdout)
        assert.is_nil(r.stdout:find("[^a]"))
        assert.equal("end\n", r.stderr)
      end)
    end)

  it("answers EXIT 125 to a command beyond --max-commands", function()
    with_server({ args = { "--max-commands", "2" } }, function(s)
      local gate <close> = helpers.gate()
      local a, b = s:exec({ argv = sh(gate.sh) }), s:exec({ argv = sh(gate.sh) })
      local r = s:result(s:exec({ argv = { "true" } }))
      assert.equal(125, r.exit_code)
      assert.matches("more than 2 commands at once", r.stderr)
      gate:open()
      assert.equal(0, s:result(a).exit_code)
      assert.equal(0, s:result(b).exit_code)
      assert.equal(0, s:result(s:exec({ argv = { "true" } })).exit_code) -- room again
    end)
  end)

  it("exits 125 for a command whose control dir cannot be made", function()
    with_server({}, function(s)
      helpers.write_file(s.ctl_base, "") -- a file where --ctl-base should be
      local marker = dir.path .. "/ran"
      local r = s:result(s:exec({ argv = { "touch", marker } }))
      assert.equal(125, r.exit_code)
      assert.matches("cannot create the control dir .*/ctl/c%d+", r.stderr)
      assert.is_nil(fs.stat(marker))
      assert(os.remove(s.ctl_base))
    end)
  end)

  describe("a protocol error from the host ends it: stderr, GOAWAY, commands stopped, exit 1",
    function()
      local raw = helper_procs.raw_frame
      local ok_req = request({ ctl = "x", argv = { "true" } })
      local cases = {
        { "an unknown frame type", raw(9, 1), "frame: unknown type 0x09" },
        { "HELLO from the host", frame.encode("HELLO", 0, frame.SERVE_MAGIC .. "\0\1"),
          "HELLO from the host" },
        { "EXIT from the host", frame.encode("EXIT", 9, "\0\0\0"), "EXIT from the host" },
        { "DATA on a stream never opened", frame.encode("DATA", 99, "x"),
          "DATA on stream 99, which was never opened" },
        { "EXEC on a stream id that is not new", frame.encode("EXEC", 1, ok_req),
          "EXEC on stream 1 after its request" },
        { "DATA before the request is whole", frame.encode("EXEC", 7, ok_req:sub(1, 10))
          .. frame.encode("DATA", 7, "x"), "DATA on stream 7 before its request is whole" },
        { "a request without a program", frame.encode("EXEC", 7,
          request({ ctl = "x", argv = {} })), "a bad request on stream 7: no program" },
        { "a control dir name with a slash", frame.encode("EXEC", 7,
          request({ ctl = "../x", argv = { "true" } })), "a control dir name that is not" },
        { "a request that lies about its length", frame.encode("EXEC", 7,
          string.pack(">I4", 3) .. ok_req:sub(5)), "a request of 3 bytes on stream 7" },
        -- the window, and more than a pipe holds (its writes give credit back)
        { "DATA beyond credit", frame.encode("DATA", 1, ("x"):rep(frame.MAX_PAYLOAD)):rep(12),
          "exceeds its credit" },
        { "a second FIN", frame.encode("FIN", 1) .. frame.encode("FIN", 1), "a second FIN" },
        { "a SIGNAL of signal 0", raw(0x13, 1, string.pack(">BI4", 0, 0)),
          "SIGNAL of signal 0" },
        { "stdin ending inside a frame", raw(3, 1, "abc"):sub(1, 10),
          "stdin ended inside a frame" },
      }
      for _, case in ipairs(cases) do
        local what, bytes, message = case[1], case[2], case[3]
        it(what, function()
          helpers.run(function()
            local s = start(dir.path)
            local pids = dir.path .. "/pids"
            -- stream 1: a command that keeps its stdin open and runs on
            s.next_id = -1
            s:exec({ argv = sh("echo $$ > " .. pids .. "; sleep 60 & echo $! >> " .. pids
              .. "; wait"), keep_stdin = true })
            local list = pids_in(pids, 2)
            helper_procs.protocol_error(s, s.duplex, { what = what, bytes = bytes,
              subcommand = "serve", message = message:gsub("%p", "%%%0") })
            all_gone(list)
            assert.same({}, fs.list(s.ctl_base))
            s.duplex:close()
          end)
        end)
      end
    end)

  it("refuses bad usage with exit 2 and a line naming the problem", function()
    helpers.run(function()
      local results = helper_procs.refuses_usage({
        { { "serve" }, "%-%-ctl%-base DIR is required" },
        { { "serve", "--ctl-base" }, "%-%-ctl%-base needs a value" },
        { { "serve", "--ctl-base", "" }, "bad %-%-ctl%-base ''" },
        { { "serve", "--ctl-base", dir.path, "--max-commands", "0" }, "bad %-%-max%-commands '0'" },
        { { "serve", "--ctl-base", dir.path, "--bogus" }, "unknown argument '%-%-bogus'" },
      }, "serve %-%-ctl%-base DIR", T)
      for _, r in ipairs(results) do
        assert.equal("", r.stdout) -- no HELLO
      end
      local r = assert(require("host.proc").run({ argv = { helpers.sandbox_helper(), "--help" },
        timeout = T }))
      assert.matches("serve %-%-ctl%-base DIR %[%-%-max%-commands N%]", r.stdout)
    end)
  end)
end)
