"""
L{hermes_tx.processors.JsonLinesProcessor} with its real writer thread on
real pipes: a pipe nobody reads fills, the reactor goes on (a write in the
reactor thread would block it for good, and these tests would hang), the
queue fills, and once the pipe is read every line arrives once; a FIFO that
blocks the open; a real C{twistd -n hermes} whose standard output is a
pipe nobody reads while notifications and outbox changes arrive; and one
whose reader goes away.
"""

import json
import os
import re
import tempfile
import time

from twisted.internet import defer, error, reactor, threads
from twisted.trial import unittest
from twisted.web.client import Agent, readBody

from hermes_tx.events import Change, Event
from hermes_tx.processors import JsonLinesProcessor
from hermes_tx.runtime.queue import EventQueue
from tests.support.outbox import OutboxDatabase, quoted
from tests.support.pipes import PipeReader
from tests.support.shared import sleep, wait_until
from tests.support.twistd import ROOT, TWISTD, Twistd, free_port


class Claim:
    """Records acknowledgements."""

    def __init__(self):
        self.acked = []

    def done(self, change):
        self.acked.append(change.id)


class FullPipeTests(unittest.TestCase):
    def pipe(self):
        rfd, wfd = os.pipe()
        output = os.fdopen(wfd, "wb", buffering=0)  # an io.FileIO
        return rfd, output

    @defer.inlineCallbacks
    def test_pipe_nobody_reads(self):
        """
        A backlog bigger than the pipe and the processor's buffer: the
        processor waits for room, the queue stays full, a change waits for
        its line (not acknowledged), the reactor runs on; once the pipe is
        read, every line arrives exactly once and the change is
        acknowledged.
        """
        rfd, output = self.pipe()
        p = JsonLinesProcessor(output=output)
        queue = p.notification_pipe = EventQueue(maxsize=100)
        payload = "x" * 200
        count = 8000  # about 2 MB: more than the pipe and max_buffered
        queue.put_many([Event("notification", "c", f"{i} {payload}", 1, 1.0) for i in range(count)])
        claim = Claim()
        queue.put(Change(1, "t", "k", 0, 1.0, '{"n": 1}', claim=claim))
        p.startService()
        self.addCleanup(lambda: p.stopService() if p.running else None)
        yield wait_until(lambda: p.busy_since is not None and len(queue) < count, what="stuck")
        yield sleep(0.5)  # the reactor runs while the thread is stuck
        self.assertIsNotNone(p.busy_since)
        self.assertGreater(len(queue), 0)
        self.assertLess(p.lines_written, count)
        self.assertEqual(claim.acked, [])
        reader = PipeReader(rfd)
        reader.start()
        yield wait_until(lambda: claim.acked, timeout=30, what="the change acknowledged")
        yield p.stopService()
        output.close()
        yield threads.deferToThread(reader.join)
        records = reader.records()
        self.assertEqual([r["payload"].split()[0] for r in records[:-1]],
                         [str(i) for i in range(count)])
        self.assertEqual((records[-1]["kind"], records[-1]["id"]), ("change", 1))
        self.assertEqual(claim.acked, [1])
        self.assertEqual(p.lines_written, count + 1)

    @defer.inlineCallbacks
    def test_fifo_open_blocks_only_the_thread(self):
        """
        Opening a FIFO for writing blocks until a reader opens it: that
        happens in the writer's thread; the reactor runs on, and the
        processor starts once a reader is there.
        """
        path = os.path.join(tempfile.mkdtemp(), "fifo")
        os.mkfifo(path)
        p = JsonLinesProcessor(output=path)
        p.notification_pipe = EventQueue()
        p.startService()
        yield sleep(0.3)
        self.assertIsNone(p.supervisor.run.loop)  # set_up (the open) still runs
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        reader = None
        try:
            yield wait_until(lambda: p.supervisor.run.loop is not None, what="the processor started")
            p.notification_pipe.put(Event("notification", "c", "through the fifo", 1, 1.0))
            yield wait_until(lambda: p.lines_written == 1, what="the line written")
            os.set_blocking(fd, True)
            reader = PipeReader(fd)
            reader.start()
            yield p.stopService()
            yield threads.deferToThread(reader.join)
        finally:
            if reader is None:
                os.close(fd)
        self.assertEqual([r["payload"] for r in reader.records()], ["through the fifo"])


def _spawn(args, stdout_fd):
    """
    Start C{twistd -n --pidfile= hermes ARGS} with its standard output on
    C{stdout_fd} (our copy is closed) and standard error collected.

    @return: the L{Twistd} protocol and the process transport.
    """
    env = {k: v for k, v in os.environ.items() if k != "HERMES_DSN" and not k.startswith("PG")}
    env["PYTHONPATH"] = ROOT
    proto = Twistd()
    transport = reactor.spawnProcess(
        proto, TWISTD, [TWISTD, "-n", "--pidfile=", "hermes"] + list(args), env=env, path=ROOT,
        childFDs={0: "w", 1: stdout_fd, 2: "r"},
    )
    os.close(stdout_fd)
    return proto, transport


