#!lua
--[[
  repair — reconciliation's fix: set one stock record to the levels the ledger holds,
  guarded by the version reconciliation compared (compare-and-swap). The change is
  recorded as a `reconciled` event, so the ledger keeps the correction too.

  KEYS[1] stock record   KEYS[2] sku hash   KEYS[3] warehouse set   KEYS[4] events stream
  KEYS[5] the partition's ready marker
  ARGV[1] clock_ms ('0' = Redis server time)
  ARGV[2] sku   ARGV[3] warehouse
  ARGV[4] expected version of the Redis record (what reconciliation read)
  ARGV[5] on_hand   ARGV[6] held   ARGV[7] committed   ARGV[8] safety_stock (0..2^53-1)
  ARGV[9] version floor: the record's new version is max(its version, floor) + 1
  ARGV[10] actor (free text)

  Returns {'OK', now_ms, on_hand, held, committed, safety_stock, version, low}
          {'VERSION', now_ms, actual_version}   the record moved since it was read
          {'NOTREADY', now_ms}   {'BADARG', now_ms, i}   {'WRONGTYPE', now_ms}
]]

local function main()
  start_clock()
  local sku, wh = arg_id(2), arg_id(3)
  local expected = arg_int(4, 0, MAX_STOCK)
  local on, he = arg_int(5, 0, MAX_STOCK), arg_int(6, 0, MAX_STOCK)
  local co, ss = arg_int(7, 0, MAX_STOCK), arg_int(8, 0, MAX_STOCK)
  local floor = arg_int(9, 0, MAX_STOCK - 1)
  local actor = arg_text(10)
  require_ready(KEYS[5])
  want_type(KEYS[3], 'set')
  want_type(KEYS[4], 'stream')
  local r, s = rec_load(KEYS[1]), sku_load(KEYS[2])
  if r.v ~= expected then reject('VERSION', fmt(r.v)) end
  r.v = math.max(r.v, floor)
  rec_change(r, s, {etype = 'reconciled', sku = sku, wh = wh, stream = KEYS[4],
                    don = on - r.on, dhe = he - r.he, dco = co - r.co, ss = ss, whs = KEYS[3],
                    extra = {'rsn', 'reconcile', 'act', actor}})
  return {'OK', NOWS, fmt(r.on), fmt(r.he), fmt(r.co), fmt(r.ss), fmt(r.v), r.low and '1' or '0'}
end

return run(main)
