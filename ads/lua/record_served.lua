-- The ads placed on one page for one user, atomically: each ad is accepted only while the
-- user's count for its campaign today is under the campaign's frequency cap; an accepted ad
-- increments that count and appends its impression record. Both keys carry the user's hash
-- tag, so the script runs on one Redis Cluster slot, and concurrent pages of one user never
-- exceed a cap (the caller drops the refused ads from the page).
--
-- KEYS[1] today's caps (hash: campaign -> impressions)   KEYS[2] served impressions (list)
-- ARGV[1] TTL s   ARGV[2] served list cap   ARGV[3] n ads   ARGV[4] now ("": the server's clock)
-- ARGV[5..] per ad: campaign, frequency cap, item, price, bucket, trace id
-- Each record: JSON {ts, item, campaign, price, bucket, trace_id}.
-- Returns one 1 (placed) or 0 (cap reached) per ad, in order.

local n = tonumber(ARGV[3])
local ts = tonumber(ARGV[4])
if ts == nil then
  local now = redis.call("TIME")
  ts = tonumber(now[1]) + tonumber(now[2]) / 1e6
end
local placed = {}
local any = false
for i = 0, n - 1 do
  local at = 5 + 6 * i
  local campaign, cap = ARGV[at], tonumber(ARGV[at + 1])
  local count = tonumber(redis.call("HGET", KEYS[1], campaign) or "0")
  if count < cap then
    redis.call("HINCRBY", KEYS[1], campaign, 1)
    redis.call("RPUSH", KEYS[2], cjson.encode({
      ts = ts, item = tonumber(ARGV[at + 2]), campaign = tonumber(campaign), price = tonumber(ARGV[at + 3]),
      bucket = tonumber(ARGV[at + 4]), trace_id = ARGV[at + 5],
    }))
    placed[i + 1] = 1
    any = true
  else
    placed[i + 1] = 0
  end
end
if any then
  local ttl = tonumber(ARGV[1])
  redis.call("LTRIM", KEYS[2], -tonumber(ARGV[2]), -1)
  redis.call("EXPIRE", KEYS[1], ttl)
  redis.call("EXPIRE", KEYS[2], ttl)
end
return placed
