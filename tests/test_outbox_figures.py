"""
Tests for L{hermes_tx.outbox.figures.Figures} in memory: a
L{hermes_tx.postgres.session.Session} on a L{ScriptedConnection} whose
answers the test gives, and a L{task.Clock}.  Read when asked, cached,
one read at a time; a failing read keeps the last figures and says so
once.  L{FunctionTests}: the schema's C{figures()} on a real server.
"""

import uuid

import psycopg2
from twisted.internet import task
from twisted.logger import LogLevel, Logger, formatEvent
from twisted.trial import unittest

from hermes_tx.exceptions import ConnectionLostError
from hermes_tx.outbox import sql
from hermes_tx.outbox.figures import Figures
from hermes_tx.postgres.session import Session
from tests.support.fakes import ScriptedConnection
from tests.support.outbox import OutboxDatabase


class FiguresTests(unittest.TestCase):
    def setUp(self):
        self.clock = task.Clock()
        self.clock.advance(1000)
        self.conn = ScriptedConnection()
        self.losses = []
        self.session = Session(self.conn, self.clock, 10.0, self.losses.append)
        self.logged = []
        self.figures = self.make()

    def make(self, every=5.0, cap=10):
        return Figures(self.clock, "hermes", ["t1", "t2"], every,
                       Logger(observer=self.logged.append), cap=cap)

    def reads(self):
        return self.conn.waiting(sql.figures("hermes"))

    def read(self, answer):
        self.figures.current(self.session)
        [query] = self.reads()
        query.answer(answer)
        return self.figures.last

    def lines(self):
        return [formatEvent(e) for e in self.logged if e["log_level"] == LogLevel.warn]

    def test_read_when_asked(self):
        self.assertEqual(self.figures.current(self.session), {})
        [query] = self.reads()
        self.assertEqual(query.params, (["t1", "t2"], 10))
        query.answer([("t1", 3, 2, 3.5, 1, False), ("t2", 0, 0, None, 0, False)])
        self.assertEqual(self.figures.current(self.session),
                         {"t1": (3, 2, 3.5, 1), "t2": (0, 0, None, 0)})
        self.assertEqual(self.figures.read_at, 1000)
        self.assertEqual(self.losses, [])

    def test_cached_and_one_read_at_a_time(self):
        self.figures.current(self.session)
        self.figures.current(self.session)
        self.assertEqual(len(self.reads()), 1)
        self.reads()[0].answer([])
        self.clock.advance(4.9)
        self.figures.current(self.session)
        self.assertEqual(self.reads(), [])
        self.clock.advance(0.1)
        self.figures.current(self.session)
        self.assertEqual(len(self.reads()), 1)

    def test_no_session_no_read(self):
        self.assertEqual(self.figures.current(None), {})
        self.assertEqual(self.conn.asked, [])

    def test_never_read(self):
        figures = self.make(every=None)
        self.assertEqual(figures.current(self.session), {})
        self.assertEqual(self.conn.asked, [])

    def test_read_now(self):
        d = self.figures.read(self.session)
        self.reads()[0].answer([("t1", 1, 0, 0.5, 0, False)])
        self.assertEqual(self.successResultOf(d), {"t1": (1, 0, 0.5, 0)})

    def test_failing_read_keeps_the_last_and_says_so_once(self):
        """
        A read the server refuses (a missing grant, a statement timeout)
        keeps the last figures and costs nothing else: one line, at most
        one a minute, and the connection stays.
        """
        self.read([("t1", 5, 0, 1.0, 0, False)])
        self.clock.advance(5)
        denied = psycopg2.errors.InsufficientPrivilege("permission denied for table outbox")
        last = self.read_failing(denied)
        self.assertEqual(last, {"t1": (5, 0, 1.0, 0)})
        self.assertEqual(self.lines(), [
            "reading the outbox's figures for /metrics failed: InsufficientPrivilege: "
            "permission denied for table outbox"])
        self.clock.advance(5)
        self.read_failing(denied)
        self.assertEqual(len(self.lines()), 1)
        self.clock.advance(55)
        self.read_failing(denied)
        self.assertEqual(len(self.lines()), 2)
        self.assertTrue(self.lines()[1].endswith("(1 more like it left out)"))
        self.assertEqual(self.losses, [])
        self.assertEqual(self.figures.last, {"t1": (5, 0, 1.0, 0)})

    def test_a_read_cut_short_names_the_cause(self):
        """
        A read the server cut short (the role's statement_timeout): the
        server's message and SQLSTATE, no reconnect.
        """
        self.read_failing(psycopg2.errors.QueryCanceled("canceling statement due to statement timeout\n"))
        self.assertEqual(self.lines(), [
            "reading the outbox's figures for /metrics failed: canceling statement due to statement "
            "timeout (SQLSTATE 57014)"])
        self.assertEqual(self.losses, [])

    def read_failing(self, error):
        result = self.figures.current(self.session)
        self.reads()[0].fail(error)
        return result

    def test_lost_connection_is_not_said(self):
        """
        A read failing because the connection went says nothing: the
        connection's loss is said by the consumer.
        """
        self.read([("t1", 1, 0, 1.0, 0, False)])
        self.clock.advance(5)
        self.read_failing(ConnectionLostError("server closed the connection unexpectedly"))
        self.assertEqual(self.lines(), [])
        self.assertEqual(self.figures.last, {"t1": (1, 0, 1.0, 0)})

    def test_primed_once(self):
        """
        Primed (the consumer's first claim worked): read if never read,
        else nothing.
        """
        self.figures.prime(self.session)
        self.reads()[0].answer([("t1", 1, 0, 1.0, 0, False)])
        self.clock.advance(60)
        self.figures.prime(self.session)
        self.assertEqual(self.reads(), [])


