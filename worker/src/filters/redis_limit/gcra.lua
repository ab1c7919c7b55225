-- Zentinel's shared rate limit: GCRA (the generic cell rate algorithm) on one key.
--
-- The key holds the theoretical arrival time (TAT) of the next request, in microseconds of
-- the Redis server's clock: every instance reads the same clock, so instances whose own clocks
-- disagree still share one limit. A request is admitted when admitting it leaves the TAT at
-- most `burst` intervals ahead of now, which is a token bucket of `burst` tokens refilled at
-- one per `interval`.
--
-- KEYS[1]   the limit's key
-- ARGV[1]   interval: microseconds between two requests at the limit (1e6 / max-rps)
-- ARGV[2]   burst: requests admitted at once from an idle key
-- ARGV[3]   max delay in microseconds: a refused request that would be admitted within it is
--           admitted late instead (its slot is reserved now); 0 never reserves
--
-- Returns {allowed (0|1), remaining, retry after (us), reset (us), delay (us)}:
--   remaining   requests still admitted at once after this one
--   retry after refused: how long until this request would be admitted
--   reset       how long until the key is idle again (a full burst admitted)
--   delay       admitted late: how long the caller holds the request first
--
-- The key expires when it is idle again: an absent key and an idle one mean the same.

-- Redis < 5 replicates scripts verbatim, which TIME forbids; later versions ignore this.
if redis.replicate_commands then
    redis.replicate_commands()
end

local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local max_delay = tonumber(ARGV[3])

local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])

local tat = tonumber(redis.call('GET', KEYS[1])) or 0
if tat < now then
    tat = now
end
local new_tat = tat + interval
local ahead = new_tat - now
local allowed_ahead = burst * interval

local function store()
    -- '%.17g': Lua's default number format keeps 14 digits, and a TAT has 16 and a fraction
    -- (the interval need not be a whole number of microseconds).
    redis.call('SET', KEYS[1], string.format('%.17g', new_tat),
        'PX', string.format('%.0f', math.ceil(ahead / 1000) + 1))
end

if ahead <= allowed_ahead then
    store()
    return {1, math.floor((allowed_ahead - ahead) / interval), 0, ahead, 0}
end
local wait = ahead - allowed_ahead
if wait <= max_delay then
    store()
    return {1, 0, 0, ahead, wait}
end
return {0, 0, wait, tat - now, 0}
