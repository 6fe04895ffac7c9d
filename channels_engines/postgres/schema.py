"""Tables, indexes and every SQL statement of the PostgreSQL engine, and table creation.

A message is a row; the NOTIFY that follows it wakes the process that owns the row's
queue (and, sealed and signed, may carry the message: see :mod:`.notes`). A group message
for members on process-specific channels is one row in the group's stream (queue '#' +
group), which every process with members reads. Names of channels and groups reach SQL
only as bind parameters; table names come from settings and are quoted as identifiers.
LISTEN identifiers are fixed-length hashes, never built from raw names, so they need no
quoting and cannot be truncated.

Five tables: messages, group memberships, the ledger of claims from queues that several
processes share, one row of control state (the flush epoch) that only roles allowed to
write the tables can change, and the order of each group's stream.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import sql

if TYPE_CHECKING:
    from psycopg import AsyncConnection

__all__ = ["MAX_PAYLOAD", "Statements", "Tables", "ensure_tables", "listen_identifier"]

# The advisory lock keys are transaction-scoped (safe behind PgBouncer); the values are
# arbitrary constants of this package, hashed with the table name so layers on other
# tables do not contend.
_DDL_LOCK = "channels_engines:ddl"
_CLEANUP_LOCK = "channels_engines:cleanup"

#: Largest payload the message table accepts (bytes): the upper bound of
#: ``max_message_size``, enforced by the table so that no writer can store more.
MAX_PAYLOAD = 256 * 1024 * 1024

#: Notification queue usage (0 to 1) up to which notifications carry messages, and up to
#: which they are sent at all.
NOTES_UNTIL = 0.5
NOTIFY_UNTIL = 0.9

#: A batch that stores more messages than this for one process sends it one wake-up
#: instead of a note each: the process takes them all in one catch-up, one round trip,
#: instead of reading and checking a notification per message.
NOTES_PER_BATCH = 4

#: Columns the engine needs, by table; checked when the tables already exist.
_COLUMNS = {
    "message": ("id", "queue", "channels", "expires_at", "payload", "sender", "seq"),
    "group_member": (
        "group_name",
        "channel",
        "queue",
        "listen",
        "capacity",
        "expires_at",
        "joined",
    ),
    "claimed": ("queue", "sender", "seq", "expires_at"),
    "control": ("id", "flush_epoch"),
    "group_stream": ("group_name", "prev", "last"),
}


def stream_queue(group: str) -> str:
    """The queue of ``group``'s stream of messages to process-specific members. Channel
    names cannot contain '#', so it is never a channel's queue."""
    return f"#{group}"


def listen_identifier(namespace: str, queue: str) -> str:
    """The LISTEN channel for ``queue``: 'ce_' and 32 hex digits, 35 bytes, always valid.

    A hash collision would only cause a spurious wake-up: rows are claimed by the exact
    queue name, never by identifier.
    """
    digest = hashlib.sha256(f"{namespace}|{queue}".encode()).hexdigest()
    return f"ce_{digest[:32]}"


