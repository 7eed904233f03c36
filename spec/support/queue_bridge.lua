--- spec.support.queue_bridge: running spec/queue_bridge's Node drivers (upstream's
-- @paperclipai/adapter-utils, playing the Paperclip server over our worker) from a spec.
local fs = require("host.fs")
local helpers = require("spec.helpers")
local json = require("host.json")
local proc = require("host.proc")

local M = {}

M.DIR = assert(fs.realpath(helpers.root)) .. "/spec/queue_bridge"
M.INSTALL = "run `npm ci --prefix spec/queue_bridge` (or ./bootstrap)"

--- unavailable() -> why a driver cannot run here (node or the npm package missing), or nil.
function M.unavailable()
  local r = helpers.run(function()
    return proc.run({ argv = { "node", "--version" }, timeout = 30 })
  end)
  if not r or r.exit_code ~= 0 then
    return "skipped: node is not installed (Debian's nodejs); then " .. M.INSTALL
  end
  if not fs.stat(M.DIR .. "/node_modules/@paperclipai/adapter-utils/package.json") then
    return "skipped: @paperclipai/adapter-utils is not installed in spec/queue_bridge/"
      .. "node_modules: " .. M.INSTALL
  end
end

--- drive(script, args, tmp, opts) -> report, result: `node spec/queue_bridge/SCRIPT args...`
-- with tmp/node-tmp (made here) as its TMPDIR and PATH alone besides; report is the JSON of
-- the last line it printed (asserted to be an object), result host.proc's. opts: timeout,
-- max_output, env (more variables: what must not show on a command line, such as a key).
function M.drive(script, args, tmp, opts)
  assert(fs.mkdir(tmp .. "/node-tmp"))
  local argv = { "node", M.DIR .. "/" .. script }
  table.move(args, 1, #args, #argv + 1, argv)
  local env = { PATH = os.getenv("PATH"), TMPDIR = tmp .. "/node-tmp" }
  for k, v in pairs(opts.env or {}) do
    env[k] = v
  end
  local r, err = proc.run({
    argv = argv,
    cwd = M.DIR,
    env = env,
    timeout = opts.timeout,
    max_output = opts.max_output,
  })
  assert(r, "cannot run node (" .. tostring(err) .. ")")
  local report, why = json.decode(r.stdout:match("([^\n]+)\n?$") or "")
  assert(type(report) == "table", ("%s printed no report (exit %s, %s):\n%s\n%s"):format(script,
    tostring(r.exit_code), tostring(why), r.stdout:sub(1, 2000), r.stderr))
  return report, r
end

return M
