"""
Tests for L{hermes_tx.twistd.options}: the options of C{twistd hermes}.  The real
process is run in tests.test_twistd.
"""

import io
import os
import signal
import socket
import sys

from twisted.python import usage
from twisted.trial import unittest

from hermes_tx.client import Client
from hermes_tx.twistd import process as operations
from hermes_tx.twistd.process import ProcessService
from hermes_tx.processors import JsonLinesProcessor
from hermes_tx.twistd import Options, makeService
from hermes_tx.twistd.process import EXIT_START_FAILED
from hermes_tx.twistd.processor import load_processor_class, make_processor, processor_kwargs


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
        self.assertUsageError(["--dsn", "dbname=x"], "nothing to consume")
        self.assertUsageError(["--dsn", "dbname=x oops", "-c", "x"], "invalid DSN")
        self.assertUsageError(["--dsn", "dbname=x", "-c", "a" * 64], "64 bytes")
        self.assertUsageError(["--dsn", "dbname=x", "-c", ""], "non-empty")
        self.assertUsageError(["--dsn", "dbname=x", "-c", "x", "--processor", "nosuch.mod:X"],
                              "cannot import")
        self.assertUsageError(["--dsn", "dbname=x", "-c", "x", "--processor", "os:path"],
                              "not a hermes_tx.components.Component")
        self.assertUsageError(["--dsn", "dbname=x", "-c", "x", "--watch-path", "/no/such/dir"],
                              "not a directory")
        self.assertUsageError(["--dsn", "dbname=x", "-c", "x", "--watch-path", __file__],
                              "not a directory")
        self.assertUsageError(["--dsn", "dbname=x", "-c", "x", "--failover-file", "promote"],
                              "needs --watch-path")
        self.assertUsageError(["--dsn", "dbname=x", "-c", "x", "--payload-format", "xml"],
                              "text or json")
        self.assertUsageError(["--dsn", "dbname=x", "-c", "x", "--status-port", "http"],
                              "--status-port must be a whole number, not 'http'")
        self.assertUsageError(["--dsn", "dbname=x", "-c", "x", "--liveness-timeout", "soon"],
                              "--liveness-timeout must be a finite number")
        self.assertUsageError(["--dsn", "dbname=x", "-c", "x", "--status-interface", "not-an-ip"],
                              "--status-interface must be an IP address, not 'not-an-ip'")

    def test_bounds(self):
        """
        Numbers must be finite and within sane bounds; the error says the
        bounds.
        """
        for option, value, message in [
            ("--liveness-timeout", "inf", "--liveness-timeout must be a finite number, not 'inf'"),
            ("--liveness-timeout", "nan", "must be a finite number, not 'nan'"),
            ("--role-check-interval", "-inf", "must be a finite number"),
            ("--liveness-timeout", "0.0001",
             "--liveness-timeout must be between 0.5 and 86400 seconds, not 0.0001"),
            ("--role-check-interval", "0.0001",
             "--role-check-interval must be between 0.05 and 86400 seconds, not 0.0001"),
            ("--role-check-interval", "0", "between 0.05 and 86400 seconds"),
            ("--shutdown-timeout", "-1", "--shutdown-timeout must be between 0.1 and 86400"),
            ("--max-backoff", "0.05", "--max-backoff must be between 0.1 and 86400 seconds"),
            ("--max-backoff", "1e9", "not 1000000000"),
            ("--backoff-limit", "0", "--backoff-limit must be between 1 and 86400 seconds, not 0"),
            ("--queue-size", "0", "--queue-size must be between 1 and 1000000 events, not 0"),
            ("--queue-size", "10000001", "between 1 and 1000000 events"),
            ("--status-port", "70000", "--status-port must be between 0 and 65535, not 70000"),
        ]:
            self.assertUsageError(["--dsn", "dbname=x", "-c", "x", option, value], message)
        o = self.parse("--dsn", "dbname=x", "-c", "x", "--role-check-interval", "0.05",
                       "--liveness-timeout", "0.5", "--queue-size", "1000000")
        self.assertEqual((o["role-check-interval"], o["liveness-timeout"]), (0.05, 0.5))

    def test_empty_dsn_means_libpq_defaults(self):
        """
        No --dsn, no --dsn-file, no HERMES_DSN: the empty DSN, which libpq
        fills from PGHOST, PGPORT, PGUSER... as psql does.
        """
        self.assertEqual(self.parse("-c", "x")["dsn"], "")

    def test_dsn_file(self):
        path = self.mktemp()
        with open(path, "w", encoding="utf-8") as f:
            f.write("host=db password='s3cret wörd'\n")
        self.assertEqual(self.parse("--dsn-file", path, "-c", "x")["dsn"],
                         "host=db password='s3cret wörd'")
        os.environ["HERMES_DSN"] = "dbname=fromenv"
        self.addCleanup(os.environ.pop, "HERMES_DSN")
        self.assertEqual(self.parse("--dsn-file", path, "-c", "x")["dsn"],
                         "host=db password='s3cret wörd'")
        self.assertUsageError(["--dsn-file", path + ".missing", "-c", "x"],
                              "cannot read DSN file")
        self.assertUsageError(["--dsn-file", path, "--dsn", "dbname=x", "-c", "x"],
                              "--dsn or --dsn-file, not both")

    def test_dsn_options_checked(self):
        """
        Options libpq calls wrong are usage errors, scrubbed of secrets.
        """
        for dsn, fragment in (("port=notaport", 'invalid integer value "notaport"'),
                              ("sslmode=bogus", 'invalid sslmode value: "bogus"'),
                              ("port=99999999", "invalid port number"),
                              ("target_session_attrs=bogus", "invalid target_session_attrs")):
            self.assertUsageError(["--dsn", dsn, "-c", "x"], fragment)
        e = self.assertUsageError(
            ["--dsn", "postgresql://u:Wr@ngPass@h:notaport/db", "-c", "x"], "notaport"
        )
        self.assertNotIn("ngPass", str(e))

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
        self.assertEqual(str(e), 'invalid DSN syntax: missing "=" after "***" in connection '
                                 "info string")

    def test_seed_style_processor(self):
        """
        A processor with a zero-argument constructor is made without
        arguments and still gets the backoff limit.
        """
        o = self.parse("--dsn", "dbname=x", "-c", "x", "--processor", "tests.support.shared:Collector",
                       "--backoff-limit", "4")
        p = make_processor(o["processor_class"], o)
        self.assertEqual(type(p).__name__, "Collector")
        self.assertEqual(p.backoff_limit, 4)

    def test_constructor_arguments(self):
        """
        Which arguments a processor class gets: what it names, what a class
        between it and Component names when it takes **kwargs, what
        Component itself takes.
        """
        o = self.parse("--dsn", "dbname=x", "-c", "x", "--output", "out.jsonl",
                       "--backoff-limit", "5")
        cases = {
            "tests.support.processors:PassThrough": {"output": "out.jsonl", "backoff_limit": 5},
            "tests.support.processors:BareKwargs": {"backoff_limit": 5},
            "tests.support.processors:Explicit": {"output": "out.jsonl"},
            "tests.support.shared:Collector": {},
            "hermes_tx.processors:JsonLinesProcessor": {"output": "out.jsonl", "backoff_limit": 5},
        }
        for spec, expected in cases.items():
            cls = load_processor_class(spec)
            self.assertEqual(processor_kwargs(cls, o), expected, spec)
            p = make_processor(cls, o)
            self.assertEqual((p.backoff_limit, p.shutdown_timeout), (5, 10.0))
        p = make_processor(load_processor_class("tests.support.processors:PassThrough"), o)
        self.assertEqual(p.output, "out.jsonl")
        p = make_processor(load_processor_class("tests.support.processors:BareKwargs"), o)
        self.assertEqual(p.given, {"backoff_limit": 5})

    def test_output_goes_to_processors_that_take_it(self):
        o = self.parse("--dsn", "dbname=x", "-c", "x", "--output", "out.jsonl")
        p = make_processor(o["processor_class"], o)
        self.assertEqual(p.output, "out.jsonl")

    def test_sink_as_the_processor(self):
        """
        --sink picks a built-in sink by scheme (the processor of the
        service), with the timeouts of the options; it excludes
        --processor; a bad URL is a usage error that shows no secret.
        """
        from hermes_tx.sinks.webhook import WebhookSink

        secret = os.path.abspath(self.mktemp())
        with open(secret, "w") as f:
            f.write("hmac-key\n")
        o = self.parse("--dsn", "dbname=x", "-c", "x", "--sink", "http://u:pw-in-url@127.0.0.1:9/hook",
                       "--sink-secret-file", secret, "--execute-timeout", "5")
        processor = makeService(o).getServiceNamed("client").processor
        self.addCleanup(processor.stopService)
        self.assertIsInstance(processor, WebhookSink)
        self.assertEqual(processor.execute_timeout, 5)
        self.assertNotIn("pw-in-url", repr(processor))
        self.assertUsageError(["--dsn", "dbname=x", "-c", "x", "--sink", "http://h/",
                               "--processor", "tests.support.shared:Collector"], "not both")
        e = self.assertUsageError(["--dsn", "dbname=x", "-c", "x", "--sink", "ftp://u:pw-in-url@h/"],
                                  "unknown scheme 'ftp'")
        self.assertNotIn("pw-in-url", str(e))
        self.assertUsageError(["--dsn", "dbname=x", "-c", "x", "--sink-secret-file", secret],
                              "--sink-secret-file needs --sink")

    def test_outbox_options(self):
        """
        --outbox (repeatable, with or without --channel) adds an outbox
        consumer with the options' schema, poll interval, visibility and
        attempts; without --channel there is no listener.
        """
        o = self.parse("--dsn", "dbname=x", "--outbox", "orders", "--outbox", "orders",
                       "--outbox", "Items ü", "--outbox-schema", "ob", "--poll-interval", "0.5",
                       "--visibility-timeout", "12", "--max-attempts", "4")
        client = makeService(o).getServiceNamed("client")
        self.assertIsNone(client.listener)
        consumer = client.outbox
        self.assertEqual(consumer.topics, ["orders", "Items ü"])
        self.assertEqual((consumer.schema, consumer.poll_interval, consumer.visibility_timeout,
                          consumer.ledger.max_attempts), ("ob", 0.5, 12.0, 4))
        self.assertEqual(consumer.channel, "ob.outbox")
        both = makeService(self.parse("--dsn", "dbname=x", "-c", "c", "--outbox", "t"))
        client = both.getServiceNamed("client")
        self.assertIsNotNone(client.listener)
        self.assertIsNotNone(client.outbox)
        self.assertUsageError(["--dsn", "dbname=x"], "pass --channel NAME or --outbox TOPIC")
        self.assertUsageError(["--dsn", "dbname=x", "--outbox", "t" * 256], "256 bytes")
        self.assertUsageError(["--dsn", "dbname=x", "--outbox", "t", "--visibility-timeout", "0.5"],
                              "between 1 and 86400")

    def test_retry_delays(self):
        """
        --retry-delay and --max-retry-delay set the outbox consumer's
        per-change retry schedule (0.05 s, three times longer each retry,
        at most 300 s by default); a first delay longer than the longest,
        or out of bounds, is one line naming the options.
        """
        def delays(*args):
            o = self.parse("--dsn", "dbname=x", "--outbox", "t", *args)
            policy = makeService(o).getServiceNamed("client").outbox.ledger.retry_delay
            return [policy(attempt) for attempt in (0, 1, 20)]

        def near(got, want):
            # the jitter takes up to a tenth off
            for g, w in zip(got, want):
                self.assertTrue(0.9 * w <= g <= w, (got, want))

        near(delays(), [0.05, 0.15, 300])
        near(delays("--retry-delay", "0.5", "--max-retry-delay", "10"), [0.5, 1.5, 10])
        near(delays("--retry-delay", "2", "--max-retry-delay", "2"), [2, 2, 2])
        base = ["--dsn", "dbname=x", "--outbox", "t"]
        self.assertUsageError(base + ["--retry-delay", "20", "--max-retry-delay", "10"],
                              "--retry-delay (20 s) must not be longer than --max-retry-delay (10 s)")
        self.assertUsageError(base + ["--retry-delay", "0"],
                              "--retry-delay must be between 0.01 and 86400 seconds, not 0")
        self.assertUsageError(base + ["--max-retry-delay", "nan"],
                              "--max-retry-delay must be a finite number, not 'nan'")

    def test_max_in_flight_bytes(self):
        """
        --max-in-flight-bytes: bytes, or with a suffix K, M or G (binary,
        any case, KiB/MiB/GiB too), 64 MiB by default, for the outbox
        consumer; anything else is one line naming the option.
        """
        def bound(*args):
            o = self.parse("--dsn", "dbname=x", "--outbox", "t", *args)
            return makeService(o).getServiceNamed("client").outbox.budget.bound

        self.assertEqual(bound(), 64 << 20)
        for value, expected in [("1048576", 1 << 20), ("512k", 512 << 10), ("16M", 16 << 20),
                                ("16MiB", 16 << 20), ("2 GiB", 2 << 30), ("1g", 1 << 30)]:
            self.assertEqual(bound("--max-in-flight-bytes", value), expected, value)
        refused = [(value, "--max-in-flight-bytes must be a whole number of bytes")
                   for value in ("", "M", "1.5M", "-1M", "12X", "1e6", "2T")]
        refused.append(("100", "--max-in-flight-bytes must be between 1024 and 1099511627776 bytes, not 100"))
        for value, message in refused:
            self.assertUsageError(["--dsn", "dbname=x", "--outbox", "t", "--max-in-flight-bytes", value], message)

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


