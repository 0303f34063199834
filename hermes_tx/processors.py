# -*- test-case-name: tests.test_processors -*-
"""
Ready-made processors.

L{JsonLinesProcessor} is the default processor of C{twistd hermes}: one JSON
object per event, one per line, so C{twistd -n hermes ... | jq} works.
"""

import datetime
import decimal
import io
import json
import math
import os
import uuid

from twisted.logger import Logger

from hermes_tx.components import Component
from hermes_tx.outcomes import Retry

#: Write out after this many buffered lines even while more items are queued.
FLUSH_EVERY = 512


def _jsonable(value):
    # json.dumps's default: the types a processor is likely to put in an
    # event that JSON has no form for.
    if isinstance(value, (datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, (decimal.Decimal, uuid.UUID)):
        return str(value)
    if isinstance(value, (set, frozenset)):
        return list(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _finite(value):
    # A copy of value with NaN and infinities made null.
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def json_line(record):
    """
    @param record: what to write (a dict, usually an event's C{as_dict()}).
    @return: C{record} as one line of strict JSON (RFC 8259), newline
        included, non-ASCII characters as they are.  Non-finite floats
        (C{NaN}, C{Infinity}), which JSON has no form for, become C{null}
        as in JavaScript's C{JSON.stringify}; dates and times become ISO
        8601 strings, C{Decimal} and C{UUID} strings, sets lists.
    @raise TypeError: C{record} holds anything else JSON cannot represent.
    @raise ValueError: C{record} refers to itself.
    """
    try:
        text = json.dumps(record, ensure_ascii=False, allow_nan=False, default=_jsonable)
    except ValueError:
        text = json.dumps(
            _finite(record), ensure_ascii=False, allow_nan=False,
            default=lambda value: _finite(_jsonable(value)),
        )
    return text + "\n"


class JsonLinesProcessor(Component):
    """
    Writes each event as a JSON object with the keys C{kind}, C{channel},
    C{payload}, C{pid} and C{received_at} (plus C{data} or C{decode_error}
    with JSON payloads), one per line (L{json_line}), UTF-8.

    Lines are written out in batches while a backlog is being worked through
    (at most L{FLUSH_EVERY} at a time), and at once whenever the queue runs
    empty, so a line is never held back while nothing else is coming.  The
    line of an outbox change (kind C{"change"}) is written before C{execute}
    returns, since the change is then acknowledged: written to the
    operating system, which keeps it when the process is killed.

    When writing fails with an C{OSError} (a full disk, a closed pipe) the
    event raises L{hermes_tx.outcomes.Retry}, so it is executed again later;
    it is never skipped.  A line is never written twice and never left
    half-written: the rest of a partly written line is written before
    anything else.  Lines of earlier events of a batch that were buffered
    but could not be written yet (at most L{FLUSH_EVERY} - 1) stay buffered
    and are written first once writing works again.

    @ivar lines_written: how many lines have been wholly written.
    """

    log = Logger()

    def __init__(self, output="-", **kwargs):
        """
        @param output: C{"-"} for standard output, a file path (appended to;
            reopened by L{reopen}), or an open file: binary (its C{write}
            may write part of what it is given and say how much, as
            C{io.FileIO} does) or text (written with C{write} and C{flush}).
        @param kwargs: passed to L{Component}.
        """
        Component.__init__(self, **kwargs)
        self.output = output
        self.lines_written = 0
        self._file = None
        self._owns_file = False
        self._text = False
        self._buffer = bytearray()  # whole lines, or the rest of one, to write
        self._lines = 0  # lines in _buffer (or handed to a text file, unflushed)
        self._partial = None  # the event whose line is partly written
        self._mid_line = False  # the buffer starts with the rest of a line
        self._drained = 0

    def _open(self):
        if self.output == "-":
            # twistd replaces sys.stdout with a logging shim: write to the
            # process's real standard output.
            return io.FileIO(os.dup(1), "wb")
        return open(self.output, "ab", buffering=0)

    def set_up(self):
        if isinstance(self.output, str):
            self._file = self._open()
            self._owns_file = True
        else:
            self._file = self.output
            self._text = isinstance(self.output, io.TextIOBase)

    def execute(self, event):
        mark = None  # where this event's line starts in the buffer
        if event is not self._partial:
            line = json_line(event.as_dict() if hasattr(event, "as_dict") else event)
            if self._text:
                try:
                    self._file.write(line)
                except OSError as e:
                    raise Retry(f"cannot write to {self._where()}: {e}") from None
            else:
                mark = len(self._buffer)
                self._buffer += line.encode("utf-8", "backslashreplace")
            self._lines += 1
        # An outbox change is acknowledged (deleted from the outbox) once
        # execute returns: its line must be written by then, or a crash
        # loses it.  Notifications are kept in memory only, so batching
        # their lines risks nothing more.
        if (self._lines >= FLUSH_EVERY or getattr(event, "kind", None) == "change"
                or not getattr(self.notification_pipe, "pending", None)):
            try:
                self._drain()
            except OSError as e:
                if mark is not None and self._drained <= mark:
                    # None of its line went out: forget it, it comes again.
                    del self._buffer[mark - self._drained:]
                    self._lines -= 1
                else:
                    # Its line is (partly) handed over: when it comes again,
                    # only the rest is written.
                    self._partial = event
                raise Retry(f"cannot write to {self._where()}: {e}") from None
            self._partial = None
        return event

    def _drain(self):
        """
        Write out the buffer (or flush a text file).  C{_drained} says how
        many bytes went out, also when an C{OSError} interrupts.
        """
        self._drained = 0
        if self._text:
            if self._lines:
                self._file.flush()
                self.lines_written += self._lines
                self._lines = 0
            return
        buffer = self._buffer
        while buffer:
            count = self._file.write(buffer) or 0
            if not count:
                raise BlockingIOError(11, "the output accepts nothing right now")
            lines = buffer.count(b"\n", 0, count)
            self._mid_line = buffer[count - 1] != 10  # ended inside a line
            del buffer[:count]
            self._drained += count
            self.lines_written += lines
            self._lines -= lines

    def _where(self):
        return "standard output" if self.output == "-" else repr(getattr(self.output, "name", self.output))

    def reopen(self):
        """
        Close the output file and open its path again (after a log rotation
        tool moved it away).  Whole lines still buffered go to the new file
        if the old one will not take them; the rest of a line the old file
        took only part of is dropped, and its event, when executed again,
        writes its whole line to the new file.  Nothing to do unless
        C{output} is a path and the processor runs.

        @return: True when a file was reopened.
        @raise OSError: the path cannot be opened (the old file stays).
        """
        if not (self._owns_file and self.output != "-"):
            return False
        new = self._open()
        try:
            self._drain()
        except OSError:
            if self._mid_line:
                del self._buffer[: self._buffer.index(b"\n") + 1]
                self._lines -= 1
                self._partial = None
                self._mid_line = False
                self.log.warn("{where}: the rest of a partly written line was dropped "
                              "on reopening", where=self._where())
        old, self._file = self._file, new
        old.close()
        return True

    def tear_down(self):
        try:
            self._drain()
        except OSError as e:
            self.log.error(
                "{count} buffered line(s) could not be written to {where}: {error}",
                count=self._lines, where=self._where(), error=e,
            )
        if self._owns_file:
            self._file.close()
        self._file = None
        self._owns_file = False
        self._buffer.clear()
        self._lines = 0
