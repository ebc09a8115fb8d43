"""The Lua scripts the Redis bus runs: the fenced append that numbers events, and the counter's seed.

Each runs atomically in Redis. The append and the seed check the lease's token
first (KEYS[1] must still hold ARGV[1]): that check is the fence, so a worker
that lost the lease can neither number an event nor reseed the counter. The lease itself is
redis-py's Lock (bus/lease.py).
"""

# KEYS: lease, stream, counter, this batch's key. ARGV: token, maxlen, then each event's JSON after
# its `{"seq":N,`. Returns {1, first seq, last seq, epoch}; {0} when the token is not the lease's;
# {-1} when the counter is gone (Redis lost its data): the leader must seed it again before numbering.
# A batch sent again (its answer was lost) gets the answer it had, and is not appended twice.
APPEND = """
local done = redis.call('GET', KEYS[4])
if done then return cjson.decode(done) end
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return {0} end
local epoch = redis.call('HGET', KEYS[3], 'epoch')
if not epoch then return {-1} end
local seq = tonumber(redis.call('HGET', KEYS[3], 'seq'))
local first = seq + 1
for i = 3, #ARGV do
  seq = seq + 1
  local n = string.format('%d', seq)
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], '*', 'seq', n, 'epoch', epoch, 'e', '{"seq":' .. n .. ',' .. ARGV[i])
end
redis.call('HSET', KEYS[3], 'seq', string.format('%d', seq))
local answer = {1, string.format('%d', first), string.format('%d', seq), epoch}
redis.call('SET', KEYS[4], cjson.encode(answer), 'PX', 60000)
return answer
"""

# KEYS: lease, counter. ARGV: token, floor seq, epoch. Seeds the counter when it is missing (or
# behind the floor in its own epoch); returns {1, seq, epoch} as it stands, {0} when not the holder.
SEED = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return {0} end
local epoch = redis.call('HGET', KEYS[2], 'epoch')
if not epoch then
  redis.call('HSET', KEYS[2], 'seq', ARGV[2])
  redis.call('HSET', KEYS[2], 'epoch', ARGV[3])
elseif epoch == ARGV[3] and tonumber(redis.call('HGET', KEYS[2], 'seq')) < tonumber(ARGV[2]) then
  redis.call('HSET', KEYS[2], 'seq', ARGV[2])
end
return {1, redis.call('HGET', KEYS[2], 'seq'), redis.call('HGET', KEYS[2], 'epoch')}
"""
