-- heartbeat.lua: refresh a worker's registry entry and extend the leases it still holds.
-- KEYS[1] = P.  ARGV: now, worker id, heartbeat record, lease seconds, then pairs:
-- id, lease token.  Returns the ids among them that are no longer this worker's.
local worker, lease = ARGV[2], tonumber(ARGV[4])
if redis.call("HEXISTS", P .. ":workers", worker) == 1 then redis.call("HSET", P .. ":beats", worker, ARGV[3]) end
local lost = {}
for i = 5, #ARGV, 2 do
  local id = ARGV[i]
  local f = redis.call("HMGET", tkey(id), "s", "lt")
  if f[1] == "running" and f[2] == ARGV[i + 1] then
    local le = num(now + lease)
    redis.call("HSET", tkey(id), "le", le)
    redis.call("ZADD", RUN, le, id)
  else
    table.insert(lost, id)
  end
end
return lost
