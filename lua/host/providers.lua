--- host.providers: find, load and check provider scripts (DESIGN.md section 3).
local sys = require("host.core.sys")

local M = {}

--- Hook names and the protocol methods they serve, in the order initialize lists them.
M.HOOKS = {
  { "validate_config", "environmentValidateConfig" },
  { "probe", "environmentProbe" },
  { "acquire_lease", "environmentAcquireLease" },
  { "resume_lease", "environmentResumeLease" },
  { "release_lease", "environmentReleaseLease" },
  { "destroy_lease", "environmentDestroyLease" },
  { "realize_workspace", "environmentRealizeWorkspace" },
  { "execute", "environmentExecute" },
  { "cancel_execution", "environmentCancelExecution" },
  { "sync_in", "environmentSyncIn" },
  { "sync_out", "environmentSyncOut" },
}
M.METHOD_OF, M.HOOK_OF = {}, {}
for _, pair in ipairs(M.HOOKS) do
  M.METHOD_OF[pair[1]], M.HOOK_OF[pair[2]] = pair[2], pair[1]
end

--- EXTENSION_HOOKS: hooks that are not protocol methods but our extensions (README, "Duplex
--- execution"): what lets a provider carry the bridge.
M.EXTENSION_HOOKS = {
  duplex = true, -- duplex(ctx, {lease, command, args, env, cwd, on_stdout, on_stderr})
  sandbox_helper = true, -- sandbox_helper(ctx, {lease}) -> ph-sandbox-helper's path there
}

local CAPABILITIES = {
  reusableLeases = true,
  nativeSyncIn = true,
  nativeSyncOut = true,
  persistentProcessSessions = true,
  independentControlCommands = true,
  incrementalSessionOutput = true,
}
-- The keys a provider's table may have, in the order an error lists them.
local KNOWN_KEY_LIST = { "driver_key", "display_name", "description", "version", "schema",
  "hooks", "capabilities", "shell", "manifest", "env_label" }
local KNOWN_KEYS = {}
for _, k in ipairs(KNOWN_KEY_LIST) do
  KNOWN_KEYS[k] = true
end
local MANIFEST_KEYS = {
  id = true,
  package_name = true,
  display_name = true,
  description = true,
  author = true,
  categories = true,
  driver_display_name = true,
  driver_description = true,
}
-- The host modules a provider may require, in the order an error lists them.
local FACADE_LIST = { "host.http", "host.ssh", "host.remote", "host.proc", "host.json",
  "host.log", "host.task", "host.schema", "host.shell", "host.util", "host.fs", "host.errors",
  "host.params", "host.duplex", "host.sandbox_helper", "host.sync", "host.sync_tar" }
local FACADES = {}
for _, name in ipairs(FACADE_LIST) do
  FACADES[name] = true
end

-- What a provider's main chunk may not call: the I/O of the host modules (processes, network,
-- files, tasks that would do it later). While the main chunk runs (and the modules it requires),
-- these refuse: the call is a problem at the caller's file:line and returns nil, message,
-- "unsupported", so the rest of the file is still checked. true: every function of the module;
-- a table: those functions; { except = {...} }: every function but those.
local LOAD_GUARDED = {
  ["host.proc"] = true,
  ["host.duplex"] = true,
  ["host.http"] = { request = true, get = true, open = true, serve = true },
  ["host.ssh"] = { exec = true, open = true, upload = true, fingerprint = true, close_all = true },
  ["host.remote"] = { except = { account = true, target = true, control_dir = true,
    control_base = true, control_name = true, cancel_script = true, servers_running = true } },
  ["host.fs"] = { except = { stat = true, realpath = true } },
  ["host.sandbox_helper"] = { read = true, sha = true, size = true, version = true },
  ["host.util"] = { mkdtemp = true, remove_tree = true, tempdir = true },
  ["host.sync"] = { run = true, rename = true, clear_target = true, temp_beside = true },
  ["host.sync_tar"] = { run = true },
  ["host.task"] = { spawn = true, run = true, all = true, with_timeout = true, sleep = true },
}

local function is_guarded(modname, k)
  local rule = LOAD_GUARDED[modname]
  if rule == true then
    return true
  elseif type(rule) ~= "table" then
    return false
  elseif rule.except then
    return not rule.except[k]
  end
  return rule[k] == true
