--- spec.support.lost_answer: what a fake does when it carried a request out and its answer is
-- then lost on the way (fault.drop: the connection closes before any byte of it) or cut
-- (fault.cut: half the body, then the connection closes). Neither returns: res:abort() ends
-- the handler. With neither asked for, it returns and the caller answers something else.
return function(res, fault, entry, status, headers, body)
  if fault.drop then
    entry.status = "dropped"
    res:abort()
  elseif fault.cut then
    entry.status = "cut"
    headers["content-length"] = tostring(#body)
    res:start(status, headers)
    res:write(body:sub(1, #body // 2))
    res:abort()
  end
end
