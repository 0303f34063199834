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


def install(conn, schema=DEFAULT_SCHEMA, target=None):
    """
    Create the outbox schema, or bring it up to date.  Idempotent; concurrent
    installs wait for each other (an advisory lock); all migrations run in
    one transaction, so a failure leaves the schema as it was.

    @param conn: a blocking psycopg2 connection, not in a transaction; it is
        left in autocommit mode.
    @param schema: the schema to install into (made if missing).
    @param target: install only up to this version (tests make old schemas
        with it); C{None} for the latest.
    @return: the list of L{Migration}s applied (empty when up to date).
    @raise StandbyServerError: the server is a standby.
    @raise InvalidConfigurationException: the schema name is not acceptable,
        or the database holds a newer schema version than this hermes_tx
        knows.
    """
    validate_schema(schema)
    wanted = [m for m in migrations() if target is None or m.version <= target]
    with transaction(conn) as cur:
        cur.execute("SELECT pg_is_in_recovery()")
        if cur.fetchone()[0]:
            raise StandbyServerError(
                "the server is a standby (in recovery): install the outbox on the primary"
            )
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
    return applied
