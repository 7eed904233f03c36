--- host.errors: the one closed list of error codes. A primitive that fails returns nil,
-- message, code with code from this list, and so does a provider's hook or helper; a
-- provider checks codes to decide (retry, reconcile, answer "expired"), never messages. The
-- worker warns when a hook returns a code outside the list.
local M = {}

--- CODES: every code and what it means.
M.CODES = {
  timeout = "the deadline passed before the operation ended",
  connect = "the connection could not be made (refused, unreachable)",
  dns = "the host name could not be resolved",
  tls = "the TLS handshake or certificate check failed",
  auth = "credentials were refused (an API key, an SSH key)",
  closed = "the connection or the stream ended early; a request may have been carried out",
  busy = "the other side asks to wait (rate limited), or a handle is in use",
  canceled = "the operation was canceled (a cancel, the request's deadline, a shutdown)",
  exit = "a process could not be started or ended abnormally",
  signal = "a process was killed by a signal",
  io = "a local file or descriptor operation failed",
  protocol = "the other side broke the protocol (a malformed answer, a refused request)",
  json = "JSON could not be encoded or decoded",
  upstream = "the service answered with an error",
  internal = "a bug or an exhausted resource in provider-host",
  config = "the configuration cannot work (a missing API key, no SSH identity)",
  not_found = "the resource does not exist (any more): a sandbox, a VM, a lease",
  conflict = "the resource exists already or is in a conflicting state (a name taken)",
  unavailable = "the resource cannot be reached now (a paused sandbox): reconnect or retry",
  unsupported = "the sandbox or provider cannot do this at all (no duplex execution, a "
    .. "helper binary that cannot run there): fall back or give up, never retry",
}

--- is_code(v) -> true when v is a code of the list.
function M.is_code(v)
  return M.CODES[v] ~= nil
end

return M
