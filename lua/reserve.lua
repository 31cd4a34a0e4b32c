#!lua
--[[
  reserve — hold every line of an order until its deadline, or hold nothing.

  KEYS[1]  reservation header            (hash, partition of the reservation id)
  KEYS[2]  that partition's deadlines    (zset)
  KEYS[3]  that partition's ready marker (see _lib.lua: fencing)
  then, for each line i in order:
    sku hash, warehouse set, holds zset, events stream, ready marker (all in the SKU's
    partition), then one stock record key per candidate warehouse, in preference order

  ARGV[1]  clock_ms: '0' = Redis server time (production); else a fixed ms time (tests)
  ARGV[2]  retention_ms: how long resolved headers stay for idempotent repeats
  ARGV[3]  reservation id            ARGV[4]  payload fingerprint (64 hex chars)
  ARGV[5]  ttl_ms (1..86400000)      ARGV[6]  max hold lifetime in ms
  ARGV[7]  owner id or ''            ARGV[8]  actor (free text, <= 128 chars)
  ARGV[9]  number of lines (1..100)
  then, for each line: sku, qty (1..1e9), allow_split ('0'|'1'), n candidates (1..32),
    the n candidate warehouse ids

  Returns one of
    {'OK', now_ms, status, created_ms, deadline_ms, owner, allocations_json}
    {'REPLAY', now_ms, ...same...}       the id exists with the same payload
    {'CONFLICT', now_ms}                 the id exists with another payload
    {'LINECAP', now_ms, line, max_line_qty}
    {'SHORT', now_ms, sku, requested, could_have, ...}   per short line; nothing held
    {'LIMIT', now_ms, sku, warehouse}    a counter would pass 2^53 - 1
    {'NOTREADY', now_ms}                 a partition is fenced; retry later
    {'BADARG', now_ms, argv_index}       {'WRONGTYPE', now_ms}
  Before answering SHORT, overdue holds of the short SKUs are expired (at most 50 per
  SKU) and the order is planned again; those expiries stand.
]]

local function main()
  start_clock()
  return reserve_order(1, 2, #KEYS, #ARGV)
end

return run(main)
