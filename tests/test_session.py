"""
Tests for L{hermes_tx.postgres.session.Session} in memory: a
L{ScriptedConnection} whose every answer the test gives, and a
L{task.Clock} for the deadlines.  Every query has one (its own or the
session's); a missed one fails every waiting query and reports the loss
once; so does the connection's own report of its loss; a close fails the
waiters and reports nothing; answers after the end are ignored.
"""

import psycopg2
from twisted.internet import task
from twisted.trial import unittest

from hermes_tx.exceptions import ConnectionLostError
from hermes_tx.postgres.session import Session
from tests.support.fakes import ScriptedConnection


class SessionTests(unittest.TestCase):
    def setUp(self):
        self.clock = task.Clock()
        self.clock.advance(100)
        self.conn = ScriptedConnection()
        self.losses = []
        self.session = self.make(10.0)

    def make(self, deadline):
        return Session(self.conn, self.clock, deadline, self.losses.append)

    def assertNoTimer(self):
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def assertLostWith(self, d, text):
        error = self.failureResultOf(d, ConnectionLostError).value
        self.assertEqual(str(error), text)
        return error

    # -- answers --------------------------------------------------------------

    def test_answer_in_time(self):
        d = self.session.query("SELECT 1", (1,))
        [query] = self.conn.waiting()
        self.assertEqual((query.statement, query.params), ("SELECT 1", (1,)))
        self.assertEqual(self.session.in_flight, 1)
        self.clock.advance(9.9)
        query.answer([(1,)])
        self.assertEqual(self.successResultOf(d), [(1,)])
        self.assertEqual(self.session.in_flight, 0)
        self.assertNoTimer()
        self.assertEqual(self.losses, [])

    def test_operation(self):
        d = self.session.operation("DELETE FROM t")
        self.conn.one().answer()
        self.assertEqual(self.successResultOf(d), [])

    def test_answered_at_once(self):
        """
        A connection that answers before the query is even waited for
        leaves no timer.
        """
        conn = ScriptedConnection()  # the role check is answered at once
        session = Session(conn, self.clock, 10.0, self.losses.append)
        d = session.query("SELECT pg_is_in_recovery()")
        self.assertEqual(self.successResultOf(d), [(False,)])
        self.assertNoTimer()

    def test_error_answer(self):
        """
        A statement's error is that query's answer: the session goes on.
        """
        d = self.session.query("SELECT nope")
        self.conn.one().fail(psycopg2.ProgrammingError("column nope does not exist"))
        self.failureResultOf(d, psycopg2.ProgrammingError)
        self.assertNoTimer()
        self.assertEqual(self.losses, [])
        d = self.session.query("SELECT 1")
        self.conn.one().answer([(1,)])
        self.assertEqual(self.successResultOf(d), [(1,)])

    # -- deadlines ------------------------------------------------------------

    def test_default_deadline(self):
        d = self.session.query("SELECT pg_sleep(60)")
        self.clock.advance(9.9)
        self.assertNoResult(d)
        self.clock.advance(0.1)
        error = self.assertLostWith(d, "no answer from the server within 10 s")
        self.assertEqual(self.losses, [error])

    def test_deadline_per_query(self):
        d = self.session.query("SELECT pg_sleep(60)", deadline=2.5)
        self.clock.advance(2.4)
        self.assertNoResult(d)
        self.clock.advance(0.1)
        self.assertLostWith(d, "no answer from the server within 2.5 s")

    def test_longer_deadline_per_query(self):
        d = self.session.query("SELECT figures()", deadline=30)
        self.clock.advance(29)
        self.assertNoResult(d)
        self.conn.one().answer([])
        self.assertEqual(self.successResultOf(d), [])
        self.assertEqual(self.losses, [])

    def test_missed_deadline_fails_every_waiting_query(self):
        """
        The first deadline missed ends the session: every waiting query
        fails with the same error, the loss is reported once, no timer is
        left, and later queries fail at once.
        """
        first = self.session.query("SELECT 1")
        self.clock.advance(5)
        second = self.session.query("SELECT 2", deadline=1)
        third = self.session.operation("SELECT 3", deadline=60)
        self.clock.advance(1)
        errors = [self.failureResultOf(d, ConnectionLostError).value
                  for d in (first, second, third)]
        self.assertEqual(str(errors[0]), "no answer from the server within 1 s")
        self.assertEqual([e is errors[0] for e in errors], [True] * 3)
        self.assertEqual(self.losses, [errors[0]])
        self.assertEqual(self.session.in_flight, 0)
        self.assertNoTimer()
        later = self.session.query("SELECT 4")
        self.assertIs(self.failureResultOf(later, ConnectionLostError).value, errors[0])
        self.assertEqual(len(self.conn.asked), 3)  # nothing more was sent
        self.clock.advance(100)
        self.assertEqual(len(self.losses), 1)

    def test_answers_after_the_end_are_ignored(self):
        d = self.session.query("SELECT 1")
        self.clock.advance(10)
        self.failureResultOf(d, ConnectionLostError)
        self.conn.one().answer([(1,)])  # no AlreadyCalledError
        self.conn.lose()
        self.assertEqual(len(self.losses), 1)

    def test_no_deadline(self):
        session = self.make(None)
        d = session.query("LISTEN forever")
        self.assertNoTimer()
        self.clock.advance(10 ** 6)
        self.assertNoResult(d)
        self.conn.one().answer()
        self.successResultOf(d)
        d = session.query("SELECT 1", deadline=1)
        self.clock.advance(1)
        self.failureResultOf(d, ConnectionLostError)

    # -- the connection's loss, and close ---------------------------------------

    def test_connection_reports_its_loss(self):
        d = self.session.query("SELECT 1")
        error = ConnectionLostError("server closed the connection unexpectedly")
        self.conn.lose(error)
        self.assertIs(self.failureResultOf(d, ConnectionLostError).value, error)
        self.assertEqual(self.losses, [error])
        self.assertNoTimer()
        self.conn.lose()
        self.clock.advance(10)
        self.assertEqual(self.losses, [error])

    def test_loss_with_nothing_waiting(self):
        error = ConnectionLostError("gone")
        self.conn.lose(error)
        self.assertEqual(self.losses, [error])

    def test_close_fails_waiters_quietly(self):
        """
        The source is done with the connection: waiting queries fail, no
        loss is reported (not even the connection's own, later).
        """
        d = self.session.query("SELECT 1")
        self.session.close()
        self.assertLostWith(d, "the connection was closed")
        self.assertNoTimer()
        self.conn.lose()
        self.clock.advance(10)
        self.assertEqual(self.losses, [])
        self.assertLostWith(self.session.query("SELECT 2"), "the connection was closed")
        self.conn.one().answer([(1,)])

    def test_close_after_a_loss(self):
        error = ConnectionLostError("gone")
        self.conn.lose(error)
        self.session.close()
        self.assertIs(self.failureResultOf(self.session.query("x"), ConnectionLostError).value,
                      error)
        self.assertEqual(self.losses, [error])

    # -- signs of life ----------------------------------------------------------

    def test_last_activity(self):
        """
        An answer (an error too) and a notification move last_activity; a
        query sent does not.
        """
        self.assertEqual(self.session.last_activity, 100)
        self.clock.advance(1)
        answered = self.session.query("SELECT 1")
        refused = self.session.query("SELECT nope")
        self.assertEqual(self.session.last_activity, 100)
        self.clock.advance(1)
        self.conn.waiting()[0].answer([(1,)])
        self.successResultOf(answered)
        self.assertEqual(self.session.last_activity, 102)
        self.clock.advance(1)
        self.conn.one().fail(psycopg2.ProgrammingError("no"))
        self.failureResultOf(refused, psycopg2.ProgrammingError)
        self.assertEqual(self.session.last_activity, 103)
        self.clock.advance(1)
        self.session.saw_notifications()
        self.assertEqual(self.session.last_activity, 104)
