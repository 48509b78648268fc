"""The Lua scripts of :class:`~.stores.RedisJobStore`: each store operation is one atomic script.

Keys of one job (one Redis Cluster slot): the lease (``SET NX PX``, value = the holder's token),
the replay record, and the parties hash of a shared (handed-off) lease, with a field
``p:<party>`` per party still holding it and, once a party left them, ``record``, ``rttl`` and
``failed``. The hash always expires with the lease.
"""

from __future__ import annotations

__all__ = ["CLAIM", "LEAVE", "RENEW", "SHARE"]

# KEYS[1] = lease key, KEYS[2] = replay record key, KEYS[3] = parties hash; ARGV[1] = value,
# ARGV[2] = ttl ms, ARGV[3] = "1" to look for a replay record first.
CLAIM = """
if ARGV[3] == '1' then
  local done = redis.call('GET', KEYS[2])
  if done then return {2, done} end
end
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  redis.call('DEL', KEYS[3])
  return {1, ''}
end
local holder = redis.call('GET', KEYS[1])
return {0, holder or ''}
"""

# KEYS[1] = lease key, KEYS[2] = parties hash; ARGV[1] = value, ARGV[2] = ttl ms, ARGV[3] = a
# party that starts renewing the lease (adopts it), or ''. 1 = renewed, 2 = re-taken (it had
# expired and nobody held it: its parties are forgotten), 0 = not ours.
RENEW = """
local cur = redis.call('GET', KEYS[1])
if cur == ARGV[1] then
  if ARGV[3] ~= '' and redis.call('HEXISTS', KEYS[2], 'p:' .. ARGV[3]) == 1 then
    redis.call('HSET', KEYS[2], 'p:' .. ARGV[3], '1')
  end
  redis.call('PEXPIRE', KEYS[2], ARGV[2])
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if not cur then
  redis.call('DEL', KEYS[2])
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 2
end
return 0
"""

# KEYS[1] = lease key, KEYS[2] = parties hash; ARGV[1] = value, ARGV[2] = keep ttl ms, ARGV[3] =
# the calling party (it renews the lease), ARGV[4..] = parties that have not adopted it yet.
# Fields: "p:<party>" = '1' while that party renews the lease, '0' before it adopted it; "keep"
# = how long the lease lives once only parties that have not adopted it are left; and "record",
# "rttl", "failed" once a party left them.
SHARE = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[2], 'p:' .. ARGV[3], '1')
for i = 4, #ARGV do redis.call('HSET', KEYS[2], 'p:' .. ARGV[i], '0') end
if tonumber(redis.call('HGET', KEYS[2], 'keep') or '0') < tonumber(ARGV[2]) then
  redis.call('HSET', KEYS[2], 'keep', ARGV[2])
end
local ttl = redis.call('PTTL', KEYS[1])
if ttl > 0 then redis.call('PEXPIRE', KEYS[2], ttl) end
return 1
"""

# KEYS[1] = lease key, KEYS[2] = replay record key, KEYS[3] = parties hash; ARGV[1] = value,
# ARGV[2] = record or '', ARGV[3] = replay ttl ms, ARGV[4] = party or '', ARGV[5] = '1' when
# this party failed. 0 = not ours (nothing changed), 1 = freed, 2 = left (other parties still
# hold it; if none of them renews it, it lives "keep" ms more).
LEAVE = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
local record, rttl, failed = ARGV[2], ARGV[3], ARGV[5] == '1'
if ARGV[4] ~= '' and redis.call('EXISTS', KEYS[3]) == 1 then
  if failed then redis.call('HSET', KEYS[3], 'failed', '1') end
  if record ~= '' then redis.call('HSET', KEYS[3], 'record', record, 'rttl', rttl) end
  redis.call('HDEL', KEYS[3], 'p:' .. ARGV[4])
  local rest, renewing = 0, false
  local fields = redis.call('HGETALL', KEYS[3])
  for i = 1, #fields, 2 do
    if string.sub(fields[i], 1, 2) == 'p:' then
      rest = rest + 1
      if fields[i + 1] == '1' then renewing = true end
    end
  end
  if rest > 0 then
    local keep = redis.call('HGET', KEYS[3], 'keep') or '0'
    if not renewing and tonumber(keep) > 0 then
      redis.call('PEXPIRE', KEYS[1], keep)
      redis.call('PEXPIRE', KEYS[3], keep)
    end
    return 2
  end
  record = redis.call('HGET', KEYS[3], 'record') or ''
  rttl = redis.call('HGET', KEYS[3], 'rttl') or '0'
  failed = redis.call('HEXISTS', KEYS[3], 'failed') == 1
end
if record ~= '' and tonumber(rttl) > 0 and not failed then
  redis.call('SET', KEYS[2], record, 'PX', rttl)
end
redis.call('DEL', KEYS[1], KEYS[3])
return 1
"""
