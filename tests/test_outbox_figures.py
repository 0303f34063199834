"""
Tests for L{hermes_tx.outbox.figures.Figures} in memory: a
L{hermes_tx.postgres.session.Session} on a L{ScriptedConnection} whose
answers the test gives, and a L{task.Clock}.  Read when asked, cached,
one read at a time; a failing read keeps the last figures and says so
once; counts above the cap come from the planner's estimate.
"""

import json

import psycopg2
from twisted.internet import task
from twisted.logger import LogLevel, Logger, formatEvent
from twisted.trial import unittest

from hermes_tx.exceptions import ConnectionLostError
from hermes_tx.outbox import sql
from hermes_tx.outbox.figures import Figures
from hermes_tx.postgres.session import Session
from tests.support.fakes import ScriptedConnection


def plan(rows):
    """
    @return: the one row of an C{EXPLAIN (FORMAT JSON)} answer estimating
        C{rows}.
    """
    return ([{"Plan": {"Node Type": "Index Only Scan", "Plan Rows": rows}}],)


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
        query.answer([("t1", 5, 2, 3.5, 1), ("t2", 0, 0, None, 0)])
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
        self.reads()[0].answer([("t1", 1, 0, 0.5, 0)])
        self.assertEqual(self.successResultOf(d), {"t1": (1, 0, 0.5, 0)})

    def test_failing_read_keeps_the_last_and_says_so_once(self):
        """
        A read the server refuses (a missing grant, a statement timeout)
        keeps the last figures and costs nothing else: one line, at most
        one a minute, and the connection stays.
        """
        self.read([("t1", 5, 0, 1.0, 0)])
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

    def read_failing(self, error):
        result = self.figures.current(self.session)
        self.reads()[0].fail(error)
        return result

    def test_lost_connection_is_not_said(self):
        """
        A read failing because the connection went says nothing: the
        connection's loss is said by the consumer.
        """
        self.read([("t1", 1, 0, 1.0, 0)])
        self.clock.advance(5)
        self.read_failing(ConnectionLostError("server closed the connection unexpectedly"))
        self.assertEqual(self.lines(), [])
        self.assertEqual(self.figures.last, {"t1": (1, 0, 1.0, 0)})

    def test_capped_count_is_estimated(self):
        """
        A topic with more changes than the cap: the planner's estimate (an
        EXPLAIN answer), never less than the capped count.
        """
        self.figures.current(self.session)
        self.reads()[0].answer([("t1", 11, 3, 60.0, 0), ("t2", 11, 0, 1.0, 11)])
        estimate = self.conn.one(sql.estimate("hermes", "outbox"))
        self.assertEqual(estimate.params, ("t1",))
        estimate.answer([plan(250000)])
        estimate = self.conn.one(sql.estimate("hermes", "outbox"))
        self.assertEqual(estimate.params, ("t2",))
        estimate.answer([(json.dumps(plan(3)[0]),)])  # as text; below the cap: the count
        dead = self.conn.one(sql.estimate("hermes", "dead_letters"))
        self.assertEqual(dead.params, ("t2",))
        dead.answer([plan(4000)])
        self.assertEqual(self.figures.last, {"t1": (249997, 3, 60.0, 0), "t2": (11, 0, 1.0, 4000)})

    def test_failing_estimate_keeps_the_last(self):
        self.read([("t1", 2, 0, 1.0, 0)])
        self.clock.advance(5)
        self.figures.current(self.session)
        self.reads()[0].answer([("t1", 11, 0, 1.0, 0)])
        self.conn.one(sql.estimate("hermes", "outbox")).fail(
            psycopg2.errors.InsufficientPrivilege("permission denied"))
        self.assertEqual(self.figures.last, {"t1": (2, 0, 1.0, 0)})
        self.assertEqual(len(self.lines()), 1)
