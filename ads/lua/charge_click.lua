-- One click charged to its campaign's spend for the day, atomically and once per event token.
-- Both keys carry the campaign's hash tag (one Redis Cluster slot): the click's user lives in
-- another slot, so the idempotency of the charge cannot lean on the user's events record.
-- Amounts are integer micro-units (exact sums; no float drift over a day of clicks).
--
-- KEYS[1] today's spend (hash: total, budget, h:HH per hour, and the pacing fields)
-- KEYS[2] today's charged tokens (set)
-- ARGV[1] token id   ARGV[2] price   ARGV[3] budget   ARGV[4] hour field   ARGV[5] TTL s
-- Returns {"charged"|"duplicate"|"exhausted", total spend after the call}.
--
-- The check (spend < budget) and the charge are one step, so concurrent clicks overspend a
-- budget by at most one click's price: the last click admitted under the budget.

local total = tonumber(redis.call("HGET", KEYS[1], "total") or "0")
if redis.call("SISMEMBER", KEYS[2], ARGV[1]) == 1 then
  return {"duplicate", total}
end
local budget = tonumber(ARGV[3])
redis.call("HSET", KEYS[1], "budget", budget)
if total >= budget then
  redis.call("EXPIRE", KEYS[1], tonumber(ARGV[5]))
  return {"exhausted", total}
end
local price = tonumber(ARGV[2])
total = redis.call("HINCRBY", KEYS[1], "total", price)
redis.call("HINCRBY", KEYS[1], ARGV[4], price)
redis.call("SADD", KEYS[2], ARGV[1])
local ttl = tonumber(ARGV[5])
redis.call("EXPIRE", KEYS[1], ttl)
redis.call("EXPIRE", KEYS[2], ttl)
return {"charged", total}
