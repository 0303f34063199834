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
    whatever they would have told you.
"""

import json

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
        is not JSON: why (and C{data} is not set).
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


def decode_json_payload(event):
    """
    Set C{event.data} to the JSON-decoded payload, or C{event.decode_error}
    when it does not decode.

    @return: True when it decoded.
    """
    try:
        event.data = json.loads(event.payload)
    except ValueError as e:
        event.decode_error = f"{type(e).__name__}: {e}"
        return False
    return True
