--- host.ssh: commands, duplex channels and file uploads over SSH for providers (exe.dev VMs
-- and the like). Built on libssh2 sessions driven by the host's loop: calls yield the calling
-- task and the host never blocks. Sessions are pooled per (host, port, user, key,
-- host_key_policy, known_hosts) and shared by concurrent calls, one channel each, so a burst of
-- commands to one VM, and the long-lived duplex commands of open(), use one TCP connection. A
-- non-zero exit is a result, not a failure.
-- Failures return nil, message, code with code one of: "dns", "connect", "auth" (refused keys,
-- wrong passphrase, or a key that is encrypted without a passphrase or malformed: these two
-- are reported before connecting), "protocol" (host key changed or unknown under "yes",
-- handshake failure, a request the server refused), "timeout" (before the command started),
-- "closed" (the connection died mid-command), "canceled", "io" (known_hosts, upload errors),
-- "internal". Argument mistakes raise, blamed on the caller.
--
-- libssh2 1.10 limits worth knowing:
--   * RSA keys are signed with ssh-rsa (SHA-1) only; OpenSSH 8.8+ refuses that unless its
--     PubkeyAcceptedAlgorithms allows ssh-rsa. Use ed25519 or ECDSA keys.
--   * There is no "signal" request: on timeout or cancel the channel is closed, and OpenSSH
--     closes the command's pipes, so it dies of SIGPIPE at its next write to stdout/stderr; a
--     command that never writes runs on until it ends by itself. Wrap such commands (timeout(1)
--     on the remote side) when they must not outlive the call.
local core = require("host.core.ssh") -- C; yields the calling task until done
local log = require("host.log")
local util = require("host.util")

local M = {}

--- Defaults, read at each call (specs and providers may change them).
M.default_timeout = 3600 -- seconds for a whole exec or upload, connecting included
M.default_connect_timeout = 15 -- seconds for DNS + TCP + handshake + authentication
M.default_keepalive = 15 -- seconds between keepalives on a session (0: none)
M.default_idle_timeout = 60 -- seconds an unused pooled session stays open
M.default_open_timeout = 60 -- seconds for open() until its command runs (connecting included)

core.set_warn(function(message)
  log.warn("%s", message)
end)

local POLICIES = { ["accept-new"] = true, yes = true, no = true }

local function fail_arg(name, msg)
  error(("bad argument #1 to '%s' (%s)"):format(name, msg), 4)
end

-- A copy of opts with the defaults filled in; checks what C cannot word as well. open() has no
-- default timeout: a duplex lives as long as its user wants.
local function prepare(opts, name)
  if type(opts) ~= "table" then
    fail_arg(name, "table expected, got " .. type(opts))
  end
  local o = {}
  for k, v in pairs(opts) do
    o[k] = v
  end
  o.port = o.port or 22
  o.host_key_policy = o.host_key_policy or "accept-new"
  if not POLICIES[o.host_key_policy] then
    fail_arg(name, "field 'host_key_policy' must be \"accept-new\", \"yes\" or \"no\"")
  end
  if o.timeout == nil and name ~= "open" then
    o.timeout = M.default_timeout
  end
  if name == "open" and o.open_timeout == nil then
    o.open_timeout = M.default_open_timeout
  end
  if o.connect_timeout == nil then
    o.connect_timeout = M.default_connect_timeout
  end
  if o.keepalive == nil then
    o.keepalive = M.default_keepalive
  end
  if o.idle_timeout == nil then
    o.idle_timeout = M.default_idle_timeout
  end
  return o
end

