--- host.http: the HTTP client and server for providers, fakes and the bridge.
-- Calls yield the calling task; the host never blocks. An HTTP error status is a response,
-- not a failure. Failures return nil, message, code with code one of: "dns", "connect",
-- "tls", "timeout", "closed" (connection dropped, empty reply, partial body; request() says
-- what it means for a request that is not idempotent), "protocol" (bad response, max_body
-- exceeded, too many redirects), "canceled", "io", "internal", "json" (opts.json could not
-- be encoded). Argument mistakes raise, blamed on the caller.
local core = require("host.core.http") -- C; yields the calling task until done
local json = require("host.json")
local util = require("host.util")

local M = {}

local Response = { __name = "host.http.Response" }
Response.__index = Response

--- response:ok() -> true when the status is 2xx.
function Response:ok()
  return self.status >= 200 and self.status < 300
end

--- response:json() -> decoded body | nil, "json: ...", "json"
function Response:json()
  return json.decode(self.body)
end

--- response:header(name) -> value | nil, with name in any case.
function Response:header(name)
  return self.headers[name:lower()]
end

M.Response = Response -- specs fabricate responses with setmetatable({...}, http.Response)

-- A copy of opts with opts.json encoded into body and Content-Type set (unless given).
-- Returns nil, msg, "json" when the value cannot be encoded; raises on misuse.
local function prepare(opts, name)
  if type(opts) ~= "table" then
    error(("bad argument #1 to '%s' (table expected, got %s)"):format(name, type(opts)), 3)
  end
  local o = {}
  for k, v in pairs(opts) do
    o[k] = v
  end
  if o.json ~= nil then
    if o.body ~= nil then
      error(("bad argument #1 to '%s' (give 'json' or 'body', not both)"):format(name), 3)
    end
    local body, err = json.encode(o.json)
    if not body then
      return nil, err, "json"
    end
    o.body, o.json = body, nil
    local headers, typed = {}, false
    if o.headers ~= nil and type(o.headers) ~= "table" then
      error(("bad argument #1 to '%s' (field 'headers' must be a table)"):format(name), 3)
    end
    for k, v in pairs(o.headers or {}) do
      headers[k] = v
      if type(k) == "string" and k:lower() == "content-type" then
        typed = true
      end
    end
    if not typed then
      headers["Content-Type"] = "application/json"
    end
    o.headers = headers
  end
  return o
end

--- request(opts) -> Response | nil, message, code
-- opts:
--   url               http:// or https:// URL (required)
--   method            default GET, or POST when a body is given
--   headers           table name -> string value; CR/LF are refused. An empty value sends an
--                     empty header. Content-Length and Transfer-Encoding are set for you
--   body              string; json: any value, encoded with host.json (sets Content-Type)
--   timeout           total seconds (default 30); connect_timeout (default 10)
--   stall_timeout     seconds without any byte received (or sent) before giving up
--   max_body          bytes (default 64 MiB); more fails with "protocol"
--   on_chunk          fn(chunk): each body chunk in order, as it arrives; the body is then
--                     not kept (response.body is ""). It runs on the main thread between
--                     network events, never inside libcurl: it cannot yield, and if it raises
--                     the transfer is aborted and request returns nil, msg, "internal"
--   follow_redirects  default false
--   path_as_is        default false: libcurl removes dot segments ("/a/../b" goes out as
--                     "/b"); true sends the URL's path exactly as given (CURLOPT_PATH_AS_IS),
--                     for a proxy that checked that very path (the bridge)
--   idempotent        may the request be sent again when its connection dies? Default: yes
--                     for GET, HEAD, DELETE and OPTIONS without a body, and for PUT; no for
--                     POST, PATCH, any other method, and a GET/DELETE/OPTIONS with a body.
--                     Say true for a POST that only reads (a search), false for a GET that
--                     changes something
-- Response: status (integer), headers (lowercase name -> value, repeats joined with ", "),
-- body (string), url (the effective URL); methods ok(), json(), header(name).
-- Connections are kept and reused across requests; proxies from the environment are not used.
-- A kept connection can die just as a request is sent on it. An idempotent request is then
-- sent again on a fresh connection (libcurl does that by itself). Any other request is never
-- sent twice, and when its connection dies after it was sent and before any response (kept
-- or fresh), it fails with nil, "http: METHOD URL: connection lost after the request was
-- sent and before any response; the server may have processed it; it was not re-sent",
-- "closed". The server may or may not have acted on it: a caller that must know whether a
-- create happened reconciles before trying again (look the resource up, by a name or key it
-- chose or by listing, and create only when it is not there).
function M.request(opts)
  local o, err, code = prepare(opts, "request")
  if not o then
    return nil, err, code
  end
  local res = util.call_as("request", core.request, o)
  if res[2] == nil then
    return nil, res[3], res[4]
  end
  return setmetatable(res[2], Response)
