# -*- test-case-name: tests.test_outbox_capture -*-
"""
Capturing a table's changes into the outbox: attach (and remove) the
C{capture()} row trigger.  Blocking psycopg2, for the command line and
tests.

Tables are named as in SQL: C{table} (in C{public}), C{schema.table}, or
with double quotes for names that need them (C{'"My Schema"."Odd.Table"'});
unquoted names fold to lower case.  PostgreSQL itself parses the name
(C{parse_ident}), and every identifier reaches SQL quoted.

A capture sends every column of a row unless it was given a selection:
only some columns (the primary key's always among them), or all but some
(never a key column).  The selection rides on the trigger's arguments
(C{migrations/0007_columns.sql}); L{row_json} renders a row the way the
trigger does, for the backfill.
"""

import psycopg2
from psycopg2 import sql

from hermes_tx.exceptions import InvalidConfigurationException
from hermes_tx.outbox.columns import show_list
from hermes_tx.outbox.db import transaction
from hermes_tx.outbox.names import DEFAULT_SCHEMA, capture_trigger, validate_schema, validate_topic
from hermes_tx.outbox.schema import INSTALL_LOCK, installed_versions

#: the outbox version whose C{capture()} reads a column selection
COLUMNS_VERSION = 7

#: the trigger argument ending the key's columns (no column is named so)
#: and the two kinds of selection that follow it
_END_OF_KEY, _ONLY, _EXCEPT = "", "only", "except"

