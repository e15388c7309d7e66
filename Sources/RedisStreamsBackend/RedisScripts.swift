/// Lua scripts that make multi-step moves atomic on the server (Redis 7 runs each script
/// without interleaving other commands). Entries waiting in sorted sets are packed with the
/// built-in `cmsgpack`, which is binary-safe.
enum RedisScripts {
    /// Nack with backoff: ack + delete the entry and park its fields in the retry set until due.
    /// KEYS: stream, retry set. ARGV: group, entry id, due ms, fields...
    static let retry = """
        if redis.call('XACK', KEYS[1], ARGV[1], ARGV[2]) == 0 then return 0 end
        redis.call('XDEL', KEYS[1], ARGV[2])
        local fields = {}
        for i = 4, #ARGV do fields[#fields + 1] = ARGV[i] end
        redis.call('ZADD', KEYS[2], ARGV[3], cmsgpack.pack(fields))
        return 1
        """

    /// Delayed publish: park fields in the delay set. KEYS: delay set. ARGV: due ms, fields...
    static let delay = """
        local fields = {}
        for i = 2, #ARGV do fields[#fields + 1] = ARGV[i] end
        redis.call('ZADD', KEYS[1], ARGV[1], cmsgpack.pack(fields))
        return 1
        """

    /// Moves due members of the retry and delay sets back to the stream; returns the next due
    /// time in ms, or -1. KEYS: stream, retry set, delay set. ARGV: now ms, limit.
    static let moveDue = """
        local moved = 0
        for k = 2, 3 do
            local due = redis.call('ZRANGEBYSCORE', KEYS[k], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
            for _, member in ipairs(due) do
                local fields = cmsgpack.unpack(member)
                redis.call('XADD', KEYS[1], '*', unpack(fields))
                redis.call('ZREM', KEYS[k], member)
                moved = moved + 1
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
        return {moved, tostring(nextDue)}
        """

    /// Dead-letter: add the enveloped fields to the DLQ stream and ack (and for queues delete)
    /// the entry. KEYS: stream, dlq stream. ARGV: group, entry id, delete (1/0), fields...
    static let deadLetter = """
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
        if redis.call('XACK', KEYS[1], ARGV[1], ARGV[2]) == 0 then return 0 end
        redis.call('XDEL', KEYS[1], ARGV[2])
        local fields = {}
        for i = 3, #ARGV do fields[#fields + 1] = ARGV[i] end
        redis.call('XADD', KEYS[1], '*', unpack(fields))
        return 1
        """

    /// Replay one DLQ entry to its origin. KEYS: dlq stream, origin stream. ARGV: dlq entry id, fields...
    static let replay = """
        if redis.call('XDEL', KEYS[1], ARGV[1]) == 0 then return 0 end
        local fields = {}
        for i = 2, #ARGV do fields[#fields + 1] = ARGV[i] end
        redis.call('XADD', KEYS[2], '*', unpack(fields))
        return 1
        """
}
