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


def one_line(error, secrets=()):
    """
    @param secrets: strings that must not show (L{hermes_tx.dsn.secrets} of
        the DSN the error is about): each is scrubbed from the line.
    @return: C{error} as a single line for a log: its class and the first
        line of its message (libpq messages run over several lines).
    """
    text = str(error).strip().splitlines()
    line = f"{type(error).__name__}: {text[0]}" if text else type(error).__name__
    if secrets:
        from hermes_tx.dsn import scrub  # hermes_tx.dsn imports this module

        line = scrub(line, secrets)
    return line


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
