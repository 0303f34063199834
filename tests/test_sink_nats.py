"""
The NATS JetStream sink, under the default reactor of C{trial tests}:

  - its URL and the one line it gives under a reactor that is not the
    asyncio one (in-process);
  - every test of L{tests.sink_nats_asyncio} (the sink in-process against
    nats-server processes of its own), which needs the asyncio reactor:
    that module runs once as C{trial --reactor=asyncio} in a child process
    and each of its tests is reported here as one of this module's
    (L{AsyncioReactorTests});
  - end to end: C{twistd --reactor asyncio hermes --outbox t --sink
    nats://...} processes SIGKILLed and replaced while the NATS server
    restarts, and C{twistd hermes} without the asyncio reactor.
"""

import os
import random
import re
import sys
import unittest as pyunit
import uuid

from twisted.internet import defer, reactor, threads, utils
from twisted.trial import unittest
from twisted.trial.runner import TestLoader

from hermes_tx.sinks import SinkURLError, redact_url, sink_class
from hermes_tx.sinks.aio import NeedsAsyncioReactor
from hermes_tx.sinks.nats import NatsSink
from hermes_tx.sinks.natsurl import credentials, stream_subject
from hermes_tx.sinks.urls import SinkURL
from tests import sink_nats_asyncio
from tests.support.deliveries import judge
from tests.support.fleet import TWISTD, Fleet, Writer, committed_on, prefill, prepare_writer_tables
from tests.support.natsserver import read_stream_blocking, start_nats
from tests.support.outbox import OutboxDatabase
from tests.support.shared import sleep, wait_until
from tests.support.twistd import ROOT, run_twistd

TRIAL = os.path.join(os.path.dirname(sys.executable), "trial")
#: what the sink says under another reactor
WRONG_REACTOR = (
    "the NATS sink needs Twisted's asyncio reactor, not EPollReactor: run twistd --reactor "
    "asyncio hermes ... (trial: trial --reactor=asyncio; in Python: "
    "twisted.internet.asyncioreactor.install() before anything imports the reactor)")


class UrlTests(unittest.TestCase):
    """
    What the URL says is checked before the reactor: under this one, a
    good URL is the one line about the reactor.
    """

    def test_schemes(self):
        self.assertIs(sink_class("nats://h/s"), NatsSink)
        self.assertIs(sink_class("tls://h/s"), NatsSink)

    def test_under_another_reactor_one_line(self):
        e = self.assertRaises(NeedsAsyncioReactor, NatsSink, "nats://u:pw-9876@h:4222/a.{topic}")
        self.assertIsInstance(e, SinkURLError)
        self.assertEqual(str(e), WRONG_REACTOR.replace("EPollReactor", type(reactor).__name__))

    def test_bad_urls(self):
        cases = [
            ("nats://h:4222", "names no subject"),
            ("nats://h/a.b{topic}", "{topic} as a whole token only"),
            ("nats://h/a.{key}", "{topic} as a whole token only"),
            ("nats://h/a..b", "the subject cannot be used: it has an empty token"),
            ("nats://h/a.*", "the subject cannot be used: it has a wildcard token"),
            ("nats://h/a%20b", "the subject cannot be used: it holds whitespace"),
            ("nats://h/a?stream=x.y", "a stream name cannot hold"),
            ("nats://h/a?duplicate_window=0", "duplicate_window must be an integer >= 1"),
            ("tls://h/a?key_file=/k", "key_file needs cert_file"),
            ("tls://h/a?ca_file=/no/such/file", "cannot use its certificate files: "
                                                 "FileNotFoundError"),
            ("redis://h/a", "expected nats:// or tls://"),
        ]
        for url, words in cases:
            e = self.assertRaises(SinkURLError, NatsSink, url)
            self.assertIn(words, str(e), url)
            self.assertNotIsInstance(e, NeedsAsyncioReactor)

    def test_secrets_redacted(self):
        self.assertEqual(redact_url("nats://s3cret-token@h:4222/a"), "nats://***@h:4222/a")
        self.assertEqual(redact_url("tls://u:pw@h/a?stream=S", ("stream",)), "tls://u:***@h/a?stream=S")
        e = self.assertRaises(SinkURLError, NatsSink, "nats://s3cret-token@h/a..b")
        self.assertNotIn("s3cret-token", str(e))

    def test_credentials(self):
        """
        A user and a password, a user name alone (a token), a password or
        token from a file; the second value is what is scrubbed.
        """
        secret_file = self.mktemp()
        with open(secret_file, "w") as f:
            f.write("from-file\n")
        cases = [
            ("nats://u:p%40ss@h/a", None, ({"user": "u", "password": "p@ss"}, "p@ss")),
            ("nats://tok-123@h/a", None, ({"token": "tok-123"}, "tok-123")),
            ("nats://tok-123:@h/a", None, ({"token": "tok-123"}, "tok-123")),
            ("nats://u@h/a", secret_file, ({"user": "u", "password": "from-file"}, "from-file")),
            ("nats://h/a", secret_file, ({"token": "from-file"}, "from-file")),
            ("nats://h/a", None, ({}, None)),
        ]
        for url, secret, expected in cases:
            self.assertEqual(credentials(SinkURL(url), secret), expected, url)

    def test_stream_subject(self):
        self.assertEqual(stream_subject("a.{topic}"), "a.>")
        self.assertEqual(stream_subject("a.{topic}.b"), "a.*.b")
        self.assertEqual(stream_subject("{topic}"), ">")
        self.assertEqual(stream_subject("a.b"), "a.b")


