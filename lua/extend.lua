#!lua
--[[
  extend — move a pending hold's deadline to now + ttl_ms, capped at its creation time
  plus the maximum hold lifetime; a deadline never moves earlier.

  KEYS[1]  reservation header   KEYS[2]  its partition's ready marker
  ARGV[1]  clock_ms ('0' = Redis server time)   ARGV[2]  retention_ms
  ARGV[3]  ttl_ms (1..86400000)                 ARGV[4]  actor (free text)

  Returns {'OK', now_ms, status, created_ms, deadline_ms, owner, allocations_json}
          {'REPLAY', ...same...}   the deadline would not move; nothing changed
  {'NOTREADY', now_ms} (fenced; retry later)   {'NOTFOUND', now_ms}   {'STATE', now_ms, status}   {'BADARG', now_ms, i}   {'WRONGTYPE', now_ms}
  An overdue pending hold is expired instead, answering {'STATE', now_ms, 'expired'}.
  Emits one `extended` event per allocation (id x:<reservation>:<n>:<sku>:<warehouse>),
  in that allocation's stream, so each allocation's events stay in causal order.
]]

local function main()
  start_clock()
  local retention = arg_int(2, 1, MAX_STOCK)
  local ttl = arg_int(3, 1, MAX_TTL_MS)
  local actor = arg_text(4)
  require_ready(KEYS[2])
  local h = header_load(KEYS[1])
  if not h then reject('NOTFOUND') end
  if h.st ~= 'pending' then reject('STATE', h.st) end
  resolve_check(h)
  if h.dl <= NOW then
    resolve(h, 'expired', '', retention)
    return {'STATE', NOWS, 'expired'}
  end
  local deadline = math.max(h.dl, math.min(NOW + ttl, h.cap))
  if deadline == h.dl then return view('REPLAY', h) end
  local n = h.nx + 1
  local dls = fmt(deadline)
  redis.call('HSET', h.key, 'dl', dls, 'nx', fmt(n), 'up', NOWS)
  redis.call('ZADD', h.dk, dls, h.key)
  local ns = fmt(n)
  for _, a in ipairs(h.allocs) do
    redis.call('ZADD', a.h, dls, h.key)
    local f = {'id', 'x:' .. h.id .. ':' .. ns .. ':' .. a.s .. ':' .. a.w, 't', 'extended',
               'ts', NOWS, 'sku', a.s, 'wh', a.w, 'res', h.id, 'ln', fmt(a.l), 'dl', dls,
               'v', ns}
    if actor ~= '' then f[#f + 1] = 'act'; f[#f + 1] = actor end
    emit(a.e, f)
  end
  h.dl = deadline
  return view('OK', h)
end

return run(main)
