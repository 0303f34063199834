# -*- test-case-name: tests.test_output_writer -*-
"""
L{LineWriter}: whole lines to an output, written by a thread of their own
(L{hermes_tx.output.worker.ThreadWorker}), so the reactor never waits for a
pipe nobody reads or a disk that stalls.

The reactor's side buffers the lines (bytes, each ending in a newline) and
hands them to the thread in chunks, one call in the thread at a time, in
order (L{hermes_tx.output.machine}).  Positions in the stream are byte
offsets (L{hermes_tx.output.stream}): L{LineWriter.append} says where a line
ends, L{LineWriter.when_written} fires once the operating system has taken
everything up to there, L{LineWriter.when_room} once the buffer has drained
to half its bound.  A write that fails keeps what was not taken at the
front of the buffer: nothing is written twice, and the rest of a line the
output took part of is written before anything else.

The worker must hand results back on a later turn of the reactor (as
C{callFromThread} does), never from within C{submit}.
"""

from twisted.logger import Logger

from hermes_tx.output.machine import OutputMachine, make_core
from hermes_tx.output.stream import Stream, WriteFailed  # noqa: F401 (part of this API)


class LineWriter:
    """
    Whole lines to one output, written in a thread; see the module.
    """

    def __init__(self, worker, open_output, clock, where, log=None, max_buffered=1 << 20):
        """
        @param worker: a L{hermes_tx.output.worker.ThreadWorker} (or
            anything with its C{submit} and C{stop}); stopped on L{close}.
        @param open_output: a blocking call (it runs in the worker) opening
            the output: see L{hermes_tx.output.files.opener}.
        @param clock: an C{IReactorTime}, for L{stalled_for}.
        @param where: what the output is, for log lines.
        @param log: the L{Logger} for them.
        @param max_buffered: the bytes written or not past which
            L{has_room} is false.
        """
        self._stream = Stream(clock, max_buffered)
        self._core = make_core(worker, open_output, self._stream, log or Logger(), where)
        self._machine = OutputMachine(self._core)

    def start(self):
        """
        Open the output (in the worker).

        @return: a Deferred firing once it is open, or failing with the
            C{OSError} that prevented it.
        """
        self._core.open(self._machine)
        return self._core.started

    # -- what the reactor's side asks ------------------------------------------

    @property
    def accepted(self):
        """The offset of the end of the last line appended."""
        return self._stream.accepted

    @property
    def written(self):
        """The bytes the output took (dropped rests of lines included)."""
        return self._stream.written

    @property
    def buffered(self):
        """The bytes appended and not written yet."""
        return self._stream.buffered

    @property
    def has_room(self):
        """Whether no more than C{max_buffered} bytes are not written."""
        return self._stream.has_room

    @property
    def error(self):
        """C{None}, or the error of the last write while none has worked since."""
        return self._core.error

    @property
    def lines_written(self):
        return self._stream.lines_written

    @property
    def lines_unwritten(self):
        return self._stream.lines_unwritten

    @property
    def on_dropped(self):
        """
        Called with C{(start, end)} when the rest of a partly written line
        (the bytes up to C{end}) is dropped on reopening.
        """
        return self._stream.on_dropped

    @on_dropped.setter
    def on_dropped(self, callback):
        self._stream.on_dropped = callback

    def stalled_for(self):
        """
        @return: seconds the chunk in the thread has been there (0 when
            none is).
        """
        stream = self._stream
        return 0.0 if stream.busy_since is None else stream.clock.seconds() - stream.busy_since

    # -- lines -------------------------------------------------------------------

    def append(self, line):
        """
        Buffer C{line} (bytes ending with a newline).

        @return: the offset of its end.
        """
        return self._stream.append(line)

    def unappend(self, start, end):
        """
        Take back the line at C{start:end} if it is the last one appended
        and none of it is in the thread, written or held by the output.

        @return: whether it was taken back.
        """
        return self._stream.unappend(start, end)

    def flush(self):
        """
        Write what is buffered, now if the thread is free, else after the
        chunk it has.
        """
        stream = self._stream
        stream.flush_to = stream.accepted
        if stream.buffer:
            self._machine.write()

    def when_written(self, end):
        """
        Write up to C{end} (see L{flush}).

        @return: a Deferred firing once the output took every byte before
            C{end}, or failing with L{WriteFailed}.  Cancelling it only
            stops the waiting.
        """
        d = self._stream.when_written(end)
        if not d.called and self._stream.buffer:
            self._machine.write()
        return d

    def when_room(self):
        """
        @return: a Deferred firing once no more than half of
            C{max_buffered} bytes are waiting (at once if that is so), or
            failing with L{WriteFailed}.
        """
        d = self._stream.when_room()
        if not d.called:
            self._machine.write()
        return d

    def retry(self):
        """
        After a failed write: write again what is buffered (nothing to do
        otherwise, or when nothing is).
        """
        if self._core.error is not None and self._stream.buffer:
            self._machine.retry()

    def reopen(self):
        """
        Open the output again (in the worker), once the chunk in the thread
        is written; later lines go to the new file.  A failure to open is
        logged, and the old file kept.
        """
        self._machine.reopen()
        self._stream.settle()

    def close(self):
        """
        Close the output (in the worker), once the chunk in the thread, if
        any, is written; lines not written by then are not; whatever waits
        fails with L{WriteFailed}.

        @return: a Deferred firing once it is closed (never, while a write
            in the thread stays stuck).
        """
        self._machine.close()
        self._stream.settle()
        return self._core.closed
