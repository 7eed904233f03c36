-- fuzz/providers/fuzzstub.lua: a provider whose hooks answer at once (fuzz_ndjson's stand-in).
-- Every hook returns a canned result built from what it was sent, so the worker's envelope,
-- params checks, schema and reply encoding all run, but nothing spawns, sleeps or connects.
local schema = require("host.schema")

local M = {
  driver_key = "fuzzstub",
  display_name = "Fuzz Stub",
  version = "0.1.0",
  schema = schema.new({
    { "token", "string", secret = true, trim = true, blank = "null" },
    { "timeoutMs", "integer", default = 1000, between = { 1, 86400000 } },
    { "mode", "string", one_of = { "ok", "error", "raise", "nil" } },
    { "tags", "array", elements = "string", comma_list = true },
    { "env", "map", elements = "string" },
  }),
  hooks = {},
}

local hooks = M.hooks

-- What a hook does is chosen by the config's mode, so the fuzzer reaches every return shape:
-- a result, nil + message (an error reply), a raise (an error reply and a log), nothing.
local function answer(ctx, result)
  local mode = ctx.config.mode
  if mode == "error" then
    return nil, "fuzzstub: failed as asked", "protocol"
  elseif mode == "raise" then
    error("fuzzstub: raised as asked")
  elseif mode == "nil" then
    return nil
  end
  return result
end

function hooks.probe(ctx, _params)
  return answer(ctx, { ok = true, summary = "fuzzstub probe",
    metadata = { provider = "fuzzstub" } })
end

function hooks.acquire_lease(ctx, params)
  return answer(ctx, { providerLeaseId = "lease-1", metadata = { env = params.environmentId } })
end

function hooks.resume_lease(ctx, params)
  return answer(ctx, { providerLeaseId = params.providerLeaseId, metadata = {} })
end

function hooks.release_lease(ctx, _params)
  return answer(ctx, true)
end

function hooks.destroy_lease(ctx, _params)
  return answer(ctx, true)
end

function hooks.realize_workspace(ctx, params)
  return answer(ctx, { cwd = "/tmp", metadata = { workspace = params.workspace } })
end

-- Echoes the command and its arguments as output: invalid UTF-8 in them reaches the cleaning
-- and capping of environmentExecute results.
function hooks.execute(ctx, params)
  local args = type(params.args) == "table" and params.args or {}
  local words = { tostring(params.command) }
  for _, a in ipairs(args) do
    words[#words + 1] = tostring(a)
  end
  ctx:emit("stdout", table.concat(words, " "))
  return answer(ctx, { exitCode = 0, timedOut = false, stdout = table.concat(words, " "),
    stderr = tostring(params.cwd) })
end

function hooks.cancel_execution(ctx, params)
  return answer(ctx, { executionId = params.executionId, cancelled = false })
end

function hooks.sync_in(ctx, _params)
  return answer(ctx, { ok = true })
end

function hooks.sync_out(ctx, _params)
  return answer(ctx, { ok = true })
end

return M
