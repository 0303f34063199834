# -*- test-case-name: tests.test_outbox_run,tests.test_outbox_consumer -*-
"""
L{ConsumeRun}: one connection's life of an
L{hermes_tx.outbox.consumer.OutboxConsumer}: connect, LISTEN for wake-ups,
then claim, keep claims alive and write what the processor's outcomes owe,
until the connection is lost or the consumer stops.

The connection's lifecycle (connecting, working, draining for a stop,
closed) is L{hermes_tx.sources.run.ConnectionRun}'s state machine, whose
session puts a deadline on every query; when to claim is a
L{hermes_tx.outbox.pump.ClaimPump}.  This run owns the timers of its
working state: the poll, the claims' extension (at most one in flight),
the liveness probe, a claim when the changes it released come due again
(one per retry generation), and the next turn on which a claim's changes
go to the processor (queued from inside the claim's answer, they would
wake the processor, which would work through them before the claim ahead
is sent).  A claim whose answer was lost with the connection is not the
consumer's problem: its rows are claimed by a backend that is gone, which
any consumer may take over at once (L{hermes_tx.outbox.sql.claim}).

A claim or an extension that the server cut short (the role's
C{statement_timeout}: L{hermes_tx.postgres.cut}) costs no reconnect (that
would give up every claim the connection's backend holds): one line (at
most one every L{CUT_LINE_SECONDS} seconds), and it is tried again after
a delay that grows while statements keep being cut.  (Halving the next
claims' size after a cut was tried: it did not cut fewer claims nor drain
faster, bench/README.rst.)  Any other error of a statement is a lost
connection, retried on the component's backoff.
"""

import uuid
from collections import Counter

from twisted.internet import defer

from hermes_tx.events import Change
from hermes_tx.exceptions import ConnectionLostError
from hermes_tx.outbox.claims import Claim
from hermes_tx.outbox.pump import ClaimPump
from hermes_tx.outbox.writes import id_array, write_owed
from hermes_tx.postgres.cut import describe_cut, is_cut
from hermes_tx.postgres.liveness import LivenessProbe
from hermes_tx.runtime.backoff import Backoff, backoff_policy
from hermes_tx.runtime.breaker import CLOSED, HALF_OPEN, OPEN
from hermes_tx.runtime.timers import Timers
from hermes_tx.sources.run import ConnectionRun
from hermes_tx.postgres.channels import listen_statement

CONNECTING, STARTING, CONSUMING = "connecting", "starting", "consuming"


#: full claims not followed ahead after a claim ahead came back short
SKIP_AHEAD = 8

#: a claim made less than this many seconds ago means changes are flowing:
#: the next one for a wake-up or after acknowledgements waits
#: C{claim_linger}, unless a backlog is being drained (see
#: L{ConsumeRun._claim_soon})
FLOWING = 0.1


#: at most one line about statements cut short in this many seconds
CUT_LINE_SECONDS = 10.0

#: a claim or extension cut short is tried again after 0.05 s, doubling
#: while they keep being cut, at most 5 s
CUT_RETRY = backoff_policy(initial=0.05, factor=2.0, max_delay=5.0, jitter=None)

#: seconds after a released change's delay before the claim made for it.
#: The server counted the delay from the release's start (now()), the
#: consumer counts it from the release's answer, later: the change is due
#: by then.  A millisecond for timers and clocks (with 10 ms each retry of
#: a key waited 10 ms more: the Elasticsearch drain with 429s went from
#: 0.62x to 0.66x, one run of five rounds each).
RELEASE_MARGIN = 0.001


def _claim_delays(delays):
    """
    @param delays: the retry delays of changes released together, in
        seconds, each jittered (up to a tenth shorter than its schedule's).
    @return: when to claim for them: the longest delay of each band of
        delays within an eighth of the band's shortest (a retry's
        generation: every change of it due by then), one claim per band
        rather than one per change.
    """
    bands = []
    for delay in sorted(delays):
        if bands and delay <= bands[-1][0] * 1.125:
            bands[-1][1] = delay
        else:
            bands.append([delay, delay])
    return [longest for _, longest in bands]


def _changes(rows, claim):
    """
    @return: the L{Change}s of a claim's rows (their data is decoded when a
        processor first asks for it) and the bytes of each one's payload.
    """
    return ([Change(id_, topic, key, attempts, created_at, payload, claim=claim)
             for id_, topic, key, attempts, created_at, payload, _ in rows],
            [size for *_, size in rows])


