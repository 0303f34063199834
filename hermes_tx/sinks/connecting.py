# -*- test-case-name: tests.test_sink_connecting -*-
"""
L{OnDemand}: the connection of a sink to a broker (Redis, RabbitMQ), made
when a batch needs it and made again after it was lost.

There is no reconnecting in the background: a batch that finds no live
connection starts one, and when that fails the batch is retried (L{Retry})
and the consumer's backoff spaces the attempts.  One attempt at a time;
an attempt that takes longer than the timeout is abandoned and whatever
it made is closed.
"""

from twisted.internet import defer

from hermes_tx.exceptions import one_line
from hermes_tx.outcomes import Retry

#: the states of an L{OnDemand}
IDLE, CONNECTING, CONNECTED, CLOSED = "idle", "connecting", "connected", "closed"


class OnDemand:
    """
    @ivar state: L{IDLE} (no connection), L{CONNECTING}, L{CONNECTED} or
        L{CLOSED} (after L{close}: no more connections).
    @ivar connections: how many connections were made (for tests and
        metrics).
    """

    def __init__(self, connect, alive, abort, clock, timeout, what):
        """
        @param connect: a callable returning a Deferred that fires with a
            ready connection.
        @param alive: a callable telling whether a connection is still
            usable.
        @param abort: a callable closing a connection at once (it may
            return a Deferred firing when it is closed).
        @param clock: an C{IReactorTime} for the timeout.
        @param timeout: seconds an attempt may take.
        @param what: what to call the other side in messages (redacted).
        """
        self._connect = connect
        self._alive = alive
        self._abort = abort
        self._clock = clock
        self._timeout = timeout
        self._what = what
        self._current = None
        self._attempt = None
        self._waiters = []
        self.connections = 0

    @property
    def state(self):
        if self._current is CLOSED:
            return CLOSED
        if self._attempt is not None:
            return CONNECTING
        if self._current is not None and self._alive(self._current):
            return CONNECTED
        return IDLE

    def get(self):
        """
        @return: a Deferred firing with a live connection, or failing with
            L{Retry} when none can be made now.
        """
        state = self.state
        if state == CLOSED:
            return defer.fail(Retry(f"the connection to {self._what} was closed"))
        if state == CONNECTED:
            return defer.succeed(self._current)
        if state == IDLE:
            # A connection no longer alive may still hold its socket (an
            # AMQP connection whose channel the broker closed): close it.
            if self._current is not None:
                self.drop()
            self._attempt = attempt = defer.maybeDeferred(self._connect)
            attempt.addTimeout(self._timeout, self._clock, onTimeoutCancel=self._timed_out)
            attempt.addBoth(self._attempt_ended, attempt)
        waiter = defer.Deferred()
        self._waiters.append(waiter)
        return waiter

    def _timed_out(self, result, timeout):
        raise Retry(f"cannot connect to {self._what}: no connection within {timeout:g} s")

    def _attempt_ended(self, result, attempt):
        if self._attempt is attempt:
            self._attempt = None
        if isinstance(result, defer.Failure):
            error = result.value
            if not isinstance(error, Retry):
                error = Retry(f"cannot connect to {self._what}: {one_line(error)}")
            result = defer.Failure(error)
        elif self._current is CLOSED:
            self._abort(result)
            result = defer.Failure(Retry(f"the connection to {self._what} was closed"))
        else:
            self._current = result
            self.connections += 1
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if isinstance(result, defer.Failure):
                waiter.errback(result)
            else:
                waiter.callback(result)

    def drop(self):
        """
        Abort the current connection (after a timeout, a protocol surprise):
        the next L{get} makes a new one.
        """
        current = self._current
        if current is None or current is CLOSED:
            return None
        self._current = None
        return self._abort(current)

    def close(self):
        """
        Close the connection for good (C{tear_down}).

        @return: whatever the abort returned (a Deferred, perhaps).
        """
        current, self._current = self._current, CLOSED
        if self._attempt is not None:
            self._attempt.cancel()
        if current is not None and current is not CLOSED:
            return self._abort(current)

