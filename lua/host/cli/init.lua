--- host.cli: the provider-host command line (runs as a task, so every primitive works).
local json = require("host.json")
local log = require("host.log")
local providers = require("host.providers")

local M = {}

M.VERSION = "0.1.0"
M.EXIT = { ok = 0, failed = 1, usage = 2, load = 3, internal = 70 }

local USAGE = [[
usage: provider-host COMMAND [options]
       provider-host FILE.lua [args]      run a Lua script with every primitive (like lua)

commands:
  worker --provider NAME [--provider NAME]...  serve Paperclip's plugin-worker protocol on stdio
  demo                                 a whole lease lifecycle on the local provider, explained
  call NAME METHOD [JSON|-]            send one request as Paperclip would; print the result
  run NAME [--config JSON] [--bridge URL --bridge-key-env VAR] -- CMD [ARGS...]
                                       acquire a lease, run CMD with live output (with a
                                       bridge to the Paperclip API at URL, its key read from
                                       $VAR), release; exit with CMD's status
  list                                 providers on the search path, and where they are
  check FILE|NAME                      load a provider and report every problem (file:line)
  manifest NAME                        print the Paperclip manifest generated from its schema
  package NAME --out DIR               write an installable Paperclip plugin package
  new NAME [--dir DIR]                 scaffold a provider to start from

options:
  --providers DIR    also search DIR for providers (repeatable; after the built-ins,
                     before $PROVIDER_HOST_PATH)
  -h, --help         this help          -V, --version      the version

exit codes: 0 ok, 1 the command failed, 2 usage error, 3 a provider failed to load,
            70 internal error
]]

local function out(...)
  io.stdout:write(...)
end

local function err(...)
  io.stderr:write(...)
end

