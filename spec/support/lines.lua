--- spec.support.lines: a child's output cut into lines as its chunks arrive, in time linear in
-- the bytes however long a line is (a 32 MiB reply comes in hundreds of chunks; joining the
-- pending text with each new chunk would copy it hundreds of times).
local M = {}

--- splitter(on_line) -> feed: feed(chunk) calls on_line(line) (without its "\n") for every
-- line the chunk completes, in order, and keeps the unterminated rest for the next chunk.
function M.splitter(on_line)
  local parts = {} -- the current line's pieces, not yet ended
  return function(chunk)
    local from = 1
    while true do
      local nl = chunk:find("\n", from, true)
      if not nl then
        break
      end
      parts[#parts + 1] = chunk:sub(from, nl - 1)
      local line = table.concat(parts)
      parts = {}
      on_line(line)
      from = nl + 1
    end
    if from <= #chunk then
      parts[#parts + 1] = chunk:sub(from)
    end
  end
end

return M
