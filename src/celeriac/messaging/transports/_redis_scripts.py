"""The Lua scripts of the Redis transport.

Every state change that must not be torn in half runs as one script, so a crash or a lost
connection between two commands cannot leave a message neither queued nor recorded as
unacked. The scripts keep kombu's keys exactly (queue lists and priority sub-lists, the
``unacked`` hash and ``unacked_index`` sorted set, ``unacked_mutex``, the
``_kombu.binding.*`` sets) and add a few of their own under ``_celeriac.*``:

* ``_celeriac.delivery.<tag>`` (hash, expires): ``n`` = how many times celeriac handed the
  message out (also the claim token), ``s`` = the ``unacked_index`` score written by the
  current celeriac claim. An ack, extend or requeue is applied only when both still match,
  so a holder that lost its lease (to a restore, to a kombu worker, to another celeriac
  worker) cannot settle the newer claim.
* ``_celeriac.lease`` (sorted set): tag -> lease deadline of every celeriac claim, judged
  by the server clock. kombu peers keep judging by ``unacked_index`` and their own timeout.
* ``_celeriac.delayed.<queue>`` (sorted set): ``"<step>|<envelope>"`` -> not-before time.
  Used only while ``_celeriac.consumers.<queue>`` exists (a celeriac consumer fetched from
  the queue in the last :data:`PRESENCE_SECONDS`): only celeriac moves due messages out of
  it. With no celeriac consumer, a delayed message goes to the queue at once, as kombu
  puts it, and the consumer holds it until the ``eta`` its headers carry (Celery workers
  do), so a queue served by Celery workers alone still runs it.
* ``_celeriac.ttl.<queue>`` (sorted set): tag -> time after which the waiting message is
  dropped (queues declared with ``message_ttl``).
* ``_celeriac.queue.<queue>`` (hash): ``expires`` and ``ttl`` in ms, ``bindings`` (JSON
  list of ``[exchange, member]``) so any process can delete the queue's bindings.
* ``_celeriac.expiring`` (sorted set): queue -> time it dies unless used before.
* ``_celeriac.exchanges`` (hash): exchange -> type, for exchanges declared by celeriac.
* ``_celeriac.offers.<queue>`` (sorted set): offer id -> deadline, and
  ``_celeriac.offer.<id>`` (hash, expires): a celeriac fetch whose claim came back short
  offers to take the next messages of its queues as they are published (see
  :data:`CLAIM`): ``n`` = how many more it takes, ``spec`` = JSON ``[channel, visibility
  timeout, delivery record lifetime, unacked, unacked_index, lease, offer lifetime,
  queue...]``. A publish that finds a live offer on a queue with no message waiting
  records the claim itself and sends ``"<token>[L] <len(queue)> <queue><envelope>"`` on
  the channel (``L``: the offer's last message): the fetch saves a claim's round trip
  per message. With nobody subscribed to the channel (its worker went away) it
  withdraws the offer and pushes as usual. The
  fetch's next claim withdraws the offer (and makes a new one if it comes back short).
  An offer takes at most :data:`OFFER_LIMIT` messages.

Times are seconds (floats) from Redis ``TIME`` unless a name says ms. Keys are built inside
the scripts from the global key prefix, as kombu builds them (so, like kombu, this layout
is for a single Redis server or a Sentinel-managed master, not Redis Cluster).

Common arguments: ``ARGV[1]`` = key prefix, ``ARGV[2]`` = priority separator,
``ARGV[3]`` = priority steps as ``"0,3,6,9"``.
"""

from __future__ import annotations

__all__ = [
    "ACK",
    "CLAIM",
    "DECLARE_QUEUE",
    "DELETE_QUEUE",
    "EXTEND",
    "PUBLISH",
    "PUSH",
    "RELEASE_MUTEX",
    "REQUEUE",
    "RESTORE",
    "RESTORE_SCAN",
]

#: Seconds a fetch marks its queues as served by a celeriac consumer.
PRESENCE_SECONDS = 120
#: Seconds between a consumer's renewals of that mark (well inside its lifetime).
PRESENCE_REFRESH = 30
#: Most messages one offer takes before its fetch claims again: bounds what a worker
#: whose connection dies with hand-offs still on the wire leaves to its leases.
OFFER_LIMIT = 16
#: Larger envelopes are pushed, not handed off: an offer's hand-offs stay far below
#: Redis's output buffer limit for a subscriber (8 MB soft, 32 MB hard by default),
#: past which Redis drops its connection.
HANDOFF_MAX_BYTES = 65536