class ConsumeRun(ConnectionRun):
    """
    One connection's life: connect, check it is a primary, LISTEN for
    wake-ups, then claim, extend and write until lost or stopped.

    @ivar state: C{"connecting"}, C{"starting"} (connected, its first
        claim not answered yet: a claim refused for a missing grant or a
        read-only role ends the connection, so it is not ready yet),
        C{"consuming"}, C{"stopping"} or C{"ended"}.
    """

    purpose = "claiming"
    working_state = CONSUMING

    def __init__(self, consumer):
        ConnectionRun.__init__(self, consumer)
        self.consumer = consumer
        self.pump = ClaimPump(self._claim_once)
        self._timers = Timers(consumer.clock)
        self._probe = None
        self._extending = None  # the extension in flight, if any
        self._check = None  # the ListenCheck of the wake-ups' LISTEN
        self._own_pid = None
        self._ahead = False  # the next claim is made ahead of the acks
        self._last_claim = None  # when the last claim was made
        self._backlog = False  # the last claim brought at least half of what it asked
        self._skip_ahead = 0  # full claims not to follow ahead (see _claimed)
        self._cut_retry = Backoff(CUT_RETRY)  # statements cut short in a row
        self._handing = []  # claimed changes for the processor on the next turn
        self._answered = False  # a claim of this connection came back

    @property
    def state(self):
        state = super().state
        return STARTING if state == CONSUMING and not self._answered else state

    def listen_statement(self):
        private = self.consumer.hearing.channel
        channels = [self.consumer.channel] + ([private] if private is not None else [])
        return listen_statement(channels)

    def notifies(self, batch):
        batch = self.consumer.hearing.sift(batch, self._check, self._own_pid)
        # A wake-up: its payload is a topic with new changes.
        topics = self.consumer.topics
        if any(n.payload in topics for n in batch):
            self._claim_soon()

    def start_working(self, session):
        consumer = self.consumer
        consumer.ledger.writer = self._write
        away = consumer.back_since(consumer.clock.seconds())
        if away is None or away >= 1.0:
            consumer.log.info(
                "{ident}: consuming outbox topics {topics}",
                ident=consumer.ident, topics=", ".join(repr(t) for t in consumer.topics),
            )
        self._timers.every("poll", consumer.poll_interval, self.pump.want)
        self._timers.every("extend", consumer.visibility_timeout / 3.0, self._extend)
        if consumer.liveness_timeout is not None:
            self._probe = LivenessProbe(
                consumer.clock, lambda: session.query("SELECT 1"), self._probe_unanswered,
                interval=consumer.liveness_interval, timeout=consumer.liveness_timeout,
                activity=lambda: session.last_activity,
            )
            self._probe.start()
        self._check = consumer.hearing.check()
        if self._check is not None:
            self._own_pid = session.conn.get_backend_pid()
        written = consumer.ledger.flush()
        if consumer.ledger.in_flight:
            # Claims the processor still works on were last extended on the
            # lost connection, maybe most of a timeout ago: now, not in a
            # third of one (this also takes them over for this backend).
            self._extend()
        # The first claim once what the last connection owed is written:
        # what was given back (hermes_tx.outbox.runs) goes back first.
        written.addCallback(lambda _: self.pump.want())

    def _probe_unanswered(self):
        self.lose(ConnectionLostError(
            f"no answer to the liveness probe within {self.consumer.liveness_timeout:g} s"))

    def stop_working(self):
        self._timers.stop()
        # What the last claim brought and the processor has not had yet goes
        # to it now (a stopping consumer gives it back).
        self._hand_on()
        if self._check is not None:
            self._check.stop()
        if self._probe is not None:
            self._probe.stop()
            self._probe = None
        ledger = self.consumer.ledger
        if ledger.writer == self._write:
            ledger.writer = None
        # Claims whose backend is gone may be taken over: what waits behind
        # a key's change goes back (written on the next connection).
        self.consumer.runs.give_back_waiting()
        ledger.cancel()  # what is owed is written on the next connection

    def drain(self):
        # Wait for the claim in flight (what it took is given back), then
        # write what is owed, writes waiting to be tried again included:
        # the stop closes the connection on nothing.
        def write_all(_):
            self.consumer.ledger.cancel()
            return self.consumer.ledger.flush()

        return self.pump.stop().addBoth(write_all)

    def claim(self):
        """
        Claim now if there is room (the processor's circuit closed again).
        """
        self.pump.want()

    def _claim_soon(self, acknowledged=False):
        """
        Claim for a wake-up or after acknowledgements: at once after a quiet
        spell, but within a steady flow of changes a little later
        (C{claim_linger}), so that one claim takes what several commits
        wrote and the server works once for them.  After acknowledgements
        while the last claim brought at least half of what it asked for (a
        backlog: the changes are there already, only their keys were
        busy), at once: lingering would add to every key's every change.

        @param acknowledged: the claim is for acknowledgements written.
        """
        consumer = self.consumer
        linger = consumer.claim_linger
        last = self._last_claim
        flowing = last is not None and consumer.clock.seconds() - last < FLOWING
        if linger and flowing and not (acknowledged and self._backlog):
            self._timers.once("linger", linger, self.pump.want)
        else:
            self.pump.want()

    # -- claiming -------------------------------------------------------------

    def _claim_once(self):
        """
        Make one claim, if there is room for one (the pump calls it).

        @return: C{None} when no claim was made, else a Deferred firing,
            once its rows are queued, with True to claim again at once.
        """
        if not self.is_working:
            return None
        consumer = self.consumer
        breaker = consumer.breaker
        if breaker is not None and breaker.state != CLOSED:
            if breaker.state != HALF_OPEN or consumer.ledger.in_flight:
                return None  # open: nothing; probing: one batch at a time
        room = self._room(breaker)
        if room is None:
            return None
        room, budget, first = room
        ahead, self._ahead = self._ahead, False
        self._last_claim = consumer.clock.seconds()
        token = str(uuid.uuid4())
        params = (consumer.topics, room, token, consumer.visibility_timeout, budget, first)
        d = self.session.query(consumer.statements["claim"], params)
        d.addCallbacks(self._claimed, self._claim_failed,
                       (Claim(consumer.ledger, token), room, ahead),
                       errbackArgs=(room, budget))
        d.addErrback(self._query_failed)
        return d

    def _room(self, breaker):
        """
        @return: C{(changes, budget, first)}: how many changes to claim now,
            the bytes of payloads they may bring and whether the first may
            bring more (L{hermes_tx.outbox.budget.ByteBudget.next_claim});
            or C{None} for no claim.
        """
        consumer = self.consumer
        queue = consumer.queue
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
            space = queue.maxsize - len(queue.pending) - len(self._handing)
            if space <= 0 < room and self._handing:
                # What the last claim brought is queued on the next turn:
                # ask again after that.
                self._timers.once("room", 0, self.pump.want)
                return None
            if space <= 0 < room:
                # The queue is what is full: claim once it has room.
                queue.on_space(self.pump.want)
                return None
            room = min(room, space)
        if room <= 0 or (room < batch // 2 and in_flight >= batch):
            return None
        # Never more bytes than the bound leaves: wait for acknowledgements
        # (their claim comes) while too little of it is free.
        fits = consumer.budget.next_claim(consumer.ledger.held, in_flight)
        if fits is None:
            return None
        budget, rows, first = fits
        return min(room, rows), budget, first

    def _claimed(self, rows, claim, limit, ahead):
        consumer = self.consumer
        changes, sizes = _changes(rows, claim)
        # The rows past the byte budget came without their payload: give
        # them back at once (their delivery not counted).
        cut = [change for change in changes if change.payload is None]
        consumer.budget.seen(sizes, [size for _, size in sorted(
            (change.id, size) for change, size in zip(changes, sizes) if change.payload is None)])
        if cut:
            kept = [i for i, change in enumerate(changes) if change.payload is not None]
            changes, sizes = [changes[i] for i in kept], [sizes[i] for i in kept]
            consumer.ledger.add_many(cut, [0] * len(cut))
            consumer.hand_back(cut)
        if self.is_working:
            self._answered = True
            self.on_ready()  # claims work: the next loss retries after the shortest delay
            self._cut_retry.reset()
            consumer.prime_figures(self.session)
            if self._check is not None and self._check.state == "stopped":
                # The first probe after the first claim, not with it: through
                # a proxy a notification that arrives while a query of ours
                # is under way gets through, and would prove nothing.
                self._check.start()
        breaker = consumer.breaker
        if not self.is_working or (breaker is not None and breaker.state == OPEN):
            # A claim that came back after the stop began (or the
            # connection's end), or after the processor's circuit opened:
            # nothing of it was handed out; give it all back (attempt not
            # counted), with the stop's last write, rather than leave the
            # keys blocked until the claims expire or the circuit closes.
            consumer.ledger.add_many(changes, sizes)
            consumer.hand_back(changes)
            return False
        consumer.ledger.add_many(changes, sizes)
        self._backlog = len(rows) >= max(1, limit // 2)
        if changes:
            consumer.pacer.claimed()
            claimed = consumer.claimed
            for topic, count in Counter(c.topic for c in changes).items():
                claimed[topic] = claimed.get(topic, 0) + count
            # One change of a key at a time to the processor: the others of
            # a run wait behind it (hermes_tx.outbox.runs).  Queued on the
            # next turn: queueing wakes a waiting processor, which would work
            # through the batch before this returns, and only then would the
            # claim ahead be sent; this way the server works on the next
            # claim while the processor works on this one.
            self._handing.extend(consumer.runs.admit(changes))
            self._timers.once("hand-on", 0, self._hand_on)
        # Claiming ahead (the next batch while the processor works on this
        # one) pays while claims keep coming back full; with few keys every
        # head is soon in flight and a claim ahead walks them all for
        # nothing: after one that comes back short, the next few full
        # claims are not followed ahead (the acknowledgements claim next).
        if ahead and len(rows) < limit // 2:
            self._skip_ahead = SKIP_AHEAD
        if not changes or (len(rows) < limit and not cut):
            return False  # nothing more, or nothing more that fits now
        if self._skip_ahead:
            self._skip_ahead -= 1
            return False
        self._ahead = True
        return True

    def _hand_on(self):
        handing, self._handing = self._handing, []
        self.consumer.hand_on(handing)

    def _query_failed(self, failure):
        self.lose(failure.value)
        return False

    def _claim_failed(self, failure, rows, budget):
        error = failure.value
        if is_cut(error) and self.is_working:
            # The same claim again, after the cuts' delay: asking for fewer
            # rows after a cut was measured not to help (bench/README.rst).
            self._cut("a claim", error, "claiming", self.pump.want)
            return False
        # No answer: its rows may have been too big to come in time.
        self.consumer.budget.lost(rows, budget)
        return self._query_failed(failure)

    def _cut(self, what, error, doing, again):
        """
        A statement of ours was cut short by the server: no reconnect; one
        line (rate-limited), and C{again} after the cuts' delay.
        """
        consumer = self.consumer
        delay = self._cut_retry.next_delay()
        self._timers.once(f"cut-{doing}", delay, again)
        more = consumer.cut_lines.allow()
        if more is not None:
            consumer.log.warn(
                "{ident}: {what} was cut short by the server: {cause}; {doing} again in "
                "{delay:.2g} s, on the same connection (is the role's statement_timeout shorter "
                "than the outbox's statements take?){more}",
                ident=consumer.ident, what=what, cause=describe_cut(error), doing=doing,
                delay=delay, more=more)

    # -- keeping claims and writing what is owed --------------------------------

    def _extend(self):
        if self._extending is not None or not self.is_working:
            return  # at most one extension in flight
        consumer = self.consumer
        by_token = {}
        for change in consumer.ledger.in_flight.values():
            by_token.setdefault(change.claim.token, []).append(change.id)
        if not by_token:
            return
        statements = []
        for token, ids in by_token.items():
            d = self.session.query(consumer.statements["extend"],
                                   (id_array(ids), token, consumer.visibility_timeout))
            d.addCallback(self._extended, ids, token)
            statements.append(d)
        self._extending = defer.gatherResults(statements, consumeErrors=True)
        self._extending.addErrback(lambda f: self._extend_failed(f.value.subFailure))
        self._extending.addBoth(self._extension_over)

    def _extend_failed(self, failure):
        if is_cut(failure.value) and self.is_working:
            self._cut("extending claims", failure.value, "extending", self._extend)
            return None
        return self._query_failed(failure)

    def _extension_over(self, _):
        self._extending = None

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

        @return: a Deferred firing with C{(acked, released, dead, failed,
            missed)}.
        """
        def written(result):
            acked, released, dead, _, _ = result
            if acked or dead:
                # Changes that left the outbox may have been holding back
                # the next changes of their keys: claim those now, not at
                # the next poll.
                self._claim_soon(acknowledged=True)
            if released:
                # A released change is claimable again once its delay has
                # passed: claim then, not at the next poll after it; each
                # delay its claim (one due later than another is not lost
                # when the sooner fires: at the end of a drain nothing else
                # would claim it before the poll).
                for delay in _claim_delays(d for kind, _, _, d, _ in owed if kind == "release"):
                    self._timers.each("released", delay + RELEASE_MARGIN, self.pump.want)
            return result

        return write_owed(self.session, self.consumer, owed).addCallback(written)
