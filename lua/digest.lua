#!lua flags=no-writes
--[[
  digest — rehydration's verifier: a SHA-1 over the content of many keys, so Redis can
  be compared with the ledger without shipping every value back.

  KEYS[1], KEYS[2], …  the keys to read (all of one kind)
  ARGV[1] clock_ms (unused; common layout)
  ARGV[2] kind: 'hash' | 'set' | 'zset'
  hash: ARGV[3] = n, ARGV[4..3+n] field names (read with HMGET, absent = '')

  Each key contributes one line: hash — its field values joined by '|'; set — its
  members sorted, joined by '|'; zset — 'member=score' in rank order, joined by '|'.
  Lines are joined by '\n'. Returns {'OK', now_ms, sha1hex}   {'BADARG', now_ms, i}
]]

local function main()
  start_clock()
  local kind = ARGV[2]
  local lines = {}
  if kind == 'hash' then
    local n = arg_int(3, 1, 64)
    local fields = {}
    for f = 1, n do fields[f] = ARGV[3 + f] end
    for k = 1, #KEYS do
      local v = redis.call('HMGET', KEYS[k], unpack(fields))
      for f = 1, n do v[f] = v[f] or '' end
      lines[k] = table.concat(v, '|')
    end
  elseif kind == 'set' then
    for k = 1, #KEYS do
      local m = redis.call('SMEMBERS', KEYS[k])
      table.sort(m)
      lines[k] = table.concat(m, '|')
    end
  elseif kind == 'zset' then
    for k = 1, #KEYS do
      local z = redis.call('ZRANGE', KEYS[k], 0, -1, 'WITHSCORES')
      local parts = {}
      for j = 1, #z, 2 do parts[#parts + 1] = z[j] .. '=' .. z[j + 1] end
      lines[k] = table.concat(parts, '|')
    end
  else
    reject('BADARG', '2')
  end
  return {'OK', NOWS, redis.sha1hex(table.concat(lines, '\n'))}
end

return run(main)
