--- host.util: bytes, names and scratch space for providers: random bytes, uuid, sha256, hmac,
--- base64, hex, constant-time compare, UTF-8 cleaning, JSON string sizes, private temp dirs.
-- Every function here is synchronous and quick; none needs a task.
-- Arguments documented as strings must be strings: a number raises instead of being converted.
local core = require("host.core.util") -- C: host/mod_util.c, host/ph_util.c

local M = {}

local function check_string(v, i, fname)
  if type(v) ~= "string" then
    error(("bad argument #%d to '%s' (string expected, got %s)"):format(i, fname, type(v)), 3)
  end
end

-- Text ----------------------------------------------------------------------------------------

--- trim(s) -> s without leading and trailing whitespace; linear in #s even for long runs of
--- spaces (the usual "^%s*(.-)%s*$" is not).
function M.trim(s)
  check_string(s, 1, "trim")
  local i = s:find("%S")
  if not i then
    return ""
  end
  local j = #s
  if s:find("^%s", j) then
    j = j - s:reverse():find("%S") + 1
  end
  return s:sub(i, j)
end

--- nonblank(v) -> v trimmed when v is a string holding a non-space character, else nil: how
--- an optional text field (a path, a name) is read.
function M.nonblank(v)
  if type(v) == "string" and v:find("%S") then
    return M.trim(v)
  end
  return nil
end

