-- outbox.lua: the outbox's own operations (lib.lua's record() writes the events).
-- ARGV: now, op, then per op:
--   subscribe: event names            -> 1
--   claim: limit, lease until         -> rows {id, ev, t, wf, q, n, s, a, at, dl, dn, r, e}
--   settle: (id, retry_at or "", done JSON) triples; "" drops the event -> 1
local op = ARGV[2]
if op == "subscribe" then
  redis.call("DEL", OBS)
  for i = 3, #ARGV do redis.call("SADD", OBS, ARGV[i]) end
  return 1
elseif op == "claim" then
  local out = {}
  for _, n in ipairs(redis.call("ZRANGEBYSCORE", OBQ, "-inf", ARGV[1], "LIMIT", 0, tonumber(ARGV[3]))) do
    redis.call("ZADD", OBQ, ARGV[4], n)
    local dl = redis.call("HINCRBY", obkey(n), "dl", 1)
    local f = redis.call("HMGET", obkey(n), "ev", "t", "wf", "q", "n", "s", "a", "at", "dn", "r", "e")
    table.insert(out, {n, f[1], f[2], f[3] or "", f[4], f[5], f[6], f[7], f[8], dl, f[9], f[10] or "", f[11] or ""})
  end
  return out
elseif op == "settle" then
  for i = 3, #ARGV, 3 do
    local n = ARGV[i]
    if redis.call("EXISTS", obkey(n)) == 1 then
      if ARGV[i + 1] == "" then
        local f = redis.call("HMGET", obkey(n), "ev", "wf")
        if f[1] == "workflow.finished" and f[2] and redis.call("HGET", OBW, f[2]) == n then
          redis.call("HDEL", OBW, f[2])
        end
        redis.call("DEL", obkey(n))
        redis.call("ZREM", OBQ, n)
      else
        redis.call("ZADD", OBQ, ARGV[i + 1], n)
        redis.call("HSET", obkey(n), "dn", ARGV[i + 2])
      end
    end
  end
  return 1
end
return redis.error_reply("unknown outbox operation " .. tostring(op))
