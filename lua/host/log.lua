--- host.log: levelled logs with secret redaction; stderr, and `log` notifications in worker mode.
local M = {}

local LEVELS = { debug = 10, info = 20, warn = 30, error = 40 }
local threshold = LEVELS[os.getenv("PROVIDER_HOST_LOG") or ""] or LEVELS.info
local sink -- function(level, message, fields): the worker sends `log` notifications
local MASK = "[REDACTED]"
local MAX_SECRETS = 1024
local secrets, order = {}, {}

--- add_secret(value): redact value from every later log line and error message.
-- Values shorter than 4 bytes are ignored (redacting "a" would destroy every message).
function M.add_secret(value)
  if type(value) ~= "string" or #value < 4 or secrets[value] then
    return
  end
  secrets[value] = true
  order[#order + 1] = value
  if #order > MAX_SECRETS then -- bounded: a long-lived worker sees many configs
    secrets[table.remove(order, 1)] = nil
  end
  -- longest first, so a secret containing another is masked whole
  table.sort(order, function(a, b)
    return #a > #b
  end)
end

--- redact(text) -> text with every registered secret replaced by [REDACTED].
function M.redact(text)
  if type(text) ~= "string" then
    text = tostring(text)
  end
  for i = 1, #order do
    local s = order[i]
    local from = 1
    while true do
      local a, b = text:find(s, from, true)
      if not a then
        break
      end
      text = text:sub(1, a - 1) .. MASK .. text:sub(b + 1)
      from = a + #MASK
    end
  end
  return text
end

--- set_sink(fn): fn(level, message, fields) receives every record at or above the level.
function M.set_sink(fn)
  sink = fn
end

--- set_level(name): "debug", "info", "warn" or "error".
function M.set_level(name)
  threshold = assert(LEVELS[name], "unknown log level")
end

local function emit(level, fields, fmt, ...)
  if LEVELS[level] < threshold then
    return
  end
  local ok, msg = pcall(string.format, fmt, ...)
  if not ok then
    msg = tostring(fmt)
  end
  msg = M.redact(msg)
  if sink then
    sink(level, msg, fields)
    if LEVELS[level] < LEVELS.warn then
      return -- warnings and errors also reach stderr, which the host keeps for crash reports
    end
  end
  io.stderr:write("provider-host: ", level, ": ", msg, "\n")
end

for name in pairs(LEVELS) do
  M[name] = function(fmt, ...)
    emit(name, nil, fmt, ...)
  end
end

--- bind(fields) -> logger with debug/info/warn/error that attach fields (e.g. the
-- invocation id) to every record it sends.
function M.bind(fields)
  local logger = {}
  for name in pairs(LEVELS) do
    logger[name] = function(fmt, ...)
      emit(name, fields, fmt, ...)
    end
  end
  return logger
end

return M
