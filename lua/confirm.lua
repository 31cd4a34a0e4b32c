#!lua
--[[
  confirm — pending → confirmed: every allocation moves from held to committed.

  KEYS[1]  reservation header   KEYS[2]  its partition's ready marker
  ARGV[1]  clock_ms ('0' = Redis server time)   ARGV[2]  retention_ms
  ARGV[3]  actor (free text)

  Returns {'OK'|'REPLAY', now_ms, status, created_ms, deadline_ms, owner, allocations_json}
    OK is followed by the fingerprint and max_deadline_ms, then the events it appended:
    n, then per event: stream key, entry id, number of fields, the fields (so the caller
    can write the reservation and its confirm through to the ledger).
    REPLAY: already confirmed (or since fulfilled); nothing changed.
  {'NOTREADY', now_ms} (fenced; retry later)   {'NOTFOUND', now_ms}   {'STATE', now_ms, status}   {'BADARG', now_ms, i}   {'WRONGTYPE', now_ms}
  A pending hold whose deadline has passed (deadline <= now) is expired here, in this
  call, and the answer is {'STATE', now_ms, 'expired'}: every hold resolves once.
]]

local function main()
  start_clock()
  local retention = arg_int(2, 1, MAX_STOCK)
  local actor = arg_text(3)
  require_ready(KEYS[2])
  local h = header_load(KEYS[1])
  if not h then reject('NOTFOUND') end
  if h.st == 'confirmed' or h.st == 'fulfilled' then return view('REPLAY', h) end
  if h.st ~= 'pending' then reject('STATE', h.st) end
  resolve_check(h)
  if h.dl <= NOW then
    resolve(h, 'expired', '', retention)
    return {'STATE', NOWS, 'expired'}
  end
  resolve(h, 'confirmed', actor, retention)
  local reply = view('OK', h)
  reply[#reply + 1] = h.fp
  reply[#reply + 1] = fmt(h.cap)
  return with_emitted(reply)
end

return run(main)
