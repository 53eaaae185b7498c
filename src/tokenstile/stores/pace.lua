-- Pace one throttle lane: count an arrival and, while the scope is throttled, give out its
-- next slot, or refuse without taking one. Mirrors ``pace_step`` in pacing.py line for line.
--
-- KEYS[1]  hash: 'f' earliest arrival observed, 'r' frozen rate, 'n' next free slot,
--          'b:<second>' arrivals in that second
-- ARGV[1] now (epoch seconds), ARGV[2] reduction ('' when not throttled: forget the pace),
-- ARGV[3] max wait (s), ARGV[4] ttl of the lane (ms), ARGV[5] observation window (s),
-- ARGV[6] minimum rate (per s)
--
-- Returns {admitted 1/0, wait, interval, queued, next slot}; the floats as strings.

local lane = KEYS[1]
local now = tonumber(ARGV[1])
local observation = tonumber(ARGV[5])
local min_rate = tonumber(ARGV[6])
local function num(x) return string.format('%.17g', x) end

local second = math.floor(now)
local fields = redis.call('HGETALL', lane)
local first, rate, nxt = nil, nil, 0
local count, oldest = 1, second
local stale = {}
for i = 1, #fields, 2 do
  local name, value = fields[i], fields[i + 1]
  if name == 'f' then first = tonumber(value)
  elseif name == 'r' then rate = tonumber(value)
  elseif name == 'n' then nxt = tonumber(value)
  else
    local bucket = tonumber(string.sub(name, 3))
    if bucket + 1 <= now - observation then
      stale[#stale + 1] = name
    else
      count = count + tonumber(value)
      if bucket < oldest then oldest = bucket end
    end
  end
end
if #stale > 0 then redis.call('HDEL', lane, unpack(stale)) end
redis.call('HINCRBY', lane, 'b:' .. second, 1)
if first == nil then
  first = now
elseif math.floor(first) < oldest then
  first = oldest
end
redis.call('HSET', lane, 'f', num(first))
redis.call('PEXPIRE', lane, ARGV[4])

if ARGV[2] == '' then
  redis.call('HDEL', lane, 'r', 'n')
  return {1, '0', '0', 0, '0'}
end
local reduction = tonumber(ARGV[2])
if rate == nil then
  local span = math.max(1, math.min(observation, now - first))
  rate = math.max(min_rate, count / span)
  redis.call('HSET', lane, 'r', num(rate))
end
local interval = 1 / math.max(min_rate, rate * reduction)
local queued = 0
if nxt > now then queued = math.max(0, math.ceil((nxt - now - 1e-6) / interval) - 1) end
local slot = math.max(now, nxt)
local wait = slot - now
if wait > tonumber(ARGV[3]) then
  return {0, num(wait), num(interval), queued, num(nxt)}
end
nxt = slot + interval
redis.call('HSET', lane, 'n', num(nxt))
return {1, num(wait), num(interval), queued, num(nxt)}
