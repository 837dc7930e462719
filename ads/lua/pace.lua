-- A campaign's new throttle, stored only if nobody stored one since it was read
-- (compare-and-set on its time): of the feed replicas that find it due in the same interval,
-- one writes and the others adopt its probability. The fields sit in the campaign's spend
-- hash for the day (its hash tag, one slot). ads/pacing.py computes the values.
--
-- KEYS[1] today's spend (hash)
-- ARGV[1] the time read ("" when none)   ARGV[2] p   ARGV[3] t   ARGV[4] spend at t (micro-units)
-- ARGV[5] spend EMA   ARGV[6] exposure EMA   ARGV[7] TTL s
-- Returns the probability in force.

local seen = redis.call("HGET", KEYS[1], "t") or ""
if seen ~= ARGV[1] then
  return redis.call("HGET", KEYS[1], "p")
end
redis.call("HSET", KEYS[1], "p", ARGV[2], "t", ARGV[3], "s", ARGV[4], "es", ARGV[5], "ex", ARGV[6])
redis.call("EXPIRE", KEYS[1], tonumber(ARGV[7]))
return ARGV[2]