--- exec(opts) -> result | nil, message, code
-- Runs opts.cmd on the remote host, as its login shell runs a command string (`ssh host cmd`).
-- opts, connection (also for upload):
--   host, port (22), user            where and as whom (host and user required)
--   key                              the private key TEXT, never written to disk: OpenSSH
--                                    ("BEGIN OPENSSH PRIVATE KEY": ed25519, ECDSA, RSA) or PEM
--                                    (RSA, EC, PKCS#8)
--   keys                             or several, offered in order until one is accepted:
--                                    { {key = text, label = "/home/u/.ssh/id_ed25519"}, ... }
--                                    (labels name them in errors; at most 16)
--   agent                            an ssh-agent socket path: its keys are offered first, as
--                                    OpenSSH does (each wait on the agent is bounded to 5 s)
--                                    One of key, keys or agent is required
--   passphrase                       for an encrypted key
--   host_key_policy                  "accept-new" (default): remember a new host in
--                                    known_hosts, refuse a changed key; "yes": the host must
--                                    already be in known_hosts; "no": accept any key (logged
--                                    as a warning)
--   known_hosts                      path of a private known_hosts file (required unless "no")
--   timeout                          seconds for the whole call, connecting included
--                                    (default M.default_timeout)
--   connect_timeout                  seconds to connect and authenticate (default 15)
--   keepalive                        seconds between keepalives (default 15; 0: none); 3
--                                    unanswered while commands run mark the session dead
--                                    (libssh2 1.10 sends at most one every 2 s)
--   idle_timeout                     seconds a pooled session stays open unused (default 60)
--   (connect_timeout, keepalive and idle_timeout of the call that opens a session apply to it)
-- opts, command:
--   cmd                              the command string (required)
--   stdin                            string delivered in full, then EOF; nil: EOF at once
--   env                              table name -> value sent as SSH "env" requests: most
--                                    sshd refuse them (only AcceptEnv names pass) and the call
--                                    then fails with "protocol". Prefer `env K=V cmd` built
--                                    with host.shell
--   max_output                       bytes kept per stream (default 16 MiB); the rest is
--                                    dropped and result.truncated is true
--   on_stdout, on_stderr             fn(chunk) with each chunk as it arrives (the kept bytes,
--                                    in order: they add up to result.stdout/stderr). They run
--                                    on the main thread between network events: they cannot
--                                    yield, and an error in one is logged, not raised
-- result = { exit_code (integer; nil when killed by a signal or timed out), signal ("TERM",
-- "KILL"... as the server names it, or nil), stdout, stderr, timed_out, truncated,
-- duration (seconds) }. When the deadline passes after the command started, the channel is
-- closed and the result comes back with timed_out = true and the output so far; before it
-- started, exec fails with "timeout". A pooled session found dead before the command started
-- is replaced by a fresh connection once; a connection lost mid-command fails with "closed".
-- Cancelling the calling task closes the channel and returns nil, msg, "canceled".
function M.exec(opts)
  local o = prepare(opts, "exec")
  local res = util.call_as("exec", core.exec, o)
  return table.unpack(res, 2, res.n)
end

--- open(opts) -> Channel | nil, message, code
-- A duplex command: starts opts.cmd as exec does, on a pooled session shared with exec calls
-- (one channel of the same TCP connection), and returns once the server accepted the command.
-- Its stdin is written piece by piece with Channel:write at any time; its output goes to the
-- callbacks as it arrives and is never kept: a channel may carry gigabytes. Failures to
-- connect or start return nil, message, code as exec's do.
-- opts: the connection options of exec (host, port, user, key/keys/agent, passphrase,
-- host_key_policy, known_hosts, connect_timeout, keepalive, idle_timeout), and:
--   cmd                              the command string (required)
--   env                              as for exec
--   on_stdout, on_stderr             fn(chunk) with every byte, in order, as it arrives. They
--                                    run on the main thread between network events, outside
--                                    any task: they cannot yield, and an error in one is
--                                    logged, not raised. Without on_stdout (on_stderr), that
--                                    stream is read and dropped. Output is read only as fast
--                                    as they return: a slow callback slows the command down
--                                    (SSH flow control), it never piles up in memory
--   timeout                          seconds for the whole command, from the call on (default:
--                                    none, the channel lives until it ends or is closed). When
--                                    it passes, the channel is closed and wait() returns
--                                    { timed_out = true }
--   open_timeout                     seconds until the command runs: connecting, a free channel
--                                    slot (sshd allows 10 per connection), the exec request
--                                    (default M.default_open_timeout, 60)
-- Channel methods (write and wait yield, so they run inside a task):
--   :write(data) -> true | nil, message, code
--       Waits until libssh2 took every byte of data (a string). The SSH window is the
--       back-pressure: a command that does not read stalls its writers, and nothing is
--       buffered beyond the caller's string. Writes from several tasks go out in call order,
--       each whole. "closed": the channel ended, was closed, stdin was closed (close_stdin) or
--       the connection was lost; "canceled": the calling task was canceled (its bytes are
--       dropped if none had gone yet, else sent whole, so the stream never carries half a
--       write).
--   :close_stdin() -> true
--       EOF to the command, after the writes queued before it. Idempotent.
--   :wait([timeout]) -> { exit_code, signal, timed_out } | nil, message, code
--       Until the command ends: exit_code (integer; nil when killed by a signal or timed out),
--       signal ("TERM"... or nil), timed_out (opts.timeout passed). Failures: "timeout" (this
--       wait's own limit passed: the command runs on), "closed" (the channel was closed, or
--       the connection lost), "canceled". Once the command ended, wait returns at once.
--   :pause_output() -> true
--       No more on_stdout/on_stderr calls until resume_output; callable from inside those
--       callbacks (the usual use: a callback whose sink is slow queues its chunk and pauses).
--       Output already read stays buffered in C, bounded: reading from the channel stops
--       while paused, so SSH flow control stalls the command once its window fills, and the
--       buffer never exceeds the high-water mark (256 KiB a stream) plus one read chunk
--       (64 KiB). Once the command closed its output nothing more can come, and what libssh2
--       already received is moved into that buffer so the channel can end. Idempotent.
--   :resume_output() -> true
--       Delivery restarts: what was buffered is delivered first, in order (by the loop, soon
--       after, never inside resume_output), then reading goes on. Idempotent.
--       The end never overtakes the output: while paused with output undelivered, wait() does
--       not return the command's end (nor are waiters answered) until every byte was
--       delivered after resume_output; a command that ended while paused with nothing
--       undelivered ends as usual; so does opts.timeout passing while paused (the channel is
--       closed at once, wait() returns { timed_out = true } after the output kept). close()
--       while paused drops what was kept (no callback after it); a connection lost while
--       paused fails writes and waits with "closed" at once, and the output kept is dropped.
--   :close()
--       Closes the channel and frees everything; pending writes and waits fail with
--       "closed" and no callback runs after it. Idempotent; also __close and __gc, so
--       `local ch <close> = ssh.open(...)` works. libssh2 1.10 has no signal request: sshd
--       closes the command's stdin, stdout and stderr, so a command reading stdin (cat) sees
--       EOF, one writing output dies of SIGPIPE at its next write, and a silent command that
--       ignores stdin runs on until it ends by itself (wrap it in timeout(1)).
-- No callback runs before open returned the Channel to its caller (it may be an upvalue of
-- the callbacks, which can pause it from their first call on).
-- A running channel is kept alive by the host, callbacks included, until it ends or is
-- closed: close every channel you open. A connection lost mid-command ends pending writes and
-- waits with "closed" (keepalives notice a silent peer), and nothing is called after that.
function M.open(opts)
  local o = prepare(opts, "open")
  local res = util.call_as("open", core.open, o)
  if res[2] then
    -- core.open returns the Channel paused: no callback before its caller holds it (so a
    -- callback may pause it). The output kept meanwhile comes once this task yields.
    res[2]:resume_output()
  end
  return table.unpack(res, 2, res.n)
end

--- upload(opts) -> true | nil, message, code
-- Writes opts.data (string, required) to opts.path (required) on the remote host over SCP,
-- creating the file with opts.mode (default tonumber("644", 8); the remote umask applies; an
-- existing file is overwritten and keeps its mode). Connection options as for exec.
-- Needs the scp program on the remote host.
function M.upload(opts)
  local o = prepare(opts, "upload")
  local res = util.call_as("upload", core.upload, o)
  return table.unpack(res, 2, res.n)
end

--- fingerprint(opts) -> "SHA256:..." | nil, message, code
-- The host key fingerprint of opts.host:opts.port (as `ssh-keygen -lf` prints it), from a
-- handshake on a connection of its own; no user, key or known_hosts needed.
function M.fingerprint(opts)
  local o = prepare(opts, "fingerprint")
  o.host_key_policy = "no"
  local res = util.call_as("fingerprint", core.fingerprint, o)
  return table.unpack(res, 2, res.n)
end

--- key_info(text [, has_passphrase]) -> {type, encrypted, rsa} | nil, message, "auth": what a
-- private key is (checked locally, never used): lets a caller skip keys it could not use.
M.key_info = core.key_info

--- close_all(): close every pooled session now; calls in flight fail with "closed".
function M.close_all()
  core.close_all()
end

--- stats() -> { sessions, channels, queued, connects }: open sessions, open channels, calls
-- waiting for a channel, and TCP connections made since the host started.
function M.stats()
  return core.stats()
end

return M
