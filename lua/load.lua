#!lua
--[[
  load — rehydration's bulk writer: many hashes, sets or sorted sets in one call.
  Only `onhand rehydrate` uses it, on fenced partitions it has just emptied.

  KEYS[1], KEYS[2], …  the keys to write (all of one kind)
  ARGV[1] clock_ms (unused; common layout)
  ARGV[2] kind: 'hash' | 'set' | 'zset'
  hash:  ARGV[3] = n fields, ARGV[4..3+n] field names, then n values per key, in order
  set:   per key: m (1..4000), then m members
  zset:  per key: m (1..4000), then m pairs of score (ms, decimal) and member

  Returns {'OK', now_ms, keys_written}   {'BADARG', now_ms, i}
]]

local function main()
  start_clock()
  local kind = ARGV[2]
  local i = 3
  if kind == 'hash' then
    local n = arg_int(3, 1, 64)
    i = 4 + n
    if #ARGV ~= 3 + n + n * #KEYS then reject('BADARG', '3') end
    for k = 1, #KEYS do
      local args = {}
      for f = 1, n do
        args[#args + 1] = ARGV[3 + f]
        args[#args + 1] = ARGV[i]
        i = i + 1
      end
      redis.call('HSET', KEYS[k], unpack(args))
    end
  elseif kind == 'set' or kind == 'zset' then
    local width = (kind == 'set') and 1 or 2
    for k = 1, #KEYS do
      local m = arg_int(i, 1, 4000)
      local args = {}
      for j = i + 1, i + m * width do args[#args + 1] = ARGV[j] end
      if #args ~= m * width then reject('BADARG', fmt(i)) end
      if kind == 'set' then redis.call('SADD', KEYS[k], unpack(args))
      else redis.call('ZADD', KEYS[k], unpack(args)) end
      i = i + 1 + m * width
    end
    if i ~= #ARGV + 1 then reject('BADARG', '2') end
  else
    reject('BADARG', '2')
  end
  return {'OK', NOWS, fmt(#KEYS)}
end

return run(main)
