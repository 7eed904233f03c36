--- host.duplex: a duplex execution over a local process (host.proc pipes): the provider
-- contract's long-lived command whose stdin the host writes at any time and whose stdout it
-- reads as a stream (README, "Duplex execution"). The local provider offers it; specs and the
-- bridge use it to run the relay on this machine.
local proc = require("host.proc")

local M = {}

local Duplex = { __name = "host.duplex.Duplex" }
Duplex.__index = Duplex

--- process(params) -> Duplex | nil, message, code. params: argv (array), env (nil inherits),
-- cwd, on_stdout(chunk), on_stderr(chunk) (each byte once, in order, nothing kept; they run
-- outside tasks and cannot yield), timeout (seconds, default host.proc's).
function M.process(params)
  local p, err, code = proc.spawn({
    argv = params.argv,
    env = params.env,
    cwd = params.cwd,
    stdin = true,
    keep_output = false,
    timeout = params.timeout,
    kill_grace = 1,
    on_stdout = params.on_stdout,
    on_stderr = params.on_stderr,
  })
  if not p then
    return nil, err, code
  end
  return setmetatable({ proc = p, pid = p.pid }, Duplex)
end

--- duplex:write(data) -> true | nil, message, code ("closed" once stdin or the process ended)
-- Yields until the command's stdin pipe took every byte (back-pressure, as a remote duplex's
-- write waits for the transport): a command that does not read stalls its writer, and nothing
-- piles up in the host.
function Duplex:write(data)
  if self.closed then
    return nil, "the duplex execution is closed", "closed"
  end
  local ok, err, code = self.proc:write(data)
  if not ok then
    return nil, err, code
  end
  return self.proc:drain()
end

--- duplex:pause_output() / duplex:resume_output() -> true: stop and restart the calls of
-- on_stdout / on_stderr (the command blocks on its full pipe meanwhile); callable from those
-- callbacks. Idempotent.
function Duplex:pause_output()
  if not self.closed then
    self.proc:pause_output()
  end
  return true
end

function Duplex:resume_output()
  if not self.closed then
    self.proc:resume_output()
  end
  return true
end

--- duplex:close_stdin(): EOF to the command; idempotent.
function Duplex:close_stdin()
  if not self.closed then
    self.proc:close_stdin()
  end
end

--- duplex:wait([timeout]) -> { exit_code =, signal = } | nil, message, code
function Duplex:wait(timeout)
  if self.closed then
    return nil, "the duplex execution is closed", "closed"
  end
  local r, err, code = self.proc:wait(timeout)
  if not r then
    return nil, err, code
  end
  return { exit_code = r.exit_code, signal = r.signal }
end

--- duplex:close(): terminates the process group (TERM, then KILL) and frees the pipes;
-- idempotent.
function Duplex:close()
  if not self.closed then
    self.closed = true
    self.proc:close()
  end
end
Duplex.__close = Duplex.close

return M
