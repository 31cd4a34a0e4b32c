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
      return reserve_order(k0, b0 + 1, k0 + nk - 1, b0 + na - 1)
    end)
    if type(reply) == 'table' and reply[1] == 'BADARG' then
      reply[3] = fmt(tonumber(reply[3]) - b0 + 1)
    end
    out[i + 2] = reply
    k, b = k + nk, b + na
  end
  return out
end

return run(main)
