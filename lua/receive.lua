#!lua
--[[
  receive — add units to a record's on_hand (a goods receipt).

  KEYS[1] stock record   KEYS[2] sku hash   KEYS[3] warehouse set   KEYS[4] events stream
  KEYS[5] the partition's ready marker
  ARGV[1] clock_ms ('0' = Redis server time)
  ARGV[2] sku   ARGV[3] warehouse   ARGV[4] qty (1..1e9)
  ARGV[5] reference (e.g. purchase order; free text)   ARGV[6] actor (free text)

  Returns {'OK', now_ms, on_hand, held, committed, safety_stock, version, low}
          {'LIMIT', now_ms}   on_hand would pass 2^53 - 1; nothing changed
          {'NOTREADY', now_ms}   the partition is fenced (see _lib.lua); retry later
          {'BADARG', now_ms, i}   {'WRONGTYPE', now_ms}
  Emits `received` (and `low_stock` on the downward edge, which a receipt never makes).
]]

local function main()
  start_clock()
  local sku, wh = arg_id(2), arg_id(3)
  local qty = arg_int(4, 1, MAX_QTY)
  local ref, actor = arg_text(5), arg_text(6)
  require_ready(KEYS[5])
  want_type(KEYS[3], 'set')
  want_type(KEYS[4], 'stream')
  local r, s = rec_load(KEYS[1]), sku_load(KEYS[2])
  if not within(r.on + qty) then reject('LIMIT') end
  rec_change(r, s, {etype = 'received', sku = sku, wh = wh, stream = KEYS[4], don = qty,
                    whs = KEYS[3], extra = {'ref', ref, 'act', actor}})
  return {'OK', NOWS, fmt(r.on), fmt(r.he), fmt(r.co), fmt(r.ss), fmt(r.v), r.low and '1' or '0'}
end

return run(main)
