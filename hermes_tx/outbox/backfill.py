# -*- test-case-name: tests.test_outbox_backfill -*-
"""
Backfilling a table: one C{READ} change per existing row into the outbox
(C{hermes-tx backfill}), so that what a sink holds starts from the rows
already there, not only from the changes made after C{capture}.

How (C{migrations/0008_backfill.sql} holds the server's half):

  - rows are read in primary-key order, a chunk per transaction; the
    chunk's upper key is found first (an index walk of C{chunk} keys),
    then one statement reads the chunk's rows C{FOR SHARE}, renders each
    as capture renders C{new} (L{row_json}) and hands them, as one array
    that never leaves the server, to C{backfill_chunk()}, which writes the
    changes (op C{READ}, C{old} null, the key as capture computes it),
    wakes consumers and records the progress (last key, rows done) in the
    same transaction.  A crash loses at most the chunk in flight;
  - C{FOR SHARE}: an UPDATE or DELETE of a chunk's row that is running
    when the chunk reads makes it wait, and the chunk reads the row as
    that writer left it (READ COMMITTED re-reads a row it waited for); a
    writer that comes later waits for the chunk to commit, so its change
    gets a later id.  Per key, the READ never overtakes a newer change;
  - the operator reads the table with its own rights: C{SELECT} on it,
    and C{UPDATE} on one of its columns, which PostgreSQL asks of a row
    lock (nothing is updated); the outbox is written by
    C{backfill_chunk()} with its owner's rights;
  - one backfill of a table at a time: a session advisory lock, freed
    when the process or its connection dies.

Blocking psycopg2 (the command line); pauses go through an injected
C{sleep}, time through an injected C{clock}.
"""

import time

import psycopg2
from psycopg2 import sql

from hermes_tx.exceptions import InvalidConfigurationException
from hermes_tx.outbox.capture import captures, find_table
from hermes_tx.outbox.capture import row_json as capture_row_json
from hermes_tx.outbox.db import transaction
from hermes_tx.outbox.names import DEFAULT_SCHEMA, validate_schema, validate_topic

#: first key of the session advisory lock a backfill holds on its table
#: (the second: a hash of the schema and table): "herb" in ASCII
BACKFILL_LOCK = 0x68657262

#: rows per chunk unless told
DEFAULT_CHUNK = 1000


class BackfillRunning(InvalidConfigurationException):
    """Another backfill of the table is running."""


def row_json(capture, alias):
    """
    The SQL expression rendering a row of a captured table as jsonb, as the
    capture trigger renders C{new}.

    @param capture: the table's L{hermes_tx.outbox.capture.Capture} into
        the backfill's topic, or C{None} when the table is not captured at
        all: every column.
    @param alias: the alias the row has in the statement.
    @return: a C{psycopg2.sql.Composable}.
    """
    if capture is not None:
        return capture_row_json(capture, alias)  # its choice of columns
    return sql.SQL("pg_catalog.to_jsonb({})").format(sql.Identifier(alias))


