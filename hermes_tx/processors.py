# -*- test-case-name: tests.test_processors,tests.test_jsonlines_pipe,tests.test_outbox_jsonlines -*-
"""
Ready-made processors.

L{JsonLinesProcessor} is the default processor of C{twistd hermes}: one JSON
object per event, one per line, so C{twistd -n hermes ... | jq} works.  Its
lines are written by a thread of its own (L{hermes_tx.output}): a pipe
nobody reads or a disk that stalls never blocks the reactor.
"""

from twisted.internet import defer, task
from twisted.logger import Logger

from hermes_tx.components import Component
from hermes_tx.exceptions import HermesException, one_line
from hermes_tx.outcomes import BatchOutcome, Unavailable
from hermes_tx.output.files import opener
from hermes_tx.output.jsonline import json_line  # noqa: F401 (its home before hermes_tx.output)
from hermes_tx.output.owed import OwedLines
from hermes_tx.output.worker import ThreadWorker
from hermes_tx.output.writer import LineWriter, WriteFailed
from hermes_tx.strategies import TERMINATE, CommonErrorStrategy

#: Hand buffered lines to the writer thread after this many even while more
#: items are queued.
FLUSH_EVERY = 512
#: Bytes of lines not yet written past which C{execute} waits for room
#: (until half of them are): the back-pressure of a slow output.
MAX_BUFFERED = 1 << 20
#: At a stop, a write that has been in the thread this long (seconds) is
#: stuck: what is not written yet is reported at once, not waited for.
STALLED = 1.0
#: Seconds of work through a backlog after which C{execute} gives the
#: reactor a turn (the consumer loop's own budget, per batch here).
TURN_BUDGET = 0.01


class OutputClosed(HermesException):
    """
    The output's reader went away (C{EPIPE}: the other end of the pipe was
    closed): nothing can be written there again.
    """


class StopOnClosedOutput(CommonErrorStrategy):
    """
    L{JsonLinesProcessor}'s default error strategy: L{OutputClosed} is
    C{(True, TERMINATE)} (under C{twistd hermes}: one line, a clean stop,
    exit status 1); everything else as L{CommonErrorStrategy}.
    """

    def handle_exception(self, error):
        if isinstance(error, OutputClosed):
            return True, TERMINATE
        return CommonErrorStrategy.handle_exception(self, error)


