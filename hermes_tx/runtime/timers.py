# -*- test-case-name: tests.test_timers -*-
"""
L{Timers}: the named timers a state owns (a run's poll, its extensions, a
linger), all on one injected clock, all cancelled at once when the state
ends.
"""

import heapq


class Timers:
    """
    Named timers on one clock: a repeating one calls its action every
    interval, a one-shot one once, one of L{each} at every time asked for;
    L{stop} cancels them all.
    """

    def __init__(self, clock):
        self.clock = clock
        self._calls = {}
        self._due = {}  # name -> heap of the times each() was asked for

    def every(self, name, interval, action):
        def tick():
            self._calls[name] = self.clock.callLater(interval, tick)
            action()

        self._calls[name] = self.clock.callLater(interval, tick)

    def once(self, name, delay, action):
        """
        Call C{action} in C{delay} seconds, unless a call of that name is
        pending already (then nothing changes).
        """
        call = self._calls.get(name)
        if call is not None and call.active():
            return
        self._later(name, delay, action)

    def each(self, name, delay, action):
        """
        Call C{action} in C{delay} seconds, whatever else is pending under
        C{name}: every time asked for gets its call, except that one call
        serves every time due when it is made (a time asked for later than
        a pending one is not lost when the sooner one fires).  A name has
        one action: give the same one every time.
        """
        due = self._due.setdefault(name, [])
        heapq.heappush(due, self.clock.seconds() + delay)
        call = self._calls.get(name)
        if call is not None and call.active():
            if call.getTime() <= due[0]:
                return
            call.cancel()
        self._next(name, action)

    def _next(self, name, action):
        due = self._due[name]
        target = due[0]

        def fire():
            del self._calls[name]
            until = max(target, self.clock.seconds())
            while due and due[0] <= until:
                heapq.heappop(due)
            if due:
                self._next(name, action)
            action()

        self._calls[name] = self.clock.callLater(max(0.0, target - self.clock.seconds()), fire)

    def _later(self, name, delay, action):
        def fire():
            del self._calls[name]
            action()

        self._calls[name] = self.clock.callLater(delay, fire)

    def stop(self):
        calls, self._calls = self._calls, {}
        self._due = {}
        for call in calls.values():
            if call.active():
                call.cancel()
