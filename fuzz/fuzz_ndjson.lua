-- fuzz/fuzz_ndjson.lua: fuzz_ndjson's check: the input as a worker's stdin, through serve().
-- Byte 0 picks the line limit and pipe or file; the rest is what the worker reads. Checks:
-- the stdin reader hands over exactly the lines a plain split finds (an overlong one becomes
-- a parse error), every output line is valid UTF-8 JSON-RPC 2.0, every request gets exactly
-- one reply with its id (null when it cannot be echoed), and the worker itself never raises.
local cjson = require("cjson.safe").new() -- raw decoding of the output, independent of host.json
local fstdio = require("fuzz.stdio")
local json = require("host.json")
local log = require("host.log")
local providers = require("host.providers")
local task = require("host.task")
local worker_mod = require("host.worker")

local M = {}

local LIMITS = { 8, 40, 200, 1000, 4096, 65536, 1048576, 256 * 1024 * 1024 }
-- Hook methods the real local provider may serve here: neither spawns nor touches the disk.
local LOCAL_CHEAP = { environmentValidateConfig = true, environmentCancelExecution = true }

local list -- the providers the worker serves: local and fuzzstub
local current -- the worker serve() made for this input
local events -- what reached handle_line, in order

local function fail(fmt, ...)
  error("property violated: " .. fmt:format(...), 0)
end

