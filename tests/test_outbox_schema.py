"""
Tests for L{hermes_tx.outbox.schema} and C{emit()}: installing, upgrading,
refusing a standby; emit's per-key serialization and its wake-up NOTIFY.
"""

import time

import psycopg2
from psycopg2 import sql
from twisted.trial import unittest

from hermes_tx.exceptions import InvalidConfigurationException, StandbyServerError
from hermes_tx.outbox import sql as statements
from hermes_tx.outbox.names import channel
from hermes_tx.outbox.schema import install, installed_versions, latest_version, migrations
from tests.support.fixtures import PrimaryStandbyFixtures
from tests.support.outbox import OutboxDatabase, in_thread, notifications, quoted


class MigrationTests(unittest.TestCase):
    def test_numbered_and_rendered(self):
        """
        The migrations are numbered 1..n; rendering replaces every
        placeholder, quoting the schema as an identifier and a literal.
        """
        found = migrations()
        self.assertEqual([m.version for m in found], list(range(1, len(found) + 1)))
        self.assertGreaterEqual(latest_version(), 2)
        for migration in found:
            text = migration.render("Odd \"S\" 'q'")
            self.assertNotIn("{schema", text)
            self.assertNotIn("{channel", text)
            self.assertIn('"Odd ""S"" \'q\'"', text)
        self.assertIn("'Odd \"S\" ''q'''", found[0].render("Odd \"S\" 'q'"))

    def test_bad_schema_names(self):
        """
        Schema names that are empty, too long or hold NUL or $ are refused
        before anything is rendered.
        """
        for name in ("", "x" * 64, "a\x00b", "a$b", None):
            self.assertRaises(InvalidConfigurationException, migrations()[0].render, name)


class InstallTests(OutboxDatabase, unittest.TestCase):
    install_outbox = False

    def versions(self, schema):
        with self.connect().cursor() as cur:
            return installed_versions(cur, schema)

    def test_idempotent(self):
        """
        A second install applies nothing; the versions are recorded.
        """
        conn = self.connect()
        applied = install(conn, "idem")
        self.assertEqual([m.version for m in applied], list(range(1, latest_version() + 1)))
        self.assertEqual(install(conn, "idem"), [])
        self.assertEqual(self.versions("idem"), list(range(1, latest_version() + 1)))
        self.assertTrue(conn.autocommit)

    def test_upgrade_from_version_one(self):
        """
        A schema at version 1 (no capture) keeps its changes and gets the
        later migrations.
        """
        conn = self.connect()
        self.assertEqual([m.version for m in install(conn, "old", target=1)], [1])
        self.assertEqual(self.versions("old"), [1])
        self.query('SELECT "old".emit(\'t\', \'k\', \'{"kept": true}\')')
        self.assertEqual(self.query("SELECT to_regproc('old.capture')"), [(None,)])
        applied = install(conn, "old")
        self.assertEqual([m.version for m in applied], list(range(2, latest_version() + 1)))
        self.assertEqual(self.query('SELECT key, payload FROM "old".outbox'), [("k", {"kept": True})])
        self.assertIsNotNone(self.query("SELECT to_regproc('old.capture')")[0][0])

    def test_concurrent_installs(self):
        """
        Installs at the same moment wait for each other: one applies the
        migrations, the others find them applied.
        """
        results = [in_thread(lambda: install(self.connect(), "race")) for _ in range(4)]
        applied = []
        for thread, result in results:
            thread.join(30)
            self.assertNotIn("error", result)
            applied.append(len(result["value"]))
        self.assertEqual(sorted(applied), [0, 0, 0, latest_version()])

    def test_newer_schema_refused(self):
        """
        A schema recorded at a version this hermes_tx does not know is
        refused, untouched.
        """
        install(self.connect(), "newer")
        self.query('INSERT INTO "newer".migrations (version, name) VALUES (999, \'future\')')
        error = self.assertRaises(InvalidConfigurationException, install, self.connect(), "newer")
        self.assertIn("999", str(error))
        self.assertNotIn("\n", str(error))

    def test_odd_schema_name(self):
        """
        Any schema name works, quoted everywhere: emit, claim, ack, the
        wake-up channel.
        """
        name = 'Odd "Schema" ünï.x'
        install(self.connect(), name)
        listener = self.connect()
        listener.cursor().execute(statements.listen(name))
        change = self.query(f"SELECT {quoted(name)}.emit('t', 'k', '{{}}')")[0][0]
        token = "00000000-0000-0000-0000-000000000001"
        rows = self.query(statements.claim(name), (["t"], 10, token, 30.0))
        self.assertEqual([r[0] for r in rows], [change])
        self.assertEqual(self.query(statements.ack(name), ([change], token)), [(change,)])
        self.assertEqual(notifications(listener), [(channel(name), "t")])


