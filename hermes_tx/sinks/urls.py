# -*- test-case-name: tests.test_sink_urls -*-
"""
Sink URLs: parsing, secrets, and redaction.

A sink URL may carry a password (C{amqp://user:PASSWORD@host/}) or a token
in its query string (C{https://hooks.example/x?token=...}); a secret may
also come from a file.  Neither may reach a log line, a C{repr}, a status
page or an error message: L{redact_url} is the only way a sink shows its
URL, and L{hermes_tx.secrets.Secrets.scrub} (the one scrubber) is applied
to every error text a sink produces (an error from the other side may
quote what it was sent).
"""

from urllib.parse import parse_qsl, quote, unquote, urlsplit, urlunsplit

from hermes_tx.exceptions import InvalidConfigurationException
from hermes_tx.secrets import MASK, Secrets, basic_token  # noqa: F401 (the sinks' names for them)

#: schemes besides HTTP's whose user name alone is a token
#: (C{nats://TOKEN@host})
TOKEN_USER_SCHEMES = ("nats", "tls")


class SinkURLError(InvalidConfigurationException):
    """
    A sink URL that cannot be used.  The message names the URL only in its
    redacted form.
    """


def redact_url(url, safe_params=()):
    """
    The URL as it may be shown: the password of the user information
    becomes C{***}, and so does an HTTP or NATS URL's user name when no
    password follows it (C{https://TOKEN@host/}, C{https://TOKEN:@host/},
    C{nats://TOKEN@host/}: then it is the secret; a Redis or AMQP user
    name, whose password may come from a secret file, is shown), and the value of every query parameter not named in
    C{safe_params} (a webhook's C{?token=...}).  The path is shown: do not
    put a secret in it.

    @param url: a URL (text).
    @param safe_params: names of query parameters whose values are shown.
    @return: the redacted URL (text); C{"<unparsable URL>"} when it does
        not parse, since then nothing in it can be told apart.
    """
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018  (raises ValueError on a bad port)
    except ValueError:
        return "<unparsable URL>"
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, hostport = netloc.rpartition("@")
        user, _, password = userinfo.partition(":")
        if password:
            netloc = f"{user}:{MASK}@{hostport}"
        elif user and ("http" in parts.scheme or parts.scheme.lower() in TOKEN_USER_SCHEMES):
            netloc = f"{MASK}@{hostport}"
        else:
            netloc = f"{user}@{hostport}" if user else hostport
    query = "&".join(
        f"{quote(name, safe='')}={quote(value, safe='') if name in safe_params else MASK}"
        for name, value in parse_qsl(parts.query, keep_blank_values=True)
    )
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))


class SinkURL:
    """
    A parsed sink URL.

    @ivar url: the URL as given (holds secrets: never show it).
    @ivar scheme: the scheme, lower case (C{"elasticsearch+https"}).
    @ivar host: the host name (C{""} when none).
    @ivar port: the port, or C{None}.
    @ivar username: the user name (unquoted), or C{None}.
    @ivar password: the password (unquoted), or C{None}.
    @ivar path: the path (unquoted), without the leading C{/}.
    @ivar params: the query parameters as a dict (the last one of a name
        wins).
    @ivar redacted: the URL as it may be shown (see L{redact_url}).
    """

    def __init__(self, url, safe_params=()):
        """
        @param url: the URL text.
        @param safe_params: query parameters whose values are not secret.
        @raise SinkURLError: it does not parse.
        """
        self.url = url
        self.redacted = redact_url(url, safe_params)
        try:
            parts = urlsplit(url)
            self.port = parts.port
        except ValueError:
            raise SinkURLError(f"sink URL {self.redacted} does not parse") from None
        self.scheme = parts.scheme.lower()
        self.host = parts.hostname or ""
        self.username = unquote(parts.username) if parts.username is not None else None
        self.password = unquote(parts.password) if parts.password is not None else None
        self.path = unquote(parts.path.lstrip("/"))
        self.params = dict(parse_qsl(parts.query, keep_blank_values=True))

    def require_host(self):
        """
        @raise SinkURLError: the URL names no host.
        """
        if not self.host:
            raise SinkURLError(f"sink URL {self.redacted} names no host")

    def int_param(self, name, default=None, minimum=0):
        """
        @return: the query parameter C{name} as an int, or C{default}.
        @raise SinkURLError: it is not an int of at least C{minimum}.
        """
        text = self.params.get(name)
        if text is None or text == "":
            return default
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < minimum:
            raise SinkURLError(
                f"sink URL {self.redacted}: {name} must be an integer >= {minimum}"
            )
        return value

    def __repr__(self):
        return f"<SinkURL {self.redacted}>"


def read_secret(path):
    """
    Read a secret (a password, a token, an HMAC key) from a file: its whole
    text, less one trailing newline (C{\\n} or C{\\r\\n}).

    @raise SinkURLError: the file cannot be read or is empty (the message
        names the file, never its content).
    """
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise SinkURLError(f"cannot read the secret file {path!r}: {type(e).__name__}") from None
    if text.endswith("\r\n"):
        text = text[:-2]
    elif text.endswith("\n"):
        text = text[:-1]
    if not text:
        raise SinkURLError(f"the secret file {path!r} is empty")
    return text

