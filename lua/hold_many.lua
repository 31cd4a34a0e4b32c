#!lua
--[[
  hold_many — several independent hold calls in one call (the engine's coalescer sends
  concurrent checkouts this way), as reserve_many does for reserve: each order is
  exactly a hold call, checked completely before its first write, answered on its own.

  KEYS[1], …  the orders' KEYS, one block after the other (each block as hold's KEYS)
  ARGV[1]  m: number of orders (1..256)
  ARGV[2i], ARGV[2i+1]  (i = 1..m) the number of KEYS and of ARGV of order i
  then the orders' ARGV, one block after the other, each block exactly hold's ARGV

  Returns {'OK', '0', reply_1, ..., reply_m} (reply_i: hold's reply for order i, its
  BADARG indices counted in its own block), or {'BADARG', '0', i} when the block
  counts do not add up (nothing ran).
]]

local function main()
  return run_batch(hold_order)
end

return run(main)
