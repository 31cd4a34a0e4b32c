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

-- Plan one line; mirrors onhand.engine.planning.plan_line. Returns allocations
-- {{index, qty}, ...} or nil plus the most the line could get.
local function plan_line(qty, av, split, allowance)
  local n = #av
  local a = {}
  for i = 1, n do a[i] = math.max(0, av[i]) end
  for i = 1, n do
    if a[i] >= qty then return {{i, qty}}, qty end
  end
  if split then
    local total = 0
    for i = 1, n do total = total + a[i] end
    if total >= qty then
      local order = {}
      for i = 1, n do order[i] = i end
      table.sort(order, function(x, y)
        if a[x] ~= a[y] then return a[x] > a[y] end
        return x < y
      end)
      local chosen, covered = {}, 0
      for _, i in ipairs(order) do
        chosen[#chosen + 1] = i
        covered = covered + a[i]
        if covered >= qty then break end
      end
      table.sort(chosen)
      local out, remaining = {}, qty
      for _, i in ipairs(chosen) do
        local take = math.min(a[i], remaining)
        out[#out + 1] = {i, take}
        remaining = remaining - take
      end
      return out, qty
    end
    local need = qty - total
    if need > allowance then return nil, total + allowance end
    local out = {}
    for i = 1, n do
      if a[i] > 0 then out[#out + 1] = {i, a[i]} end
    end
    if #out > 0 and out[1][1] == 1 then
      out[1][2] = out[1][2] + need
    else
      table.insert(out, 1, {1, need})
    end
    return out, qty
  end
  local best = 1
  for i = 2, n do
    if a[i] > a[best] then best = i end
  end
  if qty - a[best] > allowance then return nil, a[best] + allowance end
  return {{best, qty}}, qty
end

local function main()
  start_clock()
  local retention = arg_int(2, 1, MAX_STOCK)
  local rid = arg_id(3)
  local fp = ARGV[4]
  if type(fp) ~= 'string' or not string.find(fp, '^[0-9a-f]+$') or #fp ~= 64 then
    reject('BADARG', '4')
  end
  local ttl = arg_int(5, 1, MAX_TTL_MS)
  local life = arg_int(6, 1, MAX_STOCK)
  local owner = arg_opt_id(7)
  local actor = arg_text(8)
  local nl = arg_int(9, 1, 100)
  local lines, seen = {}, {}
  local ai, ki = 10, 4
  for li = 1, nl do
    local sku = arg_id(ai)
    if seen[sku] then reject('BADARG', fmt(ai)) end
    seen[sku] = true
    local line = {sku = sku, qty = arg_int(ai + 1, 1, MAX_QTY), split = arg_flag(ai + 2),
                  n = arg_int(ai + 3, 1, 32), whs = {}, recs = {},
                  skuk = KEYS[ki], whsk = KEYS[ki + 1], holdk = KEYS[ki + 2],
                  strk = KEYS[ki + 3], readyk = KEYS[ki + 4]}
    local wseen = {}
    for c = 1, line.n do
      local wh = arg_id(ai + 3 + c)
      if wseen[wh] then reject('BADARG', fmt(ai + 3 + c)) end
      wseen[wh] = true
      line.whs[c] = wh
      line.recs[c] = KEYS[ki + 4 + c]
    end
    ai = ai + 4 + line.n
    ki = ki + 5 + line.n
    lines[li] = line
  end
  if #ARGV ~= ai - 1 or #KEYS ~= ki - 1 then reject('BADARG', '9') end

  -- Fencing first: a Redis that lost or rolled back data answers nothing from it.
  require_ready(KEYS[3])
  for _, line in ipairs(lines) do require_ready(line.readyk) end

  -- Idempotency: a known id answers with what it holds (or a conflict), nothing more.
  -- (EXISTS first: a new id, the common case, needs no header fields.)
  if redis.call('EXISTS', KEYS[1]) == 1 then
    local h = header_load(KEYS[1])
    if h then
      if h.fp == fp then return view('REPLAY', h) end
      reject('CONFLICT')
    end
  end

  -- Type-check every key written below, and load what the plan reads. The warehouse
  -- set is written only for a new record (rec_change's new_whs), so it is checked only
  -- when a candidate record is new.
  want_type(KEYS[2], 'zset')
  for li, line in ipairs(lines) do
    want_type(line.holdk, 'zset')
    want_type(line.strk, 'stream')
    line.s = sku_load(line.skuk)
    local fresh = false
    for c = 1, line.n do fresh = rec_load(line.recs[c]).v == 0 or fresh end
    if fresh then want_type(line.whsk, 'set') end
    if line.qty > line.s.mlq then reject('LINECAP', fmt(li - 1), fmt(line.s.mlq)) end
  end

  local function plan_all()
    local short = {}
    for _, line in ipairs(lines) do
      local av = {}
      for c = 1, line.n do av[c] = avail(rec_load(line.recs[c])) end
      local plan, could = plan_line(line.qty, av, line.split, allowance(line.s))
      line.plan = plan
      if not plan then short[#short + 1] = {line, could} end
    end
    return short
  end

  local short = plan_all()
  if #short > 0 then
    local batch = new_batch()
    for _, sh in ipairs(short) do due_collect(batch, sh[1].holdk, 50) end
    local freed = due_expire(batch, retention)
    if freed > 0 then short = plan_all() end
    if #short > 0 then
      local out = {'SHORT', NOWS}
      for _, sh in ipairs(short) do
        out[#out + 1] = sh[1].sku
        out[#out + 1] = fmt(sh[1].qty)
        out[#out + 1] = fmt(sh[2])
      end
      return out
    end
  end
  for _, line in ipairs(lines) do
    for _, p in ipairs(line.plan) do
      local r = rec_load(line.recs[p[1]])
      if r.he + p[2] > MAX_STOCK then reject('LIMIT', line.sku, line.whs[p[1]]) end
    end
  end

  -- Write: header, indexes, then one hold (and event) per allocation.
  local cap = NOW + life
  local deadline = math.min(NOW + ttl, cap)
  local allocs = {}
  for li, line in ipairs(lines) do
    for _, p in ipairs(line.plan) do
      allocs[#allocs + 1] = {l = li - 1, s = line.sku, w = line.whs[p[1]], q = p[2],
                             k = line.recs[p[1]], g = line.skuk, h = line.holdk,
                             e = line.strk, r = line.readyk}
    end
  end
  local al = cjson.encode(allocs)
  local dls, caps = fmt(deadline), fmt(cap)
  redis.call('HSET', KEYS[1], 'id', rid, 'st', 'pending', 'fp', fp, 'own', owner,
             'cr', NOWS, 'dl', dls, 'cap', caps, 'nx', '0', 'up', NOWS, 'al', al,
             'dk', KEYS[2])
  redis.call('ZADD', KEYS[2], deadline, KEYS[1])
  for li, line in ipairs(lines) do
    redis.call('ZADD', line.holdk, deadline, KEYS[1])
    local lns = fmt(li - 1)
    for _, p in ipairs(line.plan) do
      rec_change(rec_load(line.recs[p[1]]), line.s, {
        etype = 'reserved', sku = line.sku, wh = line.whs[p[1]], stream = line.strk,
        dhe = p[2], new_whs = line.whsk,
        extra = {'res', rid, 'ln', lns, 'dl', dls, 'cap', caps, 'fp', fp,
                 'own', owner, 'act', actor}})
    end
  end
  return {'OK', NOWS, 'pending', NOWS, dls, owner, al}
end

return run(main)
