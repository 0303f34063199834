"""
The recipes of the pages run as the reader runs them: the files a page
shows, saved into an empty directory, under the real C{twistd} against a
throwaway server.  With them, what the pages say of C{twistd -y}
(C{docs/composing.rst}, "Two things twistd -y does not do"): it puts
nothing on C{sys.path}, and a C{.tac} without a
L{hermes_tx.twistd.process.ProcessService} ends by the signal that
stopped it, while one with it exits 0.
"""

import os
import signal

from twisted.internet import defer, error, reactor
from twisted.trial import unittest
from twisted.web.client import Agent, HTTPConnectionPool, readBody

from tests.support.docpages import write_page_files
from tests.support.outbox import OutboxDatabase
from tests.support.shared import wait_until
from tests.support.twistd import ROOT, TWISTD, Twistd, free_port


def run(args, folder, env_extra=None):
    """
    Start C{twistd ARGS} in C{folder} with the environment of a reader's
    shell: the checkout importable (as if installed), nothing else on
    C{PYTHONPATH} unless C{env_extra} says so.

    @return: the L{Twistd} protocol and the process transport.
    """
    env = {k: v for k, v in os.environ.items()
           if k not in ("HERMES_DSN", "PYTHONPATH") and not k.startswith("PG")}
    env.update(env_extra or {})
    proto = Twistd()
    transport = reactor.spawnProcess(proto, TWISTD, [TWISTD] + args, env=env, path=folder)
    return proto, transport


def with_checkout(*paths):
    """
    @return: a C{PYTHONPATH} of C{paths} and the checkout (which a reader
        has installed).
    """
    return os.pathsep.join(list(paths) + [ROOT])


