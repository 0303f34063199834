# -*- test-case-name: tests.test_timers -*-
"""
L{Timers}: the named timers a state owns (a run's poll, its extensions, a
linger), all on one injected clock, all cancelled at once when the state
ends.
"""


class Timers:
    """
    Named timers on one clock: each repeating one calls its action every
    interval, a one-shot one once; L{stop} cancels them all.
    """

    def __init__(self, clock):
        self.clock = clock
        self._calls = {}

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

    def soonest(self, name, delay, action):
        """
        Call C{action} in C{delay} seconds, or sooner if a call of that name
        is pending for sooner already (one call, the earliest asked for).
        """
        call = self._calls.get(name)
        if call is not None and call.active():
            if call.getTime() <= self.clock.seconds() + delay:
                return
            call.cancel()
        self._later(name, delay, action)

    def _later(self, name, delay, action):
        def fire():
            del self._calls[name]
            action()

        self._calls[name] = self.clock.callLater(delay, fire)

    def stop(self):
        calls, self._calls = self._calls, {}
        for call in calls.values():
            if call.active():
                call.cancel()
