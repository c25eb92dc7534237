-- wrk script: single submits (POST /tasks, one task per request) against `conveyor api`.
--   CONVEYOR_TOKEN=bench-token wrk -t2 -c32 -d10s --latency -s bench/wrk_submit.lua http://127.0.0.1:8000
-- Each request carries its own args ({"i": n}), so no two bodies are alike.
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local token = os.getenv("CONVEYOR_TOKEN")
if token and token ~= "" then
  wrk.headers["Authorization"] = "Bearer " .. token
end

local n = 0
request = function()
  n = n + 1
  return wrk.format(nil, "/tasks", nil, '{"name":"bench.noop","args":{"i":' .. n .. '}}')
end
