-- purge.lua: delete failed tasks (the dead-letter queue) and free their idempotency keys.
-- KEYS[1] = P.  ARGV: now, then ids.  Returns how many were failed and deleted.
local n = 0
for i = 2, #ARGV do
  local id = ARGV[i]
  local f = redis.call("HMGET", tkey(id), "s", "q", "ik", "wf")
  if f[1] == "failed" then
    redis.call("DEL", tkey(id), hkey(id), depkey(id))
    redis.call("ZREM", ALL, id)
    redis.call("ZREM", DLQ, id)
    redis.call("ZREM", FIN, id)
    redis.call("HINCRBY", ckey(f[2]), "failed", -1)
    if f[3] then redis.call("HDEL", ikey(f[2]), f[3]) end
    if f[4] then redis.call("ZREM", P .. ":wf:" .. f[4], id) end
    n = n + 1
  end
end
if n > 0 then redis.call("HINCRBYFLOAT", P .. ":mt", PURGED_KEY, n) end
return n
