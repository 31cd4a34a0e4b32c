#!lua
--[[
  release — pending → released: the held units return to available.

  KEYS[1]  reservation header   KEYS[2]  its partition's ready marker
  ARGV[1]  clock_ms ('0' = Redis server time)   ARGV[2]  retention_ms
  ARGV[3]  actor (free text)

  Returns {'OK'|'REPLAY', now_ms, status, created_ms, deadline_ms, owner, allocations_json}
    REPLAY: already released; nothing changed.
  {'NOTREADY', now_ms} (fenced; retry later)   {'NOTFOUND', now_ms}   {'STATE', now_ms, status}   {'BADARG', now_ms, i}   {'WRONGTYPE', now_ms}
  An overdue pending hold is expired instead, answering {'STATE', now_ms, 'expired'}.
]]

local function main()
  start_clock()
  local retention = arg_int(2, 1, MAX_STOCK)
  local actor = arg_text(3)
  require_ready(KEYS[2])
  local h = header_load(KEYS[1])
  if not h then reject('NOTFOUND') end
  if h.st == 'released' then return view('REPLAY', h) end
  if h.st ~= 'pending' then reject('STATE', h.st) end
  resolve_check(h)
  if h.dl <= NOW then
    resolve(h, 'expired', '', retention)
    return {'STATE', NOWS, 'expired'}
  end
  resolve(h, 'released', actor, retention)
  return view('OK', h)
end

return run(main)
