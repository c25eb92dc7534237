-- restore.lua: store exported tasks exactly as they were (conveyor import), in any state.
-- KEYS[1] = P.  ARGV: now, then per task (stride 3): id, its hash as a JSON array of
-- field, value strings (redis_rows.restore_args: no lease token, no wd), its history
-- as a JSON array of entry texts. A task whose id or idempotency key is stored (or
-- came earlier in the batch) is skipped. Returns how many were stored.
--
-- Not a transition: no history entry, no outbox event. Every index a transition keeps
-- is written for the task's state, so it goes on from there: pending ones are claimable,
-- delayed ones promotable, running ones reaped once their lease expiry has passed
-- (nobody holds the lease), failed ones in the DLQ. A waiting task is linked (P:dep,
-- wd) to its parents that are stored and unfinished once the whole batch is placed,
-- so a parent later in the batch counts too.
local waiting, stored = {}, 0
for i = 2, #ARGV, 3 do
  local id, list = ARGV[i], cjson.decode(ARGV[i + 1])
  local f = {}
  for j = 1, #list, 2 do f[list[j]] = list[j + 1] end
  local q, s, ik = f.q, f.s, f.ik
  if redis.call("EXISTS", tkey(id)) == 0 and not (ik and redis.call("HEXISTS", ikey(q), ik) == 1) then
    redis.call("HSET", tkey(id), unpack(list))
    local entries = cjson.decode(ARGV[i + 2])
    -- in chunks: unpack's stack is limited, and a script that fails half-way keeps its writes
    for c = 1, #entries, 500 do redis.call("RPUSH", hkey(id), unpack(entries, c, math.min(c + 499, #entries))) end
    redis.call("ZADD", ALL, 0, id)
    if redis.call("HINCRBY", ckey(q), s, 1) == 1 then redis.call("SADD", QUEUES, q) end
    if ik then redis.call("HSET", ikey(q), ik, id) end
    if f.wf then redis.call("ZADD", P .. ":wf:" .. f.wf, 0, id) end
    if s == "pending" then
      redis.call("ZADD", rkey(q), num(score(tonumber(f.p), tonumber(f.ra))), id)
      wake(q)
    elseif s == "scheduled" or s == "retrying" then
      redis.call("ZADD", dkey(q), f.ra, id)
      wake(q)
    elseif s == "running" then
      redis.call("ZADD", RUN, f.le or num(now), id)
      redis.call("HINCRBY", RB, "queue:" .. q, 1)
      redis.call("HINCRBY", RB, "task:" .. f.n, 1)
    elseif s == "waiting" and f.dp then
      table.insert(waiting, {id, f.dp})
    end
    if s == "failed" then redis.call("ZADD", DLQ, 0, id) end
    -- finish.lua keeps two minutes of P:fin (stats count the last one): older finishes stay out
    if TERMINAL[s] and f.fa and tonumber(f.fa) >= now - 120 then redis.call("ZADD", FIN, f.fa, id) end
    stored = stored + 1
  end
end
for _, w in ipairs(waiting) do
  local id, open = w[1], {}
  for _, dep in ipairs(cjson.decode(w[2])) do
    local s = redis.call("HGET", tkey(dep), "s")
    if s and not TERMINAL[s] then open[dep] = true end
  end
  link(id, open)
end
publish()
return stored
