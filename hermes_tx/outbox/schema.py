# -*- test-case-name: tests.test_outbox_schema -*-
"""
Installing and upgrading the outbox's schema (blocking psycopg2: for the
command line and tests, never the reactor).

The schema is made by numbered migrations, C{migrations/NNNN_name.sql}
(package data).  C{{schema}}, C{{schema_literal}} and C{{channel_literal}} in
them are replaced by the quoted schema name, the schema name as a string
literal and the wake-up channel as a string literal.  Each applied
migration is recorded in C{<schema>.migrations}.
"""

import re
from importlib import resources

from psycopg2 import sql

from hermes_tx.exceptions import InvalidConfigurationException, StandbyServerError
from hermes_tx.outbox.db import transaction
from hermes_tx.outbox.names import DEFAULT_SCHEMA, channel, validate_schema
from hermes_tx.outbox.privileges import grant

#: first key of the advisory lock serializing installs (the second is the
#: schema name's hash): "hermes" in ASCII, to tell it from others' locks.
INSTALL_LOCK = 0x6865726D

_MIGRATION_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


class Migration:
    """
    One numbered migration.

    @ivar version: its number (1, 2, ...).
    @ivar name: the rest of its file name (C{"outbox"}).
    @ivar text: its SQL, with placeholders.
    """

    def __init__(self, version, name, text):
        self.version = version
        self.name = name
        self.text = text

    def render(self, schema):
        """
        @return: the SQL text for C{schema}, placeholders replaced.
        """
        validate_schema(schema)
        literal = "'" + schema.replace("'", "''") + "'"
        chan = "'" + channel(schema).replace("'", "''") + "'"
        identifier = '"' + schema.replace('"', '""') + '"'
        # One pass: a schema name holding a placeholder's text must not be
        # replaced again inside what was already put in.
        values = {"schema_literal": literal, "channel_literal": chan, "schema": identifier}
        return _PLACEHOLDER.sub(lambda m: values[m.group(1)], self.text)

    def __repr__(self):
        return f"<Migration {self.version:04d}_{self.name}>"


_PLACEHOLDER = re.compile(r"\{(schema_literal|channel_literal|schema)\}")


def migrations():
    """
    @return: every L{Migration} shipped with hermes_tx, in version order.
    """
    found = []
    for entry in resources.files("hermes_tx.outbox").joinpath("migrations").iterdir():
        match = _MIGRATION_NAME.match(entry.name)
        if match:
            found.append(Migration(int(match.group(1)), match.group(2), entry.read_text("utf-8")))
    found.sort(key=lambda m: m.version)
    if [m.version for m in found] != list(range(1, len(found) + 1)):
        raise RuntimeError(f"hermes_tx migrations are not numbered 1..n: {found!r}")
    return found


def latest_version():
    """
    @return: the version the newest migration brings a schema to.
    """
    return migrations()[-1].version


def installed_versions(cursor, schema=DEFAULT_SCHEMA):
    """
    @return: the versions recorded in C{schema}, ascending (empty when it has
        no migrations table).
    """
    cursor.execute(
        "SELECT EXISTS (SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = %s AND c.relname = 'migrations')",
        (schema,),
    )
    if not cursor.fetchone()[0]:
        return []
    cursor.execute(
        sql.SQL("SELECT version FROM {} ORDER BY version").format(
            sql.Identifier(schema, "migrations")
        )
    )
    return [row[0] for row in cursor.fetchall()]


#: the objects each version makes that the rest of hermes_tx uses, by kind:
#: what L{missing_objects} looks for (helpers a later version may replace
#: are left out)
OBJECTS = {
    1: {"table": ("outbox", "dead_letters"), "function": ("emit", "claim")},
    2: {"function": ("capture",)},
    3: {"table": ("dead_keys",),
        "function": ("ack", "release", "dead_letter", "extend", "unclaim", "stats", "retry_dead_letters",
                     "purge_dead_letters")},
    6: {"function": ("figures",)},
    8: {"table": ("backfills",), "function": ("backfill_start", "backfill_chunk")},
    9: {"function": ("claim_runs",)},
}