_PRELUDE = r"""
local P, SEP = ARGV[1], ARGV[2]
local PRESENCE = """ + str(PRESENCE_SECONDS) + r"""

local STEPS = {}
for s in string.gmatch(ARGV[3], '[^,]+') do STEPS[#STEPS + 1] = s end
local T = redis.call('TIME')
local NOW = tonumber(T[1]) + tonumber(T[2]) / 1000000
local EXPIRING = P .. '_celeriac.expiring'

local function list_key(q, step)
  if step == '0' then return P .. q end
  return P .. q .. SEP .. step
end

local function remove_queue(q)
  local meta = P .. '_celeriac.queue.' .. q
  local raw = redis.call('HGET', meta, 'bindings')
  if raw then
    local ok, list = pcall(cjson.decode, raw)
    if ok and type(list) == 'table' then
      for _, b in ipairs(list) do
        redis.call('SREM', P .. '_kombu.binding.' .. b[1], b[2])
        redis.call('SREM', P .. '_kombu.binding_permanent.' .. b[1], b[2])
      end
    end
  end
  local n = 0
  for _, step in ipairs(STEPS) do
    local key = list_key(q, step)
    n = n + redis.call('LLEN', key)
    redis.call('DEL', key)
  end
  n = n + redis.call('ZCARD', P .. '_celeriac.delayed.' .. q)
  redis.call('DEL', meta, P .. '_celeriac.delayed.' .. q, P .. '_celeriac.ttl.' .. q,
    P .. '_celeriac.offers.' .. q)
  redis.call('ZREM', EXPIRING, q)
  return n
end

local function is_dead(q)
  local d = redis.call('ZSCORE', EXPIRING, q)
  return d and tonumber(d) < NOW
end

local function consumers_key(q)
  return P .. '_celeriac.consumers.' .. q
end

-- Move due delayed messages of a queue to its lists (at most 1000 per call).
local function promote(q)
  local dkey = P .. '_celeriac.delayed.' .. q
  local due = redis.call('ZRANGEBYSCORE', dkey, '-inf', NOW, 'LIMIT', 0, 1000)
  if #due > 0 then
    for _, m in ipairs(due) do
      local bar = string.find(m, '|', 1, true)
      redis.call('LPUSH', list_key(q, string.sub(m, 1, bar - 1)), string.sub(m, bar + 1))
    end
    redis.call('ZREM', dkey, unpack(due))
  end
  return #due
end
"""

# Ringing doorbells, for every script that fills lists. A refused PUBLISH (an ACL user
# without channel rights) must not fail the script after its writes: the messages are
# stored, and fetches find them at their next poll.
_RING = r"""
-- Ring the doorbell of every queue in the set; 1, or 3 if one was refused.
local function ring(prefix, queues)
  local said = 1
  for q, _ in pairs(queues) do
    if type(redis.pcall('PUBLISH', prefix .. q, '')) ~= 'number' then said = 3 end
  end
  return said
end
"""

_OFFERS = r"""
local OFFERS = P .. '_celeriac.offers.'

-- Withdraw offer `id` (its spec decoded, if the caller has it) from every queue it was
-- made on.
local function withdraw(id, spec)
  local okey = P .. '_celeriac.offer.' .. id
  if spec == nil then
    local raw = redis.call('HGET', okey, 'spec')
    if not raw then return end
    spec = cjson.decode(raw)
  end
  redis.call('DEL', okey)
  for x = 8, #spec do redis.call('ZREM', OFFERS .. spec[x], id) end
end
"""

