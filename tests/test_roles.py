"""
Tests for L{hermes_tx.failover.roles}, in memory: L{HostProbe} with a fake
connector whose role queries are Deferreds the tests fire, and
L{check_roles} with fake probes.
"""

import psycopg2
from twisted.internet import defer, error, task
from twisted.trial import unittest

from hermes_tx.exceptions import ConnectionLostError
from hermes_tx.postgres.hosts import HostEntry
from hermes_tx.failover.roles import (
    PRIMARY,
    STANDBY,
    UNKNOWN,
    HostProbe,
    HostStatus,
    RoleResult,
    check_roles,
)

A, B, C = (HostEntry("127.0.0.1", "", str(port)) for port in (5432, 5433, 5434))
TIMEOUT = 5


class FakeConnector:
    """
    Like L{hermes_tx.connectors.PostgresConnector} as a L{HostProbe} sees
    it: a query connects first when not connected; C{disconnect()} fails
    the query in flight with C{ConnectionDone}, as closing a txpostgres
    connection does; a connection error leaves it disconnected.
    """

    def __init__(self, connected=False):
        self.connected = connected
        self.connections = 1 if connected else 0
        self.queries = []  # (Deferred, connection number)
        self.disconnects = 0

    @property
    def is_connected(self):
        return self.connected

    def is_server_master(self):
        if not self.connected:
            self.connected = True
            self.connections += 1
        d = defer.Deferred()
        self.queries.append((d, self.connections))
        return d

    def disconnect(self):
        self.disconnects += 1
        self.connected = False
        for d in [d for d, _ in self.queries if not d.called]:
            d.errback(error.ConnectionDone())
        return defer.succeed(None)

    def answer(self, is_master):
        self.queries[-1][0].callback(is_master)

    def fail(self, exc):
        self.connected = False
        self.queries[-1][0].errback(exc)


def server_closed():
    return psycopg2.OperationalError(
        "server closed the connection unexpectedly\n\tThis probably means the server terminated"
    )


