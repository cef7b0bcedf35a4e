#!lua name=procsup_1
-- procsup's queue transitions, each one atomic. Time is the server's (TIME),
-- so the hosts' clocks never matter. Every function takes
--   KEYS[1] the jobs stream, KEYS[2] the dead-letter stream, KEYS[3] the hosts hash
--   ARGV[1] the key prefix "procsup:{queue}:", ARGV[2] the group, ARGV[3] the consumer
-- and then its own arguments. Entry fields (schema v=1, all strings):
--   v "1", id the job id, body the argument (JSON), exp expiry in server ms (optional),
--   d deliveries of earlier entries of the same job (requeued jobs; optional).
-- Hash "procsup:{queue}:stats" counts, for the queue's metrics: leases_lost
-- (entries taken back from a holder that stopped renewing) and redeliveries
-- (deliveries after a job's first: reclaimed, or handed back counted).

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function count(args, field)
  redis.call('HINCRBY', args[1] .. 'stats', field, 1)
end

local function fields_of(stream, entry)
  local found = redis.call('XRANGE', stream, entry, entry)
  if #found == 0 then return nil end
  local flat, map = found[1][2], {}
  for i = 1, #flat, 2 do map[flat[i]] = flat[i + 1] end
  return map, flat
end

-- The entry's delivery count if `me` holds it, else nil.
local function held(keys, args, entry)
  local p = redis.call('XPENDING', keys[1], args[2], entry, entry, 1, args[3])
  if #p == 0 then return nil end
  return tonumber(p[1][4])
end

-- Publish the job's one result (NX: at most once), then ack and delete the entry.
local function finish(keys, args, entry, job, payload, ttl)
  local base = args[1]
  redis.call('SET', base .. 'r:' .. job, payload, 'EX', ttl, 'NX')
  redis.call('LPUSH', base .. 'w:' .. job, payload)
  redis.call('EXPIRE', base .. 'w:' .. job, ttl)
  redis.call('HDEL', base .. 'err', job)
  redis.call('XACK', keys[1], args[2], entry)
  redis.call('XDEL', keys[1], entry)
end

-- Copy to the dead-letter stream first, so a crash leaves a duplicate, never a loss.
local function bury(keys, args, entry, map, reason, deliveries, error_json, payload, ttl)
  redis.call('XADD', keys[2], '*', 'id', map['id'] or '', 'body', map['body'] or '',
    'reason', reason, 'deliveries', tostring(deliveries), 'host', args[3], 'error', error_json,
    'entry', entry)
  finish(keys, args, entry, map['id'] or entry, payload, ttl)
end

local function error_payload(job, type_, message, phase, deliveries, host)
  return cjson.encode({id = job, deliveries = deliveries, host = host, error = {
    type = type_, message = message, phase = phase, exit_code = cjson.null, signal = cjson.null}})
end

-- submit: ARGV[4] job id, [5] body, [6] ttl ms or "", [7] max backlog, [8] key ttl s.
-- KEYS[4], when given, is the idempotency key. Returns {status, job id, stream length}.
redis.register_function('procsup_submit', function(keys, args)
  if keys[4] then
    local existing = redis.call('GET', keys[4])
    if existing then return {'duplicate', existing, 0} end
  end
  local length = redis.call('XLEN', keys[1])
  if length >= tonumber(args[7]) then return {'full', '', length} end
  local fields = {'v', '1', 'id', args[4], 'body', args[5]}
  if args[6] ~= '' then
    table.insert(fields, 'exp')
    table.insert(fields, tostring(now_ms() + tonumber(args[6])))
  end
  redis.call('XADD', keys[1], '*', unpack(fields))
  if keys[4] then redis.call('SET', keys[4], args[4], 'EX', args[8]) end
  return {'new', args[4], length + 1}
end)

-- renew: ARGV[4] this host's status (JSON), then the entries it holds.
-- Re-stamps each entry it still holds (JUSTID: the count stays). Returns
-- {server ms, lost entry...}.
redis.register_function('procsup_renew', function(keys, args)
  local now = now_ms()
  local status = cjson.decode(args[4])
  status['seen'] = now
  redis.call('HSET', keys[3], args[3], cjson.encode(status))
  local lost = {now}
  for i = 5, #args do
    if held(keys, args, args[i]) then
      redis.call('XCLAIM', keys[1], args[2], args[3], 0, args[i], 'JUSTID')
    else
      table.insert(lost, args[i])
    end
  end
  return lost
end)

-- reclaim: ARGV[4] lease ms, [5] max deliveries, [6] most entries, [7] result ttl s.
-- Takes entries idle past the lease (their holder stopped renewing). Past max deliveries they
-- go to the dead-letter stream, past expiry they finish as expired, never run.
-- Returns {{entry, job id, body, deliveries, exp or ""}...}.
redis.register_function('procsup_reclaim', function(keys, args)
  local lease, most, limit = tonumber(args[4]), tonumber(args[5]), tonumber(args[6])
  local now, taken = now_ms(), {}
  local idle = redis.call('XPENDING', keys[1], args[2], 'IDLE', lease, '-', '+', limit * 4 + 8)
  for _, p in ipairs(idle) do
    if #taken >= limit then break end
    -- this host's own entries too: one idle past the lease is one a lost read
    -- delivered without the host knowing (the host skips any it does hold)
    local entry, delivered = p[1], tonumber(p[4])
    do
      local map = fields_of(keys[1], entry)
      if not map then
        redis.call('XACK', keys[1], args[2], entry)  -- its payload is gone
      else
        local job = map['id'] or entry
        local deliveries = tonumber(map['d'] or '0') + delivered
        count(args, 'leases_lost')
        if map['exp'] and now > tonumber(map['exp']) then
          finish(keys, args, entry, job, error_payload(job, 'ExpiredError',
            'the job passed its ttl before it could run', 'queue', deliveries, args[3]), args[7])
        elseif deliveries >= most then
          local last = redis.call('HGET', args[1] .. 'err', job)
          local message = 'delivered ' .. deliveries .. ' times; the host running it stopped'
            .. ' renewing its lease (it died or was cut off)'
          local payload
          if last then
            local e = cjson.decode(last)
            message = e['message'] or message
            payload = cjson.encode({id = job, deliveries = deliveries, host = args[3], error = e})
          else
            payload = error_payload(job, 'LeaseExpiredError', message, 'queue', deliveries, args[3])
          end
          bury(keys, args, entry, map, 'max_deliveries', deliveries, last or cjson.encode(
            {type = 'LeaseExpiredError', message = message}), payload, args[7])
        else
          -- rechecks the idle time and raises the count
          local got = redis.call('XCLAIM', keys[1], args[2], args[3], lease, entry, 'JUSTID')
          if #got == 1 then
            redis.call('XCLAIM', keys[1], args[2], args[3], 0, entry, 'JUSTID',
              'RETRYCOUNT', delivered + 1)
            table.insert(taken, {entry, job, map['body'] or '', deliveries + 1, map['exp'] or ''})
            count(args, 'redeliveries')
          end
        end
      end
    end
  end
  return taken
end)

-- complete: ARGV[4] entry, [5] job id, [6] result payload, [7] result ttl s.
-- Only the holder's completion counts: 1 published, 0 lost (written nothing).
redis.register_function('procsup_complete', function(keys, args)
  if not held(keys, args, args[4]) then return 0 end
  finish(keys, args, args[4], args[5], args[6], args[7])
  return 1
end)

-- requeue: ARGV[4] entry, [5] "1" if this delivery counts, [6] last error (JSON) or "".
-- Hands the job back as a new entry at the stream's end, so a blocked reader
-- takes it at once; its earlier deliveries ride in field d. 1 done, 0 not held.
redis.register_function('procsup_requeue', function(keys, args)
  local delivered = held(keys, args, args[4])
  if not delivered then return 0 end
  local map = fields_of(keys[1], args[4])
  if map then
    local d = tonumber(map['d'] or '0') + delivered
    if args[5] == '1' then count(args, 'redeliveries') else d = d - 1 end
    map['d'] = tostring(d)
    local flat = {}
    for k, v in pairs(map) do table.insert(flat, k); table.insert(flat, v) end
    redis.call('XADD', keys[1], '*', unpack(flat))
    if args[6] ~= '' then redis.call('HSET', args[1] .. 'err', map['id'] or '', args[6]) end
  end
  redis.call('XACK', keys[1], args[2], args[4])
  redis.call('XDEL', keys[1], args[4])
  return 1
end)

-- dead: ARGV[4] entry, [5] reason, [6] deliveries, [7] error (JSON), [8] payload, [9] ttl s.
redis.register_function('procsup_dead', function(keys, args)
  if not held(keys, args, args[4]) then return 0 end
  local map = fields_of(keys[1], args[4]) or {}
  bury(keys, args, args[4], map, args[5], args[6], args[7], args[8], args[9])
  return 1
end)

-- requeue_dead: ARGV[4] dead-letter entry. Puts its job back with a fresh count
-- and forgets its published result. Returns the job id, or false if not found.
redis.register_function('procsup_requeue_dead', function(keys, args)
  local map = fields_of(keys[2], args[4])
  if not map then return false end
  redis.call('XADD', keys[1], '*', 'v', '1', 'id', map['id'], 'body', map['body'])
  redis.call('DEL', args[1] .. 'r:' .. map['id'], args[1] .. 'w:' .. map['id'])
  redis.call('XDEL', keys[2], args[4])
  return map['id']
end)

-- gc: ARGV[4] idle ms. Forgets consumers with nothing pending that have not
-- touched the group for that long (deleting one with pending entries would
-- drop them: never done), and host statuses not renewed for that long.
-- Returns how many consumers it deleted.
redis.register_function('procsup_gc', function(keys, args)
  local idle, deleted = tonumber(args[4]), 0
  local ok, consumers = pcall(redis.call, 'XINFO', 'CONSUMERS', keys[1], args[2])
  if not ok then return 0 end
  for _, c in ipairs(consumers) do
    local info = {}
    for i = 1, #c, 2 do info[c[i]] = c[i + 1] end
    if info['name'] ~= args[3] and tonumber(info['pending']) == 0
        and tonumber(info['idle']) > idle then
      redis.call('XGROUP', 'DELCONSUMER', keys[1], args[2], info['name'])
      deleted = deleted + 1
    end
  end
  local now, hosts = now_ms(), redis.call('HGETALL', keys[3])
  for i = 1, #hosts, 2 do
    local seen = cjson.decode(hosts[i + 1])['seen'] or 0
    if now - seen > idle then redis.call('HDEL', keys[3], hosts[i]) end
  end
  return deleted
end)
