--[[
  _lib.lua — helpers shared by every onhand script.

  onhand.engine.scripts puts this file at the top of the function library that holds
  every script (library_source): its definitions are created once, when a server
  loads the library, and shared by all scripts. State that belongs to one call is
  marked `-- per call` on its definition line; each function's callback sets it back
  to that initial value before the script runs (and sets KEYS and ARGV), so a call
  sees exactly what a fresh EVAL of the script would. Nothing else here may be
  assigned during a call, except RUN_ID (see fencing). The layout rule: every
  top-level statement is a `local` definition starting in column 0, with its comment
  lines right above it; the loader rejects anything else. (script_source still
  assembles one script as a standalone EVAL script from the definitions it uses.)
  Nothing here writes on its own; the writers (rec_change, resolve) are called only
  after a script has checked every precondition. rec_change's record write is the
  last write of the call (flush_records, from run).

  Conventions
    * Every argument arrives as a string and is validated as a string *before* any
      tonumber (Lua's tonumber accepts 'nan', '0x10', '1e3', ' 7 ').
    * A failed check calls reject(code, ...), which unwinds to the script's pcall
      wrapper and becomes the reply {code, now_ms, ...}. Checks run before the first
      write, so a rejected call changes nothing (Lua does not roll back).
    * Integers are written and returned as decimal strings ('%d'); no counter ever
      exceeds MAX_STOCK = 2^53 - 1, where Lua numbers are still exact.
    * Key names are never composed here: they come from KEYS or from data that the
      Python key builder wrote.
]]

local MAX_QTY = 1000000000
local MAX_STOCK = 9007199254740991
local MAX_TTL_MS = 86400000
local NOW = 0  -- per call
local NOWS = '0'  -- per call

local function reject(...)
  error({...}, 0)
end

-- A call formats the same numbers again and again (its clock, deadlines, a batch's
-- quantities and line numbers): each distinct number once per call.
local FMTS = {}  -- per call
local function fmt(n)
  local s = FMTS[n]
  if s then return s end
  s = string.format('%d', n)
  if n == n then FMTS[n] = s end  -- (NaN is no table key)
  return s
end

-- A decimal integer in lo..hi (bounds within +-MAX_STOCK) written canonically: no sign
-- but '-', no leading zero, no '-0', at most 17 characters. The range check comes
-- first (tonumber is cheap); the canonical-form pattern then rejects what tonumber also
-- accepts ('1e3', '0x10', ' 7', '1.0', '007'). A value past 2^53 never rounds into range.
local function int_of(s, lo, hi, what)
  local n = type(s) == 'string' and #s <= 17 and tonumber(s)
  if not (n and n >= lo and n <= hi) or not (s == '0' or string.find(s, '^%-?[1-9][0-9]*$')) then
    reject('BADARG', what)
  end
  return n
end

-- Arguments already found well-formed in this call: decimal text -> its number, id ->
-- true. A batch (reserve_many) repeats most of its orders' arguments; a repeat costs a
-- table lookup instead of a pattern match (the range check still runs every time).
local INTS = {}  -- per call
local IDS = {}  -- per call
local TEXTS = {}  -- per call

-- what: the ARGV index, formatted only when the argument is rejected.
local function arg_int(i, lo, hi)
  local s = ARGV[i]
  local n = INTS[s]
  if n and n >= lo and n <= hi then return n end
  n = type(s) == 'string' and #s <= 17 and tonumber(s)
  if not (n and n >= lo and n <= hi) or not (s == '0' or string.find(s, '^%-?[1-9][0-9]*$')) then
    reject('BADARG', fmt(i))
  end
  INTS[s] = n
  return n
end

local function arg_id(i)
  local s = ARGV[i]
  if IDS[s] then return s end
  if type(s) ~= 'string' or #s < 1 or #s > 64 or string.find(s, '[^A-Za-z0-9%._%-]') then
    reject('BADARG', fmt(i))
  end
  IDS[s] = true
  return s
end

local function arg_opt_id(i)
  if ARGV[i] == '' then return '' end
  return arg_id(i)
end

local function arg_text(i)
  local s = ARGV[i]
  if TEXTS[s] then return s end
  if type(s) ~= 'string' or #s > 128 or string.find(s, '[^\32-\126]') then
    reject('BADARG', fmt(i))
  end
  TEXTS[s] = true
  return s
end

local function arg_flag(i)
  local s = ARGV[i]
  if s ~= '0' and s ~= '1' then reject('BADARG', fmt(i)) end
  return s == '1'
end

-- ARGV[1]: '0' = use the Redis server clock; otherwise a fixed time (tests only).
local function start_clock()
  if ARGV[1] == '0' then
    local t = redis.call('TIME')
    NOW = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  else
    NOW = int_of(ARGV[1], 1, MAX_STOCK, '1')
  end
  NOWS = fmt(NOW)
end

-- A key checked once in a call keeps its type for the rest of the call: the only writes
-- are the call's own, and they create keys of the checked type and delete none.
local TYPED = {}  -- per call
local function want_type(key, kind)
  if TYPED[key] == kind then return end
  local got = redis.call('TYPE', key)['ok']
  if got ~= 'none' and got ~= kind then reject('WRONGTYPE') end
  TYPED[key] = kind
end

-- A stored counter: absent is 0; anything but a decimal integer means the data was
-- not written by onhand, and the script stops before its first write.
-- Fencing. A partition is open only while its ready marker ('<epoch>:<run_id>') names
-- this server's run_id. A restart (the run_id changes), a promoted replica (another
-- run_id) or a flush (no marker) closes every partition until the ledger has verified
-- or rebuilt Redis and stamped the markers again (onhand.ledger.fencing).
-- RUN_ID is read from INFO server on the first call that needs it and then kept for
-- the life of this library's Lua state (not reset per call): that state lives inside
-- one server process (it is built when that process loads the library — at startup
-- from its RDB/AOF, from its master, or by FUNCTION LOAD/RESTORE — and dies with the
-- process), and a process's run_id never changes while it runs. So the cached value is
-- what INFO would answer on every later call: a restarted server or a promoted
-- replica is another process with its own library state and reads its own run_id.
-- (As a standalone EVAL script, script_source, RUN_ID lives for one call.)
local RUN_ID
local function server_run_id()
  if not RUN_ID then
    -- A plain find and a fixed-width cut (a run_id is 40 hex digits): a pattern scan
    -- of the whole section text cost more than generating it.
    local info = redis.call('INFO', 'server')
    local at = string.find(info, '\nrun_id:', 1, true)
    local rid = at and string.sub(info, at + 8, at + 47)
    RUN_ID = (rid and string.find(rid, '^%x+$') and #rid == 40) and rid or '?'
  end
  return RUN_ID
end

local READY = {}  -- per call
local function require_ready(key)
  if READY[key] then return end
  local v = redis.call('GET', key)
  local rid = server_run_id()
  if not v or string.sub(v, -(#rid + 1)) ~= ':' .. rid then reject('NOTREADY') end
  READY[key] = true
end

local function num(v)
  if not v or v == '0' then return 0 end
  if not string.find(v, '^%-?[0-9]+$') or #v > 17 then reject('CORRUPT') end
  return tonumber(v)
end

-- A record keeps each counter twice: as a number (on, he, ...) and as the decimal text
-- it is written as (ons, hes, ...), so a change formats only the counters it moves.
local RECS = {}  -- per call
local function rec_load(key)
  local r = RECS[key]
  if r then return r end
  local v = redis.call('HMGET', key, 'on', 'he', 'co', 'ss', 'v', 'low')
  r = {key = key, on = num(v[1]), he = num(v[2]), co = num(v[3]), ss = num(v[4]),
       v = num(v[5]), low = (v[6] == '1')}
  r.ons, r.hes, r.cos, r.sss = fmt(r.on), fmt(r.he), fmt(r.co), fmt(r.ss)
  RECS[key] = r
  return r
end

-- Records this call changed, in the order first changed. rec_change updates a loaded
-- record in place and queues it here; flush_records writes each one once, with its
-- final values, when the call ends (run, also when the call or one of a batch's orders
-- failed after changing it, as the write would have happened by then). A batch of
-- orders on one hot record then writes it once instead of once per order. Within a
-- call every read of a record goes through rec_load, which holds the changed values,
-- so what a call sees is what it saw when each change was written at once.
local DIRTY = {}  -- per call
local function flush_records()
  for i = 1, #DIRTY do
    local r = DIRTY[i]
    redis.call('HSET', r.key, 'on', r.ons, 'he', r.hes, 'co', r.cos, 'ss', r.sss,
               'v', fmt(r.v), 'low', r.low and '1' or '0')
  end
end

local function avail(r)
  return r.on - r.he - r.co - r.ss
end

-- Units a record has promised beyond its sellable stock (on_hand - safety_stock, at
-- least 0). Summed over a SKU's records this is the SKU's exposure (`bey`), which its
-- backorder / pre-order allowance bounds; safety stock alone never counts as exposure.
local function exposure(r)
  return math.max(0, r.he + r.co - math.max(0, r.on - r.ss))
end

local SKUS = {}  -- per call
local POLICY_FIELDS = {'bo', 'po', 'prel', 'rp', 'rq', 'lt', 'mlq'}
local function sku_load(key)
  local s = SKUS[key]
  if s then return s end
  local v = redis.call('HMGET', key, 'bo', 'po', 'prel', 'rp', 'rq', 'lt', 'mlq', 'pv', 'bey')
  s = {key = key, bo = num(v[1]), po = num(v[2]), prel = num(v[3]), rp = num(v[4]),
       rq = num(v[5]), lt = num(v[6]), mlq = v[7] and num(v[7]) or MAX_QTY,
       pv = num(v[8]), bey = num(v[9])}
  SKUS[key] = s
  return s
end

-- Units the SKU may still promise beyond sellable stock now.
local function allowance(s)
  local limit = s.bo
  if s.po > 0 and NOW < s.prel then limit = s.po end
  return math.max(0, limit - s.bey)
end

-- Every entry this script appended: {stream, entry id, fields}, for replies that must
-- carry their events (confirm: the ledger writes them through before answering).
-- f: the entry's field list; n: how many of its slots are used (#f when omitted).
local EMITTED = {}  -- per call
local function emit(stream, f, n)
  n = n or #f
  local id = redis.call('XADD', stream, '*', unpack(f, 1, n))
  EMITTED[#EMITTED + 1] = {stream, id, f, n}
end

-- reply .. {n, stream, id, n_fields, fields..., stream, id, ...}
local function with_emitted(reply)
  reply[#reply + 1] = fmt(#EMITTED)
  for _, e in ipairs(EMITTED) do
    reply[#reply + 1] = e[1]
    reply[#reply + 1] = e[2]
    reply[#reply + 1] = fmt(e[4])
    local f = e[3]
    for i = 1, e[4] do reply[#reply + 1] = f[i] end
  end
  return reply
end

-- Apply one change to a loaded record and append its event (plus low_stock on the
-- downward edge); the record itself is written when the call ends (flush_records).
-- c = {etype, sku, wh, stream, don, dhe, dco, ss (new or nil),
-- whs (set key or nil): the SKU's warehouse set gets the warehouse,
-- new_whs (set key or nil): the same, only if the record is new (version 0) — for
--   reserve: every script that creates a record passes whs, so a record with a version
--   is a member already (rehydrate builds the sets from the same events),
-- extra = flat list of extra event fields}.
local function rec_change(r, s, c)
  local before = exposure(r)
  local new = r.v == 0
  local don, dhe, dco = c.don or 0, c.dhe or 0, c.dco or 0
  -- Each moved counter is formatted once, for the record and for the event.
  if don ~= 0 then r.on = r.on + don; r.ons = fmt(r.on) end
  if dhe ~= 0 then r.he = r.he + dhe; r.hes = fmt(r.he) end
  if dco ~= 0 then r.co = r.co + dco; r.cos = fmt(r.co) end
  if c.ss and c.ss ~= r.ss then r.ss = c.ss; r.sss = fmt(r.ss) end
  r.v = r.v + 1
  local low = avail(r) < s.rp
  local dbey = exposure(r) - before
  if dbey ~= 0 then
    s.bey = s.bey + dbey
    redis.call('HSET', s.key, 'bey', fmt(s.bey))
  end
  local ons, hes, cos, sss, vs = r.ons, r.hes, r.cos, r.sss, fmt(r.v)
  local lows, beys = low and '1' or '0', fmt(s.bey)
  if not r.dirty then
    r.dirty = true
    DIRTY[#DIRTY + 1] = r
  end
  if c.whs then
    redis.call('SADD', c.whs, c.wh)
  elseif c.new_whs and new then
    redis.call('SADD', c.new_whs, c.wh)
  end
  -- Built at its full size (the event has at most 48 slots; unused ones stay false and
  -- are not sent): growing it slot by slot reallocated it three times.
  local f = {'id', 's:' .. c.sku .. ':' .. c.wh .. ':' .. vs, 't', c.etype, 'ts', NOWS,
             'sku', c.sku, 'wh', c.wh, false, false, false, false, false, false, false,
             false, false, false, false, false, false, false, false, false, false, false,
             false, false, false, false, false, false, false, false, false, false, false,
             false, false, false, false, false, false, false}
  local n = 10
  if don ~= 0 then f[n + 1] = 'don'; f[n + 2] = fmt(don); n = n + 2 end
  if dhe ~= 0 then f[n + 1] = 'dhe'; f[n + 2] = fmt(dhe); n = n + 2 end
  if dco ~= 0 then f[n + 1] = 'dco'; f[n + 2] = fmt(dco); n = n + 2 end
  f[n + 1], f[n + 2], f[n + 3], f[n + 4], f[n + 5], f[n + 6] = 'on', ons, 'he', hes, 'co', cos
  f[n + 7], f[n + 8], f[n + 9], f[n + 10] = 'ss', sss, 'v', vs
  f[n + 11], f[n + 12], f[n + 13], f[n + 14] = 'low', lows, 'bey', beys
  n = n + 14
  local extra = c.extra
  if extra then
    for i = 1, #extra, 2 do
      if extra[i + 1] ~= '' then
        f[n + 1] = extra[i]; f[n + 2] = extra[i + 1]; n = n + 2
      end
    end
  end
  emit(c.stream, f, n)
  if low and not r.low then
    emit(c.stream, {'id', 'l:' .. c.sku .. ':' .. c.wh .. ':' .. vs, 't', 'low_stock',
                    'ts', NOWS, 'sku', c.sku, 'wh', c.wh, 'on', ons, 'he', hes, 'co', cos,
                    'ss', sss, 'v', vs, 'low', lows, 'bey', beys})
  end
  r.low = low
end

-- A range check of a counter's new value, for use before any write.
local function within(n)
  return n >= 0 and n <= MAX_STOCK
end

-- Before a write: would the SKU's exposure stay within MAX_STOCK if record r moved to
-- these levels? (Write-downs and safety stock can raise it without any allowance.)
local function exposure_within(r, s, on, he, co, ss)
  local after = math.max(0, he + co - math.max(0, on - ss))
  return s.bey - exposure(r) + after <= MAX_STOCK
end

------------------------------------------------------------------ reservations
-- Header fields: id st fp own cr dl cap nx up al dk
--   al: JSON list of allocations {l=line, s=sku, w=wh, q=qty, k=stock key,
--       g=sku key, h=holds key, e=stream key, r=ready marker key}
local STATUSES = {pending = true, confirmed = true, released = true, expired = true,
                  fulfilled = true, cancelled = true}
local function header_load(hk)
  local v = redis.call('HMGET', hk, 'id', 'st', 'fp', 'own', 'cr', 'dl', 'cap', 'nx', 'al',
                       'dk')
  if not v[2] then return nil end
  local ok, allocs = pcall(cjson.decode, v[9] or '')
  if not ok or type(allocs) ~= 'table' or not STATUSES[v[2]] then reject('CORRUPT') end
  return {key = hk, id = v[1], st = v[2], fp = v[3], own = v[4] or '', cr = v[5],
          dl = num(v[6]), cap = num(v[7]), nx = num(v[8]), al = v[9],
          allocs = allocs, dk = v[10]}
end

local function view(code, h)
  return {code, NOWS, h.st, h.cr, fmt(h.dl), h.own, h.al}
end

-- Load (and so type-check) everything resolving h will write, before writing.
local function resolve_check(h)
  for _, a in ipairs(h.allocs) do
    require_ready(a.r)
    rec_load(a.k)
    sku_load(a.g)
    want_type(a.e, 'stream')
    want_type(a.h, 'zset')
  end
  want_type(h.dk, 'zset')
end

local RESOLVE_DELTAS = {
  confirmed = function(q) return 0, -q, q end,
  released = function(q) return 0, -q, 0 end,
  expired = function(q) return 0, -q, 0 end,
  fulfilled = function(q) return -q, 0, -q end,
  cancelled = function(q) return 0, 0, -q end,
}
local UNHOLDS = {confirmed = true, released = true, expired = true}
local TERMINAL = {released = true, expired = true, fulfilled = true, cancelled = true}

-- Move reservation h to status st (an event per allocation). retention_ms: how long
-- a terminal header is kept for idempotent repeats. Call after resolve_check(h).
local function resolve(h, st, actor, retention_ms)
  local deltas = RESOLVE_DELTAS[st]
  for _, a in ipairs(h.allocs) do
    local don, dhe, dco = deltas(a.q)
    rec_change(rec_load(a.k), sku_load(a.g), {
      etype = st, sku = a.s, wh = a.w, stream = a.e, don = don, dhe = dhe, dco = dco,
      extra = {'res', h.id, 'ln', fmt(a.l), 'act', actor}})
    if UNHOLDS[st] then redis.call('ZREM', a.h, h.key) end
  end
  if UNHOLDS[st] then redis.call('ZREM', h.dk, h.key) end
  h.st = st
  redis.call('HSET', h.key, 'st', st, 'up', NOWS)
  if TERMINAL[st] then redis.call('PEXPIRE', h.key, fmt(retention_ms)) end
end

-- Overdue-expiry in two phases, so that a corrupt key anywhere stops the whole batch
-- before any write: due_collect() loads and checks, due_expire() writes.
-- `batch` = {items = {{zkey, hk, h}, ...}, seen = {hk = true}}; several index keys may
-- feed one batch (a reservation listed twice is taken once).
local function due_collect(batch, zkey, limit)
  want_type(zkey, 'zset')
  local due = redis.call('ZRANGEBYSCORE', zkey, '-inf', NOWS, 'LIMIT', '0', fmt(limit))
  for _, hk in ipairs(due) do
    if not batch.seen[hk] then
      batch.seen[hk] = true
      local h = header_load(hk)
      batch.items[#batch.items + 1] = {zkey, hk, h}
      if h and h.st == 'pending' and h.dl <= NOW then resolve_check(h) end
    end
  end
  return batch
end

local function due_expire(batch, retention_ms)
  local n = 0
  for _, item in ipairs(batch.items) do
    local zkey, hk, h = item[1], item[2], item[3]
    if h and h.st == 'pending' and h.dl <= NOW then
      resolve(h, 'expired', '', retention_ms)
      n = n + 1
    elseif h and h.st == 'pending' then
      redis.call('ZADD', zkey, h.dl, hk)  -- index behind the header: repair, keep
    else
      redis.call('ZREM', zkey, hk)        -- resolved or purged: drop the stale entry
    end
  end
  return n
end

local function new_batch()
  return {items = {}, seen = {}}
end

-- Runs main() and turns reject(...) into the reply {code, now_ms, ...}. The outermost
-- run of a call (a batch runs each order in a nested one) writes the changed records
-- last (flush_records).
local DEPTH = 0  -- per call
local function run(main)
  DEPTH = DEPTH + 1
  local ok, res = pcall(main)
  DEPTH = DEPTH - 1
  if DEPTH == 0 then flush_records() end
  if ok then return res end
  if type(res) == 'table' and res.err then return redis.error_reply(res.err) end
  if type(res) == 'table' then
    local out = {res[1], NOWS}
    for i = 2, #res do out[#out + 1] = res[i] end
    return out
  end
  return redis.error_reply(tostring(res))
end

-- Plan one line; mirrors onhand.engine.planning.plan_line. Returns allocations
-- {{index, qty}, ...} or nil plus the most the line could get.
local function plan_line(qty, av, split, allowance)
  local n = #av
  if n == 1 then  -- (what both branches below come to for one candidate)
    local a1 = math.max(0, av[1])
    if qty - a1 > allowance then return nil, a1 + allowance end
    return {{1, qty}}, qty
  end
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

-- Allocations are stored, resolved and listed by line, then warehouse id, compared
-- byte by byte (Lua's string `<` follows the server's locale): the order the API
-- lists them in and a rehydrate rebuilds them in, so every resolution emits its
-- events in one order whatever order the plan chose.
local function alloc_before(x, y)
  if x.l ~= y.l then return x.l < y.l end
  local a, b = x.w, y.w
  for i = 1, math.min(#a, #b) do
    local p, q = string.byte(a, i), string.byte(b, i)
    if p ~= q then return p < q end
  end
  return #a < #b
end

local FINGERPRINTS = {}  -- per call
-- Reserve one order (reserve.lua's contract) whose keys are KEYS[k0..kn] and whose
-- arguments are ARGV[a0..an], a0 being its retention_ms (the argument after its clock;
-- the caller has set the clock). Argument indices in BADARG replies are absolute.
-- Called by reserve (one order) and reserve_many (one call per order of a batch).
-- A new hold also returns its allocation list (the tables `al` encodes) as a second
-- value, which only hold_order reads.
local function reserve_order(k0, a0, kn, an)
  local A, K = a0 - 2, k0 - 1
  local retention = arg_int(A + 2, 1, MAX_STOCK)
  local rid = arg_id(A + 3)
  local fp = ARGV[A + 4]
  if not FINGERPRINTS[fp] then
    if type(fp) ~= 'string' or not string.find(fp, '^[0-9a-f]+$') or #fp ~= 64 then
      reject('BADARG', fmt(A + 4))
    end
    FINGERPRINTS[fp] = true
  end
  local ttl = arg_int(A + 5, 1, MAX_TTL_MS)
  local life = arg_int(A + 6, 1, MAX_STOCK)
  local owner = arg_opt_id(A + 7)
  local actor = arg_text(A + 8)
  local nl = arg_int(A + 9, 1, 100)
  -- A line's candidate c is warehouse ARGV[w0 + c] with stock record KEYS[r0 + c].
  local lines = {}
  local seen = nl > 1 and {} or nil  -- (duplicate checks only where there can be any)
  local ai, ki = A + 10, K + 4
  for li = 1, nl do
    local sku = arg_id(ai)
    if seen then
      if seen[sku] then reject('BADARG', fmt(ai)) end
      seen[sku] = true
    end
    local qty = arg_int(ai + 1, 1, MAX_QTY)
    local split = arg_flag(ai + 2)
    local n = arg_int(ai + 3, 1, 32)
    if n == 1 then
      arg_id(ai + 4)
    else
      local wseen = {}
      for c = 1, n do
        local wh = arg_id(ai + 3 + c)
        if wseen[wh] then reject('BADARG', fmt(ai + 3 + c)) end
        wseen[wh] = true
      end
    end
    lines[li] = {sku = sku, qty = qty, split = split, n = n, w0 = ai + 3, r0 = ki + 4,
                 skuk = KEYS[ki], whsk = KEYS[ki + 1], holdk = KEYS[ki + 2],
                 strk = KEYS[ki + 3], readyk = KEYS[ki + 4], s = false, plan = false}
    ai = ai + 4 + n
    ki = ki + 5 + n
  end
  if an ~= ai - 1 or kn ~= ki - 1 then reject('BADARG', fmt(A + 9)) end

  -- Fencing first: a Redis that lost or rolled back data answers nothing from it.
  require_ready(KEYS[K + 3])
  for _, line in ipairs(lines) do require_ready(line.readyk) end

  -- Idempotency: a known id answers with what it holds (or a conflict), nothing more.
  -- (EXISTS first: a new id, the common case, needs no header fields.)
  if redis.call('EXISTS', KEYS[K + 1]) == 1 then
    local h = header_load(KEYS[K + 1])
    if h then
      if h.fp == fp then return view('REPLAY', h) end
      reject('CONFLICT')
    end
  end

  -- Type-check every key written below, and load what the plan reads. The warehouse
  -- set is written only for a new record (rec_change's new_whs), so it is checked only
  -- when a candidate record is new.
  want_type(KEYS[K + 2], 'zset')
  for li, line in ipairs(lines) do
    want_type(line.holdk, 'zset')
    want_type(line.strk, 'stream')
    line.s = sku_load(line.skuk)
    local fresh = false
    for c = 1, line.n do fresh = rec_load(KEYS[line.r0 + c]).v == 0 or fresh end
    if fresh then want_type(line.whsk, 'set') end
    if line.qty > line.s.mlq then reject('LINECAP', fmt(li - 1), fmt(line.s.mlq)) end
  end

  local function plan_all()
    local short = {}
    for _, line in ipairs(lines) do
      local av = {}
      for c = 1, line.n do av[c] = avail(rec_load(KEYS[line.r0 + c])) end
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
      local r = rec_load(KEYS[line.r0 + p[1]])
      if r.he + p[2] > MAX_STOCK then reject('LIMIT', line.sku, ARGV[line.w0 + p[1]]) end
    end
  end

  -- Write: header, indexes, then one hold (and event) per allocation.
  local cap = NOW + life
  local deadline = math.min(NOW + ttl, cap)
  local allocs = {}
  for li, line in ipairs(lines) do
    for _, p in ipairs(line.plan) do
      allocs[#allocs + 1] = {l = li - 1, s = line.sku, w = ARGV[line.w0 + p[1]], q = p[2],
                             k = KEYS[line.r0 + p[1]], g = line.skuk, h = line.holdk,
                             e = line.strk, r = line.readyk}
    end
  end
  if #allocs > 1 then table.sort(allocs, alloc_before) end
  local al = cjson.encode(allocs)
  local dls, caps = fmt(deadline), fmt(cap)
  redis.call('HSET', KEYS[K + 1], 'id', rid, 'st', 'pending', 'fp', fp, 'own', owner,
             'cr', NOWS, 'dl', dls, 'cap', caps, 'nx', '0', 'up', NOWS, 'al', al,
             'dk', KEYS[K + 2])
  redis.call('ZADD', KEYS[K + 2], dls, KEYS[K + 1])
  for li, line in ipairs(lines) do
    redis.call('ZADD', line.holdk, dls, KEYS[K + 1])
    local lns = fmt(li - 1)
    for _, p in ipairs(line.plan) do
      rec_change(rec_load(KEYS[line.r0 + p[1]]), line.s, {
        etype = 'reserved', sku = line.sku, wh = ARGV[line.w0 + p[1]], stream = line.strk,
        dhe = p[2], new_whs = line.whsk,
        extra = {'res', rid, 'ln', lns, 'dl', dls, 'cap', caps, 'fp', fp,
                 'own', owner, 'act', actor}})
    end
  end
  return {'OK', NOWS, 'pending', NOWS, dls, owner, al}, allocs
end

-- The checkout's one call (hold.lua's contract): the Idempotency-Key record, the
-- client's hold admission and the reservation, for a request whose KEYS are
-- KEYS[k0..kn] and ARGV ARGV[a0..an] (a0: the argument after its clock).
--   a new hold: the order is reserved, admitted (its slot ends ttl_ms from now) and
--     the key's record stores the API's 201 answer: {'HELD', now, body}
--   the key has a record: {'FOUND', now, value} (nothing changed)
--   the client is at its hold limit: the record is taken (pending), nothing reserved:
--     {'FULL', now, retry_after_ms}
--   any other verdict of reserve (REPLAY, CONFLICT, SHORT, LINECAP, LIMIT): the record
--     is taken (pending), no slot added; the reply is reserve's.
--   BADARG, NOTREADY, WRONGTYPE, CORRUPT: nothing changed; the reply is reserve's.
local UNRECORDED = {BADARG = true, NOTREADY = true, WRONGTYPE = true, CORRUPT = true}
-- A client's slots (its holds zset) as far as this call knows them: for one clock
-- reading (`now`), the live count (slots not past `now`; false: not read yet) and
-- whether past slots are swept; and a lower bound of the key's expiry that this call
-- set (false: none known). A batch of one client's holds then reads the count, sweeps
-- and moves the expiry once instead of once per order; an order with another clock
-- (tests pass one per order) reads and sweeps again. (A sweep that deletes the key
-- with its expiry removed every slot, the latest one this call set included: that
-- bound is then below the clock, so the next slot, later than the clock, moves the
-- expiry again.)
local SLOTS = {}  -- per call
local function slots_of(holds)
  local st = SLOTS[holds]
  if not st then
    st = {now = false, live = false, swept = false, exp = false}
    SLOTS[holds] = st
  end
  if st.now ~= NOW then st.now, st.live, st.swept = NOW, false, false end
  return st
end
local function sweep_slots(st, holds)
  if st.swept then return end
  redis.call('ZREMRANGEBYSCORE', holds, '-inf', '(' .. NOWS)
  st.swept = true
end
local function hold_order(k0, a0, kn, an)
  local holds, idem = KEYS[k0], KEYS[k0 + 1]
  local fp, token = ARGV[a0], arg_text(a0 + 1)
  if not FINGERPRINTS[fp] then
    if type(fp) ~= 'string' or not string.find(fp, '^[0-9a-f]+$') or #fp ~= 64 then
      reject('BADARG', fmt(a0))
    end
    FINGERPRINTS[fp] = true
  end
  local lock_ms = arg_int(a0 + 2, 1, MAX_TTL_MS)
  local record_ttl = arg_int(a0 + 3, 1, MAX_STOCK)
  local limit = arg_int(a0 + 4, 1, MAX_QTY)
  local location = ARGV[a0 + 5]  -- the reservations' path, '/' (the id follows)
  if type(location) ~= 'string' or #location > 64
    or string.find(location, '[^A-Za-z0-9%._/%-]') or string.sub(location, -1) ~= '/' then
    reject('BADARG', fmt(a0 + 5))
  end
  local ra = a0 + 6  -- reserve's ARGV: retention, id, fingerprint, ttl_ms, ...
  local rid = arg_id(ra + 1)
  local ttl = arg_int(ra + 3, 1, MAX_TTL_MS)
  if not kn or kn < k0 + 2 then reject('BADARG', fmt(a0)) end
  want_type(idem, 'string')
  want_type(holds, 'zset')
  local value = redis.call('GET', idem)
  if value then return {'FOUND', NOWS, value} end
  local pending = 'P|' .. fp .. '|' .. token
  -- Admission (lua/admit.lua's add), read-only until the reservation is made: live
  -- slots are those whose deadline is not past.
  local st = slots_of(holds)
  local known = redis.call('ZSCORE', holds, rid)
  local live = known and tonumber(known) >= NOW
  if not live then
    if not st.live then st.live = redis.call('ZCOUNT', holds, NOWS, '+inf') end
    if st.live >= limit then
      local first = redis.call('ZRANGEBYSCORE', holds, NOWS, '+inf', 'WITHSCORES', 'LIMIT', '0', '1')
      redis.call('SET', idem, pending, 'PX', fmt(lock_ms))
      sweep_slots(st, holds)
      return {'FULL', NOWS, fmt(math.max(0, tonumber(first[2]) - NOW))}
    end
  end
  local ok, reply, allocs = pcall(reserve_order, k0 + 2, ra, kn, an)
  if not ok then
    if type(reply) ~= 'table' then error(reply, 0) end  -- a Redis error: not a verdict
    local out = {reply[1], NOWS}
    for i = 2, #reply do out[#out + 1] = reply[i] end
    reply = out
  end
  if reply[1] ~= 'OK' then
    -- A verdict is answered and stored under the record; a call that changed nothing
    -- for a reason of its own (bad argument, fenced, bad data) leaves no record.
    if not UNRECORDED[reply[1]] then redis.call('SET', idem, pending, 'PX', fmt(lock_ms)) end
    return reply
  end
  -- Admitted: as admit's add after its clean-up of past slots. The key lives as long as
  -- its latest slot: GT moves an expiry only later; a key without one (new) gets one.
  local slot = NOW + ttl
  local slots = fmt(slot)
  sweep_slots(st, holds)
  if not known or tonumber(known) < slot then
    redis.call('ZADD', holds, slots, rid)
    if st.live and not live then st.live = st.live + 1 end
  end
  if not (st.exp and st.exp >= slot) then
    if redis.call('PEXPIREAT', holds, slots, 'GT') == 0 then
      redis.call('PEXPIREAT', holds, slots, 'NX')
    end
    st.exp = slot  -- the expiry is now at least slot (GT kept a later one, NX set it)
  end
  -- The answer, as the API renders a Reservation (onhand.api.routes.reservations.render,
  -- orjson), and the same text escaped as a JSON string for the stored record: ids are
  -- allow-listed and numbers integers, so a quote is the only character to escape.
  local dot = string.find(rid, '.', 1, true)
  local order = dot and string.sub(rid, dot + 1) or ''
  if order == '' then order = rid end
  local parts = {}  -- allocs: sorted as the API lists them
  for i, a in ipairs(allocs) do
    parts[i] = '{"line":' .. fmt(a.l) .. ',"sku":"' .. a.s .. '","warehouse":"' .. a.w ..
               '","qty":' .. fmt(a.q) .. '}'
  end
  local al = table.concat(parts, ',')
  local body = '{"reservation_id":"' .. rid .. '","order_id":"' .. order ..
               '","status":"pending","created_ms":' .. NOWS .. ',"deadline_ms":' .. reply[5] ..
               ',"allocations":[' .. al .. '],"at_ms":' .. NOWS .. '}'
  local q = '\\"'
  local escaped = '{' .. q .. 'reservation_id' .. q .. ':' .. q .. rid .. q .. ',' .. q ..
                  'order_id' .. q .. ':' .. q .. order .. q .. ',' .. q .. 'status' .. q ..
                  ':' .. q .. 'pending' .. q .. ',' .. q .. 'created_ms' .. q .. ':' .. NOWS ..
                  ',' .. q .. 'deadline_ms' .. q .. ':' .. reply[5] .. ',' .. q ..
                  'allocations' .. q .. ':[' .. string.gsub(al, '"', q) .. '],' .. q ..
                  'at_ms' .. q .. ':' .. NOWS .. '}'
  -- The stored answer, as lua/idempotency.lua's finish stores it (onhand.api.idempotency).
  redis.call('SET', idem, 'D|' .. fp .. '|{"s":201,"b":"' .. escaped ..
             '","m":"application/json","h":{"location":"' .. location .. rid .. '"}}',
             'PX', fmt(record_ttl))
  return {'HELD', NOWS, body}
end

-- m orders in one call (reserve_many's and hold_many's contract): ARGV[1] = m
-- (1..256), then each order's (number of KEYS, number of ARGV), then the orders' KEYS
-- and ARGV blocks one after the other, each block what `order` takes (starting with
-- its clock_ms). Each order runs as its own call would, answered on its own.
local function run_batch(order)
  local m = arg_int(1, 1, 256)
  if #ARGV < 1 + 2 * m then reject('BADARG', '1') end
  local sizes, keys_total, args_total = {}, 0, 1 + 2 * m
  for i = 1, m do
    local nk, na = arg_int(2 * i, 1, #KEYS), arg_int(2 * i + 1, 1, #ARGV)
    sizes[i] = {nk, na}
    keys_total, args_total = keys_total + nk, args_total + na
  end
  if keys_total ~= #KEYS or args_total ~= #ARGV then reject('BADARG', '1') end
  local server_now
  local out = {'OK', '0'}
  local k, b = 1, 2 + 2 * m
  for i = 1, m do
    local k0, b0, nk, na = k, b, sizes[i][1], sizes[i][2]
    local reply = run(function()
      NOW, NOWS = 0, '0'
      if ARGV[b0] == '0' then
        if not server_now then
          local t = redis.call('TIME')
          server_now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
        end
        NOW = server_now
      else
        NOW = int_of(ARGV[b0], 1, MAX_STOCK, fmt(b0))
      end
      NOWS = fmt(NOW)
      return order(k0, b0 + 1, k0 + nk - 1, b0 + na - 1)
    end)
    if type(reply) == 'table' and reply[1] == 'BADARG' then
      reply[3] = fmt(tonumber(reply[3]) - b0 + 1)
    end
    out[i + 2] = reply
    k, b = k + nk, b + na
  end
  return out
end
