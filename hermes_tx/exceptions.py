# -*- test-case-name: tests.test_strategies -*-
"""
Exceptions raised by hermes_tx, and how errors are shown in one log line.
"""

from twisted.python.failure import Failure


class HermesException(Exception):
    """
    Base class of every exception hermes_tx raises on purpose.
    """


class InvalidConfigurationException(HermesException):
    """
    The caller configured hermes_tx wrongly: a listener or processor that is
    not a L{hermes_tx.components.Component}, a channel name PostgreSQL would
    refuse or truncate, a DSN that does not parse.  The message is one line
    meant for a human and never contains a password.
    """


class ConnectionLostError(HermesException):
    """
    The connection to PostgreSQL went away while hermes_tx was using it.

    Raised (or passed to error strategies) in place of the assorted psycopg2
    and Twisted errors that a dropped connection produces, so strategies can
    classify it by class.
    """


class StandbyServerError(HermesException):
    """
    The server is a standby (in recovery), where LISTEN is refused: hermes_tx
    checks first and raises this instead of asking.
    """


def one_line(error):
    """
    @return: C{error} as a single line for a log: its class and the first
        line of its message (libpq messages run over several lines).  It
        may quote what the error quotes: scrub it of secrets
        (L{hermes_tx.postgres.dsn.scrub}) where it may hold any.
    """
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__


def failure_of(error):
    """
    @return: a L{Failure} of an exception caught earlier, with its traceback.
    """
    return Failure(error, type(error), error.__traceback__)


class ConnectFailedError(ConnectionLostError):
    """
    A connection to PostgreSQL could not be made (refused, timed out, wrong
    password, no such database, no primary among the hosts ...).  The
    message is libpq's, first line only, with the DSN's secrets removed.
    """


class ExecuteTimeout(HermesException):
    """
    A processor's C{execute} (its Deferred) did not finish within the
    component's C{execute_timeout}; it was cancelled.
    """
