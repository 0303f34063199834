"""
A failing test for L{hermes_tx.runtime.loop}'s C{execute_timeout}, found while
testing L{hermes_tx.failover.roles} (same mistake): reported to the lead, who is
editing runloop.py, rather than fixed here.
"""

from twisted.internet import defer, task
from twisted.trial import unittest

from hermes_tx import strategies
from hermes_tx.components import Component
from hermes_tx.exceptions import ExecuteTimeout


class _Recording(strategies.AbstractErrorStrategy):
    def __init__(self):
        self.seen = []

    def handle_exception(self, error):
        self.seen.append(error)
        return True, strategies.CONTINUE


class _Hangs(Component):
    def execute(self, item):
        return defer.Deferred()


class ExecuteTimeoutTests(unittest.TestCase):
    def test_timeout_reaches_the_strategy_as_execute_timeout(self):
        """
        An C{execute} Deferred still pending after C{execute_timeout} is
        cancelled and handed to the error strategy as L{ExecuteTimeout}
        (components.py's documented behaviour).  runloop.ConsumerLoop._timed
        names C{defer.failure.Failure}, which Twisted 26 does not have: the
        strategy gets an AttributeError instead.
        """
        clock = task.Clock()
        strategy = _Recording()
        c = _Hangs(clock=clock, execute_timeout=2, error_strategy=strategy)
        c.startService()
        self.addCleanup(c.stopService)
        c.notification_pipe.put("a")
        clock.advance(2)
        self.assertEqual([type(e) for e in strategy.seen], [ExecuteTimeout])
        self.assertIn("within 2 s", str(strategy.seen[0]))
