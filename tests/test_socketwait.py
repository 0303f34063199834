"""
Tests for L{hermes_tx.postgres.socketwait}.

In memory: a fake reactor recording every add/remove with the descriptor
number it had at the call, and a fake psycopg2 connection whose C{poll()}
follows a script and whose C{fileno()} changes between steps, as libpq's
does when it moves to the next host of a multi-host DSN.  Every
registration must be removed, with the number it was added with, before
the next C{poll()}.

On real servers: asynchronous psycopg2 connections through L{wait_steps} on
the real reactor to multi-host DSNs whose first host refuses or is a
standby; afterwards the reactor holds no descriptor of ours.  (Measured
here: libpq closes one host's socket before opening the next, so the new
socket gets the same number, 7 throughout: the case where a stale epoll
registration would hide the new socket.)
"""

import psycopg2
import psycopg2.extensions
from twisted.internet import defer, error, reactor
from twisted.python.failure import Failure
from twisted.trial import unittest

from hermes_tx.postgres import socketwait as pgwait
from hermes_tx.postgres.socketwait import READ, WRITE, StepWaiter, UnexpectedPollResult, poll_steps, wait_steps
from tests.support.fixtures import PrimaryStandbyFixtures
from tests.support.pgcluster import _free_port
from tests.support.shared import shared_primary

OK = psycopg2.extensions.POLL_OK
R = psycopg2.extensions.POLL_READ
W = psycopg2.extensions.POLL_WRITE


class FakeReactor:
    """
    An C{IReactorFDSet} that records calls as C{(call, fd)} with the
    descriptor's C{fileno()} at the time of the call, and keeps what is
    registered per descriptor number, as epoll does.
    """

    def __init__(self, fail_add=None):
        self.calls = []
        self.readers = {}  # fd -> descriptor
        self.writers = {}
        self.fail_add = fail_add  # (call, fd) to raise OSError on
        self.lost = []  # fds whose registration the reactor dropped itself

    def _add(self, call, table, descriptor):
        fd = descriptor.fileno()
        if self.fail_add == (call, fd):
            raise OSError(9, "Bad file descriptor")
        self.calls.append((call, fd))
        assert fd not in table, f"{call}: fd {fd} registered already"
        table[fd] = descriptor

    def _remove(self, call, table, descriptor):
        fd = descriptor.fileno()
        self.calls.append((call, fd))
        if table.get(fd) is descriptor:
            del table[fd]

    def addReader(self, d):
        self._add("addReader", self.readers, d)

    def addWriter(self, d):
        self._add("addWriter", self.writers, d)

    def removeReader(self, d):
        self._remove("removeReader", self.readers, d)

    def removeWriter(self, d):
        self._remove("removeWriter", self.writers, d)

    def registered(self):
        return sorted(self.readers) + sorted(self.writers)

    def only(self):
        """
        @return: the one registered descriptor and its direction.
        """
        regs = [(d, READ) for d in self.readers.values()] + [(d, WRITE) for d in self.writers.values()]
        assert len(regs) == 1, regs
        return regs[0]

    def fire(self):
        """
        The registered socket is ready: call doRead or doWrite, as the
        reactor does.
        """
        descriptor, direction = self.only()
        (descriptor.doRead if direction == READ else descriptor.doWrite)()

    def lose(self):
        """
        The socket hung up: what the reactor's C{_disconnectSelectable}
        does (drop it both ways, then C{connectionLost}); not recorded as
        calls, since hermes_tx made none.
        """
        descriptor, _ = self.only()
        fd = descriptor.fileno()
        self.readers.pop(fd, None)
        self.writers.pop(fd, None)
        self.lost.append(fd)
        descriptor.connectionLost(Failure(error.ConnectionDone()))


