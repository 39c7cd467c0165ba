-- wrk script: GET /recommendations/{user} for users drawn uniformly from [0, USERS).
-- USERS bounds the set (a small set stays hot in the caches); PLACEMENT names the placement.
-- With ASSIGNMENT set, GET /experiments/{ASSIGNMENT}/assignment/{user} instead.
local users = tonumber(os.getenv("USERS") or "1000")
local placement = os.getenv("PLACEMENT") or "bench"
local assignment = os.getenv("ASSIGNMENT")

function setup(thread)
  thread:set("seed", math.random(1, 2^31 - 1))
end

function init(args)
  math.randomseed(seed or os.time())
end

function request()
  local user = math.random(0, users - 1)
  if assignment then
    return wrk.format("GET", "/experiments/" .. assignment .. "/assignment/" .. user)
  end
  return wrk.format("GET", "/recommendations/" .. user .. "?placement=" .. placement)
end

-- wrk's --latency table stops at 99%; the script reports 99.9% itself, in milliseconds.
function done(summary, latency, requests)
  io.write(string.format("p999 %.3f\n", latency:percentile(99.9) / 1000))
end
