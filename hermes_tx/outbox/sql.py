# -*- test-case-name: tests.test_outbox_sql -*-
"""
The statements an outbox consumer runs, built for one schema.

Each is one statement with C{%s} parameters, a C{psycopg2.sql.Composable}
that blocking psycopg2 (C{cursor.execute(stmt, params)}) and txpostgres
(C{conn.runQuery(stmt, params)}) both take.  Run them on an autocommit
connection: one statement is one transaction, nothing is held open between
them.  Each calls a function of the schema that runs with its owner's
rights (C{migrations/0003_privileges.sql}): a consumer's role needs only
USAGE on the schema and EXECUTE on them (L{hermes_tx.outbox.privileges}).
A claim carries a token (a UUID, new for every claim); C{ack},
C{release}, C{dead_letter} and C{extend} only touch rows that still hold
it, so a claim that expired and was taken by someone else is not theirs
any more.  The statements, their parameters and what they return::

    claim(schema)        (topics, limit, token, visibility_seconds)
        -> (id, topic, key, attempts, created_at, payload), oldest first
    claim_runs(schema)   (topics, limit, token, visibility_seconds)
        -> as claim
    claim_within(schema) (topics, limit, token, visibility_seconds, budget, first)
        -> (id, topic, key, attempts, created_at, payload or None, size)
    ack(schema)          (ids, token)                      -> (id,)
    release(schema)      (ids, token, delays, errors, max_attempts)
        -> (id, "retry" | "dead")
    dead_letter(schema)  (ids, token, errors)               -> (id,)
    extend(schema)       (ids, token, visibility_seconds)   -> (id,)
    unclaim(schema)      (ids, token)                       -> (id,)
    stats(schema)        ()
        -> (topic, pending, in_flight, oldest_age, dead_letters)
    figures(schema)      (topics, cap)
        -> (topic, pending, in_flight, oldest_age, dead_letters, estimated)
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


def claim_runs(schema=DEFAULT_SCHEMA):
    """
    L{claim}, and runs of a key's changes (version 9): a change whose older
    changes of its key are all taken by this claim before it is claimed
    too, behind them.  A key with a change in flight is in flight for this
    claim too.  Runs are taken breadth first (the oldest change of as many
    keys as the limit allows, then the second of each, ...).  The caller
    keeps each key's order: it hands a change to its processor only once
    the one before it is acknowledged, and gives back (L{unclaim}) what
    follows a change it released, or whose claim it lost
    (L{hermes_tx.outbox.runs}).

    Parameters and rows: those of L{claim}.
    """
    return _build(
        "SELECT id, topic, key, attempts, created_at, payload"
        " FROM {schema}.claim_runs(%s::text[], %s::integer, %s::uuid, %s::double precision)",
        schema,
    )


def claim_within(schema=DEFAULT_SCHEMA):
    """
    L{claim_runs} within a budget in bytes, for a consumer that bounds what it
    holds in flight (L{hermes_tx.outbox.budget}): the claim's rows, in the
    order it returns them, bring their payload while the bytes of the
    payloads so far (C{octet_length}, UTF-8) stay within C{budget}; the
    rows past it are claimed all the same but come back with a C{NULL}
    payload (the client never receives it): give them back (L{unclaim})
    at once.  With C{first} true, the first row brings its payload
    whatever its size (a change bigger than any budget still flows).  It
    is a plain statement around C{claim_runs()}, so a consumer's role needs no
    other grant; the server still reads every row claimed, so a cut is
    cheap for the client's memory only.

    Parameters: those of L{claim}, then C{budget} (bytes, int) and
    C{first} (bool).

    @return: a statement returning C{(id, topic, key, attempts, created_at,
        payload, size)} in L{claim_runs}'s order: C{payload} the JSON text or
        C{None} (cut by the budget), C{size} its bytes either way.
    """
    # The running sum follows the rows as claim() returns them: ordering
    # them (by id, say) would sort every payload, about a third more of
    # the server's time for rows of 1 MB.
    return _build(
        "SELECT id, topic, key, attempts, created_at,"
        " CASE WHEN running <= p.budget OR (place = 1 AND p.first) THEN payload END, size"
        " FROM (SELECT c.*, octet_length(c.payload) AS size,"
        " sum(octet_length(c.payload)) OVER w AS running, row_number() OVER w AS place"
        " FROM {schema}.claim_runs(%s::text[], %s::integer, %s::uuid, %s::double precision) c"
        " WINDOW w AS (ROWS UNBOUNDED PRECEDING)) s,"
        " (SELECT %s::bigint AS budget, %s::boolean AS first) p",
        schema,
    )


def ack(schema=DEFAULT_SCHEMA):
    """
    Acknowledge: delete the rows that still hold the token.  The older
    dead letters of their keys are marked superseded (a newer change of
    the key was delivered: retrying them would go back in time).

    Parameters: C{ids} (list of int), C{token}.

    @return: a statement returning C{(id,)} for each row deleted; an id
        missing from it lost its claim (expired and taken by another
        consumer, which will deliver it again).
    """
    return _build("SELECT id FROM {schema}.ack(%s::bigint[], %s::uuid)", schema)


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
        "SELECT id, outcome FROM {schema}.release("
        "%s::bigint[], %s::uuid, %s::double precision[], %s::text[], %s::integer)",
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
    return _build("SELECT id FROM {schema}.dead_letter(%s::bigint[], %s::uuid, %s::text[])", schema)


def extend(schema=DEFAULT_SCHEMA):
    """
    Keep claims alive while a processor is still working on them:
    C{claimed_until = now() + visibility} for the rows still holding the
    token.

    Parameters: C{ids} (list of int), C{token}, C{visibility} (seconds).

    @return: a statement returning C{(id,)} for each row extended; an id
        missing from it lost its claim.
    """
    return _build("SELECT id FROM {schema}.extend(%s::bigint[], %s::uuid, %s::double precision)", schema)


def unclaim(schema=DEFAULT_SCHEMA):
    """
    Give back rows a consumer claimed but never handed to its processor (it
    is stopping): unclaimed, available at once, and the delivery the claim
    counted taken back, so stopping and starting consumers never pushes a
    change toward the dead letters.

    Parameters: C{ids} (list of int), C{token}.

    @return: a statement returning C{(id,)} for each row given back.
    """
    return _build("SELECT id FROM {schema}.unclaim(%s::bigint[], %s::uuid)", schema)


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
        "SELECT topic, pending, in_flight, oldest_age, dead_letters FROM {schema}.stats()", schema
    )


#: rows counted per topic by L{figures} before it estimates instead
FIGURES_CAP = 10000


def figures(schema=DEFAULT_SCHEMA):
    """
    The per-topic figures of C{/metrics}, at a cost that does not grow with
    the backlog (L{stats} counts everything: C{hermes-tx status}), from the
    schema's C{figures()} function (C{migrations/0006_figures.sql}): per
    topic, C{pending} and C{in_flight} (claims alive) among its oldest
    C{cap} + 1 changes, the C{oldest_age} of its oldest change in seconds
    (C{None} when none) and its C{dead_letters}; a count past C{cap} is the
    planner's estimate, and C{estimated} says so.

    Parameters: C{topics} (list of str), C{cap} (int).

    @return: a statement returning C{(topic, pending, in_flight, oldest_age,
        dead_letters, estimated)} in the order of C{topics}.
    """
    return _build(
        "SELECT topic, pending, in_flight, oldest_age, dead_letters, estimated"
        " FROM {schema}.figures(%s::text[], %s::integer)",
        schema,
    )


def listen(schema=DEFAULT_SCHEMA):
    """
    @return: C{LISTEN} on the schema's wake-up channel (L{channel}), quoted.
        Each notification's payload is a topic that has new changes.
    """
    return sql.SQL("LISTEN {}").format(sql.Identifier(channel(schema)))


__all__ = ["claim", "claim_runs", "claim_within", "ack", "release", "dead_letter", "extend", "unclaim", "stats", "figures",
           "channel", "listen"]