class FakePGConn:
    """
    A psycopg2-like asynchronous connection: each C{poll()} takes the next
    step of C{script}, a C{(state, fd)} pair (C{fileno()} returns that fd
    from then on) or an exception to raise.  It notes every poll made while
    something is still registered with C{reactor}.
    """

    def __init__(self, reactor, script):
        self.reactor = reactor
        self.script = list(script)
        self.fd = -1
        self.polls = 0
        self.polled_while_registered = []

    def poll(self):
        if self.reactor.registered():
            self.polled_while_registered.append((self.polls, self.reactor.registered()))
        self.polls += 1
        step = self.script.pop(0)
        if isinstance(step, Exception):
            raise step
        state, self.fd = step
        return state

    def fileno(self):
        return self.fd


class PollStepsTests(unittest.TestCase):
    def test_yields_the_socket_after_each_poll(self):
        conn = FakePGConn(FakeReactor(), [(W, 5), (R, 5), (W, 9), (R, 4), (OK, 4)])
        self.assertEqual(list(poll_steps(conn)), [(5, WRITE), (5, READ), (9, WRITE), (4, READ)])
        self.assertEqual(conn.polls, 5)

    def test_ready_at_once(self):
        conn = FakePGConn(FakeReactor(), [(OK, 3)])
        self.assertEqual(list(poll_steps(conn)), [])

    def test_unexpected_state(self):
        conn = FakePGConn(FakeReactor(), [(W, 5), (psycopg2.extensions.POLL_ERROR, 5)])
        steps = poll_steps(conn)
        self.assertEqual(next(steps), (5, WRITE))
        self.assertRaises(UnexpectedPollResult, next, steps)

    def test_poll_errors_pass_through(self):
        conn = FakePGConn(FakeReactor(), [psycopg2.OperationalError("refused")])
        self.assertRaises(psycopg2.OperationalError, list, poll_steps(conn))


