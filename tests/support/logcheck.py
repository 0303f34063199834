"""
Reading logs for the high-availability tests and benches: how many
hermes_tx lines in the busiest second, how many "Unhandled Error"s, from
in-process log events or from C{twistd}'s text log.
"""

import calendar
import re
import time

from twisted.logger import eventAsText

#: twistd's text log line: C{2026-11-29T21:24:18+0000 [namespace#level] text}.
_TWISTD_LINE = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)([+-]\d\d)(\d\d) \[([^\]#]*)[^\]]*\] ")

UNHANDLED = "Unhandled Error"


def max_per_second(times):
    """
    @param times: seconds (any clock), in any order.
    @return: the most of them within any one second (a window
        C{[t, t + 1)} starting at one of them), 0 for none.
    """
    times = sorted(times)
    best = start = 0
    for end, t in enumerate(times):
        while t - times[start] >= 1.0:
            start += 1
        best = max(best, end - start + 1)
    return best


def is_hermes(namespace):
    """@return: whether a log namespace is hermes_tx's (or a submodule's)."""
    return namespace == "hermes_tx" or namespace.startswith("hermes_tx.")


def hermes_times(events):
    """@return: the C{log_time} of every hermes_tx event among C{events}."""
    return [e["log_time"] for e in events if is_hermes(e.get("log_namespace", ""))]


def unhandled_in_events(events):
    """
    @return: how many C{events} read "Unhandled Error" when written out as
        twistd's log observer would.
    """
    return sum(UNHANDLED in eventAsText(e, includeTimestamp=False) for e in events)


def twistd_lines(text):
    """
    @param text: what C{twistd}'s default text log observer wrote.
    @return: C{(epoch seconds, namespace, line)} for each line that starts
        with a timestamp (continuation lines of a traceback do not).
    """
    lines = []
    for line in text.splitlines():
        match = _TWISTD_LINE.match(line)
        if match is None:
            continue
        stamp, hours, minutes, namespace = match.groups()
        offset = (int(hours) * 60 + (int(minutes) if hours[0] != "-" else -int(minutes))) * 60
        seconds = calendar.timegm(time.strptime(stamp, "%Y-%m-%dT%H:%M:%S")) - offset
        lines.append((seconds, namespace, line))
    return lines


def twistd_summary(text):
    """
    @return: C{(hermes_tx lines in the busiest second, "Unhandled Error"
        count)} of a C{twistd} text log.
    """
    hermes = [t for t, namespace, _ in twistd_lines(text) if is_hermes(namespace)]
    return max_per_second(hermes), text.count(UNHANDLED)
