--- spec.support.worker_process: a provider-host worker spawned as a child, spoken to over
-- NDJSON on its stdin/stdout exactly as Paperclip does.
local json = require("host.json")
local lines = require("spec.support.lines")
local proc = require("host.proc")
local task = require("host.task")
local helpers = require("spec.helpers")

local M = {}

local Worker = {}
Worker.__index = Worker

--- start(args, opts) -> Worker. args defaults to {"worker", "--provider", "local"}.
function M.start(args, opts)
  opts = opts or {}
  local argv = { opts.binary or helpers.binary() }
  for _, a in ipairs(args or { "worker", "--provider", "local" }) do
    argv[#argv + 1] = a
  end
  local self = setmetatable({ lines = {}, stderr = {}, raw = {} }, Worker)
  local feed = lines.splitter(function(line)
    self.lines[#self.lines + 1] = line
  end)
  self.process = assert(proc.spawn({
    argv = argv,
    env = opts.env,
    stdin = true, -- a pipe we keep writing to
    timeout = opts.timeout or 120,
    max_output = 256 * 1024 * 1024,
    on_stdout = function(chunk)
      self.raw[#self.raw + 1] = chunk
      feed(chunk)
    end,
    on_stderr = function(chunk)
      self.stderr[#self.stderr + 1] = chunk
    end,
  }))
  self.pid = self.process.pid
  return self
end

--- send(msg): a table is encoded as one line; a string is sent as is (add "\n" yourself).
function Worker:send(msg)
  local line = type(msg) == "string" and msg or (assert(json.encode(msg)) .. "\n")
  assert(self.process:write(line))
end

--- request(id, method, params, extra) sends a request (extra fields merged at top level).
function Worker:request(id, method, params, extra)
  self:send(helpers.merged({ jsonrpc = "2.0", id = id, method = method, params = params or {} },
    extra))
end

--- recv_line([timeout]) -> the next raw stdout line | nil, "timeout"
function Worker:recv_line(timeout)
  local deadline = task.now() + (timeout or 10)
  while #self.lines == 0 do
    if task.now() > deadline then
      return nil, "timeout"
    end
    if self.process:done() and #self.lines == 0 then
      return nil, "exited"
    end
    task.sleep(0.002)
  end
  return table.remove(self.lines, 1)
end

--- recv([timeout]) -> next decoded message | nil, reason
function Worker:recv(timeout)
  local line, err = self:recv_line(timeout)
  if not line then
    return nil, err
  end
  return assert(json.decode(line))
end

--- reply_to(id, timeout) -> the reply with that id; other messages are kept in self.other.
function Worker:reply_to(id, timeout)
  local deadline = task.now() + (timeout or 10)
  self.other = self.other or {}
  for i, msg in ipairs(self.other) do -- set aside while waiting for another reply
    if msg.id == id and msg.method == nil then
      return table.remove(self.other, i)
    end
  end
  while true do
    local msg, err = self:recv(math.max(0, deadline - task.now()))
    if not msg then
      return nil, err
    end
    if msg.id == id and msg.method == nil then
      return msg
    end
    self.other[#self.other + 1] = msg
  end
end

function Worker:initialize()
  self:request(0, "initialize", {
    manifest = {},
    config = {},
    instanceInfo = { instanceId = "default", hostVersion = "0.0.0" },
    apiVersion = 1,
    databaseNamespace = json.null,
  })
  return self:reply_to(0)
end

function Worker:close_stdin()
  self.process:close_stdin()
end

--- wait([timeout]) -> proc result (exit_code, signal, ...)
function Worker:wait(timeout)
  return self.process:wait(timeout or 10)
end

function Worker:kill(sig)
  return self.process:kill(sig or "SIGKILL")
end

--- stop(): SIGKILL and reap a worker still running (a spec's cleanup); nothing when it ended.
function Worker:stop()
  if not self.process:done() then
    self:kill("SIGKILL")
    self:wait(5)
  end
end

function Worker:stderr_text()
  return table.concat(self.stderr)
end

--- with(fn [, args [, opts]]) -> fn's results: in a spec task, a worker started with
-- start(args, opts) whose environment is PATH and a private TMPDIR (where `local` makes its
-- leases), plus opts.env; fn(w, tmp) runs, then the worker is stopped and tmp removed with
-- whatever a test left in it.
function M.with(fn, args, opts)
  return helpers.run(function()
    local tmp <close> = helpers.tempdir("ph-worker-spec-")
    local o = helpers.merged(opts)
    o.env = helpers.merged({ PATH = os.getenv("PATH"), TMPDIR = tmp.path }, o.env)
    local w = M.start(args, o)
    helpers.with_cleanup(fn, function()
      w:stop()
    end, w, tmp)
  end)
end

--- params([extra]) -> the base block of a request to the `local` provider, extra merged in.
function M.params(extra)
  return helpers.merged({ driverKey = "local", companyId = "c1", environmentId = "e1",
    config = {} }, extra)
end

return M