function M.init()
  local dirs = providers.search_path()
  local loc, problems = providers.load("local", dirs)
  assert(loc, problems and table.concat(problems, "\n"))
  local stub
  stub, problems = providers.load_file(FUZZ_DIR .. "/providers/fuzzstub.lua", "fuzzstub")
  assert(stub, problems and table.concat(problems, "\n"))
  list = { loc, stub }
  -- info lines go out as notifications (checked like any output); only warnings and errors
  -- also reach stderr
  log.set_level("info")
  -- serve() builds its worker with M.new: wrap it to see the lines it is handed, and to steer
  -- the provider methods away from the real local provider's processes.
  local new = worker_mod.new
  worker_mod.new = function(opts)
    local w = new(opts)
    current = w
    w.handle_line = function(self, line)
      local rewritten = M.restrict(line)
      events[#events + 1] = { line = line, sent = rewritten }
      return getmetatable(self).handle_line(self, rewritten)
    end
    return w
  end
end

--- restrict(line) -> the line the worker gets: a provider method for "local" (other than the
-- cheap ones) is sent to fuzzstub instead. Everything else passes byte for byte.
function M.restrict(line)
  if not line:find("local", 1, true) then
    return line
  end
  local msg = json.decode(line)
  if type(msg) ~= "table" or type(msg.params) ~= "table" or msg.params.driverKey ~= "local"
    or not providers.HOOK_OF[msg.method] or LOCAL_CHEAP[msg.method] then
    return line
  end
  msg.params.driverKey = "fuzzstub"
  return json.encode(msg) or ""
end

local function id_key(v)
  if v == nil or v == json.null or v == cjson.null then
    return "null"
  elseif type(v) == "number" then
    v = v + 0.0
    return v == 0 and "n:0" or ("n:%.17g"):format(v)
  elseif type(v) == "string" then
    return "s:" .. v
  end
  return "bad:" .. type(v)
end

local function echoable(v)
  if type(v) == "number" then
    return v == v and v > -math.huge and v < math.huge
  end
  return type(v) == "string" and utf8.len(v) ~= nil
end

--- expected(line) -> the id key of the one reply this line must get, or nil for none:
-- JSON-RPC 2.0's rules (worker-protocol.md) as the worker documents them.
local function expected(line)
  if line:match("^%s*$") then
    return nil
  end
  local msg = json.decode(line)
  if msg == nil then
    return "null" -- parse error
  end
  if type(msg) ~= "table" or msg.jsonrpc ~= "2.0" then
    return type(msg) == "table" and echoable(msg.id) and id_key(msg.id) or "null"
  end
  if msg.result ~= nil or msg.error ~= nil then
    return nil -- a response
  end
  if type(msg.method) ~= "string" then
    return echoable(msg.id) and id_key(msg.id) or "null"
  end
  if msg.id == nil or msg.id == json.null then
    return nil -- a notification
  end
  return echoable(msg.id) and id_key(msg.id) or "null"
end

-- The reference split: what read_line must return, in order: {line} or {overlong = true}.
local function split(data, max)
  local out, pos = {}, 1
  while pos <= #data do
    local nl = data:find("\n", pos, true)
    local line = data:sub(pos, (nl or #data + 1) - 1)
    out[#out + 1] = #line > max and { overlong = true } or { line = line }
    pos = (nl or #data) + 1
  end
  return out
end

local function check_output(out, want, optional_nulls)
  local got = {}
  local n = 0
  for line in out:gmatch("([^\n]*)\n") do
    n = n + 1
    if utf8.len(line) == nil then
      fail("output line %d is not valid UTF-8: %q", n, line)
    end
    local msg = cjson.decode(line)
    if type(msg) ~= "table" or msg.jsonrpc ~= "2.0" then
      fail("output line %d is not a JSON-RPC 2.0 object: %q", n, line)
    end
    if msg.id ~= nil then
      if (msg.result == nil) == (msg.error == nil) then
        fail("reply %q has not exactly one of result and error", line)
      end
      if msg.error ~= nil and (type(msg.error) ~= "table" or math.type(msg.error.code) == nil
          or type(msg.error.message) ~= "string") then
        fail("malformed error object: %q", line)
      end
      local k = id_key(msg.id)
      got[k] = (got[k] or 0) + 1
    else
      if type(msg.method) ~= "string" then
        fail("output line %d is neither a reply nor a notification: %q", n, line)
      end
      local p = msg.params
      if msg.method == "log" and type(p) == "table" and p.level == "error"
          and type(p.message) == "string"
          and (p.message:find("^request .- failed: ") or p.message:find("^cannot encode")) then
        fail("the worker raised or could not encode: %s", p.message)
      end
    end
  end
  if #out > 0 and out:sub(-1) ~= "\n" then
    fail("output does not end with a newline")
  end
  local nulls = got.null or 0
  if nulls >= (want.null or 0) and nulls <= (want.null or 0) + optional_nulls then
    got.null = want.null
  end
  for k, c in pairs(want) do
    if (got[k] or 0) ~= c then
      fail("id %s: %d replies, expected %d; the output:\n%s", k, got[k] or 0, c, out:sub(1, 4000))
    end
  end
  for k, c in pairs(got) do
    if not want[k] then
      fail("id %s: %d unexpected replies; the output:\n%s", k, c, out:sub(1, 4000))
    end
  end
end

function M.check(data)
  if #data < 1 then
    return
  end
  local sel = data:byte(1)
  local max = LIMITS[(sel >> 1) % #LIMITS + 1]
  local input = data:sub(2)
  local as_file = sel & 1 == 1 or #input > 65536
  worker_mod.MAX_LINE = max
  events, current = {}, nil
  fstdio.setup(input, as_file)
  local code = worker_mod.serve(list)
  while fstdio.busy() do
    task.sleep(0.001)
  end
  local out = fstdio.finish()
  if code ~= 0 then
    fail("serve returned %s", tostring(code))
  end

  -- The reader: events must be the reference split, in order, overlong lines left out; it
  -- may stop early only after a shutdown request closed the input.
  local ref = split(input, max)
  local want = {}
  local optional_nulls = 0 -- overlong lines after the reader stopped: read or not
  local stopped = false
  local function expect(k)
    if k then
      want[k] = (want[k] or 0) + 1
    end
  end
  local e = 1
  for i, r in ipairs(ref) do
    if r.overlong then
      if stopped then
        optional_nulls = optional_nulls + 1
      else
        expect("null") -- "Parse error: input line too long"
      end
    elseif not stopped then
      local ev = events[e]
      if ev == nil then
        if not current.closing then
          fail("line %d was never read (and no shutdown came)", i)
        end
        stopped = true
        goto continue
      end
      if ev.line ~= r.line then
        fail("line %d read as %q, expected %q", i, ev.line, r.line)
      end
      expect(expected(ev.sent))
      e = e + 1
    end
    ::continue::
  end
  if events[e] ~= nil then
    fail("read %d lines, the input has only %d", #events, e - 1)
  end
  check_output(out, want, optional_nulls)
end

return M
