#!lua
--[[
  adjust — change a record's on_hand by a signed delta, for a reason.

  KEYS[1] stock record   KEYS[2] sku hash   KEYS[3] warehouse set   KEYS[4] events stream
  KEYS[5] the partition's ready marker
  ARGV[1] clock_ms ('0' = Redis server time)
  ARGV[2] sku   ARGV[3] warehouse   ARGV[4] delta (-1e9..1e9, not 0)
  ARGV[5] reason: damaged | lost (delta < 0), found | returned (delta > 0), correction
  ARGV[6] reference (free text)   ARGV[7] actor (free text)

  Returns {'OK', now_ms, on_hand, held, committed, safety_stock, version, low}
          {'NEGATIVE', now_ms}   on_hand would drop below 0; nothing changed
          {'LIMIT', now_ms}      on_hand, or the SKU's exposure, would pass 2^53 - 1
          {'NOTREADY', now_ms}   the partition is fenced (see _lib.lua); retry later
          {'BADARG', now_ms, i}  (also: delta 0, or a sign that does not fit the reason)
          {'WRONGTYPE', now_ms}
  on_hand may drop below held + committed (stock written off that was promised): the
  units now promised beyond sellable stock count as the SKU's exposure.
]]

local SIGNS = {damaged = -1, lost = -1, found = 1, returned = 1, correction = 0}

local function main()
  start_clock()
  local sku, wh = arg_id(2), arg_id(3)
  local delta = arg_int(4, -MAX_QTY, MAX_QTY)
  local reason = ARGV[5]
  local sign = SIGNS[reason]
  if sign == nil then reject('BADARG', '5') end
  if delta == 0 or delta * sign < 0 then reject('BADARG', '4') end
  local ref, actor = arg_text(6), arg_text(7)
  require_ready(KEYS[5])
  want_type(KEYS[3], 'set')
  want_type(KEYS[4], 'stream')
  local r, s = rec_load(KEYS[1]), sku_load(KEYS[2])
  if r.on + delta < 0 then reject('NEGATIVE') end
  if not within(r.on + delta) then reject('LIMIT') end
  if not exposure_within(r, s, r.on + delta, r.he, r.co, r.ss) then reject('LIMIT') end
  rec_change(r, s, {etype = 'adjusted', sku = sku, wh = wh, stream = KEYS[4], don = delta,
                    whs = KEYS[3], extra = {'rsn', reason, 'ref', ref, 'act', actor}})
  return {'OK', NOWS, fmt(r.on), fmt(r.he), fmt(r.co), fmt(r.ss), fmt(r.v), r.low and '1' or '0'}
end

return run(main)
