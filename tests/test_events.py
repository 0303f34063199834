"""
Tests for L{hermes_tx.events}.
"""

import json

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial import unittest

from hermes_tx.events import (
    MAX_JSON_DEPTH,
    Event,
    decode_json_payload,
    json_depth_exceeds,
    strict_json_loads,
)

#: JSON values as RFC 8259 has them (finite numbers, any text).
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


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


class StrictJsonTests(unittest.TestCase):
    """
    Decoding is RFC 8259 JSON, bounded in depth, and never raises.
    """

    def decode(self, payload):
        e = Event("notification", "c", payload, 1, 0.0)
        ok = decode_json_payload(e)
        self.assertEqual(e.payload, payload)
        return ok, e.as_dict()

    def assertRefused(self, payload, fragment):
        ok, record = self.decode(payload)
        self.assertFalse(ok)
        self.assertNotIn("data", record)
        self.assertIn(fragment, record["decode_error"])
        self.assertNotIn("\n", record["decode_error"])

    def test_non_finite_numbers_are_refused(self):
        for payload in ("NaN", "Infinity", "-Infinity", '{"x": [1, NaN]}'):
            self.assertRefused(payload, "is not JSON (RFC 8259)")
        for payload in ("1e999999", "-1e999999", "[1.5e400]"):
            self.assertRefused(payload, "number out of range")
        self.assertRefused("1" * 5000, "ValueError")  # over Python's int digit limit

    def test_deep_nesting_is_refused_without_recursion_error(self):
        for depth in (MAX_JSON_DEPTH + 1, 3000, 100000):
            self.assertRefused("[" * depth + "]" * depth, f"deeper than {MAX_JSON_DEPTH}")
        self.assertRefused('{"a":' * 3000 + "1" + "}" * 3000, "deeper than")
        # An unbalanced one is refused too (not valid JSON either way).
        self.assertRefused("[" * 3000, "ValueError")

    def test_nesting_up_to_the_limit_decodes(self):
        depth = MAX_JSON_DEPTH
        ok, record = self.decode("[" * depth + "]" * depth)
        self.assertTrue(ok)
        # Brackets inside strings do not count as nesting.
        text = json.dumps(["[{" * 4000, {"k": "]}\\\"[" * 100}])
        ok, record = self.decode(text)
        self.assertTrue(ok)
        self.assertEqual(record["data"], json.loads(text))

    def test_depth_scan(self):
        self.assertFalse(json_depth_exceeds("[[]]", limit=2))
        self.assertTrue(json_depth_exceeds("[[[]]]", limit=2))
        self.assertFalse(json_depth_exceeds('["[[[", "\\"[[["]', limit=1))
        self.assertTrue(json_depth_exceeds('[{"a": [1]}]', limit=2))

    def test_strict_loads_is_plain_json_otherwise(self):
        text = '{"a": [1, -2.5e10, true, null, "\\u00fc"], "b": {}}'
        self.assertEqual(strict_json_loads(text), json.loads(text))

    @settings(max_examples=300, deadline=None)
    @given(st.one_of(
        st.text(max_size=300),
        st.text(alphabet='[]{}",:0123456789.eE-+NaInfty\\ ', max_size=300),
    ))
    def test_any_text_decodes_or_is_marked(self, payload):
        """
        Whatever the payload, decoding returns; the payload is kept as sent;
        exactly one of data and decode_error is set.
        """
        ok, record = self.decode(payload)
        self.assertEqual(ok, "data" in record)
        self.assertEqual(ok, "decode_error" not in record)
        if ok:
            self.assertEqual(record["data"], json.loads(payload))

    @settings(max_examples=200, deadline=None)
    @given(JSON_VALUES)
    def test_any_json_value_round_trips(self, value):
        text = json.dumps(value, ensure_ascii=False)
        ok, record = self.decode(text)
        self.assertTrue(ok, record.get("decode_error"))
        self.assertEqual(record["data"], value)
