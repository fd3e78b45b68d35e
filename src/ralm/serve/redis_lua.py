"""Lua scripts of the Redis seed store: each one runs atomically inside redis-server.

Key layout (``P`` is the store's key prefix, ``hex`` a seq as 16 hex digits)::

    P seq            string  last sequence number handed out (INCR)
    P nseeds         string  number of stored seeds, all items
    P z:<item>       zset    member hex+user, score ts: the item's seeds; the zset order
                             (score, then member bytes) is exactly (ts, seq)
    P u:<item>       hash    user -> hex+ts of that user's seed on the item
    P i:<item>       hash    n_seeds, first_seen, last_click, changed_seq, clustered_seq
    P items          zset    item, score first_seen: every item in (first_seen, id) order
    P dirty          set     items with changed_seq > clustered_seq
    P log            zset    member lp(item)+lp(user)+ts, score seq: the seed events
                             (lp(s) = byte length, ':', s), so reading it needs no lookup
    P ui:<user>      set     items the user is a seed of
    P users          hash    user -> JSON raw features
    P meta           hash    key -> JSON value
    P config         hash    max_seeds the store was created with

Timestamps travel as the client's ``repr(float)`` strings and are stored unchanged (scores
and ``last_click``), so they read back as the same doubles.
"""

from __future__ import annotations

ADD_CLICKS = """
local P = ARGV[1]
local N = tonumber(ARGV[2])
local now = ARGV[3]
local function lp(s) return #s .. ':' .. s end
local written = {}
local order = {}
for k = 4, #ARGV, 3 do
  local u, i, ts = ARGV[k], ARGV[k + 1], ARGV[k + 2]
  local tsn = tonumber(ts)
  local hk = P .. 'u:' .. i
  local zk = P .. 'z:' .. i
  local old = redis.call('HGET', hk, u)
  if not old or tsn > tonumber(string.sub(old, 17)) then
    local seq = redis.call('INCR', P .. 'seq')
    local hex = string.format('%016x', seq)
    if old then
      redis.call('ZREM', zk, string.sub(old, 1, 16) .. u)
      redis.call('ZREM', P .. 'log', lp(i) .. lp(u) .. string.sub(old, 17))
    end
    redis.call('ZADD', zk, ts, hex .. u)
    redis.call('HSET', hk, u, hex .. ts)
    redis.call('ZADD', P .. 'log', seq, lp(i) .. lp(u) .. ts)
    local w = written[i]
    if not w then
      w = {users = {}, new = {}, nnew = 0, maxts = tsn, maxts_s = ts}
      written[i] = w
      order[#order + 1] = i
    end
    if not old then
      w.new[u] = true
      w.nnew = w.nnew + 1
      redis.call('SADD', P .. 'ui:' .. u, i)
    end
    w.users[u] = seq
    if tsn > w.maxts then w.maxts = tsn; w.maxts_s = ts end
  end
end
local added = 0
for _, i in ipairs(order) do
  local w = written[i]
  local zk, hk, ik = P .. 'z:' .. i, P .. 'u:' .. i, P .. 'i:' .. i
  local n = redis.call('ZCARD', zk)
  local removed = {}
  local nremoved = 0
  if n > N then
    local gone = redis.call('ZRANGE', zk, 0, n - N - 1)
    for _, m in ipairs(gone) do
      local u = string.sub(m, 17)
      removed[u] = true
      local v = redis.call('HGET', hk, u)
      redis.call('ZREM', P .. 'log', lp(i) .. lp(u) .. string.sub(v, 17))
      redis.call('HDEL', hk, u)
      redis.call('SREM', P .. 'ui:' .. u, i)
    end
    nremoved = #gone
    redis.call('ZREMRANGEBYRANK', zk, 0, n - N - 1)
    n = N
  end
  redis.call('INCRBY', P .. 'nseeds', w.nnew - nremoved)
  local cs = 0
  for u, seq in pairs(w.users) do
    if not removed[u] then
      if seq > cs then cs = seq end
      if w.new[u] then added = added + 1 end
    end
  end
  if cs > 0 then
    if redis.call('EXISTS', ik) == 0 then
      redis.call('HSET', ik, 'first_seen', now, 'clustered_seq', 0, 'last_click', w.maxts_s)
      redis.call('ZADD', P .. 'items', now, i)
    elseif w.maxts > tonumber(redis.call('HGET', ik, 'last_click')) then
      redis.call('HSET', ik, 'last_click', w.maxts_s)
    end
    redis.call('HSET', ik, 'n_seeds', n, 'changed_seq', cs)
    if cs > tonumber(redis.call('HGET', ik, 'clustered_seq')) then
      redis.call('SADD', P .. 'dirty', i)
    end
  end
end
return added
"""

ITEMS = """
local P = ARGV[1]
local ids
if ARGV[2] == '1' then
  ids = redis.call('SMEMBERS', P .. 'dirty')
else
  ids = redis.call('ZRANGE', P .. 'items', 0, -1)
end
local out = {}
for _, i in ipairs(ids) do
  local v = redis.call('HMGET', P .. 'i:' .. i, 'n_seeds', 'first_seen', 'last_click',
                       'changed_seq', 'clustered_seq')
  out[#out + 1] = i
  for j = 1, 5 do out[#out + 1] = v[j] end
end
return out
"""

MARK_CLUSTERED = """
local P = ARGV[1]
for k = 2, #ARGV, 2 do
  local i = ARGV[k]
  local ik = P .. 'i:' .. i
  local v = redis.call('HMGET', ik, 'changed_seq', 'clustered_seq')
  if v[1] then
    local cl = math.max(tonumber(v[2]), tonumber(ARGV[k + 1]))
    redis.call('HSET', ik, 'clustered_seq', cl)
    if tonumber(v[1]) <= cl then redis.call('SREM', P .. 'dirty', i) end
  end
end
return 0
"""

MARK_ALL_CHANGED = """
local P = ARGV[1]
for _, i in ipairs(redis.call('ZRANGE', P .. 'items', 0, -1)) do
  local ik = P .. 'i:' .. i
  redis.call('HSET', ik, 'clustered_seq', 0)
  if tonumber(redis.call('HGET', ik, 'changed_seq')) > 0 then
    redis.call('SADD', P .. 'dirty', i)
  end
end
return 0
"""

# ARGV = prefix, item, t, item, t, ...: an item's first_seen becomes t where t is earlier
# (imported history: an item was first seen at its earliest click, not at import time)
EARLIER_FIRST_SEEN = """
local P = ARGV[1]
for j = 2, #ARGV, 2 do
  local ik = P .. 'i:' .. ARGV[j]
  local cur = redis.call('HGET', ik, 'first_seen')
  if cur and tonumber(ARGV[j + 1]) < tonumber(cur) then
    redis.call('HSET', ik, 'first_seen', ARGV[j + 1])
  end
end
return 0
"""
