# -*- test-case-name: tests.test_liveness -*-
"""
L{LivenessProbe}: find a hung server or a half-open TCP connection.

An idle LISTEN connection sends nothing, so a backend that stopped
answering (SIGSTOP, a frozen host, a network path that silently drops
packets) looks healthy forever.  The probe runs a cheap query every
C{interval} seconds and declares the connection dead when one gets no answer
within C{timeout} seconds.  (txpostgres cannot time out a query itself:
C{addTimeout} on its Deferred does not abort the query.)
"""

from twisted.logger import Logger

from hermes_tx.postgres.cut import is_cut


class LivenessProbe:
    """
    Probes one connection until stopped or declared dead.
    """

    log = Logger()

    def __init__(self, clock, probe, on_dead, interval=1.0, timeout=10.0, activity=None):
        """
        @param clock: an C{IReactorTime} for both timers.
        @param probe: a callable returning a Deferred that fires when the
            server answered (for example C{lambda: conn.runQuery("SELECT 1")}).
        @param on_dead: called once, with no arguments, when a probe got no
            answer within C{timeout}.  Errors from the probe are not death:
            a lost connection is reported by the connection itself.
        @param interval: seconds from one answer to the next probe.
        @param timeout: seconds a probe may take.
        @param activity: C{None}, or a callable returning a value that
            changes whenever the connection shows it is alive (the time of
            the last notification): no probe is sent while it keeps changing.
        """
        self.clock = clock
        self.probe = probe
        self.on_dead = on_dead
        self.interval = interval
        self.timeout = timeout
        self.activity = activity
        self._last_activity = activity() if activity is not None else None
        self._next = None
        self._deadline = None
        self._stopped = True

    def start(self):
        self._stopped = False
        self._schedule()

    def stop(self):
        self._stopped = True
        for call in (self._next, self._deadline):
            if call is not None and call.active():
                call.cancel()
        self._next = self._deadline = None

    def _schedule(self):
        if not self._stopped:
            self._next = self.clock.callLater(self.interval, self._send)

    def _send(self):
        self._next = None
        if self.activity is not None:
            seen = self.activity()
            if seen != self._last_activity:
                # Notifications arrived since the last look: alive.
                self._last_activity = seen
                self._schedule()
                return
        self._deadline = self.clock.callLater(self.timeout, self._dead)
        d = self.probe()
        d.addCallbacks(self._answered, self._failed)

    def _answered(self, _):
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
            self._deadline = None
            if self.activity is not None:
                # The probe's own answer may move the marker (a session's
                # last answer): it is not activity seen since, or the next
                # probe would wait twice the interval.
                self._last_activity = self.activity()
            self._schedule()

    def _failed(self, failure):
        if is_cut(failure.value):
            # The server answered (it cut the probe short: a tiny
            # statement_timeout): alive; probe again after the interval.
            self._answered(None)
            return
        # The connection reports its own loss; just stop probing it.
        self.stop()

    def _dead(self):
        self._deadline = None
        if not self._stopped:
            self.stop()
            self.on_dead()
