# -*- test-case-name: tests.test_dsn -*-
"""
Connection strings: accept the forms libpq accepts, add what hermes_tx needs
through libpq's own parsing and quoting, check them before use, and keep
their secrets out of every message.  (L{hermes_tx.postgres.dsncheck} checks their
options.)

A DSN is a dict of libpq keywords, a C{key=value} string or a
C{postgresql://} URI (multi-host C{host=a,b port=1,2} included).  The empty
DSN means libpq's defaults: C{PGHOST}, C{PGPORT}, C{PGUSER},
C{PGDATABASE}, C{PGPASSFILE} and the rest, as with C{psql}.

Secrets (L{secrets}): libpq never prints a password, but it does
print the values it parsed (host, port, database name...), and a password
written into a URI or C{key=value} string without the quoting it needs is
split by libpq into pieces that land in those values:
C{postgresql://sec:Wr@ngPassXYZ@127.0.0.1/db} is user C{sec}, password
C{Wr} and host C{ngPassXYZ@127.0.0.1}, and the error names that host.  So
the secrets of a DSN are the password as libpq parses it, and, when libpq
could not have parsed it as meant (the string does not parse, or a URI
puts an C{@} in a host, port or database name, or a non-number in a port),
the password as a human meant it (a URI's text between the user's C{:} and
the last C{@}; a C{key=value} password running up to the next libpq
keyword), percent-decoded or unescaped as well, and each piece of it
between the characters libpq splits at (C{@ : / ? & = , [ ]}, quotes,
backslashes, white space).  C{PGPASSWORD} is a secret too.

L{hermes_tx.secrets} scrubs them from messages (L{hermes_tx.secrets.scrub},
L{hermes_tx.secrets.Secrets}; L{dsn_secrets} gives a DSN's as a
L{hermes_tx.secrets.Secrets}): the one scrubber of hermes_tx, so a short
password such as C{on} or C{1} does not turn C{connection} or
C{127.0.0.1} into rubble.
"""

import functools
import os
import re
from urllib.parse import unquote

import psycopg2
import psycopg2.extensions

from hermes_tx.exceptions import InvalidConfigurationException
from hermes_tx.secrets import MASK, SCRUB_ANYWHERE_FROM, Secrets, mask_passwords, scrub  # noqa: F401 (here before)

#: Keywords appended to every DSN unless the caller set them.  TCP keepalives
#: make the kernel find a dead peer on an idle listen connection.
DEFAULTS = {
    "application_name": "hermes",
    "keepalives": "1",
    "keepalives_idle": "10",
    "keepalives_interval": "5",
    "keepalives_count": "3",
}

#: libpq keywords whose values are secrets
SECRET_KEYWORDS = ("password", "sslpassword")

_URI_PREFIXES = ("postgresql://", "postgres://")
# Where libpq may split a password that was not quoted as it needs.
_PIECES = re.compile(r"[\s'\"\\@:/?&=,\[\]]+")
# A password keyword in key=value form, and in a URI query; the next
# keyword after it, in each form.
_PASSWORD_START_KV = re.compile(r"(?:^|\s)(?:ssl)?password\s*=\s*", re.I)
_PASSWORD_START_QUERY = re.compile(r"[?&](?:ssl)?password=", re.I)
_NEXT_KEY_KV = re.compile(r"\s+(\w+)\s*=")
_NEXT_KEY_QUERY = re.compile(r"&(\w+)=")
_KV_ESCAPE = re.compile(r"\\(.)", re.S)


def is_uri(dsn):
    """
    @return: True when the string C{dsn} is a C{postgresql://} URI.
    """
    return dsn.lstrip().lower().startswith(_URI_PREFIXES)


def _uri_parsed_as_meant(parsed):
    # A host, port or database name holding "@", or a port that is not a
    # number, means part of the user info (a password) landed there.
    for key in ("host", "hostaddr", "port", "dbname"):
        if "@" in parsed.get(key, ""):
            return False
    return all(p.isdigit() for p in parsed.get("port", "").split(",") if p)


def dsn_secrets(*dsns, environ=None):
    """
    @param dsns: DSNs in any form (they need not parse); C{None} and C{""}
        are skipped.
    @param environ: as for L{secrets}.
    @return: a L{hermes_tx.secrets.Secrets} holding the L{secrets} of each.
    """
    found = Secrets()
    for dsn in dsns:
        if dsn:
            found.update(secrets(dsn, environ))
    found.update(secrets("", environ))  # PGPASSWORD
    return found


@functools.lru_cache(maxsize=256)
def _is_keyword(name):
    try:
        psycopg2.extensions.parse_dsn(f"{name}=''")
    except psycopg2.ProgrammingError:
        return False
    return True


