# -*- test-case-name: tests.test_output_files -*-
"""
The blocking calls of an output, for L{hermes_tx.output.worker.ThreadWorker}'s
thread only: open it, write a chunk of whole lines to it saying how many
bytes the operating system took before an error, close it.

  - L{RawOutput}: a binary file (C{io.FileIO}: standard output, a path
    opened for appending, or one given); nothing is buffered on the way, so
    the count is exact and an error never leaves part of a line in a
    buffer to be written later;
  - L{TextOutput}: a text file given by the caller (written with C{write},
    then C{flush}: its own buffering decides what an error leaves behind).
"""

import errno
import io
import os
import select

#: seconds between looks at a non-blocking descriptor that is full
_WRITABLE_POLL = 1.0


class RawOutput:
    """
    A binary file whose C{write} may take part of what it is given and say
    how much, as C{io.FileIO} does.

    @ivar file: the file object.
    @ivar owned: whether L{close} closes it (it was opened here).
    @ivar holding: always 0 (see L{TextOutput}).
    """

    holding = 0

    def __init__(self, file, owned):
        self.file = file
        self.owned = owned

    def write(self, chunk):
        """
        Write all of C{chunk}, waiting as long as it takes.  A descriptor
        someone made non-blocking is waited on until it is writable again.

        @return: C{(count, error)}: the bytes taken, and C{None} or the
            C{OSError} that stopped the writing.
        """
        view = memoryview(chunk)
        taken = 0
        while taken < len(view):
            try:
                count = self.file.write(view[taken:])
            except BlockingIOError as e:
                count = None
                if not self._wait_writable():
                    return taken, e
            except OSError as e:
                return taken, e
            if not count:
                if count is None and self._wait_writable():
                    continue
                return taken, BlockingIOError(errno.EAGAIN, "the output takes nothing right now")
            taken += count
        return taken, None

    def _wait_writable(self):
        """
        @return: True once the file's descriptor is writable; False if it
            has none (a file-like object), or it cannot be waited on.
        """
        try:
            fd = self.file.fileno()
        except (AttributeError, OSError, ValueError):
            return False
        try:
            while not select.select([], [fd], [], _WRITABLE_POLL)[1]:
                pass
        except (OSError, ValueError):
            return False
        return True

    def close(self):
        if self.owned:
            self.file.close()


class TextOutput:
    """
    A text file given by the caller: each chunk is decoded (it is UTF-8),
    written with C{write} and flushed.  When the flush fails, the text file
    holds the chunk already: the next call (whose chunk starts with the
    same bytes) flushes it without writing it again.

    @ivar holding: the bytes at the start of the next chunk the file holds
        unflushed (0 unless the last flush failed).
    """

    owned = False

    def __init__(self, file):
        self.file = file
        self.holding = 0

    def write(self, chunk):
        """
        @return: C{(count, error)}: C{len(chunk)} once it is flushed, else
            C{0} and the C{OSError}.
        """
        rest = bytes(chunk[self.holding:])
        try:
            if rest:
                self.file.write(rest.decode("utf-8"))
        except OSError as e:
            return 0, e
        self.holding = len(chunk)
        try:
            self.file.flush()
        except OSError as e:
            return 0, e
        self.holding = 0
        return len(chunk), None

    def close(self):
        pass


def opener(target):
    """
    @param target: C{"-"} for the process's standard output (file
        descriptor 1, whatever C{sys.stdout} was replaced with), a path
        (opened for appending, created if need be), or an open file:
        binary (L{RawOutput}) or text (L{TextOutput}).
    @return: a function opening the output (a blocking call: run it in the
        writer's thread) and returning a L{RawOutput} or L{TextOutput}.
    """
    if target == "-":
        return lambda: RawOutput(io.FileIO(os.dup(1), "wb"), owned=True)
    if isinstance(target, str):
        return lambda: RawOutput(open(target, "ab", buffering=0), owned=True)
    if isinstance(target, io.TextIOBase):
        return lambda: TextOutput(target)
    return lambda: RawOutput(target, owned=False)
