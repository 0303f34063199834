"""
Tests for L{hermes_tx.output.writer} (in memory: a worker that runs its jobs
when told, scripted files, a C{task.Clock}) and
L{hermes_tx.output.worker} (its real thread).
"""

import threading

from twisted.internet import defer, reactor, task
from twisted.logger import formatEvent
from twisted.trial import unittest

from hermes_tx.output.files import RawOutput
from hermes_tx.output.worker import ThreadWorker
from hermes_tx.output.stream import CHUNK
from hermes_tx.output.writer import LineWriter, WriteFailed
from tests.support.shared import capture_log
from tests.support.workers import FakeRawFile, ManualWorker, full


def line(i, size=20):
    text = f"{i:06d}".ljust(size - 1, "x") + "\n"
    return text.encode()


class WriterCase(unittest.TestCase):
    def make(self, *files, max_buffered=1000):
        """
        A started writer whose opens return C{files} in turn (fake raw
        files); C{self.worker}, C{self.clock}.
        """
        self.worker = ManualWorker()
        self.clock = task.Clock()
        self.files = list(files)
        self.opened = []

        def open_output():
            f = self.files.pop(0)
            if isinstance(f, Exception):
                raise f
            self.opened.append(f)
            return RawOutput(f, owned=True)

        writer = LineWriter(self.worker, open_output, self.clock, "the output",
                            max_buffered=max_buffered)
        started = writer.start()
        self.worker.run_all()
        self.successResultOf(started)
        return writer


class WritingTests(WriterCase):
    def test_nothing_goes_before_a_flush(self):
        """
        Appended lines wait in the buffer until flushed; then one job
        writes them all.
        """
        out = FakeRawFile()
        w = self.make(out)
        ends = [w.append(line(i)) for i in range(3)]
        self.assertEqual(ends, [20, 40, 60])
        self.assertEqual(self.worker.jobs, [])
        w.flush()
        self.assertEqual(len(self.worker.jobs), 1)
        w.flush()  # the thread is busy: nothing more
        self.assertEqual(len(self.worker.jobs), 1)
        self.worker.run_all()
        self.assertEqual(out.data, b"".join(line(i) for i in range(3)))
        self.assertEqual((w.written, w.buffered, w.lines_written), (60, 0, 3))

    def test_when_written(self):
        """
        A waiter fires once everything before its end is written, not
        before; one for bytes written already fires at once.
        """
        out = FakeRawFile()
        w = self.make(out)
        first = w.append(line(1))
        d1 = w.when_written(first)
        second = w.append(line(2))  # while the first is in the thread
        d2 = w.when_written(second)
        self.assertNoResult(d1)
        self.worker.run_one()
        self.successResultOf(d1)
        self.assertNoResult(d2)
        self.worker.run_one()  # the second chunk was handed over at once
        self.successResultOf(d2)
        self.successResultOf(w.when_written(first))

    def test_chunks_are_whole_lines(self):
        """
        More than CHUNK bytes go in several jobs, each ending with a line
        (one line longer than CHUNK goes alone).
        """
        out = FakeRawFile()
        w = self.make(out, max_buffered=10 * CHUNK)
        fit = CHUNK // 1000  # lines of 1000 bytes in a chunk
        lines = [line(i, 1000) for i in range(fit + 50)] + [b"L" * (CHUNK + 10) + b"\n", line(200)]
        for data in lines:
            end = w.append(data)
        d = w.when_written(end)
        sizes = []
        while self.worker.jobs:
            job, done = self.worker.jobs.pop(0)
            result = job()
            sizes.append(result[0])
            done(result, None)
        self.successResultOf(d)
        self.assertEqual(out.data, b"".join(lines))
        self.assertEqual(sizes, [fit * 1000, 50000, CHUNK + 11, 20])

    def test_room(self):
        """
        when_room fires once no more than half of max_buffered is waiting.
        """
        out = FakeRawFile()
        w = self.make(out, max_buffered=100)
        for i in range(6):
            w.append(line(i))
        self.assertFalse(w.has_room)
        d = w.when_room()
        self.assertNoResult(d)
        self.worker.run_all()
        self.successResultOf(d)
        self.assertTrue(w.has_room)
        self.successResultOf(w.when_room())

    def test_cancelled_waiter_is_forgotten(self):
        out = FakeRawFile()
        w = self.make(out)
        d = w.when_written(w.append(line(1)))
        d.cancel()
        self.failureResultOf(d, defer.CancelledError)
        self.worker.run_all()  # no AlreadyCalledError
        self.assertEqual(out.data, line(1))

    def test_unappend(self):
        """
        Only the last line, none of it handed over, can be taken back.
        """
        out = FakeRawFile()
        w = self.make(out)
        a = w.append(line(1))
        b = w.append(line(2))
        self.assertFalse(w.unappend(0, a))  # not the last
        self.assertTrue(w.unappend(a, b))
        self.assertEqual(w.accepted, a)
        w.flush()  # in the thread now
        self.assertFalse(w.unappend(0, a))
        self.worker.run_all()
        self.assertEqual(out.data, line(1))