class Plan:
    """
    What a backfill of one table does.

    @ivar table: the L{hermes_tx.outbox.capture.Table}.
    @ivar topic: the topic its changes go to.
    @ivar capture: the table's capture into that topic, or C{None}.
    @ivar types: the SQL type of each key column, in key order.
    @ivar estimate: the planner's estimate of its rows, or C{None}.
    """

    def __init__(self, table, topic, capture, types, estimate):
        self.table = table
        self.topic = topic
        self.capture = capture
        self.types = types
        self.estimate = estimate

    def _keys(self, alias="t"):
        return [sql.Identifier(alias, c) for c in self.table.key]

    def _row(self):
        return sql.SQL("({})").format(sql.SQL(", ").join(self._keys()))

    def _bound(self, name):
        return sql.SQL("({})").format(sql.SQL(", ").join(
            sql.SQL("(%({})s::text[])[{}]::{}").format(sql.SQL(name), sql.Literal(i + 1), sql.SQL(t))
            for i, t in enumerate(self.types)))

    def _where(self, lower, upper):
        conditions = [sql.SQL("true")]
        if lower:
            conditions.append(sql.SQL("{} > {}").format(self._row(), self._bound("from")))
        if upper:
            conditions.append(sql.SQL("{} <= {}").format(self._row(), self._bound("to")))
        return sql.SQL(" AND ").join(conditions)

    def boundary(self, lower):
        """
        @param lower: whether the chunk starts after a key (C{%(from)s}).
        @return: the statement finding the last key of the next chunk of
            C{%(chunk)s} rows (as text, one per key column), or no row when
            fewer remain.
        """
        return sql.SQL(
            "SELECT ARRAY[{}] FROM {} t WHERE {} ORDER BY {} OFFSET %(chunk)s - 1 LIMIT 1"
        ).format(
            sql.SQL(", ").join(sql.SQL("{}::text").format(k) for k in self._keys()),
            self.table.identifier(), self._where(lower, False), sql.SQL(", ").join(self._keys()),
        )

    def chunk(self, schema, lower, upper):
        """
        @return: the statement writing one chunk (the rows after
            C{%(from)s}, up to C{%(to)s} when C{upper}), locked C{FOR SHARE}
            in key order, through C{backfill_chunk()}; it returns the
            changes written.
        """
        return sql.SQL(
            "SELECT {}(%(table)s, %(topic)s, %(from)s::text[], %(to)s::text[], %(finished)s, ARRAY("
            "SELECT {} FROM {} t WHERE {} ORDER BY {} FOR SHARE OF t))"
        ).format(
            sql.Identifier(schema, "backfill_chunk"), row_json(self.capture, "t"),
            self.table.identifier(), self._where(lower, upper), sql.SQL(", ").join(self._keys()),
        )


def plan(cursor, table, topic=None, schema=DEFAULT_SCHEMA):
    """
    @param table: the table's name as the user wrote it.
    @param topic: the topic, or C{None} for the one capturing the table.
    @return: a L{Plan}.
    @raise InvalidConfigurationException: no such table, no primary key,
        not captured and no topic given (or captured into several), captured
        but not into the topic given (its capture's rendering of rows
        decides what leaves), a table of the outbox's own schema, no right
        to read and lock it.
    """
    found = find_table(cursor, table)
    if found.schema == schema:
        raise InvalidConfigurationException(f"{found.display} is in the outbox's own schema")
    if not found.key:
        raise InvalidConfigurationException(
            f"table {found.display} has no primary key: a backfill reads and keys rows by it")
    # (FOR SHARE asks for UPDATE on a column, though it updates nothing)
    cursor.execute("SELECT has_table_privilege(%(oid)s, 'SELECT') AND has_any_column_privilege(%(oid)s, 'UPDATE'),"
                   " current_user, quote_ident(current_user), quote_ident(%(key)s)",
                   {"oid": found.oid, "key": found.key[0]})
    allowed, role, role_id, column = cursor.fetchone()
    if not allowed:
        raise InvalidConfigurationException(
            f"permission denied for table {found.name}: a backfill reads it and locks its rows FOR SHARE"
            f" with the rights of role {role!r}, which needs SELECT and UPDATE on one column"
            f" (nothing is updated): GRANT SELECT, UPDATE ({column}) ON {found.display} TO {role_id}")
    mine = [c for c in captures(cursor, schema) if c.oid == found.oid]
    if topic is None:
        if not mine:
            raise InvalidConfigurationException(
                f"{found.display} is not captured: capture it first (hermes-tx capture) or give --topic")
        if len(mine) > 1:
            raise InvalidConfigurationException(
                f"{found.display} is captured into {len(mine)} topics"
                f" ({', '.join(sorted(c.topic for c in mine))}): choose one with --topic")
        topic = mine[0].topic
    validate_topic(topic)
    if mine and topic not in {c.topic for c in mine}:
        # (its rows as which capture renders them? one may leave columns out)
        raise InvalidConfigurationException(
            f"{found.display} is captured into {', '.join(repr(c) for c in sorted(c.topic for c in mine))},"
            f" not {topic!r}: backfill into its topic, or capture it into {topic!r} first")
    capture = next((c for c in mine if c.topic == topic), None)
    cursor.execute(
        "SELECT format_type(a.atttypid, NULL) FROM unnest(%s::text[]) WITH ORDINALITY k (name, n)"
        " JOIN pg_attribute a ON a.attrelid = %s AND a.attname = k.name ORDER BY k.n",
        (found.key, found.oid),
    )
    types = [row[0] for row in cursor.fetchall()]
    cursor.execute(
        "SELECT sum(greatest(c.reltuples, 0))::bigint, bool_or(c.reltuples >= 0) FROM pg_class c"
        " WHERE (c.oid = %(oid)s AND c.relkind = 'r')"
        " OR c.oid IN (SELECT p.relid FROM pg_partition_tree(%(oid)s) p WHERE p.isleaf)",
        {"oid": found.oid},
    )
    total, known = cursor.fetchone()
    return Plan(found, topic, capture, types, total if known else None)