def _lock_key(namespace: str, purpose: str) -> int:
    digest = hashlib.sha256(f"{purpose}|{namespace}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


@dataclass(frozen=True)
class Tables:
    """Where the engine keeps its rows."""

    schema: str | None
    prefix: str
    unlogged: bool

    @property
    def namespace(self) -> str:
        """Distinguishes layers that use different tables in one database."""
        return f"{self.schema or ''}.{self.prefix}"

    def name(self, table: str) -> sql.Composable:
        if self.schema:
            return sql.Identifier(self.schema, self.prefix + table)
        return sql.Identifier(self.prefix + table)

    def index(self, name: str) -> sql.Identifier:
        return sql.Identifier(self.prefix + name)

    def create_statements(self) -> list[sql.Composed]:
        """Idempotent DDL, run under a transaction-level advisory lock: the tables as
        first released, then each later change, so that tables of an earlier version are
        brought up to date (migrations 0001, 0002 and 0003 hold the three parts)."""
        return self.first_layout() + self.second_layout() + self.third_layout()

    def first_layout(self) -> list[sql.Composed]:
        """The tables of the first layout: messages and group memberships."""
        message, member = self.name("message"), self.name("group_member")
        unlogged = sql.SQL("UNLOGGED ") if self.unlogged else sql.SQL("")
        statements = []
        if self.schema:
            statements.append(
                sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(self.schema))
            )
        statements += [
            # One index only: every insert pays for each index, and rows live for
            # milliseconds. Claims find rows through (queue, id); the clean-up of the
            # rare expired row scans the (small) table. Rows churn, so autovacuum is
            # asked to visit whenever a thousand have died.
            sql.SQL(
                "CREATE {}TABLE IF NOT EXISTS {} ("
                " id bigint GENERATED BY DEFAULT AS IDENTITY,"
                " queue text NOT NULL,"
                " channels text[] NOT NULL,"
                " expires_at timestamptz NOT NULL,"
                " payload bytea NOT NULL)"
                " WITH (autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 1000)"
            ).format(unlogged, message),
            sql.SQL("CREATE INDEX IF NOT EXISTS {} ON {} (queue, id)").format(
                self.index("message_queue_id"), message
            ),
            sql.SQL(
                "CREATE TABLE IF NOT EXISTS {} ("
                " group_name text NOT NULL,"
                " channel text NOT NULL,"
                " queue text NOT NULL,"
                " listen text NOT NULL,"
                " capacity integer NOT NULL,"
                " expires_at timestamptz,"
                " PRIMARY KEY (group_name, channel))"
            ).format(member),
            sql.SQL("CREATE INDEX IF NOT EXISTS {} ON {} (channel)").format(
                self.index("group_member_channel"), member
            ),
            sql.SQL(
                "CREATE INDEX IF NOT EXISTS {} ON {} (expires_at) WHERE expires_at IS NOT NULL"
            ).format(self.index("group_member_expires_at"), member),
        ]
        return statements

    def second_layout(self) -> list[sql.Composed]:
        """Senders and sequence numbers, row checks, the claim ledger, the control row.

        Each statement is a no-op where it already applied. Adding the columns with a
        constant default rewrites nothing, and processes of the first layout keep
        working meanwhile (they name the columns they write). The checks keep rows that
        would break claims (an infinite expiry, an empty or NULL member) out of the
        tables; NOT VALID, so that rows already there (if any) do not fail the upgrade.
        """
        message, member = self.name("message"), self.name("group_member")
        claimed, control = self.name("claimed"), self.name("control")
        unlogged = sql.SQL("UNLOGGED ") if self.unlogged else sql.SQL("")
        checks = [
            (
                message,
                "message_channels_valid",
                "array_ndims(channels) IS NOT DISTINCT FROM 1"
                " AND array_position(channels, NULL) IS NULL",
            ),
            (message, "message_expiry_finite", "isfinite(expires_at)"),
            (message, "message_payload_size", f"octet_length(payload) <= {MAX_PAYLOAD}"),
            (member, "group_member_capacity_positive", "capacity > 0"),
            (member, "group_member_expiry_finite", "isfinite(expires_at)"),
        ]
        statements = [
            # (sender, seq) is chosen by the sending process, so that a receiver can drop
            # a second copy of a message whose send was retried.
            sql.SQL(
                "ALTER TABLE {} ADD COLUMN IF NOT EXISTS sender bigint NOT NULL DEFAULT 0,"
                " ADD COLUMN IF NOT EXISTS seq bigint NOT NULL DEFAULT 0"
            ).format(message),
        ]
        for table, name, check in checks:
            statements.append(
                sql.SQL(
                    "DO $$ BEGIN ALTER TABLE {} ADD CONSTRAINT {} CHECK ({}) NOT VALID;"
                    " EXCEPTION WHEN duplicate_object THEN NULL; END $$"
                ).format(table, sql.Identifier(name), sql.SQL(check))
            )
        statements += [
            # Claims from queues that several processes share, kept until the message
            # would have expired: proof that a claim committed when its answer was lost,
            # and what keeps a retried send from delivering a message a second time.
            sql.SQL(
                "CREATE {}TABLE IF NOT EXISTS {} ("
                " queue text NOT NULL,"
                " sender bigint NOT NULL,"
                " seq bigint NOT NULL,"
                " expires_at timestamptz NOT NULL,"
                " PRIMARY KEY (queue, sender, seq))"
                " WITH (autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 1000)"
            ).format(unlogged, claimed),
            # State that processes act on when notified: a notification only says
            # "look"; what changed is read from here, which only the layer's roles write.
            sql.SQL(
                "CREATE TABLE IF NOT EXISTS {} ("
                " id integer PRIMARY KEY CHECK (id = 1),"
                " flush_epoch bigint NOT NULL)"
            ).format(control),
            sql.SQL("INSERT INTO {} (id, flush_epoch) VALUES (1, 0) ON CONFLICT DO NOTHING").format(
                control
            ),
        ]
        return statements

    def third_layout(self) -> list[sql.Composed]:
        """Group streams: one row per group message for all process-specific members.

        A group's stream row (queue '#' + group) is read, not claimed, by every process
        with members in the group; ``group_stream`` orders each group's messages (its
        row lock makes them commit in id order) and says which message came before, and
        a member's ``joined`` is the last message of its group when it joined.
        """
        member, stream = self.name("group_member"), self.name("group_stream")
        unlogged = sql.SQL("UNLOGGED ") if self.unlogged else sql.SQL("")
        return [
            sql.SQL(
                "ALTER TABLE {} ADD COLUMN IF NOT EXISTS joined bigint NOT NULL DEFAULT 0"
            ).format(member),
            sql.SQL(
                "CREATE {}TABLE IF NOT EXISTS {} ("
                " group_name text PRIMARY KEY,"
                " prev bigint NOT NULL,"
                " last bigint NOT NULL)"
            ).format(unlogged, stream),
            # A group send looks up the members on normal channels only (the rest share
            # the stream): without this, it would visit every member of the group.
            sql.SQL(
                "CREATE INDEX IF NOT EXISTS {} ON {} (group_name) WHERE strpos(queue, '!') = 0"
            ).format(self.index("group_member_shared"), member),
        ]

    def create_script(self) -> str:
        """The DDL as one SQL script, for deployments whose role may not run DDL."""
        return "".join(f"{statement.as_string(None)};\n" for statement in self.create_statements())

    def grant_script(self, role: str) -> str:
        """The least privileges a runtime role needs: DML on the tables, no DDL."""
        message, member = self.name("message"), self.name("group_member")
        claimed, control = self.name("claimed"), self.name("control")
        sequence = (
            sql.Identifier(self.schema, f"{self.prefix}message_id_seq")
            if self.schema
            else sql.Identifier(f"{self.prefix}message_id_seq")
        )
        grantee = sql.Identifier(role)
        statements = []
        if self.schema:
            statements.append(
                sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(
                    sql.Identifier(self.schema), grantee
                )
            )
        statements += [
            sql.SQL("GRANT SELECT, INSERT, UPDATE, DELETE ON {}, {}, {}, {} TO {}").format(
                message, member, claimed, self.name("group_stream"), grantee
            ),
            sql.SQL("GRANT SELECT, UPDATE ON {} TO {}").format(control, grantee),
            sql.SQL("GRANT USAGE ON SEQUENCE {} TO {}").format(sequence, grantee),
        ]
        return "".join(f"{statement.as_string(None)};\n" for statement in statements)


