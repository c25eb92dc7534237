-- replay.lua: failed tasks back to pending, attempts reset, history kept.
-- KEYS[1] = P.  ARGV: now, then ids.  Returns how many were failed and replayed.
local n = 0
for i = 2, #ARGV do
  local id = ARGV[i]
  local t = get_task(id)
  if t and t.s == "failed" then
    t.ra = now
    redis.call("HSET", tkey(id), "a", 0, "ra", num(now))
    redis.call("HDEL", tkey(id), "e", "fr", "r", "sa", "fa")
    transition(id, t, "replay", nil, "replayed")
    n = n + 1
  end
end
if n > 0 then redis.call("HINCRBYFLOAT", P .. ":mt", REPLAYED_KEY, n) end
publish()
return n
