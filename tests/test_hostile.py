"""
Hostile input and operations, through the real C{twistd hermes} process:
payloads, processors, DSNs, signals, log rotation, start-up mistakes.
(Options and services in memory are in tests.test_twistd_options, tests.test_dsn and
tests.test_twistd_process.)
"""

import json
import os
import socket

from twisted.internet import defer, error
from twisted.trial import unittest

from hermes_tx.events import MAX_JSON_DEPTH
from tests.support.shared import shared_primary, sleep, wait_until
from tests.support.twistd import free_port, run_twistd


def read(path):
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except FileNotFoundError:
        return ""


def pg_environment(cluster):
    """
    @return: the PG* variables that make the empty DSN reach C{cluster}.
    """
    return {"PGHOST": cluster.host, "PGPORT": str(cluster.port), "PGUSER": "postgres",
            "PGDATABASE": "postgres", "PGAPPNAME": "hermes-hostile"}


class HostileTwistdTests(unittest.TestCase):
    @defer.inlineCallbacks
    def test_hostile_payloads_and_pass_through_processor(self):
        """
        The issue's transaction (a1, a 3000-deep array, b1, then c-after)
        and non-finite numbers, with --payload-format json, a processor
        whose constructor passes *args/**kwargs on, and a DSN ending in an
        empty dbname: every notification arrives, the hostile ones with
        decode_error; nothing reconnects; every line is strict JSON.
        """
        cluster = shared_primary()
        dsn = f"host={cluster.host} port={cluster.port} user=postgres dbname="
        proto, transport = run_twistd([
            "--dsn", dsn, "-c", "x", "--payload-format", "json",
            "--processor", "tests.support.processors:PassThrough",
        ])
        try:
            yield wait_until(lambda: b'"kind": "start"' in proto.out, timeout=20, what="start")
            cluster.execute(
                "begin; select pg_notify('x','a1'); "
                "select pg_notify('x', repeat('[',3000)||repeat(']',3000)); "
                "select pg_notify('x','b1'); commit; select pg_notify('x','c-after');"
            )
            for payload in ("NaN", '{"v": Infinity}', "-Infinity", "1e999999", '{"ok": 1}'):
                cluster.notify("x", payload)
            yield wait_until(lambda: proto.out.count(b"\n") >= 10, timeout=20, what="10 lines")
        finally:
            transport.signalProcess("TERM")
        ended = yield proto.ended
        self.assertIsInstance(ended, error.ProcessDone, proto.err.decode())
        records = proto.records()  # parsed strictly
        self.assertEqual([r["kind"] for r in records], ["start"] + ["notification"] * 9)
        by_payload = {r["payload"]: r for r in records[1:]}
        self.assertEqual([r["payload"] for r in records[1:3]], ["a1", "[" * 3000 + "]" * 3000])
        self.assertIn(f"deeper than {MAX_JSON_DEPTH}", by_payload["[" * 3000 + "]" * 3000]
                      ["decode_error"])
        for payload in ("NaN", '{"v": Infinity}', "-Infinity", "1e999999"):
            self.assertNotIn("data", by_payload[payload])
            self.assertIn("ValueError", by_payload[payload]["decode_error"])
        self.assertEqual(by_payload['{"ok": 1}']["data"], {"ok": 1})
        for payload in ("a1", "b1", "c-after"):
            self.assertIn("JSONDecodeError", by_payload[payload]["decode_error"])
        err = proto.err.decode()
        for word in ("Traceback", "Unhandled", "RecursionError", "reconnect", "resync"):
            self.assertNotIn(word, err)

    @defer.inlineCallbacks
    def test_foreground_sighup_and_repeated_stop_signals(self):
        """
        twistd -n with no DSN (libpq's PG* variables), --logfile and
        --output: after both files are moved away, SIGHUP reopens them
        (one line) and delivery goes on into the new ones; a second and
        third stop signal during a slow stop log one quiet line each; exit
        status 0, no traceback.
        """
        cluster = shared_primary()
        out, log = os.path.abspath(self.mktemp()), os.path.abspath(self.mktemp())
        proto, transport = run_twistd(
            ["-c", "hup", "-o", out, "--processor", "tests.support.processors:PassThrough",
             "--shutdown-timeout", "5"],
            env_extra=pg_environment(cluster),
            twistd_args=("-n", "--pidfile=", "--logfile", log),
        )
        try:
            yield wait_until(lambda: '"kind": "start"' in read(out), timeout=20, what="start")
            os.rename(out, out + ".1")
            os.rename(log, log + ".1")
            transport.signalProcess("HUP")
            yield wait_until(lambda: "Received SIGHUP: reopened" in read(log), what="reopen line")
            cluster.notify("hup", "after-hup")
            cluster.notify("hup", "slow:1.5")
            yield wait_until(lambda: "slow:1.5" in read(out), what="the slow event")
            transport.signalProcess("INT")
            yield sleep(0.3)
            transport.signalProcess("TERM")
            yield sleep(0.2)
            transport.signalProcess("INT")
        except BaseException:
            transport.signalProcess("KILL")
            raise
        ended = yield proto.ended
        logged = read(log)
        self.assertIsInstance(ended, error.ProcessDone, logged + proto.err.decode())
        self.assertIn(f"Received SIGHUP: reopened log file {log}, output file.", logged)
        self.assertNotIn("SIGHUP", read(log + ".1"))
        self.assertIn('"kind": "start"', read(out + ".1"))
        self.assertNotIn("after-hup", read(out + ".1"))
        self.assertIn("after-hup", read(out))
        self.assertIn("Received SIGINT, stopping cleanly.", logged)
        self.assertEqual(logged.count("again: already stopping (waiting at most 5 s"), 2)
        for word in ("Traceback", "ReactorNotRunning", "Unhandled"):
            self.assertNotIn(word, logged)
            self.assertNotIn(word, proto.err.decode())

    @defer.inlineCallbacks
    def test_daemon_sighup_and_dsn_file(self):
        """
        Daemon mode (no -n) with the DSN in a file: SIGHUP after logrotate's
        move reopens the log and output files and the daemon delivers on;
        SIGTERM ends it and removes its pid file.
        """
        cluster = shared_primary()
        out, log, pidfile, dsn_file = (os.path.abspath(self.mktemp()) for _ in range(4))
        with open(dsn_file, "w") as f:
            f.write(cluster.dsn(application_name="hermes-daemon", password="pw-in-file") + "\n")
        proto, _ = run_twistd(
            ["--dsn-file", dsn_file, "-c", "daemon", "-o", out],
            twistd_args=("--pidfile", pidfile, "--logfile", log),
        )
        ended = yield proto.ended  # the parent returns once the daemon runs
        self.assertIsInstance(ended, error.ProcessDone, proto.err.decode())
        pid = int(read(pidfile))
        try:
            yield wait_until(lambda: '"kind": "start"' in read(out), timeout=20, what="start")
            os.rename(out, out + ".1")
            os.rename(log, log + ".1")
            os.kill(pid, 1)  # SIGHUP
            yield wait_until(lambda: "Received SIGHUP: reopened" in read(log), what="reopen")
            cluster.notify("daemon", "after-hup")
            yield wait_until(lambda: "after-hup" in read(out), what="delivery after SIGHUP")
        finally:
            os.kill(pid, 15)  # SIGTERM
        yield wait_until(lambda: not os.path.exists(pidfile), timeout=20, what="the pid file gone")
        logged = read(log)
        self.assertIn("Received SIGTERM, stopping cleanly.", logged)
        self.assertNotIn("Traceback", logged + read(log + ".1"))
        self.assertNotIn("pw-in-file", logged + read(log + ".1"))
        self.assertNotIn("after-hup", read(out + ".1"))

    @defer.inlineCallbacks
    def test_start_errors_are_one_line(self):
        """
        Mistakes found before anything runs: one line on stderr, nothing on
        stdout, status 2 for the options, 1 when starting fails.  (All
        started at once: none needs a server.)
        """
        taken = socket.socket()
        self.addCleanup(taken.close)
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        base = ["--dsn", "host=127.0.0.1 port=1", "-c", "x"]
        cases = [
            (["--dsn", "password=hunter2 broken", "-c", "x"], 2,
             'invalid DSN syntax: missing "=" after "***" in connection info string'),
            (base + ["--processor", "tests.support.processors:FailingInit"], 1,
             "processor tests.support.processors.FailingInit failed to start: "
             "RuntimeError: cannot open the widget"),
            (base + ["--status-interface", "not-an-ip"], 2,
             "--status-interface must be an IP address, not 'not-an-ip'"),
            (base + ["--status-port", str(port)], 1,
             f"--status-port {port} on 127.0.0.1: Address already in use"),
            (["--dsn", "sslmode=bogus", "-c", "x"], 2,
             'invalid connection options: invalid sslmode value: "bogus"'),
            (base + ["--liveness-timeout", "inf"], 2,
             "--liveness-timeout must be a finite number, not 'inf'"),
        ]
        runs = [run_twistd(args)[0] for args, _, _ in cases]
        pidfile = os.path.abspath(self.mktemp())
        daemon, _ = run_twistd(base, twistd_args=("--pidfile", pidfile))
        cases.append((None, 2, "daemon mode needs --output FILE"))
        runs.append(daemon)
        for (args, status, line), proto in zip(cases, runs):
            ended = yield proto.ended
            err = proto.err.decode()
            self.assertIsInstance(ended, error.ProcessTerminated, (args, err))
            self.assertEqual(ended.exitCode, status, (args, err))
            self.assertTrue(err.startswith(f"twistd hermes: error: {line}"), (args, err))
            self.assertEqual(err.count("\n"), 1, (args, err))
            self.assertEqual(proto.out, b"")
        self.assertFalse(os.path.exists(pidfile))

    @defer.inlineCallbacks
    def test_mistyped_password_never_reaches_the_log(self):
        """
        The issue's DSN, whose password has an "@": libpq reads
        "ngPassXYZ@127.0.0.1" as the host name, and no part of the password
        may appear on stderr however many attempts fail (nor in the status
        page).
        """
        proto, transport = run_twistd(
            ["--dsn", "postgresql://sec:Wr@ngPassXYZ@127.0.0.1:5432/postgres", "-c", "x",
             "--max-backoff", "0.2"])
        try:
            yield wait_until(lambda: proto.err.count(b"\n") >= 2, timeout=20, what="log lines")
            yield sleep(1.5)  # several more failed role checks
        finally:
            transport.signalProcess("TERM")
            yield proto.ended
        err = proto.err.decode()
        self.assertIn("could not translate host name", err)
        for piece in ("ngPassXYZ", "Wr@ng", "Wr@ngPassXYZ"):
            self.assertNotIn(piece, err)
        self.assertNotIn("Traceback", err)

    @defer.inlineCallbacks
    def test_processor_that_cannot_work(self):
        """
        Issue 9 items 10 and 12.  Output into a directory that does not
        exist: the processor terminates, which is fatal for twistd hermes:
        one line, a clean stop, exit status 1.  Output to /dev/full: every
        write fails, the same event is retried (never skipped, never
        counted), and /ready answers 503 saying why.
        """
        from twisted.internet import reactor as r
        from twisted.web.client import Agent, readBody

        cluster = shared_primary()
        missing = os.path.join(os.path.abspath(self.mktemp()), "no", "such", "dir", "out.jsonl")
        dead, _ = run_twistd(["--dsn", cluster.dsn(), "-c", "x", "-o", missing])
        port = free_port()
        full, transport = run_twistd(["--dsn", cluster.dsn(), "-c", "x", "-o", "/dev/full",
                                      "--status-port", str(port), "--backoff-limit", "1"])
        agent = Agent(r)
        try:
            ended = yield dead.ended
            # twistd -n hermes logs to standard error, whatever the output.
            yield wait_until(lambda: b"not delivered" in full.err, timeout=20, what="a retry")
            cluster.notify("x", "one")
            yield sleep(1.5)
            response = yield agent.request(b"GET", f"http://127.0.0.1:{port}/ready".encode())
            code, ready = response.code, (yield readBody(response))
            response = yield agent.request(b"GET", f"http://127.0.0.1:{port}/metrics".encode())
            metrics = yield readBody(response)
        finally:
            transport.signalProcess("TERM")
        yield full.ended
        err = (dead.out + dead.err).decode()
        self.assertIsInstance(ended, error.ProcessTerminated, err)
        self.assertEqual(ended.exitCode, 1, err)
        self.assertIn("processor terminated: ", err)
        self.assertIn("stopping (exit status 1)", err)
        self.assertNotIn("Traceback", err)
        self.assertEqual(code, 503)
        self.assertIn("processor failing", json.loads(ready)["reason"])
        self.assertIn("No space left on device", json.loads(ready)["reason"])
        self.assertNotIn(b"hermes_notifications_processed_total{", metrics)
        self.assertNotIn("Traceback", (full.out + full.err).decode())

    @defer.inlineCallbacks
    def test_sink_refusing_credentials_is_not_ready(self):
        """
        Issue 15: --sink redis:// with a wrong password and nothing to
        deliver: /ready answers 503 naming Redis's refusal (never the
        password) within seconds of the start; once the server takes the
        password, the next check of the half-open circuit makes it 200.
        """
        import txredisapi
        from twisted.internet import reactor as r
        from twisted.web.client import Agent, readBody

        from tests.support.redisserver import start_redis

        right, wrong = "right-pw-1d2c3b", "wrong-pw-4a5b6c"
        server = start_redis(self, password=right)
        cluster = shared_primary()
        port = free_port()
        proto, transport = run_twistd([
            "--dsn", cluster.dsn(), "-c", "x", "--status-port", str(port), "--backoff-limit", "1",
            "--sink", f"redis://:{wrong}@127.0.0.1:{server.port}/0?stream=s"])
        agent = Agent(r)

        @defer.inlineCallbacks
        def ready():
            try:
                response = yield agent.request(b"GET", f"http://127.0.0.1:{port}/ready".encode())
                return response.code, json.loads((yield readBody(response)))
            except Exception:
                return None, {}

        answers = []

        @defer.inlineCallbacks
        def until(code, processor):
            # (the reason names the first source not ready: on a busy
            # machine the listener may still be connecting; wait past it)
            deadline = r.seconds() + 20
            while True:
                answers.append((yield ready()))
                code_now, body = answers[-1]
                if (code_now == code and body.get("processor") == processor
                        and "listener is" not in body.get("reason", "")):
                    return body
                if r.seconds() > deadline:
                    self.fail(f"no /ready {code} within 20 s: {answers[-3:]}")
                yield sleep(0.2)

        try:
            refused = yield until(503, "paused")
            conn = yield txredisapi.Connection("127.0.0.1", server.port, password=right, reconnect=False)
            yield conn.execute_command("CONFIG", "SET", "requirepass", wrong)
            yield conn.disconnect()
            yield until(200, "working")
        finally:
            transport.signalProcess("TERM")
        yield proto.ended
        log = (proto.out + proto.err).decode()
        self.assertEqual(refused["processor"], "paused")
        self.assertIn("processor paused: authentication refused by redis://:***@127.0.0.1:", refused["reason"])
        self.assertIn("WRONGPASS", refused["reason"])
        self.assertEqual(log.count("WRONGPASS"), 1, log)  # one line, however many checks
        for text in (log, json.dumps(answers)):
            self.assertNotIn(wrong, text)
            self.assertNotIn("Traceback", text)
