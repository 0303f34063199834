# -*- test-case-name: tests.test_outbox_cli -*-
"""
Blocking psycopg2 helpers for the outbox's command line and tests: a
transaction as a context, and connecting to the primary (every host of a
multi-host DSN, as C{twistd hermes} does) without letting a password reach
an error message.
"""

import re
from contextlib import contextmanager

import psycopg2

from hermes_tx.exceptions import HermesException
from hermes_tx.postgres import dsn as dsnlib
from hermes_tx.postgres.hosts import join_hosts, split_hosts

#: seconds a connection attempt may take (C{connect_timeout}, unless the
#: DSN sets it): to a DSN's one host, and to each host of a multi-host DSN
CONNECT_TIMEOUT = 10
HOST_TIMEOUT = 5

#: what C{target_session_attrs} may ask for and L{connect} honours per host
#: (as C{twistd hermes}: anything else becomes "primary")
_PRIMARY_ATTRS = ("primary", "read-write")


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


def first_line(error):
    """
    @return: the first non-empty line of an exception's message (libpq
        messages run over several lines), or its class name.
    """
    for line in str(error).splitlines():
        if line.strip():
            return line.strip()
    return type(error).__name__


#: how libpq begins the message of a failed attempt on one host
_HOST_PREFIX = re.compile(r'^connection to server (?:at|on) ".*?"(?:, port \d+)? failed: ')


def _is_primary(conn, attrs):
    with conn.cursor() as cur:
        cur.execute("SELECT pg_is_in_recovery(), current_setting('transaction_read_only') = 'on'")
        standby, read_only = cur.fetchone()
    if standby:
        return "a standby"
    if attrs == "read-write" and read_only:
        return "read-only"
    return None


def connect(dsn, application_name="hermes-tx"):
    """
    Connect to the primary.  With one host, to it (whatever its role: the
    command decides what a standby may do).  With several (C{host=a,b}, a
    multi-host URI), each in turn, in the DSN's order, until one is a
    primary (C{pg_is_in_recovery()} false; with
    C{target_session_attrs=read-write}, also not read-only), as
    C{twistd hermes} seeks it whatever the DSN's order or
    C{target_session_attrs}.

    @return: a blocking psycopg2 connection in autocommit mode.
    @raise hermes_tx.exceptions.InvalidConfigurationException: the DSN does
        not parse.
    @raise DatabaseError: connecting failed, or no host is a primary (one
        line naming each host and why, no password).
    """
    secrets = dsnlib.dsn_secrets(dsn)
    params = dsnlib.parse(dsnlib.normalize(dsn, application_name=application_name))
    entries = split_hosts(params)
    params.setdefault("connect_timeout", str(CONNECT_TIMEOUT if len(entries) < 2 else HOST_TIMEOUT))
    if len(entries) < 2:
        try:
            conn = psycopg2.connect(**params)
        except psycopg2.Error as e:
            raise DatabaseError(secrets.scrub(f"cannot connect: {first_line(e)}")) from None
        conn.autocommit = True
        return conn
    attrs = params.pop("target_session_attrs", None)
    attrs = attrs if attrs in _PRIMARY_ATTRS else "primary"
    reasons = []
    for entry in entries:
        try:
            conn = psycopg2.connect(**join_hosts(params, [entry]))
        except psycopg2.Error as e:
            reasons.append(f"{entry.label}: {_HOST_PREFIX.sub('', first_line(e))}")
            continue
        conn.autocommit = True
        try:
            why = _is_primary(conn, attrs)
        except psycopg2.Error as e:
            why = first_line(e)
        if why is None:
            return conn
        conn.close()
        reasons.append(f"{entry.label}: {why}")
    raise DatabaseError(secrets.scrub(f"no primary among the DSN's hosts ({'; '.join(reasons)})"))