class StandbyTests(PrimaryStandbyFixtures, unittest.TestCase):
    def test_standby_refused(self):
        """
        Installing on a standby is refused with one line saying so.
        """
        conn = psycopg2.connect(self.standby.dsn())
        self.addCleanup(conn.close)
        error = self.assertRaises(StandbyServerError, install, conn)
        self.assertIn("standby", str(error))
        self.assertNotIn("\n", str(error))
        self.assertEqual(self.primary.execute("SELECT to_regnamespace('hermes')"), [(None,)])


class EmitTests(OutboxDatabase, unittest.TestCase):
    def setUp(self):
        super().setUp()
        self.clear()

    def test_refuses_missing_or_odd_values(self):
        """
        emit refuses NULL topic, key or payload, an empty topic and one
        over 255 bytes, each with an SQLSTATE of its own.
        """
        cases = [
            ((None, "k", "{}"), psycopg2.errors.NullValueNotAllowed),
            (("t", None, "{}"), psycopg2.errors.NullValueNotAllowed),
            (("t", "k", None), psycopg2.errors.NullValueNotAllowed),
            (("", "k", "{}"), psycopg2.errors.InvalidParameterValue),
            (("é" * 128, "k", "{}"), psycopg2.errors.InvalidParameterValue),
        ]
        for args, error in cases:
            self.assertRaises(error, self.emit, *args)
        self.assertEqual(self.outbox(), [])
        self.emit("t" * 255, "", "null")
        self.assertEqual(self.outbox("topic, key, payload"), [("t" * 255, "", None)])

    def test_writers_of_one_key_are_serialized(self):
        """
        A second transaction emitting on a key waits until the first one
        ends, and then draws a larger id, so id order is commit order;
        other keys do not wait.
        """
        first = self.connect(autocommit=False)
        a = self.emit("t", "k", conn=first)
        second = self.connect(autocommit=False)

        def emit_and_commit():
            change = self.emit("t", "k", conn=second)
            second.commit()
            return change

        thread, result = in_thread(emit_and_commit)
        deadline = time.monotonic() + 10
        while not self.query(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
        )[0][0]:
            self.assertLess(time.monotonic(), deadline, "the second writer never waited")
            time.sleep(0.01)
        self.assertNotIn("value", result)
        other = self.emit("t", "other")
        later = self.emit("t", "later", conn=first)
        first.commit()
        thread.join(10)
        self.assertNotIn("error", result)
        self.assertGreater(result["value"], max(a, other, later))
        self.assertEqual([r[0] for r in self.outbox("id")], sorted([a, other, later, result["value"]]))

    def test_one_notify_per_topic_per_transaction(self):
        """
        A transaction emitting many changes on two topics sends two
        notifications, each topic once, at commit; the next transaction
        sends its own.
        """
        listener = self.connect()
        listener.cursor().execute(statements.listen(self.schema))
        writer = self.connect(autocommit=False)
        with writer.cursor() as cur:
            cur.execute(
                "SELECT count(hermes.emit(t, g::text, '{}')) FROM generate_series(1, 200) g,"
                " unnest(ARRAY['alpha', 'beta']) t"
            )
        self.assertEqual(notifications(listener, 0.2), [])
        writer.commit()
        self.assertEqual(
            sorted(notifications(listener)), [(channel(self.schema), "alpha"), (channel(self.schema), "beta")]
        )
        self.emit("alpha", "x")
        self.assertEqual(notifications(listener), [(channel(self.schema), "alpha")])

    def test_channel_and_listen_statement(self):
        """
        The channel is the schema's name and C{.outbox}, quoted in LISTEN;
        names over 63 bytes are hashed.
        """
        self.assertEqual(channel("hermes"), "hermes.outbox")
        long_name = "s" * 60
        self.assertLessEqual(len(channel(long_name).encode()), 63)
        self.assertNotEqual(channel(long_name), channel("t" * 60))
        conn = self.connect()
        self.assertEqual(statements.listen('a "b"').as_string(conn), 'LISTEN "a ""b"".outbox"')
        self.assertEqual(sql.Identifier(channel("x")).as_string(conn), '"x.outbox"')


class RenderTests(unittest.TestCase):
    def test_placeholder_text_in_the_schema_name(self):
        """
        A schema name holding a placeholder's text and a quote is quoted
        once, wherever it goes: nothing it holds is replaced again.
        """
        from hermes_tx.outbox.schema import Migration

        name = "x{schema}'); DROP TABLE t; --{channel_literal}"
        text = Migration(1, "t", "SELECT {schema_literal}; CREATE SCHEMA {schema}").render(name)
        literal = "'" + name.replace("'", "''") + "'"
        self.assertEqual(text, f'SELECT {literal}; CREATE SCHEMA "{name}"')
