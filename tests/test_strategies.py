"""
Tests for L{hermes_tx.strategies}.  Errors from a real server are covered in
tests.test_listeners; here each class and SQLSTATE is checked on its own.
"""

import psycopg2
import psycopg2.errors
from twisted.internet import error as twisted_error
from twisted.trial import unittest

from hermes_tx import strategies
from hermes_tx.exceptions import ConnectionLostError


def with_sqlstate(base, code):
    """
    @return: an instance of a subclass of C{base} whose C{pgcode} is
        C{code}, as psycopg2 makes for errors the server reports.
    """
    return type("E" + code, (base,), {"pgcode": code})()


class CommonErrorStrategyTests(unittest.TestCase):
    def setUp(self):
        self.strategy = strategies.CommonErrorStrategy()

    def assertVerdict(self, error, expected, action):
        self.assertEqual(self.strategy.handle_exception(error), (expected, action), repr(error))

    def test_connection_errors_back_off(self):
        for error in [
            psycopg2.OperationalError("server closed the connection unexpectedly"),
            psycopg2.InterfaceError("connection already closed"),
            ConnectionLostError("gone"),
            twisted_error.ConnectionLost(),
            twisted_error.ConnectionDone(),
            with_sqlstate(psycopg2.OperationalError, "57P01"),  # admin shutdown
            with_sqlstate(psycopg2.OperationalError, "57P03"),  # cannot connect now
            with_sqlstate(psycopg2.OperationalError, "08006"),
            with_sqlstate(psycopg2.InternalError, "25006"),  # standby refuses
            with_sqlstate(psycopg2.OperationalError, "53300"),  # too many connections
            with_sqlstate(psycopg2.extensions.TransactionRollbackError, "40001"),
            with_sqlstate(psycopg2.errors.QueryCanceled, "57014"),  # statement_timeout
        ]:
            self.assertVerdict(error, True, strategies.BACKOFF)

    def test_a_statement_cut_short_is_not_a_lost_connection(self):
        """
        A statement cut short (SQLSTATE 57014, also as psycopg2 raises it
        without a SQLSTATE) left the connection fine.
        """
        for error in (psycopg2.errors.QueryCanceled("canceling statement due to statement timeout"),
                      with_sqlstate(psycopg2.errors.QueryCanceled, "57014")):
            self.assertFalse(strategies.is_connection_error(error))

    def test_other_database_errors_continue(self):
        for error in [
            with_sqlstate(psycopg2.ProgrammingError, "42601"),  # syntax error
            with_sqlstate(psycopg2.IntegrityError, "23505"),  # unique violation
            with_sqlstate(psycopg2.DataError, "22P02"),
        ]:
            self.assertVerdict(error, True, strategies.CONTINUE)

    def test_messages_are_not_read(self):
        """
        A syntax error whose text looks like a connection failure is still a
        syntax error.
        """
        error = type("E", (psycopg2.ProgrammingError,), {"pgcode": "42601"})(
            "server closed the connection unexpectedly"
        )
        self.assertVerdict(error, True, strategies.CONTINUE)

    def test_non_database_errors_are_unexpected(self):
        for error in [ValueError("x"), KeyError("k"), ZeroDivisionError()]:
            self.assertVerdict(error, False, strategies.BACKOFF)

    def test_abstract(self):
        self.assertRaises(
            NotImplementedError, strategies.AbstractErrorStrategy().handle_exception, ValueError()
        )
