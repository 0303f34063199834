"""
Tests for L{hermes_tx.outbox.pump.ClaimPump} alone: claims never overlap,
a claim asked for while one is in flight is made once right after it, a
full claim asks for the next itself, a stop waits for the claim in flight
and claims nothing more.
"""

from twisted.internet import defer
from twisted.logger import formatEvent
from twisted.trial import unittest

from hermes_tx.outbox.pump import ClaimPump
from tests.support.shared import capture_log


class Claims:
    """
    The pump's claim function: each call takes the next step of C{script}
    (C{None}: no claim made; an exception: raised; a Deferred: the claim in
    flight), or a new Deferred once the script is over.
    """

    def __init__(self, *script):
        self.script = list(script)
        self.made = []  # the Deferreds of the claims made

    def __call__(self):
        step = self.script.pop(0) if self.script else defer.Deferred()
        if isinstance(step, BaseException):
            raise step
        if step is not None:
            self.made.append(step)
        return step

    @property
    def last(self):
        return self.made[-1]


class ClaimPumpTests(unittest.TestCase):
    def make(self, *script):
        self.claims = Claims(*script)
        self.pump = ClaimPump(self.claims)
        return self.pump

    def test_idle_until_wanted(self):
        pump = self.make()
        self.assertEqual(pump.state, "idle")
        self.assertEqual(self.claims.made, [])

    def test_one_claim(self):
        pump = self.make()
        pump.want()
        self.assertEqual((pump.state, len(self.claims.made)), ("claiming", 1))
        self.claims.last.callback(False)
        self.assertEqual((pump.state, len(self.claims.made)), ("idle", 1))

    def test_no_room(self):
        """
        A claim function that makes no claim leaves the pump idle, ready
        for the next reason to claim.
        """
        pump = self.make(None, None)
        pump.want()
        self.assertEqual(pump.state, "idle")
        pump.want()
        self.assertEqual(pump.state, "idle")
        pump.want()
        self.assertEqual((pump.state, len(self.claims.made)), ("claiming", 1))

    def test_never_overlap_and_one_more_follows(self):
        """
        Asked three times while a claim is in flight: no claim overlaps it,
        and exactly one follows it.
        """
        pump = self.make()
        pump.want()
        for _ in range(3):
            pump.want()
        self.assertEqual(len(self.claims.made), 1)
        self.claims.last.callback(False)
        self.assertEqual((pump.state, len(self.claims.made)), ("claiming", 2))
        self.claims.last.callback(False)
        self.assertEqual((pump.state, len(self.claims.made)), ("idle", 2))

    def test_full_claim_claims_again(self):
        pump = self.make()
        pump.want()
        self.claims.last.callback(True)
        self.assertEqual(len(self.claims.made), 2)
        self.claims.last.callback(True)
        self.claims.last.callback(False)
        self.assertEqual((pump.state, len(self.claims.made)), ("idle", 3))

    def test_full_and_asked_claims_once(self):
        pump = self.make()
        pump.want()
        pump.want()
        self.claims.last.callback(True)
        self.assertEqual(len(self.claims.made), 2)
        self.claims.last.callback(False)
        self.assertEqual((pump.state, len(self.claims.made)), ("idle", 2))

    def test_only_true_claims_again(self):
        pump = self.make()
        pump.want()
        self.claims.last.callback([1, 2, 3])  # not True: handled, nothing more
        self.assertEqual((pump.state, len(self.claims.made)), ("idle", 1))

    def test_failed_claim(self):
        """
        A claim function that failed (a bug: the run handles a failed
        statement itself) is logged with its traceback, not dropped, and
        leaves the pump idle: the next reason claims again.
        """
        log = capture_log(self)
        pump = self.make()
        pump.want()
        self.claims.last.errback(ValueError("claim failed"))
        self.assertEqual(pump.state, "idle")
        [event] = [e for e in log if "log_failure" in e]
        self.assertEqual(formatEvent(event), "claiming failed")
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)
        pump.want()
        self.assertEqual(len(self.claims.made), 2)

    def test_claim_raising(self):
        pump = self.make(KeyError("bug"))
        pump.want()
        self.assertEqual(pump.state, "idle")
        self.assertEqual(len(self.flushLoggedErrors(KeyError)), 1)
        pump.want()
        self.assertEqual((pump.state, len(self.claims.made)), ("claiming", 1))

    def test_claim_asking_for_more_itself(self):
        """
        A claim function that asks the pump again while it runs (room that
        frees at once) gets one more claim, not a loop.
        """
        calls = []

        def claim():
            calls.append(len(calls))
            if len(calls) == 1:
                pump.want()
            return None

        pump = ClaimPump(claim)
        pump.want()
        self.assertEqual((pump.state, calls), ("idle", [0, 1]))

    # -- stopping ---------------------------------------------------------------

    def test_stop_while_idle(self):
        pump = self.make()
        self.successResultOf(pump.stop())
        self.assertEqual(pump.state, "stopped")
        pump.want()
        self.assertEqual(self.claims.made, [])
        self.successResultOf(pump.stop())

    def test_stop_waits_for_the_claim_in_flight(self):
        pump = self.make()
        pump.want()
        first = pump.stop()
        pump.want()
        second = pump.stop()
        self.assertEqual(pump.state, "stopping")
        self.assertNoResult(first)
        self.claims.last.callback(True)  # full: no matter, no more claims
        self.successResultOf(first)
        self.successResultOf(second)
        self.assertEqual((pump.state, len(self.claims.made)), ("stopped", 1))
        pump.want()
        self.assertEqual(len(self.claims.made), 1)

    def test_stop_after_one_was_asked_for(self):
        """
        A claim asked for during the one in flight is not made once a stop
        came.
        """
        pump = self.make()
        pump.want()
        pump.want()
        stopped = pump.stop()
        self.claims.last.callback(False)
        self.successResultOf(stopped)
        self.assertEqual((pump.state, len(self.claims.made)), ("stopped", 1))