def _received(metrics):
    match = re.search(rb'hermes_notifications_received_total\{channel="jl"\} ([0-9.e+]+)', metrics)
    return float(match.group(1)) if match else 0.0


class TwistdFullPipeTests(OutboxDatabase, unittest.TestCase):
    @defer.inlineCallbacks
    def test_full_pipe(self):
        """
        twistd -n hermes with its JSON lines into a pipe nobody reads while
        notifications and outbox changes arrive: /health answers every
        time, /ready says primary, the listener stops reading (back-
        pressure) and the outbox is not emptied; once the pipe is read,
        every notification and every change arrives exactly once and the
        outbox empties.
        """
        rfd, wfd = os.pipe()
        port = free_port()
        proto, transport = _spawn(
            ["--dsn", self.dsn, "-c", "jl", "--outbox", "t", "--status-port", str(port),
             "--queue-size", "500", "--poll-interval", "0.2"], wfd)
        reader = PipeReader(rfd)
        agent = Agent(reactor, connectTimeout=5)

        @defer.inlineCallbacks
        def get(path):
            started = time.monotonic()
            response = yield agent.request(b"GET", f"http://127.0.0.1:{port}{path}".encode())
            body = yield readBody(response)
            return response.code, body, time.monotonic() - started

        try:
            yield wait_until(lambda: b"consuming outbox topics" in proto.err, timeout=30,
                             what="consuming")
            notes, changes = 8000, 300
            self.query("SELECT pg_notify('jl', g || ' ' || repeat('x', 200))"
                       " FROM generate_series(1, %s) g", (notes,))
            self.query(f"SELECT {quoted(self.schema)}.emit('t', 'k' || g, jsonb_build_object('n', g))"
                       " FROM generate_series(1, %s) g", (changes,))
            answers = []
            for _ in range(30):  # 3 s of polling while nothing is read
                answers.append((yield get("/health")))
                yield sleep(0.1)
            code, ready, _ = yield get("/ready")
            _, metrics, _ = yield get("/metrics")
            pending = len(self.outbox())
            reader.start()
            yield wait_until(lambda: reader.lines() > notes + changes, timeout=60, what="every line")
            yield wait_until(lambda: not self.outbox(), timeout=30, what="an empty outbox")
        finally:
            transport.signalProcess("TERM")
        ended = yield proto.ended
        yield threads.deferToThread(reader.join)
        err = proto.err.decode()
        self.assertIsInstance(ended, error.ProcessDone, err[-3000:])
        self.assertEqual([a[0] for a in answers], [200] * 30)
        self.assertEqual((code, json.loads(ready)["role"]), (200, "primary"), ready)
        self.assertLess(_received(metrics), notes)  # the listener stopped reading
        self.assertGreater(pending, 0)  # and the consumer claiming
        records = reader.records()
        self.assertEqual(records[0]["kind"], "start")
        seen = [int(r["payload"].split()[0]) for r in records if r["kind"] == "notification"]
        self.assertEqual(seen, list(range(1, notes + 1)))
        ids = [r["data"]["n"] for r in records if r["kind"] == "change"]
        self.assertEqual(sorted(ids), list(range(1, changes + 1)))
        self.assertEqual(len(records), 1 + notes + changes)
        for word in ("Traceback", "Unhandled"):
            self.assertNotIn(word, err)
        self.assertEqual(err.count("role: "), 1, err)  # unknown -> primary, at the start

    @defer.inlineCallbacks
    def test_reader_goes_away(self):
        """
        Its reader closes the pipe (C{| head -1}): the next line fails with
        EPIPE, and twistd hermes says so in one line and exits 1.
        """
        rfd, wfd = os.pipe()
        proto, transport = _spawn(["--dsn", self.dsn, "-c", "gone"], wfd)
        try:
            first = yield threads.deferToThread(os.read, rfd, 1 << 16)  # the start line
            os.close(rfd)
            for i in range(3):
                self.query("SELECT pg_notify('gone', %s)", (f"into a closed pipe {i}",))
            yield wait_until(lambda: proto.ended.called, timeout=30, what="the exit")
        finally:
            if not proto.ended.called:
                transport.signalProcess("KILL")
        ended = yield proto.ended
        err = proto.err.decode()
        self.assertIn(b'"kind": "start"', first)
        self.assertIsInstance(ended, error.ProcessTerminated, err)
        self.assertEqual(ended.exitCode, 1, err)
        self.assertIn("processor terminated: OutputClosed: standard output was closed by its reader"
                      " (BrokenPipeError: [Errno 32] Broken pipe); stopping (exit status 1)", err)
        self.assertNotIn("Traceback", err)
