-- get.lua at a fixed offered rate: `-- <requests_per_s> <threads>` after the URL
-- (threads: wrk's -t). Each thread keeps a schedule of send times, one every
-- threads * 1000 / rate ms, on a monotonic clock (clock_gettime through LuaJIT's FFI:
-- wrk's Lua has no clock of its own); a connection that gets its answer waits for the
-- next free slot (wrk's delay() hook). So the offered rate does not fall when latency
-- rises, as it would with a fixed pause after each answer; a slot whose time has passed
-- (every connection busy) is sent at once, and one more than a second late is dropped,
-- which shows as a measured rate below the offered one. wrk times each request from
-- its actual send. Used by python -m loadtests.bench, figure d (the paced reads).

local here = debug.getinfo(1, 'S').source:match('^@(.*/)') or './'
dofile(here .. 'get.lua')

local ffi = require('ffi')
ffi.cdef [[
typedef struct { long tv_sec; long tv_nsec; } onhand_timespec;
int clock_gettime(int clock_id, onhand_timespec *tp);
]]
local CLOCK_MONOTONIC = 1
local ts = ffi.new('onhand_timespec')

local function now_ms()
  ffi.C.clock_gettime(CLOCK_MONOTONIC, ts)
  return tonumber(ts.tv_sec) * 1000 + tonumber(ts.tv_nsec) / 1e6
end

local interval_ms = 1000
local next_ms = nil

function init(args)
  local rate, threads = tonumber(args[1] or ''), tonumber(args[2] or '')
  if not rate or rate <= 0 or not threads or threads < 1 then
    error('rate_get.lua: expected -- <requests_per_s> <threads>')
  end
  interval_ms = threads * 1000 / rate
end

function delay()
  local now = now_ms()
  if next_ms == nil or next_ms < now - 1000 then
    next_ms = now
  end
  local slot = next_ms
  next_ms = next_ms + interval_ms
  if slot <= now then
    return 0
  end
  return slot - now
end
