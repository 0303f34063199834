# -*- test-case-name: tests.test_socketwait -*-
"""
Waiting for libpq's socket without ever holding a descriptor libpq closed.

As in psycopg 3 (C{generators.py} and C{waiting.py}), the protocol steps are
kept apart from how one waits for the socket:

  - L{poll_steps} drives C{psycopg2}'s asynchronous C{poll()} and yields,
    after every step, the socket libpq wants to wait on I{now} and whether
    for reading or writing;
  - L{wait_steps} waits for each yielded socket with a one-shot reactor
    registration of exactly that descriptor number, removed before the next
    C{poll()}.

This matters while connecting: libpq tries the hosts of a multi-host DSN
inside C{PQconnectPoll}, closing one host's socket and opening the next
host's, so C{fileno()} changes between steps and a new socket often reuses
the old number.  A reactor registration that outlives its socket makes
epoll raise C{EBADF}, or silently ignore the new socket that reuses the
number (the reactor thinks it is registered already): the wedge of a
multi-host DSN with a standby listed first.
"""

import psycopg2.extensions
from twisted.internet import defer, error
from twisted.internet.interfaces import IReadDescriptor, IWriteDescriptor
from twisted.python.failure import Failure
from zope.interface import implementer

READ, WRITE = "read", "write"


class UnexpectedPollResult(Exception):
    """
    psycopg2's C{poll()} returned a state outside its documented set.
    """


def poll_steps(pgconn):
    """
    Drive C{pgconn.poll()} until the connection (or the query in progress)
    is ready.

    @param pgconn: an asynchronous psycopg2 connection.
    @return: a generator yielding C{(fd, READ|WRITE)} for each wait; it ends
        when C{poll()} reports C{POLL_OK} and raises what C{poll()} raises.
    """
    while True:
        state = pgconn.poll()
        if state == psycopg2.extensions.POLL_OK:
            return
        if state == psycopg2.extensions.POLL_READ:
            yield pgconn.fileno(), READ
        elif state == psycopg2.extensions.POLL_WRITE:
            yield pgconn.fileno(), WRITE
        else:
            raise UnexpectedPollResult(f"poll() returned {state!r}")


@implementer(IReadDescriptor, IWriteDescriptor)
class _OneShot:
    """
    A reactor registration of one descriptor number, for one wait.
    """

    def __init__(self, reactor, fd, direction, ready):
        self.reactor = reactor
        self.fd = fd
        self.direction = direction
        self._ready = ready
        self._registered = False

    def fileno(self):
        # Always the number registered, never libpq's current socket.
        return self.fd

    def logPrefix(self):
        return "hermes_tx.postgres.socketwait"

    def register(self):
        if self.direction == READ:
            self.reactor.addReader(self)
        else:
            self.reactor.addWriter(self)
        self._registered = True

    def unregister(self):
        if not self._registered:
            return
        self._registered = False
        # The descriptor is still open: libpq only replaces its socket in
        # the next poll(), which runs after this.
        if self.direction == READ:
            self.reactor.removeReader(self)
        else:
            self.reactor.removeWriter(self)

    def _fire(self):
        self.unregister()
        ready, self._ready = self._ready, None
        if ready is not None:
            ready()

    def doRead(self):
        self._fire()

    doWrite = doRead

    def connectionLost(self, reason):
        # The reactor saw a hang-up or an error on the socket and removed us
        # already; the next poll() tells what happened.
        self._registered = False
        self._fire()


class StepWaiter:
    """
    One wait for a sequence of L{poll_steps}: the current one-shot
    registration and the Deferred of the whole sequence.

    @ivar done: a Deferred firing with C{None} when the steps end, or
        failing with what they raised (or
        L{CancelledError <twisted.internet.defer.CancelledError>} after
        L{cancel}).
    """

    def __init__(self, reactor, steps):
        self.reactor = reactor
        self.steps = steps
        self.done = defer.Deferred(lambda _: self.cancel())
        self._watch = None
        self._finished = False

    @property
    def fd(self):
        """
        The descriptor waited on now, or C{None}.
        """
        return self._watch.fd if self._watch is not None else None

    def start(self):
        self._advance()
        return self.done

    def _advance(self):
        self._watch = None
        if self._finished:
            return
        try:
            fd, direction = next(self.steps)
        except StopIteration:
            self._finish(None)
            return
        except Exception:
            self._finish(Failure())
            return
        if fd is None or fd < 0:
            self._finish(Failure(error.ConnectionLost("libpq has no socket to wait on")))
            return
        watch = _OneShot(self.reactor, fd, direction, self._advance)
        try:
            watch.register()
        except Exception:
            # The reactor refused the descriptor (epoll: EBADF): end here,
            # rather than let the error escape from doRead into the reactor
            # and leave done waiting for ever.
            self._finish(Failure())
            return
        self._watch = watch

    def _finish(self, result):
        if self._finished:
            return
        self._finished = True
        self.steps.close()
        if self.done.called:
            return
        if isinstance(result, Failure):
            self.done.errback(result)
        else:
            self.done.callback(result)

    def cancel(self):
        """
        Stop waiting: remove the registration (before the caller closes the
        connection) and fail L{done} with L{defer.CancelledError}.
        """
        if self._watch is not None:
            self._watch.unregister()
            self._watch = None
        self._finish(Failure(defer.CancelledError()))


def wait_steps(reactor, steps):
    """
    @param reactor: an C{IReactorFDSet}.
    @param steps: a generator like L{poll_steps}.
    @return: the started L{StepWaiter}; its C{done} Deferred fires when the
        steps end.
    """
    waiter = StepWaiter(reactor, steps)
    waiter.start()
    return waiter