# Used by the publishing scripts (needs the prelude and _OFFERS).
_HANDOFF = (
    r"""
-- Give a message bound for queue q to a celeriac fetch waiting on it, recorded as that
-- fetch's claim exactly as CLAIM records one. False, with nothing changed, when no live
-- offer took it, q already holds messages (those go first), or the delivery tag has a
-- claim or a delivery history already (a message routed to two queues: their claims
-- would share one record). The offer served goes to the back of q's line, so idle
-- fetches take turns.
local function handoff(q, tag, env)
  local zkey = OFFERS .. q
  if #env > """
    + str(HANDOFF_MAX_BYTES)
    + r""" or redis.call('EXISTS', zkey) == 0 then return false end
  local keys = {}
  for _, s in ipairs(STEPS) do keys[#keys + 1] = list_key(q, s) end
  if redis.call('EXISTS', unpack(keys)) > 0 then return false end
  local dk = P .. '_celeriac.delivery.' .. tag
  if redis.call('EXISTS', dk) == 1 then return false end
  for _, id in ipairs(redis.call('ZRANGEBYSCORE', zkey, NOW, '+inf', 'LIMIT', 0, 3)) do
    local okey = P .. '_celeriac.offer.' .. id
    local f = redis.call('HMGET', okey, 'spec', 'n')
    if f[1] then
      local spec = cjson.decode(f[1])
      local chan, unacked, index, lease = spec[1], spec[4], spec[5], spec[6]
      if redis.call('HEXISTS', unacked, tag) == 1 then return false end
      -- channel subscribers only (PUBLISH also counts pattern subscribers): its fetch.
      -- A publisher whose ACL refuses PUBSUB or PUBLISH pushes, and leaves the offer be.
      local subs = redis.pcall('PUBSUB', 'NUMSUB', chan)
      if type(subs) ~= 'table' or subs.err then return false end
      if subs[2] > 0 then
        redis.call('HSET', unacked, tag, '[' .. env .. ', "", ' .. cjson.encode(q) .. ']')
        redis.call('ZADD', index, NOW, tag)
        redis.call('ZADD', lease, NOW + tonumber(spec[2]), tag)
        redis.call('HSET', dk, 'n', 1, 's', redis.call('ZSCORE', index, tag))
        redis.call('EXPIRE', dk, spec[3])
        local last = tonumber(f[2]) <= 1  -- said with the token: the fetch offers anew
        local head = last and '1L ' or '1 '
        local sent = redis.pcall('PUBLISH', chan, head .. #q .. ' ' .. q .. env)
        if type(sent) == 'number' and sent > 0 then
          if last then
            withdraw(id, spec)
          else
            redis.call('HINCRBY', okey, 'n', -1)
            redis.call('ZADD', zkey, NOW + tonumber(spec[7]), id)
          end
          return true
        end
        redis.call('HDEL', unacked, tag)  -- refused (an ACL): undone
        redis.call('ZREM', index, tag)
        redis.call('ZREM', lease, tag)
        redis.call('DEL', dk)
        return false
      end
      withdraw(id, spec)  -- its fetch went away
    else
      redis.call('ZREM', zkey, id)
    end
  end
  redis.call('ZREMRANGEBYSCORE', zkey, '-inf', NOW)
  return false
end
"""
)

#: Route and store a batch. ARGV[4] = doorbell channel prefix, ARGV[5] = message count,
#: then 8 fields per message: kind (default/direct/topic/fanout), exchange, routing key,
#: delivery tag, priority step, not-before ('' = now), envelope, fanout channel; or, for a
#: message going where the one before it went, one: '=' .. delivery tag .. '|' .. envelope.
#: A message is handed to a waiting fetch where one offers (see ``_celeriac.offers``).
#: Returns 1, or 3 when a doorbell was refused (see :data:`PUSH`).
PUBLISH = (
    _PRELUDE
    + _RING
    + _OFFERS
    + _HANDOFF
    + r"""
local READY = ARGV[4]
local count = tonumber(ARGV[5])
local tables, infos, ready = {}, {}, {}

local function words(s)
  local t = {}
  for w in string.gmatch(s .. '.', '([^.]*)%.') do t[#t + 1] = w end
  return t
end

local function tmatch(p, i, k, j)
  while i <= #p do
    local w = p[i]
    if w == '#' then
      if i == #p then return true end
      for x = j, #k + 1 do
        if tmatch(p, i + 1, k, x) then return true end
      end
      return false
    end
    if j > #k then return false end
    if w ~= '*' and w ~= k[j] then return false end
    i, j = i + 1, j + 1
  end
  return j > #k
end

local function table_of(ex)
  local t = tables[ex]
  if t == nil then
    t = {}
    for _, m in ipairs(redis.call('SMEMBERS', P .. '_kombu.binding.' .. ex)) do
      local a = string.find(m, SEP, 1, true)
      if a then
        local rest = string.sub(m, a + #SEP)
        local b = string.find(rest, SEP, 1, true)
        if b then t[#t + 1] = {string.sub(m, 1, a - 1), string.sub(rest, b + #SEP)} end
      end
    end
    tables[ex] = t
  end
  return t
end

local function queue_info(q)
  local info = infos[q]
  if info == nil then
    local f = redis.call('HMGET', P .. '_celeriac.queue.' .. q, 'expires', 'ttl')
    local expires, ttl = tonumber(f[1]), tonumber(f[2])
    if expires and is_dead(q) then
      remove_queue(q)
      info = false
    else
      info = {expires = expires, ttl = ttl}  -- served: looked up for delayed ones only
      if promote(q) > 0 then ready[q] = true end
    end
    infos[q] = info
  end
  return info
end

local i = 6
local kind, ex, rk, tag, step, nb, env, chan
for _ = 1, count do
  local a = ARGV[i]
  if string.byte(a, 1) == 61 then  -- '=tag|envelope': where the message before went
    local bar = string.find(a, '|', 2, true)
    tag, env = string.sub(a, 2, bar - 1), string.sub(a, bar + 1)
    i = i + 1
  else
    kind, ex, rk, tag = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
    step, nb, env, chan = ARGV[i + 4], tonumber(ARGV[i + 5]), ARGV[i + 6], ARGV[i + 7]
    i = i + 8
  end
  if kind == 'fanout' then
    redis.call('PUBLISH', chan, env)
  else
    local targets
    if kind == 'default' then
      targets = {rk}
    else
      targets = {}
      local seen = {}
      local rkw = kind == 'topic' and words(rk) or nil
      for _, b in ipairs(table_of(ex)) do
        local q = b[2]
        if not seen[q] then
          local hit
          if kind == 'topic' then hit = tmatch(words(b[1]), 1, rkw, 1) else hit = b[1] == rk end
          if hit then
            seen[q] = true
            targets[#targets + 1] = q
          end
        end
      end
    end
    for _, q in ipairs(targets) do
      local info = queue_info(q)
      if info then
        local since = NOW
        if nb and nb > NOW and info.served == nil then
          info.served = redis.call('EXISTS', consumers_key(q)) == 1
        end
        local later = nb and nb > NOW
        if later and info.served then
          redis.call('ZADD', P .. '_celeriac.delayed.' .. q, nb, step .. '|' .. env)
          since = nb
        elseif not (later or info.ttl or info.expires) and handoff(q, tag, env) then
          -- claimed by a waiting fetch: nothing waits in the queue
        elseif redis.call('LPUSH', list_key(q, step), env) == 1 then
          ready[q] = true
        end
        if info.ttl then
          redis.call('ZADD', P .. '_celeriac.ttl.' .. q, since + info.ttl / 1000, tag)
        end
        if info.expires then
          for _, s in ipairs(STEPS) do redis.call('PEXPIRE', list_key(q, s), info.expires) end
        end
      end
    end
  end
end
return ring(READY, ready)
"""
)