class HostProbeTests(unittest.TestCase):
    def setUp(self):
        self.clock = task.Clock()

    def probe(self, connected=False):
        self.connector = FakeConnector(connected)
        return HostProbe(A, self.connector, self.clock, TIMEOUT)

    def test_primary_and_standby(self):
        probe = self.probe()
        self.assertIs(probe.entry, A)
        d = probe.ask()
        self.connector.answer(True)
        self.assertEqual(self.successResultOf(d), PRIMARY)
        d = probe.ask()
        self.connector.answer(False)
        self.assertEqual(self.successResultOf(d), STANDBY)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(self.connector.connections, 1)

    def test_questions_share_one_answer_while_out(self):
        probe = self.probe()
        asked = [probe.ask() for _ in range(4)]
        self.assertEqual(len(self.connector.queries), 1)
        self.connector.answer(False)
        self.assertEqual([self.successResultOf(d) for d in asked], [STANDBY] * 4)
        later = probe.ask()
        self.assertEqual(len(self.connector.queries), 2)
        self.connector.answer(True)
        self.assertEqual(self.successResultOf(later), PRIMARY)

    def test_questions_share_one_failure(self):
        probe = self.probe()
        asked = [probe.ask() for _ in range(3)]
        self.connector.fail(psycopg2.OperationalError("connection refused"))
        for d in asked:
            self.failureResultOf(d, psycopg2.OperationalError)

    def test_asking_again_from_an_answer(self):
        """
        A caller asking again as soon as it has its answer starts a new
        question.
        """
        probe = self.probe()
        again = []
        probe.ask().addCallback(lambda _: again.append(probe.ask()))
        self.connector.answer(True)
        self.assertEqual(len(self.connector.queries), 2)
        self.assertNoResult(again[0])
        self.connector.answer(False)
        self.assertEqual(self.successResultOf(again[0]), STANDBY)

    def test_timeout(self):
        """
        No answer within the timeout: the connection is dropped (which
        fails the query) and the question fails with one clear line.
        """
        probe = self.probe()
        d = probe.ask()
        self.clock.advance(TIMEOUT - 0.5)
        self.assertNoResult(d)
        self.assertEqual(self.connector.disconnects, 0)
        self.clock.advance(0.5)
        self.assertEqual(self.connector.disconnects, 1)
        failure = self.failureResultOf(d, ConnectionLostError)
        self.assertEqual(str(failure.value), "no answer within 5 s")
        self.assertEqual(len(self.connector.queries), 1)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_timeout_on_a_kept_connection(self):
        """
        A kept connection that does not answer may be dead: one fresh
        connection is tried, with its own timeout.
        """
        probe = self.probe(connected=True)
        d = probe.ask()
        self.clock.advance(TIMEOUT)
        self.assertNoResult(d)
        self.assertEqual([n for _, n in self.connector.queries], [1, 2])
        self.clock.advance(TIMEOUT)
        failure = self.failureResultOf(d, ConnectionLostError)
        self.assertIn("no answer within", str(failure.value))
        self.assertEqual(self.connector.disconnects, 2)
        self.assertEqual(len(self.connector.queries), 2)

    def test_answer_in_time_cancels_the_timer(self):
        probe = self.probe()
        d = probe.ask()
        self.clock.advance(TIMEOUT - 1)
        self.connector.answer(True)
        self.successResultOf(d)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(100)
        self.assertEqual(self.connector.disconnects, 0)

    def test_kept_connection_found_dead_is_retried_once(self):
        probe = self.probe(connected=True)
        d = probe.ask()
        self.connector.fail(server_closed())
        self.assertNoResult(d)
        self.assertEqual([n for _, n in self.connector.queries], [1, 2])
        self.connector.answer(False)
        self.assertEqual(self.successResultOf(d), STANDBY)

    def test_retried_only_once(self):
        probe = self.probe(connected=True)
        d = probe.ask()
        self.connector.fail(server_closed())
        self.connector.fail(psycopg2.OperationalError("connection refused"))
        failure = self.failureResultOf(d, psycopg2.OperationalError)
        self.assertIn("refused", str(failure.value))
        self.assertEqual(len(self.connector.queries), 2)

    def test_retried_for_every_kind_of_lost_connection(self):
        for exc in [server_closed(), psycopg2.InterfaceError("connection already closed"),
                    error.ConnectionLost(), error.ConnectionDone(), ConnectionLostError("gone")]:
            probe = self.probe(connected=True)
            d = probe.ask()
            self.connector.fail(exc)
            self.assertEqual(len(self.connector.queries), 2, exc)
            self.connector.answer(True)
            self.assertEqual(self.successResultOf(d), PRIMARY)

    def test_not_retried_for_other_errors(self):
        for exc in [psycopg2.ProgrammingError("permission denied"), ValueError("bug")]:
            probe = self.probe(connected=True)
            d = probe.ask()
            self.connector.fail(exc)
            self.failureResultOf(d, type(exc))
            self.assertEqual(len(self.connector.queries), 1, exc)

    def test_not_retried_when_not_kept(self):
        """
        A connection made for this question failing is the answer: no
        second try.
        """
        probe = self.probe(connected=False)
        d = probe.ask()
        self.connector.fail(server_closed())
        self.failureResultOf(d, psycopg2.OperationalError)
        self.assertEqual(len(self.connector.queries), 1)

    def test_connector_that_raises(self):
        probe = self.probe()

        def broken():
            raise RuntimeError("connector broke")

        self.connector.is_server_master = broken
        d = probe.ask()
        self.failureResultOf(d, RuntimeError)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        del self.connector.is_server_master
        d = probe.ask()
        self.connector.answer(True)
        self.assertEqual(self.successResultOf(d), PRIMARY)

    def test_close(self):
        probe = self.probe(connected=True)
        probe.close()
        self.assertEqual(self.connector.disconnects, 1)
        self.assertFalse(self.connector.is_connected)

    def test_close_with_a_question_out(self):
        """
        Closing (the Client stops) fails the question out: it is not asked
        again on a fresh connection that would outlive the Client.
        """
        probe = self.probe(connected=True)
        d = probe.ask()
        probe.close()
        self.failureResultOf(d, error.ConnectionDone)
        self.assertEqual(self.connector.connections, 1)
        self.assertFalse(self.connector.is_connected)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        # Asked again later (the Client restarted): it connects.
        probe.ask()
        self.assertEqual(self.connector.connections, 2)