class FailureTests(WriterCase):
    def test_failed_write_keeps_the_rest(self):
        """
        A write that stops after part of a chunk: waiters for bytes not
        written fail, the rest stays first in the buffer, nothing is
        written until retry(), and then only the rest is.
        """
        out = FakeRawFile(25, full())
        w = self.make(out)
        ends = [w.append(line(1)), w.append(line(2))]
        a, b = [w.when_written(end) for end in ends]
        self.worker.run_all()
        self.successResultOf(a)
        error = self.failureResultOf(b, WriteFailed).value
        self.assertIn("No space left on device", str(error))
        self.assertEqual((w.written, w.buffered, w.lines_written), (25, 15, 1))
        self.assertIsInstance(w.error, OSError)
        c = w.when_written(w.append(line(3)))
        self.assertEqual(self.worker.jobs, [])  # failed: waits for retry
        w.retry()
        self.worker.run_all()
        self.successResultOf(c)
        self.assertEqual(out.data, line(1) + line(2) + line(3))
        self.assertIsNone(w.error)
        self.assertEqual(w.lines_written, 3)

    def test_job_that_raises(self):
        """
        An output whose write raises something else than an OSError fails
        the same way (nothing counted as taken).
        """

        class Broken(FakeRawFile):
            def write(self, data):
                raise ValueError("I/O operation on closed file")

        w = self.make(Broken())
        d = w.when_written(w.append(line(1)))
        self.worker.run_all()
        self.assertIsInstance(self.failureResultOf(d, WriteFailed).value.error, ValueError)
        self.assertEqual(w.buffered, 20)

    def test_would_block_without_a_descriptor(self):
        """
        A file-like object that takes nothing (and has no descriptor to
        wait on) is a failure to retry.
        """
        out = FakeRawFile(0)
        w = self.make(out)
        d = w.when_written(w.append(line(1)))
        self.worker.run_all()
        self.assertIsInstance(self.failureResultOf(d, WriteFailed).value.error, BlockingIOError)
        w.retry()
        self.worker.run_all()
        self.assertEqual(out.data, line(1))


class ReopenTests(WriterCase):
    def test_reopen_when_idle(self):
        """
        Lines appended while reopening go to the new file; the old one is
        closed in the thread first.
        """
        old, new = FakeRawFile(), FakeRawFile()
        w = self.make(old, new)
        d = w.when_written(w.append(line(1)))
        self.worker.run_all()
        w.reopen()
        d2 = w.when_written(w.append(line(2)))
        self.assertEqual(len(self.worker.jobs), 1)  # the open, no write yet
        self.worker.run_all()
        self.successResultOf(d)
        self.successResultOf(d2)
        self.assertEqual((old.data, new.data), (line(1), line(2)))
        self.assertTrue(old.closed)
        self.assertFalse(new.closed)

    def test_reopen_while_writing(self):
        """
        A reopen asked for while a chunk is in the thread waits for it:
        the chunk goes to the old file, later lines to the new one.
        """
        old, new = FakeRawFile(), FakeRawFile()
        w = self.make(old, new)
        w.when_written(w.append(line(1)))
        w.reopen()
        w.reopen()
        w.append(line(2))
        w.flush()
        self.worker.run_all()
        self.assertEqual((old.data, new.data), (line(1), line(2)))

    def test_reopen_after_a_half_written_line(self):
        """
        The old file took part of a line and fails: on reopening the rest
        is dropped (logged, on_dropped told), and the whole lines after it
        go to the new file.
        """
        old, new = FakeRawFile(5, full(), full()), FakeRawFile()
        w = self.make(old, new)
        dropped = []
        w.on_dropped = lambda start, end: dropped.append((start, end))
        a = w.append(line(1))
        w.append(line(2))
        d = w.when_written(a)
        self.worker.run_all()
        self.failureResultOf(d, WriteFailed)
        events = capture_log(self)
        w.reopen()
        waiting = w.when_written(a)  # an event asking again before the swap
        self.worker.run_all()
        self.failureResultOf(waiting, WriteFailed)
        self.assertEqual(dropped, [(5, 20)])
        self.assertIn("partly written line was dropped", formatEvent(events[-1]))
        self.assertEqual((old.data, new.data), (line(1)[:5], line(2)))
        self.assertEqual(w.lines_written, 1)

    def test_open_fails(self):
        """
        A path that cannot be opened again: one line, the old file stays.
        """
        old = FakeRawFile()
        w = self.make(old, PermissionError(13, "Permission denied"))
        events = capture_log(self)
        w.reopen()
        w.append(line(1))
        w.flush()
        self.worker.run_all()
        self.assertEqual(old.data, line(1))
        self.assertEqual(
            [formatEvent(e) for e in events],
            ["could not reopen the output: PermissionError: [Errno 13] Permission denied;"
             " writing on to the old file"],
        )