#: Store one message for a queue with nothing else for PUBLISH to do (no exchange, delay,
#: TTL or expiry): hand it to a waiting fetch, else push it and ring the doorbell when the
#: list was empty. ARGV[4] = doorbell prefix, ARGV[5] = queue, ARGV[6] = delivery tag,
#: ARGV[7] = envelope, ARGV[8] = the list it goes to. Returns 0
#: pushed with no offer out on the queue, 1 pushed with offers out (the queue held
#: messages, or no offer took it), 2 handed off; plus 10 when the doorbell was refused
#: (an ACL user without channel rights).
PUSH = (
    r"""
if redis.call('EXISTS', ARGV[1] .. '_celeriac.offers.' .. ARGV[5]) == 0 then
  if redis.call('LPUSH', ARGV[8], ARGV[7]) == 1 then
    if type(redis.pcall('PUBLISH', ARGV[4] .. ARGV[5], '')) ~= 'number' then return 10 end
  end
  return 0
end
"""
    + _PRELUDE
    + _RING
    + _OFFERS
    + _HANDOFF
    + r"""
local q = ARGV[5]
if handoff(q, ARGV[6], ARGV[7]) then return 2 end
local ready = {}
if redis.call('LPUSH', ARGV[8], ARGV[7]) == 1 then ready[q] = true end
if ring(ARGV[4], ready) == 3 then return 11 end
return 1
"""
)

