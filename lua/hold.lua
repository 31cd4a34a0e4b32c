#!lua
--[[
  hold — what POST /v1/reservations needs from Redis, in one call: the client's
  Idempotency-Key record (lua/idempotency.lua), its anti-hoarding admission
  (lua/admit.lua) and the reservation itself (lua/reserve.lua), atomically.

  KEYS[1]  ns:client:<client_id>:holds          zset (admit's KEYS[1])
  KEYS[2]  ns:idem:<client_id>:<sha256 of key>   string (the Idempotency-Key record)
  KEYS[3], …  reserve's KEYS

  ARGV[1]  clock_ms ('0' = Redis server time)
  ARGV[2]  request fingerprint (the record's; 64 hex chars)   ARGV[3]  owner token (text)
  ARGV[4]  lock_ms: how long a pending record stays (1..86400000)
  ARGV[5]  record_ttl_ms: how long the stored answer stays (1..2^53-1)
  ARGV[6]  limit: the client's live holds at most (1..10^9)
  ARGV[7]  the reservations' path, ending in '/' ([A-Za-z0-9._/-], at most 64): a
           reservation's Location is this path and its id
  ARGV[8], …  reserve's ARGV after its clock (retention_ms, reservation id, …)

  Returns
    {'HELD', now_ms, body}   new hold: reserved, admitted until now + ttl_ms, and the
                             record done, storing the 201 answer whose body is `body`
                             (with Location: ARGV[7] .. reservation id)
    {'FOUND', now_ms, value} the key has a record (pending or done): nothing changed
    {'FULL', now_ms, retry_after_ms}   at the hold limit: record pending, nothing held
    otherwise reserve's reply: for a verdict (REPLAY, CONFLICT, SHORT, LINECAP,
    LIMIT) the record is pending ('P|<fingerprint>|<token>' for lock_ms) and no slot
    was added — the API answers and finishes the record as it does after a separate
    reserve; BADARG, NOTREADY, WRONGTYPE and CORRUPT change nothing (no record).
  Every check of the record, the admission and the order comes before the first write.
]]

local function main()
  start_clock()
  return hold_order(1, 2, #KEYS, #ARGV)
end

return run(main)
