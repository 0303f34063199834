"""
Tests for L{hermes_tx.tap}: the options of C{twistd hermes}.  The real
process is run in tests.test_twistd.
"""

import os

from twisted.python import usage
from twisted.trial import unittest

from hermes_tx.client import Client
from hermes_tx.processors import JsonLinesProcessor
from hermes_tx.tap import Options, make_processor, makeService


class OptionsTests(unittest.TestCase):
    def setUp(self):
        saved = os.environ.pop("HERMES_DSN", None)
        if saved is not None:
            self.addCleanup(os.environ.__setitem__, "HERMES_DSN", saved)

    def parse(self, *args):
        options = Options()
        options.parseOptions(list(args))
        return options

    def assertUsageError(self, args, fragment):
        e = self.assertRaises(usage.UsageError, self.parse, *args)
        self.assertIn(fragment, str(e))
        self.assertNotIn("\n", str(e))
        return e

    def test_defaults(self):
        o = self.parse("--dsn", "dbname=app", "--channel", "A", "-c", 'b "q"')
        self.assertEqual(o["channels"], ["A", 'b "q"'])
        self.assertIs(o["processor_class"], JsonLinesProcessor)
        self.assertEqual((o["output"], o["backoff-limit"]), ("-", 16))

    def test_dsn_from_environment(self):
        os.environ["HERMES_DSN"] = "dbname=fromenv"
        self.addCleanup(os.environ.pop, "HERMES_DSN")
        self.assertEqual(self.parse("-c", "x")["dsn"], "dbname=fromenv")
        self.assertEqual(self.parse("-c", "x", "--dsn", "dbname=flag")["dsn"], "dbname=flag")

    def test_usage_errors(self):
        self.assertUsageError(["-c", "x"], "no DSN")
        self.assertUsageError(["--dsn", "dbname=x"], "no channel")
        self.assertUsageError(["--dsn", "dbname=x oops", "-c", "x"], "invalid DSN")
        self.assertUsageError(["--dsn", "dbname=x", "-c", "a" * 64], "64 bytes")
        self.assertUsageError(["--dsn", "dbname=x", "-c", ""], "non-empty")
        self.assertUsageError(["--dsn", "dbname=x", "-c", "x", "--processor", "nosuch.mod:X"],
                              "cannot import")
        self.assertUsageError(["--dsn", "dbname=x", "-c", "x", "--processor", "os:path"],
                              "not a hermes_tx.components.Component")
        self.assertUsageError(["--dsn", "dbname=x", "-c", "x", "--backoff-limit", "0"],
                              "at least 1")
        self.assertUsageError(["--dsn", "dbname=x", "-c", "x", "--watch-path", "/no/such/dir"],
                              "not a directory")
        self.assertUsageError(["--dsn", "dbname=x", "-c", "x", "--watch-path", __file__],
                              "not a directory")
        self.assertUsageError(["--dsn", "dbname=x", "-c", "x", "--failover-file", "promote"],
                              "needs --watch-path")
        self.assertUsageError(["--dsn", "dbname=x", "-c", "x", "--role-check-interval", "0"],
                              "more than 0")
        self.assertUsageError(["--dsn", "dbname=x", "-c", "x", "--max-backoff", "0.05"],
                              "at least 0.1")
        self.assertUsageError(["--dsn", "dbname=x", "-c", "x", "--liveness-timeout", "0"],
                              "more than 0")
        self.assertUsageError(["--dsn", "dbname=x", "-c", "x", "--shutdown-timeout", "-1"],
                              "more than 0")
        self.assertUsageError(["--dsn", "dbname=x", "-c", "x", "--payload-format", "xml"],
                              "text or json")
        self.assertUsageError(["--dsn", "dbname=x", "-c", "x", "--queue-size", "0"],
                              "at least 1")
        self.assertUsageError(["--dsn", "dbname=x", "-c", "x", "--status-port", "70000"],
                              "TCP port")
        self.assertUsageError(["--dsn", "dbname=x", "-c", "x", "--status-port", "http"],
                              "--status-port must be a whole number, not 'http'")
        self.assertUsageError(["--dsn", "dbname=x", "-c", "x", "--liveness-timeout", "soon"],
                              "--liveness-timeout must be a number")

    def test_resilience_options(self):
        o = self.parse("--dsn", "dbname=x", "-c", "x", "--liveness-timeout", "3",
                       "--shutdown-timeout", "2.5", "--payload-format", "json",
                       "--status-port", "0", "--status-interface", "127.0.0.2",
                       "--queue-size", "64")
        top = makeService(o)
        client = top.getServiceNamed("client")
        status = top.getServiceNamed("status")
        self.assertIs(status.client, client)
        self.assertEqual((status.port_number, status.interface), (0, "127.0.0.2"))
        self.assertEqual(client.listener.liveness_timeout, 3.0)
        self.assertEqual(client.listener.payload_format, "json")
        self.assertEqual(client.processor.shutdown_timeout, 2.5)
        self.assertEqual(client.notification_queue.maxsize, 64)

    def test_password_not_in_errors(self):
        e = self.assertUsageError(["--dsn", "password=hunter2 x", "-c", "c"], "invalid DSN")
        self.assertNotIn("hunter2", str(e))

    def test_seed_style_processor(self):
        """
        A processor with a zero-argument constructor is made without
        arguments and still gets the backoff limit.
        """
        o = self.parse("--dsn", "dbname=x", "-c", "x", "--processor", "examples.printer:Printer",
                       "--backoff-limit", "4")
        p = make_processor(o["processor_class"], o)
        self.assertEqual(type(p).__name__, "Printer")
        self.assertEqual(p.backoff_limit, 4)

    def test_output_goes_to_processors_that_take_it(self):
        o = self.parse("--dsn", "dbname=x", "-c", "x", "--output", "out.jsonl")
        p = make_processor(o["processor_class"], o)
        self.assertEqual(p.output, "out.jsonl")

    def test_make_service(self):
        o = self.parse("--dsn", "dbname=x", "-c", "x", "-c", "Y")
        top = makeService(o)
        client = top.getServiceNamed("client")
        self.assertIsInstance(client, Client)
        self.assertEqual([s.name for s in top], ["client"])
        self.assertEqual(client.listener.channels, ["x", "Y"])
        self.assertIs(client.listener.notif_queue, client.processor.notification_pipe)
        self.assertEqual((client.role_check_interval, client.max_backoff), (1.0, 2.0))
        self.assertIsNone(client.watch_path)
        self.assertIn("standby.signal", client.failover_files)

    def test_failover_options(self):
        here = os.path.dirname(os.path.abspath(__file__))
        o = self.parse("--dsn", "dbname=x", "-c", "x", "--watch-path", here,
                       "--failover-file", "promote", "--failover-file", "standby.signal",
                       "--role-check-interval", "0.25", "--max-backoff", "8")
        client = makeService(o).getServiceNamed("client")
        self.assertEqual(client.watch_path, here)
        self.assertEqual(client.failover_files, ("promote", "standby.signal"))
        self.assertEqual((client.role_check_interval, client.max_backoff), (0.25, 8.0))