class RecipeTests(OutboxDatabase, unittest.TestCase):
    """
    Each test saves a page's files into a directory of its own and runs
    them there, in a database of this class with the outbox installed.
    """

    def folder(self, *pages):
        return write_page_files(self.mktemp(), *pages)

    @defer.inlineCallbacks
    def stop(self, proto, transport):
        """
        SIGTERM, then the process's end.
        """
        if not proto.ended.called:
            transport.signalProcess("TERM")
        ended = yield proto.ended
        return ended

    @defer.inlineCallbacks
    def get(self, url):
        agent = Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False))
        response = yield agent.request(b"GET", url.encode()).addTimeout(10, reactor)
        body = yield readBody(response)
        return response.code, body

    @defer.inlineCallbacks
    def test_printer(self):
        """
        processors.rst's first processor: C{PYTHONPATH=. twistd -n hermes
        ... --processor printer:Printer} from the directory holding
        printer.py logs each event; without C{PYTHONPATH=.} it is one line
        and exit status 2.
        """
        folder = self.folder("processors.rst")
        args = ["-n", "--pidfile=", "hermes", "--dsn", self.dsn, "--channel", "jobs",
                "--processor", "printer:Printer"]
        proto, transport = run(args, folder)
        ended = yield proto.ended
        self.assertEqual(ended.exitCode, 2)
        self.assertEqual(proto.err.decode(), "twistd hermes: error: cannot import processor "
                                             "'printer:Printer': ModuleNotFoundError: No module named "
                                             "'printer'\n")
        proto, transport = run(args, folder, {"PYTHONPATH": with_checkout(".")})
        try:
            yield wait_until(lambda: b"start: catching up" in proto.err, timeout=30, what="start")
            self.query("NOTIFY jobs, 'hello'")
            yield wait_until(lambda: b"#1 jobs: hello" in proto.err, timeout=20, what="the line")
        finally:
            ended = yield self.stop(proto, transport)
        self.assertIsInstance(ended, error.ProcessDone, proto.err.decode())
        self.assertIn("[printer.Printer#info] #1 jobs: hello", proto.err.decode())
        self.assertEqual(proto.out, b"")

    @defer.inlineCallbacks
    def test_app_tac(self):
        """
        composing.rst's app.tac with processors.rst's tables.py beside it:
        without C{PYTHONPATH=.}, twistd cannot load it (exit 1); with it,
        the start event, a notification and an emitted change each become
        a row of hermes_audit, the site answers / and /status/ready, and SIGTERM
        ends it with status 0 (its ProcessService).
        """
        folder = self.folder("processors.rst", "composing.rst")
        port = free_port()
        env = {"HERMES_DSN": self.dsn, "WEB_PORT": str(port)}
        proto, _ = run(["-ny", "app.tac", "--pidfile="], folder, env)
        ended = yield proto.ended
        self.assertEqual(ended.exitCode, 1)
        self.assertIn("Failed to load application: No module named 'tables'",
                      (proto.out + proto.err).decode())
        self.addCleanup(self.query, "DROP TABLE IF EXISTS hermes_audit")
        env["PYTHONPATH"] = with_checkout(".")
        proto, transport = run(["-ny", "app.tac", "--pidfile="], folder, env)
        try:
            yield wait_until(lambda: b"listening on 'jobs'" in proto.out + proto.err, timeout=30,
                             what="listening")
            self.query("NOTIFY jobs, 'hello'")
            self.emit("items", "1", '{"id": 1}')
            rows = "SELECT kind, source, payload FROM hermes_audit ORDER BY id"
            yield wait_until(lambda: len(self.query(rows)) == 3, timeout=20, what="the rows")
            self.assertEqual(sorted(self.query(rows)), [("change", "items", '{"id": 1}'),
                                                         ("notification", "jobs", "hello"),
                                                         ("start", None, None)])
            self.assertEqual((yield self.get(f"http://127.0.0.1:{port}/")), (200, b"the shop\n"))
            code, body = yield self.get(f"http://127.0.0.1:{port}/status/ready")
            self.assertEqual(code, 200, body)
        finally:
            ended = yield self.stop(proto, transport)
        self.assertIsInstance(ended, error.ProcessDone, (proto.out + proto.err).decode())

    @defer.inlineCallbacks
    def test_plain_tac_ends_by_its_signal(self):
        """
        examples/hermes.tac has no ProcessService: twistd stops it cleanly
        on SIGTERM, then ends by that signal (a shell's 143), where
        twistd hermes exits 0.
        """
        folder = os.path.abspath(self.mktemp())
        os.makedirs(folder)
        env = {"HERMES_DSN": self.dsn, "HERMES_OUTPUT": os.path.join(folder, "events.jsonl"),
               "PYTHONPATH": with_checkout()}
        proto, transport = run(["-ny", os.path.join(ROOT, "examples", "hermes.tac"), "--pidfile="],
                               folder, env)
        try:
            yield wait_until(lambda: b"listening on" in proto.out + proto.err, timeout=30,
                             what="listening")
        finally:
            ended = yield self.stop(proto, transport)
        self.assertIsInstance(ended, error.ProcessTerminated)
        self.assertEqual(ended.signal, signal.SIGTERM, (proto.out + proto.err).decode())
        self.assertIn(b"Server Shut Down.", proto.out + proto.err)

    @defer.inlineCallbacks
    def test_ported_processor(self):
        """
        porting.rst's wordindexer.py under the page's command: every
        notification on C{items} indexes the rows not yet indexed.
        """
        self.query("CREATE TABLE items (id int PRIMARY KEY, name text, "
                   "indexed boolean NOT NULL DEFAULT false)")
        self.query("CREATE TABLE item_words (id int PRIMARY KEY, words tsvector)")
        self.addCleanup(self.query, "DROP TABLE IF EXISTS items, item_words")
        folder = self.folder("porting.rst")
        args = ["-n", "--pidfile=", "hermes", "--channel", "items", "--processor",
                "wordindexer:WordIndexer"]
        proto, transport = run(args, folder, {"HERMES_DSN": self.dsn, "PYTHONPATH": with_checkout(".")})
        words = "SELECT id, words::text FROM item_words ORDER BY id"
        try:
            yield wait_until(lambda: b"listening on 'items'" in proto.err, timeout=30, what="listening")
            self.query("INSERT INTO items (id, name) VALUES (1, 'Red pen'), (2, 'Ink')")
            for _ in range(3):
                self.query("NOTIFY items")
            yield wait_until(lambda: len(self.query(words)) == 2, timeout=20, what="indexed")
            self.query("INSERT INTO items (id, name) VALUES (3, 'Blue pen')")
            self.query("NOTIFY items")
            yield wait_until(lambda: len(self.query(words)) == 3, timeout=20, what="indexed again")
        finally:
            ended = yield self.stop(proto, transport)
        self.assertIsInstance(ended, error.ProcessDone, proto.err.decode())
        self.assertEqual(self.query(words), [(1, "'pen':2 'red':1"), (2, "'ink':1"),
                                             (3, "'blue':1 'pen':2")])
        self.assertEqual(self.query("SELECT count(*) FROM items WHERE NOT indexed"), [(0,)])
        self.assertNotIn("Traceback", proto.err.decode())
