# -*- test-case-name: tests.test_queues -*-
"""
L{EventQueue}: the bounded queue between a listener and its processor.

It speaks L{twisted.internet.defer.DeferredQueue}'s language (C{put},
C{get}, C{pending}) so components accept either, and adds what the hot path
needs: C{put_many} wakes a waiting consumer once per batch rather than once
per item, consumers take items without a Deferred while some are queued, and
a producer can stop reading when the queue is full and be told when there is
room again (back-pressure: PostgreSQL keeps the notifications meanwhile, so
nothing is lost and no resync is needed).
"""

from collections import deque

from twisted.internet import defer


class EventQueue:
    """
    A FIFO queue with a soft bound.

    @ivar pending: the queued items, oldest first (a C{deque}).
    @ivar maxsize: C{None} (unbounded) or the length at which C{is_full}
        turns true.
    """

    def __init__(self, maxsize=None, low_water=None):
        """
        @param maxsize: C{None}, or the length at which producers should
            stop: L{is_full}.  The bound is soft: C{put} never refuses.
        @param low_water: the length at or below which the C{on_space}
            callbacks run after the queue was full; default half of
            C{maxsize}.
        """
        self.pending = deque()
        self.maxsize = maxsize
        self.low_water = low_water if low_water is not None else (maxsize or 0) // 2
        self._waiting = []  # consumers' Deferreds
        self._space_waiters = []

    def __len__(self):
        return len(self.pending)

    @property
    def is_full(self):
        return self.maxsize is not None and len(self.pending) >= self.maxsize

    def put(self, item):
        """
        Queue one item (or hand it to a waiting consumer).
        """
        if self._waiting:
            self._waiting.pop(0).callback(item)
        else:
            self.pending.append(item)

    def put_many(self, items):
        """
        Queue items in order, waking a waiting consumer once.
        """
        if not items:
            return
        self.pending.extend(items)
        if self._waiting:
            self._waiting.pop(0).callback(self.pending.popleft())

    def get(self):
        """
        @return: a Deferred firing with the oldest item, at once when one is
            queued.  Cancelling it withdraws the request.
        """
        if self.pending:
            item = self.pending.popleft()
            self.check_space()
            return defer.succeed(item)
        d = defer.Deferred(canceller=self._waiting.remove)
        self._waiting.append(d)
        return d

    def take(self, limit):
        """
        Take up to C{limit} queued items without waiting.

        @return: a list, possibly empty.
        """
        pending = self.pending
        count = min(limit, len(pending))
        items = [pending.popleft() for _ in range(count)]
        if count:
            self.check_space()
        return items

    def popleft(self):
        """
        Take the oldest queued item without waiting.

        @raise IndexError: nothing is queued.
        """
        item = self.pending.popleft()
        self.check_space()
        return item

    def on_space(self, callback):
        """
        Call C{callback()} once, when the queue is next at or below its low
        water mark (at once if it already is).  Asking again with the same
        callback before then changes nothing (it is called once).
        """
        if callback not in self._space_waiters:
            self._space_waiters.append(callback)
        self.check_space()

    def check_space(self):
        """
        Run the C{on_space} callbacks if the queue is at or below its low
        water mark.  Consumers that take from C{pending} directly call this
        now and then.
        """
        if self._space_waiters and len(self.pending) <= self.low_water:
            waiters, self._space_waiters = self._space_waiters, []
            for callback in waiters:
                callback()
