#!lua
--[[
  mark_ready — open partitions: stamp each ready marker with '<epoch>:<run_id>' of this
  server. Only the ledger calls this, after it has verified or rebuilt Redis.

  KEYS[1], KEYS[2], …  the ready markers of the partitions to open
  ARGV[1]     clock_ms (unused; kept for the common ARGV layout)
  ARGV[2]     epoch (0..2^53-1): the rehydration generation Postgres knows

  Returns {'OK', now_ms, run_id}   {'BADARG', now_ms, i}
]]

local function main()
  start_clock()
  local epoch = fmt(arg_int(2, 0, MAX_STOCK))
  local value = epoch .. ':' .. server_run_id()
  for i = 1, #KEYS do redis.call('SET', KEYS[i], value) end
  return {'OK', NOWS, server_run_id()}
end

return run(main)
