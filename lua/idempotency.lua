#!lua
--[[
  idempotency — the record behind one Idempotency-Key of one API client.
  Not a stock operation: no counter, no event. States: absent → pending (one request
  runs; its `token` owns the record for `lock_ms`) → done (status and body stored for
  `ttl_ms`, replayed to retries).

  KEYS[1]   ns:idem:<client_id>:<sha256 of the key>   string
  ARGV[1]   clock_ms (unused; common layout)
  ARGV[2]   mode: 'begin' | 'finish' | 'abandon'
  begin:    ARGV[3] fingerprint, ARGV[4] token, ARGV[5] lock_ms (1..86400000)
  finish:   ARGV[3] token, ARGV[4] stored record, ARGV[5] ttl_ms (1..2^53-1)
  abandon:  ARGV[3] token

  Record values: 'P|<fingerprint>|<token>' (pending) or 'D|<fingerprint>|<json>' (done).
  lua/admit.lua mode `begin` does this script's `begin` for the reservation route (with
  the hold admission in the same call): keep the two in step.
  Returns begin:   {'NEW', now_ms}  or {'FOUND', now_ms, value}
          finish:  {'OK', now_ms}   or {'LOST', now_ms} (the lock expired and another
                   request owns the record now: nothing stored)
          abandon: {'OK', now_ms}   (the record is deleted if this token still owns it)
          {'BADARG', now_ms, i}   {'WRONGTYPE', now_ms}
]]

local function owns(value, token)
  return value and string.sub(value, 1, 2) == 'P|'
    and string.sub(value, -(#token + 1)) == '|' .. token
end

local function main()
  start_clock()
  local key, mode = KEYS[1], ARGV[2]
  want_type(key, 'string')
  local value = redis.call('GET', key)
  if mode == 'begin' then
    local fp, token = arg_text(3), arg_text(4)
    local lock_ms = arg_int(5, 1, MAX_TTL_MS)
    if value then return {'FOUND', NOWS, value} end
    redis.call('SET', key, 'P|' .. fp .. '|' .. token, 'PX', fmt(lock_ms))
    return {'NEW', NOWS}
  elseif mode == 'finish' then
    local token, record = arg_text(3), ARGV[4]
    local ttl_ms = arg_int(5, 1, MAX_STOCK)
    if type(record) ~= 'string' or string.sub(record, 1, 2) ~= 'D|' then
      reject('BADARG', '4')
    end
    if not owns(value, token) then return {'LOST', NOWS} end
    redis.call('SET', key, record, 'PX', fmt(ttl_ms))
    return {'OK', NOWS}
  elseif mode == 'abandon' then
    local token = arg_text(3)
    if owns(value, token) then redis.call('DEL', key) end
    return {'OK', NOWS}
  end
  reject('BADARG', '2')
end

return run(main)