def _lock_key(schema, table):
    return f"{schema}/{table.display}"


def lock(cursor, schema, table):
    """
    Take the table's backfill lock for the session.

    @raise BackfillRunning: another session holds it (one line, naming
        its backend's pid when visible).
    """
    cursor.execute("SELECT pg_try_advisory_lock(%s, hashtext(%s))", (BACKFILL_LOCK, _lock_key(schema, table)))
    if cursor.fetchone()[0]:
        return
    cursor.execute(
        "SELECT min(pid) FROM pg_locks WHERE locktype = 'advisory' AND granted AND objsubid = 2"
        " AND classid = %s::integer::oid AND objid = hashtext(%s)::oid"
        " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
        (BACKFILL_LOCK, _lock_key(schema, table)),
    )
    pid = cursor.fetchone()[0]
    holder = f" (backend pid {pid})" if pid else ""
    raise BackfillRunning(f"a backfill of {table.display} is already running{holder}: wait for it or stop it")


class Pacer:
    """
    At most C{rate} rows per second, on average since it started: after
    each chunk, the pause until the rows done so far are due.
    """

    def __init__(self, rate, clock):
        self.rate = rate
        self.clock = clock
        self.started = clock()
        self.rows = 0

    def pause(self, rows):
        """
        @param rows: the rows of the chunk just done.
        @return: the seconds to wait before the next chunk (0 without a
            rate).
        """
        self.rows += rows
        if not self.rate:
            return 0.0
        return max(0.0, self.started + self.rows / self.rate - self.clock())