class Statements:
    """The engine's statements for one set of tables, rendered once."""

    def __init__(self, tables: Tables) -> None:
        message, member = tables.name("message"), tables.name("group_member")
        claimed, control = tables.name("claimed"), tables.name("control")
        stream = tables.name("group_stream")
        ids = (
            sql.Identifier(tables.schema, f"{tables.prefix}message_id_seq")
            if tables.schema
            else sql.Identifier(f"{tables.prefix}message_id_seq")
        )
        namespace = tables.namespace
        self.ddl_lock = _lock_key(namespace, _DDL_LOCK)
        self.cleanup_lock = _lock_key(namespace, _CLEANUP_LOCK)
        self.create = [statement.as_string(None) for statement in tables.create_statements()]
        self.table_names = tuple(
            tables.name(table).as_string(None) for table in ("message", "group_member")
        )
        # Every table the engine needs, with the columns it uses: tables of an older
        # layout are reported, not queried into errors.
        self.tables_ready = (
            "SELECT count(*) = %s FROM unnest(%s::text[], %s::text[]) AS w(tab, col)"
            " WHERE EXISTS (SELECT 1 FROM pg_attribute"
            "  WHERE attrelid = to_regclass(w.tab) AND attname = w.col AND NOT attisdropped)"
        )
        self.required_columns = [
            (tables.name(table).as_string(None), column)
            for table, columns in _COLUMNS.items()
            for column in columns
        ]

        def render(template: str, **parts: sql.Composable) -> str:
            return (
                sql.SQL(template)
                .format(
                    message=message,
                    member=member,
                    claimed=claimed,
                    control=control,
                    stream=stream,
                    ids=sql.Literal(ids.as_string(None)),
                    **parts,
                )
                .as_string(None)
            )

        # PostgreSQL's notification queue is finite and a listener that stops reading
        # holds it: past half full, notifications only wake (the receiver claims the
        # row); past 90 %, none is sent and receivers find the rows in their periodic
        # claims. A send never fails because another process stopped listening.
        usage = "(SELECT pg_notification_queue_usage())"
        note = f"CASE WHEN {usage} < {NOTES_UNTIL} THEN w.note ELSE '' END"
        notify = f"{usage} < {NOTIFY_UNTIL}"
        # Messages already stored (a send whose answer was lost, then retried) or
        # already claimed from a shared queue are not stored again.
        already_there = sql.SQL(
            "EXISTS (SELECT 1 FROM {message} m WHERE m.queue = r.queue"
            "  AND m.sender = %(sender)s AND m.seq = r.seq)"
            " OR EXISTS (SELECT 1 FROM {claimed} c WHERE c.queue = r.queue"
            "  AND c.sender = %(sender)s AND c.seq = r.seq)"
        ).format(message=message, claimed=claimed)

        def writes(retry: bool) -> str:
            # Direct sends and group sends gathered from concurrent callers, in one
            # statement. One row per direct send. A group send stores one row per queue
            # of its members on normal channels (each checked against its capacity,
            # counting earlier rows of the batch), and one row in the group's stream for
            # all its members on process-specific channels, whatever the number of
            # their processes; each process reads it and delivers to its own members.
            # A group appears at most once per batch: its stream row takes the group's
            # row lock (in group order, so batches cannot deadlock) and the next id
            # after it, so a group's stream commits in id order, and its notification
            # says which message came before (``prev``), so a reader knows whether it
            # missed one. One NOTIFY per receiving process or stream. Returns, per item,
            # its number of receiving queues and how many accepted it.
            return render(
                "WITH items AS ("
                "  SELECT * FROM unnest(%(targets)s::text[], %(queues)s::text[],"
                "    %(listens)s::text[], %(capacities)s::int[], %(payloads)s::bytea[],"
                "    %(seqs)s::bigint[], %(notes)s::text[])"
                "  WITH ORDINALITY AS i(target, queue, listen, capacity, payload, seq, note,"
                "   ord)),"
                " targets AS ("
                "  SELECT ord, seq, queue, listen, capacity, ARRAY[target] AS channels,"
                "         false AS stream"
                "  FROM items WHERE queue IS NOT NULL"
                "  UNION ALL"
                "  SELECT i.ord, i.seq, m.queue, m.listen, max(m.capacity),"
                "         array_agg(m.channel ORDER BY m.channel), false"
                "  FROM items i JOIN {member} m ON m.group_name = i.target"
                "   AND (m.expires_at IS NULL OR m.expires_at > now())"
                "  WHERE i.queue IS NULL AND strpos(m.queue, '!') = 0"
                "  GROUP BY i.ord, i.seq, m.queue, m.listen"
                "  UNION ALL"
                "  SELECT i.ord, i.seq, '#' || i.target, i.listen, NULL, ARRAY['#'], true"
                "  FROM items i WHERE i.queue IS NULL AND EXISTS ("
                "   SELECT 1 FROM {member} m WHERE m.group_name = i.target"
                "    AND strpos(m.queue, '!') > 0"
                "    AND (m.expires_at IS NULL OR m.expires_at > now()))),"
                " marked AS ("
                "  SELECT r.*, ({present}) AS present FROM targets r),"
                " ranked AS ("
                "  SELECT marked.*, row_number() OVER ("
                "    PARTITION BY queue, present ORDER BY ord) AS rank FROM marked),"
                " room AS ("
                "  SELECT q.queue, q.capacity - ("
                "    SELECT count(*) FROM ("
                "      SELECT 1 FROM {message} m"
                "      WHERE m.queue = q.queue AND m.expires_at > now() LIMIT q.capacity) AS p"
                "  ) AS free"
                "  FROM (SELECT queue, max(capacity) AS capacity FROM targets"
                "        WHERE NOT stream GROUP BY queue) AS q),"
                " accepted AS ("
                "  SELECT ranked.* FROM ranked LEFT JOIN room USING (queue)"
                "  WHERE ranked.present OR ranked.stream OR ranked.rank <= room.free),"
                " ordered AS ("
                "  INSERT INTO {stream} AS s (group_name, prev, last)"
                "  SELECT substr(a.queue, 2), 0, nextval({ids})"
                "  FROM accepted a WHERE a.stream AND NOT a.present ORDER BY a.queue"
                "  ON CONFLICT (group_name) DO UPDATE SET prev = s.last, last = nextval({ids})"
                "  RETURNING '#' || group_name AS queue, prev, last),"
                " inserted AS ("
                "  INSERT INTO {message} (id, queue, channels, expires_at, payload, sender, seq)"
                "  SELECT coalesce(o.last, nextval({ids})), a.queue, a.channels,"
                "         now() + make_interval(secs => %(expiry)s),"
                "         i.payload, %(sender)s, a.seq"
                "  FROM accepted a JOIN items i USING (ord)"
                "  LEFT JOIN ordered o ON a.stream AND o.queue = a.queue"
                "  WHERE NOT a.present"
                "  ORDER BY a.ord, a.queue"
                "  RETURNING 1),"
                " woken AS ("
                "  SELECT pg_notify(w.listen, w.note) FROM ("
                "    SELECT a.listen, CASE WHEN a.stream THEN o.prev || ':' || o.last || ':'"
                "      || {note} WHEN i.queue IS NOT NULL AND b.n <= {notes_per_batch}"
                "      THEN {note} ELSE '' END AS note,"
                "      min(a.ord) AS first"
                "    FROM accepted a JOIN items i USING (ord)"
                "    JOIN (SELECT listen, count(*) AS n FROM accepted WHERE NOT present"
                "          GROUP BY listen) AS b ON b.listen = a.listen"
                "    LEFT JOIN ordered o ON a.stream AND o.queue = a.queue"
                "    WHERE NOT a.present"
                "    GROUP BY 1, 2 ORDER BY first) AS w"
                "  WHERE {notify})"
                " SELECT i.ord, count(t.queue), count(a.queue),"
                "        (SELECT count(*) FROM inserted), (SELECT count(*) FROM woken)"
                " FROM items i LEFT JOIN targets t USING (ord)"
                " LEFT JOIN accepted a ON a.ord = t.ord AND a.queue = t.queue"
                " GROUP BY i.ord ORDER BY i.ord",
                present=already_there if retry else sql.SQL("false"),
                notes_per_batch=sql.SQL(str(NOTES_PER_BATCH)),
                note=sql.SQL(note.replace("w.note", "coalesce(i.note, '')")),
                notify=sql.SQL(notify),
            )

        self.write = writes(retry=False)
        self.write_retry = writes(retry=True)

        # One message to one channel, the common case: a single round trip that checks
        # capacity, inserts and wakes the receiving process. Returns a row only when the
        # message was accepted.
        self.send_one = render(
            "WITH room AS ("
            "  SELECT count(*) AS pending FROM ("
            "    SELECT 1 FROM {message}"
            "    WHERE queue = %(queue)s AND expires_at > now() LIMIT %(capacity)s) AS p),"
            " inserted AS ("
            "  INSERT INTO {message} (queue, channels, expires_at, payload, sender, seq)"
            "  SELECT %(queue)s, ARRAY[%(channel)s::text],"
            "         now() + make_interval(secs => %(expiry)s), %(payload)s,"
            "         %(sender)s, %(seq)s"
            "  FROM room WHERE room.pending < %(capacity)s"
            "  RETURNING 1)"
            " SELECT CASE WHEN {notify} THEN pg_notify(%(listen)s,"
            "   CASE WHEN {usage} < {notes_until} THEN %(note)s ELSE '' END) END"
            " FROM inserted",
            notify=sql.SQL(notify),
            usage=sql.SQL(usage),
            notes_until=sql.SQL(str(NOTES_UNTIL)),
        )
        # Rows whose messages their process took from the notification: found through
        # the (queue, id) index of the process's own queues only (a sender's sequence
        # number identifies its message there), whatever else the table holds. Matching
        # each (queue, sender, seq) instead made the prepared plan hash the whole table.
        self.reap = render(
            "WITH gone AS ("
            "  DELETE FROM {message} m"
            "  WHERE m.queue = ANY(%(queues)s::text[])"
            "   AND (m.sender, m.seq) IN (SELECT d.sender, d.seq"
            "    FROM unnest(%(senders)s::bigint[], %(seqs)s::bigint[]) AS d(sender, seq))"
            "  RETURNING 1)"
            " SELECT count(*) FROM gone"
        )
        # Memberships, gathered like sends: one statement for all adds, one for all
        # discards (a key appears once in each: the last call for it wins).
        # A new member's ``joined`` is the last message of its group's stream: it gets
        # those after it. A process whose channel another process adds or discards is
        # told to read its memberships again (it keeps them in memory).
        self.group_add = render(
            "WITH added AS ("
            "  INSERT INTO {member} AS m"
            "   (group_name, channel, queue, listen, capacity, expires_at, joined)"
            "  SELECT g, c, q, l, cap, now() + make_interval(secs => e),"
            "   coalesce((SELECT last FROM {stream} s WHERE s.group_name = g), 0)"
            "  FROM unnest(%(groups)s::text[], %(channels)s::text[], %(queues)s::text[],"
            "    %(listens)s::text[], %(capacities)s::int[], %(expiries)s::float8[])"
            "    AS a(g, c, q, l, cap, e)"
            "  ON CONFLICT (group_name, channel) DO UPDATE SET"
            "   queue = EXCLUDED.queue, listen = EXCLUDED.listen,"
            "   capacity = EXCLUDED.capacity, expires_at = EXCLUDED.expires_at"
            "  RETURNING group_name, channel, queue, listen, joined)"
            " SELECT group_name, channel, joined, CASE WHEN strpos(queue, '!') > 0"
            "   AND right(queue, length(%(own)s)) <> %(own)s"
            "   THEN pg_notify(listen, '#members') END"
            " FROM added"
        )
        self.group_discard = render(
            "WITH gone AS ("
            "  DELETE FROM {member} m USING unnest(%(groups)s::text[], %(channels)s::text[])"
            "  AS d(g, c) WHERE m.group_name = d.g AND m.channel = d.c"
            "  RETURNING m.queue, m.listen)"
            " SELECT pg_notify(listen, '#members') FROM ("
            "  SELECT DISTINCT queue, listen FROM gone"
            "  WHERE strpos(queue, '!') > 0"
            "   AND right(queue, length(%(own)s)) <> %(own)s) AS elsewhere"
        )
        # What a process needs to deliver its members' group messages itself.
        # With each, the group's last stream message: lower than where the process
        # stands only after a crash of the server emptied the (unlogged) tables and
        # started their id sequence again.
        self.members_of = render(
            "SELECT m.group_name, m.channel, m.joined, coalesce(s.last, 0),"
            " extract(epoch FROM m.expires_at) - extract(epoch FROM now())"
            " FROM {member} m LEFT JOIN {stream} s USING (group_name)"
            " WHERE right(m.queue, length(%(own)s)) = %(own)s"
            " AND strpos(m.queue, '!') > 0 AND (m.expires_at IS NULL OR m.expires_at > now())"
        )
        # Claims run in a transaction that commits only once the rows are read, so a lost
        # answer loses nothing: the rows come back. If this session is abandoned halfway,
        # the server ends the transaction after the given idle time. Rows come in id
        # order, which for one sender is the order it sent in.
        claim = (
            "WITH claimed AS ("
            "  DELETE FROM {message} WHERE queue = %(queue)s AND id = ANY(ARRAY("
            "    SELECT id FROM {message}"
            "    WHERE queue = %(queue)s AND expires_at > now()"
            "    ORDER BY id LIMIT %(limit)s FOR UPDATE{skip}))"
            "  RETURNING id, channels, payload,"
            "   extract(epoch FROM expires_at) - extract(epoch FROM now()) AS ttl,"
            "   sender, seq, expires_at){ledger}"
            # A payload over the receiver's limit is not even sent over: it is dropped.
            " SELECT id, channels,"
            "  CASE WHEN octet_length(payload) <= %(max_size)s THEN payload END,"
            "  ttl, sender, seq, (SELECT flush_epoch FROM {control}), {fresh},"
            "  octet_length(payload),"
            "  set_config('idle_in_transaction_session_timeout', %(idle_ms)s, true)"
            " FROM claimed ORDER BY id"
        )
        # A process's catch-up: its own queues claimed (it is their one claimer, so it
        # waits for locks rather than skipping rows, and rows of one sender never come
        # out of order) and its groups' streams read after the last row it handled, in
        # one statement, so in one snapshot, returned in id order. For a sender that
        # waits for each call, id order is the order it sent in, whichever the paths.
        self.catch_up = render(
            "WITH claimed AS ("
            "  DELETE FROM {message} WHERE queue = ANY(%(queues)s::text[]) AND id = ANY(ARRAY("
            "    SELECT p.id"
            "    FROM unnest(%(queues)s::text[], %(limits)s::int[]) AS w(queue, lim)"
            "    CROSS JOIN LATERAL ("
            "      SELECT id FROM {message}"
            "      WHERE queue = w.queue AND expires_at > now()"
            "      ORDER BY id LIMIT w.lim FOR UPDATE) AS p))"
            "  RETURNING id, queue, channels, payload, expires_at, sender, seq),"
            " streamed AS ("
            "  SELECT m.id, m.queue, m.channels, m.payload, m.expires_at, m.sender, m.seq"
            "  FROM unnest(%(streams)s::text[], %(after)s::bigint[]) AS s(queue, after)"
            "  CROSS JOIN LATERAL ("
            "   SELECT * FROM {message} m"
            "   WHERE m.queue = s.queue AND m.id > s.after AND m.expires_at > now()"
            "   ORDER BY m.id LIMIT %(stream_limit)s) AS m)"
            " SELECT r.id, r.queue, r.channels,"
            "  CASE WHEN octet_length(r.payload) <= %(max_size)s THEN r.payload END,"
            "  extract(epoch FROM r.expires_at) - extract(epoch FROM now()),"
            "  r.sender, r.seq, (SELECT flush_epoch FROM {control}), octet_length(r.payload),"
            "  set_config('idle_in_transaction_session_timeout', %(idle_ms)s, true)"
            " FROM (SELECT * FROM claimed UNION ALL SELECT * FROM streamed) AS r"
            " ORDER BY r.id"
        )
        # A shared queue has claimers in several processes: they skip each other's rows,
        # and each claim leaves its (sender, seq) in the ledger, so that whether it
        # committed can be checked when its answer is lost, and so that a retried send
        # cannot store a message a second time once it was taken.
        self.claim_shared = render(
            claim,
            skip=sql.SQL(" SKIP LOCKED"),
            ledger=sql.SQL(
                ", ledger AS ("
                "  INSERT INTO {claimed} (queue, sender, seq, expires_at)"
                "  SELECT %(queue)s, CASE WHEN sender = 0 THEN -id ELSE sender END, seq,"
                "         expires_at"
                "  FROM claimed ON CONFLICT DO NOTHING RETURNING sender, seq)"
            ).format(claimed=claimed),
            # A key already in the ledger was claimed before: this row is a second copy.
            fresh=sql.SQL(
                "EXISTS (SELECT 1 FROM ledger l"
                " WHERE l.sender = CASE WHEN claimed.sender = 0 THEN -claimed.id"
                " ELSE claimed.sender END AND l.seq = claimed.seq)"
            ),
        )
        self.claimed_count = render(
            "SELECT count(*) FROM {claimed} WHERE queue = %(queue)s AND (sender, seq) IN ("
            "  SELECT * FROM unnest(%(senders)s::bigint[], %(seqs)s::bigint[]))"
        )
        self.flush_epoch = render("SELECT flush_epoch FROM {control}")
        self.notify_flush = f"SELECT {notify}, CASE WHEN {notify} THEN pg_notify(%s, '') END"
        # Run once on every listener connection, which makes most claims. A message row
        # lives for milliseconds, so a busy queue's index fills with entries of deleted
        # rows until the next vacuum, up to a minute later. Plain index scans mark those
        # entries dead and every later scan skips them; bitmap scans, which the planner
        # picks for a queue it believes nearly empty, visit them all, each time, so
        # sends and claims slow down sixfold within 30,000 messages. The listener
        # connection is always a session of its own (never a transaction-mode pooler),
        # so the setting stays on it.
        # The same goes for the deletion of rows whose messages came in their
        # notifications, which the planner would otherwise do by sequential scan of a
        # table it believes nearly empty, leaving every index entry in place.
        # Disabled plan types cost 1e10 to the planner, far above jit_above_cost: without
        # jit off, every query of this session would be JIT-compiled (with inlining), a
        # tenth of a second or more each, on a server built with LLVM.
        self.listener_session = (
            "SELECT set_config('enable_bitmapscan', 'off', false),"
            " set_config('enable_seqscan', 'off', false),"
            " set_config('jit', 'off', false)"
        )
        # Flush empties the tables and moves the epoch on; every process drops what it
        # claimed before that epoch when it sees it (in a claim, or told by a NOTIFY).
        self.flush = [
            render("DELETE FROM {message}"),
            render("DELETE FROM {member}"),
            render("DELETE FROM {claimed}"),
            render("DELETE FROM {stream}"),
        ]
        self.advance_epoch = render(
            "UPDATE {control} SET flush_epoch = flush_epoch + 1 RETURNING flush_epoch"
        )
        self.try_cleanup_lock = "SELECT pg_try_advisory_xact_lock(%s)"
        # Expired rows go in batches; channels whose messages expired unread leave their
        # groups, as the specification allows (their consumer stopped reading).
        self.delete_expired_messages = render(
            "WITH expired AS ("
            "  DELETE FROM {message} WHERE ctid = ANY(ARRAY("
            "    SELECT ctid FROM {message} WHERE expires_at <= now()"
            "    LIMIT %(limit)s FOR UPDATE SKIP LOCKED))"
            "  RETURNING channels),"
            " left_groups AS ("
            "  DELETE FROM {member} WHERE channel IN (SELECT unnest(channels) FROM expired)"
            "  RETURNING 1)"
            " SELECT (SELECT count(*) FROM expired), (SELECT count(*) FROM left_groups)"
        )
        self.delete_expired_members = render(
            "WITH gone AS (DELETE FROM {member} WHERE ctid IN ("
            "  SELECT ctid FROM {member} WHERE expires_at <= now() LIMIT %(limit)s)"
            "  RETURNING 1) SELECT count(*) FROM gone"
        )
        self.delete_expired_claims = render(
            "WITH gone AS (DELETE FROM {claimed} WHERE ctid IN ("
            "  SELECT ctid FROM {claimed} WHERE expires_at <= now() LIMIT %(limit)s)"
            "  RETURNING 1) SELECT count(*) FROM gone"
        )
        # The order of a group's stream is kept while it has members or messages.
        self.delete_idle_streams = render(
            "WITH gone AS (DELETE FROM {stream} WHERE ctid IN ("
            "  SELECT ctid FROM {stream} s"
            "  WHERE NOT EXISTS (SELECT 1 FROM {member} m WHERE m.group_name = s.group_name)"
            "  AND NOT EXISTS (SELECT 1 FROM {message} m WHERE m.queue = '#' || s.group_name)"
            "  LIMIT %(limit)s) RETURNING 1) SELECT count(*) FROM gone"
        )
        self.leave_groups = render("DELETE FROM {member} WHERE channel = ANY(%(channels)s)")


