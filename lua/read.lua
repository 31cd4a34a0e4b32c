#!lua flags=no-writes
--[[
  read — many reads in one call, behind the same fencing check as every write: a read
  never answers from a partition that is not open (Redis restarted, lost or rolled
  back data, or is being rebuilt). Used for availability reads: one call instead of a
  pipeline of one command per key.

  KEYS[1], …, KEYS[r]   the ready markers of the partitions read (r = ARGV[2])
  KEYS[r+1..]    the keys to read, one per character of the plan
  ARGV[1]        clock_ms ('0' = Redis TIME)
  ARGV[2]        r: how many ready markers lead KEYS (0..16384)
  ARGV[3]        plan: one character per key to read: 'h' HMGET of the fields below,
                 's' SMEMBERS
  ARGV[4]        n: how many hash fields (0..64); ARGV[5..4+n] their names

  Returns {'OK', now_ms, ...}: per key, 'h' → its n field values ('' where absent);
  's' → the member count, then the members.
          {'NOTREADY', now_ms}   {'BADARG', now_ms, i}   {'WRONGTYPE', now_ms}
]]

local function main()
  start_clock()
  local r = arg_int(2, 0, 16384)
  local plan = ARGV[3]
  if type(plan) ~= 'string' or #plan ~= #KEYS - r or string.find(plan, '[^hs]') then
    reject('BADARG', '3')
  end
  local n = arg_int(4, 0, 64)
  if #ARGV ~= 4 + n then reject('BADARG', '4') end
  local fields = {}
  for f = 1, n do fields[f] = ARGV[4 + f] end
  if n == 0 and string.find(plan, 'h') then reject('BADARG', '4') end
  for i = 1, r do require_ready(KEYS[i]) end
  for i = 1, #plan do
    want_type(KEYS[r + i], string.sub(plan, i, i) == 'h' and 'hash' or 'set')
  end
  local out = {'OK', NOWS}
  for i = 1, #plan do
    local key = KEYS[r + i]
    if string.sub(plan, i, i) == 'h' then
      local v = redis.call('HMGET', key, unpack(fields))
      for f = 1, n do out[#out + 1] = v[f] or '' end
    else
      local members = redis.call('SMEMBERS', key)
      out[#out + 1] = fmt(#members)
      for m = 1, #members do out[#out + 1] = members[m] end
    end
  end
  return out
end

return run(main)
