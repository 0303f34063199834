"""
Helpers shared by the integration tests: one throwaway primary for the
whole run, and waiting on the real reactor without blocking it.
"""

import time

from twisted.internet import defer, reactor, task
from twisted.logger import globalLogPublisher

from hermes_tx.components import Component
from tests.support.pgcluster import Cluster

_primary = []


def shared_primary():
    """
    @return: a running throwaway primary shared by every test that does not
        change its state (stop, promote); made on first use, removed at exit
        by L{tests.support.pgcluster}.
    """
    if not _primary or not _primary[0].is_running():
        _primary[:] = [Cluster.create_primary()]
    return _primary[0]


def sleep(seconds):
    """
    @return: a Deferred firing after C{seconds} on the real reactor.
    """
    return task.deferLater(reactor, seconds, lambda: None)


@defer.inlineCallbacks
def wait_until(predicate, timeout=10.0, interval=0.01, what="condition"):
    """
    Poll C{predicate()} until it is true.

    @return: a Deferred firing with the predicate's true value.
    @raise AssertionError: still false after C{timeout} seconds.
    """
    deadline = reactor.seconds() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if reactor.seconds() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        yield sleep(interval)


@defer.inlineCallbacks
def take(queue, count, timeout=10.0):
    """
    Take C{count} items from a C{DeferredQueue} or L{EventQueue}.

    @return: a Deferred firing with the list of items.
    @raise AssertionError: fewer arrived within C{timeout} seconds.
    """
    items = []
    deadline = reactor.seconds() + timeout
    while len(items) < count:
        if queue.pending:
            pending = queue.pending
            items.append(pending.popleft() if hasattr(pending, "popleft") else pending.pop(0))
            continue
        if reactor.seconds() > deadline:
            raise AssertionError(f"got {len(items)} of {count} items: {items!r}")
        yield sleep(0.005)
    return items


def capture_log(case):
    """
    @return: a list receiving every log event until the test C{case} ends.
    """
    events = []
    globalLogPublisher.addObserver(events.append)
    case.addCleanup(globalLogPublisher.removeObserver, events.append)
    return events


class Collector(Component):
    """
    The seed's zero-argument processor: collects every event it executes,
    with the C{time.monotonic()} at which it did.
    """

    def __init__(self):
        super().__init__()
        self.events = []
        self.times = []
        self.torn_down = False

    def execute(self, event):
        self.events.append(event)
        self.times.append(time.monotonic())

    def tear_down(self):
        self.torn_down = True

    def seen(self):
        return [(e.kind, e.channel, e.payload) for e in self.events]

    def notifications(self, start=0):
        return [e.payload for e in self.events[start:] if e.kind == "notification"]

    def kinds(self, start=0):
        return [e.kind for e in self.events[start:]]
