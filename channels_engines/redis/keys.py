"""Where the redis engine keeps its data, and the scripts that change it.

Every name starts with the layer's ``prefix``. Keys that one script touches share a
Redis Cluster hash tag (the part in braces), so each script runs on one node, and the
tags spread the layer over the cluster: one per process, one per normal channel, one
per group, never one for the whole deployment.

``<prefix>:in:{<queue>}``
    A stream per process queue: the messages of the process-specific channels that
    share the part up to the '!' (one ``new_channel()`` prefix of one process, which
    shares its capacity). An entry lists the local parts of the channels it is for, so
    a group message to many channels of one process is one entry.
``<prefix>:ch:{<channel>}``
    A stream per normal channel, read through the consumer group ``readers``: a claim
    moves entries into the claiming process's pending list, so a claim whose answer is
    lost on a dying connection is read again from there, never lost or delivered twice.
``<prefix>:in-seq:{<queue>}``, ``<prefix>:ch-seq:{<channel>}``
    Per stream, the last sequence number each sender stored there (and the last ones it
    refused): a send retried after a lost answer is recognised and not stored twice, nor
    stored when it was refused; and the id of the last entry added, which announcements
    name (see :mod:`.notes`).
``<prefix>:group:{<group>}``
    A sorted set of the group's members, scored by when each membership expires.

Pub/sub: ``<prefix>:note:{<queue>}`` tells the process of a queue about each new entry,
and carries the message itself when the layer can authenticate it (see :mod:`.notes`),
so the process needs no read; ``<prefix>:wake:{<channel>}`` tells the receivers of a
normal channel to claim. Both share their stream's hash tag: in a cluster they are
sharded channels (``SPUBLISH`` from the store script, on the stream's node). Plain
``<prefix>:flush`` announces a flush to every node.

Entries carry ``s`` (sender), ``q`` (sequence number), ``x`` (expiry, server
milliseconds), ``c`` (local parts, for process streams) and ``m`` (the message). Stream
ids come from the server's clock, so entries past their expiry are trimmed by id
(``XTRIM MINID``) before a full stream refuses a message; every stream expires as a key
when nothing was added for its whole expiry.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["SCRIPTS", "Keys", "Script"]

_NOW = """
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
"""


@dataclass(frozen=True)
class Script:
    """A Lua script, run with EVALSHA (and loaded on NOSCRIPT)."""

    name: str
    source: str
    sha: str = field(init=False)

    def __post_init__(self) -> None:
        import hashlib

        sha = hashlib.sha1(self.source.encode(), usedforsecurity=False).hexdigest()
        object.__setattr__(self, "sha", sha)


# KEYS: stream, sequence hash. ARGV: capacity, expiry ms, sender, pub/sub channel, '1' to
# give a new stream the consumer group, '1' for sharded pub/sub (a cluster: the channel
# shares the stream's hash tag), then per message, in the order of their sequence
# numbers: seq, local parts ('' for a normal channel), message, note ('' when the message
# does not ride along). Publishes one message that announces every entry added, each as
# "<id>|<previous>|<length of note>|<note>", where <previous> is the id of the entry added
# before it ('0-0': none since the stream was made).
# Returns, per message: the entry id, '' for a retry of a message stored before, 0 when
# full (and for a retry of a message refused before: the sender's last refused numbers
# are kept beside its last stored one).
STORE = Script(
    "store",
    _NOW
    + """