#: Claim up to a limit across queues, record each claim as unacked, count deliveries.
#: KEYS = unacked, unacked_index, lease. ARGV[4] = limit, ARGV[5] = visibility timeout,
#: ARGV[6] = delivery record lifetime (s), ARGV[7] = queue count, ARGV[8] = '1' to mark
#: the queues as served by a celeriac consumer (the caller does so every
#: :data:`PRESENCE_REFRESH` seconds, not on every claim), ARGV[9] = offer id ('' for
#: none), ARGV[10] = the channel hand-offs go to, ARGV[11] = offer lifetime (s),
#: ARGV[12] = ids of offers to withdraw first, space-separated (the caller's own while it
#: may be out, and those of queue sets it superseded: a claim on the drain path, whose
#: fetch has none out, reads no offer), then the queue names in this call's rotation
#: order. A claim that comes back short offers to take as many more as it fell short by, as
#: they are published to its queues that have no TTL or expiry (``_celeriac.offers``).
#: Returns ``{next_due, dropped, (queue, count, envelope)*}`` where ``next_due`` is the
#: earliest not-before time of a delayed message ('' if none) when nothing was claimed.
CLAIM = (
    _PRELUDE
    + _OFFERS
    + r"""
local limit, vt, keep, nq = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6]),
  tonumber(ARGV[7])
local present = ARGV[8] == '1'
local offer_id, life = ARGV[9], tonumber(ARGV[11])
local FIRST = 12
for id in string.gmatch(ARGV[12], '%S+') do withdraw(id) end
local B64 = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/'

local function b64(data)
  local out = {}
  for x = 1, #data, 3 do
    local a, b, c = string.byte(data, x, x + 2)
    local n = a * 65536 + (b or 0) * 256 + (c or 0)
    local d1, d2 = math.floor(n / 262144) % 64, math.floor(n / 4096) % 64
    local d3, d4 = math.floor(n / 64) % 64, n % 64
    out[#out + 1] = string.sub(B64, d1 + 1, d1 + 1) .. string.sub(B64, d2 + 1, d2 + 1)
      .. (b and string.sub(B64, d3 + 1, d3 + 1) or '=')
      .. (c and string.sub(B64, d4 + 1, d4 + 1) or '=')
  end
  return table.concat(out)
end

-- An entry that is not a kombu envelope is wrapped in one (original bytes as the body),
-- so it is delivered, recorded and restorable like any other and can be quarantined.
local function wrap(raw, tag, q)
  return cjson.encode({
    body = b64(raw),
    ['content-type'] = 'application/x-celeriac-invalid-envelope',
    ['content-encoding'] = 'binary',
    headers = {['x-invalid-envelope'] = 'not a kombu JSON envelope with a delivery_tag'},
    properties = {
      delivery_tag = tag, priority = 0, body_encoding = 'base64',
      delivery_info = {exchange = '', routing_key = q},
    },
  })
end

local queues, ttlq, offered = {}, {}, {}
for x = 1, nq do
  local q = ARGV[FIRST + x]
  local f = redis.call('HMGET', P .. '_celeriac.queue.' .. q, 'expires', 'ttl')
  local expires = tonumber(f[1])
  local alive = true
  if expires then
    if is_dead(q) then
      remove_queue(q)
      alive = false
    else
      redis.call('ZADD', EXPIRING, NOW + expires / 1000, q)
      for _, s in ipairs(STEPS) do redis.call('PEXPIRE', list_key(q, s), expires) end
    end
  end
  if alive then
    queues[#queues + 1] = q
    ttlq[q] = redis.call('EXISTS', P .. '_celeriac.ttl.' .. q) == 1
    if not (expires or f[2] or ttlq[q]) then offered[#offered + 1] = q end
    if present then redis.call('SET', consumers_key(q), '1', 'EX', PRESENCE) end
    promote(q)
  end
end

local out = {'', 0}
local got, dropped = 0, 0
local hset, index, lease, bumps = {}, {}, {}, {}

-- The delivery tag, read without decoding the envelope when it appears exactly once
-- (a nested "delivery_tag" key elsewhere falls back to decoding).
local function tag_of(raw)
  local at = string.find(raw, '"delivery_tag"', 1, true)
  if at and not string.find(raw, '"delivery_tag"', at + 14, true) then
    local t = string.match(raw, '^"delivery_tag"%s*:%s*"([^"\\]+)"', at)
    if t then return t end
  end
  local ok, env = pcall(cjson.decode, raw)
  if ok and type(env) == 'table' and type(env.properties) == 'table' then
    local t = env.properties.delivery_tag
    if type(t) == 'string' and t ~= '' then return t end
  end
  return nil
end

local function record(q, raw)
  local tag = tag_of(raw)
  if tag == nil then
    tag = 'invalid-' .. redis.sha1hex(raw .. tostring(NOW) .. tostring(got))
    raw = wrap(raw, tag, q)
  end
  if ttlq[q] then
    local tkey = P .. '_celeriac.ttl.' .. q
    local deadline = redis.call('ZSCORE', tkey, tag)
    if deadline then
      redis.call('ZREM', tkey, tag)
      if tonumber(deadline) <= NOW then
        dropped = dropped + 1
        return
      end
    end
  end
  hset[#hset + 1] = tag
  hset[#hset + 1] = '[' .. raw .. ', "", ' .. cjson.encode(q) .. ']'
  index[#index + 1] = NOW
  index[#index + 1] = tag
  lease[#lease + 1] = NOW + vt
  lease[#lease + 1] = tag
  got = got + 1
  bumps[got] = tag
  out[#out + 1] = q
  out[#out + 1] = 0
  out[#out + 1] = raw
end

-- How many of each queue's lists hold messages (an empty list does not exist in Redis),
-- counted down as pops empty them: most claims find one list or none, and pop only that.
local live, emptied = {}, {}
for _, q in ipairs(queues) do
  local keys = {}
  for _, step in ipairs(STEPS) do keys[#keys + 1] = list_key(q, step) end
  live[q] = redis.call('EXISTS', unpack(keys))
end

local function take(q, step, want)
  if live[q] == 0 then return end
  local key = list_key(q, step)
  if emptied[key] then return end
  local items = redis.call('RPOP', key, want)
  if not items then
    emptied[key] = true
    return
  end
  for _, raw in ipairs(items) do record(q, raw) end
  if #items < want then
    emptied[key] = true
    live[q] = live[q] - 1
  end
end

if #queues > 0 then
  for _, step in ipairs(STEPS) do
    if got >= limit then break end
    local share = math.ceil((limit - got) / #queues)
    for _, q in ipairs(queues) do
      if got >= limit then break end
      take(q, step, math.min(share, limit - got))
    end
    for _, q in ipairs(queues) do
      if got >= limit then break end
      take(q, step, limit - got)
    end
  end
end

-- Record the whole batch: a few multi-member writes instead of several per message.
local CHUNK = 1000
local function write(cmd, key, items)
  for i = 1, #items, CHUNK do
    redis.call(cmd, key, unpack(items, i, math.min(i + CHUNK - 1, #items)))
  end
end
if got > 0 then
  write('HSET', KEYS[1], hset)
  write('ZADD', KEYS[2], index)
  write('ZADD', KEYS[3], lease)
  local score = redis.call('ZSCORE', KEYS[2], bumps[1])
  for i, tag in ipairs(bumps) do
    local dk = P .. '_celeriac.delivery.' .. tag
    out[3 * i + 1] = redis.call('HINCRBY', dk, 'n', 1)
    redis.call('HSET', dk, 's', score)
    redis.call('EXPIRE', dk, keep)
  end
end
out[2] = dropped
if got < limit and offer_id ~= '' and #offered > 0 then
  local spec = {ARGV[10], ARGV[5], ARGV[6], KEYS[1], KEYS[2], KEYS[3], ARGV[11]}
  for _, q in ipairs(offered) do spec[#spec + 1] = q end
  local ms = math.ceil(life * 1000)
  local okey = P .. '_celeriac.offer.' .. offer_id
  redis.call('HSET', okey, 'spec', cjson.encode(spec), 'n', math.min(limit - got, """
    + str(OFFER_LIMIT)
    + r"""))
  redis.call('PEXPIRE', okey, ms)
  for _, q in ipairs(offered) do
    local zkey = OFFERS .. q
    redis.call('ZADD', zkey, NOW + life, offer_id)
    if redis.call('PTTL', zkey) < ms then redis.call('PEXPIRE', zkey, ms) end
  end
end
if got == 0 then
  local soonest
  for _, q in ipairs(queues) do
    local first = redis.call('ZRANGE', P .. '_celeriac.delayed.' .. q, 0, 0, 'WITHSCORES')
    if first[2] and (soonest == nil or tonumber(first[2]) < soonest) then
      soonest = tonumber(first[2])
    end
  end
  if soonest then out[1] = string.format('%.6f', soonest - NOW) end
end
return out
"""
)

