#!lua
--[[
  transfer — move available on-hand units of one SKU from one warehouse to another,
  atomically, with one event per side.

  KEYS[1] source record   KEYS[2] destination record   KEYS[3] sku hash
  KEYS[4] warehouse set   KEYS[5] events stream   KEYS[6] the partition's ready marker
  ARGV[1] clock_ms ('0' = Redis server time)
  ARGV[2] sku   ARGV[3] source warehouse   ARGV[4] destination warehouse (different)
  ARGV[5] qty (1..1e9)   ARGV[6] reference (free text)   ARGV[7] actor (free text)

  Returns {'OK', now_ms, src on_hand, held, committed, safety_stock, version, low,
                         dst on_hand, held, committed, safety_stock, version, low}
          {'SHORT', now_ms, sku, requested, available}   the source lacks available units
          {'LIMIT', now_ms}   the destination would pass 2^53 - 1
          {'NOTREADY', now_ms}   the partition is fenced (see _lib.lua); retry later
          {'BADARG', now_ms, i}   {'WRONGTYPE', now_ms}
  Only available units move: held, committed and safety stock stay where they are.
]]

local function main()
  start_clock()
  local sku, src, dst = arg_id(2), arg_id(3), arg_id(4)
  if src == dst then reject('BADARG', '4') end
  local qty = arg_int(5, 1, MAX_QTY)
  local ref, actor = arg_text(6), arg_text(7)
  require_ready(KEYS[6])
  want_type(KEYS[4], 'set')
  want_type(KEYS[5], 'stream')
  local a, b, s = rec_load(KEYS[1]), rec_load(KEYS[2]), sku_load(KEYS[3])
  if avail(a) < qty then reject('SHORT', sku, fmt(qty), fmt(math.max(0, avail(a)))) end
  if not within(b.on + qty) then reject('LIMIT') end
  rec_change(a, s, {etype = 'transfer_out', sku = sku, wh = src, stream = KEYS[5], don = -qty,
                    whs = KEYS[4], extra = {'ref', ref, 'act', actor}})
  rec_change(b, s, {etype = 'transfer_in', sku = sku, wh = dst, stream = KEYS[5], don = qty,
                    whs = KEYS[4], extra = {'ref', ref, 'act', actor}})
  return {'OK', NOWS, fmt(a.on), fmt(a.he), fmt(a.co), fmt(a.ss), fmt(a.v), a.low and '1' or '0',
          fmt(b.on), fmt(b.he), fmt(b.co), fmt(b.ss), fmt(b.v), b.low and '1' or '0'}
end

return run(main)
