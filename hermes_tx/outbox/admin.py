# -*- test-case-name: tests.test_outbox_cli -*-
"""
What C{hermes-tx} does besides installing and capturing: status, dead
letters, emitting by hand.  Blocking psycopg2 cursors on autocommit
connections.
"""

import time

from psycopg2 import sql

from hermes_tx.exceptions import InvalidConfigurationException
from hermes_tx.outbox import sql as statements
from hermes_tx.outbox.names import DEFAULT_SCHEMA, validate_schema
from hermes_tx.outbox.schema import installed_versions, latest_version, require_intact

#: dead letters put back per statement by L{retry_dead_letters} (each
#: holds emit's lock on its key until its statement commits)
RETRY_CHUNK = 500

STATUS_FIELDS = ("topic", "pending", "in_flight", "oldest_age", "dead_letters")
DEAD_LETTER_FIELDS = ("id", "topic", "key", "attempts", "failed_at", "last_error", "superseded_by")

#: what L{retry_dead_letters} says of each dead letter asked for
RETRIED, SUPERSEDED, IN_FLIGHT, BUSY, MISSING = "retried", "superseded", "in flight", "busy", "missing"


def require_installed(cursor, schema=DEFAULT_SCHEMA):
    """
    @raise InvalidConfigurationException: the outbox is not installed in
        C{schema}, not up to date, or damaged.
    """
    versions = installed_versions(cursor, validate_schema(schema))
    if not versions:
        raise InvalidConfigurationException(
            f"the outbox is not installed in schema {schema!r}: run hermes-tx install"
        )
    if max(versions) < latest_version():
        raise InvalidConfigurationException(
            f"the outbox in schema {schema!r} is at version {max(versions)}, "
            f"this hermes_tx needs {latest_version()}: run hermes-tx install"
        )
    require_intact(cursor, schema, max(versions))


def status(cursor, schema=DEFAULT_SCHEMA):
    """
    @return: a list of dicts with keys L{STATUS_FIELDS}, one per topic
        (see L{hermes_tx.outbox.sql.stats}).
    """
    cursor.execute(statements.stats(schema))
    return [dict(zip(STATUS_FIELDS, row)) for row in cursor.fetchall()]


def _table(schema, name):
    return sql.Identifier(validate_schema(schema), name)


def dead_letters(cursor, schema=DEFAULT_SCHEMA, topic=None, limit=100):
    """
    @return: C{(rows, total)}: up to C{limit} dead letters (dicts with keys
        L{DEAD_LETTER_FIELDS}, C{failed_at} an aware datetime,
        C{superseded_by} the id of a newer change of the key delivered
        since, or C{None}), oldest first, and how many there are in all
        (of C{topic}, or of every topic).
    """
    where = sql.SQL("WHERE %(topic)s::text IS NULL OR d.topic = %(topic)s")
    cursor.execute(
        sql.SQL(
            "SELECT d.id, d.topic, d.key, d.attempts, d.failed_at, d.last_error, d.superseded_by"
            " FROM {} d {} ORDER BY d.id LIMIT %(limit)s"
        ).format(_table(schema, "dead_letters"), where),
        {"topic": topic, "limit": limit},
    )
    rows = [dict(zip(DEAD_LETTER_FIELDS, row)) for row in cursor.fetchall()]
    cursor.execute(
        sql.SQL("SELECT count(*) FROM {} d {}").format(_table(schema, "dead_letters"), where),
        {"topic": topic},
    )
    return rows, cursor.fetchone()[0]


#: dead letters with these ids (all when NULL) of this topic (any when NULL)
_CHOSEN = sql.SQL(
    "(%(ids)s::bigint[] IS NULL OR d.id = ANY (%(ids)s::bigint[]))"
    " AND (%(topic)s::text IS NULL OR d.topic = %(topic)s)"
)


def _select_ids(cursor, schema, ids, topic):
    cursor.execute(
        sql.SQL("SELECT d.id FROM {} d WHERE {} ORDER BY d.id").format(_table(schema, "dead_letters"), _CHOSEN),
        {"ids": ids, "topic": topic},
    )
    return [row[0] for row in cursor.fetchall()]


def retry_dead_letters(cursor, schema=DEFAULT_SCHEMA, ids=None, topic=None, force=False,
                       busy_tries=1, busy_pause=0.2, sleep=time.sleep):
    """
    Put dead letters back into the outbox, in id order, each with its
    original id (before the newer pending changes of its key), attempts 0,
    available now, removed from the dead letters in the same statement
    (C{retry_dead_letters()} of C{migrations/0003_privileges.sql}).  None
    goes back in time: one superseded by a newer change of its key that
    was delivered stays unless C{force}; one whose key has a newer change
    in flight stays.

    @param ids: the dead letters' ids, or C{None} for all (of C{topic}).
    @param topic: only those of this topic, or C{None}.
    @param force: put back superseded ones too (a receiver that checks no
        version then applies older data than it has).
    @param busy_tries: how many times to try a dead letter whose key is
        L{BUSY}, C{busy_pause} seconds apart (C{sleep}: blocking, for the
        command line).
    @return: a list of C{(id, outcome, newer)} in id order: outcome
        L{RETRIED}, L{SUPERSEDED} (C{newer}: the delivered change's id),
        L{IN_FLIGHT} (C{newer}: the change being delivered), L{BUSY} (its
        key was being written or claimed: try again) or L{MISSING}.
    """
    if ids is None or topic is not None:
        chosen = _select_ids(cursor, schema, ids, topic)
        results = [(i, MISSING, None) for i in set(ids or ()) - set(chosen)]
    else:
        chosen, results = sorted(set(ids)), []
    statement = sql.SQL("SELECT id, outcome, newer FROM {}(%s::bigint[], %s)").format(
        _table(schema, "retry_dead_letters"))
    done = {}
    for attempt in range(max(1, busy_tries)):
        if attempt:
            sleep(busy_pause)
        for start in range(0, len(chosen), RETRY_CHUNK):
            cursor.execute(statement, (chosen[start:start + RETRY_CHUNK], force))
            done.update((row[0], tuple(row)) for row in cursor.fetchall())
        chosen = [i for i in chosen if done[i][1] == BUSY]
        if not chosen:
            break
    return sorted(results + list(done.values()))


def purge_dead_letters(cursor, schema=DEFAULT_SCHEMA, ids=None, topic=None):
    """
    Delete dead letters for good (C{purge_dead_letters()}).

    @param ids: their ids, or C{None} for all (of C{topic}).
    @param topic: only those of this topic, or C{None}.
    @return: the ids deleted, ascending.
    """
    cursor.execute(
        sql.SQL("SELECT id FROM {}(%s::bigint[], %s::text)").format(_table(schema, "purge_dead_letters")),
        (ids, topic),
    )
    return sorted(row[0] for row in cursor.fetchall())


def emit(cursor, topic, key, payload, schema=DEFAULT_SCHEMA):
    """
    Emit one change (in its own transaction when C{cursor}'s connection is
    in autocommit mode).

    @param payload: JSON text.
    @return: the new change's id.
    """
    cursor.execute(
        sql.SQL("SELECT {}(%s, %s, %s::jsonb)").format(_table(schema, "emit")), (topic, key, payload)
    )
    return cursor.fetchone()[0]
