# -*- test-case-name: tests.test_outbox_capture -*-
"""
Capturing a table's changes into the outbox: attach (and remove) the
C{capture()} row trigger.  Blocking psycopg2, for the command line and
tests.

Tables are named as in SQL: C{table} (in C{public}), C{schema.table}, or
with double quotes for names that need them (C{'"My Schema"."Odd.Table"'});
unquoted names fold to lower case.  PostgreSQL itself parses the name
(C{parse_ident}), and every identifier reaches SQL quoted.
"""

import psycopg2
from psycopg2 import sql

from hermes_tx.exceptions import InvalidConfigurationException
from hermes_tx.outbox.db import transaction
from hermes_tx.outbox.names import DEFAULT_SCHEMA, capture_trigger, validate_schema, validate_topic
from hermes_tx.outbox.schema import INSTALL_LOCK


class Table:
    """
    A table found in the catalog.

    @ivar oid: its oid.
    @ivar schema: its schema's name (exact).
    @ivar name: its name (exact).
    @ivar display: its name as written in SQL, quoted only where needed
        (PostgreSQL's C{quote_ident}): C{public.items},
        C{"My Schema"."Odd.Table"}.
    @ivar key: its primary key's column names, in key order (may be empty).
    @ivar deferrable: whether its primary key constraint is deferrable.
    @ivar partitioned: whether it is a partitioned table.
    """

    def __init__(self, oid, schema, name, display, key, deferrable, partitioned):
        self.oid = oid
        self.schema = schema
        self.name = name
        self.display = display
        self.key = key
        self.deferrable = deferrable
        self.partitioned = partitioned

    def identifier(self):
        """
        @return: the table as a quoted, qualified C{psycopg2.sql.Identifier}.
        """
        return sql.Identifier(self.schema, self.name)


#: a relation's name as written in SQL, from pg_namespace n and pg_class c
_DISPLAY = "quote_ident(n.nspname) || '.' || quote_ident(c.relname)"


def find_table(cursor, name):
    """
    @param name: the table as the user wrote it (see the module docstring).
    @return: the L{Table}.
    @raise InvalidConfigurationException: the name does not parse, or no
        such table exists (one line, with a hint about case folding).
    """
    try:
        cursor.execute("SELECT parse_ident(%s)", (name,))
        parts = cursor.fetchone()[0]
    except psycopg2.DataError:
        raise InvalidConfigurationException(
            f"not a table name: {name!r} (write TABLE, SCHEMA.TABLE or '\"Odd Schema\".\"Odd.Table\"')"
        ) from None
    if len(parts) == 1:
        parts = ["public"] + parts
    if len(parts) != 2:
        raise InvalidConfigurationException(f"not a table name: {name!r} (write SCHEMA.TABLE)")
    schema, table = parts
    cursor.execute(
        f"SELECT c.oid, {_DISPLAY}, c.relkind = 'p' FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = %s AND c.relname = %s AND c.relkind IN ('r', 'p')",
        (schema, table),
    )
    row = cursor.fetchone()
    if row is None:
        cursor.execute("SELECT quote_ident(%s) || '.' || quote_ident(%s)", (schema, table))
        shown = cursor.fetchone()[0]
        hint = " (unquoted names are folded to lower case: quote mixed-case names)" if name != name.lower() else ""
        raise InvalidConfigurationException(f"no table {shown}{hint}")
    cursor.execute(
        "SELECT a.attname, i.indimmediate FROM pg_index i"
        " CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k (attnum, ord)"
        " JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum"
        " WHERE i.indrelid = %s AND i.indisprimary ORDER BY k.ord",
        (row[0],),
    )
    key = cursor.fetchall()
    return Table(row[0], schema, table, row[1], [r[0] for r in key], any(not r[1] for r in key), row[2])


class Capture:
    """
    One capture trigger found in the catalog.

    @ivar table: the captured table's display name.
    @ivar oid: its oid.
    @ivar topic: the topic its changes go to.
    @ivar trigger: the trigger's name.
    """

    def __init__(self, table, oid, topic, trigger):
        self.table = table
        self.oid = oid
        self.topic = topic
        self.trigger = trigger


def captures(cursor, schema=DEFAULT_SCHEMA):
    """
    @return: every capture trigger feeding the outbox in C{schema}, as
        L{Capture}s ordered by table and trigger name.
    """
    # Triggers cloned onto partitions (tgparentid, PostgreSQL 13+;
    # internal before) are the partitioned table's, not captures of their own.
    cursor.execute(
        f"SELECT {_DISPLAY}, c.oid, t.tgargs, t.tgname"
        " FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid"
        " JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE t.tgfoid = (SELECT p.oid FROM pg_proc p JOIN pg_namespace pn ON pn.oid = p.pronamespace"
        "                   WHERE pn.nspname = %s AND p.proname = 'capture' AND p.pronargs = 0)"
        " AND NOT t.tgisinternal AND coalesce(to_jsonb(t) ->> 'tgparentid', '0') = '0'"
        " ORDER BY n.nspname, c.relname, t.tgname",
        (schema,),
    )
    return [
        Capture(table, oid, bytes(args).split(b"\x00")[0].decode("utf-8"), name)
        for table, oid, args, name in cursor.fetchall()
    ]


