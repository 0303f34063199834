"""
Tests for L{hermes_tx.outbox.names}: names the outbox derives, and the
limits it puts on the names it is given.
"""

from twisted.trial import unittest

from hermes_tx.exceptions import InvalidConfigurationException
from hermes_tx.outbox.names import (
    MAX_IDENTIFIER_BYTES,
    MAX_TOPIC_BYTES,
    capture_triggers,
    channel,
    validate_schema,
    validate_topic,
)


class NameTests(unittest.TestCase):
    def test_topics(self):
        """
        Topics are non-empty text of at most 255 bytes without NUL.
        """
        self.assertEqual(validate_topic("Any Topic ü"), "Any Topic ü")
        self.assertEqual(validate_topic("é" * (MAX_TOPIC_BYTES // 2)), "é" * (MAX_TOPIC_BYTES // 2))
        for bad in ("", None, 3, "a\x00", "é" * (MAX_TOPIC_BYTES // 2 + 1)):
            self.assertRaises(InvalidConfigurationException, validate_topic, bad)

    def test_schemas(self):
        """
        Schema names keep their case and spaces; empty, over 63 bytes, NUL
        and $ are refused.
        """
        self.assertEqual(validate_schema('My "S"'), 'My "S"')
        for bad in ("", None, "a$", "a\x00", "ü" * 32):
            self.assertRaises(InvalidConfigurationException, validate_schema, bad)

    def test_capture_triggers(self):
        """
        Three trigger names per topic, under 64 bytes, distinct for distinct
        topics even when hashed.
        """
        self.assertEqual(
            capture_triggers("items"),
            {"INSERT": "hermes_capture_items_insert", "UPDATE": "hermes_capture_items_update",
             "DELETE": "hermes_capture_items_delete"},
        )
        long_a, long_b = "a" * 200 + "1", "a" * 200 + "2"
        names = list(capture_triggers(long_a).values()) + list(capture_triggers(long_b).values())
        self.assertEqual(len(set(names)), 6)
        self.assertTrue(all(len(n.encode()) <= MAX_IDENTIFIER_BYTES for n in names))

    def test_channel(self):
        """
        The wake-up channel is C{<schema>.outbox}, hashed when that would
        be over 63 bytes.
        """
        self.assertEqual(channel(), "hermes.outbox")
        self.assertEqual(channel("Odd S"), "Odd S.outbox")
        self.assertTrue(channel("x" * 60).startswith("hermes.outbox."))
        self.assertLessEqual(len(channel("ü" * 31).encode()), MAX_IDENTIFIER_BYTES)
