"""
Tests for C{hermes-tx} (L{hermes_tx.outbox.cli}), run as a separate
process the way users run it, against a server with trust
authentication: the DSN carries a password that must never be printed.
"""

import json
import os
import re
import subprocess
import sys
import uuid

from twisted.trial import unittest

from hermes_tx.outbox import sql as statements
from hermes_tx.outbox.render import cell, table
from tests.support.fixtures import PrimaryStandbyFixtures
from tests.support.outbox import OutboxDatabase

SECRET = "pa55-hermes-tx-cli"


def hermes_tx(*args, env=None, script=False):
    """
    Run C{hermes-tx} (C{python -m hermes_tx.outbox}, or the console script
    next to this Python when C{script}).

    @return: C{(exit status, stdout, stderr)}.
    """
    command = [os.path.join(os.path.dirname(sys.executable), "hermes-tx")] if script else [
        sys.executable, "-m", "hermes_tx.outbox"]
    environ = {k: v for k, v in os.environ.items() if k != "HERMES_DSN"}
    environ.update(env or {})
    proc = subprocess.run(command + list(args), capture_output=True, text=True, env=environ, timeout=60)
    return proc.returncode, proc.stdout, proc.stderr


class CommandTests(OutboxDatabase, unittest.TestCase):
    install_outbox = False

    def setUp(self):
        super().setUp()
        self.secret_dsn = self.cluster.dsn(self.dbname, password=SECRET)

    def run_ok(self, *args, **kwargs):
        status, out, err = self.run_cli(*args, **kwargs)
        self.assertEqual((status, err), (0, ""), out)
        return out

    def run_cli(self, *args, env=None, dsn=True, script=False):
        if dsn:
            args = args + ("--dsn", self.secret_dsn)
        status, out, err = hermes_tx(*args, env=env, script=script)
        self.assertNotIn(SECRET, out + err)
        self.assertNotIn("Traceback", err)
        return status, out, err

    def assertOneLineError(self, result, status, *words):
        code, out, err = result
        self.assertEqual(code, status, err)
        self.assertEqual(len(err.splitlines()), 1, err)
        self.assertTrue(err.startswith("hermes-tx: error: "), err)
        for word in words:
            self.assertIn(word, err)

    def test_workflow(self):
        """
        install (twice), emit, status (plain and JSON), capture, uncapture,
        through the console script and C{python -m}, the DSN from
        C{--dsn} or C{$HERMES_DSN}.
        """
        self.query("DROP SCHEMA IF EXISTS hermes CASCADE")
        self.assertIn("installed at version", self.run_ok("install", script=True))
        self.assertIn("up to date", self.run_ok("install"))
        self.assertEqual(self.run_ok("status"), "no changes and no dead letters\n")
        change = int(self.run_ok("emit", "--topic", "orders", "--key", "o-1", "--payload", '{"total": 3}'))
        self.assertEqual(self.outbox("id, topic, key, payload"), [(change, "orders", "o-1", {"total": 3})])
        lines = self.run_ok("status").splitlines()
        self.assertEqual(lines[0].split(), ["TOPIC", "PENDING", "IN", "FLIGHT", "OLDEST", "(s)", "DEAD", "LETTERS"])
        self.assertEqual(lines[1].split()[:3], ["orders", "1", "0"])
        status = json.loads(self.run_ok("status", "--json", dsn=False, env={"HERMES_DSN": self.secret_dsn}))
        self.assertEqual([(s["topic"], s["pending"], s["in_flight"], s["dead_letters"]) for s in status],
                         [("orders", 1, 0, 0)])
        self.query("CREATE TABLE IF NOT EXISTS cli_items (id int PRIMARY KEY)")
        self.assertIn("capturing public.cli_items into topic 'items' (key: id)",
                      self.run_ok("capture", "--table", "cli_items", "--topic", "items"))
        self.query("INSERT INTO cli_items VALUES (1)")
        self.assertIn("1 trigger dropped", self.run_ok("uncapture", "--table", "public.cli_items"))
        self.assertIn("was not captured", self.run_ok("uncapture", "--table", "cli_items", "--topic", "items"))
        self.query("INSERT INTO cli_items VALUES (2)")
        self.assertEqual([k for t, k in self.outbox("topic, key") if t == "items"], ["1"])

    def test_dead_letters(self):
        """
        dead-letters lists (table and JSON), retries (back in the outbox
        with a new id, attempts 0) and purges, by id or all of a topic.
        """
        self.run_ok("install")
        self.clear()
        ids = [self.emit(topic, f"k{i}") for i, topic in enumerate(["a", "a", "b"])]
        token = str(uuid.uuid4())
        self.query(statements.claim(self.schema), (["a", "b"], 10, token, 30.0))
        self.query(statements.dead_letter(self.schema), (ids, token, ["bad\nrequest", "x" * 500, None]))
        lines = self.run_ok("dead-letters").splitlines()
        self.assertEqual(lines[0].split()[:4], ["ID", "TOPIC", "KEY", "ATTEMPTS"])
        self.assertEqual(len(lines), 4)
        self.assertIn("bad\\nrequest", lines[1])
        self.assertIn("…", lines[2])
        listed = json.loads(self.run_ok("dead-letters", "--json", "--topic", "a"))
        self.assertEqual([(d["id"], d["attempts"], d["last_error"]) for d in listed],
                         [(ids[0], 1, "bad\nrequest"), (ids[1], 1, "x" * 500)])
        self.assertIn("1 more", self.run_ok("dead-letters", "--limit", "2"))
        self.assertEqual(self.run_ok("dead-letters", "--retry", str(ids[0])), "retried 1 dead letter\n")
        self.assertEqual(self.outbox("id, key, attempts"), [(ids[0], "k0", 0)])
        self.assertEqual(self.run_ok("dead-letters", "--purge-all", "--topic", "b"), "purged 1 dead letter\n")
        self.assertOneLineError(self.run_cli("dead-letters", "--purge", str(ids[1]), "999999"), 1, "999999")
        self.assertEqual(self.run_ok("dead-letters"), "no dead letters\n")
        self.assertEqual(self.run_ok("dead-letters", "--retry-all"), "retried 0 dead letters\n")

    def test_retry_refusals(self):
        """
        A dead letter superseded by a delivered change of its key is not
        retried: one line on standard error, exit status 1, the listing
        says by which change; --force retries it.
        """
        self.run_ok("install")
        self.clear()
        old = self.emit("t", "k")
        token = str(uuid.uuid4())
        self.query(statements.claim(self.schema), (["t"], 10, token, 30.0))
        self.query(statements.dead_letter(self.schema), ([old], token, ["refused"]))
        newer = self.emit("t", "k")
        token, _ = self.claim(["t"])
        self.ack([newer], token)
        listed = json.loads(self.run_ok("dead-letters", "--json"))
        self.assertEqual([(d["id"], d["superseded_by"]) for d in listed], [(old, newer)])
        self.assertIn("SUPERSEDED BY", self.run_ok("dead-letters"))
        status, out, err = self.run_cli("dead-letters", "--retry", str(old), "12345678")
        self.assertEqual((status, out), (1, "retried 0 dead letters\n"))
        self.assertEqual(err.splitlines(), [
            f"hermes-tx: dead letter {old} not retried: change {newer} of its key was delivered after it"
            f" failed (it would overwrite newer data); --force retries it anyway, --purge {old} drops it",
            "hermes-tx: dead letter 12345678 not retried: there is no dead letter with that id",
        ])
        self.assertEqual(self.run_ok("dead-letters", "--retry-all", "--force"), "retried 1 dead letter\n")
        self.assertEqual(self.outbox("id"), [(old,)])

    def test_closed_stdout(self):
        """
        Standard output closed early (C{| head -1}): no traceback, nothing
        on standard error, exit status 1; --help too.
        """
        self.run_ok("install")
        self.clear()
        for i in range(2000):
            self.emit(f"topic-{i % 700}", "k")
        for args in (("status", "--dsn", self.secret_dsn), ("--help",)):
            command = [sys.executable, "-m", "hermes_tx.outbox", *args]
            proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            proc.stdout.readline()
            proc.stdout.close()
            err = proc.stderr.read().decode()
            proc.wait(30)
            self.assertEqual(err, "", args)
            self.assertIn(proc.returncode, (0, 1))

    def test_damaged_schema(self):
        """
        A schema missing one of its tables or functions is refused with
        one line by install (not "up to date") and by the commands.
        """
        self.query("DROP SCHEMA IF EXISTS damaged CASCADE")
        self.run_ok("install", "--schema", "damaged")
        self.query("DROP TABLE damaged.outbox CASCADE")
        for command in ("install", "status", "dead-letters"):
            self.assertOneLineError(self.run_cli(command, "--schema", "damaged"), 1,
                                    "damaged", "table damaged.outbox")
        self.query("DROP SCHEMA damaged CASCADE")
        self.run_ok("install", "--schema", "damaged")
        self.query("DROP FUNCTION damaged.ack")
        self.assertOneLineError(self.run_cli("install", "--schema", "damaged"), 1, "function damaged.ack")
        self.query("DROP SCHEMA damaged CASCADE")

    def test_password_shapes_never_shown(self):
        """
        Issue 18: short passwords, and passwords with @ : / % written into
        a URI as they are: no fragment of them in any hermes-tx output
        (libpq names the host it could not reach, which may hold a piece).
        """
        for password in ("o", "1", "Wr@ngPassXYZ", "a:b@c", "x/y@z", "50%@q"):
            for dsn in (f"postgresql://u:{password}@127.0.0.1:1/db",
                        f"host=127.0.0.1 port=1 user=u password={password}"):
                status, out, err = hermes_tx("status", "--dsn", dsn)
                self.assertEqual(status, 1, err)
                self.assertEqual(len(err.splitlines()), 1, err)
                self.assertTrue("cannot connect" in err or "invalid DSN syntax" in err, err)
                for piece in {password} | set(re.split(r"[@:/]", password)) - {""}:
                    self.assertIsNone(re.search(rf"(?<![\w.\-]){re.escape(piece)}(?![\w.\-])", err),
                                      (password, dsn, err))

    def test_usage_errors(self):
        """
        Mistakes on the command line: one line, exit status 2, no password
        even when an argument holds one.
        """
        for args in [
            ("status",),
            ("frobnicate",),
            ("dead-letters", "--limit", "0"),
            ("dead-letters", "--retry", "1", "--purge", "2"),
            ("dead-letters", "--retry", "x"),
            ("emit", "--topic", "t", "--key", "k", "--payload", "{nope"),
            ("capture", "--table", "x"),
            ("status", f"password={SECRET}"),
            ("status", f"postgresql://u:{SECRET}@h/db"),
        ]:
            self.assertOneLineError(self.run_cli(*args, dsn=args != ("status",)), 2)
        self.assertOneLineError(self.run_cli(dsn=False), 2)

    def test_runtime_errors(self):
        """
        Failures: one line, exit status 1, no password, whatever the DSN's
        form.
        """
        self.run_ok("install")
        unreachable = [
            f"host=127.0.0.1 port=1 user=u password={SECRET}",
            f"postgresql://u:{SECRET}@127.0.0.1:1/db",
            f"postgresql://u@127.0.0.1:1/db?password={SECRET}&sslmode=disable",
            f"host=127.0.0.1 port=1 password={SECRET} bogus_option={SECRET}",
            f"host='127.0.0.1 password={SECRET}",
        ]
        for dsn in unreachable:
            self.assertOneLineError(self.run_cli("status", "--dsn", dsn, dsn=False), 1)
        self.assertOneLineError(self.run_cli("capture", "--table", "no.such", "--topic", "t"), 1, "no table")
        self.query("CREATE TABLE IF NOT EXISTS cli_nopk (a int)")
        self.assertOneLineError(self.run_cli("capture", "--table", "cli_nopk", "--topic", "t"), 1, "primary key")
        self.assertOneLineError(self.run_cli("status", "--schema", "elsewhere"), 1, "hermes-tx install")
        self.assertOneLineError(self.run_cli("emit", "--topic", "", "--key", "k", "--payload", "1"), 1, "topic")

    def test_help_shows_no_password(self):
        """
        --help of every command, with a password in $HERMES_DSN, never
        shows it.
        """
        for command in ("", "install", "capture", "uncapture", "status", "dead-letters", "emit"):
            args = ((command,) if command else ()) + ("--help",)
            status, out, err = self.run_cli(*args, dsn=False, env={"HERMES_DSN": self.secret_dsn})
            self.assertEqual(status, 0, err)
            self.assertIn("usage: hermes-tx", out)