def _require_installed(cursor, schema):
    cursor.execute(
        "SELECT EXISTS (SELECT 1 FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace"
        " WHERE n.nspname = %s AND p.proname = 'capture' AND p.pronargs = 0)",
        (schema,),
    )
    if not cursor.fetchone()[0]:
        raise InvalidConfigurationException(
            f"the outbox in schema {schema!r} is not installed or too old: run hermes-tx install"
        )


def _refuse(found, schema, topic, existing):
    """
    @raise InvalidConfigurationException: C{found} cannot be captured into
        C{topic}.
    """
    if found.schema == schema:
        raise InvalidConfigurationException(
            f"{found.display} is in the outbox's own schema: capturing it would loop"
        )
    if not found.key:
        raise InvalidConfigurationException(
            f"table {found.display} has no primary key: capture keys each change by it"
        )
    if found.deferrable:
        raise InvalidConfigurationException(
            f"table {found.display} has a deferrable primary key: capture relies on it"
            " making writers of one row wait for each other"
        )
    others = sorted({c.table for c in existing if c.topic == topic and c.oid != found.oid})
    if others:
        raise InvalidConfigurationException(
            f"topic {topic!r} already captures {others[0]}: one table per topic"
            " (keys of two tables would mix)"
        )


def _arguments(table, topic):
    """
    @return: the capture trigger's arguments for C{table} (see
        C{migrations/0002_capture.sql}): the topic, the table's name when
        it is partitioned (the trigger fires on its partitions) or C{""},
        and the primary key's columns.
    """
    return [topic, table.display if table.partitioned else ""] + table.key


def capture(conn, table, topic, schema=DEFAULT_SCHEMA):
    """
    Capture C{table}'s changes into C{topic}: attach (or re-attach, picking
    up a changed primary key) the C{AFTER INSERT OR UPDATE OR DELETE FOR
    EACH ROW} trigger L{capture_trigger}C{(topic)} calling
    C{<schema>.capture(topic, table name, key column, ...)}.

    @param conn: a blocking psycopg2 connection, not in a transaction.
    @param table: the table's name as the user wrote it.
    @return: the L{Table}.
    @raise InvalidConfigurationException: unknown table, no primary key or a
        deferrable one, a table of the outbox's own schema, a topic that
        already captures another table, or the outbox not installed.
    """
    validate_schema(schema)
    validate_topic(topic)
    with transaction(conn) as cur:
        cur.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (INSTALL_LOCK, schema))
        _require_installed(cur, schema)
        found = find_table(cur, table)
        _refuse(found, schema, topic, captures(cur, schema))
        trigger = sql.Identifier(capture_trigger(topic))
        cur.execute("SELECT EXISTS (SELECT 1 FROM pg_trigger WHERE tgrelid = %s AND tgname = %s)",
                    (found.oid, capture_trigger(topic)))
        if cur.fetchone()[0]:
            # (dropping a trigger takes the table's ownership; creating
            # one, the TRIGGER privilege)
            cur.execute(sql.SQL("DROP TRIGGER {} ON {}").format(trigger, found.identifier()))
        cur.execute(
            sql.SQL(
                "CREATE TRIGGER {} AFTER INSERT OR UPDATE OR DELETE ON {}"
                " FOR EACH ROW EXECUTE FUNCTION {}({})"
            ).format(
                trigger,
                found.identifier(),
                sql.Identifier(schema, "capture"),
                sql.SQL(", ").join(sql.Literal(a) for a in _arguments(found, topic)),
            )
        )
        return found


def uncapture(conn, table, topic=None, schema=DEFAULT_SCHEMA):
    """
    Stop capturing C{table}'s changes into C{topic} (or into any topic).

    @return: the names of the triggers dropped (empty when there were none).
    @raise InvalidConfigurationException: unknown table.
    """
    validate_schema(schema)
    if topic is not None:
        validate_topic(topic)
    with transaction(conn) as cur:
        cur.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (INSTALL_LOCK, schema))
        found = find_table(cur, table)
        names = [
            c.trigger for c in captures(cur, schema)
            if c.oid == found.oid and (topic is None or c.topic == topic)
        ]
        for name in names:
            cur.execute(sql.SQL("DROP TRIGGER {} ON {}").format(sql.Identifier(name), found.identifier()))
        return names
