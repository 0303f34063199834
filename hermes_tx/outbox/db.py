# -*- test-case-name: tests.test_outbox_cli -*-
"""
Blocking psycopg2 helpers for the outbox's command line and tests: a
transaction as a context, and connecting without letting a password reach
an error message.
"""

from contextlib import contextmanager

import psycopg2

from hermes_tx.postgres import dsn as dsnlib
from hermes_tx.exceptions import HermesException


class DatabaseError(HermesException):
    """
    Connecting failed; the message is one line without the DSN's
    password.
    """


@contextmanager
def transaction(conn):
    """
    Run a block in one transaction on a blocking connection that is
    otherwise in autocommit mode: commit when it ends, roll back when it
    raises, autocommit again afterwards.

    @return: a context giving a cursor.
    """
    conn.autocommit = False
    try:
        with conn.cursor() as cur:
            yield cur
        conn.commit()
    except BaseException:
        if not conn.closed:
            conn.rollback()
        raise
    finally:
        if not conn.closed:
            conn.autocommit = True


def scrub(text, dsn):
    """
    @param text: a message that may quote C{dsn} (libpq's do).
    @param dsn: the DSN in any accepted form.
    @return: C{text} with the DSN's password, wherever it appears, and any
        password-looking part replaced by C{***}.
    """
    text = str(text)
    try:
        password = dsnlib.parse(dsn).get("password")
    except HermesException:
        password = None
    if password:
        text = text.replace(password, "***")
    return dsnlib.redact(text)


def first_line(error):
    """
    @return: the first non-empty line of an exception's message (libpq
        messages run over several lines), or its class name.
    """
    for line in str(error).splitlines():
        if line.strip():
            return line.strip()
    return type(error).__name__


def connect(dsn, application_name="hermes-tx"):
    """
    @return: a blocking psycopg2 connection in autocommit mode.
    @raise hermes_tx.exceptions.InvalidConfigurationException: the DSN does
        not parse.
    @raise DatabaseError: connecting failed (one line, no password).
    """
    target = dsnlib.normalize(dsn, application_name=application_name, connect_timeout="10")
    try:
        conn = psycopg2.connect(target)
    except psycopg2.Error as e:
        raise DatabaseError(scrub(f"cannot connect: {first_line(e)}", dsn)) from None
    conn.autocommit = True
    return conn
