-- reap.lua: recover running tasks whose lease lapsed (expiry < now): back to
-- pending, or failed with retries_exhausted when no attempt is left.
-- KEYS[1] = P.  ARGV: now, limit.  Returns the recovered ids.
local ids = redis.call("ZRANGEBYSCORE", RUN, "-inf", "(" .. num(now), "LIMIT", 0, tonumber(ARGV[2]))
for _, id in ipairs(ids) do
  local t = get_task(id)
  local holder = t.w
  if t.a > t.mr then
    local msg = "lease of worker " .. tostring(holder or "None") .. " expired on attempt " .. t.a
    redis.call("HSET", tkey(id), "fr", "retries_exhausted", "e", cjson.encode({type = "LeaseExpired", message = msg}))
    transition(id, t, "lease_expired_final", holder, "lease expired")
    settle(id, t)
  else
    transition(id, t, "lease_expired", holder, "lease expired")
  end
end
publish()
return ids