# The fence shared by ack, extend and requeue: the delivery record still names this claim
# and unacked_index still holds the score this claim wrote.
_FENCE = r"""
local function current(tag, token)
  local dk = P .. '_celeriac.delivery.' .. tag
  local f = redis.call('HMGET', dk, 'n', 's')
  return f[1] == token and f[2] and redis.call('ZSCORE', KEYS[2], tag) == f[2], dk
end
"""

#: Settle claims (ack, or reject without requeue). KEYS = unacked, unacked_index, lease.
#: ARGV[1] = prefix, then (tag, token) pairs. Returns how many were current.
ACK = (
    r"""
local P = ARGV[1]
"""
    + _FENCE
    + r"""
-- Fenced one by one, then removed with a few multi-member calls per batch: each call
-- from a script costs about a microsecond of Redis's time, which was most of an ack.
-- A tag is marked seen only once its claim passed the fence, so a stale duplicate
-- (an older token) cannot hide the current one.
local tags, records, seen = {}, {}, {}
for i = 2, #ARGV, 2 do
  local tag = ARGV[i]
  if not seen[tag] then
    local ok, dk = current(tag, ARGV[i + 1])
    if ok then
      seen[tag] = true
      tags[#tags + 1] = tag
      records[#records + 1] = dk
    end
  end
end
for i = 1, #tags, 1000 do
  local j = math.min(i + 999, #tags)
  redis.call('ZREM', KEYS[2], unpack(tags, i, j))
  redis.call('HDEL', KEYS[1], unpack(tags, i, j))
  redis.call('ZREM', KEYS[3], unpack(tags, i, j))
  redis.call('DEL', unpack(records, i, j))
end
return #tags
"""
)

