#!lua flags=no-writes
--[[
  read — many reads in one call, behind the same fencing check as every write: a read
  never answers from a partition that is not open (Redis restarted, lost or rolled
  back data, or is being rebuilt). Used for availability reads: one atomic snapshot of
  many keys instead of a pipeline of one command per key.

  KEYS[1], …, KEYS[r]   the ready markers of the partitions read (r = ARGV[2])
  KEYS[r+1..]    the keys to read, one per character of the plan
  ARGV[1]        clock_ms ('0' = Redis TIME)
  ARGV[2]        r: how many ready markers lead KEYS (0..16384)
  ARGV[3]        plan: one character per key to read: 'h' HMGET of field list A,
                 'H' HMGET of field list B, 's' SMEMBERS
  ARGV[4]        n: fields in list A (0..64); ARGV[5..4+n] their names
  ARGV[5+n]      m: fields in list B (0..64); ARGV[6+n..5+n+m] their names

  Returns {'OK', now_ms, values_json}: values_json is one JSON array of strings holding,
  per key, 'h' / 'H' → its n / m field values ('' where absent); 's' → the member
  count, then the members. (One string instead of one reply element per value: a
  100-SKU read has thousands of values, and the caller decodes one string far faster
  than thousands of reply elements.)
          {'NOTREADY', now_ms}   {'BADARG', now_ms, i}
  A key of the wrong type fails the call with Redis's WRONGTYPE error: this script
  writes nothing, so there is nothing to check before a first write.
]]

local function main()
  start_clock()
  local r = arg_int(2, 0, 16384)
  local plan = ARGV[3]
  if type(plan) ~= 'string' or #plan ~= #KEYS - r or string.find(plan, '[^hHs]') then
    reject('BADARG', '3')
  end
  local n = arg_int(4, 0, 64)
  local m = arg_int(5 + n, 0, 64)
  if #ARGV ~= 5 + n + m then reject('BADARG', '4') end
  if n == 0 and string.find(plan, 'h', 1, true) then reject('BADARG', '4') end
  if m == 0 and string.find(plan, 'H', 1, true) then reject('BADARG', fmt(5 + n)) end
  local list_a, list_b = {}, {}
  for f = 1, n do list_a[f] = ARGV[4 + f] end
  for f = 1, m do list_b[f] = ARGV[5 + n + f] end
  for i = 1, r do require_ready(KEYS[i]) end
  local out, at = {}, 0
  local byte_h, byte_s = string.byte('h'), string.byte('s')
  for i = 1, #plan do
    local key, kind = KEYS[r + i], string.byte(plan, i)
    if kind == byte_s then
      local members = redis.call('SMEMBERS', key)
      out[at + 1] = fmt(#members)
      for j = 1, #members do out[at + 1 + j] = members[j] end
      at = at + 1 + #members
    else
      local list = kind == byte_h and list_a or list_b
      local v = redis.call('HMGET', key, unpack(list))
      for f = 1, #list do out[at + f] = v[f] or '' end
      at = at + #list
    end
  end
  return {'OK', NOWS, at == 0 and '[]' or cjson.encode(out)}
end

return run(main)
