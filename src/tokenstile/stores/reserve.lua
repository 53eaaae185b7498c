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
--           limit and added as decimal strings and counter numbers 1-based from KEYS[3]
--   rules:  per check, false or its allowance (rollover, proration; limits/allowance.py):
--           [first-seen marker number, previous window counter number or 0, now, window
--            start, window end, prorate (0/1), previous window start, carry cap (a decimal
--            string), marker ttl_ms]
--
-- Returns {status, used_1 .. used_c, cap_1 .. cap_c, failed charge indexes (0-based) ...}
-- where status is 1 admitted, 0 refused (nothing written but missing first-seen
-- markers), 2 already held (nothing written, admitted; no caps). cap_i is the limit charge
-- i was held to (false: none). Each used_i and cap_i is a decimal string.
--
-- Exact arithmetic: Lua numbers are doubles, exact only up to 2^53 (about 9 million USD
-- in nano-USD). Counters are 64-bit integers in Redis (INCRBY is exact), so every amount
-- is read and passed as a decimal string and split into two doubles, hi * 10^9 + lo:
-- each part stays far below 2^53 for any 64-bit value and any number of summed buckets,
-- so sums and comparisons are exact up to 2^63 and beyond. Rollover (carry cap, the
-- previous window's usage) is two-part sums and comparisons too; proration multiplies by
-- a share that is itself a double, see `prorated` below.

local B = 1000000000
local P53 = 9007199254740992

-- A decimal string (or nil: 0) as {hi, lo}, both of its sign.
local function parse(text)
  if not text then
    return 0, 0
  end
  text = tostring(text)
  local sign = 1
  if string.sub(text, 1, 1) == '-' then
    sign, text = -1, string.sub(text, 2)
  end
  local n = #text
  if n <= 9 then
    return 0, sign * tonumber(text)
  end
  return sign * tonumber(string.sub(text, 1, n - 9)), sign * tonumber(string.sub(text, n - 8))
end

-- hi, lo with 0 <= lo < B (hi carries the sign).
local function norm(hi, lo)
  local carry = math.floor(lo / B)
  hi, lo = hi + carry, lo - carry * B
  while lo < 0 do hi, lo = hi - 1, lo + B end
  while lo >= B do hi, lo = hi + 1, lo - B end
  return hi, lo
end

local function add(a, b)
  local hi, lo = norm(a[1] + b[1], a[2] + b[2])
  return {hi, lo}
end

local function sub(a, b)
  local hi, lo = norm(a[1] - b[1], a[2] - b[2])
  return {hi, lo}
end

local function greater(a, b)
  return a[1] > b[1] or (a[1] == b[1] and a[2] > b[2])
end

local function text(a)
  local hi, lo = a[1], a[2]
  if hi == 0 then
    return string.format('%d', lo)
  end
  if hi > 0 then
    return string.format('%d%09d', hi, lo)
  end
  -- negative: -(hi * B + lo) = (-hi - 1) * B + (B - lo), or -hi * B when lo is 0
  if lo == 0 then
    return '-' .. string.format('%d%09d', -hi, 0)
  end
  local mhi, mlo = -hi - 1, B - lo
  if mhi == 0 then
    return '-' .. string.format('%d', mlo)
  end
  return '-' .. string.format('%d%09d', mhi, mlo)
end

local function number(value)
  local hi, lo = parse(value)
  hi, lo = norm(hi, lo)
  return {hi, lo}
end

local spec = cjson.decode(ARGV[4])
local writes, checks, rules = spec[1], spec[2], spec[3] or {}

-- limits/allowance.py `prorated`, in the same floating-point order, on a two-part amount
-- (0 or more). Below 2^53 the amount is one exact double and the cap is
-- floor(amount * share) as Python has it. From 2^53 on, one double product would be off by
-- up to hundreds of units, so it is taken in two parts: hi * share splits into its whole
-- part (exact) and a fraction that is scaled back to units and added to lo * share. Every
-- step is one IEEE double operation on values Python computes identically, so both agree
-- to the unit; the result is within about 10^3 units (10^-16 of the amount: the precision
-- of the share itself) of the exact product.
local function prorated(amount, seen, start, finish)
  if seen <= start or finish <= start then
    return amount
  end
  if seen >= finish then
    return {0, 0}
  end
  local share = (finish - seen) / (finish - start)
  local whole = amount[1] * B + amount[2]  -- exact below 2^53, at least 2^53 otherwise
  if whole < P53 then
    local hi, lo = norm(0, math.floor(whole * share))
    return {hi, lo}
  end
  local top = amount[1] * share
  local floor_top = math.floor(top)
  local rest = math.floor((top - floor_top) * B + amount[2] * share)
  local hi, lo = norm(floor_top, rest)
  return {hi, lo}
end

local function first_seen(marker, now, start, used)
  if marker > 0 then
    return marker
  end
  if used then
    return math.floor(start)
  end
  return math.floor(now)
end

local raw = {}
if #KEYS > 2 then
  raw = redis.call('MGET', unpack(KEYS, 3))
end

-- Fast path (charges without an allowance): up to 8 amounts of at most 15 characters sum
-- below 8 * 10^15 < 2^53, where doubles are exact; anything larger takes the two-part sums.
local function short(value)
  return not value or #value <= 15
end

local used, failed, caps, marks = {}, {}, {}, {}
for c, check in ipairs(checks) do
  local rule = rules[c]
  local fast = not rule and #check - 2 <= 8 and short(check[2])
    and (not check[1] or short(check[1]))
  for j = 3, #check do
    fast = fast and short(raw[check[j]] or nil)
  end
  if fast then
    local total = 0
    for j = 3, #check do
      total = total + (tonumber(raw[check[j]] or nil) or 0)
    end
    used[c] = {0, total}
    caps[c] = check[1]
    if check[1] and total + tonumber(check[2]) > tonumber(check[1]) then
      failed[#failed + 1] = c - 1
    end
  else
    local total = {0, 0}
    for j = 3, #check do
      total = add(total, number(raw[check[j]] or nil))
    end
    used[c] = total
    local limit = check[1] and number(check[1])
    if rule then
      local marker = tonumber(raw[rule[1]] or nil) or 0
      local seen = first_seen(marker, rule[3], rule[4], greater(total, {0, 0}))
      if marker <= 0 then
        marks[#marks + 1] = {rule[1], seen, rule[9]}
      else
        marks[#marks + 1] = {rule[1], false, rule[9]}
      end
      local cap = number(rule[8])
      if limit then
        local own = limit
        if rule[6] == 1 then
          own = prorated(limit, seen, rule[4], rule[5])
        end
        if greater(cap, {0, 0}) and seen < rule[4] then
          local before = limit
          if rule[6] == 1 then
            before = prorated(limit, seen, rule[7], rule[4])
          end
          local previous = {0, 0}
          if rule[2] > 0 then
            previous = number(raw[rule[2]] or nil)
          end
          -- max(0, min(cap, before - previous))
          local left = sub(before, previous)
          if greater(left, cap) then
            left = cap
          end
          if greater(left, {0, 0}) then
            own = add(own, left)
          end
        end
        limit = own
      end
    end
    caps[c] = limit and text(limit) or false
    if limit and greater(add(total, number(check[2])), limit) then
      failed[#failed + 1] = c - 1
    end
  end
end

local result = {1}
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then
  result[1] = 2
  for c, check in ipairs(checks) do
    result[c + 1] = text(sub(used[c], number(check[2])))
  end
  return result
end
for c = 1, #checks do
  result[c + 1] = text(used[c])
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
