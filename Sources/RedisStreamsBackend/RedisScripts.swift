/// Lua scripts that make multi-step moves atomic on the server (Redis 7 runs each script
/// without interleaving other commands). Entries waiting in sorted sets are packed with the
/// built-in `cmsgpack`, which is binary-safe.
enum RedisScripts {
    /// Nack with backoff: ack + delete the entry and park its fields in the retry set until due.
    /// KEYS: stream, retry set. ARGV: group, entry id, due ms, fields...
    /// Every script that moves an entry checks first, writes the copy, and deletes last: a
    /// script that fails half-way is not rolled back, and a delete before a failed write
    /// would lose the entry.
    static let retry = """
        local pending = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[2], ARGV[2], 1)
        if pending[1] == nil then return 0 end
        local fields = {}
        for i = 4, #ARGV do fields[#fields + 1] = ARGV[i] end
        redis.call('ZADD', KEYS[2], ARGV[3], cmsgpack.pack(fields))
        redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
        redis.call('XDEL', KEYS[1], ARGV[2])
        return 1
        """

    /// Delayed publish: park fields in the delay set. KEYS: delay set. ARGV: due ms, fields...
    static let delay = """
        local fields = {}
        for i = 2, #ARGV do fields[#fields + 1] = ARGV[i] end
        redis.call('ZADD', KEYS[1], ARGV[1], cmsgpack.pack(fields))
        return 1
        """

    /// Moves due members of the retry and delay sets back to the stream; returns
    /// `{moved, next due time in ms or -1, dead-lettered}`. KEYS: stream, retry set, delay
    /// set, DLQ stream. ARGV: now ms, limit, destination name.
    ///
    /// Members are untrusted input (another program may `ZADD` anything): one that is not
    /// BrokerKit's msgpack list of string fields, or that the stream refuses, goes to the DLQ
    /// stream with a reason naming the set, its raw bytes as the payload, and is removed, so
    /// that everything behind it keeps moving.
    static let moveDue = """
        local moved = 0
        local dead = 0
        local function bury(set, member, reason)
            redis.call('XADD', KEYS[4], '*', 'ts', ARGV[1],
                'h:x-brokerkit-original-destination', ARGV[3],
                'h:x-brokerkit-attempts', '0',
                'h:x-brokerkit-last-error', 'unusable record: member of ' .. set .. ' ' .. reason,
                'payload', member)
            dead = dead + 1
        end
        for k = 2, 3 do
            local due = redis.call('ZRANGEBYSCORE', KEYS[k], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
            for _, member in ipairs(due) do
                local ok, fields = pcall(cmsgpack.unpack, member)
                local reason = nil
                if not ok or type(fields) ~= 'table' then
                    reason = 'is not a msgpack list of field names and values'
                elseif #fields == 0 or #fields % 2 ~= 0 then
                    reason = 'has ' .. #fields .. ' items, not field-value pairs'
                elseif #fields > 4000 then
                    reason = 'has ' .. #fields .. ' items, more than 4000'
                else
                    for i = 1, #fields do
                        if type(fields[i]) ~= 'string' then
                            reason = 'item ' .. i .. ' is a ' .. type(fields[i]) .. ', not a string'
                            break
                        end
                    end
                end
                if reason == nil then
                    local added, err = pcall(redis.call, 'XADD', KEYS[1], '*', unpack(fields))
                    if added then
                        moved = moved + 1
                    else
                        reason = 'was refused by XADD: ' .. tostring(type(err) == 'table' and err.err or err)
                    end
                end
                if reason ~= nil then bury(KEYS[k], member, reason) end
                redis.call('ZREM', KEYS[k], member)
            end
        end
        local nextDue = -1
        for k = 2, 3 do
            local first = redis.call('ZRANGE', KEYS[k], 0, 0, 'WITHSCORES')
            if #first == 2 then
                local score = tonumber(first[2])
                if nextDue < 0 or score < nextDue then nextDue = score end
            end
        end
        return {moved, tostring(nextDue), dead}
        """

    /// Lease renewal: resets the idle time of the entries this consumer still owns (XCLAIM
    /// JUSTID does not count a delivery) and returns the ids it no longer owns. KEYS: stream.
    /// ARGV: group, consumer, ids...
    static let renew = """
        local lost = {}
        for i = 3, #ARGV do
            local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1)
            if p[1] ~= nil and p[1][2] == ARGV[2] then
                redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i], 'JUSTID')
            else
                lost[#lost + 1] = ARGV[i]
            end
        end
        return lost
        """

    /// Dead-letter: ack (and for queues delete) the entry and add the enveloped fields to the
    /// DLQ stream. KEYS: stream, dlq stream. ARGV: group, entry id, delete (1/0), fields...
    /// Returns 0 (and writes nothing) when the entry is no longer pending: another consumer
    /// claimed and settled it, and a second DLQ entry would be a duplicate.
    /// The check comes first and the XADD before the XACK: a script that fails half-way is
    /// not rolled back, and an entry acked without its DLQ copy would be lost.
    static let deadLetter = """
        local pending = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[2], ARGV[2], 1)
        if pending[1] == nil then return 0 end
        local fields = {}
        for i = 4, #ARGV do fields[#fields + 1] = ARGV[i] end
        redis.call('XADD', KEYS[2], '*', unpack(fields))
        redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
        if ARGV[3] == '1' then redis.call('XDEL', KEYS[1], ARGV[2]) end
        return 1
        """

    /// Give a queue entry back as a new entry (same or next attempt). KEYS: stream.
    /// ARGV: group, entry id, fields...
    static let requeue = """
        local pending = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[2], ARGV[2], 1)
        if pending[1] == nil then return 0 end
        local fields = {}
        for i = 3, #ARGV do fields[#fields + 1] = ARGV[i] end
        redis.call('XADD', KEYS[1], '*', unpack(fields))
        redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
        redis.call('XDEL', KEYS[1], ARGV[2])
        return 1
        """

    /// Replay one DLQ entry to its origin. KEYS: dlq stream, origin stream. ARGV: dlq entry id, fields...
    static let replay = """
        if #redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[1]) == 0 then return 0 end
        local fields = {}
        for i = 2, #ARGV do fields[#fields + 1] = ARGV[i] end
        redis.call('XADD', KEYS[2], '*', unpack(fields))
        redis.call('XDEL', KEYS[1], ARGV[1])
        return 1
        """
}
