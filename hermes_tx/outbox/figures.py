# -*- test-case-name: tests.test_outbox_figures -*-
"""
L{Figures}: the outbox's per-topic figures for C{/metrics} (pending, in
flight, the lag, dead letters), read on the consumer's connection when
someone asks, at a cost that does not grow with the backlog.

They are read once the consumer's first claim worked (so that the first
scrape has them), then when asked for (a scrape), at most once every
C{every} seconds, one read at a time, and never cost the consumer its
connection: a read that fails (a short C{statement_timeout}, a missing
grant) leaves the last figures and one line in the log.  Counts are exact
up to L{hermes_tx.outbox.sql.FIGURES_CAP} per topic and estimated above it
from the planner's statistics (the schema's C{figures()} function);
C{hermes-tx status} counts everything.
"""

from twisted.internet import defer

from hermes_tx.exceptions import one_line
from hermes_tx.outbox import sql
from hermes_tx.postgres.cut import describe_cut, is_cut
from hermes_tx.runtime.loglimit import LogLimit
from hermes_tx.strategies import is_connection_error


class Figures:
    """
    @ivar last: a dict of topic to C{(pending, in_flight, oldest_age,
        dead_letters)} from the last read (empty before the first).
    @ivar read_at: clock time of the last read, or C{None}.
    """

    def __init__(self, clock, schema, topics, every, log, cap=sql.FIGURES_CAP):
        """
        @param every: seconds a read is good for; C{None}: never read.
        @param log: where a failed read is said (a C{Logger}).
        """
        self.clock = clock
        self.topics = list(topics)
        self.every = every
        self.cap = cap
        self.log = log
        self.last = {}
        self.read_at = None
        self._statement = sql.figures(schema)
        self._reading = None  # the read in flight
        self._failures = LogLimit(clock, 1, 60.0)

    def current(self, session=None):
        """
        @param session: the consumer's session while it consumes, else
            C{None}.
        @return: the last figures; when they are older than C{every}, a new
            read begins on C{session} (for the next time).
        """
        stale = self.read_at is None or self.clock.seconds() - self.read_at >= self.every
        if self.every and stale and session is not None and self._reading is None:
            self._reading = self.read(session)
            self._reading.addBoth(self._done)
        return self.last

    def prime(self, session):
        """
        Read the figures on C{session} if they were never read, so that the
        first scrape has them.
        """
        if self.read_at is None:
            self.current(session)

    def _done(self, _):
        self._reading = None

    @defer.inlineCallbacks
    def read(self, session):
        """
        Read the figures now.

        @return: a Deferred firing with them once read (failures are logged
            and give the last figures).
        """
        try:
            rows = yield session.query(self._statement, (self.topics, self.cap))
            figures = {topic: (pending, in_flight, oldest_age, dead)
                       for topic, pending, in_flight, oldest_age, dead, _ in rows}
        except Exception as error:
            # A failed read waits as long as a good one before the next.
            self.read_at = self.clock.seconds()
            if not is_connection_error(error):
                more = self._failures.allow()
                if more is not None:
                    cause = describe_cut(error) if is_cut(error) else one_line(error)
                    self.log.warn("reading the outbox's figures for /metrics failed: {error}"
                                  "{more}", error=cause, more=more)
            return self.last
        self.last = figures
        self.read_at = self.clock.seconds()
        return figures