#: pairs per C{jsonb_build_object} call in L{row_json} (a function takes at
#: most 100 arguments)
_PAIRS_PER_CALL = 40


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
    @ivar key: the primary key's columns it keys changes by, in key order.
    @ivar columns: the only columns it sends (a tuple, the key's first), or
        C{None}.
    @ivar excluded: the columns it leaves out (a tuple), or C{None}.
        C{columns} and C{excluded} both C{None}: it sends every column.
    """

    def __init__(self, table, oid, topic, trigger, key=(), columns=None, excluded=None):
        self.table = table
        self.oid = oid
        self.topic = topic
        self.trigger = trigger
        self.key = tuple(key)
        self.columns = None if columns is None else tuple(columns)
        self.excluded = None if excluded is None else tuple(excluded)

    @classmethod
    def from_arguments(cls, table, oid, trigger, arguments):
        """
        @param arguments: the trigger's arguments (see L{_arguments}).
        @return: the L{Capture} they describe.
        """
        topic, rest = (arguments[0] if arguments else ""), arguments[2:]
        if _END_OF_KEY not in rest:
            return cls(table, oid, topic, trigger, rest)
        end = rest.index(_END_OF_KEY)
        key, mode, chosen = rest[:end], rest[end + 1], rest[end + 2:]
        if mode == _ONLY:
            return cls(table, oid, topic, trigger, key, columns=chosen)
        return cls(table, oid, topic, trigger, key, excluded=chosen)

    def sends(self):
        """
        @return: what it sends, in words: C{"all columns"}, C{"only id, a"}
            or C{"all but x, "Odd Name""} (names as L{show} writes them).
        """
        if self.columns is not None:
            return f"only {show_list(self.columns)}"
        if self.excluded is not None:
            return f"all but {show_list(self.excluded)}"
        return "all columns"


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
        Capture.from_arguments(table, oid, name, bytes(args).decode("utf-8").split("\x00")[:-1])
        for table, oid, args, name in cursor.fetchall()
    ]


def row_json(capture, alias):
    """
    The SQL expression rendering a row of C{capture}'s table as C{jsonb}
    exactly as its trigger renders C{new}: every column (C{to_jsonb}), all
    but the excluded ones, or only the chosen ones.

    Functions and operators are named with their schema (C{pg_catalog}),
    so the caller's C{search_path} cannot swap them.  A chosen column the
    table no longer has makes the expression fail where the trigger leaves
    it out: run C{capture} again after dropping one.

    @param capture: a L{Capture}.
    @param alias: the name (or alias) the table has in the query.
    @return: a C{psycopg2.sql.Composable}.
    """
    row = sql.Identifier(alias)
    if capture.excluded is not None:
        return sql.SQL("(pg_catalog.to_jsonb({}) OPERATOR(pg_catalog.-) {}::pg_catalog.text[])").format(
            row, sql.Literal(list(capture.excluded)))
    if capture.columns is None:
        return sql.SQL("pg_catalog.to_jsonb({})").format(row)
    # (a function takes at most 100 arguments: wide selections are joined;
    # each value goes through to_jsonb's conversion, as in to_jsonb(row))
    calls = []
    for start in range(0, len(capture.columns), _PAIRS_PER_CALL):
        pairs = [sql.SQL("{}, {}.{}").format(sql.Literal(c), row, sql.Identifier(c))
                 for c in capture.columns[start:start + _PAIRS_PER_CALL]]
        calls.append(sql.SQL("pg_catalog.jsonb_build_object({})").format(sql.SQL(", ").join(pairs)))
    return sql.SQL("({})").format(sql.SQL(" OPERATOR(pg_catalog.||) ").join(calls))


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


def _arguments(table, topic, columns=None, excluded=None):
    """
    @return: the capture trigger's arguments for C{table} (see
        C{migrations/0002_capture.sql} and C{0007_columns.sql}): the topic,
        the table's name when it is partitioned (the trigger fires on its
        partitions) or C{""}, and the primary key's columns; then, with a
        selection, C{""}, C{"only"} or C{"except"} and its columns.
    """
    arguments = [topic, table.display if table.partitioned else ""] + table.key
    if columns is not None:
        return arguments + [_END_OF_KEY, _ONLY] + columns
    if excluded is not None:
        return arguments + [_END_OF_KEY, _EXCEPT] + excluded
    return arguments


def _selection(cursor, found, columns, excluded):
    """
    Check a selection against C{found}'s columns.

    @param columns: the columns asked for, or C{None}.
    @param excluded: the columns to leave out, or C{None}.
    @return: C{(columns, excluded)} as the trigger takes them: the key's
        columns first among C{columns}.
    @raise InvalidConfigurationException: both given, an empty list,
        unknown columns (all named, one line), a key column excluded.
    """
    if columns is not None and excluded is not None:
        raise InvalidConfigurationException("choose either the columns to send or those to exclude, not both")
    given = columns if columns is not None else excluded
    if given is None:
        return None, None
    if not given:
        raise InvalidConfigurationException("name at least one column")
    cursor.execute(
        "SELECT attname FROM pg_attribute WHERE attrelid = %s AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
        (found.oid,),
    )
    known = [row[0] for row in cursor.fetchall()]
    unknown = [c for c in given if c not in known]
    if unknown:
        noun = "column" if len(unknown) == 1 else "columns"
        cased = [k for k in known if any(k.lower() == c.lower() for c in unknown)]
        if cased:
            hint = f" (unquoted names are folded to lower case: did you mean {show_list(cased)}?)"
        else:
            more = f", and {len(known) - 20} more" if len(known) > 20 else ""
            hint = f" (its columns: {show_list(known[:20])}{more})"
        raise InvalidConfigurationException(f"table {found.display} has no {noun} {show_list(unknown)}{hint}")
    if excluded is not None:
        keyed = [c for c in excluded if c in found.key]
        if keyed:
            raise InvalidConfigurationException(
                f"{show_list(keyed)} {'is' if len(keyed) == 1 else 'are'} in the primary key of"
                f" {found.display}: the key's columns always leave"
            )
        return None, list(excluded)
    return list(found.key) + [c for c in columns if c not in found.key], None


def capture(conn, table, topic, schema=DEFAULT_SCHEMA, columns=None, excluded=None):
    """
    Capture C{table}'s changes into C{topic}: attach (or re-attach, picking
    up a changed primary key and replacing the selection) the C{AFTER
    INSERT OR UPDATE OR DELETE FOR EACH ROW} trigger
    L{capture_trigger}C{(topic)} calling C{<schema>.capture(topic, table
    name, key column, ...[, "", "only" or "except", column, ...])}.

    @param conn: a blocking psycopg2 connection, not in a transaction.
    @param table: the table's name as the user wrote it.
    @param columns: send only these columns (exact names; the key's always
        leave too), or C{None}.
    @param excluded: send all columns but these (never a key column), or
        C{None}.  Neither: every column.
    @return: the L{Table} (L{captures} then describes the capture).
    @raise InvalidConfigurationException: unknown table, no primary key or a
        deferrable one, a table of the outbox's own schema, a topic that
        already captures another table, a selection naming unknown or key
        columns, or the outbox not installed (or, for a selection, older
        than version 7).
    """
    validate_schema(schema)
    validate_topic(topic)
    with transaction(conn) as cur:
        cur.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (INSTALL_LOCK, schema))
        _require_installed(cur, schema)
        found = find_table(cur, table)
        _refuse(found, schema, topic, captures(cur, schema))
        columns, excluded = _selection(cur, found, columns, excluded)
        if (columns is not None or excluded is not None) and max(installed_versions(cur, schema)) < COLUMNS_VERSION:
            raise InvalidConfigurationException(
                f"the outbox in schema {schema!r} is older than version {COLUMNS_VERSION}, which chooses"
                " columns: run hermes-tx install"
            )
        arguments = _arguments(found, topic, columns, excluded)
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
                sql.SQL(", ").join(sql.Literal(a) for a in arguments),
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
