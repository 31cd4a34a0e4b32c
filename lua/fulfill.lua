#!lua
--[[
  fulfill — confirmed → fulfilled (shipped): on_hand and committed drop by each
  allocation's quantity.

  KEYS[1]  reservation header   KEYS[2]  its partition's ready marker
  ARGV[1]  clock_ms ('0' = Redis server time)   ARGV[2]  retention_ms
  ARGV[3]  actor (free text)

  Returns {'OK'|'REPLAY', now_ms, status, created_ms, deadline_ms, owner, allocations_json}
    REPLAY: already fulfilled; nothing changed.
  {'NOTREADY', now_ms} (fenced; retry later)   {'NOTFOUND', now_ms}   {'STATE', now_ms, status}
  {'NOSTOCK', now_ms, sku, warehouse}   on_hand is below an allocation (an unfilled
                                        backorder); nothing changed
  {'BADARG', now_ms, i}   {'WRONGTYPE', now_ms}
]]

local function main()
  start_clock()
  local retention = arg_int(2, 1, MAX_STOCK)
  local actor = arg_text(3)
  require_ready(KEYS[2])
  local h = header_load(KEYS[1])
  if not h then reject('NOTFOUND') end
  if h.st == 'fulfilled' then return view('REPLAY', h) end
  if h.st ~= 'confirmed' then reject('STATE', h.st) end
  resolve_check(h)
  for _, a in ipairs(h.allocs) do
    if rec_load(a.k).on < a.q then reject('NOSTOCK', a.s, a.w) end
  end
  resolve(h, 'fulfilled', actor, retention)
  return view('OK', h)
end

return run(main)
