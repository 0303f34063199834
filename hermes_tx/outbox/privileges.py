# -*- test-case-name: tests.test_outbox_privileges -*-
"""
Who needs which rights on the outbox, the GRANT statements that give them,
and the one line that explains a missing one.

Every function of the outbox's schema runs with its owner's rights and
none is executable by PUBLIC (C{migrations/0003_privileges.sql}), so a
role needs no right on the tables, only these (L{PARTS}):

  - C{writer}: C{emit()} (a captured table's writers need nothing: the
    capture trigger writes the outbox with its owner's rights);
  - C{consumer} (C{twistd hermes --outbox}): C{claim}, C{claim_runs}, C{ack}, C{release},
    C{dead_letter}, C{extend}, C{unclaim}, C{stats}, C{figures};
  - C{operator} (C{hermes-tx status}, C{dead-letters}, C{emit},
    C{capture}, C{backfill}): C{stats}, C{retry_dead_letters},
    C{purge_dead_letters}, C{emit}, C{capture} (to attach it to a table),
    C{backfill_start}, C{backfill_chunk}, reading C{migrations},
    C{dead_letters} and C{backfills}.

Each part also needs C{USAGE} on the schema.  Capturing a table also needs
the C{TRIGGER} privilege on it, and capturing it again or uncapturing it
its ownership (C{DROP TRIGGER}): run C{capture} as the table's owner.
Backfilling a table also needs C{SELECT} on it (the rows are read with the
operator's own rights, and locked C{FOR SHARE}, which C{SELECT} allows).
"""

import re

import psycopg2
from psycopg2 import sql

from hermes_tx.outbox.names import DEFAULT_SCHEMA, validate_schema


class Part:
    """
    What one part of a deployment needs.

    @ivar name: C{"writer"}, C{"consumer"} or C{"operator"}.
    @ivar functions: the functions of the schema it executes.
    @ivar tables: C{(table, privileges)} pairs on the schema's tables.
    @ivar doing: what it does, for messages (C{"consume the outbox"}).
    """

    def __init__(self, name, functions, tables=(), doing=""):
        self.name = name
        self.functions = tuple(functions)
        self.tables = tuple(tables)
        self.doing = doing

    @property
    def option(self):
        """
        @return: the C{hermes-tx install} option that grants it.
        """
        return f"--grant-{self.name}"


WRITER = Part("writer", ["emit"], doing="emit changes")
CONSUMER = Part(
    "consumer", ["claim", "claim_runs", "ack", "release", "dead_letter", "extend", "unclaim", "stats", "figures"],
    doing="consume the outbox",
)
OPERATOR = Part(
    "operator", ["stats", "retry_dead_letters", "purge_dead_letters", "emit", "capture",
                 "backfill_start", "backfill_chunk"],
    [("migrations", ("SELECT",)), ("dead_letters", ("SELECT",)), ("backfills", ("SELECT",))],
    doing="run hermes-tx",
)

#: the parts, by name
PARTS = {p.name: p for p in (WRITER, CONSUMER, OPERATOR)}


def grants(part, role, schema=DEFAULT_SCHEMA):
    """
    @param part: a L{Part} (or its name).
    @param role: the role to grant to (any name: it is quoted).
    @return: the GRANT statements (C{psycopg2.sql.Composed}) giving C{role}
        exactly what C{part} needs, in the order to run them.
    """
    part = PARTS[part] if isinstance(part, str) else part
    schema_id = sql.Identifier(validate_schema(schema))
    who = sql.Identifier(role)
    statements = [sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(schema_id, who)]
    statements.append(sql.SQL("GRANT EXECUTE ON FUNCTION {} TO {}").format(
        sql.SQL(", ").join(sql.Identifier(schema, f) for f in part.functions), who))
    for table, privileges in part.tables:
        statements.append(sql.SQL("GRANT {} ON TABLE {} TO {}").format(
            sql.SQL(", ").join(sql.SQL(p) for p in privileges), sql.Identifier(schema, table), who))
    return statements


def grant(cursor, part, role, schema=DEFAULT_SCHEMA):
    """
    Run L{grants} on C{cursor} (as the schema's owner, in the caller's
    transaction).
    """
    for statement in grants(part, role, schema):
        cursor.execute(statement)


#: PostgreSQL's "permission denied for <kind> <name>" and "must be owner of
#: <kind> <name>"
_DENIED = re.compile(r"permission denied for (\w+) (.+?)\s*$")
_OWNER = re.compile(r"must be owner of (\w+) (.+?)\s*$")


def explain_denied(error, part, role=None, schema=DEFAULT_SCHEMA):
    """
    One line for a C{psycopg2.errors.InsufficientPrivilege} (SQLSTATE
    42501) raised while C{part} did its work, naming the right that is
    missing and how to give it.

    @param error: the psycopg2 error (or its message).
    @param part: the L{Part} (or its name) that was at work: the
        consumer for C{twistd hermes --outbox}; C{None} while installing.
    @param role: the role that lacked it (C{current_user}), or C{None}.
    @param schema: the outbox's schema.
    @return: e.g. C{permission denied for function ack: role 'app' needs
        EXECUTE ON FUNCTION hermes.ack (to consume the outbox: hermes-tx
        install --grant-consumer app)}.
    """
    part = PARTS[part] if isinstance(part, str) else part
    diag = getattr(error, "diag", None)
    text = (getattr(diag, "message_primary", None) or str(error)).strip().splitlines()
    text = text[0] if text else "permission denied"
    who = f"role {role!r}" if role else "the role"
    owner = _OWNER.match(text)
    if part is None:
        return (f"{text}: run hermes-tx install as the schema's owner or a superuser"
                " (--owner ROLE installs as a role the connecting one is a member of)")
    if owner:
        return (f"{text}: {who} must own {owner.group(1)} {owner.group(2)}"
                " (run hermes-tx capture and uncapture as the table's owner)")
    fix = f"to {part.doing}: hermes-tx install {part.option} {role or 'ROLE'}"
    denied = _DENIED.match(text)
    if not denied:
        return f"{text} ({fix})"
    kind, name = denied.group(1), denied.group(2)
    if kind == "schema" and name == schema:
        return f"{text}: {who} needs USAGE ON SCHEMA {_show(schema)} ({fix})"
    if kind == "function" and name in part.functions:
        return f"{text}: {who} needs EXECUTE ON FUNCTION {_show(schema)}.{name} ({fix})"
    if kind == "table":
        for table, privileges in part.tables:
            if name == table:
                return (f"{text}: {who} needs {', '.join(privileges)} ON TABLE "
                        f"{_show(schema)}.{table} ({fix})")
        if part is OPERATOR:
            return (f"{text}: capturing a table needs the TRIGGER privilege on it"
                    " (run hermes-tx capture as the table's owner)")
    return f"{text} ({fix})"


def _show(name):
    return name if re.match(r"^[a-z_][a-z0-9_]*$", name) else '"' + name.replace('"', '""') + '"'


def current_role(conn):
    """
    @param conn: a blocking psycopg2 connection (in autocommit mode, or
        not in a failed transaction).
    @return: its C{current_user}, or C{None} when it cannot be asked.
    """
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT current_user")
            return cur.fetchone()[0]
    except psycopg2.Error:
        return None
