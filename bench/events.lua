-- wrk script for bench/events.sh: GET /recommendations/{user}?placement=PLACEMENT for users
-- drawn uniformly from [0, USERS), and for every response that carries a tracking token one
-- POST /events with an impression of each item of its page (event ids unique), so requests
-- alternate between the two. Each thread keeps the batches its responses made in a queue and
-- sends the oldest before the next GET. done() prints the events accepted and rejected.
local users = tonumber(os.getenv("USERS") or "1000000")
local placement = os.getenv("PLACEMENT") or "home"
local threads = {}

function setup(thread)
  thread:set("id", #threads)
  thread:set("seed", math.random(1, 2^31 - 1))
  table.insert(threads, thread)
end

local queue, head, tail = {}, 1, 0
local sent = 0
accepted, rejected, batches = 0, 0, 0

function init(args)
  math.randomseed(seed or os.time())
  -- unique across threads and runs: thread id, a random run tag, a counter
  prefix = "b" .. id .. "." .. math.random(1, 2^31 - 1) .. "."
end

function request()
  if head <= tail then
    local body = queue[head]
    queue[head] = nil
    head = head + 1
    return wrk.format("POST", "/events", {["Content-Type"] = "application/json"}, body)
  end
  local user = math.random(0, users - 1)
  return wrk.format("GET", "/recommendations/" .. user .. "?placement=" .. placement)
end

function response(status, headers, body)
  if not body then return end
  local token = body:match('"tracking_token":"([^"]+)"')
  if token then
    local events = {}
    for item in body:gmatch('"item_id":"([^"]+)"') do
      sent = sent + 1
      events[#events + 1] = '{"type":"impression","tracking_token":"' .. token .. '","item_id":"' .. item
        .. '","event_id":"' .. prefix .. sent .. '"}'
    end
    if #events > 0 then
      tail = tail + 1
      queue[tail] = '{"events":[' .. table.concat(events, ",") .. ']}'
    end
    return
  end
  local a = body:match('"accepted":(%d+)')
  if a then
    batches = batches + 1
    accepted = accepted + tonumber(a)
    rejected = rejected + tonumber(body:match('"rejected":(%d+)') or "0")
  end
end

function done(summary, latency, requests)
  local a, r, b = 0, 0, 0
  for _, t in ipairs(threads) do
    a = a + t:get("accepted")
    r = r + t:get("rejected")
    b = b + t:get("batches")
  end
  io.write(string.format("batches %d accepted %d rejected %d\n", b, a, r))
end
