# -*- test-case-name: tests.test_outbox_consumer -*-
"""
L{write_owed}: what an outbox consumer's processor settled, written on
the consumer's connection: acknowledgements, releases, dead letters and
unclaims, one statement per kind and claim token.
"""

from twisted.internet import defer


def id_array(ids):
    """
    @return: C{ids} as one PostgreSQL array literal (C{"{1,2,3}"}), which the
        statements cast to C{bigint[]}: psycopg2 adapts a list element by
        element, about 0.4 ms per 500 ids.
    """
    return "{" + ",".join(map(str, ids)) + "}"


@defer.inlineCallbacks
def write_owed(conn, consumer, owed):
    """
    @param conn: the consumer's connection.
    @param consumer: the L{hermes_tx.outbox.consumer.OutboxConsumer}.
    @param owed: C{(kind, token, change, delay, reason)} tuples (see
        L{hermes_tx.outbox.claims.Ledger}).
    @return: a Deferred firing with C{(acked, released, dead)}.
    """
    statements = consumer.statements
    groups = {}
    for kind, token, change, delay, reason in owed:
        groups.setdefault((kind, token), []).append((change, delay, reason))
    acked = released = dead = 0
    for (kind, token), items in groups.items():
        ids = id_array(change.id for change, _, _ in items)
        if kind == "ack":
            rows = yield conn.runQuery(statements["ack"], (ids, token))
            acked += len(rows)
        elif kind == "unclaim":
            yield conn.runQuery(statements["unclaim"], (ids, token))
        elif kind == "release":
            params = (ids, token, [d for _, d, _ in items], [r for _, _, r in items],
                      consumer.ledger.max_attempts)
            rows = yield conn.runQuery(statements["release"], params)
            outcome = dict((row[0], row[1]) for row in rows)
            released += sum(1 for v in outcome.values() if v == "retry")
            for change, _, reason in items:
                if outcome.get(change.id) == "dead":
                    dead += 1
                    _log_dead(consumer, change, reason)
        else:
            rows = yield conn.runQuery(statements["dead_letter"], (ids, token, [r for _, _, r in items]))
            moved = {row[0] for row in rows}
            for change, _, reason in items:
                if change.id in moved:
                    dead += 1
                    _log_dead(consumer, change, reason)
    return acked, released, dead


def _log_dead(consumer, change, reason):
    consumer.log.warn(
        "{ident}: outbox change {id} (topic {topic!r}, key {key!r}) moved to the dead letters "
        "after {n} attempt(s): {reason}",
        ident=consumer.ident, id=change.id, topic=change.topic, key=change.key,
        n=change.attempts + 1, reason=reason,
    )
