#!lua
--[[
  set_safety_stock — set the units of a record that are never sold.

  KEYS[1] stock record   KEYS[2] sku hash   KEYS[3] warehouse set   KEYS[4] events stream
  KEYS[5] the partition's ready marker
  ARGV[1] clock_ms ('0' = Redis server time)
  ARGV[2] sku   ARGV[3] warehouse   ARGV[4] safety stock (0..2^53-1)   ARGV[5] actor

  Returns {'OK', now_ms, on_hand, held, committed, safety_stock, version, low}
          {'NOTREADY', now_ms}   the partition is fenced (see _lib.lua); retry later
          {'LIMIT', now_ms}   the SKU's exposure would pass 2^53 - 1; nothing changed
          {'BADARG', now_ms, i}   {'WRONGTYPE', now_ms}
]]

local function main()
  start_clock()
  local sku, wh = arg_id(2), arg_id(3)
  local ss = arg_int(4, 0, MAX_STOCK)
  local actor = arg_text(5)
  require_ready(KEYS[5])
  want_type(KEYS[3], 'set')
  want_type(KEYS[4], 'stream')
  local r, s = rec_load(KEYS[1]), sku_load(KEYS[2])
  if not exposure_within(r, s, r.on, r.he, r.co, ss) then reject('LIMIT') end
  rec_change(r, s, {etype = 'safety_stock_set', sku = sku, wh = wh, stream = KEYS[4], ss = ss,
                    whs = KEYS[3], extra = {'act', actor}})
  return {'OK', NOWS, fmt(r.on), fmt(r.he), fmt(r.co), fmt(r.ss), fmt(r.v), r.low and '1' or '0'}
end

return run(main)
