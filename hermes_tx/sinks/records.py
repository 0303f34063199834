# -*- test-case-name: tests.test_sink_records -*-
"""
How events look on the wire, for every sink: one JSON object per event.

  - a change (kind C{"change"}): C{kind}, C{id}, C{topic}, C{key},
    C{attempts}, C{created_at} (ISO 8601, UTC, with microseconds and a
    C{Z}) and C{data} (the decoded payload);
  - a notification: C{kind}, C{channel}, C{payload} (the text as sent),
    C{pid}, and C{data} when the listener decoded the payload as JSON.

C{start} and C{resync} events are not sent anywhere: sinks treat them as
done (L{deliverable} drops them).  JSON is strict: NaN and infinities are
refused (L{encode} raises C{ValueError}), never sent as invalid JSON.
"""

import datetime
import json

#: event kinds a sink sends; the others (start, resync) are done at once
SENT_KINDS = ("change", "notification")

_encoder = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))


def encode(value):
    """
    @return: C{value} as compact, strict JSON text (UTF-8 characters kept).
    @raise ValueError: it holds NaN or an infinity, or cannot be encoded.
    """
    try:
        return _encoder.encode(value)
    except TypeError as e:
        raise ValueError(str(e)) from None


def iso_utc(epoch_seconds):
    """
    @return: C{epoch_seconds} as ISO 8601 in UTC, e.g.
        C{2026-11-29T21:15:45.123456Z}; C{None} stays C{None}.
    """
    if epoch_seconds is None:
        return None
    moment = datetime.datetime.fromtimestamp(epoch_seconds, datetime.timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def deliverable(events):
    """
    @return: the events of C{events} that a sink sends (changes and
        notifications), in order.
    """
    return [e for e in events if getattr(e, "kind", None) in SENT_KINDS]


def record(event):
    """
    @return: the dict a sink sends for C{event} (see the module docstring).
    """
    if event.kind == "change":
        return {
            "kind": "change",
            "id": event.id,
            "topic": event.topic,
            "key": event.key,
            "attempts": event.attempts,
            "created_at": iso_utc(event.created_at),
            "data": event.data,
        }
    out = {"kind": event.kind, "channel": event.channel, "payload": event.payload,
           "pid": event.pid}
    if hasattr(event, "data"):
        out["data"] = event.data
    return out


def topic_of(event):
    """
    @return: the topic of a change, the channel of a notification.
    """
    return event.topic if event.kind == "change" else event.channel


def id_of(event):
    """
    @return: the outbox id of a change as text; C{None} for a notification.
    """
    return str(event.id) if event.kind == "change" else None