end

-- position(state, level) -> "file:line", line, label of the first Lua frame from `level` up
-- (a pcall between the provider and the call is skipped); label is "main chunk" for the
-- provider's main file, else the file's name.
local function position(state, level)
  for l = level + 1, level + 20 do
    local info = debug.getinfo(l, "Sl")
    if not info then
      break
    end
    if info.what ~= "C" and info.currentline and info.currentline > 0 then
      local file = info.source:sub(1, 1) == "@" and info.source:sub(2) or info.short_src
      local label = file == state.path and "main chunk" or (file:match("[^/]+$") or file)
      return file .. ":" .. info.currentline, info.currentline, label
    end
  end
  return nil, 0, "main chunk"
end

-- refuse(state, qname) -> nil, message, "unsupported": the problem of calling qname at load time.
local function refuse(state, qname)
  local where, line, label = position(state, 3)
  local msg = ("%s cannot run while the provider loads (%s, line %d): call it from a hook")
    :format(qname, label, line)
  local full = where and (where .. ": " .. msg) or msg
  state.problems[#state.problems + 1] = { where = where, msg = msg }
  state.refused[#state.refused + 1] = full
  return nil, full, "unsupported"
end

-- guard(state, qname, get) -> a function that refuses while the provider loads and otherwise
-- calls get()(...) (looked up at call time, so a stub put on the module later is seen).
local function guard(state, qname, get)
  return function(...)
    if state.loading then
      local res, msg, code = refuse(state, qname) -- not a tail call: it counts the frames
      return res, msg, code
    end
    return get()(...)
  end
end

-- guarded_facade(modname, mod, state) -> what the provider's require(modname) gets: mod itself,
-- or a view of it whose I/O functions refuse while the provider loads (writes go to mod).
local function guarded_facade(modname, mod, state)
  if not LOAD_GUARDED[modname] or type(mod) ~= "table" then
    return mod
  end
  local wrappers = {}
  local view = {}
  return setmetatable(view, {
    __index = function(_, k)
      local v = mod[k]
      if type(v) ~= "function" or not is_guarded(modname, k) then
        return v
      end
      local w = wrappers[k]
      if not w then
        w = guard(state, modname .. "." .. tostring(k), function()
          return mod[k]
        end)
        wrappers[k] = w
      end
      return w
    end,
    __newindex = mod,
    __pairs = function()
      return function(_, k)
        local nk = next(mod, k)
        if nk ~= nil then
          return nk, view[nk]
        end
      end, view, nil
    end,
    __len = function()
      return #mod
    end,
  })
end

local function is_dir(path)
  local st = sys.stat(path)
  return st and st.type == "directory"
end

local function is_file(path)
  local st = sys.stat(path)
  return st and st.type == "file"
end

--- search_path(extra_dirs) -> array of directories: built-ins, then extra_dirs (from
-- --providers), then $PROVIDER_HOST_PATH (colon-separated). Earlier entries win.
function M.search_path(extra_dirs)
  local dirs = { sys.runtime_root() .. "/providers" }
  for _, d in ipairs(extra_dirs or {}) do
    dirs[#dirs + 1] = d
  end
  for d in (os.getenv("PROVIDER_HOST_PATH") or ""):gmatch("[^:]+") do
    dirs[#dirs + 1] = d
  end
  return dirs
end

--- locate(name, dirs) -> path of the main file, directory | nil, message
-- A provider is <dir>/<name>/init.lua or the single file <dir>/<name>.lua.
function M.locate(name, dirs)
  if not name:match("^[a-z0-9][a-z0-9._-]*$") then
    return nil,
      ("invalid provider name %q (use lowercase letters, digits, '.', '_', '-')"):format(name)
  end
  for _, d in ipairs(dirs) do
    if is_file(d .. "/" .. name .. "/init.lua") then
      return d .. "/" .. name .. "/init.lua", d .. "/" .. name
    end
    if is_file(d .. "/" .. name .. ".lua") then
      return d .. "/" .. name .. ".lua", d
    end
  end
  return nil, ("provider %q not found (searched %s)"):format(name, table.concat(dirs, ", "))
end

--- discover(dirs) -> array of {name, path, dir, shadowed_by?} for every provider found.
function M.discover(dirs)
  local found, seen = {}, {}
  for _, d in ipairs(dirs) do
    local entries = is_dir(d) and sys.list_dir(d) or {}
    for _, e in ipairs(entries) do
      local name, path
      if is_file(d .. "/" .. e .. "/init.lua") then
        name, path = e, d .. "/" .. e .. "/init.lua"
      elseif e:match("%.lua$") and is_file(d .. "/" .. e) then
        name, path = e:sub(1, -5), d .. "/" .. e
      end
      if name and name:match("^[a-z0-9][a-z0-9._-]*$") then
        found[#found + 1] = { name = name, path = path, dir = d, shadowed_by = seen[name] }
        seen[name] = seen[name] or path
      end
    end
  end
  return found
end

local function read_file(path)
  local f, err = io.open(path, "rb")
  if not f then
    return nil, err
  end
  local text = f:read("a")
  f:close()
  return text
end

-- The globals a provider sees: the safe standard library, no debug/package/load, no
-- print (use host.log), and writes to globals are errors.
local function base_env(state)
  return {
    assert = assert,
    error = error,
    ipairs = ipairs,
    next = next,
    pairs = pairs,
    pcall = pcall,
    xpcall = xpcall,
    select = select,
    tonumber = tonumber,
    tostring = tostring,
    type = type,
    setmetatable = setmetatable,
    getmetatable = getmetatable,
    rawequal = rawequal,
    rawget = rawget,
    rawset = rawset,
    rawlen = rawlen,
    string = string,
    table = table,
    math = math,
    utf8 = utf8,
    coroutine = coroutine,
    io = {
      open = guard(state, "io.open", function()
        return io.open
      end),
      lines = guard(state, "io.lines", function()
        return io.lines
      end),
    },
    os = {
      time = os.time,
      clock = os.clock,
      date = os.date,
      getenv = os.getenv,
      difftime = os.difftime,
    },
  }
end

-- Load one file of a provider in its sandbox. `loaded` caches the provider's own modules.
local function load_chunk(path, env)
  local text, err = read_file(path)
  if not text then
    return nil, err
  end
  if text:sub(1, 1) == "\27" then
    return nil, path .. ": precompiled chunks are not accepted"
  end
  return load(text, "@" .. path, "t", env)
end

-- Standard modules a provider may require by name, as its sandbox has them; the others are not
-- available (they would bypass the sandbox).
local STD_MODULES = { string = true, table = true, math = true, utf8 = true, coroutine = true,
  io = true, os = true }
local STD_REFUSED = { debug = true, package = true, _G = true }

local function make_env(name, base_dir, state)
  local problems = state.problems
  local env = base_env(state)
  local loaded = {}
  local locked = false
  env._G = env
  env.require = function(modname)
    if type(modname) ~= "string" then
      error("bad argument #1 to 'require' (string expected, got " .. type(modname) .. ")", 2)
    end
    if modname:match("^host%.core%.") or modname:match("^host%.core$") then
      error(
        ("provider %q cannot use %s: it is internal; use the host.* modules"):format(name, modname),
        2
      )
    end
    if STD_MODULES[modname] then
      return env[modname]
    elseif STD_REFUSED[modname] then
      error(("provider %q cannot use %s: it is not available to providers"):format(name, modname),
        2)
    end
    if FACADES[modname] then
      local ok, mod = pcall(require, modname)
      if not ok then
        error(mod, 2) -- blame the provider's line, not the loader's
      end
      state.views[modname] = state.views[modname] or guarded_facade(modname, mod, state)
      return state.views[modname]
    end
    local own = modname:match("^providers%." .. name:gsub("%p", "%%%0") .. "%.(.+)$")
    if own then
      if loaded[own] ~= nil then
        return loaded[own]
      end
      local path = base_dir .. "/" .. own:gsub("%.", "/") .. ".lua"
      local chunk, err = load_chunk(path, env)
      if not chunk then
        error(("cannot load %s: %s"):format(modname, err), 2)
      end
      local value = chunk(modname)
      if value == nil then
        value = true
      end
      loaded[own] = value
      return value
    end
    if modname:match("^host%.") then
      error(("provider %q: no module %s (available: %s)"):format(name, modname,
        table.concat(FACADE_LIST, ", ")), 2)
    end
    local ok, mod = pcall(require, modname)
    if not ok then
      error(mod, 2)
    end
    return mod
  end
  return setmetatable(env, {
    __newindex = function(_, k, v)
      if locked then
        error(("provider %q: assignment to global %q (globals are locked)"):format(name, k), 2)
      end
      -- While loading: one problem at the assignment's line, and the chunk goes on (the value
      -- is kept so that what follows still runs and its own problems are found too).
      local where = position(state, 2)
      problems[#problems + 1] = { where = where,
        msg = ("assignment to global %q (use local)"):format(tostring(k)) }
      rawset(env, k, v)
    end,
    __index = function(_, k)
      error(("provider %q: unknown global %q"):format(name, tostring(k)), 2)
    end,
  }),
    function()
      locked = true
    end
end

local function line_of(fn)
  local info = debug.getinfo(fn, "S")
  return info and info.short_src and (info.short_src .. ":" .. info.linedefined) or "?"
end

-- The provider's scalar fields and its schema.
local function check_fields(p, name, problem)
  for k in pairs(p) do
    if not KNOWN_KEYS[k] then
      local known = table.concat(KNOWN_KEY_LIST, ", ")
      problem(("unknown key %q (known: %s)"):format(tostring(k), known))
    end
  end
  if p.driver_key ~= name then
    local got = type(p.driver_key) == "string" and ("%q"):format(p.driver_key) or type(p.driver_key)
    problem(("driver_key must equal the provider's name %q (got %s)"):format(name, got))
  end
  local dn = p.display_name
  if dn ~= nil and (type(dn) ~= "string" or #dn < 1 or #dn > 100) then
    problem("display_name must be a string of 1 to 100 characters")
  end
  if p.env_label ~= nil and (type(p.env_label) ~= "string" or p.env_label == "") then
    problem("env_label must be a non-empty string (it names the environment in errors)")
  end
  if p.description ~= nil and (type(p.description) ~= "string" or #p.description > 500) then
    problem("description must be a string of at most 500 characters")
  end
  local v = p.version
  if v ~= nil and (type(v) ~= "string" or not v:match("^%d+%.%d+%.%d+[%w%.%-+]*$")) then
    problem('version must be a semver string such as "0.1.0"')
  end
  if p.schema == nil then
    problem("schema is missing (a host.schema built with schema.new{...})")
  elseif type(p.schema) ~= "table" or type(p.schema.normalize) ~= "function" then
    problem('schema must be built with require("host.schema").new{...}')
  end
  if p.shell ~= nil and p.shell ~= "bash" and p.shell ~= "sh" then
    problem('shell must be "bash" or "sh"')
  end
end

-- Hooks are functions named after protocol methods.
local function check_hooks(hooks, problem)
  if type(hooks) ~= "table" then
    problem("hooks must be a table of functions named after protocol methods")
    return
  end
  for k, fn in pairs(hooks) do
    if not M.METHOD_OF[k] and not M.EXTENSION_HOOKS[k] then
      local names = {}
      for _, pair in ipairs(M.HOOKS) do
        names[#names + 1] = pair[1]
      end
      names[#names + 1] = "duplex"
      names[#names + 1] = "sandbox_helper"
      problem(("unknown hook %q (known: %s)"):format(tostring(k), table.concat(names, ", ")),
        type(fn) == "function" and line_of(fn) or nil)
    elseif type(fn) ~= "function" then
      problem(("hook %q must be a function (got %s)"):format(k, type(fn)))
    end
  end
end

local function check_capabilities(caps, problem)
  if caps == nil then
    return
  elseif type(caps) ~= "table" then
    return problem("capabilities must be a table")
  end
  for k, v in pairs(caps) do
    if not CAPABILITIES[k] then
      problem(("unknown capability %q"):format(tostring(k)))
    elseif type(v) ~= "boolean" then
      problem(("capability %q must be a boolean"):format(k))
    end
  end
end

local function check_manifest(manifest, problem)
  if manifest == nil then
    return
  elseif type(manifest) ~= "table" then
    return problem("manifest must be a table")
  end
  for k in pairs(manifest) do
    if not MANIFEST_KEYS[k] then
      problem(("unknown manifest key %q"):format(tostring(k)))
    end
  end
  local id = manifest.id
  if id ~= nil and (type(id) ~= "string" or not id:match("^[a-z0-9][a-z0-9._-]*$")) then
    problem("manifest.id must match ^[a-z0-9][a-z0-9._-]*$")
  end
end

-- Check the table a provider returned; append every problem found.
local function check_shape(p, name, path, problems)
  local function problem(msg, where)
    problems[#problems + 1] = { where = where or path, msg = msg }
  end
  if type(p) ~= "table" then
    problem("the script must return a table (got " .. type(p) .. ")")
    return
  end
  check_fields(p, name, problem)
  check_hooks(p.hooks, problem)
  check_capabilities(p.capabilities, problem)
  check_manifest(p.manifest, problem)
end

-- The problems as "file:line: message" lines, each once, in the order found (a refused call
-- whose message the provider raised again, e.g. with assert, is the same problem).
local function format_problems(problems)
  local out, seen = {}, {}
  for _, pr in ipairs(problems) do
    local line = pr.where and (pr.where .. ": " .. pr.msg) or pr.msg
    if not seen[line] then
      seen[line] = true
      out[#out + 1] = line
    end
  end
  return out
end

--- load_file(path, name) -> provider | nil, problems (array of "file:line: message")
-- Loads a provider from its main file in a sandbox (locked globals, no host.core.*),
-- then checks the table it returns. The main chunk only declares: while it runs (even inside
-- a task, as under the CLI), the I/O of the host modules and io.open/io.lines refuse (see
-- LOAD_GUARDED): each such call is a problem naming its file:line, and nothing happens. Every
-- problem of the file is reported, each once.
function M.load_file(path, name)
  local base_dir = path:match("^(.*)/init%.lua$") or path:match("^(.*)/[^/]+%.lua$") or "."
  name = name or (path:match("([^/]+)/init%.lua$") or path:match("([^/]+)%.lua$"))
  local problems = {}
  local state = { path = path, problems = problems, views = {}, refused = {}, loading = true }
  local env, lock = make_env(name, base_dir, state)
  local chunk, err = load_chunk(path, env)
  if not chunk then
    problems[#problems + 1] = { msg = err }
    return nil, format_problems(problems)
  end
  local ok, p = xpcall(chunk, function(e)
    return type(e) == "string" and e or tostring(e)
  end, "providers." .. name)
  state.loading = false
  if not ok then
    -- A refused call's message raised again (assert(fs.write(...))) is not a second problem.
    for _, full in ipairs(state.refused) do
      if p:sub(-#full) == full then
        return nil, format_problems(problems)
      end
    end
    problems[#problems + 1] = { msg = p }
    return nil, format_problems(problems)
  end
  check_shape(p, name, path, problems)
  if #problems > 0 then
    return nil, format_problems(problems)
  end
  lock()
  p.name, p.path, p.dir = name, path, base_dir
  p.display_name = p.display_name or name
  p.version = p.version or "0.1.0"
  p.capabilities = p.capabilities or {}
  p.manifest = p.manifest or {}
  return p
end

--- load(name_or_path, dirs) -> provider | nil, problems
-- A name is looked up on the search path; anything with a '/' or ending in .lua is a path
-- (a file, or a directory holding init.lua).
function M.load(ref, dirs)
  local path
  if ref:find("/", 1, true) or ref:match("%.lua$") then
    path = is_dir(ref) and (ref:gsub("/+$", "") .. "/init.lua") or ref
    if not is_file(path) then
      return nil, { ("%s: no such provider file"):format(path) }
    end
    return M.load_file(path)
  end
  local found, err = M.locate(ref, dirs or M.search_path())
  if not found then
    return nil, { err }
  end
  return M.load_file(found, ref)
end

--- supported_methods(providers) -> array of method names served by any of them.
--- serves(p, hook_name) -> true when the worker answers that hook's method for provider p:
--- it has the hook; or validate_config from its schema alone; or cancel_execution of the
--- executions the worker tracks itself, for any provider that executes.
function M.serves(p, hook_name)
  return p.hooks[hook_name] ~= nil
    or (hook_name == "validate_config" and p.schema ~= nil)
    or (hook_name == "cancel_execution" and p.hooks.execute ~= nil)
end

function M.supported_methods(list)
  local methods = { "health" }
  for _, pair in ipairs(M.HOOKS) do
    for _, p in ipairs(list) do
      if M.serves(p, pair[1]) then
        methods[#methods + 1] = pair[2]
        break
      end
    end
  end
  return methods
end

return M
