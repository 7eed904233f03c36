--- host.worker: the Paperclip plugin-worker protocol (JSON-RPC 2.0, NDJSON on stdio).
-- See ../shared/reference/worker-protocol.md. Every request runs as its own task and
-- replies leave in completion order, one whole line at a time.
local bridge_execute = require("host.bridge_execute")
local error_codes = require("host.errors")
local json = require("host.json")
local log = require("host.log")
local task = require("host.task")
local util = require("host.util")
local protocol_params = require("host.params")
local providers = require("host.providers")

local M = {}

local PARSE_ERROR, INVALID_REQUEST, METHOD_NOT_FOUND, INVALID_PARAMS =
  -32700, -32600, -32601, -32602
local WORKER_ERROR, METHOD_NOT_IMPLEMENTED = -32002, -32004
M.MAX_LINE = 256 * 1024 * 1024 -- bytes in one request line
-- The output cap, per stream (stdout, stderr) of an environmentExecute result: at most this many
-- bytes once JSON-encoded as host.json writes the string (quotes not counted), the same for
-- what ctx:emit streams. Two capped streams and the rest of a reply stay near 64 MiB, far
-- below the host's line limit of 128 Mi UTF-16 units (a unit is never more than a byte of
-- UTF-8). It is also what a primitive keeps (ctx.max_output): encoded text is never shorter
-- than the raw bytes it comes from, so more could never be sent.
M.MAX_OUTPUT = 32 * 1024 * 1024
local MAX_CHUNK = 999000 -- execute.log chunks must stay under 1 000 000 UTF-16 units
-- Bytes waiting for the host (worker.queued) past which live output stops: a command can write
-- faster than the host reads, and what waits is memory. The result still carries the output.
local MAX_BACKLOG = 8 * 1024 * 1024
local VOID = {
  environmentReleaseLease = true,
  environmentDestroyLease = true,
}
-- Optional methods of the protocol a provider worker does not serve: -32004, not -32601.
local OPTIONAL = {
  validateConfig = true,
  onEvent = true,
  runJob = true,
  handleWebhook = true,
  handleApiRequest = true,
  getData = true,
  performAction = true,
  executeTool = true,
  environmentStartInteractiveSetup = true,
  environmentGetInteractiveSetup = true,
  environmentCaptureTemplate = true,
  environmentCancelInteractiveSetup = true,
  environmentDeleteTemplate = true,
  setupTokenPtyOpen = true,
  setupTokenPtyInput = true,
  setupTokenPtyStop = true,
  setupTokenPtyClose = true,
}
for _, pair in ipairs(providers.HOOKS) do
  OPTIONAL[pair[2]] = true
end

local Worker = {}
Worker.__index = Worker

--- new{providers = {p1, ...}, write = fn(line)} -> Worker
-- write receives each outgoing message as one line without the newline.
function M.new(opts)
  local self = setmetatable({
    by_key = {},
    list = opts.providers,
    write = opts.write,
    initialized = false,
    inflight = {}, -- task -> true
    executions = {}, -- "company\0env\0lease\0id" -> {cancel = fn}
    closing = false,
  }, Worker)
  for _, p in ipairs(opts.providers) do
    self.by_key[p.driver_key] = p
  end
  return self
end

-- A shallow copy of t that keeps its host.json key order.
local function copy(t)
  local out = {}
  for k, v in pairs(t) do
    out[k] = v
  end
  if json.order_of(t) then
    json.ordered(out, json.order_of(t))
  end
  return out
end

local OUTPUT_STREAMS = { "stdout", "stderr" }
local BIG = 1024 * 1024 -- bytes: an output this long gets the memory care of cap_result and send
local marker -- "\0" .. random hex: stands in for a big output while a reply is encoded