class FakeProbe:
    def __init__(self, entry):
        self.entry = entry
        self.asked = []

    def ask(self):
        d = defer.Deferred()
        self.asked.append(d)
        return d

    def answer(self, role):
        self.asked[-1].callback(role)

    def fail(self, exc):
        self.asked[-1].errback(exc)


class CheckRolesTests(unittest.TestCase):
    def probes(self, *entries):
        return [FakeProbe(e) for e in entries or (A, B, C)]

    def test_every_host_asked_at_once(self):
        probes = self.probes()
        d = check_roles(probes)
        self.assertEqual([len(p.asked) for p in probes], [1, 1, 1])
        self.assertNoResult(d)

    def test_decides_as_soon_as_a_primary_answers(self):
        a, b, c = probes = self.probes()
        d = check_roles(probes)
        a.answer(STANDBY)
        self.assertNoResult(d)
        b.answer(PRIMARY)
        r = self.successResultOf(d)
        self.assertEqual(r, RoleResult(PRIMARY, B, (
            HostStatus(A, STANDBY, None), HostStatus(B, PRIMARY, None), HostStatus(C, None, None),
        )))
        c.answer(PRIMARY)  # late: changes nothing, raises nothing
        self.assertEqual(r.primary, B)

    def test_first_primary_in_answer_order(self):
        a, b, c = probes = self.probes()
        d = check_roles(probes)
        c.answer(PRIMARY)
        self.assertEqual(self.successResultOf(d).primary, C)

    def test_waits_for_the_former_primary(self):
        """
        While the host that was the primary has not answered, another
        host's claim waits (a split brain must not make the Client hop).
        """
        a, b, c = probes = self.probes()
        d = check_roles(probes, prefer=A)
        b.answer(PRIMARY)
        c.answer(STANDBY)
        self.assertNoResult(d)
        a.answer(PRIMARY)
        r = self.successResultOf(d)
        self.assertEqual((r.role, r.primary), (PRIMARY, A))
        self.assertEqual([s.role for s in r.hosts], [PRIMARY, PRIMARY, STANDBY])

    def test_former_primary_now_standby(self):
        a, b, c = probes = self.probes()
        d = check_roles(probes, prefer=A)
        b.answer(PRIMARY)
        a.answer(STANDBY)
        r = self.successResultOf(d)
        self.assertEqual((r.role, r.primary), (PRIMARY, B))

    def test_former_primary_unreachable(self):
        a, b, c = probes = self.probes()
        d = check_roles(probes, prefer=A)
        b.answer(PRIMARY)
        a.fail(psycopg2.OperationalError("connection refused"))
        r = self.successResultOf(d)
        self.assertEqual((r.role, r.primary), (PRIMARY, B))
        self.assertEqual(r.hosts[0], HostStatus(A, UNKNOWN, "OperationalError: connection refused"))

    def test_former_primary_answers_first(self):
        a, b, c = probes = self.probes()
        d = check_roles(probes, prefer=A)
        a.answer(PRIMARY)
        r = self.successResultOf(d)
        self.assertEqual((r.role, r.primary), (PRIMARY, A))
        self.assertEqual([s.role for s in r.hosts], [PRIMARY, None, None])

    def test_preferred_host_not_among_the_probes(self):
        a, b = probes = self.probes(A, B)
        d = check_roles(probes, prefer=C)
        b.answer(PRIMARY)
        self.assertEqual(self.successResultOf(d).primary, B)

    def test_all_standby(self):
        probes = self.probes()
        d = check_roles(probes)
        for p in probes[:2]:
            p.answer(STANDBY)
        self.assertNoResult(d)
        probes[2].answer(STANDBY)
        r = self.successResultOf(d)
        self.assertEqual((r.role, r.primary), (STANDBY, None))
        self.assertEqual([s.role for s in r.hosts], [STANDBY] * 3)

    def test_standby_and_unreachable(self):
        a, b = probes = self.probes(A, B)
        d = check_roles(probes, prefer=A)
        a.fail(ConnectionLostError("no answer within 5 s"))
        b.answer(STANDBY)
        r = self.successResultOf(d)
        self.assertEqual(r.role, STANDBY)
        self.assertEqual(r.hosts, (HostStatus(A, UNKNOWN, "ConnectionLostError: no answer within 5 s"),
                                   HostStatus(B, STANDBY, None)))

    def test_none_answering(self):
        """
        Every host failed: unknown, with each error as one line (libpq's
        messages run over several).
        """
        a, b, c = probes = self.probes()
        d = check_roles(probes)
        a.fail(psycopg2.OperationalError(
            'connection to server at "127.0.0.1", port 5432 failed: Connection refused\n'
            "\tIs the server running on that host and accepting TCP/IP connections?\n"
        ))
        b.fail(server_closed())
        self.assertNoResult(d)
        c.fail(RuntimeError())
        r = self.successResultOf(d)
        self.assertEqual((r.role, r.primary), (UNKNOWN, None))
        self.assertEqual([s.error for s in r.hosts], [
            'OperationalError: connection to server at "127.0.0.1", port 5432 failed: Connection refused',
            "OperationalError: server closed the connection unexpectedly",
            "RuntimeError",
        ])
        self.assertEqual({s.role for s in r.hosts}, {UNKNOWN})
        for s in r.hosts:
            self.assertNotIn("\n", s.error)

    def test_answers_before_the_call_returns(self):
        class Answered:
            def __init__(self, entry, role):
                self.entry, self.role = entry, role

            def ask(self):
                return defer.succeed(self.role)

        r = self.successResultOf(check_roles([Answered(A, STANDBY), Answered(B, PRIMARY)]))
        self.assertEqual((r.role, r.primary), (PRIMARY, B))

    def test_empty_list(self):
        r = self.successResultOf(check_roles([]))
        self.assertEqual(r, RoleResult(UNKNOWN, None, ()))
        self.assertEqual(r, RoleResult.unknown())

    def test_unknown_result(self):
        r = RoleResult.unknown([A, B])
        self.assertEqual(r, RoleResult(UNKNOWN, None, (HostStatus(A, None, None), HostStatus(B, None, None))))

    def test_with_host_probes(self):
        """
        Real probes on fake connectors: one host hangs, the other is the
        primary; the result comes without waiting for the hung one.
        """
        clock = task.Clock()
        hung, primary = FakeConnector(), FakeConnector()
        probes = [HostProbe(A, hung, clock, TIMEOUT), HostProbe(B, primary, clock, TIMEOUT)]
        d = check_roles(probes)
        primary.answer(True)
        self.assertEqual(self.successResultOf(d).primary, B)
        d = check_roles(probes, prefer=A)
        self.assertEqual(len(hung.queries), 1)  # shares the question still out
        primary.answer(True)
        self.assertNoResult(d)
        clock.advance(TIMEOUT)
        r = self.successResultOf(d)
        self.assertEqual((r.role, r.primary), (PRIMARY, B))
        self.assertEqual(r.hosts[0].error, "ConnectionLostError: no answer within 5 s")