class WaitStepsTests(unittest.TestCase):
    def start(self, script, fail_add=None):
        self.reactor = FakeReactor(fail_add)
        self.conn = FakePGConn(self.reactor, script)
        self.waiter = wait_steps(self.reactor, poll_steps(self.conn))
        return self.waiter

    def assertClean(self):
        """
        Nothing registered, nothing polled while registered, and every
        remove named the number its add did, in pairs.
        """
        self.assertEqual(self.reactor.registered(), [])
        self.assertEqual(self.conn.polled_while_registered, [])
        calls = self.reactor.calls
        lost = list(self.reactor.lost)
        index = 0
        while index < len(calls):
            call, fd = calls[index]
            self.assertTrue(call.startswith("add"), calls)
            if lost and lost[0] == fd and calls[index + 1:index + 2] != [(call.replace("add", "remove"), fd)]:
                lost.pop(0)  # the reactor dropped it: nothing to remove
                index += 1
                continue
            self.assertEqual(calls[index + 1:index + 2], [(call.replace("add", "remove"), fd)], calls)
            index += 2
        self.assertEqual(lost, [])

    def test_socket_changes_between_steps(self):
        """
        libpq moves from host to host: 5 (write, read), then 7, then 5
        again (reused), then 8.  Each wait registers the number of its
        step and removes that same number before the next poll.
        """
        script = [(W, 5), (R, 5), (W, 7), (R, 7), (W, 5), (R, 8), (OK, 8)]
        waiter = self.start(script)
        self.assertEqual(waiter.fd, 5)
        seen = []
        while self.reactor.registered():
            seen.append(waiter.fd)
            self.reactor.fire()
        self.assertEqual(seen, [5, 5, 7, 7, 5, 8])
        self.assertEqual(self.successResultOf(waiter.done), None)
        self.assertIsNone(waiter.fd)
        self.assertEqual(self.reactor.calls, [
            ("addWriter", 5), ("removeWriter", 5),
            ("addReader", 5), ("removeReader", 5),
            ("addWriter", 7), ("removeWriter", 7),
            ("addReader", 7), ("removeReader", 7),
            ("addWriter", 5), ("removeWriter", 5),
            ("addReader", 8), ("removeReader", 8),
        ])
        self.assertClean()
        self.assertEqual(self.conn.polls, len(script))

    def test_registration_keeps_its_number_when_libpq_moves_on(self):
        """
        The registration's C{fileno()} is the number it was made with, even
        when the connection's socket is another one by the time it is
        removed.
        """
        waiter = self.start([(W, 5), (R, 6), (OK, 6)])
        descriptor, _ = self.reactor.only()
        self.conn.fd = 42  # libpq replaced its socket meanwhile
        self.assertEqual(descriptor.fileno(), 5)
        self.reactor.fire()
        self.assertEqual(self.reactor.calls[:2], [("addWriter", 5), ("removeWriter", 5)])
        self.reactor.fire()
        self.successResultOf(waiter.done)
        self.assertClean()

    def test_ready_at_once(self):
        waiter = self.start([(OK, 3)])
        self.assertEqual(self.successResultOf(waiter.done), None)
        self.assertEqual(self.reactor.calls, [])

    def test_nothing_registered_when_done_fires(self):
        waiter = self.start([(W, 5), (OK, 5)])
        seen = []
        waiter.done.addCallback(lambda _: seen.append(self.reactor.registered()))
        self.reactor.fire()
        self.assertEqual(seen, [[]])

    def test_connection_lost(self):
        """
        The reactor saw the socket hang up (it removed the registration
        itself): the next poll tells what happened.
        """
        waiter = self.start([(W, 5), (R, 5), psycopg2.OperationalError("server closed the connection")])
        self.reactor.fire()
        self.reactor.lose()
        self.failureResultOf(waiter.done, psycopg2.OperationalError)
        self.assertEqual(self.conn.polls, 3)
        self.assertClean()

    def test_connection_lost_then_next_host(self):
        """
        A hang-up while connecting to one host; libpq goes on with the next
        host's socket and connects.
        """
        waiter = self.start([(W, 5), (W, 6), (R, 6), (OK, 6)])
        self.reactor.lose()
        self.assertEqual(waiter.fd, 6)
        self.reactor.fire()
        self.reactor.fire()
        self.successResultOf(waiter.done)
        self.assertClean()

    def test_late_events_change_nothing(self):
        """
        A descriptor that fires again (or is lost) after its wait ended
        does not poll again.
        """
        waiter = self.start([(W, 5), (R, 6), (OK, 6)])
        first, _ = self.reactor.only()
        self.reactor.fire()
        polls = self.conn.polls
        first.doWrite()
        first.doRead()
        first.connectionLost(Failure(error.ConnectionDone()))
        self.assertEqual(self.conn.polls, polls)
        self.assertEqual(waiter.fd, 6)
        self.reactor.fire()
        self.successResultOf(waiter.done)
        self.assertClean()

    def test_cancel(self):
        """
        cancel() removes the registration with its own number (before the
        caller closes the connection) and fails C{done}; a late event does
        not poll.
        """
        waiter = self.start([(W, 5), (R, 7), (OK, 7)])
        self.reactor.fire()
        descriptor, _ = self.reactor.only()
        waiter.cancel()
        self.failureResultOf(waiter.done, defer.CancelledError)
        self.assertIsNone(waiter.fd)
        self.assertEqual(self.reactor.calls[-2:], [("addReader", 7), ("removeReader", 7)])
        self.assertClean()
        polls = self.conn.polls
        descriptor.doRead()
        waiter.cancel()
        self.assertEqual(self.conn.polls, polls)
        self.assertClean()

    def test_cancelling_done(self):
        waiter = self.start([(R, 5), (OK, 5)])
        waiter.done.cancel()
        self.failureResultOf(waiter.done, defer.CancelledError)
        self.assertClean()

    def test_cancel_after_the_end(self):
        waiter = self.start([(R, 5), (OK, 5)])
        self.reactor.fire()
        waiter.cancel()
        self.assertEqual(self.successResultOf(waiter.done), None)
        self.assertClean()

    def test_cancel_closes_the_steps(self):
        closed = []

        def steps():
            try:
                yield 5, READ
                yield 6, READ
            finally:
                closed.append(True)

        fake = FakeReactor()
        waiter = wait_steps(fake, steps())
        waiter.cancel()
        self.assertEqual(closed, [True])
        self.failureResultOf(waiter.done, defer.CancelledError)
        self.assertEqual(fake.calls, [("addReader", 5), ("removeReader", 5)])

    def test_poll_raising(self):
        waiter = self.start([(W, 5), (R, 5), psycopg2.OperationalError("session is read-only")])
        self.reactor.fire()
        self.reactor.fire()
        failure = self.failureResultOf(waiter.done, psycopg2.OperationalError)
        self.assertIn("read-only", str(failure.value))
        self.assertClean()

    def test_poll_raising_at_once(self):
        waiter = self.start([psycopg2.OperationalError("refused")])
        self.failureResultOf(waiter.done, psycopg2.OperationalError)
        self.assertEqual(self.reactor.calls, [])

    def test_unexpected_poll_result(self):
        waiter = self.start([(W, 5), (99, 5)])
        self.reactor.fire()
        self.failureResultOf(waiter.done, UnexpectedPollResult)
        self.assertClean()

    def test_no_socket(self):
        """
        libpq reports fd -1 (a failed connection can): C{done} fails with
        ConnectionLost and nothing is registered.
        """
        waiter = self.start([(W, 5), (R, -1)])
        self.reactor.fire()
        failure = self.failureResultOf(waiter.done, error.ConnectionLost)
        self.assertIn("no socket", str(failure.value))
        self.assertClean()
        waiter = self.start([(W, -1)])
        self.failureResultOf(waiter.done, error.ConnectionLost)
        self.assertEqual(self.reactor.calls, [])

    def test_no_socket_closes_the_steps(self):
        closed = []

        def steps():
            try:
                yield None, READ
            finally:
                closed.append(True)

        waiter = wait_steps(FakeReactor(), steps())
        self.failureResultOf(waiter.done, error.ConnectionLost)
        self.assertEqual(closed, [True])

    def test_registering_fails(self):
        """
        The reactor refuses a descriptor (epoll: EBADF): C{done} fails with
        that error and nothing is left registered, rather than the error
        escaping into the reactor and the wait never ending.
        """
        waiter = self.start([(W, 5), (R, 6), (OK, 6)], fail_add=("addReader", 6))
        self.reactor.fire()
        failure = self.failureResultOf(waiter.done, OSError)
        self.assertEqual(failure.value.errno, 9)
        self.assertClean()

    def test_registering_fails_at_once(self):
        waiter = self.start([(W, 5), (OK, 5)], fail_add=("addWriter", 5))
        self.failureResultOf(waiter.done, OSError)
        self.assertClean()

    def test_step_waiter_not_started(self):
        fake = FakeReactor()
        waiter = StepWaiter(fake, (step for step in [(5, READ)]))
        self.assertIsNone(waiter.fd)
        self.assertNoResult(waiter.done)
        self.assertIs(waiter.start(), waiter.done)
        self.assertEqual(waiter.fd, 5)
        waiter.cancel()
        self.failureResultOf(waiter.done, defer.CancelledError)
        self.assertEqual(fake.registered(), [])

    def test_log_prefix(self):
        self.start([(R, 5), (OK, 5)])
        descriptor, _ = self.reactor.only()
        self.assertEqual(descriptor.logPrefix(), "hermes_tx.postgres.socketwait")


