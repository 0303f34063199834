# -*- test-case-name: tests.test_sink_http -*-
"""
What an HTTP status says about a batch, for the webhook and Elasticsearch
sinks (the table is in the sinks page of the docs):

  - 2xx: done;
  - 400, 413, 422 (the content is refused): L{Refused}, and the batch is
    split in halves to find the events at fault
    (L{hermes_tx.sinks.http.send_in_halves});
  - 408, 425, 429 and 5xx: L{Retry} (429 and 503 honour C{Retry-After});
  - 401, 403, 407 (our credentials), 404, 405, 410 (no such endpoint), 3xx
    (redirects are not followed) and every other status: L{Retry} of the
    whole batch with one line naming the cause.  They are not the events'
    fault: nothing is dead-lettered for them, and the consumer's circuit
    breaker sees a dependency that is down.
"""

import email.utils

from hermes_tx.outcomes import Reject, Retry

#: the longest C{Retry-After} honoured, in seconds, unless a sink says else
MAX_RETRY_AFTER = 300.0
#: statuses that refuse the request's content: bad request, content too
#: large, unprocessable content
CONTENT_STATUSES = frozenset([400, 413, 422])
#: statuses retried as they are (besides 5xx): request timeout, too early,
#: too many requests
RETRY_STATUSES = frozenset([408, 425, 429])
#: statuses that refuse our credentials
AUTH_STATUSES = frozenset([401, 403, 407])
#: statuses that say there is no such endpoint, and how to say it
ENDPOINT_STATUSES = {404: "not found", 405: "does not take POST", 410: "gone"}


class Refused(Reject):
    """
    The server refused the content of a request (a status of
    L{CONTENT_STATUSES}): the batch is split to find the events at fault.

    @ivar status: the HTTP status.
    """

    def __init__(self, reason, status):
        Reject.__init__(self, reason)
        self.status = status


def parse_retry_after(value, now, cap=MAX_RETRY_AFTER):
    """
    Read a C{Retry-After} value: delay-seconds or an HTTP date.

    @param value: the header's text, or C{None}.
    @param now: the current time, in seconds since the epoch.
    @param cap: the longest delay returned.
    @return: seconds to wait (at least 0, at most C{cap}), or C{None} when
        there is no usable value.
    """
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            moment = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if moment is None or moment.tzinfo is None:
            return None
        seconds = moment.timestamp() - now
    if seconds != seconds:  # NaN
        return None
    return min(max(seconds, 0.0), cap)


def check_status(status, headers, content, now, target, max_retry_after=MAX_RETRY_AFTER):
    """
    Classify an answer (see the module docstring).  A 2xx returns.

    @param headers: the answer's C{Headers}.
    @param content: the answer's body (bytes).
    @param now: the current time, in seconds since the epoch.
    @param target: the sink's URL as it may be shown (redacted).
    @raise Refused: a status of L{CONTENT_STATUSES}.
    @raise Retry: any other status but 2xx.
    """
    if 200 <= status < 300:
        return
    why = f"HTTP {status}" + snippet(content)
    if status in CONTENT_STATUSES:
        raise Refused(why, status)
    if status in RETRY_STATUSES or 500 <= status < 600:
        after = None
        if status in (429, 503):
            after = parse_retry_after(header(headers, b"retry-after"), now, max_retry_after)
        raise Retry(why, after)
    if status in AUTH_STATUSES:
        raise Retry(f"authentication refused by {target}: {why}")
    if status in ENDPOINT_STATUSES:
        raise Retry(f"{target} {ENDPOINT_STATUSES[status]}: {why}")
    if 300 <= status < 400:
        location = " ".join((header(headers, b"location") or "nowhere").split())[:200]
        raise Retry(f"{target} redirects (HTTP {status} to {location}): redirects are not "
                    "followed, give the sink the final URL")
    raise Retry(f"{target} refused the request: {why}")


def header(headers, name):
    """
    @return: the first value of header C{name} (bytes) as text, or C{None}.
    """
    values = headers.getRawHeaders(name)
    return values[0].decode("latin-1") if values else None


def snippet(content, length=200):
    """
    @return: C{": "} and the first C{length} characters of a response body
        on one line, or C{""} for an empty one.
    """
    text = content[:length * 4].decode("utf-8", "replace")
    text = " ".join(text.split())[:length]
    return f": {text}" if text else ""
