#!lua
--[[
  reserve_many — several independent reserve calls in one call (the engine's coalescer
  sends concurrent callers' reserves this way). Each order is exactly a reserve call:
  checked completely before its first write, answered on its own (a rejected or
  failed order does not stop the next), in the order given. What the orders share is
  the call itself: its entry, one server-clock reading, and the per-call caches of
  ready markers, SKU hashes and records (an order sees the writes of the orders before
  it, as consecutive reserve calls would).

  KEYS[1], …  the orders' KEYS, one block after the other (each block as reserve's KEYS)
  ARGV[1]  m: number of orders (1..256)
  ARGV[2i], ARGV[2i+1]  (i = 1..m) the number of KEYS and of ARGV of order i
  then the orders' ARGV, one block after the other, each block exactly reserve's ARGV
    (starting with its clock_ms: '0' = the server clock, read once for the call)

  Returns {'OK', '0', reply_1, ..., reply_m}: reply_i is what reserve would have
  answered for order i (its BADARG indices counted in its own block, clock = 1), or an
  error reply if a Redis error stopped that order.
          {'BADARG', '0', i}   the block counts do not add up (nothing ran)
]]

local function main()
  return run_batch(reserve_order)
end

return run(main)
