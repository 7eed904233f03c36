--- spec.support.helper_procs: what the ph-sandbox-helper specs (spec/bridge/exec_spec.lua,
-- relay_spec.lua, serve_spec.lua) share: the processes a spec left behind, the pids a command
-- wrote, a helper's framed output taken apart, the cancel script against a published group, and
-- protocol errors and usage errors. Call these inside a task (helpers.run); timeout bounds
-- every wait (M.T when it is not given).
local assert = require("luassert") -- a module does not see the spec's assert
local fs = require("host.fs")
local helpers = require("spec.helpers")
local proc = require("host.proc")
local remote = require("host.remote")
local shell = require("host.shell")
local sys = require("host.core.sys")

local M = {
  T = 30, -- the exec and serve specs' bound on every wait (no spec relies on time passing)
}

--- processes_with(token) -> the pids whose command line contains token (zombies have none, so
-- they do not count; nor does this process).
function M.processes_with(token)
  local found = {}
  for _, name in ipairs(fs.list("/proc") or {}) do
    if name:find("^%d+$") and tonumber(name) ~= sys.getpid() then
      local cmdline = helpers.read_file("/proc/" .. name .. "/cmdline")
      if cmdline and cmdline:find(token, 1, true) then
        found[#found + 1] = tonumber(name)
      end
    end
  end
  return found
end

--- none_left(token, timeout): waits until no process mentions token: every process a spec
-- starts has its temp dir on its command line, so none is left behind.
function M.none_left(token, timeout)
  helpers.run(helpers.eventually, function()
    return #M.processes_with(token) == 0
  end, "no process of the spec left", timeout)
end

--- pids_in(path, n [, timeout]) -> the pids (one per line, or space separated) a command
-- wrote into path, once there are n.
function M.pids_in(path, n, timeout)
  return helpers.eventually(function()
    local list = {}
    for pid in (helpers.read_file(path) or ""):gmatch("%d+") do
      list[#list + 1] = tonumber(pid)
    end
    return #list >= n and list
  end, n .. " pids in " .. path, timeout or M.T)
end

--- all_gone(pids [, timeout]): waits until none of pids is alive.
function M.all_gone(pids, timeout)
  for _, pid in ipairs(pids) do
    helpers.eventually(function()
      return not helpers.alive(pid)
    end, "pid " .. pid .. " gone", timeout or M.T)
  end
end

--- background_script(path) -> a sh script that leaves a background child holding its stdout
-- (its pid written into path) and exits 0 at once, saying "done".
function M.background_script(path)
  return "sleep 30 & echo $! > " .. path .. "; echo done"
end

--- background_outlived(path, who): the child of background_script(path) still runs, so who
-- (the helper) answered without waiting for it to close stdout; then it is killed.
function M.background_outlived(path, who)
  local pid = M.pids_in(path, 1)[1]
  assert.is_true(helpers.alive(pid), who .. " waited for the child to exit")
  sys.kill(pid, "SIGKILL")
end

--- frames_to(host) -> on_stdout, on_stderr for a helper whose stdout carries frames
-- (bridge/frame.h): each frame, decoded, goes to host:on_frame(f) in order; output that breaks
-- the format sets host.decode_error (the host's await fails on it); stderr chunks go to
-- host.stderr. host.decoder is a frame.decoder().
function M.frames_to(host)
  local function on_stdout(chunk)
    local list, err = host.decoder:feed(chunk)
    if not list then
      host.decode_error = err
      return
    end
    for _, f in ipairs(list) do
      host:on_frame(f)
    end
  end
  local function on_stderr(chunk)
    host.stderr[#host.stderr + 1] = chunk
  end
  return on_stdout, on_stderr
end

--- hello(host) -> the helper's first frame, its HELLO, once it came (host:await waits).
function M.hello(host)
  return host:await(function()
    return host.frames[1]
  end, "HELLO")
end

--- raw_frame(type_byte, stream, payload) -> a frame's bytes, whatever the codec would refuse.
function M.raw_frame(type_byte, stream, payload)
  return string.pack(">I1I4s4", type_byte, stream, payload or "")
end

--- protocol_error(host, p, case) -> the helper's result: p (the helper's process or duplex)
-- gets case.bytes, then the end of its stdin when case.what is about that ("stdin ending...");
-- host:wait() must then give exit 1, "ph-sandbox-helper <case.subcommand>: protocol error:"
-- and case.message (a pattern) on stderr, and host.frames must end with a GOAWAY (returned
-- second).
function M.protocol_error(host, p, case)
  -- the helper may stop reading at the error, before every byte went: a closed stdin is fine
  local ok, err, code = p:write(case.bytes)
  assert(ok or code == "closed", err)
  if case.what:match("^stdin ending") then
    p:close_stdin()
  end
  local r = host:wait()
  assert.equal(1, r.exit_code)
  assert.matches("^ph%-sandbox%-helper " .. case.subcommand .. ": protocol error: .*"
    .. case.message, r.stderr)
  local last = host.frames[#host.frames] -- the host is told too
  assert.equal("GOAWAY", last.type)
  return r, last
end

--- cancels_group(ctl, leader, timeout): the control dir ctl is private and publishes the group
-- leader leads; host.remote's cancel script run on it succeeds.
function M.cancels_group(ctl, leader, timeout)
  local published = helpers.eventually(function()
    return helpers.read_file(ctl .. "/pid")
  end, "the group published", timeout)
  assert.equal("group:" .. leader .. "\n", published) -- the command leads its group
  assert.equal(tonumber("700", 8), fs.stat(ctl).mode & tonumber("777", 8))
  local c = assert(proc.run({ timeout = timeout,
    argv = { "sh", "-c", remote.cancel_script(shell.quote(ctl), 5) } }))
  assert.equal(0, c.exit_code, c.stderr)
end

--- refuses_usage(cases, usage, timeout) -> the results, in order. Each case is { args, message }:
-- the helper run with args (its subcommand first) exits 2, says "ph-sandbox-helper
-- <subcommand>: <message>" first on stderr (message a pattern), then a usage line that starts
-- with the pattern usage.
function M.refuses_usage(cases, usage, timeout)
  local results = {}
  for _, case in ipairs(cases) do
    local a = { helpers.sandbox_helper() }
    table.move(case[1], 1, #case[1], 2, a)
    local r = assert(proc.run({ argv = a, timeout = timeout }))
    assert.equal(2, r.exit_code, table.concat(a, " "))
    assert.matches("^ph%-sandbox%-helper " .. case[1][1] .. ": " .. case[2], r.stderr)
    assert.matches("\nusage: ph%-sandbox%-helper " .. usage, r.stderr)
    results[#results + 1] = r
  end
  return results
end

return M
