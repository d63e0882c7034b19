"""The Lua scripts. Each opens with its KEYS/ARGV contract and reads time with redis TIME, never
from a node's clock, so clock skew between nodes cannot over-issue tokens or stretch leases.

redis-py's Script runs them by EVALSHA and loads them again on NOSCRIPT (after a restart or a
SCRIPT FLUSH)."""

SAVE_CONFIG = """
-- KEYS[1]: config hash (version, record)     KEYS[2]: leader lease key
-- ARGV[1]: expected version   ARGV[2]: fence "<node>:<token>" or ""   ARGV[3]: record
-- ARGV[4]: pub/sub channel   ARGV[5]: the lowest new version allowed (re-seeding after data loss)
-- Returns {1, new version} | {0, current version} on a conflict | {-1, current} if fenced out
local current = tonumber(redis.call('HGET', KEYS[1], 'version') or '0')
if ARGV[2] ~= '' and redis.call('GET', KEYS[2]) ~= ARGV[2] then
  return {-1, current}
end
if current ~= tonumber(ARGV[1]) then
  return {0, current}
end
local new = math.max(current + 1, tonumber(ARGV[5]))
redis.call('HSET', KEYS[1], 'version', new, 'record', ARGV[3])
redis.call('PUBLISH', ARGV[4], new)
return {1, new}
"""

HEARTBEAT = """
-- KEYS[1]: members hash (id -> record)   KEYS[2]: expiries hash (id -> ms)
-- ARGV[1]: node id   ARGV[2]: record   ARGV[3]: ttl in ms
-- Returns the Redis clock in ms
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('HSET', KEYS[2], ARGV[1], now + tonumber(ARGV[3]))
return now
"""

MEMBERS = """
-- KEYS[1]: members hash   KEYS[2]: expiries hash
-- Returns the records of members whose expiry is in the future; deletes the others
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local expiries = redis.call('HGETALL', KEYS[2])
local live = {}
for i = 1, #expiries, 2 do
  local id = expiries[i]
  if tonumber(expiries[i + 1]) <= now then
    redis.call('HDEL', KEYS[1], id)
    redis.call('HDEL', KEYS[2], id)
  else
    local record = redis.call('HGET', KEYS[1], id)
    if record then live[#live + 1] = record end
  end
end
return live
"""

ACQUIRE_LEASE = """
-- KEYS[1]: lease key   KEYS[2]: fencing counter
-- ARGV[1]: node id   ARGV[2]: ttl in ms
-- Returns the new fencing token, or 0 when someone holds the lease
if redis.call('EXISTS', KEYS[1]) == 1 then
  return 0
end
local token = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], ARGV[1] .. ':' .. token, 'NX', 'PX', ARGV[2])
return token
"""

RENEW_LEASE = """
-- KEYS[1]: lease key   ARGV[1]: "<node>:<token>"   ARGV[2]: ttl in ms
-- Returns 1 if the lease was still ours and now runs ttl longer, else 0
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""

RELEASE_LEASE = """
-- KEYS[1]: lease key   ARGV[1]: "<node>:<token>"
-- Returns 1 if the lease was ours and is now free, else 0
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""

TAKE_TOKENS = """
-- KEYS[1]: bucket hash (tokens, at)
-- ARGV[1]: refill rate, tokens per second   ARGV[2]: capacity
-- ARGV[3]: tokens wanted (negative: unused tokens given back)   ARGV[4]: idle expiry in ms
-- Returns {granted, tokens left x 1000, ms until one token is available}
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local rate = tonumber(ARGV[1]) / 1000
local capacity = tonumber(ARGV[2])
local want = tonumber(ARGV[3])
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(state[1]) or capacity
local at = tonumber(state[2]) or now
tokens = math.min(capacity, tokens + math.max(0, now - at) * rate)
local granted = want
if want > 0 then
  granted = math.min(want, math.floor(tokens))
end
tokens = math.min(capacity, tokens - granted)
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(now))
redis.call('PEXPIRE', KEYS[1], ARGV[4])
local wait = 0
if tokens < 1 then
  wait = math.ceil((1 - tokens) / rate)
end
return {math.max(granted, 0), math.floor(tokens * 1000), wait}
"""

SAVE_VERDICT = """
-- KEYS[1]: verdicts hash ("pool/backend" -> record)   KEYS[2]: leader lease key
-- ARGV[1]: field   ARGV[2]: record   ARGV[3]: fence "<node>:<token>" or ""   ARGV[4]: channel
-- Returns 1, or 0 when the fence is no longer the lease
if ARGV[3] ~= '' and redis.call('GET', KEYS[2]) ~= ARGV[3] then
  return 0
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('PUBLISH', ARGV[4], ARGV[1])
return 1
"""

REPORT_EJECTION = """
-- KEYS[1]: ejections hash ("pool/backend|node" -> expiry in ms)
-- ARGV[1]: field   ARGV[2]: ttl in ms
-- Returns the expiry written (Redis clock, ms)
local t = redis.call('TIME')
local expiry = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + tonumber(ARGV[2])
redis.call('HSET', KEYS[1], ARGV[1], expiry)
return expiry
"""

EJECTIONS = """
-- KEYS[1]: ejections hash
-- Returns the fields whose expiry is in the future; deletes the others
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local entries = redis.call('HGETALL', KEYS[1])
local live = {}
for i = 1, #entries, 2 do
  if tonumber(entries[i + 1]) <= now then
    redis.call('HDEL', KEYS[1], entries[i])
  else
    live[#live + 1] = entries[i]
  end
end
return live
"""