class FunctionTests(OutboxDatabase, unittest.TestCase):
    """
    The schema's C{figures()} (C{0006_figures.sql}) on a real server.
    """

    def figures(self, topics, cap=5):
        return {row[0]: row[1:] for row in self.query(sql.figures(), (topics, cap))}

    def test_counts_in_flight_lag_and_dead_letters(self):
        """
        Pending and in flight (a live claim), the age of the oldest change
        (one waiting for a retry is older than the fresh ones), dead
        letters; a topic with nothing.
        """
        self.clear()
        ids = [self.emit("t", f"k{i}") for i in range(4)]
        self.query("UPDATE hermes.outbox SET created_at = now() - interval '60 s' WHERE id = %s",
                   (ids[0],))
        token = str(uuid.uuid4())
        claimed = self.query(sql.claim(), (["t"], 2, token, 30.0))
        self.assertEqual([r[0] for r in claimed], ids[:2])
        self.query(sql.release(), ([ids[0]], token, [600.0], ["later"], 10))
        self.query(sql.dead_letter(), ([ids[1]], token, ["bad"]))
        figures = self.figures(["t", "none"])
        pending, in_flight, oldest, dead, estimated = figures["t"]
        self.assertEqual((pending, in_flight, dead, estimated), (3, 0, 1, False))
        self.assertTrue(59 <= oldest < 70, oldest)
        self.assertEqual(figures["none"], (0, 0, None, 0, False))
        token = str(uuid.uuid4())
        self.query(sql.claim(), (["t"], 1, token, 30.0))
        self.assertEqual(self.figures(["t"])["t"][:2], (2, 1))

    def test_past_the_cap_estimated(self):
        """
        More changes than the cap: the planner's estimate, never less than
        the capped count, and said to be one.
        """
        self.clear()
        self.query("INSERT INTO hermes.outbox (topic, key, payload)"
                   " SELECT 'big', 'k' || g, '{}' FROM generate_series(1, 2000) g")
        self.query("ANALYZE hermes.outbox")
        pending, in_flight, _, _, estimated = self.figures(["big"], cap=100)["big"]
        self.assertTrue(estimated)
        self.assertTrue(1500 <= pending <= 2500, pending)
        self.assertEqual(self.figures(["big"], cap=5000)["big"][0], 2000)
