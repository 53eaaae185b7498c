-- Check every charge of one reservation and add all of them, or none; remember the
-- reservation under its id with a lease deadline. Runs atomically on the server, so
-- concurrent gateways cannot interleave between the check and the add.
--
-- KEYS[1]  hash: rid -> payload             KEYS[2]  sorted set: rid by lease deadline
-- KEYS[3 ..]  counters: first the ones written (in the order of `writes`), then the ones
--             only summed (rolling-window buckets)
-- ARGV[1] rid, ARGV[2] lease deadline, ARGV[3] payload, ARGV[4] JSON {writes, checks, rules}:
--   writes: [[amount, ttl_ms], ...]  as strings, so INCRBY and PEXPIRE get them exactly;
--           ttl_ms <= 0 sets no expiry
--   checks: [[limit or false, added by this reservation, counter numbers...], ...] with
--           counter numbers 1-based from KEYS[3]
--   rules:  per check, false or its allowance (rollover, proration; limits/allowance.py):
--           [first-seen marker number, previous window counter number or 0, now, window
--            start, window end, prorate (0/1), previous window start, carry cap,
--            marker ttl_ms]
--
-- Returns {status, used_1 .. used_c, cap_1 .. cap_c, failed charge indexes (0-based) ...}
-- where status is 1 admitted, 0 refused (nothing written but missing first-seen
-- markers), 2 already held (nothing written, admitted; no caps). cap_i is the limit charge
-- i was held to (false: none). Sums are Lua numbers (doubles): exact up to 2^53.

local spec = cjson.decode(ARGV[4])
local writes, checks, rules = spec[1], spec[2], spec[3] or {}

-- limits/allowance.py, in the same floating-point order
local function prorated(amount, seen, start, finish)
  if seen <= start or finish <= start then
    return amount
  end
  if seen >= finish then
    return 0
  end
  return math.floor(amount * ((finish - seen) / (finish - start)))
end

local function first_seen(marker, now, start, used)
  if marker > 0 then
    return marker
  end
  if used > 0 then
    return math.floor(start)
  end
  return math.floor(now)
end

local values = {}
if #KEYS > 2 then
  local raw = redis.call('MGET', unpack(KEYS, 3))
  for i = 1, #KEYS - 2 do
    values[i] = tonumber(raw[i]) or 0
  end
end

local used, failed, caps, marks = {}, {}, {}, {}
for c, check in ipairs(checks) do
  local total = 0
  for j = 3, #check do
    total = total + values[check[j]]
  end
  used[c] = total
  local limit = check[1]
  local rule = rules[c]
  if rule then
    local marker = values[rule[1]]
    local seen = first_seen(marker, rule[3], rule[4], total)
    if marker <= 0 then
      marks[#marks + 1] = {rule[1], seen, rule[9]}
    else
      marks[#marks + 1] = {rule[1], false, rule[9]}
    end
    if limit then
      local own = limit
      if rule[6] == 1 then
        own = prorated(limit, seen, rule[4], rule[5])
      end
      if rule[8] > 0 and seen < rule[4] then
        local before = limit
        if rule[6] == 1 then
          before = prorated(limit, seen, rule[7], rule[4])
        end
        local previous = 0
        if rule[2] > 0 then
          previous = values[rule[2]]
        end
        own = own + math.max(0, math.min(rule[8], before - previous))
      end
      limit = own
    end
  end
  caps[c] = limit
  if limit and total + check[2] > limit then
    failed[#failed + 1] = c - 1
  end
end

local result = {1}
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then
  result[1] = 2
  for c, check in ipairs(checks) do
    result[c + 1] = used[c] - check[2]
  end
  return result
end
for c = 1, #checks do
  result[c + 1] = used[c]
  result[#checks + c + 1] = caps[c]
end
for _, mark in ipairs(marks) do
  local key = KEYS[2 + mark[1]]
  if mark[2] then
    redis.call('SET', key, string.format('%d', mark[2]), 'PX', mark[3])
  elseif redis.call('PTTL', key) < mark[3] then
    redis.call('PEXPIRE', key, mark[3])
  end
end
if #failed > 0 then
  result[1] = 0
  for i = 1, #failed do
    result[2 * #checks + 1 + i] = failed[i]
  end
  return result
end

for i, write in ipairs(writes) do
  local key = KEYS[2 + i]
  redis.call('INCRBY', key, write[1])
  local ttl = tonumber(write[2])
  if ttl > 0 and redis.call('PTTL', key) < ttl then
    redis.call('PEXPIRE', key, write[2])
  end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
return result