class CloseTests(WriterCase):
    def test_close_when_idle(self):
        out = FakeRawFile()
        w = self.make(out)
        waiting = w.when_written(w.append(line(1)) + 1)
        closed = w.close()
        self.assertNoResult(closed)
        self.worker.run_all()
        self.successResultOf(closed)
        self.assertTrue(out.closed)
        self.assertTrue(self.worker.stopped)
        self.failureResultOf(waiting, WriteFailed)

    def test_close_while_writing(self):
        """
        The chunk in the thread is written first; then the file is closed.
        Lines not handed over are not written.
        """
        out = FakeRawFile()
        w = self.make(out)
        d = w.when_written(w.append(line(1)))
        later = w.when_written(w.append(line(2)))
        closed = w.close()
        self.failureResultOf(later, WriteFailed)
        self.worker.run_all()
        self.failureResultOf(d, WriteFailed)  # closing fails every waiter
        self.successResultOf(closed)
        self.assertEqual(out.data, line(1))
        self.assertTrue(out.closed)
        self.assertEqual(w.lines_unwritten, 1)

    def test_close_while_a_write_fails(self):
        out = FakeRawFile(5, full())
        w = self.make(out)
        d = w.when_written(w.append(line(1)))
        closed = w.close()
        self.failureResultOf(d, WriteFailed)
        self.worker.run_all()
        self.successResultOf(closed)
        self.assertEqual((out.data, out.closed, w.lines_unwritten), (line(1)[:5], True, 1))

    def test_close_while_reopening(self):
        """
        Both the old file and the one the reopen opened are closed.
        """
        old, new = FakeRawFile(), FakeRawFile()
        w = self.make(old, new)
        w.reopen()
        closed = w.close()
        self.worker.run_all()
        self.successResultOf(closed)
        self.assertEqual((old.closed, new.closed), (True, True))

    def test_close_while_starting(self):
        """
        A stop before the first open returned: the start fails, the file
        it opened is closed.
        """
        worker = ManualWorker()
        out = FakeRawFile()
        w = LineWriter(worker, lambda: RawOutput(out, owned=True), task.Clock(), "x")
        started = w.start()
        closed = w.close()
        worker.run_all()
        self.failureResultOf(started, WriteFailed)
        self.successResultOf(closed)
        self.assertTrue(out.closed)

    def test_start_fails(self):
        worker = ManualWorker()

        def refuse():
            raise FileNotFoundError(2, "No such file or directory")

        w = LineWriter(worker, refuse, task.Clock(), "x")
        started = w.start()
        worker.run_all()
        self.failureResultOf(started, FileNotFoundError)
        self.assertTrue(worker.stopped)

    def test_stalled_for(self):
        out = FakeRawFile()
        w = self.make(out)
        self.assertEqual(w.stalled_for(), 0)
        w.when_written(w.append(line(1)))
        self.clock.advance(2.5)
        self.assertEqual(w.stalled_for(), 2.5)
        self.worker.run_all()
        self.assertEqual(w.stalled_for(), 0)


class ThreadWorkerTests(unittest.TestCase):
    def test_jobs_run_in_order_in_another_thread(self):
        """
        Jobs run one after the other in the worker's thread; results come
        back in the reactor thread.
        """
        worker = ThreadWorker(name="test-worker")
        self.addCleanup(worker.stop)
        seen = []
        done = defer.Deferred()

        def job(i):
            seen.append((i, threading.current_thread().name))
            if i == 2:
                raise OSError(5, "Input/output error")
            return i

        results = []

        def report(result, error):
            results.append((result, type(error).__name__ if error else None,
                            threading.current_thread() is threading.main_thread()))
            if len(results) == 3:
                done.callback(None)

        for i in range(3):
            worker.submit(lambda i=i: job(i), report)

        def check(_):
            self.assertEqual(seen, [(0, "test-worker"), (1, "test-worker"), (2, "test-worker")])
            self.assertEqual(results, [(0, None, True), (1, None, True), (None, "OSError", True)])

        return done.addCallback(check)

    def test_stop_ends_the_thread(self):
        worker = ThreadWorker(name="test-stop")
        worker.stop()
        return task.deferLater(reactor, 0.2, lambda: self.assertNotIn(
            "test-stop", [t.name for t in threading.enumerate()]))
