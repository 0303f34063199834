# -*- test-case-name: tests.test_sink_check,tests.test_sink_redis -*-
"""
L{SinkCheck}: a sink finds out that its dependency refuses it (wrong
credentials, nothing listening, a virtual host it may not use) without
waiting for a delivery to fail: with nothing pending no delivery fails, and
C{/ready} would say 200 while nothing could be delivered.

The sink's C{check} (connecting, and with it authenticating, for the Redis
and AMQP sinks) runs when its run starts, and again whenever its circuit
breaker half-opens while nothing is pending or in progress (then no
delivery probes).  A failed check opens the breaker at once
(L{hermes_tx.runtime.breaker.Breaker.down}: one line, C{/ready} 503, the
breaker's schedule for the next check); a check that succeeds while the
breaker probes closes it.  One check at a time.
"""

from twisted.internet import defer

from hermes_tx.runtime.breaker import HALF_OPEN


class SinkCheck:
    """
    The checks of one sink (see the module docstring).

    @ivar checks: how many checks began (for tests).
    """

    def __init__(self, sink):
        """
        @param sink: the L{hermes_tx.sinks.base.Sink}: its C{check()}
            (a Deferred failing with one line when the dependency refuses,
            or C{None} when it has nothing to check), C{breaker}, C{queue},
            C{busy_since} and C{secrets}.
        """
        self.sink = sink
        self.checks = 0
        self._running = False
        self._checking = None  # the check in flight
        sink.breaker.add_observer(self)

    def start(self):
        """
        The sink's run starts: check now.
        """
        self._running = True
        self._check()

    def stop(self):
        """
        The sink's run ends: no more checks; one in flight is abandoned.
        """
        self._running = False
        checking, self._checking = self._checking, None
        if checking is not None:
            checking.cancel()

    def breaker_half_open(self, breaker):
        # A pending event probes by being delivered; with none, the check
        # probes (or the circuit would stay half-open, /ready 503, until a
        # change came).
        if self._running and self._idle():
            self._check()

    def _idle(self):
        pending = getattr(self.sink.queue, "pending", None)
        return not pending and self.sink.busy_since is None

    def _check(self):
        if self._checking is not None:
            return
        d = self.sink.check()
        if d is None:
            return
        self.checks += 1
        self._checking = d
        d.addCallbacks(self._passed, self._failed)
        d.addBoth(self._over, d)

    def _over(self, _, d):
        if self._checking is d:
            self._checking = None

    def _passed(self, _):
        breaker = self.sink.breaker
        if self._running and breaker.state == HALF_OPEN:
            breaker.succeeded()

    def _failed(self, failure):
        if failure.check(defer.CancelledError) or not self._running:
            return None  # stopped
        self.sink.breaker.down(self.sink.secrets.scrub(str(failure.value)))
        return None
