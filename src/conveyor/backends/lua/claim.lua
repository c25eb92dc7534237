-- claim.lua: lease up to `limit` ready tasks in claim order, in one atomic step.
-- KEYS[1] = P.  ARGV: now, worker id, limit, lease seconds, lease token base,
-- aging interval ("" off), worker tags JSON array, then the queue names (none: all).
-- First promotes due scheduled/retrying tasks, then merges the queues' ready sets
-- (one stream per queue, or per queue and priority level with aging, each already
-- in claim order) and offers each head to the tag check and the flow gate.
-- Returns {next_due or "", then per task: id, name, queue, priority, attempts,
-- max_retries, run_at, created_at, lease token, static JSON, workflow id}.
local worker, limit, lease = ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local token_base, aging = ARGV[5], tonumber(ARGV[6])
local tags = {}
for _, tag in ipairs(cjson.decode(ARGV[7])) do tags[tag] = true end
local queues = {}
for i = 8, #ARGV do table.insert(queues, ARGV[i]) end
if #queues == 0 then
  queues = redis.call("SMEMBERS", QUEUES)
  table.sort(queues)
end
local SCAN_MAX = 5000 -- candidates looked at per claim (tasks skipped for tags or limits)

quiet = true
for _, q in ipairs(queues) do
  for _, id in ipairs(redis.call("ZRANGEBYSCORE", dkey(q), "-inf", num(now), "LIMIT", 0, 1000)) do
    local t = get_task(id)
    if t then transition(id, t, "due") end
  end
end
quiet = false

local gate = gate_open()
local chunk = math.min(math.max(limit, 16), 500)

-- A stream walks one score range of one ready set, a chunk at a time.
local streams = {}
local function add_stream(q, lo, hi)
  table.insert(streams, {q = q, key = rkey(q), lo = lo, hi = hi, off = 0, buf = {}, pos = 1, done = false})
end
for _, q in ipairs(queues) do
  if not (gate and gate.bq[q]) then
    if aging then
      for level = 10, 0, -1 do add_stream(q, num((10 - level) * 1e10), "(" .. num((11 - level) * 1e10)) end
    else
      add_stream(q, "-inf", "+inf")
    end
  end
end

local function head(s)
  if s.pos > #s.buf then
    if s.done then return nil end
    local raw = redis.call("ZRANGEBYSCORE", s.key, s.lo, s.hi, "WITHSCORES", "LIMIT", s.off, chunk)
    s.off, s.buf, s.pos = s.off + #raw / 2, {}, 1
    if #raw < 2 * chunk then s.done = true end
    for i = 1, #raw, 2 do
      local sc = tonumber(raw[i + 1])
      local p = 10 - math.floor(sc / 1e10)
      local ra = sc - (10 - p) * 1e10
      local eff = p
      if aging and now > ra then
        local steps = (now - ra) / aging
        if math.abs(steps - math.floor(steps + 0.5)) < 1e-3 then -- near a step: the score rounds run_at
          ra = tonumber(redis.call("HGET", tkey(raw[i]), "ra"))
          steps = (now - ra) / aging
        end
        if steps > 0 then eff = math.min(10, p + math.floor(steps)) end
      end
      table.insert(s.buf, {id = raw[i], eff = eff, ra = ra})
    end
    if #s.buf == 0 then return nil end
  end
  return s.buf[s.pos]
end

local function before(a, b)
  if a.eff ~= b.eff then return a.eff > b.eff end
  if a.ra ~= b.ra then return a.ra < b.ra end
  return a.id < b.id
end

local function tags_ok(rq)
  if not rq then return true end
  for _, tag in ipairs(cjson.decode(rq)) do
    if not tags[tag] then return false end
  end
  return true
end

local out = {""}
local taken, looked = 0, 0
while taken < limit and looked < SCAN_MAX do
  local best, best_h = nil, nil
  for _, s in ipairs(streams) do
    if not (gate and gate.bq[s.q]) then
      local h = head(s)
      if h and (best_h == nil or before(h, best_h)) then best, best_h = s, h end
    end
  end
  if best == nil then break end
  best.pos = best.pos + 1
  looked = looked + 1
  local id = best_h.id
  local f = redis.call("HMGET", tkey(id), "s", "q", "n", "p", "ra", "a", "mr", "ca", "rq", "d", "wf")
  if f[1] == "pending" and tags_ok(f[9]) and (gate == nil or gate_take(gate, f[2], f[3])) then
    taken = taken + 1
    local t = {s = f[1], q = f[2], n = f[3], p = tonumber(f[4]), ra = tonumber(f[5]), le = now + lease}
    local attempts, token = tonumber(f[6]) + 1, token_base .. taken
    transition(id, t, "claim", worker, nil, {"a", attempts, "sa", num(now), "w", worker, "lt", token, "le", num(t.le)})
    for _, v in ipairs({id, f[3], f[2], f[4], attempts, f[7], f[5], f[8], token, f[10], f[11] or ""}) do
      table.insert(out, v)
    end
  end
end
if gate then gate_commit(gate) end

local due = gate and gate.wake or nil
for _, q in ipairs(queues) do
  local first = redis.call("ZRANGE", dkey(q), 0, 0, "WITHSCORES")
  if #first == 2 then
    local at = tonumber(first[2])
    if due == nil or at < due then due = at end
  end
end
if due then out[1] = num(due) end
publish()
return out