local stream, seqs = KEYS[1], KEYS[2]
local capacity, expiry, sender = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3]
local refused_field = sender .. ':refused'
local found = redis.call('HMGET', seqs, sender, ':last', refused_field)
local last, previous, refused = tonumber(found[1]), found[2] or '0-0', found[3] or ''
local now = now_ms()
local length = redis.call('XLEN', stream)
local trimmed = false
local results, announced, new_refused = {}, {}, {}
local stored = nil
for i = 7, #ARGV, 4 do
  local seq = ARGV[i]
  if last and tonumber(seq) <= last then
    -- Sent before: refused then (a later number was stored since), or stored.
    if string.find(',' .. refused .. ',', ',' .. seq .. ',', 1, true) then
      results[#results + 1] = 0
    else
      results[#results + 1] = ''
    end
  else
    if length >= capacity and not trimmed then
      redis.call('XTRIM', stream, 'MINID', now - expiry)
      trimmed = true
      length = redis.call('XLEN', stream)
    end
    if length >= capacity then
      new_refused[#new_refused + 1] = seq
      results[#results + 1] = 0
    else
      local id = redis.call('XADD', stream, '*', 's', sender, 'q', seq, 'x', now + expiry,
        'c', ARGV[i + 1], 'm', ARGV[i + 2])
      length = length + 1
      if ARGV[5] == '1' and length == 1 then
        redis.pcall('XGROUP', 'CREATE', stream, 'readers', '0')
      end
      local note = ARGV[i + 3]
      announced[#announced + 1] = id .. '|' .. previous .. '|' .. #note .. '|' .. note
      previous, stored = id, seq
      results[#results + 1] = id
    end
  end
end
if #new_refused > 0 then
  -- Remembered (the last 64 per sender), so that a retry is refused again.
  local kept = {}
  for number in string.gmatch(refused, '[^,]+') do
    kept[#kept + 1] = number
  end
  for _, number in ipairs(new_refused) do
    kept[#kept + 1] = number
  end
  redis.call('HSET', seqs, refused_field, table.concat(kept, ',', math.max(1, #kept - 63)))
end
if stored then
  redis.call('HSET', seqs, sender, stored, ':last', previous)
  redis.call('PEXPIRE', stream, expiry + 1000)
  local publish = 'PUBLISH'
  if ARGV[6] == '1' then publish = 'SPUBLISH' end
  redis.call(publish, ARGV[4], table.concat(announced))
end
if stored or #new_refused > 0 then
  redis.call('PEXPIRE', seqs, expiry + 1000)
end
return results
""",
)

# KEYS: a process stream. ARGV: (id, sender, seq) triples of entries taken. An id from a
# notification is deleted only if the entry there is the one the notification named; an id
# the server gave in a read comes with an empty sender, and is deleted as it is.
FORGET = Script(
    "forget",
    """
local deleted = 0
local read = {}
for i = 1, #ARGV, 3 do
  if ARGV[i + 1] == '' then
    read[#read + 1] = ARGV[i]
  else
    local entry = redis.call('XRANGE', KEYS[1], ARGV[i], ARGV[i])[1]
    if entry and entry[2][2] == ARGV[i + 1] and entry[2][4] == ARGV[i + 2] then
      deleted = deleted + redis.call('XDEL', KEYS[1], ARGV[i])
    end
  end
end
for first = 1, #read, 1000 do
  deleted = deleted + redis.call('XDEL', KEYS[1], unpack(read, first, math.min(first + 999, #read)))
end
return deleted
""",
)

# KEYS: a normal channel's stream. ARGV: consumer, count, '>' for new entries or '0' for
# those this consumer claimed before. Returns the server time and the entries.
CLAIM = Script(
    "claim",
    _NOW
    + """
local now = now_ms()
local function claim()
  return pcall(redis.call, 'XREADGROUP', 'GROUP', 'readers', ARGV[1],
    'COUNT', ARGV[2], 'STREAMS', KEYS[1], ARGV[3])
end
local ok, found = claim()
if not ok and redis.call('EXISTS', KEYS[1]) == 1 then
  -- A stream without its consumer group (another program wrote it): from its start.
  redis.pcall('XGROUP', 'CREATE', KEYS[1], 'readers', '0')
  ok, found = claim()
end
if not ok or not found then
  return {now, {}}
end
return {now, found[1][2]}
""",
)

# KEYS: a normal channel's stream. ARGV: ids this consumer took.
SETTLE = Script(
    "settle",
    """
redis.call('XACK', KEYS[1], 'readers', unpack(ARGV))
return redis.call('XDEL', KEYS[1], unpack(ARGV))
""",
)

# KEYS: a group. ARGV: channel, seconds the membership lasts ('' for ever).
JOIN = Script(
    "join",
    _NOW
    + """
local score = '+inf'
if ARGV[2] ~= '' then
  score = now_ms() + math.floor(tonumber(ARGV[2]) * 1000)
end
redis.call('ZADD', KEYS[1], score, ARGV[1])
local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')[2]
if last == 'inf' then
  redis.call('PERSIST', KEYS[1])
else
  redis.call('PEXPIREAT', KEYS[1], last)
end
return 1
""",
)

# KEYS: a group. Returns its members, after removing the expired ones.
MEMBERS = Script(
    "members",
    _NOW
    + """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now_ms())
return redis.call('ZRANGE', KEYS[1], 0, -1)
""",
)

SCRIPTS = (STORE, FORGET, CLAIM, SETTLE, JOIN, MEMBERS)


class Keys:
    """The names of one layer's keys and pub/sub channels."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.flush = f"{prefix}:flush"
        #: What ``flush()`` deletes (the prefix holds no glob character).
        self.pattern = f"{prefix}:*"

    def stream(self, queue: str) -> tuple[str, str]:
        """The stream and sequence hash of a queue: a normal channel, or the part up to
        the '!' that process-specific channels of one prefix share."""
        kind = "in" if queue.endswith("!") else "ch"
        return f"{self.prefix}:{kind}:{{{queue}}}", f"{self.prefix}:{kind}-seq:{{{queue}}}"

    def group(self, name: str) -> str:
        return f"{self.prefix}:group:{{{name}}}"

    def note(self, queue: str) -> str:
        """Where a process hears of the messages of one of its queues."""
        return f"{self.prefix}:note:{{{queue}}}"

    def wake(self, name: str) -> str:
        return f"{self.prefix}:wake:{{{name}}}"