class MakeServiceTests(unittest.TestCase):
    """
    What makeService does (and does not do) to the process.
    """

    def parse(self, *args):
        options = Options()
        options.parseOptions(["--dsn", "dbname=x", "-c", "x"] + list(args))
        return options

    def test_no_signal_handlers_at_construction(self):
        """
        Making the service touches no process-wide signal handler; the
        top service installs them only while it runs, and puts back the old
        ones when it stops.
        """
        watched = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
        before = [signal.getsignal(n) for n in watched]
        top = makeService(self.parse())
        self.assertIsInstance(top, ProcessService)
        self.assertEqual([signal.getsignal(n) for n in watched], before)
        self.assertEqual(top.reopeners[0][0], "output file")

    def test_processor_constructor_error_is_one_line(self):
        stderr = io.StringIO()
        self.patch(sys, "stderr", stderr)
        e = self.assertRaises(SystemExit, makeService,
                              self.parse("--processor", "tests.support.processors:FailingInit"))
        self.assertEqual(e.code, EXIT_START_FAILED)
        self.assertEqual(stderr.getvalue(),
                         "twistd hermes: error: processor tests.support.processors.FailingInit "
                         "failed to start: RuntimeError: cannot open the widget\n")

    def test_unusable_sink_url_is_a_usage_error(self):
        """
        A sink URL that names a known scheme but cannot be used (no
        stream), or an unreadable secret file: one line, exit 2, and the
        password nowhere in it.
        """
        from hermes_tx.twistd.process import EXIT_USAGE

        for extra, expected in (
            (["--sink", "redis://:pw-in-url@127.0.0.1:6379/0"], "stream"),
            (["--sink", "http://127.0.0.1:9/hook", "--sink-secret-file", "/nonexistent/secret"],
             "cannot read the secret file"),
        ):
            stderr = io.StringIO()
            self.patch(sys, "stderr", stderr)
            e = self.assertRaises(SystemExit, makeService, self.parse(*extra))
            self.assertEqual(e.code, EXIT_USAGE)
            line = stderr.getvalue()
            self.assertTrue(line.startswith("twistd hermes: error: --sink: "), line)
            self.assertIn(expected, line)
            self.assertEqual(line.count("\n"), 1, line)
            self.assertNotIn("pw-in-url", line)

    def test_status_port_taken_is_one_line(self):
        taken = socket.socket()
        self.addCleanup(taken.close)
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        stderr = io.StringIO()
        self.patch(sys, "stderr", stderr)
        e = self.assertRaises(SystemExit, makeService, self.parse("--status-port", str(port)))
        self.assertEqual(e.code, EXIT_START_FAILED)
        self.assertEqual(stderr.getvalue(), f"twistd hermes: error: --status-port {port} on "
                                            "127.0.0.1: Address already in use\n")