--- call_as(name, fn, o) -> table.pack(fn(o)) for a facade over a C function: an argument
-- error C raises is raised again against the facade's caller (level 3), naming the facade's
-- function `name` instead of the C one. Call it without `return` (a tail call would drop the
-- facade's frame).
function M.call_as(name, fn, o)
  local res = table.pack(pcall(fn, o))
  if not res[1] then
    local msg = tostring(res[2]):gsub("^bad argument #1 to '[^']*'", "bad argument #1 to '"
      .. name .. "'")
    error(msg, 3)
  end
  return res
end

-- Random, names --------------------------------------------------------------------------------

--- random(n) -> string of n bytes from the kernel CSPRNG | nil, message, "io"
-- 0 <= n <= 1048576.
M.random = core.random

--- uuid() -> RFC 4122 version 4 UUID, lowercase: "xxxxxxxx-xxxx-4xxx-[89ab]xxx-xxxxxxxxxxxx"
-- | nil, message, "io"
M.uuid = core.uuid

-- Digests --------------------------------------------------------------------------------------

--- sha256(s) -> 32 raw bytes
M.sha256 = core.sha256

--- sha256_hex(s) -> 64 lowercase hex digits
function M.sha256_hex(s)
  check_string(s, 1, "sha256_hex")
  return core.hex(core.sha256(s))
end

local BLOCK = 64 -- SHA-256 block size in bytes

local function xor_pad(key, byte) -- key zero-filled to one block, each byte xor-ed
  local pad = {}
  for i = 1, BLOCK do
    pad[i] = string.char((key:byte(i) or 0) ~ byte)
  end
  return table.concat(pad)
end

--- hmac_sha256(key, message) -> 32 raw bytes (RFC 2104)
function M.hmac_sha256(key, message)
  check_string(key, 1, "hmac_sha256")
  check_string(message, 2, "hmac_sha256")
  if #key > BLOCK then
    key = core.sha256(key)
  end
  local inner = core.sha256(xor_pad(key, 0x36) .. message)
  return core.sha256(xor_pad(key, 0x5c) .. inner)
end

-- Encodings ------------------------------------------------------------------------------------

--- hex(s) -> lowercase hex digits, two per byte
M.hex = core.hex

--- base64_encode(s) -> standard base64 (RFC 4648 section 4), padded with "="
M.base64_encode = core.base64_encode

--- base64_decode(s) -> bytes | nil, message, "protocol"
-- Strict: the standard alphabet only (no "-" or "_") and no whitespace (strip the line breaks
-- of `base64` output first: s:gsub("%s", "")). Padding may be left out, but when present it
-- must complete the last group of 4. The unused low bits of the last character must be zero,
-- so each byte string has exactly one accepted encoding besides its unpadded form.
M.base64_decode = core.base64_decode

--- base64url_encode(s) -> URL-safe base64 (RFC 4648 section 5), without padding
-- (the bridge's token format: 24 random bytes give 32 characters).
function M.base64url_encode(s)
  check_string(s, 1, "base64url_encode")
  return (core.base64_encode(s):gsub("[+/=]", { ["+"] = "-", ["/"] = "_", ["="] = "" }))
end

--- base64url_decode(s) -> bytes | nil, message, "protocol"
-- URL-safe alphabet only ("+" and "/" are refused); padding optional as in base64_decode.
function M.base64url_decode(s)
  check_string(s, 1, "base64url_decode")
  if s:find("[+/]") then
    return nil, "base64url_decode: invalid base64url", "protocol"
  end
  local bytes = core.base64_decode((s:gsub("[-_]", { ["-"] = "+", ["_"] = "/" })))
  if not bytes then
    return nil, "base64url_decode: invalid base64url", "protocol"
  end
  return bytes
end

--- constant_time_equal(a, b) -> boolean
-- For secrets (tokens, MACs): the time taken depends on the two lengths, never on the bytes.
M.constant_time_equal = core.constant_time_equal

-- UTF-8 ----------------------------------------------------------------------------------------

--- utf8_valid(s) -> boolean: s is well-formed UTF-8 (no overlongs, surrogates, or > U+10FFFF)
M.utf8_valid = core.utf8_valid

--- utf8_clean(s [, final]) -> cleaned, rest
-- Replaces each ill-formed sequence with U+FFFD, one per maximal subpart (Unicode chapter 3,
-- as browsers' decoders do). final defaults to true. With final == false, a character cut off
-- at the end of s is not replaced but returned as rest, for the caller to put in front of the
-- next chunk; cleaning chunk by chunk then gives exactly what cleaning the whole would.
-- Valid input comes back unchanged (the very same string) with rest "".
M.utf8_clean = core.utf8_clean

local Utf8Stream = { __name = "host.util.Utf8Stream" }
Utf8Stream.__index = Utf8Stream

--- stream:push(chunk) -> valid UTF-8 text; a character cut at the end waits for the next push
function Utf8Stream:push(chunk)
  check_string(chunk, 1, "push")
  local out
  out, self.rest = core.utf8_clean(self.rest .. chunk, false)
  return out
end

--- stream:finish() -> valid UTF-8 text for what is left (U+FFFD for a cut character, or "")
function Utf8Stream:finish()
  local out = core.utf8_clean(self.rest, true)
  self.rest = ""
  return out
end

--- utf8_stream() -> Utf8Stream: cleans a byte stream (command output) chunk by chunk, so that
-- every piece can go out as JSON and the pieces concatenate to utf8_clean(whole).
function M.utf8_stream()
  return setmetatable({ rest = "" }, Utf8Stream)
end

-- JSON string sizes ----------------------------------------------------------------------------

--- json_clip(s, budget [, final [, n]]) -> text, used, size, cut
-- Cleans the first n bytes of s (default all) as utf8_clean does and, in the same pass, keeps
-- the longest run of whole characters whose size once JSON-encoded (exactly as host.json
-- writes a string: \u00XX for control bytes and DEL, \n \t \b \f \r \" \\ \/ in two bytes,
-- UTF-8 as it is; quotes not counted) is at most budget. Returns the text, the bytes of s
-- consumed, the text's encoded size, and cut: true when a character did not fit and the rest
-- was dropped. A character is never split. final defaults to true; with final == false a
-- character cut off at the end is not consumed (not a cut): prepend s:sub(used + 1) to the next
-- chunk, and pass budget less the sizes used so far, to clip a stream exactly as the whole.
-- Valid input that fits comes back unchanged (the very same string).
M.json_clip = core.json_clip

--- json_quote(s [, piece]) -> {part, ...}: the JSON string for s, quotes included, exactly as
-- host.json (lua-cjson 2.1.0) writes it, cut into parts of at most piece bytes (default 1 MiB)
-- that concatenate to it, so that a big one never exists as one string.
M.json_quote = core.json_quote

-- Files ----------------------------------------------------------------------------------------

--- mkdtemp([prefix]) -> path | nil, message, "io"
-- Creates a new directory, mode 0700, named prefix plus 6 random characters, under $TMPDIR
-- when that is an absolute path to an existing directory, else under /tmp. prefix defaults to
-- "provider-host-" and must not contain "/".
M.mkdtemp = core.mkdtemp

--- remove_tree(path) -> true | nil, message, "io"
-- Deletes path and everything below it. Symbolic links are removed, never followed, even if
-- one is swapped in during the walk. Directories its owner cannot read or write into (0555,
-- 0000) are given u+rwx on the way, as `rm -rf` by that owner would need. A missing path is
-- success. path must be absolute, without "." or ".." components, and not "/" (anything else
-- raises).
M.remove_tree = core.remove_tree

local TempDir = { __name = "host.util.TempDir" }
TempDir.__index = TempDir

--- dir:remove() -> true | nil, message, "io" (idempotent; dir.path is nil once removed)
function TempDir:remove()
  if self.path == nil then
    return true
  end
  local ok, err, code = core.remove_tree(self.path)
  if not ok then
    return nil, err, code
  end
  self.path = nil
  return true
end

TempDir.__close = TempDir.remove -- errors at close are dropped: call remove() to see them

--- tempdir([prefix]) -> TempDir {path = } | nil, message, "io"
-- A mkdtemp directory removed when the variable goes out of scope:
--   local dir <close> = assert(util.tempdir("ssh-"))
function M.tempdir(prefix)
  if prefix ~= nil then
    check_string(prefix, 1, "tempdir")
  end
  local path, err, code = core.mkdtemp(prefix)
  if not path then
    return nil, err, code
  end
  return setmetatable({ path = path }, TempDir)
end

M.Utf8Stream, M.TempDir = Utf8Stream, TempDir
return M
