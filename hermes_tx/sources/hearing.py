# -*- test-case-name: tests.test_listencheck,tests.test_listencheck_pg -*-
"""
L{Hearing}: what a source knows of whether its LISTEN hears, across its
connections: the verdicts of each run's L{ListenCheck}, the lines they
log, and the private channel the checks use.

The listener and the outbox consumer both LISTEN (on the user's channels;
on the outbox's wake-up channel) and both keep one L{Hearing}.  A deaf
listener is not ready (nothing it LISTENs for arrives); a deaf outbox
consumer only polls (its changes still come, every C{poll_interval}), and
says so.
"""

from collections import Counter
from operator import attrgetter

from twisted.logger import Logger

from hermes_tx.connectors import PostgresConnector
from hermes_tx.runtime.loglimit import LogLimit
from hermes_tx.sources.listencheck import (
    ListenCheck,
    new_connection_sender,
    private_channel,
    sift,
)

#: seconds between two log lines about listen-check probes that failed
PROBE_FAILED_EVERY = 600.0

#: what a deaf LISTEN's log line and readiness add: the usual cause
DEAF_HINT = ("a transaction-pooling proxy (pgbouncer pool_mode=transaction) is the usual "
             "cause: connect directly or through session pooling")

_channel_of = attrgetter("channel")


class Hearing:
    """
    @ivar channel: the private channel of the listen checks, or C{None}
        when there is no check.
    @ivar deaf: why the last probe says the LISTEN hears nothing (and the
        usual cause), or C{None}.
    @ivar probes: probes by outcome (C{heard}, C{deaf}, C{failed}), for
        metrics.
    """

    log = Logger()

    def __init__(self, source, channels, timeout=5.0, interval=30.0, probe=None,
                 deaf_means="LISTEN hears nothing"):
        """
        @param source: the component (its C{ident}, C{clock} and
            C{pg_connector}).
        @param channels: the channels it LISTENs on (the private one is
            none of them).
        @param timeout: seconds a probe may take to be sent, then to come
            back (C{None}: no check).
        @param interval: seconds between probes while nothing else shows
            the LISTEN hears.
        @param probe: C{send(channel, payload)} returning a Deferred;
            C{None}: a new, short-lived connection per probe when the source
            has a real connector (L{new_connection_sender}), else no check.
        @param deaf_means: the start of the line a deaf verdict logs.
        """
        self.source = source
        self.timeout = timeout
        self.interval = interval
        if probe is None and isinstance(source.pg_connector, PostgresConnector):
            probe = new_connection_sender(source.pg_connector, timeout)
        self.probe = probe
        checked = timeout is not None and probe is not None
        self.channel = private_channel(channels) if checked else None
        self.deaf = None
        self.probes = Counter()
        self.deaf_means = deaf_means
        self._failed_lines = LogLimit(source.clock, 1, PROBE_FAILED_EVERY)

    def check(self):
        """
        @return: a new L{ListenCheck} for one run (one connection), or
            C{None} when there is no check.
        """
        if self.channel is None:
            return None
        return ListenCheck(self.source.clock, self.probe, self.channel, self.heard, self.deafened,
                           self.unproven, interval=self.interval, timeout=self.timeout)

    def sift(self, batch, check, own_pid):
        """
        Take the check's probes out of a batch of notifications (they are
        never the processor's) and tell the check what arrived.

        @param own_pid: the listening connection's backend pid.
        @return: the rest of the batch (possibly empty).
        """
        if self.channel is not None and self.channel in map(_channel_of, batch):
            batch, payloads = sift(batch, self.channel)
            if check is not None:
                for payload in payloads:
                    check.received(payload)
        if check is not None and batch and batch[-1].pid != own_pid:
            check.others_heard()
        return batch

    # -- the verdicts (called by the checks) -----------------------------------

    def heard(self):
        """A probe came back: the LISTEN hears."""
        self.probes["heard"] += 1
        if self.deaf is not None:
            self.deaf = None
            self.log.info("{ident}: LISTEN hears again (a probe notification came back)",
                          ident=self.source.ident)

    def deafened(self, reason):
        """A probe did not come back: one line, the first time."""
        self.probes["deaf"] += 1
        if self.deaf is None:
            self.deaf = f"{reason}; {DEAF_HINT}"
            self.log.warn("{ident}: {means}: {deaf}", ident=self.source.ident,
                          means=self.deaf_means, deaf=self.deaf)

    def unproven(self, reason):
        """A probe could not be sent: that says nothing about the LISTEN."""
        self.probes["failed"] += 1
        more = self._failed_lines.allow()
        if more is not None:
            self.log.warn("{ident}: could not check that LISTEN hears: {reason}{more}",
                          ident=self.source.ident, reason=reason, more=more)