async def ensure_tables(
    conn: AsyncConnection[tuple[Any, ...]],
    statements: Statements,
    *,
    create: bool,
    where: str,
    timeout: float,
) -> None:
    """Create the tables if they are missing (and allowed); bring an older layout up to
    date. Each statement gets ``timeout`` seconds (DDL may wait for table locks)."""
    from ..exceptions import InvalidConfigError
    from .deadlines import fetch, transaction

    columns = statements.required_columns
    parameters = [len(columns), [t for t, _ in columns], [c for _, c in columns]]
    if await _all_columns_exist(conn, statements, parameters, timeout):
        return
    rows = await fetch(
        conn,
        "SELECT to_regclass(%s) IS NOT NULL OR to_regclass(%s) IS NOT NULL",
        list(statements.table_names),
        timeout=timeout,
        what="looking for the tables",
    )
    first_use = not (rows and rows[0][0])
    if not create:
        if first_use:
            raise InvalidConfigError(
                f"{where}: the tables {statements.table_names[0]} and "
                f"{statements.table_names[1]} do not exist and CONFIG['create_tables'] is "
                "False. Run `manage.py migrate channels_engines`, or apply the SQL from "
                "`python -m channels_engines.postgres schema`."
            )
        raise InvalidConfigError(_older_layout(statements, where))
    for attempt in range(3):
        try:
            async with transaction(conn, timeout, "creating the tables"):
                # Many processes may start at once: one creates (or upgrades) the tables,
                # the others wait, then find them ready. Taking a table's lock for a
                # no-op would only get in the way of processes already using it.
                await fetch(
                    conn,
                    "SELECT pg_advisory_xact_lock(%s)",
                    [statements.ddl_lock],
                    timeout=timeout,
                    what="the table creation lock",
                )
                if await _all_columns_exist(conn, statements, parameters, timeout):
                    return
                for statement in statements.create:
                    await fetch(conn, statement, None, timeout=timeout, what="creating the tables")
            return
        except psycopg.errors.DeadlockDetected:
            # An upgrade takes each table's lock in turn while processes of the earlier
            # version use them; the server chose this transaction to abort. Again.
            if attempt == 2:
                raise


