-- Remove and return reservations whose lease ended before ARGV[1], earliest first, at
-- most ARGV[2] of them. Their counters keep the reserved amounts.
--
-- KEYS[1] hash rid -> payload, KEYS[2] sorted set of leases
-- Returns {rid_1, payload_1, rid_2, payload_2, ...}

local rids = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', '(' .. ARGV[1], 'LIMIT', 0, ARGV[2])
local out = {}
for _, rid in ipairs(rids) do
  local payload = redis.call('HGET', KEYS[1], rid)
  redis.call('HDEL', KEYS[1], rid)
  redis.call('ZREM', KEYS[2], rid)
  if payload then
    out[#out + 1] = rid
    out[#out + 1] = payload
  end
end
return out
