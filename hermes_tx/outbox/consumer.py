# -*- test-case-name: tests.test_outbox_consumer -*-
"""
L{OutboxConsumer}: claim outbox changes and hand them to the processor.

It is a source, as the listener is: a component whose runs (one per
connection) put events on the Client's queue.  Each run LISTENs on the
schema's wake-up channel, claims batches with C{FOR UPDATE SKIP LOCKED}
(L{hermes_tx.outbox.sql.claim}: per-key order across every consumer) when
woken, every C{poll_interval} seconds, at once while a claim comes back
full and after acknowledgements (the next changes of their keys may be
claimable now); it never claims more than the queue has room for, nor
more bytes of payloads than its bound leaves (L{hermes_tx.outbox.budget}), never
holds a transaction open while the processor works, keeps its claims alive
(C{extend}) while they are in flight, and writes what the processor's
outcomes owe (L{hermes_tx.outbox.claims}).  Any number of consumers, in any
number of processes, share a topic's work.
"""

import psycopg2.extensions
from twisted.logger import Logger

from hermes_tx.events import Change
from hermes_tx.exceptions import InvalidConfigurationException
from hermes_tx.outbox import privileges, sql
from hermes_tx.outbox.budget import DEFAULT_MAX_BYTES, ByteBudget
from hermes_tx.outbox.claims import FIRST_RETRY, LONGEST_RETRY, MAX_RETRY_AFTER, Ledger, change_retry
from hermes_tx.outbox.figures import Figures
from hermes_tx.outbox.pacing import HORIZON, ClaimPacer
from hermes_tx.outbox.run import CONSUMING, CUT_LINE_SECONDS, STARTING, ConsumeRun
from hermes_tx.outbox.runs import KeyRuns
from hermes_tx.runtime.loglimit import LogLimit
from hermes_tx.sources.component import ConnectedComponent
from hermes_tx.sources.hearing import Hearing
from hermes_tx.outbox.names import DEFAULT_SCHEMA, channel, validate_schema, validate_topic


