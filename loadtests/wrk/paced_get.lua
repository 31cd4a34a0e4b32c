-- get.lua with a pause before every request: `-- <pause_ms>` after the URL. Each
-- connection sends, waits for the answer, pauses, sends again, so N connections offer
-- at most N * 1000 / pause_ms requests/s: a load below the server's capacity, at which
-- latency is the service time rather than the queue in front of a saturated server
-- (python -m loadtests.bench, figure d: the paced single and bulk reads).

local here = debug.getinfo(1, 'S').source:match('^@(.*/)') or './'
dofile(here .. 'get.lua')

local pause_ms = 0

function init(args)
  pause_ms = tonumber(args[1] or '') or 0
end

function delay()
  return pause_ms
end