def _case_ids():
    """@return: the ids of the tests of L{tests.sink_nats_asyncio}."""
    found = []

    def walk(suite):
        for test in suite:
            if isinstance(test, pyunit.TestSuite):
                walk(test)
            else:
                found.append(test.id())

    walk(TestLoader().loadModule(sink_nats_asyncio))
    return sorted(found)


_RESULT = re.compile(r"^(tests\.sink_nats_asyncio\.\S+) \.\.\. \[(\w+)\]$", re.M)
_SEPARATOR = re.compile(r"^={20,}$", re.M)


class _AsyncioRun:
    """
    One run of C{trial --reactor=asyncio tests.sink_nats_asyncio} in a
    child process, shared by every test of L{AsyncioReactorTests}.
    """

    def __init__(self, temp):
        self.temp = temp
        self.outcome = None
        self.waiters = None

    def results(self):
        """
        @return: a Deferred firing with C{(verdicts, details, output)}:
            each test's verdict (C{"OK"}, C{"FAIL"} ...) and failure text
            by id, and the whole output.
        """
        if self.outcome is not None:
            return defer.succeed(self.outcome)
        waiter = defer.Deferred()
        if self.waiters is None:
            self.waiters = []
            env = {k: v for k, v in os.environ.items() if k != "HERMES_DSN"}
            env["PYTHONPATH"] = ROOT
            d = utils.getProcessOutputAndValue(
                TRIAL, ["--reactor=asyncio", "--reporter=bwverbose",
                        f"--temp-directory={self.temp}", "tests.sink_nats_asyncio"],
                env=env, path=ROOT)
            d.addCallback(self._parse)
            d.addErrback(lambda f: ({}, {}, f.getTraceback()))
            d.addCallback(self._done)
        self.waiters.append(waiter)
        return waiter

    def _done(self, outcome):
        self.outcome = outcome
        for waiter in self.waiters:
            waiter.callback(outcome)

    @staticmethod
    def _parse(out_err_code):
        out, err, _ = out_err_code
        output = (out + err).decode("utf-8", "replace")
        verdicts = dict(_RESULT.findall(output))
        details = {}
        for block in _SEPARATOR.split(output)[1:]:
            block = re.split(r"^-{20,}$", block, flags=re.M)[0]  # not the summary after it
            for case in re.findall(r"^(tests\.sink_nats_asyncio\.\S+)$", block, re.M):
                details[case] = block.strip()
        return verdicts, details, output


class AsyncioReactorTests(unittest.TestCase):
    """
    Each test of L{tests.sink_nats_asyncio}, run under the asyncio reactor
    in a child process (once for all of them).
    """

    shared = None

    def check(self, case):
        cls = type(self)
        if cls.shared is None:
            cls.shared = _AsyncioRun(os.path.abspath(self.mktemp()))
        d = cls.shared.results()

        def judged(results):
            verdicts, details, output = results
            if case not in verdicts:
                self.fail(f"{case} did not run under the asyncio reactor; its trial said:\n"
                          + output[-3000:].replace("PASSED (", "passed (").replace(
                              "FAILED (", "failed ("))
            if verdicts[case] != "OK":
                self.fail(f"{case}: {verdicts[case]}\n{details.get(case, '')}")

        return d.addCallback(judged)


