#!lua
--[[
  cancel — confirmed → cancelled: the committed units return to available.

  KEYS[1]  reservation header   KEYS[2]  its partition's ready marker
  ARGV[1]  clock_ms ('0' = Redis server time)   ARGV[2]  retention_ms
  ARGV[3]  actor (free text)

  Returns {'OK'|'REPLAY', now_ms, status, created_ms, deadline_ms, owner, allocations_json}
    REPLAY: already cancelled; nothing changed.
  {'NOTREADY', now_ms} (fenced; retry later)   {'NOTFOUND', now_ms}   {'STATE', now_ms, status}   {'BADARG', now_ms, i}   {'WRONGTYPE', now_ms}
]]

local function main()
  start_clock()
  local retention = arg_int(2, 1, MAX_STOCK)
  local actor = arg_text(3)
  require_ready(KEYS[2])
  local h = header_load(KEYS[1])
  if not h then reject('NOTFOUND') end
  if h.st == 'cancelled' then return view('REPLAY', h) end
  if h.st ~= 'confirmed' then reject('STATE', h.st) end
  resolve_check(h)
  resolve(h, 'cancelled', actor, retention)
  return view('OK', h)
end

return run(main)
