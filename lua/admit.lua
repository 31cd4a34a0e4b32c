#!lua
--[[
  admit — anti-hoarding admission for one API client: at most `limit` live holds.
  Not a stock operation: it changes no counter and emits no event. The API admits an
  order before `reserve` and withdraws it (`drop`) when the reserve fails, or when the
  hold is confirmed, released or expires (expired members age out by their score).
  (lua/hold.lua admits a new hold in the same call that reserves it.)

  KEYS[1]   ns:client:<client_id>:holds   zset  reservation id -> hold deadline_ms
  ARGV[1]   clock_ms ('0' = Redis TIME)
  ARGV[2]   mode: 'add' | 'drop'
  add:   ARGV[3] reservation id, ARGV[4] ttl_ms (1..86400000), ARGV[5] limit (1..10^9)
  drop:  ARGV[3] reservation id

  Returns {'OK', now_ms, live}              admitted (or already admitted; score raised)
          {'FULL', now_ms, retry_after_ms}  at the limit: the earliest hold's deadline
          {'BADARG', now_ms, i}   {'WRONGTYPE', now_ms}
]]

local function add(key, rid, deadline, limit)
  redis.call('ZREMRANGEBYSCORE', key, '-inf', '(' .. NOWS)
  local known = redis.call('ZSCORE', key, rid)
  if not known then
    local live = redis.call('ZCARD', key)
    if live >= limit then
      local first = redis.call('ZRANGE', key, '0', '0', 'WITHSCORES')
      return {'FULL', NOWS, fmt(math.max(0, tonumber(first[2]) - NOW))}
    end
  end
  if not known or tonumber(known) < deadline then
    redis.call('ZADD', key, fmt(deadline), rid)
  end
  redis.call('PEXPIREAT', key, fmt(math.max(deadline, redis.call('PEXPIRETIME', key))))
  return {'OK', NOWS, fmt(redis.call('ZCARD', key))}
end

local function main()
  start_clock()
  local mode = ARGV[2]
  local key = KEYS[1]
  want_type(key, 'zset')
  if mode == 'drop' then
    local rid = arg_id(3)
    redis.call('ZREM', key, rid)
    return {'OK', NOWS, fmt(redis.call('ZCARD', key))}
  end
  if mode ~= 'add' then reject('BADARG', '2') end
  local rid = arg_id(3)
  local deadline = NOW + arg_int(4, 1, MAX_TTL_MS)
  local limit = arg_int(5, 1, MAX_QTY)
  return add(key, rid, deadline, limit)
end

return run(main)
