# -*- test-case-name: tests.test_dsn -*-
"""
Connection strings: accept the forms libpq accepts, add what hermes_tx needs,
and print them without their secrets.

A DSN is a dict of libpq keywords, a C{key=value} string or a
C{postgresql://} URI.  Strings are passed to libpq as given (multi-host
C{host=a,b port=1,2} and URIs included); hermes_tx only appends keywords the
caller did not set.
"""

import re
from urllib.parse import quote

import psycopg2.extensions

from hermes_tx.exceptions import InvalidConfigurationException

#: Keywords appended to every DSN unless the caller set them.  TCP keepalives
#: make the kernel find a dead peer on an idle listen connection.
DEFAULTS = {
    "application_name": "hermes",
    "keepalives": "1",
    "keepalives_idle": "10",
    "keepalives_interval": "5",
    "keepalives_count": "3",
}

_URI_PREFIXES = ("postgresql://", "postgres://")
_PASSWORD_KV = re.compile(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", re.IGNORECASE)
_PASSWORD_QUERY = re.compile(r"([?&]password=)[^&#\s]*", re.IGNORECASE)
_URI_USERINFO = re.compile(r"(postgres(?:ql)?://[^:/@?#\s]*:)[^@/?#\s]*@", re.IGNORECASE)


def is_uri(dsn):
    """
    @return: True when the string C{dsn} is a C{postgresql://} URI.
    """
    return dsn.lstrip().lower().startswith(_URI_PREFIXES)


def redact(dsn):
    """
    @param dsn: a DSN in any accepted form, or any text that may hold one.
    @return: the same text with every password replaced by C{***}: the
        C{password=} keyword, a URI's C{user:password@} and a URI's
        C{?password=} parameter.
    """
    if isinstance(dsn, dict):
        return " ".join(
            f"{k}={'***' if k == 'password' else v}" for k, v in dsn.items() if v is not None
        )
    text = _PASSWORD_KV.sub(r"\1***", str(dsn))
    text = _PASSWORD_QUERY.sub(r"\1***", text)
    return _URI_USERINFO.sub(r"\1***@", text)


def parse(dsn):
    """
    Check a DSN's syntax.

    @param dsn: a dict, C{key=value} string or URI.
    @return: a dict of the libpq keywords it sets.
    @raise InvalidConfigurationException: it does not parse; the message is
        one line without the password.
    """
    if isinstance(dsn, dict):
        return {k: str(v) for k, v in dsn.items() if v is not None}
    if not isinstance(dsn, str):
        raise InvalidConfigurationException(
            f"DSN must be a dict or a string, not {type(dsn).__name__}"
        )
    try:
        return psycopg2.extensions.parse_dsn(dsn)
    except psycopg2.ProgrammingError as e:
        # libpq's message may quote a piece of the string, which can be a
        # piece of a password: only show it when there is no password.
        has_secret = redact(dsn) != dsn
        detail = "" if has_secret else ": " + str(e).strip().splitlines()[0]
        raise InvalidConfigurationException(f"invalid DSN syntax{detail}") from None


def normalize(dsn, **extra):
    """
    Make the string hermes_tx hands to libpq.

    @param dsn: a dict, C{key=value} string or URI.
    @param extra: keywords to set unless the DSN sets them (on top of
        L{DEFAULTS}); a value of C{None} leaves that keyword out.
    @return: a string for C{psycopg2.connect}: the caller's string unchanged
        with missing keywords appended, or a dict made into a string.
    @raise InvalidConfigurationException: the DSN does not parse.
    """
    given = parse(dsn)
    wanted = dict(DEFAULTS, **extra)
    missing = {k: v for k, v in wanted.items() if v is not None and k not in given}
    if isinstance(dsn, dict):
        return psycopg2.extensions.make_dsn(**dict(given, **missing))
    if not missing:
        return dsn
    if is_uri(dsn):
        query = "&".join(f"{k}={quote(str(v), safe='')}" for k, v in missing.items())
        base, sep, fragment = dsn.partition("#")
        joiner = "&" if "?" in base else "?"
        return f"{base}{joiner}{query}{sep}{fragment}"
    # make_dsn with no dsn quotes each value as libpq wants it.
    return f"{dsn} {psycopg2.extensions.make_dsn(**missing)}".lstrip()
