#!lua
--[[
  expire — the reaper's bounded batch: expire overdue pending holds of one partition.

  KEYS[1]  the partition's deadlines zset (member: header key, score: deadline_ms)
  KEYS[2]  the partition's ready marker
  ARGV[1]  clock_ms ('0' = Redis server time)   ARGV[2]  retention_ms
  ARGV[3]  limit: most holds to expire in this call (1..10000)

  Returns {'OK', now_ms, expired_count}   {'NOTREADY', now_ms}   {'BADARG', now_ms, i}   {'WRONGTYPE', now_ms}
  A hold is due when deadline_ms <= now. Each hold expires exactly once: the header's
  status is checked in the same script, so concurrent reapers (and a confirm racing
  the deadline) cannot both resolve it. Key TTLs are never what returns stock.
]]

local function main()
  start_clock()
  local retention = arg_int(2, 1, MAX_STOCK)
  local limit = arg_int(3, 1, 10000)
  require_ready(KEYS[2])
  local batch = due_collect(new_batch(), KEYS[1], limit)
  return {'OK', NOWS, fmt(due_expire(batch, retention))}
end

return run(main)
