-- wrk script for the mixed scenario: users drawn Zipf-like (log-uniform, density ~ 1/rank) over
-- [0, USERS), and EVENT_RATE of the requests (default 5%) are POST /events carrying the
-- tracking token of an earlier response.
local users = tonumber(os.getenv("USERS") or "1000000")
local rate = tonumber(os.getenv("EVENT_RATE") or "0.05")
local placement = os.getenv("PLACEMENT") or "bench"
local token = nil
local sent = 0

function setup(thread)
  thread:set("seed", math.random(1, 2^31 - 1))
end

function init(args)
  math.randomseed(seed or os.time())
end

local function user()
  return math.floor(math.exp(math.random() * math.log(users))) - 1
end

function request()
  if token and math.random() < rate then
    sent = sent + 1
    local body = '{"events":[{"type":"impression","tracking_token":"' .. token .. '","item_id":"' .. sent .. '"}]}'
    return wrk.format("POST", "/events", {["Content-Type"] = "application/json"}, body)
  end
  return wrk.format("GET", "/recommendations/" .. user() .. "?placement=" .. placement)
end

function response(status, headers, body)
  local t = body and body:match('"tracking_token":"([^"]+)"')
  if t then
    token = t
  end
end

-- wrk's --latency table stops at 99%; the script reports 99.9% itself, in milliseconds.
function done(summary, latency, requests)
  io.write(string.format("p999 %.3f\n", latency:percentile(99.9) / 1000))
end
