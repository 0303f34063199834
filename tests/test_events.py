"""
Tests for L{hermes_tx.events}.
"""

from twisted.trial import unittest

from hermes_tx.events import Event, decode_json_payload


class EventTests(unittest.TestCase):
    def test_as_dict(self):
        e = Event("notification", "C", "p", 7, 1.5)
        self.assertEqual(e.as_dict(), {"kind": "notification", "channel": "C", "payload": "p",
                                       "pid": 7, "received_at": 1.5})

    def test_json_payload(self):
        e = Event("notification", "c", '{"id": 1, "tags": ["ü"]}', 1, 0.0)
        self.assertTrue(decode_json_payload(e))
        self.assertEqual(e.data, {"id": 1, "tags": ["ü"]})
        self.assertEqual(e.as_dict()["data"], {"id": 1, "tags": ["ü"]})
        self.assertNotIn("decode_error", e.as_dict())

    def test_json_null_is_data(self):
        e = Event("notification", "c", "null", 1, 0.0)
        self.assertTrue(decode_json_payload(e))
        self.assertIn("data", e.as_dict())
        self.assertIsNone(e.as_dict()["data"])

    def test_undecodable_payload_is_marked(self):
        for payload in ("not json{", ""):
            e = Event("notification", "c", payload, 1, 0.0)
            self.assertFalse(decode_json_payload(e))
            self.assertEqual(e.payload, payload)
            self.assertIn("JSONDecodeError", e.as_dict()["decode_error"])
            self.assertNotIn("data", e.as_dict())
