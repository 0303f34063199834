# -*- test-case-name: tests.test_outbox_backfill -*-
"""
How far a backfill is, for the person who runs it: a bar redrawn in place
on a terminal (rows done, rate, estimate of the rows left), plain lines
now and then otherwise (a log, a pipe).  Time comes from an injected
C{clock}.
"""

import time


def _duration(seconds):
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class Progress:
    """
    Told L{start}, L{update} after each chunk and L{finish} by
    L{hermes_tx.outbox.backfill.backfill}.

    @ivar out: where it writes (standard error).
    @ivar terminal: redraw one line in place (C{out} is a terminal), or
        write a line every C{interval} seconds.
    """

    #: seconds between redraws on a terminal
    REDRAW = 0.2
    #: width of the bar, in characters
    WIDTH = 30

    def __init__(self, out, terminal, clock=time.monotonic, interval=10.0):
        self.out = out
        self.terminal = terminal
        self.clock = clock
        self.interval = interval
        self.estimate = None
        self.done = None
        self.table = None
        self.topic = None
        self._last = None
        self._drawn = False

    def start(self, plan, done, resumed):
        """
        @param plan: the L{hermes_tx.outbox.backfill.Plan}.
        @param done: rows done before this run.
        @param resumed: whether it goes on with an unfinished backfill.
        """
        self.estimate = plan.estimate
        self.started = self.clock()
        self.first = self.done = done
        self.table = plan.table.display
        self.topic = plan.topic
        self._last = self.started
        how = f"going on after {done:,} rows" if resumed else "from the first key"
        self._line(f"backfilling {plan.table.display} into topic {plan.topic!r}, {how}"
                   + (f" (about {plan.estimate:,} rows)" if plan.estimate is not None else ""))

    def _figures(self, done):
        elapsed = self.clock() - self.started
        rate = (done - self.first) / elapsed if elapsed > 0 else 0.0
        text = f"{done:,} rows, {rate:,.0f} rows/s"
        if self.estimate:
            left = max(self.estimate - done, 0)
            share = min(done / self.estimate, 1.0)
            text = f"{share:4.0%} " + text
            if rate > 0 and left:
                text += f", about {_duration(left / rate)} left"
        return text, done / self.estimate if self.estimate else None

    def update(self, done):
        """
        @param done: the rows done in all so far.
        """
        self.done = done
        now = self.clock()
        if now - self._last < (self.REDRAW if self.terminal else self.interval):
            return
        self._last = now
        self._show(done)

    def _show(self, done):
        text, share = self._figures(done)
        if self.terminal:
            bar = ""
            if share is not None:
                filled = int(min(share, 1.0) * self.WIDTH)
                bar = "[" + "#" * filled + " " * (self.WIDTH - filled) + "] "
            self.out.write("\r\x1b[K" + bar + text)
            self.out.flush()
            self._drawn = True
        else:
            self._line(text)

    def _line(self, text):
        if self._drawn:
            self.out.write("\n")
            self._drawn = False
        self.out.write(text + "\n")
        self.out.flush()

    def finish(self, done):
        """
        The backfill is done: the last figures, and the line ended.
        """
        elapsed = self.clock() - self.started
        self._line(f"done: {done:,} rows ({done - self.first:,} by this run in {elapsed:.1f} s)")

    def stop(self):
        """
        Interrupted: end a bar's line so that what follows starts on its own.
        """
        if self._drawn:
            self.out.write("\n")
            self.out.flush()
            self._drawn = False
