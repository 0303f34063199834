# -*- test-case-name: tests.test_outbox_consumer -*-
"""
What an outbox consumer owes the database for the changes it claimed: an
acknowledgement, a release (with a backoff), or a move to the dead
letters, each written in batches on the consumer's connection.

A L{Claim} is one claimed batch (one token); the processor's run loop
settles each change through it (L{hermes_tx.runtime.settle}).  The L{Ledger} keeps
what is in flight and what is still to be written, and survives lost
connections: writes that could not be made are made on the next one (a
claim that expired meanwhile is simply not the consumer's any more; the
change is delivered again, at least once).
"""

from collections import Counter, OrderedDict

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from hermes_tx.runtime.backoff import Backoff, backoff_policy
from hermes_tx.runtime.loglimit import LogLimit
from hermes_tx.exceptions import one_line
from hermes_tx.strategies import is_connection_error

#: write acknowledgements once this many are waiting (else after ACK_DELAY)
ACK_BATCH = 1000
#: seconds an acknowledgement may wait to be written with others: 0, the
#: next reactor turn, once the processor's loop yields (a whole batch at once)
ACK_DELAY = 0


class Settled:
    """
    What a write owed for a settled change needs of it (its id, topic, key
    and attempts, not its payload): the change itself, and its payload,
    may be gone while the write waits (behind a claim on the connection,
    say), so what is settled no longer counts toward the bytes held.
    """

    __slots__ = ("id", "topic", "key", "attempts")

    def __init__(self, change):
        self.id = change.id
        self.topic = change.topic
        self.key = change.key
        self.attempts = change.attempts

    def __repr__(self):
        return f"<Settled {self.topic!r} {self.key!r} id={self.id} attempts={self.attempts}>"


class Claim:
    """
    One claim: a token and the changes it took.
    """

    def __init__(self, ledger, token):
        self.ledger = ledger
        self.token = token

    def done(self, change):
        self.ledger.settle(change, ("ack", self.token, change, None, None))

    def retry(self, change, reason, retry_after=None):
        delay = max(self.ledger.retry_delay(change.attempts), _bounded(retry_after))
        self.ledger.settle(change, ("release", self.token, change, delay, _text(reason)))

    def reject(self, change, reason):
        self.ledger.settle(change, ("dead", self.token, change, None, _text(reason)))

    def give_back(self, change):
        """
        Give the change back, its delivery not counted: it failed while
        the processor's circuit was open or probing (the dependency, not
        the change, is at fault), or the processor never had it (the
        consumer is stopping, its claim came back cut or after the circuit
        opened, or it waited behind a change of its key that failed).
        """
        self.ledger.settle(change, ("unclaim", self.token, change, None, None))


#: seconds before a failed change's first retry, by default
FIRST_RETRY = 0.05
#: the longest delay before a failed change's retry, by default (5 minutes)
LONGEST_RETRY = 300.0


def change_retry(first=FIRST_RETRY, most=LONGEST_RETRY):
    """
    @param first: seconds before a failed change's first retry.
    @param most: the longest delay, in seconds.
    @return: the policy of a failed change's delay by its deliveries so
        far: C{first}, then three times longer each delivery, at most
        C{most}.
    """
    return backoff_policy(initial=first, factor=3.0, max_delay=most)


#: a failed change's delay by its deliveries so far: 0.05, 0.15, 0.45 ... s,
#: at most 5 minutes.  The first retry is soon: the later changes of its key
#: wait for it, most failures pass (a 429 for one item, a lock timeout), and
#: a dependency that is down is the circuit breaker's to wait for (failed
#: first deliveries in a row open it), not each change's.  The next ones
#: spread out fast: ten deliveries span about 8 minutes before the dead
#: letters.  (0.25 s first, it was most of what 3% of failing changes cost
#: a drain on a fast machine: docs/performance.rst.)
CHANGE_RETRY = change_retry()

#: the longest wait a Retry(retry_after=...) may ask for (a day)
MAX_RETRY_AFTER = 86400.0


