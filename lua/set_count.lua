#!lua
--[[
  set_count — stocktake: set on_hand to a counted value, guarded by the record version
  the counter saw (compare-and-swap).

  KEYS[1] stock record   KEYS[2] sku hash   KEYS[3] warehouse set   KEYS[4] events stream
  KEYS[5] the partition's ready marker
  ARGV[1] clock_ms ('0' = Redis server time)
  ARGV[2] sku   ARGV[3] warehouse   ARGV[4] count (0..2^53-1)
  ARGV[5] expected version (0 for a record never touched)
  ARGV[6] reference (free text)   ARGV[7] actor (free text)

  Returns {'OK', now_ms, on_hand, held, committed, safety_stock, version, low}
          {'VERSION', now_ms, actual_version}   nothing changed
          {'LIMIT', now_ms}   the SKU's exposure would pass 2^53 - 1; nothing changed
          {'NOTREADY', now_ms}   the partition is fenced (see _lib.lua); retry later
          {'BADARG', now_ms, i}   {'WRONGTYPE', now_ms}
  Emits `counted` with the difference (possibly 0) and reason 'stocktake'.
]]

local function main()
  start_clock()
  local sku, wh = arg_id(2), arg_id(3)
  local count = arg_int(4, 0, MAX_STOCK)
  local expected = arg_int(5, 0, MAX_STOCK)
  local ref, actor = arg_text(6), arg_text(7)
  require_ready(KEYS[5])
  want_type(KEYS[3], 'set')
  want_type(KEYS[4], 'stream')
  local r, s = rec_load(KEYS[1]), sku_load(KEYS[2])
  if r.v ~= expected then reject('VERSION', fmt(r.v)) end
  if not exposure_within(r, s, count, r.he, r.co, r.ss) then reject('LIMIT') end
  rec_change(r, s, {etype = 'counted', sku = sku, wh = wh, stream = KEYS[4], don = count - r.on,
                    whs = KEYS[3], extra = {'rsn', 'stocktake', 'ref', ref, 'act', actor}})
  return {'OK', NOWS, fmt(r.on), fmt(r.he), fmt(r.co), fmt(r.ss), fmt(r.v), r.low and '1' or '0'}
end

return run(main)