class JsonLinesProcessor(Component):
    """
    Writes each event as a JSON object with the keys C{kind}, C{channel},
    C{payload}, C{pid} and C{received_at} (plus C{data} or C{decode_error}
    with JSON payloads), one per line (L{json_line}), UTF-8.

    Lines are written by a thread of its own
    (L{hermes_tx.output.writer.LineWriter}), so the reactor never waits for
    the output.  What is queued is taken in batches of up to L{FLUSH_EVERY}
    events (batch mode, unless a subclass overrides C{pre_execute},
    C{execute} or C{post_execute}: then one event at a time).  While a
    backlog of notifications is worked through, their lines are handed to
    the thread at least every L{FLUSH_EVERY} lines and C{execute} returns at
    once; when the queue runs empty, it waits until every line so far is
    written, so a line is never held back while nothing else is coming.
    An outbox change (kind C{"change"}) is done only once its line is
    written, since it is then acknowledged: written to the operating
    system, which keeps it when the process is killed.

    Back-pressure: while more than L{MAX_BUFFERED} bytes of lines wait for a
    slow output (a pipe nobody reads, a stalled disk), C{execute} waits for
    room; the queue fills and the sources stop taking events (PostgreSQL
    keeps them meanwhile).  A wait longer than half the C{execute_timeout}
    ends in L{hermes_tx.outcomes.Unavailable} (the event is executed again
    later), not in a cancelled C{execute}.

    When writing fails with an C{OSError} (a full disk) the events whose
    lines were not written raise L{hermes_tx.outcomes.Unavailable}, so they are
    executed again later; they are never skipped.  A line is never written
    twice and never left half-written: the rest of a partly written line
    is written before anything else, and an event (an outbox change too,
    claimed again) whose line is out of our hands already does not write it
    again (L{hermes_tx.output.owed}).  Lines of earlier events that were
    buffered but could not be written yet stay buffered and are written
    first once writing works again.  A closed pipe (C{EPIPE}: C{twistd -n
    hermes | head} once C{head} has exited) is L{OutputClosed}, which
    L{StopOnClosedOutput} makes terminal.

    A subclass that overrides C{execute} must pass on what this class's
    C{execute} returns: it may be a Deferred (that may fail).
    """

    log = Logger()
    #: see L{MAX_BUFFERED}
    max_buffered = MAX_BUFFERED

    def __init__(self, output="-", worker_factory=None, **kwargs):
        """
        @param output: C{"-"} for standard output, a file path (appended to;
            reopened by L{reopen}), or an open file: binary (its C{write}
            may write part of what it is given and say how much, as
            C{io.FileIO} does) or text (written with C{write} and C{flush}).
        @param worker_factory: makes the worker that runs the blocking
            calls, one per run; C{None}: a
            L{hermes_tx.output.worker.ThreadWorker} (a thread of its own).
        @param kwargs: passed to L{Component}; C{error_strategy} defaults to
            L{StopOnClosedOutput}.
        """
        if kwargs.get("error_strategy") is None:
            kwargs["error_strategy"] = StopOnClosedOutput()
        Component.__init__(self, **kwargs)
        if self.max_batch is None and _batches_welcome(type(self)):
            self.max_batch = FLUSH_EVERY
        self.output = output
        self.worker_factory = worker_factory or (lambda: ThreadWorker(name="hermes-jsonlines"))
        self._writer = None  # of the current run
        self._last_writer = None  # of the last run, for lines_written
        self._lines_before = 0
        self._owed = OwedLines()
        self._unflushed = 0  # lines appended since the last hand-over
        self._turn_began = 0.0  # when the reactor last had a turn, as far as we know

    @property
    def lines_written(self):
        """How many lines have been wholly written."""
        writer = self._writer or self._last_writer
        return self._lines_before + (writer.lines_written if writer is not None else 0)

    def _where(self):
        return "standard output" if self.output == "-" else repr(getattr(self.output, "name", self.output))

    def set_up(self):
        """
        Open the output in the writer's thread.

        @return: a Deferred firing once it is open (failing with the
            C{OSError} if it cannot be).
        """
        if self._last_writer is not None:
            self._lines_before += self._last_writer.lines_written
            self._last_writer = None
        self._owed.clear()
        self._unflushed = 0
        writer = self._writer = LineWriter(
            self.worker_factory(), lambda: opener(self.output)(), self.clock, self._where(),
            log=self.log, max_buffered=self.max_buffered,
        )
        writer.on_dropped = self._owed.forget
        return writer.start()

    def execute(self, item):
        """
        Hand the line of each event to the writer.

        @param item: an event, or in batch mode a list of them.
        @return: C{item}, or a Deferred firing with it once the lines are
            written (or there is room for more); failing with L{Unavailable}
            (L{OutputClosed} for a closed pipe), or in batch mode firing
            with a L{BatchOutcome} naming the events whose lines were not
            written.
        """
        writer = self._writer
        entries = []  # (event, start, end) of each event's line
        change = False
        for event in (item if type(item) is list else (item,)):
            owed = self._owed.pop(event)
            if owed is None:
                line = json_line(event.as_dict() if hasattr(event, "as_dict") else event)
                line = line.encode("utf-8", "backslashreplace")
                end = writer.append(line)
                entries.append((event, end - len(line), end))
                self._unflushed += 1
            else:
                # Its line was handed over in an earlier attempt: never again.
                entries.append((event, None, owed))
            change = change or getattr(event, "kind", None) == "change"
        writer.retry()  # after a failed write, each event tries again
        if change or writer.error is not None or not getattr(self.queue, "pending", None):
            # An outbox change is acknowledged (deleted from the outbox)
            # once execute is done: its line must be written by then, or a
            # crash loses it.  Notifications are kept in memory only, so
            # batching their lines risks nothing more.  It waits for every
            # line buffered, not only its own: a write that fails then
            # fails events that come again, and so try again.
            self._unflushed = 0
            if writer.accepted <= writer.written:
                return item
            wait = writer.when_written(writer.accepted)
        else:
            if self._unflushed >= FLUSH_EVERY:
                self._unflushed = 0
                writer.flush()
            if writer.has_room:
                return self._turn(item)
            wait = writer.when_room()
        return self._waiting(writer, wait, item, entries)

    def _turn(self, item):
        """
        @return: C{item}, or after L{TURN_BUDGET} seconds of work
            without a wait, a Deferred firing with it on the next
            reactor turn: a backlog worked through in batches gives the
            reactor (its timers, the writer's results, the status
            endpoint) a turn as often as one taken an event at a time.
        """
        now = self.clock.seconds()
        if now - self._turn_began < TURN_BUDGET:
            return item
        self._turn_began = now
        return task.deferLater(self.clock, 0, lambda: item)

    def _waiting(self, writer, wait, item, entries):
        """
        @return: C{wait}, firing with C{item} once the writer says so; or
            not: see L{execute}.  A wait cancelled from outside (the
            execute timeout) keeps the lines of notifications.
        """
        self._turn_began = self.clock.seconds()
        patience = self.execute_timeout / 2.0 if self.execute_timeout else None
        if patience:
            wait.addTimeout(patience, self.clock)

        def not_written(failure):
            # The events whose lines are not written (or, should all be,
            # the last: an event that comes again tries again).
            unwritten = [e for e in entries if e[2] > writer.written] or entries[-1:]
            if failure.check(defer.CancelledError):
                # A change goes back to the outbox and comes again; a
                # notification may not: its line stays, to be written.
                for event, start, end in reversed(unwritten):
                    if getattr(event, "kind", None) == "change":
                        self._owed.give_back(writer, event, start, end)
                    else:
                        self._owed.owe(event, end)
                return failure
            for event, start, end in reversed(unwritten):
                self._owed.give_back(writer, event, start, end)
            if failure.check(defer.TimeoutError):
                reason = Unavailable(f"cannot write to {self._where()}: it took nothing for {patience:g} s")
            else:
                failure.trap(WriteFailed)
                error = failure.value.error
                if isinstance(error, BrokenPipeError):
                    raise OutputClosed(f"{self._where()} was closed by its reader ({one_line(error)})")
                reason = Unavailable(f"cannot write to {self._where()}: {error}")
            if type(item) is not list:
                raise reason
            return BatchOutcome(retry=[(event, reason, None) for event, *_ in unwritten])

        return wait.addCallbacks(lambda _: item, not_written)

    def reopen(self):
        """
        Close the output file and open its path again (after a log rotation
        tool moved it away), in the writer's thread once the chunk it is
        writing is written; the lines after that go to the new file.  The
        rest of a line the old file took only part of (and no more) is
        dropped, and its event, when executed again, writes its whole line
        to the new file.  If the path cannot be opened, one line says so
        and the old file stays.  Nothing to do unless C{output} is a path
        and the processor runs.

        @return: True when the file is being reopened.
        """
        if self._writer is None or not isinstance(self.output, str) or self.output == "-":
            return False
        self._writer.reopen()
        return True

    def tear_down(self):
        """
        Write what is buffered, then close the output.  A write that has
        been stuck for L{STALLED} seconds (a pipe nobody reads) is not
        waited for, nor is any write for longer than half the
        C{shutdown_timeout}: the lines not written are counted in one line.
        """
        writer, self._writer = self._writer, None
        self._last_writer = writer
        if writer is None:
            return None
        stalled = writer.stalled_for()
        if stalled >= STALLED:
            self._unwritten(writer, f"it has taken nothing for {stalled:.0f} s")
            writer.close()
            return None
        writer.retry()
        d = writer.when_written(writer.accepted)
        limit = self.shutdown_timeout / 2.0 if self.shutdown_timeout else None
        if limit:
            d.addTimeout(limit, self.clock)

        def not_written(failure):
            if failure.check(defer.TimeoutError):
                self._unwritten(writer, f"it took nothing for {limit:g} s")
                writer.close()
                return None  # the thread is stuck: do not wait for it
            failure.trap(WriteFailed)
            self._unwritten(writer, one_line(failure.value.error))
            return writer.close()

        return d.addCallbacks(lambda _: writer.close(), not_written)

    def _unwritten(self, writer, reason):
        self.log.error(
            "{count} buffered line(s) could not be written to {where}: {error}",
            count=writer.lines_unwritten, where=self._where(), error=reason,
        )


def _batches_welcome(cls):
    """
    @return: whether C{cls} is L{JsonLinesProcessor} or a subclass that left
        C{pre_execute}, C{execute} and C{post_execute} alone, and so takes
        batch mode (L{Component.max_batch}): what is queued is executed up
        to L{FLUSH_EVERY} events at a time, with one wait for a batch's
        lines.  A subclass that overrides one of them gets an event at a
        time, as it expects.
    """
    return (cls.execute is JsonLinesProcessor.execute
            and cls.pre_execute is Component.pre_execute
            and cls.post_execute is Component.post_execute)