def _values_after(text, start, next_key):
    """
    @return: for each match of C{start} in C{text}, the text after it up to
        the next libpq keyword C{next_key} finds (or the end).
    """
    for match in start.finditer(text):
        end = len(text)
        for key in next_key.finditer(text, match.end()):
            if _is_keyword(key.group(1)):
                end = key.start()
                break
        yield text[match.end():end].strip()


def _meant_passwords(dsn):
    """
    @return: the passwords a human may have meant in the string C{dsn},
        each as written and as libpq would decode it.
    """
    if is_uri(dsn):
        rest = dsn.split("://", 1)[1]
        userinfo = rest[: rest.rfind("@")] if "@" in rest else ""
        raw = [userinfo.split(":", 1)[1]] if ":" in userinfo else []
        raw += _values_after(rest, _PASSWORD_START_QUERY, _NEXT_KEY_QUERY)
        return raw + [unquote(r, errors="replace") for r in raw]
    raw = list(_values_after(dsn, _PASSWORD_START_KV, _NEXT_KEY_KV))
    return raw + [_KV_ESCAPE.sub(r"\1", r.strip("'")) for r in raw]


def secrets(dsn, environ=None):
    """
    @param dsn: a dict, C{key=value} string or URI; it need not parse.
    @param environ: the environment, for C{PGPASSWORD}; C{None} means
        C{os.environ}.
    @return: a frozenset of the strings no message may show (see the
        module's docstring for which and why).
    """
    found = set()
    if isinstance(dsn, dict):
        found.update(str(dsn[k]) for k in SECRET_KEYWORDS if dsn.get(k) is not None)
    elif isinstance(dsn, str):
        try:
            parsed = psycopg2.extensions.parse_dsn(dsn)
        except psycopg2.ProgrammingError:
            parsed = None
        if parsed is not None:
            found.update(parsed[k] for k in SECRET_KEYWORDS if k in parsed)
        if parsed is None or (is_uri(dsn) and not _uri_parsed_as_meant(parsed)):
            for meant in _meant_passwords(dsn):
                found.add(meant)
                found.update(_PIECES.split(meant))
    environ = os.environ if environ is None else environ
    found.add(environ.get("PGPASSWORD", ""))
    found.discard("")
    return frozenset(found)


def redact(dsn):
    """
    @param dsn: a DSN in any accepted form, or any text that may hold one.
    @return: the same text with every password replaced by C{***}: whatever
        L{secrets} finds in it, then
        L{hermes_tx.secrets.mask_passwords}' patterns (the C{password=}
        keyword, a URI's C{user:password@} and C{?password=}).
    """
    if isinstance(dsn, dict):
        return " ".join(
            f"{k}={MASK if k in SECRET_KEYWORDS else v}" for k, v in dsn.items() if v is not None
        )
    text = str(dsn)
    return mask_passwords(scrub(text, secrets(text, environ={})))


def parse(dsn):
    """
    Check a DSN's syntax.

    @param dsn: a dict, C{key=value} string or URI.
    @return: a dict of the libpq keywords it sets (C{{}} for C{""}).
    @raise InvalidConfigurationException: it does not parse; the message is
        one line, scrubbed of the DSN's secrets.
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
        detail = str(e).strip().splitlines()[0].removeprefix("invalid dsn: ")
        raise InvalidConfigurationException(
            f"invalid DSN syntax: {scrub(detail, secrets(dsn))}"
        ) from None


def normalize(dsn, **extra):
    """
    Make the string hermes_tx hands to libpq.

    Keywords are added by libpq's own parsing and quoting
    (C{psycopg2.extensions.make_dsn}), never by appending text: a URI
    becomes the equivalent C{key=value} string, and every keyword the DSN
    sets is kept exactly (an empty C{dbname=} included).

    @param dsn: a dict, C{key=value} string or URI (C{""}: libpq's
        defaults).
    @param extra: keywords to set unless the DSN sets them (on top of
        L{DEFAULTS}); a value of C{None} leaves that keyword out.
    @return: a C{key=value} string for C{psycopg2.connect}.
    @raise InvalidConfigurationException: the DSN does not parse.
    """
    given = parse(dsn)
    wanted = dict(DEFAULTS, **extra)
    missing = {k: str(v) for k, v in wanted.items() if v is not None and k not in given}
    if isinstance(dsn, str) and not missing:
        return dsn
    return psycopg2.extensions.make_dsn(**dict(given, **missing))


def read_file(path):
    """
    Read a DSN from a file (so no password shows in C{ps}).

    @param path: the file's path.
    @return: its text without the trailing line end.
    @raise InvalidConfigurationException: it cannot be read (one line).
    """
    try:
        with open(path, encoding="utf-8") as f:
            return f.read().rstrip("\r\n")
    except (OSError, UnicodeDecodeError) as e:
        reason = getattr(e, "strerror", None) or str(e)
        raise InvalidConfigurationException(f"cannot read DSN file {path!r}: {reason}") from None
