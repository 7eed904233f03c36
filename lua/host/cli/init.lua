--- host.cli: the provider-host command line (runs as a task, so every primitive works).
local json = require("host.json")
local log = require("host.log")
local providers = require("host.providers")

local M = {}

M.VERSION = "0.1.0"
M.EXIT = { ok = 0, failed = 1, usage = 2, load = 3, internal = 70 }

local USAGE = [[
usage: provider-host COMMAND [options] [args]
       provider-host FILE.lua [args]      run a Lua script with every primitive (like lua)
       provider-host -e CODE [args]       run CODE the same way

commands:
  worker --provider NAME [--provider NAME]...  serve Paperclip's plugin-worker protocol on stdio
  demo                                 a whole lease lifecycle on the local provider, explained
  call NAME METHOD [JSON|-]            send one request as Paperclip would; print the result
                                       (--raw, --compact, --example; an execute's exit status)
  run NAME [--config JSON] [--bridge URL --bridge-key-env VAR] -- CMD [ARGS...]
                                       acquire a lease, run CMD with live output (with a
                                       bridge to the Paperclip API at URL, its key read from
                                       $VAR), release; exit with CMD's status
  list                                 providers on the search path, and where they are
  check FILE|NAME                      load a provider and report every problem (file:line)
  manifest NAME                        print the Paperclip manifest generated from its schema
  package NAME --out DIR [--force]     write an installable Paperclip plugin package
  new NAME [--dir DIR]                 scaffold a provider to start from

NAME is a provider on the search path or a provider file's path (call ./my.lua probe ...).
`provider-host COMMAND --help` (or `provider-host help COMMAND`) explains one command.

options (before or after the command):
  --providers DIR    also search DIR for providers (repeatable; after the built-ins,
                     before $PROVIDER_HOST_PATH)
  -h, --help         this help          -V, --version      the version

environment: PROVIDER_HOST_PATH (colon-separated provider directories),
             PROVIDER_HOST_LOG=debug|info|warn|error (the log level, on stderr),
             PROVIDER_HOST_STDIN_GRACE=SECONDS (a worker's grace at stdin's end, 10),
             PROVIDER_HOST_MAX_CHILDREN=N (commands running at once; default from the
             open-files limit)

exit codes: 0 ok, 1 the command failed, 2 usage error, 3 a provider failed to load,
            70 internal error; `run` and `call` on environmentExecute: the command's status
]]

local COMMON_HELP = [[
  --providers DIR    also search DIR for providers (repeatable)
  -h, --help         this help
]]

-- Each command's own help: its usage line, what it does, its options (COMMON_HELP follows).
local HELP = {
  worker = [[
usage: provider-host worker --provider NAME [--provider NAME]...

Serve Paperclip's plugin-worker protocol (JSON-RPC 2.0, one JSON object per line) on
stdin/stdout for the named providers; diagnostics go to stderr. Requests are dispatched by
params.driverKey. Every provider must load, or the worker does not start (exit 3).

options:
  --provider NAME    serve this provider (repeatable; a bare NAME works too)
]],
  demo = [[
usage: provider-host demo

Walk a whole lease lifecycle on the local provider, explaining each step as it runs it.
Exit 1 if a step does not behave as it should.

options:
]],
  call = [[
usage: provider-host call NAME METHOD [JSON|-] [--raw] [--compact]
       provider-host call NAME METHOD --example

Send one request to provider NAME (a name on the search path or a provider file such as
./my.lua) as Paperclip would, through the worker's own dispatch: JSON (or stdin with -) is the
params object; driverKey, companyId and environmentId are filled in. The result is printed as
JSON on stdout; live output of an execute goes to stderr.

exit status: 0, or for environmentExecute the command's own: its exitCode, 124 when it timed
out, 128+N when signal N killed it; 1 on an error reply (printed on stderr), 2 on a usage
error or params that are not a JSON object, 3 when the provider fails to load.

options:
  --raw              for environmentExecute: write the command's stdout and stderr as it
                     wrote them (to stdout and stderr) instead of the JSON
  --compact          print the JSON on one line
  --example          print example params for METHOD (send nothing); a lease-bound one names
                     a lease to replace with one environmentAcquireLease returned
]],
  run = [[
usage: provider-host run NAME [--config JSON] [--bridge URL --bridge-key-env VAR]
                         [--run-id ID] [--timeout SECONDS] -- CMD [ARGS...]

Acquire a lease from provider NAME, run CMD in it with live output, release the lease.
Ctrl-C (or SIGTERM) cancels the command and still releases. Exit with CMD's status: its exit
code, 124 on timeout, 128+N for signal N, 130 when interrupted; 1 when the provider fails.

options:
  --config JSON          the provider's config (a JSON object; default {})
  --bridge URL           open the callback bridge to the Paperclip API at URL
  --bridge-key-env VAR   the bridge's API key is read from $VAR (never the command line)
  --run-id ID            the run id the bridge reports (default: a fresh uuid)
  --timeout SECONDS      the command's deadline
]],
  list = [[
usage: provider-host list

Print the search path and every provider found on it: its file, its name and version and
the hooks it implements, or why it is broken (or which provider shadows it).

options:
]],
  check = [[
usage: provider-host check FILE|NAME

Load a provider (a file, or a name on the search path) and report every problem as
file:line: message. Exit 0 when it is sound, 1 when it has problems.

options:
]],
  manifest = [[
usage: provider-host manifest NAME

Print the Paperclip plugin manifest (JSON) generated from the provider's Lua schema.

options:
]],
  package = [[
usage: provider-host package NAME --out DIR [--force]

Write an installable Paperclip plugin package for provider NAME into DIR: package.json, the
manifest, the worker shim, the binaries and the libraries they need, the Lua runtime and the
provider. Install DIR in Paperclip as a local plugin, or npm pack it.

options:
  --out DIR          where to write it; a directory that is not empty is refused
  --force            empty a non-empty DIR first (symlinks in it are removed, never
                     followed; / and the current directory's parents are refused)
]],
  new = [[
usage: provider-host new NAME [--dir DIR]

Scaffold a one-file provider NAME.lua to start from (it passes check and runs commands).

options:
  --dir DIR          where to create it (default: the current directory)
]],
}

--- help(cmd) -> the help text of command cmd | nil
function M.help(cmd)
  return HELP[cmd] and HELP[cmd] .. COMMON_HELP
end

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
      if not opts then
        err("provider-host: ", words, "\n")
      end
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
  usage = "package NAME --out DIR [--force]",
  words = 1,
  options = { out = "value", force = "flag" },
  required = "out",
  provider = true,
}, function(opts, _words, p)
  local pkg = require("host.cli.package")
  local ok, e = pkg.prepare_out(opts.out, opts.force)
  if ok then
    ok, e = pkg.write(p, opts.out)
  end
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

-- call --raw: an execute's output to stdout and stderr as the command wrote it. Live chunks
-- go out as they come; what the result holds beyond them (all of it when nothing streamed)
-- follows.
local function raw_writer()
  local sent = { stdout = 0, stderr = 0 }
  local files = { stdout = io.stdout, stderr = io.stderr }
  local w = {}
  function w.log(stream, chunk)
    local f = files[stream]
    if f then
      f:write(chunk)
      f:flush()
      sent[stream] = sent[stream] + #chunk
    end
  end
  function w.finish(res)
    for _, stream in ipairs({ "stdout", "stderr" }) do
      local text = res[stream]
      if type(text) == "string" and #text > sent[stream] then
        files[stream]:write(text:sub(sent[stream] + 1))
        files[stream]:flush()
      end
    end
  end
  return w
end

commands.call = command({
  usage = "call NAME METHOD [JSON|-] [--raw] [--compact] | call NAME METHOD --example",
  words = { 2, 3 },
  options = { raw = "flag", compact = "flag", example = "flag" },
  provider = true,
}, function(opts, words, p)
  local method = words[2]
  local encode = opts.compact and json.encode or json.pretty
  if opts.example then
    local examples = require("host.cli.examples")
    local params = examples.get(method)
    if not params or words[3] then
      err("provider-host call: ", words[3] and "--example takes no params"
        or ("no example for " .. method), "; methods: ",
        table.concat(examples.METHODS, ", "), "\n")
      return M.EXIT.usage
    end
    out(encode(params), "\n")
    return M.EXIT.ok
  end
  local text = words[3] or "{}"
  if text == "-" then
    text = io.stdin:read("a")
  end
  local params, jerr = json.decode(text)
  if type(params) ~= "table" or json.is_array(params) then
    err("provider-host call: params must be a JSON object: ", tostring(jerr or text), "\n")
    return M.EXIT.usage
  end
  local execute = method == "environmentExecute"
  local raw = opts.raw and execute and raw_writer()
  local s = require("host.client").session({ p }, {
    on_log = raw and raw.log or function(_stream, chunk)
      err(chunk)
    end,
  })
  if method == "initialize" then
    s.worker.initialized = false -- the session starts initialized; this asks for it again
  end
  local res, e = s:call(method, params)
  if res == nil and e then
    err("error ", tostring(e.code), ": ", tostring(e.message), "\n")
    return M.EXIT.failed
  end
  if raw and type(res) == "table" then
    raw.finish(res)
  else
    out(res == nil and "null" or encode(res), "\n")
  end
  if execute and type(res) == "table" then
    return require("host.cli.run").exit_status(res)
  end
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

-- Global options may come before the command: --providers DIR (kept for the command),
-- -h/--help, -V/--version. -> cmd, the rest of argv (the command's), help, version
-- | nil, nil, why
local function split_global(argv)
  local rest, cmd, help, version = {}, nil, false, false
  local i = 1
  while i <= #argv do
    local a = argv[i]
    if cmd or a == "--" then
      table.move(argv, i, #argv, #rest + 1, rest)
      break
    end
    if a == "-h" or a == "--help" then
      help = true
    elseif a == "-V" or a == "--version" then
      version = true
    elseif a == "--providers" then
      if argv[i + 1] == nil then
        return nil, nil, "option --providers needs a value"
      end
      rest[#rest + 1], rest[#rest + 2] = a, argv[i + 1]
      i = i + 1
    elseif a:match("^%-%-providers=") then
      rest[#rest + 1] = a
    elseif a:sub(1, 1) == "-" and a ~= "-" then
      return nil, nil, "unknown option " .. a .. " before the command"
    else
      cmd = a
    end
    i = i + 1
  end
  -- after the command too, up to "--" (what follows it is a command's own, for run)
  for _, a in ipairs(rest) do
    if a == "--" then
      break
    elseif a == "-h" or a == "--help" then
      help = true
    elseif a == "-V" or a == "--version" then
      version = true
    end
  end
  return cmd, rest, help, version
end

--- main(argv) -> exit code
function M.main(argv)
  local cmd, rest, help, version = split_global(argv)
  if rest == nil then
    err("provider-host: ", help, "\n\n", USAGE)
    return M.EXIT.usage
  end
  if cmd == "help" then
    cmd, help = rest[1], true
    if cmd and not commands[cmd] then
      err("provider-host: unknown command '", cmd, "'\n\n", USAGE)
      return M.EXIT.usage
    end
  elseif cmd == "version" then
    version = true
  end
  if version and not help then
    out("provider-host ", M.VERSION, " (", _VERSION, ")\n")
    return M.EXIT.ok
  end
  if cmd ~= nil and not commands[cmd] then
    err("provider-host: unknown command '", cmd, "'\n\n", USAGE)
    return M.EXIT.usage
  end
  if help or cmd == nil then
    out(cmd and M.help(cmd) or USAGE)
    return (cmd == nil and not help) and M.EXIT.usage or M.EXIT.ok
  end
  -- the command's own words and options: everything but the command word
  local ok, code = xpcall(commands[cmd], debug.traceback, rest)
  if not ok then
    log.error("%s", code)
    return M.EXIT.internal
  end
  return code
end

return M