def _bounded(retry_after):
    # An interval PostgreSQL cannot hold (inf, nan) would fail the release
    # statement.
    if not retry_after or retry_after != retry_after or retry_after < 0:
        return 0.0
    return min(retry_after, MAX_RETRY_AFTER)


def _text(reason):
    text = one_line(reason) if isinstance(reason, BaseException) else str(reason)
    # A text parameter cannot hold NUL (psycopg2 refuses the statement).
    return text.replace("\x00", "\\x00")


class Ledger:
    """
    The changes in flight and the writes owed for them.

    @ivar in_flight: an ordered dict of change id to the L{Change} handed
        to the processor and not yet settled.
    @ivar held: the bytes of the payloads in flight (as the claims said:
        L{hermes_tx.outbox.budget}).
    @ivar counts: acknowledged, released, dead-lettered and lost claims so
        far (for metrics).
    @ivar by_topic: the same, by topic: a dict of those names to
        C{collections.Counter}s of topics.
    """

    log = Logger()

    def __init__(self, clock, max_attempts=10, retry_policy=None):
        self.clock = clock
        self.max_attempts = max_attempts
        self.retry_delay = retry_policy or CHANGE_RETRY
        self.in_flight = OrderedDict()
        self.held = 0
        self._sizes = {}  # change id -> bytes of its payload, while in flight
        self.counts = {"acked": 0, "released": 0, "dead": 0, "lost": 0}
        self.by_topic = {name: Counter() for name in self.counts}
        # (kind, token, Settled, delay, reason) not yet written; kind is
        # "ack", "release", "dead" or "unclaim"
        self._owed = []
        self._writes = defer.DeferredLock()  # one write at a time
        # the Deferreds of flushes waiting for the next write (None: no
        # write waits for the lock): flushes coalesce into that one write,
        # so the lock never has more than one waiter however fast changes
        # are settled
        self._next = None
        self._timer = None
        # writes whose statement failed (not for a lost connection), tried
        # again after a delay growing while they keep failing
        self._later = []
        self._later_timer = None
        self._later_backoff = Backoff(backoff_policy(initial=1.0, factor=2.0, max_delay=30.0, jitter=None))
        self._failure_lines = LogLimit(clock, 1, 10.0)
        # set by the consumer's run: a function taking the owed writes and
        # returning a Deferred firing with (acked, released, dead, failed,
        # missed) (see hermes_tx.outbox.writes.write_owed)
        self.writer = None
        # set by the consumer: its hermes_tx.outbox.pacing.ClaimPacer, told
        # of every change settled
        self.pacer = None
        # set by the consumer: its hermes_tx.outbox.runs.KeyRuns, told of
        # every change settled or lost, and of every acknowledgement and
        # dead letter written
        self.runs = None

    def add(self, change, size=None):
        self.add_many([change], None if size is None else [size])

    def add_many(self, changes, sizes=None):
        """
        @param sizes: the bytes of each change's payload (C{None}: the
            length of its text).
        """
        if sizes is None:
            sizes = [len(change.payload or "") for change in changes]
        in_flight, by_id = self.in_flight, self._sizes
        for change, size in zip(changes, sizes):
            if change.id in by_id:
                self.held -= by_id[change.id]  # claimed again: the new one replaces it
            in_flight[change.id] = change
            by_id[change.id] = size
            self.held += size

    def _drop(self, change_id):
        """
        @return: the change of that id, no longer in flight (or C{None}).
        """
        change = self.in_flight.pop(change_id, None)
        if change is not None:
            self.held -= self._sizes.pop(change_id, 0)
        return change

    def settle(self, change, write):
        if self.in_flight.get(change.id) is not change:
            return  # lost, already settled, or claimed again since (a newer claim's)
        self._drop(change.id)
        if self.pacer is not None and write[0] != "unclaim":  # given back: not processed
            self.pacer.settled(bool(self.in_flight))
        kind, token, _, delay, reason = write
        self._owed.append((kind, token, Settled(change), delay, reason))
        if self.runs is not None:
            self.runs.settled(change, kind)
        if kind != "ack" or len(self._owed) >= ACK_BATCH:
            if self._next is None:  # else the write waiting takes this too
                self.flush()
        elif self._timer is None:
            self._timer = self.clock.callLater(ACK_DELAY, self.flush)

    @property
    def owed(self):
        return len(self._owed)

    def flush(self):
        """
        Write what is owed, if a connection is there to write it on, after
        any write already under way (writes never overlap, so a caller
        closing the connection after this Deferred closes it on nothing).

        @return: a Deferred firing once the writes are done (or failed:
            they stay owed).
        """
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        done = defer.Deferred()
        if self._next is not None:
            self._next.append(done)
        else:
            self._next = [done]
            self._writes.run(self._write_next)
        return done

    def _write_next(self):
        waiting, self._next = self._next, None

        def finished(result):
            if isinstance(result, Failure):
                self.log.failure("writing what the outbox is owed failed", result)
            for done in waiting:
                done.callback(None)

        return defer.maybeDeferred(self._write_owed).addBoth(finished)

    def _write_owed(self):
        if not self._owed or self.writer is None:
            return None
        owed, self._owed = self._owed, []

        def lost(failure):
            # The connection went: write these on the next one.
            self._owed[:0] = owed
            if not is_connection_error(failure.value):
                return failure  # a bug: logged by the flush
            return None

        return self.writer(owed).addCallbacks(self._written, lost, callbackArgs=(owed,))

    def _written(self, outcome, owed):
        acked, released, dead, failed, missed = outcome
        if self.runs is not None:
            # what an acknowledgement or a dead letter let go on (or not)
            undone = {settled.id for writes, _ in failed for _, _, settled, _, _ in writes}
            written = self.runs.written
            for kind, _, settled, _, _ in owed:
                if kind in ("ack", "dead") and settled.id not in undone:
                    written(settled, kind, settled.id not in missed)
        for name, topics in (("acked", acked), ("released", released), ("dead", dead)):
            self.counts[name] += sum(topics.values())
            self.by_topic[name].update(topics)
        if not failed:
            if not self._later and self._later_timer is None:
                self._later_backoff.reset()
            return
        # A statement that failed for another reason than a lost connection
        # (a missing grant, a statement timeout) is tried again alone, later:
        # what it owes is never dropped, and it does not hold up the others.
        for writes, _ in failed:
            self._later.extend(writes)
        if self._later_timer is None:
            delay = self._later_backoff.next_delay()
            self._later_timer = self.clock.callLater(delay, self._again)
            more = self._failure_lines.allow()
            if more is not None:
                writes, error = failed[0]
                self.log.warn(
                    "writing {n} outbox outcome(s) failed: {error}; trying again in {delay:.2g} s"
                    "{more}", n=sum(len(w) for w, _ in failed), error=one_line(error),
                    delay=delay, more=more)

    def _again(self):
        self._later_timer = None
        later, self._later = self._later, []
        self._owed[:0] = later
        self.flush()

    def lost(self, ids):
        """
        Claims that expired before their changes were settled (another
        consumer may deliver them again).
        """
        for change_id in ids:
            change = self._drop(change_id)
            if change is not None:
                self.counts["lost"] += 1
                self.by_topic["lost"][change.topic] += 1
                if self.runs is not None:
                    self.runs.lost(change)
        if not self.in_flight and self.pacer is not None:
            self.pacer.idle()

    def forget_all(self):
        """
        @return: the changes in flight, which are no longer ours to settle.
        """
        changes = list(self.in_flight.values())
        self.in_flight.clear()
        self._sizes.clear()
        self.held = 0
        if self.pacer is not None:
            self.pacer.idle()
        if self.runs is not None:
            self.runs.clear()
        return changes

    def cancel(self):
        for timer in (self._timer, self._later_timer):
            if timer is not None and timer.active():
                timer.cancel()
        self._timer = self._later_timer = None
        self._owed[:0] = self._later
        self._later = []
