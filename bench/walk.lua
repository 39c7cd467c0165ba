-- wrk script for bench/users-memory.sh: GET /recommendations/{user}?placement=PLACEMENT for
-- users FIRST, FIRST + 1, ... up to FIRST + USERS - 1, each once: the ids are split into one
-- range per THREADS thread, walked in order. Past its range a thread asks for /ready (a request
-- that serves no user) until every answer of its range is in, then stops and, with DONE_DIR
-- set, leaves a file DONE_DIR/walked-{thread} there: wrk itself runs until -d or a SIGINT, so
-- the caller interrupts it once every thread's file is there. done() prints the users answered.
local first = tonumber(os.getenv("FIRST") or "0")
local users = tonumber(os.getenv("USERS") or "1000000")
local nthreads = tonumber(os.getenv("THREADS") or "1")
local placement = os.getenv("PLACEMENT") or "home"
local done_dir = os.getenv("DONE_DIR")
local threads = {}

function setup(thread)
  thread:set("id", #threads)
  table.insert(threads, thread)
end

walked = 0

function init(args)
  local per = math.ceil(users / nthreads)
  next_user = first + id * per
  last_user = math.min(first + (id + 1) * per, first + users) - 1
  range = math.max(last_user - next_user + 1, 0)
end

-- wrk calls the first thread's request() once before any connection, to check the request it
-- makes: that call takes no user.
local checked = false

function request()
  if id == 0 and not checked then
    checked = true
    return wrk.format("GET", "/ready")
  end
  if next_user > last_user then
    return wrk.format("GET", "/ready")
  end
  local user = next_user
  next_user = next_user + 1
  return wrk.format("GET", "/recommendations/" .. user .. "?placement=" .. placement)
end

function response(status, headers, body)
  if status == 200 and body and body:find('"tracking_token"', 1, true) then
    walked = walked + 1
    if walked >= range then
      if done_dir then io.open(done_dir .. "/walked-" .. id, "w"):close() end
      wrk.thread:stop()
    end
  end
end

function done(summary, latency, requests)
  local w = 0
  for _, t in ipairs(threads) do w = w + t:get("walked") end
  io.write(string.format("walked %d\n", w))
end
