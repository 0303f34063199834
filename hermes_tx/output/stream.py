# -*- test-case-name: tests.test_output_writer -*-
"""
L{Stream}: the bytes between the reactor and an output, by position, and
who waits for which.

Positions are byte offsets from the start of the output's run: lines are
appended at C{accepted}; the first C{written} bytes the output took (or
were dropped, see L{Stream.drop_partial}); between them, a chunk may be in
the writer's thread and the rest is buffered.  Deferreds waiting for a
position (or for room) are fired by L{Stream.settle}, never in the middle of
a change of state: whatever runs in their callbacks sees a consistent
stream.
"""

from twisted.internet import defer

from hermes_tx.exceptions import one_line

#: the most bytes handed to the thread at once (whole lines; more only for
#: a single longer line)
CHUNK = 1 << 20


class WriteFailed(Exception):
    """
    The output did not take a line: the write failed, the rest of the line
    was dropped on reopening, or the writer was closed first.

    @ivar error: the C{OSError} (or other exception) behind it.
    """

    def __init__(self, error):
        Exception.__init__(self, one_line(error) if isinstance(error, Exception) else str(error))
        self.error = error


class Stream:
    """
    @ivar buffer: the bytes appended and not yet handed to the thread.
    @ivar accepted: the offset of the end of the buffer.
    @ivar written: the bytes the output took (dropped rests of lines
        included).
    @ivar chunk: the bytes in the thread (empty when none are).
    @ivar busy_since: clock time the chunk was handed over, or C{None}.
    @ivar flush_to: the offset up to which writing was asked for.
    @ivar lines_written: the newlines among the bytes written.
    @ivar on_dropped: called with C{(start, end)} when the rest of a line
        (the bytes after C{start} up to C{end}) is dropped.
    """

    def __init__(self, clock, max_buffered):
        self.clock = clock
        self.max_buffered = max_buffered
        self.buffer = bytearray()
        self.accepted = 0
        self.written = 0
        self.chunk = b""
        self.busy_since = None
        self.mid_line = False  # the output took part of a line and no more
        self.held = 0  # the offset up to which the output holds bytes it did not write
        self.flush_to = 0
        self.lines_written = 0
        self._waiters = []  # [end, Deferred], for when_written
        self._room_waiters = []
        self._to_fire = []  # (Deferred, result or exception), for settle
        self.on_dropped = lambda start, end: None

    @property
    def buffered(self):
        """The bytes appended and not written."""
        return self.accepted - self.written

    @property
    def has_room(self):
        return self.accepted - self.written <= self.max_buffered

    @property
    def lines_unwritten(self):
        return self.buffer.count(b"\n") + self.chunk.count(b"\n")

    # -- the reactor's side ------------------------------------------------------

    def append(self, line):
        self.buffer += line
        self.accepted += len(line)
        return self.accepted

    def unappend(self, start, end):
        """
        Take back the line at C{start:end} if it is the last one and none of
        it is in the thread, written, or held by the output.
        """
        if end != self.accepted or start < max(self.written + len(self.chunk), self.held):
            return False
        del self.buffer[start - self.accepted:]
        self.accepted = start
        return True

    def when_written(self, end):
        """
        @return: a Deferred firing once every byte before C{end} is written
            (see L{hermes_tx.output.writer.LineWriter.when_written}).
        """
        if end <= self.written:
            return defer.succeed(None)
        waiter = [end, None]
        waiter[1] = d = defer.Deferred(lambda _: self._forget(self._waiters, waiter))
        self._waiters.append(waiter)
        self.flush_to = max(self.flush_to, end)
        return d

    def when_room(self):
        """
        @return: a Deferred firing once no more than half of
            C{max_buffered} bytes are waiting.
        """
        if self.buffered <= self.max_buffered // 2:
            return defer.succeed(None)
        d = defer.Deferred(lambda d: self._forget(self._room_waiters, d))
        self._room_waiters.append(d)
        self.flush_to = self.accepted
        return d

    @staticmethod
    def _forget(waiters, waiter):
        if waiter in waiters:
            waiters.remove(waiter)

    def wants_writing(self):
        """@return: whether buffered bytes are asked for (or room is)."""
        return bool(self.buffer) and (self.flush_to > self.written or bool(self._room_waiters))

    # -- the thread's side ---------------------------------------------------------

    def take_chunk(self):
        """
        @return: the next chunk for the thread (whole lines, at most
            L{CHUNK} bytes unless one line is longer), now in C{chunk}.
        """
        buffer = self.buffer
        size = len(buffer)
        if size > CHUNK:
            size = buffer.rfind(b"\n", 0, CHUNK) + 1 or buffer.find(b"\n") + 1 or size
        chunk = self.chunk = bytes(buffer[:size])
        del buffer[:size]
        self.busy_since = self.clock.seconds()
        return chunk

    def account(self, count, holding=0):
        """
        The thread wrote C{count} bytes of the chunk; the rest goes back to
        the front of the buffer.  C{holding}: bytes after those the output
        holds unwritten (a text file that could not flush), which stay ours
        to hand it again, never to take back.
        """
        chunk = self.chunk
        if count:
            self.written += count
            self.lines_written += chunk.count(b"\n", 0, count)
            self.mid_line = chunk[count - 1] != 10
        if count < len(chunk):
            self.buffer[:0] = chunk[count:]
        self.held = self.written + holding
        self.chunk = b""
        self.busy_since = None

    def fail_waiters(self, error):
        """
        What waits for bytes not written (or for room) fails with C{error}.
        """
        written = self.written
        self._to_fire += [(d, error) for end, d in self._waiters if end > written]
        self._to_fire += [(d, error) for d in self._room_waiters]
        self._waiters = [w for w in self._waiters if w[0] <= written]
        self._room_waiters = []

    def fail_all(self, error):
        self._to_fire += [(d, error) for _, d in self._waiters]
        self._to_fire += [(d, error) for d in self._room_waiters]
        self._waiters, self._room_waiters = [], []

    def fire(self, d, result=None):
        """Fire C{d} with C{result} (errback if an exception) at L{settle}."""
        self._to_fire.append((d, result))

    def drop_partial(self):
        """
        The output took part of a line and takes no more: drop the rest of
        it, failing what waits for it and telling L{on_dropped}.

        @return: whether there was such a rest.
        """
        if not self.mid_line:
            return False
        self.mid_line = False
        size = self.buffer.find(b"\n") + 1
        start, end = self.written, self.written + size
        del self.buffer[:size]
        self.written = self.held = end
        dropped = WriteFailed("the rest of a partly written line was dropped on reopening")
        self._to_fire += [(d, dropped) for e, d in self._waiters if start < e <= end]
        self._waiters = [w for w in self._waiters if not start < w[0] <= end]
        self.on_dropped(start, end)
        return True

    def settle(self):
        """
        Fire what is due: failures, then waiters for bytes now written, then
        waiters for room.
        """
        firing, self._to_fire = self._to_fire, []
        for d, result in firing:
            if isinstance(result, Exception):
                d.errback(result)
            else:
                d.callback(result)
        if self._waiters:
            written = self.written
            ready = [w for w in self._waiters if w[0] <= written]
            if ready:
                self._waiters = [w for w in self._waiters if w[0] > written]
                for _, d in ready:
                    d.callback(None)
        if self._room_waiters and self.buffered <= self.max_buffered // 2:
            ready, self._room_waiters = self._room_waiters, []
            for d in ready:
                d.callback(None)