def our_descriptors():
    """
    @return: what the real reactor holds of L{hermes_tx.postgres.socketwait}'s.
    """
    held = list(reactor.getReaders()) + list(reactor.getWriters())
    return [d for d in held if isinstance(d, pgwait._OneShot)]


def recording(steps, seen):
    for step in steps:
        seen.append(step)
        yield step


class _RealConnections:
    """
    Connect and query with psycopg2's asynchronous API through
    L{wait_steps} on the real reactor.
    """

    @staticmethod
    def dsn(*ports, **extra):
        """
        @return: a DSN naming 127.0.0.1 once per port, in that order.
        """
        words = {
            "host": ",".join(["127.0.0.1"] * len(ports)),
            "port": ",".join(str(p) for p in ports),
            "user": "postgres", "dbname": "postgres", "connect_timeout": "5",
        }
        words.update(extra)
        return " ".join(f"{k}={v}" for k, v in words.items())

    @defer.inlineCallbacks
    def connect(self, dsn):
        conn = psycopg2.connect(dsn, async_=1)
        self.addCleanup(conn.close)
        seen = []
        yield wait_steps(reactor, recording(poll_steps(conn), seen)).done
        self.assertEqual(our_descriptors(), [])
        self.assertTrue(seen, "connected without waiting")
        return conn

    @defer.inlineCallbacks
    def connect_fails(self, dsn):
        conn = psycopg2.connect(dsn, async_=1)
        self.addCleanup(conn.close)
        with self.assertRaises(psycopg2.OperationalError):
            yield wait_steps(reactor, poll_steps(conn)).done
        self.assertEqual(our_descriptors(), [])

    @defer.inlineCallbacks
    def query(self, conn, sql):
        cursor = conn.cursor()
        cursor.execute(sql)
        yield wait_steps(reactor, poll_steps(conn)).done
        self.assertEqual(our_descriptors(), [])
        return cursor.fetchall()

    @defer.inlineCallbacks
    def assert_connected_to(self, conn, cluster, in_recovery):
        self.assertEqual(conn.info.port, cluster.port)
        rows = yield self.query(conn, "SELECT pg_is_in_recovery(), inet_server_port()")
        self.assertEqual(rows, [(in_recovery, cluster.port)])
        fd = conn.fileno()
        held = list(reactor.getReaders()) + list(reactor.getWriters())
        self.assertNotIn(fd, [d.fileno() for d in held if d.fileno() >= 0])


