-- finish.lua: record attempt outcomes, fenced by lease token, in one atomic step.
-- KEYS[1] = P.  ARGV: now, count, then per outcome (stride 8): id, lease token,
-- kind (complete/retry/fail), worker id ("" the holder), result JSON, error JSON
-- ("" none), run_at (retry) or failure reason (fail), finished_at.
-- Updates the breaker of each finished task name that has one, settles dependents.
-- Returns one 1 (applied) or 0 (stale lease: nothing written) per outcome.
local count, S, wall = tonumber(ARGV[2]), 8, now
local has_flow = redis.call("HLEN", FLOW) > 0
local out = {}
for i = 1, count do
  local o = 2 + (i - 1) * S
  local id, token, kind = ARGV[o + 1], ARGV[o + 2], ARGV[o + 3]
  local t = get_task(id)
  if t == nil or t.s ~= "running" or t.lt ~= token then
    out[i] = 0
  else
    now = tonumber(ARGV[o + 8])
    local worker = ARGV[o + 4]
    if worker == "" then worker = t.w end
    if has_flow then
      local raw = redis.call("HGET", FLOW, "task:" .. t.n)
      if raw then
        local c = decode_control(raw)
        if breaker_record(c, kind == "complete") then redis.call("HSET", FLOW, "task:" .. t.n, encode_control(c)) end
      end
    end
    local k = tkey(id)
    if kind == "complete" then
      transition(id, t, "complete", worker, nil, {"r", ARGV[o + 5]}, {"e"})
    elseif kind == "retry" then
      local err = ARGV[o + 6]
      if err ~= "" then redis.call("HSET", k, "e", err) end
      t.ra = tonumber(ARGV[o + 7])
      redis.call("HSET", k, "ra", ARGV[o + 7])
      local reason = nil
      if err ~= "" then
        local e = cjson.decode(err)
        reason = e.type .. ": " .. e.message
      end
      transition(id, t, "retry", worker, reason)
    else
      local sets = {"fr", ARGV[o + 7]}
      if ARGV[o + 6] ~= "" then sets = {"fr", ARGV[o + 7], "e", ARGV[o + 6]} end
      transition(id, t, "fail", worker, ARGV[o + 7], sets)
    end
    finish_step(id, t)
    out[i] = 1
  end
end
redis.call("ZREMRANGEBYSCORE", FIN, "-inf", "(" .. num(wall - 120)) -- stats only count the last minute
publish()
return out