def missing_objects(cursor, schema, version):
    """
    @param version: the version the schema is recorded at.
    @return: what a schema at C{version} must hold and does not (C{"table
        hermes.outbox"}, C{"function hermes.ack"}), in L{OBJECTS}' order:
        someone dropped it.
    """
    wanted = [(kind, name) for v in sorted(OBJECTS) if v <= version
              for kind, names in OBJECTS[v].items() for name in names]
    cursor.execute(
        "SELECT w.kind, w.name FROM unnest(%s::text[], %s::text[]) WITH ORDINALITY w (kind, name, n)"
        " WHERE NOT CASE w.kind"
        "  WHEN 'table' THEN EXISTS (SELECT 1 FROM pg_class c JOIN pg_namespace s ON s.oid = c.relnamespace"
        "                            WHERE s.nspname = %s AND c.relname = w.name AND c.relkind IN ('r', 'p'))"
        "  ELSE EXISTS (SELECT 1 FROM pg_proc p JOIN pg_namespace s ON s.oid = p.pronamespace"
        "               WHERE s.nspname = %s AND p.proname = w.name) END"
        " ORDER BY w.n",
        ([k for k, _ in wanted], [n for _, n in wanted], schema, schema),
    )
    return [f"{kind} {schema}.{name}" for kind, name in cursor.fetchall()]


def require_intact(cursor, schema, version):
    """
    @raise InvalidConfigurationException: L{missing_objects} found some (one
        line: which, and what to do).
    """
    missing = missing_objects(cursor, schema, version)
    if missing:
        raise InvalidConfigurationException(
            f"the outbox in schema {schema!r} is damaged ({', '.join(missing)} missing, "
            f"recorded at version {version}): hermes-tx install cannot rebuild it; restore it "
            f"from a backup, or drop the schema (its changes are lost) and install again"
        )


def owned_by_superuser(cursor, schema=DEFAULT_SCHEMA):
    """
    @return: the name of the superuser that owns the schema's C{capture()}
        function (it runs with that owner's rights), or C{None}.
    """
    cursor.execute(
        "SELECT r.rolname FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace"
        " JOIN pg_roles r ON r.oid = p.proowner"
        " WHERE n.nspname = %s AND p.proname = 'capture' AND r.rolsuper",
        (schema,),
    )
    row = cursor.fetchone()
    return row[0] if row else None


def install(conn, schema=DEFAULT_SCHEMA, target=None, owner=None, grants=()):
    """
    Create the outbox schema, or bring it up to date.  Idempotent; concurrent
    installs wait for each other (an advisory lock); all migrations run in
    one transaction, so a failure leaves the schema as it was.

    @param conn: a blocking psycopg2 connection, not in a transaction; it is
        left in autocommit mode.
    @param schema: the schema to install into (made if missing).
    @param target: install only up to this version (tests make old schemas
        with it); C{None} for the latest.
    @param owner: install as this role (C{SET ROLE}: the connecting role
        must be a member of it): the schema (when made) and every object
        made belong to it, and the functions run with its rights.  C{None}:
        the connecting role.
    @param grants: C{(part, role)} pairs: grant each role what its part
        needs (L{hermes_tx.outbox.privileges.grant}), in the same
        transaction.
    @return: the list of L{Migration}s applied (empty when up to date).
    @raise StandbyServerError: the server is a standby.
    @raise InvalidConfigurationException: the schema name is not acceptable,
        the database holds a newer schema version than this hermes_tx
        knows, or the schema is damaged (L{require_intact}).
    """
    validate_schema(schema)
    wanted = [m for m in migrations() if target is None or m.version <= target]
    with transaction(conn) as cur:
        cur.execute("SELECT pg_is_in_recovery()")
        if cur.fetchone()[0]:
            raise StandbyServerError(
                "the server is a standby (in recovery): install the outbox on the primary"
            )
        if owner is not None:
            cur.execute(sql.SQL("SET LOCAL ROLE {}").format(sql.Identifier(owner)))
        cur.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (INSTALL_LOCK, schema))
        cur.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
        cur.execute(
            sql.SQL(
                "CREATE TABLE IF NOT EXISTS {} ("
                " version integer PRIMARY KEY, name text NOT NULL,"
                " installed_at timestamptz NOT NULL DEFAULT now())"
            ).format(sql.Identifier(schema, "migrations"))
        )
        done = set(installed_versions(cur, schema))
        known = {m.version for m in migrations()}
        if done - known:
            raise InvalidConfigurationException(
                f"schema {schema!r} is at version {max(done)}, newer than this hermes_tx "
                f"knows ({max(known)}): upgrade hermes_tx"
            )
        if done:
            require_intact(cur, schema, max(done))
        applied = []
        for migration in wanted:
            if migration.version in done:
                continue
            cur.execute(migration.render(schema))
            cur.execute(
                sql.SQL("INSERT INTO {} (version, name) VALUES (%s, %s)").format(
                    sql.Identifier(schema, "migrations")
                ),
                (migration.version, migration.name),
            )
            applied.append(migration)
        for part, role in grants:
            grant(cur, part, role, schema)
    return applied