class RealConnectTests(_RealConnections, unittest.TestCase):
    @defer.inlineCallbacks
    def test_closed_port_first(self):
        """
        libpq is refused by the first host and connects to the second,
        replacing its socket while connecting.
        """
        primary = shared_primary()
        conn = yield self.connect(self.dsn(_free_port(), primary.port))
        yield self.assert_connected_to(conn, primary, False)

    def test_nobody_listening(self):
        return self.connect_fails(self.dsn(_free_port(), _free_port()))

    @defer.inlineCallbacks
    def test_cancel_while_connecting(self):
        """
        Cancelling mid-connect, then closing the connection, leaves the
        reactor clean.
        """
        conn = psycopg2.connect(self.dsn(shared_primary().port), async_=1)
        waiter = wait_steps(reactor, poll_steps(conn))
        self.assertEqual(len(our_descriptors()), 1)
        waiter.cancel()
        conn.close()
        with self.assertRaises(defer.CancelledError):
            yield waiter.done
        self.assertEqual(our_descriptors(), [])


class RealStandbyFirstTests(_RealConnections, PrimaryStandbyFixtures, unittest.TestCase):
    @defer.inlineCallbacks
    def test_standby_first_read_write(self):
        """
        The wedge of issue 8 item 1: libpq connects to the standby, finds
        it read-only, closes it and connects to the primary.
        """
        dsn = self.dsn(self.standby.port, self.primary.port, target_session_attrs="read-write")
        conn = yield self.connect(dsn)
        yield self.assert_connected_to(conn, self.primary, False)

    @defer.inlineCallbacks
    def test_closed_port_standby_then_primary(self):
        dsn = self.dsn(_free_port(), self.standby.port, self.primary.port,
                       target_session_attrs="primary")
        conn = yield self.connect(dsn)
        yield self.assert_connected_to(conn, self.primary, False)

    def test_standby_alone_read_write(self):
        return self.connect_fails(self.dsn(self.standby.port, target_session_attrs="read-write"))

    @defer.inlineCallbacks
    def test_standby_first_without_target_session_attrs(self):
        """
        Without target_session_attrs libpq takes the first host that
        answers, the standby.
        """
        conn = yield self.connect(self.dsn(self.standby.port, self.primary.port))
        yield self.assert_connected_to(conn, self.standby, True)
