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
        client = makeService(o)
        self.assertIsInstance(client, Client)
        self.assertEqual(client.listener.channels, ["x", "Y"])
        self.assertIs(client.listener.notif_queue, client.processor.notification_pipe)
