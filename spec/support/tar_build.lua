--- spec/support/tar_build.lua: tar archives made by hand, byte by byte (ustar headers with
-- correct checksums, pax records, GNU base-256 sizes), for specs that need what no honest tar
-- would write.
local assert = require("luassert")

local M = {}

local function octal(n, width) -- width - 1 octal digits and a NUL
  return ("%0" .. (width - 1) .. "o"):format(n) .. "\0"
end

local function field(s, width)
  assert(#s <= width, "field too long")
  return s .. ("\0"):rep(width - #s)
end

-- header(h) -> a 512-byte ustar header with a correct checksum. h: name, mode, size (or
-- size_field: the 12 raw bytes), type ("0"...), linkname, prefix, major, minor (devices).
function M.header(h)
  local size = h.size_field or octal(h.size or 0, 12)
  local function with(sum)
    return field(h.name or "", 100) .. octal(h.mode or 420, 8) .. octal(0, 8) .. octal(0, 8)
      .. size .. octal(0, 12) .. sum .. (h.type or "0") .. field(h.linkname or "", 100)
      .. "ustar\0" .. "00" .. field("root", 32) .. field("root", 32) .. octal(h.major or 0, 8)
      .. octal(h.minor or 0, 8) .. field(h.prefix or "", 155) .. ("\0"):rep(12)
  end
  local blank = with("        ")
  local sum = 0
  for i = 1, #blank do
    sum = sum + blank:byte(i)
  end
  local block = with(("%06o"):format(sum) .. "\0 ")
  assert(#block == 512)
  return block
end

local function pad(data)
  return data .. ("\0"):rep((512 - #data % 512) % 512)
end

-- entry(h, content) -> a header and its padded content (h.size defaults to #content).
function M.entry(h, content)
  content = content or ""
  if not h.size and not h.size_field then
    h.size = #content
  end
  return M.header(h) .. pad(content)
end

M.END = ("\0"):rep(1024)

function M.archive(...)
  return table.concat({ ... }) .. M.END
end

-- A pax record "LEN key=value\n" (LEN counts itself).
function M.pax_record(key, value)
  local body = " " .. key .. "=" .. value .. "\n"
  local len = #body + 1
  while #tostring(len) + #body ~= len do
    len = #tostring(len) + #body
  end
  return len .. body
end

function M.pax_entry(records)
  return M.entry({ name = "PaxHeaders/x", type = "x" }, table.concat(records))
end

-- GNU base-256: 0x80 then the value big-endian in the other 11 bytes.
function M.base256(n)
  local bytes = {}
  for i = 11, 1, -1 do
    bytes[i] = string.char(n & 0xff)
    n = n >> 8
  end
  return "\x80" .. table.concat(bytes)
end

return M
