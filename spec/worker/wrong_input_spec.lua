-- spec/worker/wrong_input_spec.lua: clear answers to wrong input over the wire (issue 10, item
-- 5): each names the field, none is silently ignored, none reads "command not found" or "must
-- be between" when that is not what is wrong, and joined messages carry no doubled punctuation.
local helpers = require("spec.helpers")
local wp = require("spec.support.worker_process")

local function with_worker(fn, args)
  return wp.with(fn, args, { env = { PROVIDER_HOST_LOG = "error" } })
end

local function call(w, id, method, params)
  w:request(id, method, params)
  return assert(w:reply_to(id))
end

local params = wp.params

-- The error message of a reply that must be an error (fails on a result).
local function error_of(r)
  assert.is_table(r.error, "expected an error reply")
  return r.error.message
end

describe("worker answers to wrong input", function()
  it("names params, config, args, timeoutMs and cwd when their type is wrong", function()
    with_worker(function(w)
      w:initialize()
      local r = call(w, 1, "environmentAcquireLease", params())
      local lease = { providerLeaseId = r.result.providerLeaseId, metadata = r.result.metadata }
      local id = 10
      local function exec(extra)
        id = id + 1
        return call(w, id, "environmentExecute", params(helpers.merged({ lease = lease,
          command = "true" }, extra)))
      end
      w:send('{"jsonrpc":"2.0","id":2,"method":"environmentExecute","params":[1]}\n')
      r = assert(w:reply_to(2))
      assert.equal(-32602, r.error.code)
      assert.equal("environmentExecute: params must be an object", r.error.message)
      assert.equal("invalid local config: config must be an object",
        error_of(exec({ config = "x" })))
      assert.equal("invalid local config: config must be an object",
        error_of(exec({ config = { 1, 2 } })))
      assert.equal("environmentExecute: args must be an array of strings, got an object",
        error_of(exec({ args = { a = "1" } })))
      assert.equal("environmentExecute: timeoutMs must be a number of milliseconds, got a string",
        error_of(exec({ timeoutMs = "1000" })))
      assert.equal("environmentExecute: cwd must be a string, got a number",
        error_of(exec({ cwd = 5 })))
      local missing = lease.providerLeaseId .. "/nowhere"
      assert.equal("local: cwd " .. missing .. " does not exist", error_of(exec({ cwd = missing })))
      -- a config timeoutMs that is no number says so, not "must be between"
      assert.equal(
        "invalid local config: timeoutMs: expected an integer, got a non-numeric string",
        error_of(exec({ config = { timeoutMs = "soon" } })))
      r = call(w, 3, "environmentValidateConfig", params({ config = { timeoutMs = "soon" } }))
      assert.same({ "timeoutMs: expected an integer, got a non-numeric string" }, r.result.errors)
      r = call(w, 4, "environmentValidateConfig", params({ config = "x" }))
      assert.same({ "config must be an object" }, r.result.errors)
      r = call(w, 5, "environmentProbe", params({ config = 7 }))
      assert.is_false(r.result.ok)
      assert.equal("config must be an object", r.result.metadata.error)
    end)
  end)

  it("joins several config errors without doubled punctuation", function()
    with_worker(function(w)
      local bad = { template = " ", timeoutMs = 0 }
      local r = call(w, 1, "environmentAcquireLease", params({ driverKey = "e2b", config = bad }))
      assert.equal("invalid e2b config: E2B sandbox environments require a template; "
        .. "timeoutMs must be between 1 and 86400000", error_of(r))
      r = call(w, 2, "environmentProbe", params({ driverKey = "e2b", config = bad }))
      assert.equal("E2B sandbox environments require a template; timeoutMs must be between 1 "
        .. "and 86400000", r.result.metadata.error)
      r = call(w, 3, "environmentAcquireLease", params({ config = { timeoutMs = 0, root = "x" } }))
      local msg = error_of(r)
      assert.equal("invalid local config: timeoutMs: must be between 1 and 86400000; "
        .. "root: must be an absolute path", msg)
      assert.is_nil(msg:find("[.;:][.;:]"))
    end, { "worker", "--provider", "local", "--provider", "e2b" })
  end)
end)

describe("worker.join_messages", function()
  it("joins with \"; \", dropping each message's final period but not an ellipsis", function()
    local worker = require("host.worker")
    assert.equal("a; b; c...", worker.join_messages({ "a.", "b", "c..." }))
    assert.equal("x must be between 1 and 2",
      worker.join_messages({ "x must be between 1 and 2.\n" }))
    assert.equal("", worker.join_messages({}))
  end)
end)
