"""
Where the real C{twistd -n hermes} writes, as C{docs/operations.rst} says:
standard output carries data only (the JSON lines of the default
processor; nothing with a sink or C{--output FILE}); the log goes to
standard error in every foreground mode, and what a processor of one's own
prints goes into the log.  (Daemon mode, whose log is a file, is
C{tests.test_hostile.HostileOperationsTests.test_daemon_sighup_and_dsn_file}.)
"""

import os

from twisted.internet import defer, error, reactor
from twisted.trial import unittest

from tests.support.shared import shared_primary, wait_until
from tests.support.twistd import ROOT, TWISTD, Twistd

PRINTER = '''
from hermes_tx.components import Component


class Printer(Component):
    def execute(self, event):
        print("printed", event.kind, event.payload)
'''


def foreground(args, path):
    """
    Start C{twistd -n --pidfile= hermes ARGS} with C{path} and the checkout
    as its C{PYTHONPATH}.

    @return: the L{Twistd} protocol and the process transport.
    """
    env = {k: v for k, v in os.environ.items() if k != "HERMES_DSN" and not k.startswith("PG")}
    env["PYTHONPATH"] = os.pathsep.join([ROOT, path])
    proto = Twistd()
    transport = reactor.spawnProcess(proto, TWISTD, [TWISTD, "-n", "--pidfile=", "hermes"] + args,
                                     env=env, path=path)
    return proto, transport


class ForegroundStreamsTests(unittest.TestCase):
    @defer.inlineCallbacks
    def test_stdout_is_data_and_the_log_is_on_stderr(self):
        """
        Four foreground runs at once, each sent one notification, then
        SIGTERM: only the default processor writes to stdout (its JSON
        lines); each run logs to stderr; a processor's print is a log line.
        """
        cluster = shared_primary()
        folder = os.path.abspath(self.mktemp())
        os.makedirs(folder)
        with open(os.path.join(folder, "printer.py"), "w") as f:
            f.write(PRINTER)
        out = os.path.join(folder, "events.jsonl")
        channel = "streams"
        modes = {
            "default": [],
            "sink": ["--sink", "http://127.0.0.1:9/hook"],
            "output": ["--output", out],
            "own": ["--processor", "printer:Printer"],
        }
        runs = {}
        try:
            for name, extra in modes.items():
                args = ["--dsn", cluster.dsn(application_name=f"hermes-streams-{name}"),
                        "--channel", channel] + extra
                runs[name] = foreground(args, folder)
            for name, (proto, _) in runs.items():
                yield wait_until(lambda: b"listening on" in proto.err, timeout=30,
                                 what=f"{name} listening")
            cluster.notify(channel, "hello")
            yield wait_until(lambda: b"hello" in runs["default"][0].out, timeout=20, what="the line")
            yield wait_until(lambda: b"printed notification hello" in runs["own"][0].err,
                             timeout=20, what="the print")
            yield wait_until(lambda: os.path.exists(out) and b"hello" in open(out, "rb").read(),
                             timeout=20, what="the output file")
        finally:
            for proto, transport in runs.values():
                if not proto.ended.called:
                    transport.signalProcess("TERM")
        for name, (proto, _) in runs.items():
            ended = yield proto.ended
            self.assertIsInstance(ended, error.ProcessDone, (name, proto.err.decode()))
            err = proto.err.decode()
            self.assertIn("Received SIGTERM, stopping cleanly.", err, name)
            self.assertNotIn("Traceback", err, name)
            if name == "default":
                self.assertEqual([r["kind"] for r in proto.records()], ["start", "notification"])
            else:
                self.assertEqual(proto.out, b"", name)
        self.assertIn("[stdout#info] printed notification hello", runs["own"][0].err.decode())