-- The line for msg as parts, or nil when its result carries no big output. Each big stdout or
-- stderr (up to MAX_OUTPUT encoded bytes) is escaped in C into 1 MiB parts and the rest of the
-- reply is encoded around a marker. The line then never exists as one string: through cjson it
-- would be there twice (its buffer and the copy it returns), next to the text itself.
local function big_parts(msg)
  local res = msg.result
  if type(res) ~= "table" or json.is_array(res) then
    return nil
  end
  local keys = {}
  for _, k in ipairs(OUTPUT_STREAMS) do
    if type(res[k]) == "string" and #res[k] >= BIG then
      keys[#keys + 1] = k
    end
  end
  if #keys == 0 then
    return nil
  end
  if not marker then
    local seed = util.random(8)
    if not seed then
      return nil -- no random bytes (never seen): the plain path still works
    end
    marker = "\0" .. util.hex(seed)
  end
  local outer, result = copy(msg), copy(res)
  outer.result = result
  for _, k in ipairs(keys) do
    result[k] = marker .. k -- random: no other string of a reply is the same
  end
  local line = json.encode(outer)
  if not line or not util.utf8_valid(line) then
    return nil -- send encodes the whole reply (cleaning it) and reports the error
  end
  local found = {}
  for _, k in ipairs(keys) do
    local i, j = line:find('"\\u0000' .. marker:sub(2) .. k .. '"', 1, true)
    if not i then
      return nil -- not expected (both encoders write \0 as \u0000): the plain path works
    end
    found[#found + 1] = { i, j, k }
  end
  table.sort(found, function(a, b)
    return a[1] < b[1]
  end)
  local parts, pos = {}, 1
  for _, f in ipairs(found) do
    parts[#parts + 1] = line:sub(pos, f[1] - 1)
    for _, piece in ipairs(util.json_quote(res[f[3]])) do
      parts[#parts + 1] = piece
    end
    pos = f[2] + 1
  end
  parts[#parts + 1] = line:sub(pos)
  return parts
end

-- A deep copy of v whose strings (keys too) are valid UTF-8: each ill-formed sequence becomes
-- U+FFFD. Array and key-order marks are kept.
local function clean_utf8(v)
  if type(v) == "string" then
    return (util.utf8_clean(v, true))
  elseif type(v) ~= "table" or v == json.null then
    return v
  end
  local out = {}
  for k, x in pairs(v) do
    out[clean_utf8(k)] = clean_utf8(x)
  end
  if json.is_array(v) then
    json.array(out)
  elseif json.order_of(v) then
    json.ordered(out, json.order_of(v))
  end
  return out
end

--- reply_id(v) -> v when a reply can echo it as it came (a string of valid UTF-8 or a finite
-- number), else json.null: 1e400 decodes to infinity, which JSON cannot carry, and bytes that
-- are not UTF-8 would break the host's parser (replaced, they would name another id).
function M.reply_id(v)
  if type(v) == "number" and v == v and v > -math.huge and v < math.huge then
    return v
  elseif type(v) == "string" and util.utf8_valid(v) then
    return v
  end
  return json.null
end

function Worker:send(msg)
  local parts = self.write_parts and big_parts(msg)
  if parts then
    return self.write_parts(parts)
  end
  local line, err = json.encode(msg)
  if line and not util.utf8_valid(line) then
    -- a method, driverKey or command name echoed in a message, say: every line leaves as
    -- valid UTF-8, whatever bytes came in
    line, err = json.encode(clean_utf8(msg))
  end
  if not line then
    -- A value we cannot encode is a bug in a hook's result: report it, do not go silent.
    log.error("cannot encode a reply: %s", err)
    if msg.id ~= nil then
      line = json.encode(clean_utf8({
        jsonrpc = "2.0",
        id = M.reply_id(msg.id),
        error = { code = WORKER_ERROR, message = "worker produced an unencodable result: " .. err },
      }))
    end
  end
  if line then
    self.write(line)
  end
end

function Worker:reply(id, result)
  if result == nil then
    result = json.null
  end
  self:send({ jsonrpc = "2.0", id = id, result = result })
end

function Worker:reply_error(id, code, message, data)
  if id == nil then
    id = json.null
  end
  self:send({
    jsonrpc = "2.0",
    id = id,
    error = { code = code, message = log.redact(message), data = data },
  })
end

--- notify(method, params, invocation_id): a notification (never carries an id).
function Worker:notify(method, params, invocation_id)
  self:send({
    jsonrpc = "2.0",
    method = method,
    params = params,
    paperclipInvocationId = invocation_id,
  })
end

--- CLEANUP_RESERVE: seconds of a request's budget kept for the cleanup its hook owes (at most
-- a quarter of the budget): the hook's own steps get the rest, so a step that stalls to the
-- end of its share still leaves time to delete the VM or kill the sandbox it made.
M.CLEANUP_RESERVE = 30

--- EXECUTE_RESERVE: an execute's budget is its timeoutMs plus 25 s (budget below), and its
-- command must time out inside the hook's share, not be canceled with it: its reserve is at
-- most this, so the hook always gets timeoutMs plus 15 s.
M.EXECUTE_RESERVE = 10

--- split_budget(method, params) -> seconds for the hook's own steps, seconds kept for its
-- cleanup after them.
function M.split_budget(method, params)
  local seconds = M.budget(method, params)
  local reserve = math.min(M.CLEANUP_RESERVE, seconds / 4)
  if method == "environmentExecute" then
    reserve = math.min(reserve, M.EXECUTE_RESERVE)
  end
  return seconds - reserve, reserve
end

--- budget(method, params) -> seconds: a request's deadline, a few seconds inside the host's own
-- (worker-protocol.md 2.6), so the host hears our answer instead of timing out. Specs may
-- replace it to make deadlines short.
function M.budget(method, params)
  local config = type(params.config) == "table" and params.config or {}
  local function ms(v) -- clamped: params refuses a longer timeoutMs, a hook never sees it
    return type(v) == "number" and v > 0 and math.min(v, protocol_params.MAX_TIMEOUT_MS) or nil
  end
  if method == "environmentExecute" then
    local t = ms(params.timeoutMs) or ms(config.timeoutMs)
    return t and (t / 1000 + 25) or 25
  elseif method == "environmentProbe" then
    return 115
  elseif method == "environmentValidateConfig" then
    return 25
  end
  local a, b = ms(config.timeoutMs), ms(config.bridgeRequestTimeoutMs)
  local t = a and b and math.max(a, b) or a or b
  return t and (t / 1000 + 25) or 25
end

--- join_messages(list) -> the messages as one: "a; b; c", each without its final period, so
-- that "timeoutMs must be between 1 and 86400000." joins without ".;" (or "..").
function M.join_messages(list)
  local out = {}
  for i, m in ipairs(list) do
    out[i] = tostring(m):gsub("%s+$", ""):gsub("([^.])%.$", "%1")
  end
  return table.concat(out, "; ")
end

-- xpcall handler: keep the raised value for the reply and the traceback for stderr.
local function capture(e)
  return { raised = e, traceback = debug.traceback(tostring(e), 2) }
end

-- Strip "file.lua:12: " from a raised message: operators get the text, stderr the trace.
local function clean_message(e)
  if type(e) ~= "string" then
    if type(e) == "table" and type(e.message) == "string" then
      return e.message
    end
    return tostring(e)
  end
  return (e:gsub("^[^\n]-%.lua:%d+: ", ""))
end

-- What a hook sees as ctx: per-call fields plus these methods. `log` is made on first use.
local Ctx = {}
local CTX_MT = {
  __index = function(ctx, k)
    if k == "log" then
      local logger = log.bind({ invocation_id = ctx.invocation_id, provider = ctx.driver_key })
      rawset(ctx, "log", logger)
      return logger
    end
    return Ctx[k]
  end,
}

--- ctx:remaining() -> seconds left before this request's deadline
function Ctx:remaining()
  return math.max(0, self.deadline - task.now())
end

--- ctx:cleanup(fn, ...) -> fn(cctx, ...)'s results | nil, message, "canceled"
-- For the cleanup a hook owes (delete the VM it made, kill the sandbox, remove the
-- workspace): fn runs in a task of its own that neither the request's deadline nor its
-- cancellation stops, with a budget of its own: cctx is ctx with cctx.deadline at the end of
-- the request's whole budget, and never less than the cleanup reserve from now. The call
-- waits for fn; when the hook itself is canceled meanwhile (its deadline passed), the wait
-- ends at once but fn goes on, and the worker answers only once every cleanup has finished
-- or spent its budget.
function Ctx:cleanup(fn, ...)
  local now = task.now()
  local deadline = math.max(now + self.cleanup_reserve, self.final_deadline)
  local cctx = setmetatable({ deadline = deadline }, { __index = self })
  local t = task.spawn(fn, cctx, ...)
  t:cancel_after(deadline - now)
  local list = rawget(self, "_cleanups") or {}
  list[#list + 1] = t
  self._cleanups = list
  return t:wait()
end

--- ctx:output(raw) -> the text a result carries for raw command output (see M.output)
function Ctx.output(_, raw)
  return M.output(raw)
end

--- ctx:emitter(stream) -> function(chunk) that emits chunk on stream: an on_stdout or on_stderr
-- callback for host.proc, host.ssh or host.remote.
function Ctx:emitter(stream)
  if stream ~= "stdout" and stream ~= "stderr" then
    error('bad argument #1 to \'emitter\' ("stdout" or "stderr" expected)', 2)
  end
  return function(chunk)
    self:emit(stream, chunk)
  end
end

--- ctx:emit(stream, chunk): live output as execute.log notifications. The streamed text of
-- a stream is an exact prefix of its final output: UTF-8 is cleaned incrementally (a split
-- character waits for the next chunk) and streaming stops at the first character that would
-- take the stream past MAX_OUTPUT encoded bytes, the character where the final cap stops too.
-- It also stops, for good, when more than MAX_BACKLOG bytes already wait for the host.
function Ctx:emit(stream, chunk)
  if stream ~= "stdout" and stream ~= "stderr" then
    error('bad argument #1 to \'emit\' ("stdout" or "stderr" expected)', 2)
  end
  if type(chunk) ~= "string" or chunk == "" or not self.invocation_id then
    return
  end
  local streams = rawget(self, "_streams")
  if not streams then
    streams = { stdout = { rest = "", size = 0 }, stderr = { rest = "", size = 0 } }
    self._streams = streams
  end
  local st = streams[stream]
  local queued = self.worker.queued
  if st.done or queued and queued() > MAX_BACKLOG then
    st.done = true
    return
  end
  local s = st.rest .. chunk
  local text, used, size, cut = util.json_clip(s, M.MAX_OUTPUT - st.size, false)
  st.size, st.done = st.size + size, cut
  st.rest = cut and "" or s:sub(used + 1)
  local i = 1
  while i <= #text do
    local j = math.min(#text, i + MAX_CHUNK - 1)
    while j < #text and (text:byte(j + 1) or 0) & 0xC0 == 0x80 do
      j = j - 1 -- never split a character between two notifications
    end
    local piece = (i == 1 and j == #text) and text or text:sub(i, j) -- sub always copies
    self.worker:notify("execute.log", { stream = stream, chunk = piece }, self.invocation_id)
    i = j + 1
  end
end

-- M.output clips this far past the cap (one character at most, \u001f being the longest),
-- so that cap_result, which sees only the text, still finds a cut text over the cap.
local OVERSHOOT = 6

--- output(raw) -> the text a result carries for raw command output: cleaned to valid UTF-8
-- exactly as ctx:emit streams it, and clipped at MAX_OUTPUT encoded bytes (plus at most one
-- character: cap_result then cuts that too and reports metadata.truncated).
function M.output(raw)
  return (util.json_clip(raw, M.MAX_OUTPUT + OVERSHOOT))
end

-- Cleans and clips result.stdout and result.stderr; true when anything was cut. A function of
-- its own so that the uncut strings are not left in the caller's registers for the GC to see.
local function clip_streams(result)
  local cut = false
  for _, k in ipairs(OUTPUT_STREAMS) do
    if type(result[k]) == "string" then
      local text, _, _, c = util.json_clip(result[k], M.MAX_OUTPUT)
      result[k], cut = text, cut or c
    end
  end
  return cut
end

local function has_big_output(result)
  for _, k in ipairs(OUTPUT_STREAMS) do
    if type(result[k]) == "string" and #result[k] >= BIG then
      return true
    end
  end
  return false
end

--- cap_result(result) -> result: an environmentExecute result as it may leave the worker,
-- whatever the provider did. stdout and stderr (when strings) are cleaned to valid UTF-8 and
-- clipped, never inside a character, to at most MAX_OUTPUT bytes once JSON-encoded. When
-- anything was cut, metadata.truncated = true, set on a copy of metadata (created when absent;
-- its keys kept), since providers may share that table between results.
function M.cap_result(result)
  if type(result) ~= "table" then
    return result
  end
  local big = has_big_output(result)
  if big then
    -- The hook is over: its raw output goes before the text is copied. Twice: the raw
    -- output hangs from a host.proc Process, whose finalizer a first cycle runs, and only
    -- the next frees what it held.
    collectgarbage()
    collectgarbage()
  end
  if clip_streams(result) then
    local meta = type(result.metadata) == "table" and copy(result.metadata) or {}
    meta.truncated = true
    result.metadata = meta
    if big then
      collectgarbage() -- and the uncut text
    end
  end
  return result
end

-- seconds: the hook's own share of the budget; reserve: what is kept for its cleanup after it.
function Worker:context(p, method, params, invocation, seconds, reserve)
  local invocation_id = type(invocation) == "table"
      and type(invocation.id) == "string"
      and invocation.id
    or nil
  -- a config that is not an object is the schema's error ("config must be an object"), never
  -- read as {}; hooks still get a table as ctx.raw_config
  local given = params.config == nil and {} or params.config
  local raw = type(given) == "table" and given or {}
  local normalized, errors, warnings =
    p.schema:normalize(given, method == "environmentValidateConfig" and "validate" or "call")
  for _, s in ipairs(p.schema:secrets(raw)) do
    log.add_secret(s)
  end
  local now = task.now()
  seconds = seconds or M.budget(method, params)
  reserve = reserve or 0
  return setmetatable({
    provider = p,
    driver_key = p.driver_key,
    method = method,
    params = params,
    raw_config = raw,
    config = p.schema:config(normalized),
    normalized = normalized,
    errors = errors,
    warnings = warnings,
    invocation_id = invocation_id,
    company_id = params.companyId,
    deadline = now + seconds,
    final_deadline = now + seconds + reserve,
    cleanup_reserve = reserve,
    max_output = M.MAX_OUTPUT,
    max_encoded = M.MAX_OUTPUT + OVERSHOOT,
    worker = self,
  }, CTX_MT)
end

local function validation_result(ctx, res)
  if res ~= nil then
    return res
  end
  if #ctx.errors > 0 then
    local out = { ok = false, errors = ctx.errors }
    if #ctx.warnings > 0 then
      out.warnings = ctx.warnings
    end
    return out
  end
  local out = { ok = true, normalizedConfig = ctx.provider.schema:output(ctx.normalized) }
  if #ctx.warnings > 0 then
    out.warnings = ctx.warnings
  end
  return out
end

-- Track executions by their exact scope so environmentCancelExecution never widens it.
local function execution_key(params)
  return table.concat({
    tostring(params.companyId),
    tostring(params.environmentId),
    tostring(params.lease.providerLeaseId),
    tostring(params.executionId),
  }, "\0")
end

local function finish_hook(method, res)
  if not res[1] then
    log.error("%s failed: %s", method, res[2].traceback)
    return nil, clean_message(res[2].raised)
  end
  local result, msg, code = res[2], res[3], res[4]
  if result == nil and msg ~= nil then
    if code ~= nil and not error_codes.is_code(code) then
      log.warn("%s returned the error code %s, which is not one of host.errors", method,
        tostring(code))
    end
    return nil, clean_message(msg)
  end
  if result == nil and not VOID[method] then
    return nil, method .. ": the provider returned nothing"
  end
  if VOID[method] then
    return json.null
  end
  return method == "environmentExecute" and M.cap_result(result) or result
end

-- A cancel of an execution this worker tracks: its execute's ctx.execution.cancel, run here.
local function cancel_tracked(entry, params)
  local ok, e = xpcall(entry.cancel, capture)
  if not ok then
    log.error("environmentCancelExecution failed: %s", e.traceback)
    return nil, clean_message(e.raised)
  end
  return { executionId = params.executionId, cancelled = true }
end

-- Runs an execute hook, tracked by its executionId (when it has one) so that a cancel finds
-- it. -> the packed xpcall results | nil, message (the same id is running already).
function Worker:execute_tracked(ctx, hook, params)
  if params.executionId == nil then
    return table.pack(xpcall(hook, capture, ctx, params))
  end
  local key = execution_key(params)
  if self.executions[key] then
    return nil, ('Environment execution "%s" is already active.'):format(params.executionId)
  end
  local entry = {}
  self.executions[key] = entry
  ctx.execution = entry
  local res = table.pack(xpcall(hook, capture, ctx, params))
  self.executions[key] = nil
  entry.cancel = nil -- its closure may hold the command's whole output until the reply
  return res
end

-- Runs the hook; `holder.ctx` gets its ctx (the caller waits for the cleanups it started).
function Worker:run_hook(p, method, params, invocation, seconds, reserve, holder)
  local hook_name = providers.HOOK_OF[method]
  local hook = p.hooks[hook_name]
  local checked, perr = protocol_params.normalize(method, params, p)
  if not checked then
    return nil, perr
  end
  local ctx = self:context(p, method, params, invocation, seconds, reserve)
  holder.ctx = ctx
  if method == "environmentProbe" and #ctx.errors > 0 then
    -- a probe answers ok:false, never an error: it is how an operator tests a config
    return { ok = false, summary = ("%s probe failed: the config is invalid."):format(
      p.display_name), metadata = { provider = p.driver_key,
        error = M.join_messages(ctx.errors) } }
  elseif method ~= "environmentValidateConfig" and #ctx.errors > 0 then
    return nil, "invalid " .. p.driver_key .. " config: " .. M.join_messages(ctx.errors)
  end
  if method == "environmentExecute" then
    local res, err = bridge_execute.run(ctx, p, params, function()
      return self:execute_tracked(ctx, hook, params)
    end)
    if not res then
      return nil, err
    end
    return finish_hook(method, res)
  end
  if method == "environmentCancelExecution" then
    -- the worker routes a cancel it can serve itself; the hook only sees the others (an
    -- execution another worker, or this one before a restart, started)
    local entry = self.executions[execution_key(params)]
    if entry and entry.cancel then
      return cancel_tracked(entry, params)
    elseif not hook then -- nothing of ours runs it: gone already, or never started here
      return { executionId = params.executionId, cancelled = false }
    end
  end
  local res = table.pack(xpcall(hook, capture, ctx, params))
  if method == "environmentValidateConfig" and res[1] then
    if res[2] == nil and res[3] == nil then
      return validation_result(ctx, nil)
    end
  end
  return finish_hook(method, res)
end

-- The provider serving an environment request, or nil after replying with the error.
function Worker:provider_for(id, method, params)
  if type(params) ~= "table" or json.is_array(params) or (next(params) ~= nil and #params > 0) then
    return self:reply_error(id, INVALID_PARAMS, method .. ": params must be an object")
  end
  local key = params.driverKey
  local p = type(key) == "string" and self.by_key[key]
  if not p and key == nil and #self.list == 1 then
    p = self.list[1] -- the host always sends driverKey; a hand-written call may not
  end
  if not p then
    local served = {}
    for k in pairs(self.by_key) do
      served[#served + 1] = k
    end
    table.sort(served)
    return self:reply_error(
      id,
      INVALID_PARAMS,
      ("%s: unknown driverKey %s (this worker serves %s)"):format(
        method,
        json.encode(key) or "?",
        table.concat(served, ", ")
      )
    )
  end
  if not (providers.serves(p, providers.HOOK_OF[method]) or method == "environmentValidateConfig")
  then
    return self:reply_error(
      id,
      METHOD_NOT_IMPLEMENTED,
      method .. " is not implemented by this plugin"
    )
  end
  return p
end

function Worker:environment(id, method, params, invocation)
  local p = self:provider_for(id, method, params)
  if not p then
    return
  end
  if method == "environmentValidateConfig" and not p.hooks.validate_config then -- the schema
    return self:reply(id, validation_result(self:context(p, method, params, invocation), nil))
  end
  local steps, reserve = M.split_budget(method, params)
  -- The hook runs in a task of its own, canceled when its share of the budget is spent (its
  -- pending operation then ends "canceled"); this task, canceled only by a shutdown, then
  -- waits for the cleanups the hook started before it answers.
  local holder = {}
  local hook = task.spawn(function()
    return self:run_hook(p, method, params, invocation, steps, reserve, holder)
  end)
  local res = table.pack(hook:wait(steps))
  local late = not hook:done() and res[3] -- "timeout", or "canceled" by a shutdown
  if late then
    hook:cancel()
    hook:wait(math.min(5, reserve)) -- let it unwind and start its cleanups
  end
  for _, t in ipairs(holder.ctx and rawget(holder.ctx, "_cleanups") or {}) do
    t:wait(math.max(0, holder.ctx.final_deadline - task.now()) + 1)
  end
  if late == "timeout" then
    return self:reply_error(
      id,
      WORKER_ERROR,
      ("%s did not finish within %gs and was canceled"):format(method, steps)
    )
  elseif late then
    return self:reply_error(id, WORKER_ERROR,
      method .. " was canceled: " .. (self.cancel_reason or "the worker is shutting down"))
  end
  local result, err = res[1], res[2]
  if result == nil then
    return self:reply_error(id, WORKER_ERROR, err or (method .. " failed"))
  end
  if not self.gone then
    self:reply(id, result)
  end
  if self.gone and method == "environmentAcquireLease" then
    self:undo_lease(p, params, result, invocation) -- nobody will ever hear of it
  end
end

-- A lease acquired for a host that is gone (its reply cannot reach it): destroyed, in a task
-- of its own that serve() waits for, so that no sandbox, VM or workspace is left that nobody
-- knows of.
function Worker:undo_lease(p, params, result, invocation)
  if type(result) ~= "table" or type(result.providerLeaseId) ~= "string"
    or not p.hooks.destroy_lease then
    return
  end
  local dparams = {
    driverKey = params.driverKey,
    companyId = params.companyId,
    environmentId = params.environmentId,
    config = params.config,
    providerLeaseId = result.providerLeaseId,
    leaseMetadata = result.metadata,
  }
  self.undo = self.undo or {}
  self.undo[#self.undo + 1] = task.spawn(function()
    local ok, e = self:run_hook(p, "environmentDestroyLease", dparams, invocation,
      M.UNDO_SECONDS, M.UNDO_SECONDS / 4, {})
    if ok == nil and e then
      log.warn("could not destroy lease %s acquired for a host that is gone: %s",
        result.providerLeaseId, e)
    end
  end)
end

--- UNDO_SECONDS: the budget of the destroy of a lease acquired for a host that is gone.
M.UNDO_SECONDS = 20

-- Only requests that run provider code (which may wait) or shutdown (which waits for the
-- others) need a task; everything else is answered while the line is read.
function Worker:needs_task(method, params)
  if method == "shutdown" then
    return true
  end
  local hook = providers.HOOK_OF[method]
  if not hook or type(params) ~= "table" then
    return false
  end
  local p = self.by_key[params.driverKey] or (params.driverKey == nil and self.list[2] == nil
    and self.list[1])
  return p and p.hooks[hook] ~= nil or false
end

-- One request: runs as its own task.
function Worker:request(id, method, params, invocation)
  if method == "initialize" then
    if self.initialized then
      return self:reply_error(id, WORKER_ERROR, "Worker already initialized")
    end
    self.initialized = true
    local names = {}
    for _, p in ipairs(self.list) do
      names[#names + 1] = p.driver_key
    end
    log.info("provider-host ready: %s", table.concat(names, ", "))
    return self:reply(
      id,
      { ok = true, supportedMethods = json.array(providers.supported_methods(self.list)) }
    )
  elseif method == "health" then
    return self:reply(id, { status = "ok", message = "provider-host worker healthy" })
  elseif method == "configChanged" then
    return self:reply(id, nil)
  elseif method == "shutdown" then
    return self:shutdown(id)
  elseif providers.HOOK_OF[method] then
    return self:environment(id, method, params, invocation)
  elseif OPTIONAL[method] then
    return self:reply_error(
      id,
      METHOD_NOT_IMPLEMENTED,
      method .. " is not implemented by this plugin"
    )
  end
  return self:reply_error(id, METHOD_NOT_FOUND, "Unknown method: " .. tostring(method))
end

--- handle_line(line) -> the Task serving it (nil when answered at once or ignored).
function Worker:handle_line(line)
  if self.gone or line:match("^%s*$") then
    return -- nobody would hear the answer: what the host sent before it went is not run
  end
  local msg, err = json.decode(line)
  if msg == nil then
    return self:reply_error(json.null, PARSE_ERROR, "Parse error: " .. tostring(err))
  end
  if type(msg) ~= "table" or msg.jsonrpc ~= "2.0" then
    local id = type(msg) == "table" and M.reply_id(msg.id) or nil
    return self:reply_error(id, INVALID_REQUEST, "Invalid Request: expected a JSON-RPC 2.0 object")
  end
  if msg.result ~= nil or msg.error ~= nil then
    return -- a response: we never send requests, so nothing waits for it
  end
  if type(msg.method) ~= "string" then
    return self:reply_error(M.reply_id(msg.id), INVALID_REQUEST,
      "Invalid Request: method must be a string")
  end
  if msg.id == nil or msg.id == json.null then
    return -- a notification from the host: nothing to answer
  end
  if type(msg.id) ~= "string" and type(msg.id) ~= "number" then
    return self:reply_error(
      json.null,
      INVALID_REQUEST,
      "Invalid Request: id must be a string or a number"
    )
  end
  if M.reply_id(msg.id) == json.null then -- it could not be echoed: the request is not run
    return self:reply_error(json.null, INVALID_REQUEST, type(msg.id) == "number"
      and "Invalid Request: id must be a finite number (JSON cannot carry it back)"
      or "Invalid Request: id is not valid UTF-8")
  end
  if self.closing then
    return self:reply_error(msg.id, WORKER_ERROR, "worker is shutting down")
  end
  local function serve()
    local ok, e =
      xpcall(self.request, capture, self, msg.id, msg.method, msg.params, msg.paperclipInvocation)
    if not ok then
      log.error("request %s failed: %s", msg.method, e.traceback)
      self:reply_error(msg.id, WORKER_ERROR, clean_message(e.raised))
    end
  end
  if not self:needs_task(msg.method, msg.params) then
    return serve()
  end
  local t
  t = task.spawn(function()
    serve()
    self.inflight[t] = nil
  end)
  self.inflight[t] = true
  return t
end

--- SETTLE: seconds a shutdown gives the requests it cancels to send their replies (the host
-- waits 10 s for a shutdown's reply, 5 s after a SIGTERM); KILL_AFTER: seconds into them,
-- the commands still running (those that ignore SIGTERM) get SIGKILL.
M.SETTLE = 2
M.KILL_AFTER = 1

-- Up to the deadline, until every request but me has ended and no command is left running
-- (when self.end_commands is set: the worker process owns every process group it started).
function Worker:settle(me, deadline)
  while task.now() < deadline do
    local busy = false
    for t in pairs(self.inflight) do
      if t ~= me then
        busy = true
        t:wait(math.min(0.05, math.max(0, deadline - task.now())))
        break
      end
    end
    if not busy then
      if not self.commands_running or self.commands_running() == 0 then
        return
      end
      if not task.sleep(math.min(0.02, math.max(0, deadline - task.now()))) then
        return -- canceled itself: nothing to wait with
      end
    end
  end
end

--- shutdown(id [, reason [, settle]]): stop serving, cancel what runs, answer null, flush;
-- serve() then returns. reason ends the message of each canceled request's error reply ("the
-- worker is shutting down" by default); settle is how long (seconds, M.SETTLE by default) the
-- canceled requests get to send it. In the worker process every command it started, also
-- what a finished command left in the background, gets SIGTERM now and SIGKILL after
-- M.KILL_AFTER (or half of settle) if it is still running.
function Worker:shutdown(id, reason, settle)
  if self.closing then
    if id ~= nil then
      self:reply(id, nil)
    end
    return
  end
  self.closing = true
  self.cancel_reason = reason
  local me = task.current()
  for t in pairs(self.inflight) do
    if t ~= me then
      t:cancel() -- pending processes and transfers are torn down
    end
  end
  settle = settle or M.SETTLE
  local start = task.now()
  if self.end_commands then
    self.end_commands("SIGTERM")
    self.end_commands("SIGCONT") -- a stopped process must run to see its SIGTERM
  end
  self:settle(me, start + math.min(M.KILL_AFTER, settle / 2))
  if self.end_commands and self.end_commands("SIGKILL") > 0 then
    log.info("shutdown: killed the commands still running after %gs", task.now() - start)
  end
  self:settle(me, start + settle)
  if id ~= nil then
    self:reply(id, nil)
  end
  self.closed = true
  if self.on_closed then
    self.on_closed()
  end
end

--- MAX_QUEUED: bytes of replies and notifications waiting for the host past which no new
-- request is read (nor its work started) until they are all taken. One execute's reply may
-- hold up to two capped streams (2 x MAX_OUTPUT); this bounds how many wait behind it.
M.MAX_QUEUED = 16 * 1024 * 1024

--- HUGE_LINE: bytes of a request line past which its memory is collected as soon as it is
-- handled (a full collection: rare, and cheap next to reading such a line).
M.HUGE_LINE = 8 * 1024 * 1024

--- OUT_POLL: seconds between two looks at stdout, to learn that the host stopped reading.
M.OUT_POLL = 0.2

--- host_gone(reason): stdout is closed or broken (EPIPE): nothing this worker does can reach
-- the host again. One line on stderr, then what runs is canceled (its cleanups run, within
-- their budgets), no new line of stdin is read, and serve() returns 1.
function Worker:host_gone(reason)
  if self.gone then
    return
  end
  self.gone = true
  -- log lines went out as notifications: now nobody reads them; warnings and errors still
  -- reach stderr (log writes them there next to a sink), the rest is dropped
  log.set_sink(function() end)
  io.stderr:write(("provider-host worker: the host is gone (%s): canceling the requests in "
    .. "flight and exiting\n"):format(tostring(reason)))
  io.stderr:flush()
  -- not in the writer's own call (a reply being sent): a task of its own shuts down
  task.spawn(function()
    self:shutdown(nil, "the host is gone", 5)
  end)
end

--- STDIN_GRACE: seconds the requests still in flight when stdin ends get to finish and
-- reply (worker-protocol.md 2.5: stdin EOF -> clean up and exit 0); then they are canceled and
-- each gets the error reply "<method> was canceled: stdin closed". The environment variable
-- PROVIDER_HOST_STDIN_GRACE (seconds, >= 0) replaces it.
M.STDIN_GRACE = 10

local function stdin_grace()
  local v = tonumber(os.getenv("PROVIDER_HOST_STDIN_GRACE") or "")
  if v and v >= 0 and v < math.huge then
    return v
  end
  return M.STDIN_GRACE
end

--- input_closed([grace]): stdin ended. The requests in flight get grace seconds to answer; the
-- rest are canceled with a reply that says stdin closed; then serve() returns (exit 0).
function Worker:input_closed(grace)
  grace = grace or stdin_grace()
  local deadline = task.now() + grace
  local waiting = {}
  for t in pairs(self.inflight) do
    waiting[#waiting + 1] = t
  end
  for _, t in ipairs(waiting) do
    if self.closing then
      break -- a signal or a shutdown request came meanwhile: it owns the exit
    end
    t:wait(math.max(0, deadline - task.now()))
  end
  local left = 0
  for _ in pairs(self.inflight) do
    left = left + 1
  end
  if left > 0 and not self.closing then
    log.info("stdin closed: canceling %d request(s) still running after %gs", left, grace)
  end
  -- nobody waits on a 500 ms exit here: the canceled requests get time to send their replies
  self:shutdown(nil, "stdin closed", 5)
  -- a shutdown that came first settles in its own task: serve() returns once it replied
  local until_ = task.now() + M.SETTLE + 5
  while not self.closed and task.now() < until_ do
    if not task.sleep(0.02) then
      break
    end
  end
end

-- The worker on stdin/stdout: lines written uncopied, a reply with big output in parts
-- (see Worker:send) as one line, log lines as notifications; a failed write means the host is
-- gone. No command outlives this process: its way out ends them (Worker:shutdown, and at exit
-- ph_groups.c), and a watchdog process ends them when it dies with no way out (SIGKILL).
local function stdio_worker(list, stdio)
  local worker
  local function wrote(ok, err, code)
    if not ok and code == "closed" then
      worker:host_gone(err)
    end
  end
  worker = M.new({
    providers = list,
    write = function(line)
      wrote(stdio.write(line, "\n")) -- queued as it is: no copy to add its newline
    end,
  })
  worker.write_parts = function(parts)
    parts[#parts + 1] = "\n"
    wrote(stdio.write(table.unpack(parts)))
  end
  worker.queued = stdio.queued -- bytes written but not yet taken by the host (see Ctx:emit)
  local proc = require("host.core.proc")
  worker.end_commands = proc.signal_groups
  worker.commands_running = proc.running_groups
  local watchdog, werr = proc.watchdog(M.KILL_AFTER)
  if not watchdog then
    log.warn("no watchdog (%s): the commands of a worker killed by SIGKILL will run on", werr)
  end
  log.set_sink(function(level, message, fields)
    local params = { level = level, message = message }
    worker:notify("log", params, fields and fields.invocation_id or nil)
  end)
  return worker
end

-- The tasks that end the worker from outside: SIGTERM, SIGINT and SIGHUP (also what our
-- parent's death sends) shut it down; a host that stopped reading (its end of our stdout
-- closed) is noticed even while nothing is written, and the requests running for it are
-- canceled instead of finishing for nobody. A parent already gone shuts it down at once.
local function watch_outside(worker, stdio, sys)
  local watchers = {}
  for _, sig in ipairs({ "SIGTERM", "SIGINT", "SIGHUP" }) do
    watchers[#watchers + 1] = task.spawn(function()
      if sys.wait_signal(sig) then
        log.info("received %s: shutting down", sig)
        worker:shutdown(nil)
      end
    end)
  end
  watchers[#watchers + 1] = task.spawn(function()
    while not stdio.out_closed() do
      if not task.sleep(M.OUT_POLL) then
        return -- canceled: serve() is over (a canceled sleep returns at once: never loop on)
      end
    end
    worker:host_gone("stdout closed")
  end)
  -- a parent that died before this was not there to send the signal: we were orphaned already
  local _, _, orphaned = sys.parent_death_signal("SIGTERM")
  if orphaned == "closed" then
    log.info("the parent process exited before the worker started: shutting down")
    task.spawn(function()
      worker:shutdown(nil, "the parent process exited")
    end)
  end
  return watchers
end

-- One request line handled; false at the end of input. A host that stops reading our stdout
-- makes us stop reading its requests (and so starting their work): what waits for it is
-- memory; its own writes then block on the full pipe.
local function serve_line(worker, stdio, closed)
  while not closed() and stdio.queued() > M.MAX_QUEUED and not stdio.out_closed() do
    stdio.drain(1)
  end
  local line, err, code = stdio.read_line(M.MAX_LINE)
  if line then
    local huge = #line > M.HUGE_LINE
    worker:handle_line(line)
    if huge then
      line = nil -- luacheck: ignore 311 (no reference left for the collection to keep)
      collectgarbage() -- its copies (the line, what was decoded of it) go back now
    end
    return true
  elseif code == "protocol" then
    worker:reply_error(json.null, PARSE_ERROR, "Parse error: " .. err)
    return true
  end
  if not closed() then -- end of input: the host is gone or closed our stdin
    worker:input_closed()
  end
  return false
end

--- serve(): the worker's main loop on stdin/stdout. Returns the process exit code.
function M.serve(list)
  local stdio = require("host.core.stdio")
  local sys = require("host.core.sys")
  local worker = stdio_worker(list, stdio)
  local done = false
  worker.on_closed = function()
    done = true
    stdio.close_input()
  end
  local function closed()
    return done
  end
  local watchers = watch_outside(worker, stdio, sys)
  while not done and serve_line(worker, stdio, closed) do
  end
  for _, w in ipairs(watchers) do
    w:cancel()
  end
  if worker.gone then
    local until_ = task.now() + 10
    while not done and task.now() < until_ do -- stdin ended too: host_gone's shutdown waits
      task.sleep(0.05)
    end
    for _, t in ipairs(worker.undo or {}) do
      t:wait(M.UNDO_SECONDS + 1)
    end
    return 1 -- nothing to drain: nobody reads
  end
  stdio.drain(2)
  return 0
end

return M
