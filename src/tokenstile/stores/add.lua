-- Add amounts to counters unconditionally, extending (never shortening) their expiry.
--
-- KEYS[i] a counter, ARGV[2i - 1] its amount, ARGV[2i] its ttl in ms (<= 0: none)

for i = 1, #KEYS do
  local key = KEYS[i]
  redis.call('INCRBY', key, ARGV[2 * i - 1])
  local ttl = tonumber(ARGV[2 * i])
  if ttl > 0 and redis.call('PTTL', key) < ttl then
    redis.call('PEXPIRE', key, ttl)
  end
end
return #KEYS
