-- Forget a reservation and apply its deltas (actual - reserved), atomically; if the
-- reservation is unknown (already settled or claimed), change nothing.
--
-- KEYS[1] hash rid -> payload, KEYS[2] sorted set of leases, KEYS[3 ..] counters
-- ARGV[1] rid, ARGV[i - 1] the delta for KEYS[i]
-- Deltas for counters that no longer exist (their window ended) are dropped rather than
-- recreating the key without an expiry; a value that would go negative stops at zero.
-- Returns 1 if settled, 0 if the reservation was unknown.
-- Amounts stay exact: deltas arrive as decimal strings and INCRBY adds 64-bit integers;
-- only the sign of its answer is looked at here.

if redis.call('HDEL', KEYS[1], ARGV[1]) == 0 then
  return 0
end
redis.call('ZREM', KEYS[2], ARGV[1])
for i = 3, #KEYS do
  if redis.call('EXISTS', KEYS[i]) == 1 and redis.call('INCRBY', KEYS[i], ARGV[i - 1]) < 0 then
    redis.call('SET', KEYS[i], 0, 'KEEPTTL')
  end
end
return 1
