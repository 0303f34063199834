# -*- test-case-name: tests.test_outbox_sql -*-
"""
The statements an outbox consumer runs, built for one schema.

Each is one statement with C{%s} parameters, a C{psycopg2.sql.Composable}
that blocking psycopg2 (C{cursor.execute(stmt, params)}) and txpostgres
(C{conn.runQuery(stmt, params)}) both take.  Run them on an autocommit
connection: one statement is one transaction, nothing is held open between
them.  A claim carries a token (a UUID, new for every claim); C{ack},
C{release}, C{dead_letter} and C{extend} only touch rows that still hold
it, so a claim that expired and was taken by someone else is not theirs
any more.  The statements, their parameters and what they return::

    claim(schema)        (topics, limit, token, visibility_seconds)
        -> (id, topic, key, attempts, created_at, payload), oldest first
    ack(schema)          (ids, token)                      -> (id,)
    release(schema)      (ids, token, delays, errors, max_attempts)
        -> (id, "retry" | "dead")
    dead_letter(schema)  (ids, token, errors)               -> (id,)
    extend(schema)       (ids, token, visibility_seconds)   -> (id,)
    unclaim(schema)      (ids, token)                       -> (id,)
    stats(schema)        ()
        -> (topic, pending, in_flight, oldest_age, dead_letters)
"""

from psycopg2 import sql

from hermes_tx.outbox.names import DEFAULT_SCHEMA, channel, validate_schema


def _build(text, schema):
    return sql.SQL(text).format(schema=sql.Identifier(validate_schema(schema)))


def claim(schema=DEFAULT_SCHEMA):
    """
    Claim changes: at most C{limit} rows of the given topics, oldest first,
    each the oldest row of its topic and key still in the outbox (per-key
    order across every consumer), available now and not claimed, or its
    claim expired, or the backend that made its claim gone (killed, its
    connection lost, or a claim made on a server that failed over).  Each
    topic gets an equal share of C{limit}; what some leave goes to the
    others.  Each row gets C{claim_token = token}, C{claimed_until = now()
    + visibility}, the claiming backend (C{claim_pid}, C{claimed_at}) and
    its attempts counted.  Claims made on one connection belong to its
    backend: a consumer that reconnects has lost them to the next claim.

    Parameters: C{topics} (list of str), C{limit} (int), C{token} (str or
    UUID), C{visibility} (seconds, float > 0).

    @return: a statement returning C{(id int, topic str, key str, attempts
        int, created_at float, payload str)}, in id order per topic;
        C{attempts} is how many times the row was handed out before (0 the
        first time), C{created_at} seconds since the epoch, C{payload} the
        JSON text.
    """
    return _build(
        "SELECT id, topic, key, attempts, created_at, payload"
        " FROM {schema}.claim(%s::text[], %s::integer, %s::uuid, %s::double precision)",
        schema,
    )


def ack(schema=DEFAULT_SCHEMA):
    """
    Acknowledge: delete the rows that still hold the token.

    Parameters: C{ids} (list of int), C{token}.

    @return: a statement returning C{(id,)} for each row deleted; an id
        missing from it lost its claim (expired and taken by another
        consumer, which will deliver it again).
    """
    return _build(
        "DELETE FROM {schema}.outbox o"
        " WHERE o.id = ANY (%s::bigint[]) AND o.claim_token = %s::uuid"
        " RETURNING o.id",
        schema,
    )


def release(schema=DEFAULT_SCHEMA):
    """
    Give rows back after a failure, atomically: a row still holding the
    token is unclaimed, available again C{delay} seconds from now with its
    C{last_error} set; a row already delivered C{max_attempts} times moves
    to the dead letters instead.

    Parameters: C{ids} (list of int), C{token}, C{delays} (list of
    seconds, one per id), C{errors} (list of str or None, one per id),
    C{max_attempts} (int).

    @return: a statement returning C{(id, outcome)} with outcome
        C{"retry"} or C{"dead"}; ids missing from it lost their claim.
    """
    return _build(
        """
        WITH p AS (
            SELECT %s::bigint[] AS ids, %s::uuid AS token, %s::double precision[] AS delays,
                   %s::text[] AS errors, %s::integer AS max_attempts
        ), given AS (
            SELECT g.id, coalesce(g.delay, 0) AS delay, g.error, p.token, p.max_attempts
            FROM p, unnest(p.ids, p.delays, p.errors) AS g (id, delay, error)
            WHERE g.id IS NOT NULL
        ), dead AS (
            DELETE FROM {schema}.outbox o USING given g
            WHERE o.id = g.id AND o.claim_token = g.token AND o.attempts >= g.max_attempts
            RETURNING o.id, o.topic, o.key, o.payload, o.created_at, o.attempts, g.error
        ), buried AS (
            INSERT INTO {schema}.dead_letters (id, topic, key, payload, created_at, attempts, last_error)
            SELECT * FROM dead
        ), retried AS (
            UPDATE {schema}.outbox o
            SET claim_token = NULL, claimed_until = NULL, last_error = g.error,
                available_at = now() + make_interval(secs => g.delay)
            FROM given g
            WHERE o.id = g.id AND o.claim_token = g.token AND o.attempts < g.max_attempts
            RETURNING o.id
        )
        SELECT id, 'dead' FROM dead
        UNION ALL
        SELECT id, 'retry' FROM retried
        """,
        schema,
    )