class StandbyCommandTests(PrimaryStandbyFixtures, unittest.TestCase):
    def test_install_on_standby(self):
        """
        install against a standby: one line saying so, exit status 1.
        """
        status, out, err = hermes_tx("install", "--dsn", self.standby.dsn(password=SECRET))
        self.assertEqual(status, 1)
        self.assertEqual(err.splitlines(), ["hermes-tx: error: the server is a standby (in recovery):"
                                            " install the outbox on the primary"])

    def multi_host(self, *clusters, **extra):
        hosts = ",".join(c.host for c in clusters)
        ports = ",".join(str(c.port) for c in clusters)
        words = [f"host={hosts}", f"port={ports}", "user=postgres", "dbname=postgres", f"password={SECRET}"]
        return " ".join(words + [f"{k}={v}" for k, v in extra.items()])

    def test_seeks_the_primary(self):
        """
        Issue 18: with the standby listed first and no
        target_session_attrs (or one asking for any server), install and
        status use the primary, as twistd hermes does; a URI too.
        """
        for dsn in (self.multi_host(self.standby, self.primary),
                    self.multi_host(self.standby, self.primary, target_session_attrs="any"),
                    self.multi_host(self.primary, self.standby, target_session_attrs="read-write"),
                    f"postgresql://postgres:{SECRET}@{self.standby.host}:{self.standby.port},"
                    f"{self.primary.host}:{self.primary.port}/postgres"):
            for command in ("install", "status"):
                status, out, err = hermes_tx(command, "--dsn", dsn)
                self.assertEqual((status, err), (0, ""), (command, dsn))

    def test_no_primary(self):
        """
        No host is a primary: one line naming each host and why.
        """
        down = f"127.0.0.1:{self.standby.port + 1 if self.standby.port + 1 != self.primary.port else 1}"
        dsn = self.multi_host(self.standby).replace(
            f"host={self.standby.host}", f"host={self.standby.host},127.0.0.1").replace(
            f"port={self.standby.port}", f"port={self.standby.port},{down.split(':')[1]}")
        status, out, err = hermes_tx("status", "--dsn", dsn)
        self.assertEqual(status, 1)
        self.assertEqual(len(err.splitlines()), 1, err)
        self.assertIn(f"no primary among the DSN's hosts (127.0.0.1:{self.standby.port}: a standby;"
                      f" {down}: ", err)
        self.assertNotIn(SECRET, err)


class RenderTests(unittest.TestCase):
    def test_cells(self):
        """
        Cells are one printable line, cut when long; None is a dash.
        """
        self.assertEqual(cell(None), "-")
        self.assertEqual(cell(1.25), "1.2")
        self.assertEqual(cell("a\tb\x1b"), "a\\tb\\x1b")
        self.assertEqual(len(cell("y" * 100)), 60)
        self.assertEqual(table(("A", "BB"), [("xyz", 1)]), "A    BB\nxyz  1")
