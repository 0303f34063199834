# -*- test-case-name: tests.test_outbox_consumer -*-
"""
L{ConsumeRun}: one connection's life of an
L{hermes_tx.outbox.consumer.OutboxConsumer}: connect, LISTEN for wake-ups,
then claim, keep claims alive and write what the processor's outcomes owe,
until the connection is lost or the consumer stops.
"""

import uuid
from collections import Counter

from twisted.internet import defer

from hermes_tx.events import Change
from hermes_tx.outbox import sql
from hermes_tx.outbox.claims import Claim
from hermes_tx.outbox.writes import id_array, write_owed
from hermes_tx.runtime.breaker import CLOSED, HALF_OPEN
from hermes_tx.sources.run import ConnectionRun

CONNECTING, CONSUMING = "connecting", "consuming"


#: full claims not followed ahead after a claim ahead came back short
SKIP_AHEAD = 8


def _changes(rows, claim):
    """
    @return: the L{Change}s of a claim's rows (their data is decoded when a
        processor first asks for it).
    """
    return [Change(id_, topic, key, attempts, created_at, payload, claim=claim)
            for id_, topic, key, attempts, created_at, payload in rows]


class ConsumeRun(ConnectionRun):
    """
    One connection's life: connect, check it is a primary, LISTEN for
    wake-ups, then claim, extend and write until lost or stopped.

    @ivar state: C{"connecting"}, C{"consuming"}, C{"stopping"} or
        C{"ended"}.
    """

    purpose = "claiming"

    def __init__(self, consumer):
        ConnectionRun.__init__(self, consumer)
        self.consumer = consumer
        self._timers = {}
        self._claiming = False
        self._claim_ended = None  # fires once the claim in flight is handled
        self._again = False
        self._ahead = False  # the claim in flight was made ahead of the acks
        self._skip_ahead = 0  # full claims not to follow ahead (see _claimed)
        self._waiting_for_room = False

    def _listen_statement(self):
        return sql.listen(self.consumer.schema)

    def _notifies(self, batch):
        # A wake-up: its payload is a topic with new changes.
        topics = self.consumer.topics
        if any(n.payload in topics for n in batch):
            self._claim()

    def _working(self, conn):
        consumer = self.consumer
        self.state = CONSUMING
        consumer.ledger.writer = self._write
        away = consumer.back_since(consumer.clock.seconds())
        if away is None or away >= 1.0:
            consumer.log.info(
                "{ident}: consuming outbox topics {topics}",
                ident=consumer.ident, topics=", ".join(repr(t) for t in consumer.topics),
            )
        self._every("poll", consumer.poll_interval, self._claim)
        self._every("extend", consumer.visibility_timeout / 3.0, self._extend)
        if consumer.stats_interval:
            self._every("stats", consumer.stats_interval, self._read_stats)
            self._read_stats()
        self.on_ready()
        consumer.ledger.flush()
        if consumer.ledger.in_flight:
            # Claims the processor still works on were last extended on the
            # lost connection, maybe most of a timeout ago: now, not in a
            # third of one.
            self._extend()
        self._claim()

    def _close(self):
        for call in self._timers.values():
            if call.active():
                call.cancel()
        self._timers.clear()
        if self.consumer.ledger.writer == self._write:
            self.consumer.ledger.writer = None
        ConnectionRun._close(self)

    def _every(self, name, interval, action):
        def tick():
            if self.state == CONSUMING:
                action()
                self._timers[name] = self.consumer.clock.callLater(interval, tick)

        self._timers[name] = self.consumer.clock.callLater(interval, tick)

    # -- claiming -------------------------------------------------------------

    def claim(self):
        """
        Claim now if there is room (the processor's circuit closed again).
        """
        self._claim()

    def _claim(self):
        if self.state != CONSUMING:
            return
        if self._claiming:
            self._again = True
            return
        consumer = self.consumer
        breaker = consumer.breaker
        if breaker is not None and breaker.state != CLOSED:
            if breaker.state != HALF_OPEN or consumer.ledger.in_flight:
                return  # open: nothing; probing: one batch at a time
        queue = consumer.notif_queue
        # Never hold more than the pacer's limit (about half a second of
        # the processor's work, at most max_in_flight: others share the
        # work), never more than the queue has room for, and claim at least
        # half a batch at a time unless little is in flight (a few busy
        # keys: each acknowledgement may free the next change of a key).
        limit = consumer.pacer.limit
        batch = min(consumer.batch_size, max(1, limit // 2))
        if breaker is not None and breaker.state == HALF_OPEN:
            limit = batch = max(1, consumer.pacer.floor // 2)  # one processor batch
        in_flight = len(consumer.ledger.in_flight)
        if in_flight > 2 * limit:
            # Claimed before the processor's rate was known (or it slowed
            # down): give back what it has not begun, for other consumers.
            in_flight -= consumer.give_back(in_flight - limit)
        room = min(batch, limit - in_flight)
        if getattr(queue, "maxsize", None) is not None:
            space = queue.maxsize - len(queue.pending)
            if space <= 0 < room:
                # The queue is what is full: claim once it has room.
                if not self._waiting_for_room:
                    self._waiting_for_room = True
                    queue.on_space(self._room)
                return
            room = min(room, space)
        if room <= 0 or (room < batch // 2 and in_flight >= batch):
            return
        self._claiming = True
        self._again = False
        token = uuid.uuid4()
        params = (consumer.topics, room, str(token), consumer.visibility_timeout)
        d = self.conn.runQuery(consumer.statements["claim"], params)
        d.addCallback(self._claimed, Claim(consumer.ledger, str(token)), room)
        d.addErrback(self._query_failed)
        # A stop waits for this claim, to give back what it took.
        self._claim_ended = d.addBoth(lambda _: None)

    def _room(self):
        self._waiting_for_room = False
        self._claim()

    def _claimed(self, rows, claim, limit):
        self._claiming = False
        if self.state == "stopping":
            self._give_back_claimed(rows, claim)
            return
        if self.state != CONSUMING:
            return
        consumer = self.consumer
        changes = _changes(rows, claim)
        consumer.ledger.add_many(changes)
        if changes:
            consumer.pacer.claimed()
        claimed = consumer.claimed
        for topic, count in Counter(c.topic for c in changes).items():
            claimed[topic] = claimed.get(topic, 0) + count
        if changes:
            queue = consumer.notif_queue
            if hasattr(queue, "put_many"):
                queue.put_many(changes)
            else:
                for change in changes:
                    queue.put(change)
        # Claiming ahead (the next batch while the processor works on this
        # one) pays while claims keep coming back full; with few keys every
        # head is soon in flight and a claim ahead walks them all for
        # nothing: after one that comes back short, the next few full
        # claims are not followed ahead (the acknowledgements claim next).
        # Wake-ups and the poll set _again.
        was_ahead, self._ahead = self._ahead, False
        if was_ahead and len(rows) < limit // 2:
            self._skip_ahead = SKIP_AHEAD
        if self._again:
            self._claim()
        elif len(rows) >= limit:
            if self._skip_ahead:
                self._skip_ahead -= 1
            else:
                self._ahead = True
                self._claim()

    def _give_back_claimed(self, rows, claim):
        # A claim that came back after the stop began: nothing of it was
        # handed out; give it all back (attempt not counted) with the
        # stop's last write, rather than leave the keys blocked until the
        # claims expire.
        ledger = self.consumer.ledger
        changes = _changes(rows, claim)
        ledger.add_many(changes)
        for change in changes:
            ledger.settle(change, ("unclaim", claim.token, change, None, None))

    def _query_failed(self, failure):
        self._claiming = False
        if self.state == CONSUMING:
            self._loss(failure.value)

    # -- keeping claims and writing what is owed --------------------------------

    def _extend(self):
        consumer = self.consumer
        by_token = {}
        for change in consumer.ledger.in_flight.values():
            by_token.setdefault(change.claim.token, []).append(change.id)
        for token, ids in by_token.items():
            d = self.conn.runQuery(consumer.statements["extend"],
                                   (id_array(ids), token, consumer.visibility_timeout))
            d.addCallback(self._extended, ids, token)
            d.addErrback(self._query_failed)

    def _extended(self, rows, ids, token):
        kept = {row[0] for row in rows}
        in_flight = self.consumer.ledger.in_flight
        # Only changes still held under this token (one may have been
        # claimed again since, under another).
        lost = [i for i in ids if i not in kept and i in in_flight and in_flight[i].claim.token == token]
        if lost:
            self.consumer.ledger.lost(lost)
            self.consumer.log.warn(
                "{ident}: {n} claim(s) expired before their changes were processed "
                "(another consumer may deliver them again); is --visibility-timeout too short?",
                ident=self.consumer.ident, n=len(lost),
            )

    def _write(self, owed):
        """
        Write what the processor's outcomes owe (L{write_owed}).

        @return: a Deferred firing with C{(acked, released, dead)}.
        """
        def written(counts):
            acked, _, dead = counts
            if (acked or dead) and self.state == CONSUMING:
                # Changes that left the outbox may have been holding back
                # the next changes of their keys: claim those now, not at
                # the next poll.
                self._claim()
            return counts

        return write_owed(self.conn, self.consumer, owed).addCallback(written)

    def _read_stats(self):
        d = self.conn.runQuery(self.consumer.statements["stats"])

        def read(rows):
            self.consumer.stats = {
                row[0]: (row[1], row[2], row[3], row[4]) for row in rows
            }

        d.addCallbacks(read, self._query_failed)

    # -- ending -----------------------------------------------------------------

    def _end_work(self):
        if self.state != CONSUMING:
            ConnectionRun._end_work(self)
            return
        self.state = "stopping"
        d = self._claim_ended if self._claiming else defer.succeed(None)
        d.addBoth(lambda _: self.consumer.ledger.flush())
        d.addBoth(lambda _: ConnectionRun._end_work(self))