end

--- ambiguous(code) -> true when a request that failed with this code may have been carried out
-- all the same: it went out and its answer was lost, cut or late ("closed", "timeout",
-- "protocol", "canceled", "internal"). A caller that created something reconciles then; after
-- "dns", "connect" or "tls" the request never left.
local AMBIGUOUS = { closed = true, timeout = true, protocol = true, canceled = true,
  internal = true }
function M.ambiguous(code)
  return AMBIGUOUS[code] == true
end

--- get(url [, opts]) -> Response | nil, message, code: request with method GET.
function M.get(url, opts)
  if type(url) ~= "string" then
    error("bad argument #1 to 'get' (string expected, got " .. type(url) .. ")", 2)
  end
  local o = {}
  for k, v in pairs(opts or {}) do
    o[k] = v
  end
  o.url, o.method = url, "GET"
  local res = util.call_as("get", core.request, o)
  if res[2] == nil then
    return nil, res[3], res[4]
  end
  return setmetatable(res[2], Response)
end

--- open(opts) -> Stream | nil, message, code
-- Like request (same opts except on_chunk; max_body defaults to no limit; the same rule for
-- what is never re-sent), but returns as soon as the response head arrived. Stream: status,
-- headers, url, and
--   stream:read([timeout]) -> chunk | nil at the end of the body | nil, message, code.
--     Each read returns everything buffered so far (chunk boundaries are arbitrary). A read
--     timeout fails that read only ("timeout"); the stream stays usable. The transfer's own
--     timeout (opts.timeout, default 30 s: set it for long streams) ends the stream.
--   stream:close() (also <close> and garbage collection) abandons the transfer.
-- While nobody reads, about 1 MiB is buffered and then the transfer pauses: the server is
-- held back by TCP flow control, and stall_timeout does not count the paused time.
function M.open(opts)
  local o, err, code = prepare(opts, "open")
  if not o then
    return nil, err, code
  end
  local res = util.call_as("open", core.open, o)
  return table.unpack(res, 2, res.n)
end

--- serve(opts) -> Server | nil, message, code
-- opts:
--   handler        fn(req, res), run as its own task for every request (required)
--   host           IP address to listen on (default "127.0.0.1"; "localhost" is accepted)
--   port           default 0: an ephemeral port, read it from server.port
--   max_head       bytes of request line + headers (default 16384; over it: 431)
--   max_headers    at most 100 (default 100; over it: 431)
--   max_body       bytes (default 8 MiB; over it: 413)
--   idle_timeout   seconds a keep-alive connection may wait for its next request (default 30)
--   head_timeout   seconds to receive a whole request, head and body (default 30; then 408)
-- req: method, target (raw), path (raw, before "?"), query (raw, after "?", or nil),
-- version ("1.0" or "1.1"), headers (lowercase name -> value, repeats joined with ", "),
-- header_list ({ {name, value}, ... } as sent), body (decoded), remote_addr, remote_port.
-- The handler either returns status, headers, body (Content-Length is set for you; header
-- values may be strings, numbers or arrays of them), or streams:
--   res:start(status [, headers]) -> true | nil, msg, "closed": chunked unless headers give
--     a content-length (an HTTP/1.0 client gets the body until the connection closes)
--   res:write(chunk) -> true | nil, msg, "closed": waits while the client is slow to read
--   res:finish() -> true | nil, msg, "closed"; called for you when the handler returns
--   res:abort(): for fakes that play "the server processed the request and the answer was
--     lost". Before res:start nothing is answered; after it the response is cut where it is
--     (what was written still goes out, then no chunked terminator, or fewer bytes than the
--     content-length said). Either way the connection is closed (FIN, no keep-alive) and the
--     handler ends right there: abort does not return, and nothing is logged (no 500, no
--     traceback). Do not call it under a pcall of your own, which would catch that ending.
--     Called from another task than the handler's, it only closes; afterwards start, write
--     and finish return nil, msg, "closed".
-- A handler that raises gives a 500 (the traceback goes to stderr) or, once streaming began,
-- a cut connection. Bad requests get 400/408/413/431/501/505 with Connection: close.
-- Server: port, url ("http://host:port"), stats() -> {accepted, open, requests}, close()
-- (stops listening, closes every connection and cancels running handlers).
function M.serve(opts)
  if type(opts) ~= "table" then
    error(("bad argument #1 to 'serve' (table expected, got %s)"):format(type(opts)), 2)
  end
  local res = util.call_as("serve", core.serve, opts)
  return table.unpack(res, 2, res.n)
end

return M
