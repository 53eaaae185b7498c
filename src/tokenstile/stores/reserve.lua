-- Check every charge of one reservation and add all of them, or none; remember the
-- reservation under its id with a lease deadline. Runs atomically on the server, so
-- concurrent gateways cannot interleave between the check and the add.
--
-- KEYS[1]  hash: rid -> payload             KEYS[2]  sorted set: rid by lease deadline
-- KEYS[3 ..]  counters: first the ones written (in the order of `writes`), then the ones
--             only summed (rolling-window buckets)
-- ARGV[1] rid, ARGV[2] lease deadline, ARGV[3] payload, ARGV[4] JSON {writes, checks}:
--   writes: [[amount, ttl_ms], ...]  as strings, so INCRBY and PEXPIRE get them exactly;
--           ttl_ms <= 0 sets no expiry
--   checks: [[limit or false, added by this reservation, counter numbers...], ...] with
--           counter numbers 1-based from KEYS[3]
--
-- Returns {status, used_1 .. used_c, failed charge indexes (0-based) ...} where status is
-- 1 admitted, 0 refused (nothing written), 2 already held (nothing written, admitted).
-- Sums are Lua numbers (doubles): exact up to 2^53.

local spec = cjson.decode(ARGV[4])
local writes, checks = spec[1], spec[2]

local values = {}
if #KEYS > 2 then
  local raw = redis.call('MGET', unpack(KEYS, 3))
  for i = 1, #KEYS - 2 do
    values[i] = tonumber(raw[i]) or 0
  end
end

local used, failed = {}, {}
for c, check in ipairs(checks) do
  local total = 0
  for j = 3, #check do
    total = total + values[check[j]]
  end
  used[c] = total
  if check[1] and total + check[2] > check[1] then
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
end
if #failed > 0 then
  result[1] = 0
  for i = 1, #failed do
    result[#checks + 1 + i] = failed[i]
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
