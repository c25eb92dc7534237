-- lib.lua: helpers every Conveyor operation uses (conveyor.backends.redis_scripts puts
-- this file first, after the generated transition table TRANS_SRC/TRANS_DST/TERMINAL from
-- conveyor.states, so Lua never keeps a second copy of the state machine). It is loaded
-- once as a Redis Functions library, or (older servers) sent before each script.
-- Nothing here may run a command or use a library (string, math, cjson) at load time,
-- and every operation starts with init(KEYS, ARGV): the per-call state below is set
-- there, never left from an earlier call.
--
-- Keyspace (P = KEYS[1] = "{prefix}": the hash tag puts every key of one Conveyor
-- store in one Redis Cluster slot, so each script runs on one node):
--   P:t:<id>      hash   one task: s state, q queue, n name, p priority, ra run_at,
--                        ca created_at, ua updated_at, a attempts, mr max_retries,
--                        rq requires (JSON, absent if none), dp depends_on (JSON),
--                        ik idempotency key, wf workflow id, d static JSON (args,
--                        labels, timeout, retry, workflow_key, headers), w worker, lt lease
--                        token, le lease expiry, sa started_at, fa finished_at,
--                        r result JSON, e error JSON, fr failure reason,
--                        wd parents still unfinished (waiting tasks)
--   P:h:<id>      list   history entries, JSON [at, state, transition, worker, reason]
--   P:r:<queue>   zset   pending ids, score (10 - priority) * 1e10 + run_at, ties by id
--   P:d:<queue>   zset   scheduled/retrying ids by run_at
--   P:c:<queue>   hash   state -> number of tasks (max_length, listings, stats)
--   P:i:<queue>   hash   idempotency key -> task id
--   P:dep:<id>    set    ids of waiting tasks that depend on <id>
--   P:wf:<id>     zset   ids of one workflow's tasks (score 0, lexical order)
--   P:queues      set    every queue name ever used
--   P:all         zset   every task id (score 0, lexical = time order)
--   P:dlq         zset   failed task ids (score 0)
--   P:running     zset   running ids by lease expiry (the reaper's index)
--   P:rb          hash   "queue:<name>" / "task:<name>" -> running tasks
--   P:fin         zset   recently finished ids by finished_at (stats, last minute)
--   P:flow        hash   "queue:<name>" / "task:<name>" -> FlowControl JSON
--   P:workers     hash   worker id -> WorkerInfo JSON;  P:beats  hash  id -> last heartbeat
--   P:wake        pub/sub channel: a queue name (or "*") that gained ready or delayed work
--   P:obs         set    outbox events subscribed to (conveyor.notify)
--   P:obn         string the last outbox event number
--   P:obq         zset   outbox event ids (20-digit numbers) by when they are due
--   P:ob:<id>     hash   one outbox event: ev event, t task id, wf workflow id, q queue,
--                        n name, s state, a attempt, at time, dl deliveries, dn done
--                        targets (JSON), r result JSON, e error JSON
--   P:obw         hash   workflow id -> its undelivered workflow.finished event id
--   P:mt          hash   metric totals (MetricStore: written by redis_admin, no script;
--                        purge and replay add to PURGED_KEY and REPLAYED_KEY)
--   P:bounds      hash   queue -> max_length set at run time (read by submitters)

local P, now -- KEYS[1] and ARGV[1] of the running call
local ALL, DLQ, RUN, RB, FIN, FLOW, QUEUES, WAKE
local OBS, OBQ, OBN, OBW
local woken, quiet, subscribed -- queues to wake, whether to, the outbox subscriptions
local INF = 1 / 0
-- conveyor.backends.base.PURGED_KEY / REPLAYED_KEY (a contract test reads them back)
local PURGED_KEY, REPLAYED_KEY = '["purged",[],""]', '["replayed",[],""]'
local ACTIVE_STATES = {"waiting", "scheduled", "pending", "running", "retrying"}

local function init(keys, argv)
  P, now = keys[1], tonumber(argv[1])
  ALL, DLQ, RUN, RB, FIN = P .. ":all", P .. ":dlq", P .. ":running", P .. ":rb", P .. ":fin"
  FLOW, QUEUES, WAKE = P .. ":flow", P .. ":queues", P .. ":wake"
  OBS, OBQ, OBN, OBW = P .. ":obs", P .. ":obq", P .. ":obn", P .. ":obw"
  woken, quiet, subscribed = {}, false, nil -- subscriptions: read on first need (SMEMBERS)
end

local function num(x) return string.format("%.17g", x) end
local function tkey(id) return P .. ":t:" .. id end
local function hkey(id) return P .. ":h:" .. id end
local function rkey(q) return P .. ":r:" .. q end
local function dkey(q) return P .. ":d:" .. q end
local function ckey(q) return P .. ":c:" .. q end
local function ikey(q) return P .. ":i:" .. q end
local function depkey(id) return P .. ":dep:" .. id end
local function score(p, ra) return (10 - p) * 1e10 + ra end
local function isnull(v) return v == nil or v == cjson.null or v == false end
local function jstr(v) if v == nil or v == false or v == "" then return "null" end return cjson.encode(v) end

-- quiet: claims promote due tasks without waking other workers
local function wake(q) if not quiet then woken[q] = true end end
local function publish()
  for q in pairs(woken) do redis.call("PUBLISH", WAKE, q) end
end

-- The outbox: events recorded by transition() when subscribed (SMEMBERS once per call).
local function obkey(n) return P .. ":ob:" .. n end

local function add_event(ev, id, t, f)
  local n = string.format("%020d", redis.call("INCR", OBN))
  local fields = {"HSET", obkey(n), "ev", ev, "t", id, "q", t.q, "n", t.n, "s", t.s, "a", f[4] or "0",
                  "at", num(now), "dl", "0", "dn", "[]"}
  if f[1] then table.insert(fields, "wf"); table.insert(fields, f[1]) end
  if f[2] then table.insert(fields, "r"); table.insert(fields, f[2]) end
  if f[3] then table.insert(fields, "e"); table.insert(fields, f[3]) end
  redis.call(unpack(fields))
  redis.call("ZADD", OBQ, num(now), n)
  return n
end

-- Whether every task of workflow `wf` is terminal. Newest first, a page at a time: the
-- tasks added last (a DAG's leaves) finish last, so an unfinished one is usually found
-- at once instead of after reading every finished task on each of them.
local function workflow_done(wf)
  local key, from, PAGE = P .. ":wf:" .. wf, 0, 32
  repeat
    local ids = redis.call("ZREVRANGE", key, from, from + PAGE - 1)
    for _, tid in ipairs(ids) do
      local state = redis.call("HGET", tkey(tid), "s")
      if state and not TERMINAL[state] then return false end
    end
    from = from + PAGE
  until #ids < PAGE
  return true
end

-- Task `id` (fields `t`, already in state `new`) just moved from `old`: record the events
-- the subscriptions ask for (the OUTBOX_EVENTS rules of conveyor.backends.base).
local function record(id, t, old, new)
  if subscribed == nil then
    subscribed = {}
    for _, e in ipairs(redis.call("SMEMBERS", OBS)) do subscribed[e] = true end
  end
  if next(subscribed) == nil then return end
  local f = redis.call("HMGET", tkey(id), "wf", "r", "e", "a")
  if new == "succeeded" and subscribed["task.succeeded"] then add_event("task.succeeded", id, t, f) end
  if old == "running" and (new == "retrying" or new == "failed") and subscribed["task.failed"] then
    add_event("task.failed", id, t, f)
  end
  if new == "failed" and subscribed["task.dead_lettered"] then add_event("task.dead_lettered", id, t, f) end
  if new == "cancelled" and subscribed["task.cancelled"] then add_event("task.cancelled", id, t, f) end
  local wf = f[1]
  if wf and TERMINAL[new] and subscribed["workflow.finished"] and redis.call("HEXISTS", OBW, wf) == 0
     and workflow_done(wf) then
    redis.call("HSET", OBW, wf, add_event("workflow.finished", id, t, f))
  end
end

local function history(id, state, name, worker, reason)
  redis.call("RPUSH", hkey(id),
    "[" .. num(now) .. ',"' .. state .. '","' .. name .. '",' .. jstr(worker) .. "," .. jstr(reason) .. "]")
end

-- The fields transitions need, or nil if the task does not exist.
local function get_task(id)
  local f = redis.call("HMGET", tkey(id), "s", "q", "n", "p", "ra", "a", "mr", "lt", "w", "dp")
  if not f[1] then return nil end
  return {s = f[1], q = f[2], n = f[3], p = tonumber(f[4]), ra = tonumber(f[5]), a = tonumber(f[6]),
          mr = tonumber(f[7]), lt = f[8], w = f[9], dp = f[10]}
end

-- Move task `id` (fields in `t`) along transition `name` of conveyor.states; false if
-- its state does not allow it. Keeps every index and counter in step and appends history.
-- Entering `running` needs t.le (the lease expiry); entering pending/delayed uses t.ra.
-- `sets` (flat field/value list) and `dels` (field names) ride along in the same HSET/HDEL.
local function transition(id, t, name, worker, reason, sets, dels)
  if not string.find(TRANS_SRC[name], " " .. t.s .. " ", 1, true) then return false end
  local old, new, k = t.s, TRANS_DST[name], tkey(id)
  local hset = {"HSET", k, "s", new, "ua", num(now)}
  local hdel = {"HDEL", k}
  if old == "pending" then redis.call("ZREM", rkey(t.q), id)
  elseif old == "scheduled" or old == "retrying" then redis.call("ZREM", dkey(t.q), id)
  elseif old == "running" then
    redis.call("ZREM", RUN, id)
    redis.call("HINCRBY", RB, "queue:" .. t.q, -1)
    redis.call("HINCRBY", RB, "task:" .. t.n, -1)
    table.insert(hdel, "w"); table.insert(hdel, "lt"); table.insert(hdel, "le")
  end
  if old == "failed" then redis.call("ZREM", DLQ, id) end
  if TERMINAL[old] then redis.call("ZREM", FIN, id) end
  redis.call("HINCRBY", ckey(t.q), old, -1)
  redis.call("HINCRBY", ckey(t.q), new, 1)
  t.s = new
  if new == "pending" then
    redis.call("ZADD", rkey(t.q), num(score(t.p, t.ra)), id)
    wake(t.q)
  elseif new == "scheduled" or new == "retrying" then
    redis.call("ZADD", dkey(t.q), num(t.ra), id)
    wake(t.q)
  elseif new == "running" then
    redis.call("ZADD", RUN, num(t.le), id)
    redis.call("HINCRBY", RB, "queue:" .. t.q, 1)
    redis.call("HINCRBY", RB, "task:" .. t.n, 1)
  end
  if new == "failed" then redis.call("ZADD", DLQ, 0, id) end
  if TERMINAL[new] then
    table.insert(hset, "fa"); table.insert(hset, num(now))
    redis.call("ZADD", FIN, num(now), id)
  end
  if sets then for _, v in ipairs(sets) do table.insert(hset, v) end end
  if dels then for _, v in ipairs(dels) do table.insert(hdel, v) end end
  -- a field both set and deleted is meant to be set: delete first
  if #hdel > 2 then redis.call(unpack(hdel)) end
  redis.call(unpack(hset))
  history(id, new, name, worker, reason)
  if TERMINAL[new] or new == "retrying" then record(id, t, old, new) end
  return true
end

-- Waiting task `id` waits for the parents in the set `open`: listed in each one's
-- dependents, and counted in its wd (settle() counts down).
local function link(id, open)
  local n = 0
  for dep in pairs(open) do
    redis.call("SADD", depkey(dep), id)
    n = n + 1
  end
  redis.call("HSET", tkey(id), "wd", n)
end

-- Forget a waiting task in its parents' dependent sets (it left `waiting` another way).
local function unlink(id, t)
  if t.dp and t.dp ~= "" then
    for _, dep in ipairs(cjson.decode(t.dp)) do redis.call("SREM", depkey(dep), id) end
  end
end

-- A task just finished: wake its waiting children or fail them, down the graph.
local function settle(id, t)
  local stack = {{id, t}}
  while #stack > 0 do
    local top = table.remove(stack)
    local pid, pt = top[1], top[2]
    local kids = redis.call("SMEMBERS", depkey(pid))
    if #kids > 0 then
      redis.call("DEL", depkey(pid))
      table.sort(kids)
      for _, cid in ipairs(kids) do
        local c = get_task(cid)
        if c and c.s == "waiting" then
          if pt.s == "succeeded" then
            if redis.call("HINCRBY", tkey(cid), "wd", -1) <= 0 then
              transition(cid, c, "deps_succeeded")
            end
          else
            unlink(cid, c)
            redis.call("HSET", tkey(cid), "fr", "dependency_failed")
            transition(cid, c, "dependency_failed", nil, "dependency " .. pid .. " " .. pt.s)
            table.insert(stack, {cid, c})
          end
        end
      end
    end
  end
end

local function finish_step(id, t)
  if TERMINAL[t.s] then settle(id, t) end
end