def backfill(conn, table, topic=None, schema=DEFAULT_SCHEMA, chunk=DEFAULT_CHUNK, max_rate=None,
             restart=False, progress=None, clock=time.monotonic, sleep=time.sleep):
    """
    Backfill C{table} into the outbox in C{schema}, going on from where an
    unfinished backfill of it into the same topic stopped (unless
    C{restart}).

    @param conn: a blocking psycopg2 connection in autocommit mode; it
        holds the table's backfill lock until it is closed.
    @param table: the table's name as the user wrote it.
    @param topic: the topic, or C{None} for the table's capture topic.
    @param chunk: rows per transaction (fewer with C{max_rate}: at most a
        second's worth).
    @param max_rate: at most this many rows per second, or C{None}.
    @param restart: start from the first key even if an unfinished
        backfill left progress.
    @param progress: a L{hermes_tx.outbox.progress.Progress} (or C{None}):
        told C{start(plan, done, resumed)}, C{update(done)} after each
        chunk and C{finish(done)}.
    @return: C{(plan, rows done in all, rows done by this run)}.
    @raise BackfillRunning: another backfill of the table is running.
    @raise InvalidConfigurationException: see L{plan}.
    """
    validate_schema(schema)
    if max_rate:
        chunk = max(1, min(chunk, int(max_rate)))
    with conn.cursor() as cur:
        found = plan(cur, table, topic, schema)
        lock(cur, schema, found.table)
        cur.execute(
            sql.SQL("SELECT last_key, rows_done, resumed FROM {}(%s, %s, %s, %s, %s)").format(
                sql.Identifier(schema, "backfill_start")),
            (found.table.display, found.topic, found.table.key, found.estimate, restart),
        )
        last_key, done, resumed = cur.fetchone()
    if progress is not None:
        progress.start(found, done, resumed)
    pacer = Pacer(max_rate, clock)
    this_run = 0
    finished = False
    while not finished:
        params = {"table": found.table.display, "topic": found.topic, "from": last_key, "chunk": chunk}
        with transaction(conn) as cur:
            cur.execute("SET TRANSACTION ISOLATION LEVEL READ COMMITTED")
            cur.execute(found.boundary(last_key is not None), params)
            row = cur.fetchone()
            params["to"] = row[0] if row else None
            finished = row is None
            params["finished"] = finished
            cur.execute(found.chunk(schema, last_key is not None, not finished), params)
            written = cur.fetchone()[0]
        last_key = params["to"] or last_key
        done += written
        this_run += written
        if progress is not None:
            progress.update(done)
        wait = pacer.pause(written)
        if wait > 0 and not finished:
            sleep(wait)
    if progress is not None:
        progress.finish(done)
    return found, done, this_run


def rows_done(conn, schema, table, topic):
    """
    @param table: the table's display name (L{Plan}C{.table.display}).
    @return: the rows done recorded for C{table} into C{topic}, or C{None}
        when they cannot be read (a lost connection).
    """
    try:
        with conn.cursor() as cur:
            cur.execute(sql.SQL("SELECT rows_done FROM {} WHERE table_name = %s AND topic = %s").format(
                sql.Identifier(schema, "backfills")), (table, topic))
            row = cur.fetchone()
    except psycopg2.Error:
        return None
    return row[0] if row else None


#: the fields of L{status}
STATUS_FIELDS = ("table", "topic", "state", "rows_done", "rows_estimate", "started_at", "updated_at",
                 "finished_at")

#: a backfill's state: its lock held, stopped before its end, done
RUNNING, STOPPED, FINISHED = "running", "stopped", "finished"


def status(cursor, schema=DEFAULT_SCHEMA):
    """
    @return: every backfill recorded in C{schema}, as dicts with keys
        L{STATUS_FIELDS} (times aware datetimes), by table and topic;
        C{state} L{RUNNING} (a session holds its table's lock),
        L{STOPPED} (interrupted: run it again to go on) or L{FINISHED}.
    """
    cursor.execute(
        sql.SQL(
            "SELECT b.table_name, b.topic,"
            " CASE WHEN b.finished_at IS NOT NULL THEN %s"
            "      WHEN EXISTS (SELECT 1 FROM pg_locks l WHERE l.locktype = 'advisory' AND l.granted"
            "                   AND l.objsubid = 2 AND l.classid = %s::integer::oid"
            "                   AND l.objid = hashtext(%s || '/' || b.table_name)::oid"
            "                   AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()))"
            "      THEN %s ELSE %s END,"
            " b.rows_done, b.rows_estimate, b.started_at, b.updated_at, b.finished_at"
            " FROM {} b ORDER BY b.table_name, b.topic"
        ).format(sql.Identifier(schema, "backfills")),
        (FINISHED, BACKFILL_LOCK, schema, RUNNING, STOPPED),
    )
    return [dict(zip(STATUS_FIELDS, row)) for row in cursor.fetchall()]
