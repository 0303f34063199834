# -*- test-case-name: tests.test_jsonlines_delivery -*-
"""
L{OwedLines}: the events whose lines are out of our hands (in the writer's
thread, written, or held by the output) although the events are not done:
the attempt that handed them over failed, timed out or was cancelled.
When such an event comes again, its line is not written again: it waits
for the one it has.
"""

from collections import OrderedDict


def _key(event):
    # What identifies an event that comes again: an outbox change by its id
    # (it comes again as a new object, claimed again), anything else by
    # identity (executed again as the same object, kept here meanwhile).
    if getattr(event, "kind", None) == "change":
        return ("change", getattr(event, "topic", None), getattr(event, "id", None))
    return ("event", id(event))


class OwedLines:
    """
    Events and the offsets where their lines end, the last C{limit} of
    them (an event that never comes again is forgotten eventually).
    """

    def __init__(self, limit=4096):
        self.limit = limit
        self._lines = OrderedDict()  # key -> (end, event)

    def __len__(self):
        return len(self._lines)

    def pop(self, event):
        """
        @return: the end of C{event}'s line if it owes one (forgetting it),
            else C{None}.
        """
        entry = self._lines.pop(_key(event), None)
        return None if entry is None else entry[0]

    def owe(self, event, end):
        self._lines[_key(event)] = (end, event)
        if len(self._lines) > self.limit:
            self._lines.popitem(last=False)

    def give_back(self, writer, event, start, end):
        """
        C{event} is not done: take its line back from C{writer} (a
        L{hermes_tx.output.writer.LineWriter}) if none of it is out of our
        hands (C{start} is C{None} for a line handed over earlier), else
        remember it.
        """
        if start is None or not writer.unappend(start, end):
            self.owe(event, end)

    def forget(self, start, end):
        """
        The lines ending after C{start} up to C{end} were dropped: their
        events, when they come again, write them whole.
        """
        for key in [k for k, (e, _) in self._lines.items() if start < e <= end]:
            del self._lines[key]

    def clear(self):
        self._lines.clear()