async def _all_columns_exist(
    conn: AsyncConnection[tuple[Any, ...]],
    statements: Statements,
    parameters: list[Any],
    timeout: float,
) -> bool:
    from .deadlines import fetch

    rows = await fetch(
        conn, statements.tables_ready, parameters, timeout=timeout, what="checking the tables"
    )
    return bool(rows and rows[0][0])


def _older_layout(statements: Statements, where: str) -> str:
    return (
        f"{where}: the tables {statements.table_names[0]} and {statements.table_names[1]} "
        "were created by an earlier version and CONFIG['create_tables'] is False, so they "
        "are not brought up to date here. Run `manage.py migrate channels_engines`, or "
        "apply the SQL from `python -m channels_engines.postgres schema` (it changes only "
        "what is missing)."
    )


class TablesAtFirstUse:
    """The tables of one layer, created or checked by the first connection any event loop
    of the process opens, then taken as ready.

    ``create`` is ``CONFIG['create_tables']``; each statement gets ``timeout`` seconds.
    """

    def __init__(self, statements: Statements, *, create: bool, where: str, timeout: float):
        self.statements = statements
        self._create = create
        self._where = where
        self._timeout = timeout
        self.ready = False

    async def ensure(self, conn: AsyncConnection[tuple[Any, ...]]) -> None:
        """Make sure the tables exist and are up to date, once per process."""
        if self.ready:
            return
        await ensure_tables(
            conn, self.statements, create=self._create, where=self._where, timeout=self._timeout
        )
        self.ready = True


__all__ += ["TablesAtFirstUse"]
