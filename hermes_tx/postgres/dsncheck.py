# -*- test-case-name: tests.test_dsn -*-
"""
L{check_options}: find a DSN libpq can never connect with before trying.
"""

import os
import socket

import psycopg2
import psycopg2.extensions

from hermes_tx.exceptions import InvalidConfigurationException
from hermes_tx.postgres.dsn import parse, scrub, secrets

#: where L{check_options} points libpq: a socket directory that cannot
#: exist (a path under a file), so the attempt fails at once, locally
NOWHERE = "/dev/null/hermes-dsn-check"


def check_options(dsn, environ=None):
    """
    Ask libpq whether a DSN's options can ever work, with no name lookup
    and no network: what libpq reports as a configuration error (C{port=notaport},
    C{port=99999999}, C{sslmode=bogus}, a bad C{target_session_attrs}, an
    unknown service, host and port lists that do not match, a C{hostaddr}
    that is not an address) is found here rather than on every connection
    attempt.

    libpq checks options when a connection starts; an asynchronous
    C{psycopg2.connect} fails at once when they are wrong.  For the check,
    every host becomes L{NOWHERE} (a Unix socket that cannot exist) and
    C{hostaddr} is emptied, so the attempt ends in C{connect()} failing
    locally: nothing is resolved and nothing is sent (about 0.05 ms).
    Errors that name L{NOWHERE} are the expected end of that attempt; any
    other line is the configuration error.  Host and port values a
    C{pg_service.conf} service supplies are checked when connecting.

    @param dsn: a dict, C{key=value} string or URI.
    @param environ: the environment libpq will see (C{PG*} variables);
        C{None} means C{os.environ}.
    @raise InvalidConfigurationException: the DSN does not parse or libpq
        calls its options wrong; one line, scrubbed of its secrets.
    """
    environ = os.environ if environ is None else environ
    given = parse(dsn)
    hosts = given.get("host", environ.get("PGHOST", ""))
    addresses = given.get("hostaddr", environ.get("PGHOSTADDR", ""))
    problem = _address_problem(hosts, addresses)
    if problem is None:
        problem = _libpq_option_error(probe_dsn(given, environ))
    if problem:
        raise InvalidConfigurationException(
            f"invalid connection options: {scrub(problem, secrets(dsn, environ))}"
        )


def probe_dsn(given, environ):
    """
    @param given: the keywords of a DSN (L{hermes_tx.postgres.dsn.parse}).
    @param environ: the environment libpq will see.
    @return: the DSN L{check_options} hands libpq: C{given} with as many
        hosts as it names (or C{PGHOST}/C{PGHOSTADDR}, or one), each
        L{NOWHERE}, and an empty C{hostaddr}.
    """
    hosts = given.get("host", environ.get("PGHOST", ""))
    addresses = given.get("hostaddr", environ.get("PGHOSTADDR", ""))
    count = (hosts or addresses).count(",") + 1
    probe = dict(given, host=",".join([NOWHERE] * count), hostaddr="")
    if given.get("gssencmode", environ.get("PGGSSENCMODE")) == "require":
        probe["gssencmode"] = "prefer"  # refused on sockets, fine on TCP
    if "host" not in given and "hostaddr" not in given and (
        "service" in given or "PGSERVICE" in environ
    ):
        probe["port"] = ""  # the service's host list is unknown here
    return psycopg2.extensions.make_dsn(**probe)


def _address_problem(hosts, addresses):
    # What libpq says of hostaddr values when it connects.
    if not addresses:
        return None
    entries = addresses.split(",")
    if hosts and hosts.count(",") + 1 != len(entries):
        return f"could not match {hosts.count(',') + 1} host names to {len(entries)} hostaddr values"
    for entry in filter(None, entries):
        try:
            socket.getaddrinfo(entry, None, flags=socket.AI_NUMERICHOST)
        except socket.gaierror:
            return f'could not parse network address "{entry}"'
    return None


def _libpq_option_error(probe):
    try:
        connection = psycopg2.connect(probe, async_=True)
    except psycopg2.Error as e:
        lines = [
            line.strip() for line in str(e).splitlines()
            if line.strip() and not line.startswith("\t") and NOWHERE not in line
        ]
        return "; ".join(lines) or None
    connection.close()  # not reached: nothing can listen at NOWHERE
    return None
