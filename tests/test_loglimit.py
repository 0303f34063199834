"""
Tests for L{hermes_tx.runtime.loglimit}.
"""

from twisted.internet import task
from twisted.trial import unittest

from hermes_tx.runtime.loglimit import LogLimit


class LogLimitTests(unittest.TestCase):
    def test_burst_then_count(self):
        """
        Up to C{lines} lines in any C{seconds}; the next allowed line says
        how many were left out.
        """
        clock = task.Clock()
        limit = LogLimit(clock, 3, 1.0)
        got = []
        for _ in range(10):
            got.append(limit.allow())
            clock.advance(0.1)
        self.assertEqual(got, ["", "", ""] + [None] * 7)
        clock.advance(0.1)
        self.assertEqual(limit.allow(), " (7 more like it left out)")
        self.assertEqual(limit.allow(), "")

    def test_a_steady_trickle_is_never_cut(self):
        clock = task.Clock()
        limit = LogLimit(clock, 5, 1.0)
        for _ in range(100):
            self.assertEqual(limit.allow(), "")
            clock.advance(0.2)