#: Push leases ahead. KEYS as ACK. ARGV[1] = prefix, ARGV[2] = seconds, ARGV[3] = the
#: visibility timeout (kombu peers judge ``unacked_index`` by it), ARGV[4] = delivery
#: record lifetime, then (tag, token) pairs.
EXTEND = (
    r"""
local P = ARGV[1]
local T = redis.call('TIME')
local NOW = tonumber(T[1]) + tonumber(T[2]) / 1000000
local secs, vt, keep = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
"""
    + _FENCE
    + r"""
local done = 0
for i = 5, #ARGV, 2 do
  local tag = ARGV[i]
  local ok, dk = current(tag, ARGV[i + 1])
  if ok then
    redis.call('ZADD', KEYS[2], NOW + secs - vt, tag)
    redis.call('ZADD', KEYS[3], NOW + secs, tag)
    redis.call('HSET', dk, 's', redis.call('ZSCORE', KEYS[2], tag))
    redis.call('EXPIRE', dk, keep)
    done = done + 1
  end
end
return done
"""
)

#: Return current claims to the front of their queues. KEYS as ACK. ARGV[1] = prefix,
#: ARGV[2] = doorbell prefix, then 5 fields each: tag, token, list key, queue, envelope.
REQUEUE = (
    r"""
local P, READY = ARGV[1], ARGV[2]
"""
    + _RING
    + _FENCE
    + r"""
local done, ready = 0, {}
for i = 3, #ARGV, 5 do
  local tag = ARGV[i]
  local ok, dk = current(tag, ARGV[i + 1])
  if ok and redis.call('HEXISTS', KEYS[1], tag) == 1 then
    redis.call('ZREM', KEYS[2], tag)
    redis.call('HDEL', KEYS[1], tag)
    redis.call('ZREM', KEYS[3], tag)
    redis.call('HDEL', dk, 's')
    if redis.call('RPUSH', ARGV[i + 2], ARGV[i + 4]) == 1 then ready[ARGV[i + 3]] = true end
    done = done + 1
  end
end
ring(READY, ready)
return done
"""
)

#: Take ``unacked_mutex`` and list what is due for restore. KEYS = unacked, unacked_index,
#: lease, unacked_mutex. ARGV[4] = visibility timeout, ARGV[5] = limit, ARGV[6] = mutex
#: token, ARGV[7] = mutex lifetime (ms). Also deletes expiring queues nobody used in time.
#: Returns ``(tag, score, unacked entry)*``; empty (mutex released) when nothing is due.
RESTORE_SCAN = (
    _PRELUDE
    + r"""
local vt, limit, token = tonumber(ARGV[4]), tonumber(ARGV[5]), ARGV[6]
if not redis.call('SET', KEYS[4], token, 'NX', 'PX', ARGV[7]) then return {} end
for _, q in ipairs(redis.call('ZRANGEBYSCORE', EXPIRING, '-inf', NOW, 'LIMIT', 0, 100)) do
  remove_queue(q)
end
local out = {}
for _, tag in ipairs(redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', NOW, 'LIMIT', 0, limit)) do
  local score = redis.call('ZSCORE', KEYS[2], tag)
  local s = redis.call('HGET', P .. '_celeriac.delivery.' .. tag, 's')
  local entry = redis.call('HGET', KEYS[1], tag)
  if score and score == s and entry then
    out[#out + 1] = tag
    out[#out + 1] = score
    out[#out + 1] = entry
  else
    redis.call('ZREM', KEYS[3], tag)
  end
end
local old = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', NOW - vt, 'LIMIT', 0, limit)
for _, tag in ipairs(old) do
  if not redis.call('ZSCORE', KEYS[3], tag) then
    local entry = redis.call('HGET', KEYS[1], tag)
    if entry then
      out[#out + 1] = tag
      out[#out + 1] = redis.call('ZSCORE', KEYS[2], tag)
      out[#out + 1] = entry
    else
      redis.call('ZREM', KEYS[2], tag)
    end
  end
end
if #out == 0 and redis.call('GET', KEYS[4]) == token then redis.call('DEL', KEYS[4]) end
return out
"""
)