class TwistdParentTests(unittest.TestCase):
    """
    What twistd's own options change: where logs go, daemon mode's need
    for an output file.
    """

    def setUp(self):
        saved = dict(operations._twistd_log)
        self.addCleanup(operations._twistd_log.update, saved)
        self.patch(sys, "stderr", io.StringIO())

    def parse(self, parent, *args):
        options = Options()
        options.parent = dict({"nodaemon": False, "logfile": None, "logger": None,
                               "syslog": False}, **parent)
        options.parseOptions(["--dsn", "dbname=x", "-c", "x"] + list(args))
        return options.parent

    def test_foreground_logs_to_stderr(self):
        """
        In the foreground the log goes to standard error whatever the
        processor writes where: the JSON lines on stdout, a file, a sink
        (nothing on stdout), a processor of one's own.
        """
        for args in ((), ("-o", "out.jsonl"), ("--sink", "http://127.0.0.1:9/hook"),
                     ("--processor", "tests.support.shared:Collector")):
            self.assertEqual(self.parse({"nodaemon": True}, *args)["logger"],
                             "hermes_tx.twistd.options.stderr_log_observer", args)

    def test_log_files_are_reopenable(self):
        for parent, path in (({"nodaemon": True, "logfile": "h.log"}, "h.log"),
                             ({}, "twistd.log"), ({"logfile": "d.log"}, "d.log")):
            self.assertEqual(self.parse(parent, "-o", "out.jsonl")["logger"],
                             "hermes_tx.twistd.process.twistd_log_observer")
            self.assertEqual(operations._twistd_log["path"], os.path.abspath(path))

    def test_operator_choices_stand(self):
        for parent in ({"syslog": True}, {"logger": "my.observer"}, {"logfile": "-"}):
            self.assertEqual(self.parse(parent, "-o", "out.jsonl")["logger"],
                             parent.get("logger"))

    def test_daemon_needs_output(self):
        e = self.assertRaises(SystemExit, self.parse, {})
        self.assertEqual(e.code, 2)
        self.assertIn("daemon mode needs --output FILE", sys.stderr.getvalue())
        # A processor that takes no output has no use for it.
        self.parse({}, "--processor", "tests.support.shared:Collector")
