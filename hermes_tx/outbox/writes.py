# -*- test-case-name: tests.test_outbox_ledger,tests.test_outbox_consumer -*-
"""
L{write_owed}: what an outbox consumer's processor settled, written on
the consumer's connection: acknowledgements, releases, dead letters and
unclaims, one statement per kind and claim token, all sent at once (the
connection runs them in turn, each its own transaction).

A statement that fails for another reason than a lost connection fails
alone: the others are written, and what it owed is returned, to be tried
again (nothing owed is dropped).  A lost connection fails the whole write:
everything not written is owed on the next connection.
"""

from collections import Counter

from twisted.internet import defer

from hermes_tx.strategies import is_connection_error


def id_array(ids):
    """
    @return: C{ids} as one PostgreSQL array literal (C{"{1,2,3}"}), which the
        statements cast to C{bigint[]}: psycopg2 adapts a list element by
        element, about 0.4 ms per 500 ids.
    """
    return "{" + ",".join(map(str, ids)) + "}"


@defer.inlineCallbacks
def write_owed(session, consumer, owed):
    """
    @param session: the consumer's L{hermes_tx.postgres.session.Session}.
    @param consumer: the L{hermes_tx.outbox.consumer.OutboxConsumer}.
    @param owed: C{(kind, token, settled, delay, reason)} tuples (see
        L{hermes_tx.outbox.claims.Ledger}; C{settled} has the change's
        C{id}, C{topic}, C{key} and C{attempts}).
    @return: a Deferred firing with C{(acked, released, dead, failed,
        missed)}: C{collections.Counter}s by topic; C{failed}, a list of
        C{(owed tuples, error)} for the statements that failed (not for a
        lost connection: that fails the Deferred, and nothing of C{owed}
        counts as written); and C{missed}, the set of ids an
        acknowledgement or a move to the dead letters did not find under
        their token (their claim was lost).
    """
    statements = consumer.statements
    groups = {}
    for kind, token, change, delay, reason in owed:
        groups.setdefault((kind, token), []).append((change, delay, reason))
    # Every statement is sent at once (the connection runs them in turn):
    # one waiting for the one before would wait behind each claim sent
    # meanwhile, and the rows owed stay claimed, for every claim to walk.
    sent = []
    for (kind, token), items in groups.items():
        ids = id_array(change.id for change, _, _ in items)
        if kind == "ack":
            d = session.query(statements["ack"], (ids, token))
        elif kind == "unclaim":
            d = session.query(statements["unclaim"], (ids, token))
        elif kind == "release":
            d = session.query(statements["release"], (
                ids, token, [delay for _, delay, _ in items], [r for _, _, r in items],
                consumer.ledger.max_attempts))
        else:
            d = session.query(statements["dead_letter"], (ids, token, [r for _, _, r in items]))
        sent.append((kind, token, items, d))
    answers = yield defer.DeferredList([d for *_, d in sent], consumeErrors=True)
    acked, released, dead = Counter(), Counter(), Counter()
    failed = []
    missed = set()
    lost = None
    for (kind, token, items, _), (ok, rows) in zip(sent, answers):
        if not ok:
            if is_connection_error(rows.value):
                lost = rows
            else:
                failed.append(([(kind, token, c, d, r) for c, d, r in items], rows.value))
            continue
        if kind == "ack":
            done = {row[0] for row in rows}
            acked.update(change.topic for change, _, _ in items if change.id in done)
            if len(done) < len(items):
                missed.update(change.id for change, _, _ in items if change.id not in done)
        elif kind == "release":
            outcome = dict((row[0], row[1]) for row in rows)
            for change, _, reason in items:
                if outcome.get(change.id) == "retry":
                    released[change.topic] += 1
                elif outcome.get(change.id) == "dead":
                    dead[change.topic] += 1
                    consumer.dead_lettered(change, reason)
        elif kind == "dead":
            moved = {row[0] for row in rows}
            for change, _, reason in items:
                if change.id in moved:
                    dead[change.topic] += 1
                    consumer.dead_lettered(change, reason)
                else:
                    missed.add(change.id)
    if lost is not None:
        lost.raiseException()
    return acked, released, dead, failed, missed
