"""
Tests for L{hermes_tx.output.files}: the blocking calls the writer's thread
makes (run here in threads of the reactor's pool where they may block).
"""

import errno
import fcntl
import io
import os
import threading

from twisted.internet import threads
from twisted.trial import unittest

from hermes_tx.output.files import RawOutput, TextOutput, opener
from tests.support.workers import FakeRawFile, full


class RawOutputTests(unittest.TestCase):
    def test_partial_then_error(self):
        out = FakeRawFile(10, full())
        count, error = RawOutput(out, owned=False).write(b"x" * 30)
        self.assertEqual((count, error.errno), (10, errno.ENOSPC))
        self.assertEqual(out.data, b"x" * 10)

    def test_writes_all_in_pieces(self):
        out = FakeRawFile(3, 4, None)
        self.assertEqual(RawOutput(out, owned=False).write(b"0123456789"), (10, None))
        self.assertEqual(out.data, b"0123456789")

    def test_nothing_taken_without_a_descriptor(self):
        count, error = RawOutput(FakeRawFile(0), owned=False).write(b"line\n")
        self.assertEqual(count, 0)
        self.assertIsInstance(error, BlockingIOError)

    def test_non_blocking_pipe_is_waited_on(self):
        """
        A descriptor someone made non-blocking: a full pipe is waited on
        (in the thread) until the reader reads, and everything goes.
        """
        rfd, wfd = os.pipe()
        self.addCleanup(os.close, rfd)
        fcntl.fcntl(wfd, fcntl.F_SETFL, fcntl.fcntl(wfd, fcntl.F_GETFL) | os.O_NONBLOCK)
        out = RawOutput(io.FileIO(wfd, "wb"), owned=True)
        data = b"y" * (1 << 20)
        received = bytearray()

        def read():
            while len(received) < len(data):
                received.extend(os.read(rfd, 1 << 16))

        reader = threading.Timer(0.2, read)
        reader.start()
        d = threads.deferToThread(out.write, data)

        def check(result):
            out.close()
            reader.join()
            self.assertEqual(result, (len(data), None))
            self.assertEqual(bytes(received), data)

        return d.addCallback(check)

    def test_closed_pipe(self):
        rfd, wfd = os.pipe()
        os.close(rfd)
        out = RawOutput(io.FileIO(wfd, "wb"), owned=True)
        count, error = out.write(b"line\n")
        out.close()
        self.assertEqual(count, 0)
        self.assertIsInstance(error, BrokenPipeError)

    def test_close_only_what_it_opened(self):
        mine, theirs = FakeRawFile(), FakeRawFile()
        RawOutput(mine, owned=True).close()
        RawOutput(theirs, owned=False).close()
        self.assertEqual((mine.closed, theirs.closed), (True, False))


class FlushFails(io.StringIO):
    """A text file whose flushes fail while C{failing}."""

    failing = True

    def flush(self):
        if self.failing:
            raise full()


class TextOutputTests(unittest.TestCase):
    def test_flush_failure_holds_the_chunk(self):
        """
        When the flush fails the file holds the chunk: the next call, whose
        chunk starts with the same bytes, writes only what follows them.
        """
        f = FlushFails()
        out = TextOutput(f)
        count, error = out.write(b"one\n")
        self.assertEqual((count, error.errno, out.holding), (0, errno.ENOSPC, 4))
        f.failing = False
        self.assertEqual(out.write(b"one\ntwo\n"), (8, None))
        self.assertEqual((f.getvalue(), out.holding), ("one\ntwo\n", 0))

    def test_write_failure_takes_nothing(self):
        class Refuses(io.StringIO):
            def write(self, text):
                raise full()

        out = TextOutput(Refuses())
        count, error = out.write(b"one\n")
        self.assertEqual((count, out.holding), (0, 0))

    def test_utf8(self):
        f = io.StringIO()
        TextOutput(f).write("ünï ☃\n".encode())
        self.assertEqual(f.getvalue(), "ünï ☃\n")


class OpenerTests(unittest.TestCase):
    def test_path_is_appended_to(self):
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(b"earlier\n")
        out = opener(path)()
        self.assertTrue(out.owned)
        out.write(b"later\n")
        out.close()
        with open(path, "rb") as f:
            self.assertEqual(f.read(), b"earlier\nlater\n")

    def test_stdout_is_a_copy_of_descriptor_1(self):
        out = opener("-")()
        self.addCleanup(out.close)
        self.assertTrue(out.owned)
        self.assertNotEqual(out.file.fileno(), 1)
        self.assertEqual(os.fstat(out.file.fileno()).st_ino, os.fstat(1).st_ino)

    def test_files_given(self):
        text, raw = io.StringIO(), FakeRawFile()
        self.assertIsInstance(opener(text)(), TextOutput)
        out = opener(raw)()
        self.assertIsInstance(out, RawOutput)
        self.assertIs(out.file, raw)
        self.assertFalse(out.owned)
