-- cancel.lua: cancel one non-terminal task (a running one loses its lease at once)
-- and fail its waiting dependents down the graph.
-- KEYS[1] = P.  ARGV: now, id, reason.  Returns {"ok"}, {"err", "notfound"} or
-- {"err", "state", <current state>}.
local id = ARGV[2]
local t = get_task(id)
if t == nil then return {"err", "notfound"} end
local old = t.s
if not transition(id, t, "cancel", nil, ARGV[3]) then return {"err", "state", t.s} end
if old == "waiting" then unlink(id, t) end
settle(id, t)
publish()
return {"ok"}
