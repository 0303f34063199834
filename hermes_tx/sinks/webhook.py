# -*- test-case-name: tests.test_sink_webhook -*-
"""
L{WebhookSink}: one HTTP POST per batch, the body a JSON array of events
(see L{hermes_tx.sinks.records}).
"""

import hashlib
import hmac
from urllib.parse import parse_qsl, urlsplit, urlunsplit

from hermes_tx.sinks.base import Unsendable
from hermes_tx.sinks.httpsink import HttpSink
from hermes_tx.sinks.records import encode, id_of, record
from hermes_tx.sinks.urls import SinkURL, SinkURLError, Secrets, read_secret

#: the header carrying the HMAC-SHA256 signature of the body
SIGNATURE_HEADER = "X-Hermes-Signature"
#: the header carrying the idempotency key of a batch of changes
IDEMPOTENCY_HEADER = "Idempotency-Key"


def signature(secret, body):
    """
    @return: the signature header's value for C{body} (bytes):
        C{sha256=} and the hex HMAC-SHA256 of the exact body, keyed with
        C{secret} (text, UTF-8).
    """
    mac = hmac.new(secret.encode("utf-8"), body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def idempotency_key(events):
    """
    @return: the hex SHA-256 of the events' outbox ids joined by commas
        (the same batch of changes always gets the same key), or C{None}
        when some event has no id (a notification).
    """
    ids = [id_of(e) for e in events]
    if None in ids:
        return None
    return hashlib.sha256(",".join(ids).encode("ascii")).hexdigest()


class WebhookSink(HttpSink):
    """
    POSTs each batch to a URL as C{application/json}: a JSON array with one
    object per event.

    Outcomes (L{hermes_tx.sinks.statuses}): 2xx confirms the batch; 400,
    413 and 422 (its content is refused) split it in halves, down to the
    single events at fault, which are rejected (see L{HttpSink} for when a
    change is retried instead); 429 and 503 retry it after C{Retry-After}
    (seconds or an HTTP date, at most C{max_retry_after}); every other
    status (5xx, 401, 403, 404, 3xx...), timeouts and connection errors
    retry it as a whole, with one line naming the cause.  An event that
    cannot be encoded as strict JSON (NaN) is rejected on its own and the
    others are sent.

    With a secret, each request carries C{X-Hermes-Signature: sha256=<hex>},
    the HMAC-SHA256 of the exact body.  A batch of changes carries
    C{Idempotency-Key}: the SHA-256 (hex) of its outbox ids joined by
    commas.  User information in the URL (C{https://user:pass@host/})
    becomes HTTP basic authentication; it and the query string are never
    shown.
    """

    kind = "webhook"
    default_max_batch = 100

    def __init__(self, url, secret=None, secret_file=None, **http_kwargs):
        """
        @param url: an C{http://} or C{https://} URL.
        @param secret: the HMAC secret (text), or C{None}.
        @param secret_file: a file holding the HMAC secret (instead of
            C{secret}).
        @param http_kwargs: passed to L{HttpSink} and L{Sink}: C{timeout}
            (seconds for a whole request: connect, send, answer, body; then
            it is cancelled and the batch retried; default 30),
            C{max_retry_after}, C{max_batch}, C{clock}, C{reactor}, ...
        """
        parsed = SinkURL(url)
        if parsed.scheme not in ("http", "https"):
            raise SinkURLError(f"sink URL {parsed.redacted}: the webhook sink takes http(s) URLs")
        parsed.require_host()
        if secret_file is not None:
            secret = read_secret(secret_file)
        secrets = Secrets(secret)
        secrets.add_basic_auth(parsed.username, parsed.password)
        for name, value in parse_qsl(urlsplit(url).query, keep_blank_values=True):
            secrets.add_param(name, value)
        HttpSink.__init__(self, parsed.redacted, secrets, _without_userinfo(url),
                          {"Content-Type": "application/json"}, username=parsed.username,
                          password=parsed.password, **http_kwargs)
        self._secret = secret

    def prepare(self, event):
        try:
            return encode(record(event)).encode("utf-8")
        except ValueError as e:  # UnicodeEncodeError too
            raise Unsendable(f"not strict JSON: {e}") from None

    def body(self, events, prepared):
        body = b"[" + b",".join(prepared[id(e)] for e in events) + b"]"
        headers = {}
        if self._secret is not None:
            headers[SIGNATURE_HEADER] = signature(self._secret, body)
        key = idempotency_key(events)
        if key is not None:
            headers[IDEMPOTENCY_HEADER] = key
        return body, headers


def _without_userinfo(url):
    """
    @return: C{url} without C{user:password@} (sent as a header instead).
    """
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))
