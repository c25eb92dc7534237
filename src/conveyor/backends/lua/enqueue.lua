-- enqueue.lua: store a batch of new tasks, all or nothing.
-- KEYS[1] = P.  ARGV: now, count, max_length JSON ({queue: bound}, "" none), then per task
-- (stride 13): id, name, queue, priority, run_at, created_at, initial state,
-- idempotency key ("" none), max_retries, requires JSON ("" none),
-- depends_on JSON ("" none), static JSON, workflow id ("" none).
-- Returns {"ok", id, state, created(1/0), ...} or {"err", code, detail...} with
-- nothing written (codes: exists, notfound, full).
local count, bounds, S = tonumber(ARGV[2]), {}, 13
if ARGV[3] ~= "" then bounds = cjson.decode(ARGV[3]) end
local existing, alias, batch_keys, planned, planned_ids = {}, {}, {}, {}, {}
for i = 1, count do
  local o = 3 + (i - 1) * S
  local id, q, ik = ARGV[o + 1], ARGV[o + 3], ARGV[o + 8]
  local first = false
  if ik ~= "" then first = batch_keys[q .. "\0" .. ik] or redis.call("HGET", ikey(q), ik) end
  if first then
    existing[i], alias[id] = first, first
  else
    if planned_ids[id] or redis.call("EXISTS", tkey(id)) == 1 then return {"err", "exists", id} end
    if ik ~= "" then batch_keys[q .. "\0" .. ik] = id end
    planned_ids[id] = true
    table.insert(planned, i)
  end
end
local deps, added = {}, {}
for _, i in ipairs(planned) do
  local o = 3 + (i - 1) * S
  local raw, q = ARGV[o + 11], ARGV[o + 3]
  added[q] = (added[q] or 0) + 1
  if raw ~= "" then
    local list = {}
    for _, dep in ipairs(cjson.decode(raw)) do
      dep = alias[dep] or dep
      if not planned_ids[dep] and redis.call("EXISTS", tkey(dep)) == 0 then
        return {"err", "notfound", dep, ARGV[o + 1]}
      end
      table.insert(list, dep)
    end
    deps[i] = list
  end
end
for q, k in pairs(added) do
  local bound = bounds[q]
  if bound then
    local unfinished = 0
    for _, n in ipairs(redis.call("HMGET", ckey(q), unpack(ACTIVE_STATES))) do unfinished = unfinished + (tonumber(n) or 0) end
    if unfinished + k > bound then return {"err", "full", q, tostring(bound)} end
  end
end
local at_now = now
for _, i in ipairs(planned) do
  local o = 3 + (i - 1) * S
  local id, q, state, ik, wf = ARGV[o + 1], ARGV[o + 3], ARGV[o + 7], ARGV[o + 8], ARGV[o + 13]
  local k = tkey(id)
  local p, ra = tonumber(ARGV[o + 4]), tonumber(ARGV[o + 5])
  redis.call("HSET", k, "s", state, "n", ARGV[o + 2], "q", q, "p", ARGV[o + 4], "ra", ARGV[o + 5],
    "ca", ARGV[o + 6], "ua", ARGV[o + 6], "a", 0, "mr", ARGV[o + 9], "d", ARGV[o + 12])
  if ARGV[o + 10] ~= "" then redis.call("HSET", k, "rq", ARGV[o + 10]) end
  if deps[i] then redis.call("HSET", k, "dp", cjson.encode(deps[i])) end
  if ik ~= "" then
    redis.call("HSET", k, "ik", ik)
    redis.call("HSET", ikey(q), ik, id)
  end
  if wf ~= "" then
    redis.call("HSET", k, "wf", wf)
    redis.call("ZADD", P .. ":wf:" .. wf, 0, id)
  end
  now = tonumber(ARGV[o + 6])
  history(id, state, "enqueue")
  now = at_now
  redis.call("ZADD", ALL, 0, id)
  redis.call("SADD", QUEUES, q)
  redis.call("HINCRBY", ckey(q), state, 1)
  if state == "pending" then
    redis.call("ZADD", rkey(q), num(score(p, ra)), id)
    wake(q)
  elseif state == "scheduled" then
    redis.call("ZADD", dkey(q), num(ra), id)
    wake(q)
  end
end
-- Link waiting tasks to their parents, or settle them against parents already done.
for _, i in ipairs(planned) do
  local o = 3 + (i - 1) * S
  local id = ARGV[o + 1]
  if ARGV[o + 7] == "waiting" then
    local t = get_task(id)
    local lost, open = nil, {}
    for _, dep in ipairs(deps[i]) do
      local s = redis.call("HGET", tkey(dep), "s")
      if (s == "failed" or s == "cancelled") and not lost then lost = {dep, s} end
      if s ~= "succeeded" then open[dep] = true end
    end
    if lost then
      redis.call("HSET", tkey(id), "fr", "dependency_failed")
      transition(id, t, "dependency_failed", nil, "dependency " .. lost[1] .. " " .. lost[2])
      settle(id, t)
    elseif next(open) == nil then
      transition(id, t, "deps_succeeded")
    else
      local n = 0
      for dep in pairs(open) do
        redis.call("SADD", depkey(dep), id)
        n = n + 1
      end
      redis.call("HSET", tkey(id), "wd", n)
    end
  end
end
local out = {"ok"}
for i = 1, count do
  local o = 3 + (i - 1) * S
  local id, state = existing[i] or ARGV[o + 1], ARGV[o + 7]
  if existing[i] or state == "waiting" then state = redis.call("HGET", tkey(id), "s") end -- may have moved on
  table.insert(out, id)
  table.insert(out, state)
  table.insert(out, existing[i] and 0 or 1)
end
publish()
return out
