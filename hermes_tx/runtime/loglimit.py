# -*- test-case-name: tests.test_loglimit -*-
"""
L{LogLimit}: a cap on how many lines of one kind a component logs, so no
input (a NOTIFY flood, kills in quick succession) can make a log burst.
Nothing is hidden: a line after a quiet spell says how many were left out.
"""

from collections import deque


class LogLimit:
    """
    At most C{lines} lines of one kind per C{seconds}.
    """

    def __init__(self, clock, lines, seconds):
        self.clock = clock
        self.lines = lines
        self.seconds = seconds
        self._times = deque()
        self.left_out = 0

    def allow(self):
        """
        @return: C{None} when this line is to be left out, else the text to
            append to it: C{""}, or how many lines were left out before it.
        """
        now = self.clock.seconds()
        times = self._times
        while times and now - times[0] >= self.seconds - 1e-6:
            times.popleft()
        if len(times) >= self.lines:
            self.left_out += 1
            return None
        times.append(now)
        left_out, self.left_out = self.left_out, 0
        return f" ({left_out} more like it left out)" if left_out else ""
