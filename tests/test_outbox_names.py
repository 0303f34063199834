"""
Tests for L{hermes_tx.outbox.names}: names the outbox derives, and the
limits it puts on the names it is given.
"""

from twisted.trial import unittest

from hermes_tx.exceptions import InvalidConfigurationException
from hermes_tx.outbox.names import (
    MAX_IDENTIFIER_BYTES,
    MAX_TOPIC_BYTES,
    capture_trigger,
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

    def test_capture_trigger(self):
        """
        The trigger's name is made of the topic, or of a hash of it when
        that would be over 63 bytes: distinct for distinct topics.
        """
        self.assertEqual(capture_trigger("items"), "hermes_capture_items")
        long_a, long_b = "a" * 200 + "1", "a" * 200 + "2"
        self.assertNotEqual(capture_trigger(long_a), capture_trigger(long_b))
        self.assertTrue(all(len(capture_trigger(t).encode()) <= MAX_IDENTIFIER_BYTES for t in (long_a, "é" * 30)))

    def test_channel(self):
        """
        The wake-up channel is C{<schema>.outbox}, hashed when that would
        be over 63 bytes.
        """
        self.assertEqual(channel(), "hermes.outbox")
        self.assertEqual(channel("Odd S"), "Odd S.outbox")
        self.assertTrue(channel("x" * 60).startswith("hermes.outbox."))
        self.assertLessEqual(len(channel("ü" * 31).encode()), MAX_IDENTIFIER_BYTES)