-- Split argv into positional words and options; unknown options are usage errors.
local function parse(argv, spec)
  local opts, words = { providers = {} }, {}
  local i = 1
  while i <= #argv do
    local a = argv[i]
    local name, inline = a:match("^%-%-([%w-]+)=(.*)$")
    name = name or a:match("^%-%-([%w-]+)$")
    if a == "-h" then
      name = "help"
    elseif a == "-V" then
      name = "version"
    end
    if name then
      local kind = spec[name]
      if kind == nil then
        return nil, "unknown option --" .. name
      end
      if kind == "flag" then
        opts[name] = true
      else
        local v = inline
        if v == nil then
          i = i + 1
          v = argv[i]
        end
        if v == nil then
          return nil, "option --" .. name .. " needs a value"
        end
        if kind == "list" then
          opts[name] = opts[name] or {}
          table.insert(opts[name], v)
        else
          opts[name] = v
        end
      end
    else
      words[#words + 1] = a
    end
    i = i + 1
  end
  return opts, words
end

local COMMON = { providers = "list", help = "flag", version = "flag" }
local function spec_with(extra)
  local s = {}
  for k, v in pairs(COMMON) do
    s[k] = v
  end
  for k, v in pairs(extra or {}) do
    s[k] = v
  end
  return s
end

local function load_or_report(ref, dirs)
  local p, problems = providers.load(ref, dirs)
  if not p then
    err("provider-host: cannot load provider ", ref, ":\n")
    for _, pr in ipairs(problems) do
      err("  ", pr, "\n")
    end
    return nil
  end
  return p
end

-- "probe, acquire_lease, ...": the hooks p implements, in providers.HOOKS order.
local function hook_names(p)
  local hooks = {}
  for _, pair in ipairs(providers.HOOKS) do
    if p.hooks[pair[1]] then
      hooks[#hooks + 1] = pair[1]
    end
  end
  return table.concat(hooks, ", ")
end

local commands = {}

-- command(def, run) -> a command: argv parsed with the common options and def.options, then
-- run(opts, words, p). A mistake (an unknown option, def.required missing, a number of words
-- other than def.words: a count or {min, max}; any when nil) writes "usage: provider-host
-- <def.usage>" (nothing when def.usage is nil) and exits EXIT.usage. With def.provider, words[1]
-- names the provider p, loaded from the search path; when it fails to load: EXIT.load.
local function command(def, run)
  local min, max = 0, math.huge
  if type(def.words) == "number" then
    min, max = def.words, def.words
  elseif def.words then
    min, max = def.words[1], def.words[2]
  end
  return function(argv)
    local opts, words = parse(argv, spec_with(def.options))
    if not opts or #words < min or #words > max or (def.required and not opts[def.required]) then
      if def.usage then
        err("usage: provider-host ", def.usage, "\n")
      end
      return M.EXIT.usage
    end
    local p
    if def.provider then
      p = load_or_report(words[1], providers.search_path(opts.providers))
      if not p then
        return M.EXIT.load
      end
    end
    return run(opts, words, p)
  end
end

function commands.worker(argv)
  local opts, words = parse(argv, spec_with({ provider = "list" }))
  if not opts then
    err("provider-host worker: ", words, "\n")
    return M.EXIT.usage
  end
  local names = opts.provider or {}
  for _, w in ipairs(words) do
    names[#names + 1] = w
  end
  if #names == 0 then
    err("provider-host worker: name at least one provider (--provider NAME)\n")
    return M.EXIT.usage
  end
  local dirs = providers.search_path(opts.providers)
  local list, seen, failed = {}, {}, false
  for _, n in ipairs(names) do
    local p = load_or_report(n, dirs)
    if not p then
      failed = true
    elseif seen[p.driver_key] then
      err("provider-host worker: provider ", p.driver_key, " named twice\n")
      failed = true
    else
      seen[p.driver_key] = true
      list[#list + 1] = p
    end
  end
  if failed then
    return M.EXIT.load -- a worker that cannot serve what it was asked to must not start
  end
  return require("host.worker").serve(list)
end

commands.list = command({}, function(opts)
  local dirs = providers.search_path(opts.providers)
  out("search path:\n")
  for i, d in ipairs(dirs) do
    out(("  %d. %s\n"):format(i, d))
  end
  out("providers:\n")
  for _, f in ipairs(providers.discover(dirs)) do
    local p, problems = providers.load_file(f.path, f.name)
    local status
    if f.shadowed_by then
      status = "shadowed by " .. f.shadowed_by
    elseif p then
      status = ("%s %s; hooks: %s"):format(p.display_name, p.version, hook_names(p))
    else
      status = ("BROKEN (%d problem%s; run: provider-host check %s)"):format(
        #problems,
        #problems == 1 and "" or "s",
        f.path
      )
    end
    out(("  %-12s %s\n  %-12s %s\n"):format(f.name, f.path, "", status))
  end
  return M.EXIT.ok
end)

commands.check = command({ usage = "check FILE|NAME", words = 1 }, function(opts, words)
  local p, problems = providers.load(words[1], providers.search_path(opts.providers))
  if not p then
    for _, pr in ipairs(problems) do
      out(pr, "\n")
    end
    out(("%d problem%s found\n"):format(#problems, #problems == 1 and "" or "s"))
    return M.EXIT.failed
  end
  out(
    ("ok: %s (%s) %s\n  hooks: %s\n  config: %d field%s\n"):format(
      p.driver_key,
      p.path,
      p.version,
      hook_names(p),
      #p.schema.fields,
      #p.schema.fields == 1 and "" or "s"
    )
  )
  return M.EXIT.ok
end)

commands.manifest = command({
  usage = "manifest NAME",
  words = 1,
  provider = true,
}, function(_opts, _words, p)
  out(json.pretty(require("host.cli.manifest").build(p)), "\n")
  return M.EXIT.ok
end)

commands.package = command({
  usage = "package NAME --out DIR",
  words = 1,
  options = { out = "value" },
  required = "out",
  provider = true,
}, function(opts, _words, p)
  local ok, e = require("host.cli.package").write(p, opts.out)
  if not ok then
    err("provider-host package: ", e, "\n")
    return M.EXIT.failed
  end
  out(("wrote %s (plugin %s, driver %s)\n"):format(opts.out, ok.id, p.driver_key))
  out(("install it in Paperclip as a local plugin from %s, or npm pack it\n"):format(opts.out))
  return M.EXIT.ok
end)

commands.new = command({
  usage = "new NAME [--dir DIR]",
  words = 1,
  options = { dir = "value" },
}, function(opts, words)
  local path, e = require("host.cli.scaffold").write(words[1], opts.dir or ".")
  if not path then
    err("provider-host new: ", e, "\n")
    return M.EXIT.failed
  end
  out(("created %s\nnext: edit it, then run: provider-host check %s\n"):format(path, path))
  return M.EXIT.ok
end)

commands.call = command({
  usage = "call NAME METHOD [JSON|-]",
  words = { 2, 3 },
  provider = true,
}, function(_opts, words, p)
  local text = words[3] or "{}"
  if text == "-" then
    text = io.stdin:read("a")
  end
  local params, jerr = json.decode(text)
  if type(params) ~= "table" then
    err("provider-host call: params must be a JSON object: ", tostring(jerr or text), "\n")
    return M.EXIT.usage
  end
  local res, e = require("host.client").call(p, words[2], params, {
    on_log = function(stream, chunk)
      err(stream == "stderr" and chunk or chunk)
    end,
  })
  if res == nil then
    err("error ", tostring(e.code), ": ", tostring(e.message), "\n")
    return M.EXIT.failed
  end
  out(json.pretty(res), "\n")
  return M.EXIT.ok
end)

-- run: options before "--", the command after it (its own options are not ours).
function commands.run(argv)
  local cut = #argv + 1
  for i, a in ipairs(argv) do
    if a == "--" then
      cut = i
      break
    end
  end
  local run = require("host.cli.run")
  local mine = table.move(argv, 1, cut - 1, 1, {})
  local cmd = table.move(argv, cut + 1, #argv, 1, {})
  return command({
    usage = run.USAGE,
    words = 1,
    provider = true,
    options = { config = "value", bridge = "value", ["bridge-key-env"] = "value",
      ["run-id"] = "value", timeout = "value" },
  }, function(opts, _words, p)
    if #cmd == 0 then
      err("usage: provider-host ", run.USAGE, "\n")
      return M.EXIT.usage
    end
    return run.main(p, opts, cmd)
  end)(mine)
end

commands.demo = command({}, function(opts)
  return require("host.cli.demo").run(providers.search_path(opts.providers))
end)

--- main(argv) -> exit code
function M.main(argv)
  local cmd = argv[1]
  if cmd == nil or cmd == "-h" or cmd == "--help" or cmd == "help" then
    out(USAGE)
    return cmd == nil and M.EXIT.usage or M.EXIT.ok
  end
  if cmd == "-V" or cmd == "--version" or cmd == "version" then
    out("provider-host ", M.VERSION, " (", _VERSION, ")\n")
    return M.EXIT.ok
  end
  local fn = commands[cmd]
  if not fn then
    err("provider-host: unknown command '", cmd, "'\n\n", USAGE)
    return M.EXIT.usage
  end
  local rest = table.move(argv, 2, #argv, 1, {})
  for _, a in ipairs(rest) do
    if a == "--" then
      break -- what follows is a command's own (run)
    end
    if a == "-h" or a == "--help" then
      out(USAGE)
      return M.EXIT.ok
    end
  end
  local ok, code = xpcall(fn, debug.traceback, rest)
  if not ok then
    log.error("%s", code)
    return M.EXIT.internal
  end
  return code
end

return M