#: Move listed unacked entries back to the front of their queues, if still unchanged, then
#: release the mutex. KEYS as RESTORE_SCAN. ARGV[1] = prefix, ARGV[2] = doorbell prefix,
#: ARGV[3] = mutex token, then per entry: tag, expected score, envelope, target count,
#: and (list key, queue) per target.
RESTORE = (
    r"""
local P, READY, token = ARGV[1], ARGV[2], ARGV[3]
"""
    + _RING
    + r"""
local ready = {}
local done = 0
local i = 4
while i <= #ARGV do
  local tag, score, env, n = ARGV[i], ARGV[i + 1], ARGV[i + 2], tonumber(ARGV[i + 3])
  local first = i + 4
  i = first + 2 * n
  if redis.call('ZSCORE', KEYS[2], tag) == score and redis.call('HEXISTS', KEYS[1], tag) == 1 then
    redis.call('ZREM', KEYS[2], tag)
    redis.call('HDEL', KEYS[1], tag)
    redis.call('ZREM', KEYS[3], tag)
    redis.call('HDEL', P .. '_celeriac.delivery.' .. tag, 's')
    for x = first, i - 1, 2 do
      if redis.call('RPUSH', ARGV[x], env) == 1 then ready[ARGV[x + 1]] = true end
    end
    done = done + 1
  end
end
if redis.call('GET', KEYS[4]) == token then redis.call('DEL', KEYS[4]) end
ring(READY, ready)
return done
"""
)

#: Release ``unacked_mutex`` if we still hold it (what redis-py's Lock does, so kombu and
#: celeriac processes share the one mutex). KEYS[1] = mutex, ARGV[1] = token.
RELEASE_MUTEX = r"""
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

#: Record a queue and its bindings. ARGV[4] = queue, ARGV[5] = expires ms ('' = never),
#: ARGV[6] = message ttl ms ('' = none), ARGV[7] = JSON list of ``[exchange, member]``,
#: ARGV[8] = kombu binding-table lifetime (ms) for expiring queues.
DECLARE_QUEUE = (
    _PRELUDE
    + r"""
local q, expires, ttl = ARGV[4], tonumber(ARGV[5]), tonumber(ARGV[6])
local meta = P .. '_celeriac.queue.' .. q
local new = cjson.decode(ARGV[7])
local merged, seen = {}, {}
local old = redis.call('HGET', meta, 'bindings')
if old then
  local ok, list = pcall(cjson.decode, old)
  if ok and type(list) == 'table' then
    for _, b in ipairs(list) do
      local k = b[1] .. SEP .. b[2]
      if not seen[k] then seen[k] = true; merged[#merged + 1] = b end
    end
  end
end
for _, b in ipairs(new) do
  local k = b[1] .. SEP .. b[2]
  if not seen[k] then seen[k] = true; merged[#merged + 1] = b end
end
redis.call('HSET', meta, 'bindings', #merged > 0 and cjson.encode(merged) or '[]')
if ttl then redis.call('HSET', meta, 'ttl', ttl) else redis.call('HDEL', meta, 'ttl') end
local ms = tonumber(T[1]) * 1000 + math.floor(tonumber(T[2]) / 1000)
if expires then
  redis.call('HSET', meta, 'expires', expires)
  redis.call('ZADD', EXPIRING, NOW + expires / 1000, q)
  for _, b in ipairs(new) do
    redis.call('SADD', P .. '_kombu.binding.' .. b[1], b[2])
    redis.call('ZADD', P .. '_kombu.binding_deadlines', 'GT', ms + tonumber(ARGV[8]), b[1])
  end
else
  redis.call('HDEL', meta, 'expires')
  redis.call('ZREM', EXPIRING, q)
  for _, b in ipairs(new) do
    redis.call('SADD', P .. '_kombu.binding.' .. b[1], b[2])
    redis.call('SADD', P .. '_kombu.binding_permanent.' .. b[1], b[2])
  end
end
return 1
"""
)

#: Delete a queue: its lists, delayed and ttl sets, bindings and record. ARGV[4] = queue.
DELETE_QUEUE = (
    _PRELUDE
    + r"""
return remove_queue(ARGV[4])
"""
)
