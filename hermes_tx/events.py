# -*- test-case-name: tests.test_events -*-
"""
L{Event}: what a listener queues.  C{kind} is:

  - C{"notification"}: one NOTIFY, with C{channel}, C{payload}, C{pid};
  - C{"start"}: listening has begun for the first time in the listener's
    life (when C{fire_on_start}); work done while nobody listened can be
    caught up now;
  - C{"resync"}: listening has begun again after any gap: a lost
    connection, or a stop and start (the Client stops the listener while the
    server is a standby or unreachable).  PostgreSQL keeps nothing for absent
    listeners, so notifications sent during the gap are gone: re-scan
    whatever they would have told you;
  - C{"change"}: one row of the durable outbox (L{Change}), claimed for this
    instance; nothing needs a re-scan, the outbox is the catch-up.
"""

import json
import math
import re

#: what a listener may do with payloads: keep the text, or decode JSON too
PAYLOAD_FORMATS = ("text", "json")

#: the keys every event has in L{Event.as_dict}
FIELDS = ("kind", "channel", "payload", "pid", "received_at")


class Event:
    """
    One item on a listener's queue.

    @ivar kind: C{"notification"}, C{"start"} or C{"resync"}.
    @ivar channel: the channel name, exactly as sent (C{None} for start and
        resync).
    @ivar payload: the payload text (C{""} when none was sent; C{None} for
        start and resync).
    @ivar pid: the process id of the notifying backend (C{None} for start and
        resync).
    @ivar received_at: when the listener read it, in seconds since the epoch
        (from the listener's clock).
    @ivar data: only with C{payload_format="json"}: the decoded payload.
    @ivar decode_error: only with C{payload_format="json"}, when the payload
        is not strict JSON (L{strict_json_loads}): why (and C{data} is not
        set).
    """

    __slots__ = FIELDS + ("data", "decode_error")

    def __init__(self, kind, channel=None, payload=None, pid=None, received_at=None):
        self.kind = kind
        self.channel = channel
        self.payload = payload
        self.pid = pid
        self.received_at = received_at

    def as_dict(self):
        """
        @return: the event as a dict with keys C{kind}, C{channel},
            C{payload}, C{pid}, C{received_at}, plus C{data} or
            C{decode_error} when the payload was decoded as JSON.
        """
        record = {name: getattr(self, name) for name in FIELDS}
        for name in ("data", "decode_error"):
            if hasattr(self, name):
                record[name] = getattr(self, name)
        return record

    def __repr__(self):
        return f"<Event {self.kind} {self.channel!r} {self.payload!r} pid={self.pid}>"


#: the deepest nesting of arrays and objects a JSON payload may have; deeper
#: ones get C{decode_error} (Python's decoder and encoder recurse once per
#: level, so a few thousand levels would end in C{RecursionError})
MAX_JSON_DEPTH = 128

# A JSON string (skipped whole) or one bracket.  One way to match each
# character of a string, so no backtracking blows up, and no possessive
# quantifiers (Python 3.11+).
_STRUCTURE = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}]')


def _reject_constant(name):
    raise ValueError(f"{name} is not JSON (RFC 8259)")


def _finite_float(text):
    value = float(text)
    if not math.isfinite(value):
        shown = text if len(text) <= 40 else text[:37] + "..."
        raise ValueError(f"number out of range: {shown}")
    return value


_STRICT = json.JSONDecoder(parse_constant=_reject_constant, parse_float=_finite_float)


def json_depth_exceeds(text, limit=MAX_JSON_DEPTH):
    """
    @return: True when the arrays and objects in C{text} nest deeper than
        C{limit} (brackets inside strings do not count).
    """
    if text.count("[") + text.count("{") <= limit:
        return False
    depth = 0
    for match in _STRUCTURE.finditer(text):
        char = match.group()
        if char in "[{":
            depth += 1
            if depth > limit:
                return True
        elif char in "]}":
            depth -= 1
    return False


def strict_json_loads(text):
    """
    Decode JSON as RFC 8259 defines it.

    Unlike C{json.loads}, refuses C{NaN}, C{Infinity} and C{-Infinity},
    numbers too large for a finite float (C{1e999999}), and nesting deeper
    than L{MAX_JSON_DEPTH}.

    @param text: the JSON text (a C{str}).
    @return: the decoded value.
    @raise ValueError: C{text} is not such JSON (C{json.JSONDecodeError} for
        syntax errors; integers over Python's 4300-digit limit too).
    """
    if json_depth_exceeds(text):
        raise ValueError(f"JSON nested deeper than {MAX_JSON_DEPTH} levels")
    return _STRICT.decode(text)


def decode_json_payload(event):
    """
    Set C{event.data} to the payload decoded as strict JSON
    (L{strict_json_loads}), or C{event.decode_error} when it does not decode.

    Never raises: whatever goes wrong while decoding (a too deep payload
    included) becomes C{decode_error}, a one-line C{"Class: message"} that
    does not quote the payload.

    @return: True when it decoded.
    """
    try:
        event.data = strict_json_loads(event.payload)
    except Exception as e:
        event.decode_error = f"{type(e).__name__}: {e}"
        return False
    return True


#: what L{Change} holds as its data until its payload is decoded
_UNDECODED = object()

#: the keys every change has in L{Change.as_dict}
CHANGE_FIELDS = ("kind", "id", "topic", "key", "attempts", "created_at", "payload")


class Change:
    """
    One claimed row of the durable outbox (C{hermes.outbox}), handed to a
    processor as an event of kind C{"change"}.

    @ivar kind: always C{"change"}.
    @ivar id: the outbox row id (an int, increasing in commit order per key).
    @ivar topic: the topic the change was emitted on.
    @ivar key: the key (text) within the topic; changes of one key are
        handed out one at a time, in id order.
    @ivar attempts: how many times it was handed out before this one (0 the
        first time).
    @ivar created_at: when it was written, in seconds since the epoch.
    @ivar payload: the JSON text as stored.
    @ivar claim: the claim token the consumer acknowledges with (opaque to
        processors).
    """

    __slots__ = CHANGE_FIELDS + ("_data", "claim")

    def __init__(self, id, topic, key, attempts, created_at, payload, data=_UNDECODED, claim=None):
        """
        @param data: the decoded payload, or nothing: then it is decoded
            from C{payload} when first asked for (a processor that forwards
            the text, or ignores it, never pays for decoding).
        """
        self.kind = "change"
        self.id = id
        self.topic = topic
        self.key = key
        self.attempts = attempts
        self.created_at = created_at
        self.payload = payload
        self._data = data
        self.claim = claim

    @property
    def data(self):
        """
        The decoded payload (decoded on first use; the outbox stores
        C{jsonb}, so it always decodes).

        @raise ValueError: the payload nests deeper than L{MAX_JSON_DEPTH}
            (C{jsonb} allows it; Python's decoder would recurse until
            C{RecursionError}).
        """
        if self._data is _UNDECODED:
            if json_depth_exceeds(self.payload):
                raise ValueError(f"change {self.id}: payload nested deeper than {MAX_JSON_DEPTH} levels")
            self._data = json.loads(self.payload)
        return self._data

    def as_dict(self):
        """
        @return: the change as a dict with keys C{kind}, C{id}, C{topic},
            C{key}, C{attempts}, C{created_at}, C{payload} and C{data}.
        """
        record = {name: getattr(self, name) for name in CHANGE_FIELDS}
        record["data"] = self.data
        return record

    def __repr__(self):
        return f"<Change {self.topic!r} {self.key!r} id={self.id} attempts={self.attempts}>"