class OutboxConsumer(ConnectedComponent):
    """
    Claims changes of C{topics} and queues them as L{Change} events.  It
    owns its connector's connection: do not share the connector.

    @ivar ledger: the L{hermes_tx.outbox.claims.Ledger} of changes in
        flight and writes owed.
    @ivar pacer: the L{hermes_tx.outbox.pacing.ClaimPacer} saying how many
        changes to hold in flight.
    @ivar budget: the L{hermes_tx.outbox.budget.ByteBudget} saying how many
        bytes of payloads the next claim may bring.
    @ivar runs: the L{hermes_tx.outbox.runs.KeyRuns} handing the processor
        one change of a key at a time.
    @ivar claimed: changes claimed so far, by topic (for metrics).
    """

    log = Logger()

    def __init__(
        self,
        pg_connector,
        topics,
        notif_queue=None,
        schema=DEFAULT_SCHEMA,
        poll_interval=1.0,
        visibility_timeout=30.0,
        max_attempts=10,
        retry_delay=FIRST_RETRY,
        max_retry_delay=LONGEST_RETRY,
        batch_size=500,
        max_in_flight=None,
        max_in_flight_bytes=DEFAULT_MAX_BYTES,
        claim_horizon=HORIZON,
        stats_interval=5.0,
        liveness_timeout=10.0,
        liveness_interval=1.0,
        listen_check_timeout=5.0,
        listen_check_interval=30.0,
        listen_probe=None,
        claim_linger=0.01,
        error_strategy=None,
        error_queue=None,
        backoff_limit=16,
        clock=None,
        queue=None,
    ):
        """
        @param pg_connector: a L{hermes_tx.connectors.PostgresConnector}.
        @param topics: a topic name or a list of them.
        @param notif_queue: the seed's name of C{queue}.
        @param queue: where L{Change}s go (the Client wires its queue).
        @param schema: the outbox's schema (C{hermes-tx install --schema}).
        @param poll_interval: seconds between claims while nothing wakes the
            consumer (the fallback for a missed wake-up).
        @param visibility_timeout: seconds a claim lasts; it is extended
            every third of it while the change is in flight, so only a dead
            consumer loses its claims.
        @param max_attempts: deliveries after which a failing change moves
            to the dead letters.
        @param retry_delay: seconds before a failed change's first retry
            (later changes of its key wait for it); each further retry
            waits three times longer.
        @param max_retry_delay: the longest of those delays, in seconds
            (a C{Retry(retry_after=...)} may still ask for longer).
        @param batch_size: the most changes one claim takes.
        @param max_in_flight: the most changes held (claimed, not yet
            settled) at once, so that other consumers share the work;
            C{None}: twice C{batch_size}.
        @param max_in_flight_bytes: the most bytes of payloads (their JSON
            text, UTF-8) held in flight at once, the driver's copy of a
            claim as it arrives included: each claim takes at most half of
            what is free (L{hermes_tx.outbox.budget}); with nothing in
            flight one change comes whatever its size.  Default 64 MiB.
        @param claim_horizon: hold about this many seconds of the
            processor's work (measured), between twice its C{max_batch} and
            C{max_in_flight}, so that consumers in other processes share a
            slow processor's work (L{hermes_tx.outbox.pacing}); C{None}:
            always up to C{max_in_flight}.
        @param stats_interval: seconds the outbox's per-topic figures (for
            C{/metrics}, read when asked: L{figures}) are kept before they
            are read again; C{None}: never read.
        @param liveness_timeout: seconds any query (a claim, an
            acknowledgement, the liveness probe) may go unanswered before the
            connection is declared dead and made again (C{None}: no limit,
            no probe).
        @param liveness_interval: seconds without any answer after which a
            liveness probe (C{SELECT 1}) is sent.
        @param listen_check_timeout: seconds a listen-check probe (proving
            that the wake-ups' LISTEN hears: L{hermes_tx.sources.hearing})
            may take to be sent, then to come back; C{None}: no check.  A
            deaf LISTEN (a transaction-pooling proxy) leaves the consumer
            polling only, which it says once.
        @param listen_check_interval: seconds between listen-check probes
            while nothing else shows the LISTEN hears.
        @param claim_linger: seconds a claim for a wake-up (or after
            acknowledgements) waits while changes keep flowing (a claim was
            made within the last 0.1 s), so that one claim takes what
            several commits wrote; after a quiet spell claims are made at
            once, and after acknowledgements too while the last claim
            brought at least half of what it asked for (a backlog).  0:
            never wait.
        @param listen_probe: what sends each probe (see
            L{hermes_tx.sources.hearing.Hearing}); C{None}: a new,
            short-lived connection per probe.
        @raise InvalidConfigurationException: no topic, or a bad one.
        """
        ConnectedComponent.__init__(
            self, pg_connector, notif_queue, queue=queue, error_strategy=error_strategy,
            error_queue=error_queue, backoff_limit=backoff_limit, clock=clock,
        )
        topics = [topics] if isinstance(topics, str) else list(topics or ())
        if not topics:
            raise InvalidConfigurationException("at least one topic is required")
        self.topics = [validate_topic(t) for t in dict.fromkeys(topics)]
        for value, name in ((poll_interval, "poll_interval"), (visibility_timeout, "visibility_timeout")):
            if not value > 0:
                raise InvalidConfigurationException(f"{name} must be more than 0")
        if max_attempts < 1 or batch_size < 1:
            raise InvalidConfigurationException("max_attempts and batch_size must be at least 1")
        if not 0.01 <= retry_delay <= max_retry_delay <= MAX_RETRY_AFTER:
            raise InvalidConfigurationException(
                "retry_delay must be from 0.01 s to max_retry_delay, and max_retry_delay at most a day")
        if not max_in_flight_bytes >= 1:
            raise InvalidConfigurationException("max_in_flight_bytes must be at least 1")
        self.schema = validate_schema(schema)
        self.channel = channel(schema)
        self.poll_interval = poll_interval
        self.visibility_timeout = visibility_timeout
        self.batch_size = batch_size
        self.max_in_flight = max_in_flight or 2 * batch_size
        # The statements read rows by position: plain tuples cost a sixth
        # of DictCursor's rows (1.2 ms per 500 rows).  The consumer owns
        # its connector.
        pg_connector.cursor_factory = psycopg2.extensions.cursor
        self.stats_interval = stats_interval
        self.liveness_timeout = liveness_timeout
        self.liveness_interval = liveness_interval
        self.claim_linger = claim_linger
        #: whether the wake-ups' LISTEN hears (the listen checks' verdicts)
        self.hearing = Hearing(
            self, [self.channel], listen_check_timeout, listen_check_interval, listen_probe,
            deaf_means=f"wake-ups are not heard, polling only (every {poll_interval:g} s)",
        )
        self.ledger = Ledger(self.clock, max_attempts=max_attempts,
                             retry_policy=change_retry(retry_delay, max_retry_delay))
        self.pacer = self.ledger.pacer = ClaimPacer(self.clock, self.max_in_flight, horizon=claim_horizon)
        self.budget = ByteBudget(max_in_flight_bytes)
        self.runs = self.ledger.runs = KeyRuns(self.hand_on, self.hand_back)
        self.claimed = {}
        self._figures = Figures(self.clock, self.schema, self.topics, stats_interval, self.log)
        self._dead_lines = LogLimit(self.clock, 5, 1.0)
        #: the lines about statements the server cut short (ConsumeRun)
        self.cut_lines = LogLimit(self.clock, 1, CUT_LINE_SECONDS)
        self.breaker = None  # the processor's circuit breaker (follow_breaker)
        self.statements = {
            name: getattr(sql, name)(schema)
            for name in ("ack", "release", "dead_letter", "extend", "unclaim")
        }
        # claims within the byte budget (rows past it come without payload)
        self.statements["claim"] = sql.claim_within(schema)

    @property
    def is_consuming(self):
        return self.state == CONSUMING

    def figures(self):
        """
        The outbox's per-topic figures for C{/metrics}
        (L{hermes_tx.outbox.figures}): the last ones read, read again in the
        background when older than C{stats_interval}.

        @return: a dict of topic to C{(pending, in_flight, oldest_age,
            dead_letters)}.
        """
        run = self.supervisor.run
        session = run.session if run is not None and self.is_consuming else None
        return self._figures.current(session)

    def prime_figures(self, session):
        """
        The first claim worked on C{session}: read the figures now if they
        were never read (L{hermes_tx.outbox.figures.Figures.prime}).
        """
        self._figures.prime(session)

    def stopService(self):
        """
        Stop claiming.  Changes claimed but still queued are taken out of
        the queue and given back (their attempt not counted); what the
        processor settled is written first.

        @return: a Deferred firing once the connection is closed.
        """
        self.give_back()
        return ConnectedComponent.stopService(self)

    def follow_breaker(self, breaker):
        """
        Claim according to the processor's circuit breaker (the Client
        wires it): nothing while it is open (what is held and not begun is
        given back at once, its attempts not counted), one processor batch
        while it probes, as usual once closed.

        @param breaker: a L{hermes_tx.runtime.breaker.Breaker}.
        """
        self.breaker = breaker
        breaker.add_observer(self)

    def breaker_opened(self, breaker):
        self.give_back()

    def breaker_half_open(self, breaker):
        self._claim_now()

    def breaker_closed(self, breaker):
        self._claim_now()

    def _claim_now(self):
        run = self.supervisor.run
        if run is not None and self.state in (STARTING, CONSUMING):
            run.claim()

    def describe_loss(self, error):
        """
        @return: one line for a lost connection; a missing grant names the
            right and the C{hermes-tx install --grant-consumer} that gives it
            (L{hermes_tx.outbox.privileges.explain_denied}); a missing
            function (an outbox installed by an older hermes_tx: this one
            claims with C{claim_runs()}, version 9) names the upgrade.
        """
        code = getattr(error, "pgcode", None)
        if code == "42501":
            role = getattr(self.pg_connector, "params", {}).get("user")
            return self._scrubbed("InsufficientPrivilege: " + privileges.explain_denied(
                error, privileges.CONSUMER, role, self.schema))
        line = ConnectedComponent.describe_loss(self, error)
        if code == "42883":  # undefined_function
            line += (f" (is the outbox in schema {self.schema!r} older than this hermes_tx?"
                     f" hermes-tx install upgrades it)")
        return line

    def dead_lettered(self, change, reason):
        """
        One line for a change moved to the dead letters (at most a few a
        second; the next line counts those left out).
        """
        more = self._dead_lines.allow()
        if more is None:
            return
        self.log.warn(
            "{ident}: outbox change {id} (topic {topic!r}, key {key!r}) moved to the dead letters "
            "after {n} attempt(s): {reason}{more}",
            ident=self.ident, id=change.id, topic=change.topic, key=change.key,
            n=change.attempts + 1, reason=reason, more=more,
        )

    def give_back(self, count=None):
        """
        Take changes this consumer claimed out of the queue, the last
        claimed first, and give them back to the outbox (their attempt not
        counted), for any consumer to claim.

        @param count: how many at most; C{None}: all of them.
        @return: how many were given back.
        """
        pending = getattr(self.queue, "pending", None)
        if not pending:
            return 0
        mine = []
        for event in reversed(pending):
            if count is not None and len(mine) >= count:
                break
            if type(event) is Change and getattr(event.claim, "ledger", None) is self.ledger:
                mine.append(event)
        if not mine:
            return 0
        taken = set(map(id, mine))
        kept = [e for e in pending if id(e) not in taken]
        pending.clear()
        pending.extend(kept)
        self.hand_back(reversed(mine))
        return len(mine)

    def hand_on(self, changes):
        """
        Queue claimed changes for the processor, or give them back once the
        consumer is stopping.
        """
        if not self.running:
            self.hand_back(changes)
        elif hasattr(self.queue, "put_many"):
            self.queue.put_many(changes)
        else:
            for change in changes:
                self.queue.put(change)

    def hand_back(self, changes):
        """
        Give claimed changes back to the outbox, their delivery not counted
        (never handed to the processor, or not begun).
        """
        for change in changes:
            change.claim.give_back(change)

    def new_run(self):
        return ConsumeRun(self)
