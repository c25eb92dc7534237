-- release.lua: give still-held leases back (graceful shutdown): running -> pending.
-- KEYS[1] = P.  ARGV: now, worker id, reason, then triples: id, lease token, refund (1/0).
-- Returns the number released.
local worker, reason, released = ARGV[2], ARGV[3], 0
for i = 4, #ARGV, 3 do
  local id = ARGV[i]
  local t = get_task(id)
  if t and t.s == "running" and t.lt == ARGV[i + 1] then
    if ARGV[i + 2] == "1" then redis.call("HSET", tkey(id), "a", math.max(0, t.a - 1)) end
    transition(id, t, "release", worker, reason)
    released = released + 1
  end
end
publish()
return released