def _add_cases():
    for case in _case_ids():
        name = "test_" + case.split(".", 2)[2].replace(".", "_")
        method = (lambda case: lambda self: self.check(case))(case)
        method.__name__ = name
        method.__doc__ = f"L{{{case}}} under the asyncio reactor."
        setattr(AsyncioReactorTests, name, method)


_add_cases()


#: options every instance gets: claims come back 2 s after their consumer
#: died, and polling stays a fallback
FAST = ["--visibility-timeout", "2", "--poll-interval", "0.5", "--role-check-interval", "0.2",
        "--backoff-limit", "1"]
#: C{twistd} on the asyncio reactor
ASYNCIO_TWISTD = [TWISTD, "--reactor", "asyncio", "-n", "--pidfile=", "hermes"]


class TwistdTests(OutboxDatabase, unittest.TestCase):
    keys = [f"key-{i}" for i in range(40)]

    @defer.inlineCallbacks
    def test_without_the_asyncio_reactor_one_line(self):
        """
        C{twistd hermes --sink nats://...} on the default reactor: a usage
        error, one line saying what to run.
        """
        proto, _ = run_twistd(["--dsn", self.dsn, "--outbox", "t", "--sink",
                               "nats://u:pw-4321@127.0.0.1:4222/t.{topic}"])
        ended = yield proto.ended
        self.assertEqual(ended.exitCode, 2)
        err = proto.err.decode()
        self.assertEqual(err.strip().splitlines(), ["twistd hermes: error: --sink: " + WRONG_REACTOR])
        self.assertNotIn("pw-4321", err)

    @defer.inlineCallbacks
    def test_sigkills_and_a_server_restart_lose_nothing_duplicate_nothing(self):
        """
        Two instances drain a backlog into a stream the sink makes while a
        writer commits more; every 1.5 s one instance is SIGKILLed in the
        middle of its batches and another started, and the NATS server is
        restarted (SIGTERM) and later SIGKILLed and started again.  Every
        committed change is in the stream exactly once (the redeliveries
        of the killed instances' claims were within the duplicate window),
        per key in commit order.
        """
        server = start_nats(self)
        stream = f"E2E{uuid.uuid4().hex[:8]}"
        prepare_writer_tables(self.dsn, self.keys)
        prefill(self.dsn, self.keys, 25)
        workdir = self.mktemp()
        os.makedirs(workdir)
        fleet = Fleet(self.dsn, ["t"], workdir, extra=FAST, command=ASYNCIO_TWISTD,
                      sink=f"nats://127.0.0.1:{server.port}/e2e.{{topic}}?stream={stream}")
        self.addCleanup(fleet.kill_all)
        for _ in range(2):
            fleet.start()
        yield wait_until(fleet.consuming, timeout=30, what="2 instances consuming")
        writer = Writer(self.dsn, self.keys, rate=200, threads=2)
        self.addCleanup(writer.stop)
        writer.start()
        rng = random.Random(17)
        for round in range(6):
            yield sleep(1.5)
            if round == 2:
                yield threads.deferToThread(server.restart)
            elif round == 4:
                server.kill()
                yield threads.deferToThread(server.start)
            else:
                fleet.kill_one(rng)
                fleet.start()
        yield threads.deferToThread(writer.stop)
        yield wait_until(lambda: self.outbox_rows() == 0, timeout=60, interval=0.2,
                         what="an empty outbox")
        yield wait_until(fleet.consuming, timeout=30, what="every instance consuming")
        fleet.stop()
        yield wait_until(fleet.stopped, timeout=30, what="every instance stopped")
        self.assertEqual(fleet.unclean(), [])
        messages = yield threads.deferToThread(read_stream_blocking, server.url, stream)
        counts, tokens = committed_on(self.dsn)
        data = [m.record["data"] for m in messages]
        verdict = judge([(m.record["key"], d["n"], d["w"]) for m, d in zip(messages, data)],
                        counts, tokens)
        self.assertEqual((verdict.missing, verdict.disorder, verdict.phantoms), ([], [], []),
                         verdict.summary())
        self.assertEqual(verdict.duplicates, 0, verdict.summary())
        self.assertEqual(len({m.msg_id for m in messages}), len(messages))
        self.assertGreater(verdict.expected, 1000)
        self.assertEqual(sum(i.killed for i in fleet.instances), 4)
        self.assertEqual(self.query("SELECT count(*) FROM hermes.dead_letters"), [(0,)])

    def outbox_rows(self):
        return self.query("SELECT count(*) FROM hermes.outbox")[0][0]
