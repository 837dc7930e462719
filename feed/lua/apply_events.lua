-- One events batch of one user, atomically: the idempotency record, the capped history
-- append, the capped impression append and the relation updates. Every key shares the
-- user's hash tag, so the script runs on one Redis Cluster slot.
--
-- KEYS[1] idempotency record (hash: h = body hash, a = answer; used when ARGV[12] == "1")
-- KEYS[2] history (list)   KEYS[3] impressions (list)   KEYS[4] likes (zset)   KEYS[5] negatives (zset)
-- ARGV[1] body hash   ARGV[2] answer (JSON)   ARGV[3] idempotency TTL s   ARGV[4] history cap
-- ARGV[5] impression cap   ARGV[6] relation cap   ARGV[7] now (zset score)
-- ARGV[8] n history records   ARGV[9] n impression records   ARGV[10] n likes   ARGV[11] n negatives
-- ARGV[12] "1" when the batch has an Idempotency-Key
-- ARGV[13..] the history records, the impression records, the liked items, the negative items
-- Returns {"applied"|"replay"|"conflict", answer}.

if ARGV[12] == "1" then
  local prev = redis.call("HGET", KEYS[1], "h")
  if prev then
    if prev == ARGV[1] then
      return {"replay", redis.call("HGET", KEYS[1], "a")}
    end
    return {"conflict", ""}
  end
end

local nh, ni, nl, nn = tonumber(ARGV[8]), tonumber(ARGV[9]), tonumber(ARGV[10]), tonumber(ARGV[11])
local at = 13
if nh > 0 then
  redis.call("RPUSH", KEYS[2], unpack(ARGV, at, at + nh - 1))
  redis.call("LTRIM", KEYS[2], -tonumber(ARGV[4]), -1)
end
at = at + nh
if ni > 0 then
  redis.call("RPUSH", KEYS[3], unpack(ARGV, at, at + ni - 1))
  redis.call("LTRIM", KEYS[3], -tonumber(ARGV[5]), -1)
end
at = at + ni
local now = tonumber(ARGV[7])
for i = at, at + nl - 1 do
  redis.call("ZADD", KEYS[4], now, ARGV[i])
  redis.call("ZREM", KEYS[5], ARGV[i])
end
at = at + nl
for i = at, at + nn - 1 do
  redis.call("ZADD", KEYS[5], now, ARGV[i])
  redis.call("ZREM", KEYS[4], ARGV[i])
end
local cap = tonumber(ARGV[6])
if nl > 0 then redis.call("ZREMRANGEBYRANK", KEYS[4], 0, -cap - 1) end
if nn > 0 then redis.call("ZREMRANGEBYRANK", KEYS[5], 0, -cap - 1) end

if ARGV[12] == "1" then
  redis.call("HSET", KEYS[1], "h", ARGV[1], "a", ARGV[2])
  redis.call("EXPIRE", KEYS[1], tonumber(ARGV[3]))
end
return {"applied", ARGV[2]}
