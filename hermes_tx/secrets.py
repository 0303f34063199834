# -*- test-case-name: tests.test_secrets -*-
"""
Keeping secrets out of messages: the one scrubber for every text that may
carry a password, a token, a DSN or a URL (libpq's errors, a sink's
errors, log lines, C{hermes-tx}'s and C{twistd hermes}' error lines).

Two mechanisms, both here:

  - L{Secrets}: the strings known to be secret (a DSN's password and the
    pieces libpq may split it into, L{hermes_tx.postgres.dsn.secrets}; a
    sink URL's password or token; C{PGPASSWORD}), removed by
    L{Secrets.scrub} (or L{scrub}) wherever they stand;
  - L{mask_passwords}: what looks like a password even when it is not
    known: a C{password=} keyword's value, a URL's C{user:password@} and a
    URL's C{?password=} parameter.

A secret of L{SCRUB_ANYWHERE_FROM} characters or more is replaced wherever
it occurs.  A shorter one only where it stands alone, not glued to a
letter, digit, C{_}, C{.} or C{-}: libpq and servers quote the values they
print or end them with white space or punctuation, so a short secret is
caught where a message shows it, while a password such as C{o} or C{1}
does not turn C{cannot connect} or C{127.0.0.1} into C{cann***t
c***nnect} (which would also tell what the password is).

A leaf module: it imports nothing of hermes_tx.
"""

import base64
import functools
import re
from urllib.parse import quote, quote_plus

#: what replaces a secret
MASK = "***"

#: secrets at least this long are scrubbed wherever they occur
SCRUB_ANYWHERE_FROM = 8

_PASSWORD_KV = re.compile(r"((?<![?&\w])(?:ssl)?password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", re.IGNORECASE)
_PASSWORD_QUERY = re.compile(r"([?&](?:ssl)?password=)[^&#\s]*", re.IGNORECASE)
_URL_USERINFO = re.compile(r"([a-z][a-z0-9+.\-]*://[^:/@?#\s]*:)[^@/?#\s]*@", re.IGNORECASE)


@functools.lru_cache(maxsize=64)
def _scrubber(secrets):
    parts = []
    for secret in sorted(secrets, key=lambda s: (-len(s), s)):
        pattern = re.escape(secret)
        if len(secret) < SCRUB_ANYWHERE_FROM:
            pattern = rf"(?<![\w.\-]){pattern}(?![\w.\-])"
        parts.append(pattern)
    return re.compile("|".join(parts))


def scrub(text, secrets):
    """
    @param text: any message (a libpq error, a log line).
    @param secrets: an iterable of secrets (a L{Secrets}, the frozenset
        L{hermes_tx.postgres.dsn.secrets} returns...).
    @return: C{text} with each secret replaced by L{MASK} (see the module's
        docstring for where), longest first: a secret inside another is
        not left half-shown.
    """
    text = str(text)
    secrets = frozenset(s for s in secrets if s)
    if not secrets:
        return text
    return _scrubber(secrets).sub(MASK, text)


def mask_passwords(text):
    """
    @return: C{text} with what looks like a password masked even when it is
        not a known secret: the value of a C{password=} or
        C{sslpassword=} keyword (a libpq C{key=value} string, a URL's
        query), and the password of a URL's C{user:password@} (any
        scheme).
    """
    text = _PASSWORD_KV.sub(lambda m: m.group(1) + MASK, str(text))
    text = _PASSWORD_QUERY.sub(lambda m: m.group(1) + MASK, text)
    return _URL_USERINFO.sub(lambda m: m.group(1) + MASK + "@", text)


def basic_token(username, password):
    """
    @return: the C{user:password} pair, base64-encoded, as HTTP basic
        authentication sends it.
    """
    pair = f"{username or ''}:{password}".encode("utf-8")
    return base64.b64encode(pair).decode("ascii")


class Secrets:
    """
    The secrets one DSN, URL or set of credentials holds, and L{scrub},
    which removes them (and L{mask_passwords}' patterns) from a text.
    """

    def __init__(self, *secrets):
        """
        @param secrets: secrets to remember (see L{add}); empty ones and
            C{None} are ignored.
        """
        self._secrets = set()
        self._params = {}  # a short query value where it follows its name -> masked
        for secret in secrets:
            self.add(secret)

    def add(self, secret):
        """
        Remember C{secret} and its URL-quoted forms (a URL or a server's
        message may quote it so); empty values and C{None} are ignored.
        """
        if secret:
            secret = str(secret)
            self._secrets.update({secret, quote(secret, safe=""), quote(secret)})

    def update(self, secrets):
        """
        Remember every secret of an iterable (see L{add}).
        """
        for secret in secrets:
            self.add(secret)

    def add_param(self, name, value):
        """
        Remember a URL query parameter's value: one of at least 8
        characters is a secret wherever it shows (L{add}); a shorter one
        (which may well show in other words) only where it follows
        C{name=}, as an echoed URL shows it.
        """
        if len(value) >= SCRUB_ANYWHERE_FROM:
            self.add(value)
        elif value:
            for n, v in ((name, value), (quote(name, safe=""), quote(value, safe="")),
                         (quote_plus(name), quote_plus(value))):
                self._params[f"{n}={v}"] = f"{n}={MASK}"

    def add_basic_auth(self, username, password):
        """
        Remember C{password} and the HTTP basic credentials built from it
        (a server may echo an C{Authorization} header back); a user name
        with no password is a token: it is remembered instead.
        """
        if password:
            self.add(password)
            self.add(basic_token(username, password))
        elif username:
            self.add(username)
            self.add(basic_token(username, ""))

    def __iter__(self):
        return iter(frozenset(self._secrets))

    def __len__(self):
        return len(self._secrets)

    def __repr__(self):
        return f"<Secrets ({len(self._secrets)} held)>"

    def scrub(self, text):
        """
        @return: C{text} (anything: it is made a string) with every known
            secret replaced by L{MASK} (L{scrub}), then L{mask_passwords}.
        """
        text = mask_passwords(scrub(text, self._secrets))
        for pattern in sorted(self._params, key=len, reverse=True):
            if pattern in text:
                text = text.replace(pattern, self._params[pattern])
        return text
