#!lua
--[[
  set_policy — replace a SKU's policy.

  KEYS[1] sku hash   KEYS[2] events stream (the SKU's partition)   KEYS[3] its ready marker
  ARGV[1] clock_ms ('0' = Redis server time)   ARGV[2] sku
  ARGV[3] backorder_limit   ARGV[4] preorder_limit   ARGV[5] preorder_release_ms
  ARGV[6] reorder_point     ARGV[7] reorder_qty      (each 0..2^53-1)
  ARGV[8] lead_time_days (0..3650)   ARGV[9] max_line_qty (1..1e9)   ARGV[10] actor

  Returns {'OK', now_ms, policy_version, 1, stream, entry_id, n_fields, fields...}
            (the appended event, so the caller can write it through to the ledger)
          {'NOTREADY', now_ms}   the partition is fenced (see _lib.lua); retry later
          {'BADARG', now_ms, i}   {'WRONGTYPE', now_ms}
  Emits `policy_set` (id p:<sku>:<policy_version>) carrying the whole policy.
  Low-stock flags are re-evaluated at the record's next change, not here.
]]

local function main()
  start_clock()
  local sku = arg_id(2)
  local vals = {}
  for i = 3, 7 do vals[#vals + 1] = fmt(arg_int(i, 0, MAX_STOCK)) end
  vals[#vals + 1] = fmt(arg_int(8, 0, 3650))
  vals[#vals + 1] = fmt(arg_int(9, 1, MAX_QTY))
  local actor = arg_text(10)
  require_ready(KEYS[3])
  want_type(KEYS[2], 'stream')
  local s = sku_load(KEYS[1])
  local pv = fmt(s.pv + 1)
  local h = {'pv', pv}
  for i, name in ipairs(POLICY_FIELDS) do
    h[#h + 1] = name
    h[#h + 1] = vals[i]
  end
  redis.call('HSET', KEYS[1], unpack(h))
  local f = {'id', 'p:' .. sku .. ':' .. pv, 't', 'policy_set', 'ts', NOWS, 'sku', sku,
             'v', pv, 'pol', table.concat(vals, ',')}
  if actor ~= '' then f[#f + 1] = 'act'; f[#f + 1] = actor end
  emit(KEYS[2], f)
  return with_emitted({'OK', NOWS, pv})
end

return run(main)