def dead_letter(schema=DEFAULT_SCHEMA):
    """
    Move rows that still hold the token to the dead letters now (a
    processor rejected them for good).

    Parameters: C{ids} (list of int), C{token}, C{errors} (list of str or
    None, one per id).

    @return: a statement returning C{(id,)} for each row moved.
    """
    return _build(
        """
        WITH p AS (
            SELECT %s::bigint[] AS ids, %s::uuid AS token, %s::text[] AS errors
        ), given AS (
            SELECT g.id, g.error, p.token
            FROM p, unnest(p.ids, p.errors) AS g (id, error)
            WHERE g.id IS NOT NULL
        ), dead AS (
            DELETE FROM {schema}.outbox o USING given g
            WHERE o.id = g.id AND o.claim_token = g.token
            RETURNING o.id, o.topic, o.key, o.payload, o.created_at, o.attempts, g.error
        ), buried AS (
            INSERT INTO {schema}.dead_letters (id, topic, key, payload, created_at, attempts, last_error)
            SELECT * FROM dead
        )
        SELECT id FROM dead
        """,
        schema,
    )


def extend(schema=DEFAULT_SCHEMA):
    """
    Keep claims alive while a processor is still working on them:
    C{claimed_until = now() + visibility} for the rows still holding the
    token.

    Parameters: C{ids} (list of int), C{token}, C{visibility} (seconds).

    @return: a statement returning C{(id,)} for each row extended; an id
        missing from it lost its claim.
    """
    return _build(
        """
        WITH p AS (SELECT %s::bigint[] AS ids, %s::uuid AS token, %s::double precision AS visibility)
        UPDATE {schema}.outbox o
        SET claimed_until = now() + make_interval(secs => p.visibility)
        FROM p
        WHERE o.id = ANY (p.ids) AND o.claim_token = p.token
        RETURNING o.id
        """,
        schema,
    )


def unclaim(schema=DEFAULT_SCHEMA):
    """
    Give back rows a consumer claimed but never handed to its processor (it
    is stopping): unclaimed, available at once, and the delivery the claim
    counted taken back, so stopping and starting consumers never pushes a
    change toward the dead letters.

    Parameters: C{ids} (list of int), C{token}.

    @return: a statement returning C{(id,)} for each row given back.
    """
    return _build(
        "UPDATE {schema}.outbox o"
        " SET claim_token = NULL, claimed_until = NULL, attempts = greatest(o.attempts - 1, 0)"
        " WHERE o.id = ANY (%s::bigint[]) AND o.claim_token = %s::uuid"
        " RETURNING o.id",
        schema,
    )


def stats(schema=DEFAULT_SCHEMA):
    """
    Per topic: C{pending} (rows not in flight: waiting to be claimed, or
    for a retry, or with an expired claim), C{in_flight} (claimed, claim
    not expired), C{oldest_age} (seconds since the oldest row still in the
    outbox was written, in flight or not: the lag; C{None} when empty) and
    C{dead_letters}.  Counts the tables: cost grows with the backlog.

    No parameters.

    @return: a statement returning C{(topic, pending, in_flight,
        oldest_age, dead_letters)} ordered by topic.
    """
    return _build(
        """
        WITH o AS (
            SELECT topic,
                   count(*) FILTER (WHERE claimed_until IS NULL OR claimed_until < now()) AS pending,
                   count(*) FILTER (WHERE claimed_until >= now()) AS in_flight,
                   extract(epoch FROM now() - min(created_at))::double precision AS oldest_age
            FROM {schema}.outbox GROUP BY topic
        ), d AS (
            SELECT topic, count(*) AS dead_letters FROM {schema}.dead_letters GROUP BY topic
        )
        SELECT coalesce(o.topic, d.topic) AS topic,
               coalesce(o.pending, 0)::bigint, coalesce(o.in_flight, 0)::bigint,
               o.oldest_age, coalesce(d.dead_letters, 0)::bigint
        FROM o FULL JOIN d ON o.topic = d.topic
        ORDER BY 1
        """,
        schema,
    )


def listen(schema=DEFAULT_SCHEMA):
    """
    @return: C{LISTEN} on the schema's wake-up channel (L{channel}), quoted.
        Each notification's payload is a topic that has new changes.
    """
    return sql.SQL("LISTEN {}").format(sql.Identifier(channel(schema)))


__all__ = ["claim", "ack", "release", "dead_letter", "extend", "unclaim", "stats", "channel", "listen"]
