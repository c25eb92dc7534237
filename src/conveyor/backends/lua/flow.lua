-- flow.lua: the claim gate and breakers of conveyor.features.flow, in Lua, so the
-- limits are read, spent and written back inside the claim's one atomic step.
-- Controls live in P:flow as FlowControl JSON plus the bucket's "burst" and
-- "refill" (tokens per second) that Python computes from the rate when storing them.

-- Numbers a script wrote travel as strings ("%.17g"): cjson keeps only 14 digits.
local FLOW_NUMBERS = {"tokens", "refilled_at", "burst", "refill", "opened_until", "breaker_cooldown",
  "concurrency", "failures", "breaker_threshold"}
local function decode_control(raw)
  local c = cjson.decode(raw)
  for _, f in ipairs(FLOW_NUMBERS) do
    if type(c[f]) == "string" then c[f] = tonumber(c[f]) end
  end
  return c
end

local function encode_control(c)
  for _, f in ipairs(FLOW_NUMBERS) do
    if type(c[f]) == "number" then c[f] = num(c[f]) end
  end
  return cjson.encode(c)
end

local function gate_wake(g, at) if g.wake == nil or at < g.wake then g.wake = at end end

local function tokens_at(c)
  if isnull(c.tokens) then return c.burst end
  return math.min(c.burst, c.tokens + math.max(0, now - (c.refilled_at or 0)) * c.refill)
end

local function gate_block(g, key)
  local kind, name = string.match(key, "^(%a+):(.*)$")
  if kind == "queue" then g.bq[name] = true else g.bn[name] = true end
end

local function open_budget(g, b, running)
  local c = b.c
  if c.paused == true then b.blocked = true return end
  if not isnull(c.concurrency) then b.room = c.concurrency - running end
  if not isnull(c.rate_limit) then
    b.tokens = tokens_at(c)
    if b.tokens < 1 then gate_wake(g, math.max(now, c.refilled_at or 0) + (1 - b.tokens) / c.refill) end
  end
  if c.breaker == "open" then
    if now < c.opened_until then
      gate_wake(g, c.opened_until)
      b.blocked = true
      return
    end
    b.probe = true
  end
  if c.breaker == "half_open" then b.probe = true end
  if b.probe and running > 0 then b.blocked = true end
  if b.room < 1 or b.tokens < 1 then b.blocked = true end
end

-- The gate of one claim, or nil when no control is stored (the plain, cheaper path).
local function gate_open()
  local raw = redis.call("HGETALL", FLOW)
  if #raw == 0 then return nil end
  local g = {budgets = {}, bq = {}, bn = {}, changed = {}, wake = nil}
  for i = 1, #raw, 2 do
    local key = raw[i]
    local b = {c = decode_control(raw[i + 1]), tokens = INF, room = INF, probe = false, blocked = false}
    g.budgets[key] = b
    open_budget(g, b, tonumber(redis.call("HGET", RB, key) or "0") or 0)
    if b.blocked then gate_block(g, key) end
  end
  return g
end

local function gate_take(g, q, name)
  if g.bq[q] or g.bn[name] then return false end
  for _, key in ipairs({"queue:" .. q, "task:" .. name}) do
    local b = g.budgets[key]
    if b then
      local c = b.c
      if b.tokens ~= INF then
        b.tokens = b.tokens - 1
        g.changed[key] = b
      end
      b.room = b.room - 1
      if b.probe then
        c.breaker = "half_open"
        g.changed[key] = b
        b.blocked = true
      end
      if b.room < 1 or b.tokens < 1 then
        b.blocked = true
        if b.tokens < 1 and not isnull(c.rate_limit) then gate_wake(g, now + (1 - b.tokens) / c.refill) end
      end
      if b.blocked then gate_block(g, key) end
    end
  end
  return true
end

local function gate_commit(g)
  for key, b in pairs(g.changed) do
    local c = b.c
    if b.tokens ~= INF then
      c.tokens = b.tokens
      c.refilled_at = math.max(now, c.refilled_at or 0)
    end
    redis.call("HSET", FLOW, key, encode_control(c))
  end
end

-- One finished attempt of a task name with a breaker (record_outcome in flow.py).
local function breaker_record(c, ok)
  if isnull(c.breaker_threshold) or c.breaker == "open" then return false end
  if ok then
    if c.breaker == "closed" and c.failures == 0 then return false end
    c.breaker, c.failures, c.opened_until = "closed", 0, cjson.null
    return true
  end
  c.failures = c.failures + 1
  if c.breaker == "half_open" or c.failures >= c.breaker_threshold then
    c.breaker, c.opened_until = "open", now + c.breaker_cooldown
  end
  return true
end
