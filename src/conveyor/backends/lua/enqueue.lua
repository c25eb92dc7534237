-- enqueue.lua: store a batch of new tasks, all or nothing.
-- KEYS[1] = P.  ARGV: now, count, max_length JSON ({queue: bound}, "" none), then per task
-- (stride 13): id, name, queue, priority, run_at, created_at, initial state,
-- idempotency key ("" none), max_retries, requires JSON ("" none),
-- depends_on JSON ("" none), static JSON, workflow id ("" none).
-- Returns {"ok", id, state, created(1/0), ...} or {"err", code, detail...} with
-- nothing written (codes: exists, notfound, full).
--
-- Cost: per task one HSET (every field at once) and one RPUSH (history); per batch one
-- EXISTS and one ZADD per index touched (in chunks of CHUNK), one HINCRBY per queue and
-- state, one PUBLISH per queue woken; SADD to P:queues only when a queue's counter for
-- that state was zero (a queue with a counted task is already listed: nothing removes
-- names from P:queues). Idempotency keys, dependencies and max_length add their reads.
-- One plain task (no key, dependency, workflow or bound: a typical one-by-one submit)
-- takes a short path with the same writes, without the batch bookkeeping (a third
-- of this script's time for one task).
local count, bounds, S = tonumber(ARGV[2]), {}, 13
local CHUNK = 500 -- keys or members per variadic call (unpack's stack is limited)

-- The hash and first history entry of the task whose ARGV slice starts after `o`.
local function write_task(o, extra)
  local id, state = ARGV[o + 1], ARGV[o + 7]
  redis.call("HSET", tkey(id), "s", state, "n", ARGV[o + 2], "q", ARGV[o + 3], "p", ARGV[o + 4], "ra", ARGV[o + 5],
    "ca", ARGV[o + 6], "ua", ARGV[o + 6], "a", 0, "mr", ARGV[o + 9], "d", ARGV[o + 12], unpack(extra))
  local at_now = now
  now = tonumber(ARGV[o + 6])
  history(id, state, "enqueue")
  now = at_now
end

if count == 1 and ARGV[3] == "" and ARGV[11] == "" and ARGV[14] == "" and ARGV[16] == ""
   and (ARGV[10] == "pending" or ARGV[10] == "scheduled") then
  local id, q, state = ARGV[4], ARGV[6], ARGV[10]
  if redis.call("EXISTS", tkey(id)) == 1 then return {"err", "exists", id} end
  write_task(3, ARGV[13] ~= "" and {"rq", ARGV[13]} or {})
  redis.call("ZADD", ALL, 0, id)
  if redis.call("HINCRBY", ckey(q), state, 1) == 1 then redis.call("SADD", QUEUES, q) end
  if state == "pending" then
    redis.call("ZADD", rkey(q), num(score(tonumber(ARGV[7]), tonumber(ARGV[8]))), id)
  else
    redis.call("ZADD", dkey(q), num(tonumber(ARGV[8])), id)
  end
  wake(q)
  publish()
  return {"ok", id, state, 1}
end
if ARGV[3] ~= "" then bounds = cjson.decode(ARGV[3]) end

-- Sorted-set members and counters are gathered, then written once per key (`flush`).
local zsets, zorder, counts, corder = {}, {}, {}, {}
local function zadd_later(key, score, member)
  local list = zsets[key]
  if not list then
    list = {}
    zsets[key] = list
    table.insert(zorder, key)
  end
  list[#list + 1] = score
  list[#list + 1] = member
end

-- Store task number i (its dependencies resolved in `dp`): hash, history, index entries.
local function place(i, dp)
  local o = 3 + (i - 1) * S
  local id, q, state, ik, wf = ARGV[o + 1], ARGV[o + 3], ARGV[o + 7], ARGV[o + 8], ARGV[o + 13]
  local extra = {}
  if ARGV[o + 10] ~= "" then extra[#extra + 1] = "rq"; extra[#extra + 1] = ARGV[o + 10] end
  if dp then extra[#extra + 1] = "dp"; extra[#extra + 1] = cjson.encode(dp) end
  if ik ~= "" then
    extra[#extra + 1] = "ik"; extra[#extra + 1] = ik
    redis.call("HSET", ikey(q), ik, id)
  end
  if wf ~= "" then
    extra[#extra + 1] = "wf"; extra[#extra + 1] = wf
    zadd_later(P .. ":wf:" .. wf, 0, id)
  end
  write_task(o, extra)
  zadd_later(ALL, 0, id)
  local by_state = counts[q]
  if not by_state then
    by_state = {}
    counts[q] = by_state
    table.insert(corder, q)
  end
  by_state[state] = (by_state[state] or 0) + 1
  if state == "pending" then
    zadd_later(rkey(q), num(score(tonumber(ARGV[o + 4]), tonumber(ARGV[o + 5]))), id)
    wake(q)
  elseif state == "scheduled" then
    zadd_later(dkey(q), num(tonumber(ARGV[o + 5])), id)
    wake(q)
  end
end

local function flush()
  for _, key in ipairs(zorder) do
    local list = zsets[key]
    for c = 1, #list, 2 * CHUNK do redis.call("ZADD", key, unpack(list, c, math.min(c + 2 * CHUNK - 1, #list))) end
  end
  for _, q in ipairs(corder) do
    local new_queue = false
    for state, n in pairs(counts[q]) do
      if redis.call("HINCRBY", ckey(q), state, n) == n then new_queue = true end
    end
    if new_queue then redis.call("SADD", QUEUES, q) end
  end
end

local existing, alias, batch_keys, planned, planned_ids, fresh = {}, {}, {}, {}, {}, {}
local repeated -- position of the first id given twice in the batch
for i = 1, count do
  local o = 3 + (i - 1) * S
  local id, q, ik = ARGV[o + 1], ARGV[o + 3], ARGV[o + 8]
  local first = false
  if ik ~= "" then first = batch_keys[q .. "\0" .. ik] or redis.call("HGET", ikey(q), ik) end
  if first then
    existing[i], alias[id] = first, first
  else
    if planned_ids[id] then repeated = i; break end
    if ik ~= "" then batch_keys[q .. "\0" .. ik] = id end
    planned_ids[id] = true
    table.insert(planned, i)
    table.insert(fresh, tkey(id))
  end
end
-- An id already stored is an error: the first one in batch order is reported.
local stored = 0
for c = 1, #fresh, CHUNK do stored = stored + redis.call("EXISTS", unpack(fresh, c, math.min(c + CHUNK - 1, #fresh))) end
if stored > 0 then
  for _, i in ipairs(planned) do
    local id = ARGV[3 + (i - 1) * S + 1]
    if redis.call("EXISTS", tkey(id)) == 1 then return {"err", "exists", id} end
  end
end
if repeated then return {"err", "exists", ARGV[3 + (repeated - 1) * S + 1]} end
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
for _, i in ipairs(planned) do place(i, deps[i]) end
flush()
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
      link(id, open)
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
