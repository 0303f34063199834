# -*- test-case-name: tests.test_outbox_names -*-
"""
Names the outbox derives: the schema it lives in, its wake-up channel,
the trigger a captured topic gets, and the tables users name on the
command line.

Every name reaches SQL as a quoted identifier (C{psycopg2.sql.Identifier})
or a literal, never pasted into SQL text; what PostgreSQL would silently
truncate (identifiers over 63 bytes) is refused or hashed here.
"""

import hashlib

from hermes_tx.exceptions import InvalidConfigurationException

#: the schema hermes_tx installs into unless told otherwise
DEFAULT_SCHEMA = "hermes"

#: PostgreSQL truncates identifiers (and channel names) beyond this.
MAX_IDENTIFIER_BYTES = 63

#: topics longer than this are refused by C{emit}: a topic is the NOTIFY
#: payload (under 8000 bytes) and names triggers and metrics.
MAX_TOPIC_BYTES = 255

_CAPTURE_PREFIX = "hermes_capture_"


def _utf8_len(text):
    return len(text.encode("utf-8"))


def _digest(text, length):
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:length]


def validate_schema(schema):
    """
    @param schema: the name of the schema the outbox lives in.
    @return: C{schema}, unchanged (case and spaces are kept: it is always
        quoted).
    @raise InvalidConfigurationException: it is not a non-empty string of at
        most 63 bytes without NUL or C{$} (the migrations quote their
        function bodies with dollar quotes).
    """
    if not isinstance(schema, str) or not schema:
        raise InvalidConfigurationException(f"schema name must be a non-empty string: {schema!r}")
    if "\x00" in schema or "$" in schema:
        raise InvalidConfigurationException(f"schema name must not contain NUL or '$': {schema!r}")
    if _utf8_len(schema) > MAX_IDENTIFIER_BYTES:
        raise InvalidConfigurationException(
            f"schema name is {_utf8_len(schema)} bytes, PostgreSQL allows {MAX_IDENTIFIER_BYTES}"
        )
    return schema


def validate_topic(topic):
    """
    @return: C{topic}, unchanged.
    @raise InvalidConfigurationException: it is not a non-empty string of at
        most L{MAX_TOPIC_BYTES} bytes without NUL.
    """
    if not isinstance(topic, str) or not topic or "\x00" in topic:
        raise InvalidConfigurationException(f"topic must be a non-empty string without NUL: {topic!r}")
    if _utf8_len(topic) > MAX_TOPIC_BYTES:
        raise InvalidConfigurationException(
            f"topic is {_utf8_len(topic)} bytes, the outbox allows {MAX_TOPIC_BYTES}"
        )
    return topic


def channel(schema=DEFAULT_SCHEMA):
    """
    The wake-up channel of the outbox in C{schema}: every transaction that
    emits sends one NOTIFY per topic on it, with the topic as payload.

    @return: C{"<schema>.outbox"}, or, when that is over 63 bytes,
        C{"hermes.outbox."} and a hash of the schema name.  LISTEN on it
        quoted (L{hermes_tx.outbox.sql.listen}).
    """
    name = f"{validate_schema(schema)}.outbox"
    if _utf8_len(name) <= MAX_IDENTIFIER_BYTES:
        return name
    return "hermes.outbox." + _digest(schema, 32)


def capture_trigger(topic):
    """
    @return: the name of the trigger that captures a table's changes into
        C{topic}: C{hermes_capture_<topic>}, or, when that is over 63
        bytes, C{hermes_capture_} and a hash of the topic.
    """
    name = _CAPTURE_PREFIX + validate_topic(topic)
    if _utf8_len(name) <= MAX_IDENTIFIER_BYTES:
        return name
    return _CAPTURE_PREFIX + _digest(topic, 40)
