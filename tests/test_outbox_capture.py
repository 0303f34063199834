"""
Tests for L{hermes_tx.outbox.capture}: a captured table's INSERT, UPDATE
and DELETE statements become changes keyed by its primary key.
"""

import json
import time
import uuid

import psycopg2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.trial import unittest

from hermes_tx.exceptions import InvalidConfigurationException
from hermes_tx.outbox.capture import capture, captures, find_table, uncapture
from hermes_tx.outbox.names import capture_trigger
from tests.support.outbox import OutboxDatabase, in_thread, notifications, quoted

#: text PostgreSQL stores: any code point but NUL and lone surrogates
PG_TEXT = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"))


class CaptureTests(OutboxDatabase, unittest.TestCase):
    def setUp(self):
        super().setUp()
        self.clear()
        self.conn = self.connect()
        self.table = f"t_{uuid.uuid4().hex[:10]}"

    def changes(self, topic=None):
        """
        @return: (key, payload) of every change (of C{topic}), by id.
        """
        rows = self.outbox("topic, key, payload")
        return [(k, p) for t, k, p in rows if topic is None or t == topic]

    def test_insert_update_delete(self):
        """
        Each changed row is one change: table, op, key, old and new rows.
        """
        self.query(f"CREATE TABLE {self.table} (id int PRIMARY KEY, name text, n numeric)")
        found = capture(self.conn, self.table, "items")
        self.assertEqual((found.schema, found.name, found.key), ("public", self.table, ["id"]))
        self.query(f"INSERT INTO {self.table} VALUES (1, 'a', 1.50), (2, NULL, NULL)")
        self.query(f"UPDATE {self.table} SET name = 'b' WHERE id = 1")
        self.query(f"DELETE FROM {self.table} WHERE id = 2")
        table = f"public.{self.table}"
        row1 = {"id": 1, "name": "a", "n": 1.5}
        row2 = {"id": 2, "name": None, "n": None}
        self.assertEqual(
            self.changes(),
            [
                ("1", {"table": table, "op": "INSERT", "key": {"id": 1}, "old": None, "new": row1}),
                ("2", {"table": table, "op": "INSERT", "key": {"id": 2}, "old": None, "new": row2}),
                ("1", {"table": table, "op": "UPDATE", "key": {"id": 1}, "old": row1, "new": dict(row1, name="b")}),
                ("2", {"table": table, "op": "DELETE", "key": {"id": 2}, "old": row2, "new": None}),
            ],
        )

    def test_composite_key_in_key_order(self):
        """
        A composite key is the JSON array of its values in the key's
        order (not the columns'), as text; the key object has each column.
        Updates (of the key too) and deletes are keyed the same way.
        """
        self.query(
            f"CREATE TABLE {self.table} (a int, b text, c date, x text, PRIMARY KEY (c, b, a))"
        )
        capture(self.conn, self.table, "comp")
        self.query(f"INSERT INTO {self.table} VALUES (7, 'ü \"q\"', '2024-02-29', NULL)")
        self.query(f"UPDATE {self.table} SET x = 'x'")
        self.query(f"UPDATE {self.table} SET a = 8")
        self.query(f"DELETE FROM {self.table}")
        changes = self.changes()
        key7 = ["2024-02-29", 'ü "q"', 7]
        key8 = ["2024-02-29", 'ü "q"', 8]
        self.assertEqual(
            [(json.loads(k), p["op"], p["key"]["a"]) for k, p in changes],
            [(key7, "INSERT", 7), (key7, "UPDATE", 7), (key7, "DELETE", 7), (key8, "INSERT", 8), (key8, "DELETE", 8)],
        )
        self.assertEqual(changes[0][1]["key"], {"a": 7, "b": 'ü "q"', "c": "2024-02-29"})
        self.assertEqual((changes[0][1]["new"]["x"], changes[1][1]["new"]["x"]), (None, "x"))

    def test_primary_key_change(self):
        """
        An UPDATE changing the primary key is a DELETE of the old key and an
        INSERT of the new one, the DELETE first.
        """
        self.query(f"CREATE TABLE {self.table} (id int PRIMARY KEY, v text)")
        self.query(f"INSERT INTO {self.table} VALUES (1, 'a')")
        capture(self.conn, self.table, "pk")
        self.query(f"UPDATE {self.table} SET id = 2")
        changes = self.changes()
        self.assertEqual([(k, p["op"], p["old"], p["new"]) for k, p in changes], [
            ("1", "DELETE", {"id": 1, "v": "a"}, None),
            ("2", "INSERT", None, {"id": 2, "v": "a"}),
        ])

    def test_writers_of_one_row_are_ordered(self):
        """
        Without emit's lock, the captured table's row lock orders writers of
        one row: a transaction waiting for it draws its change's id after
        the first one committed.
        """
        self.query(f"CREATE TABLE {self.table} (id int PRIMARY KEY, v int)")
        self.query(f"INSERT INTO {self.table} SELECT g, 0 FROM generate_series(1, 3) g")
        capture(self.conn, self.table, "rows")
        first = self.connect(autocommit=False)
        second = self.connect(autocommit=False)
        self.execute(f"UPDATE {self.table} SET v = 1 WHERE id = 1", conn=first)

        def update():
            self.execute(f"UPDATE {self.table} SET v = 2 WHERE id = 2", conn=second)
            self.execute(f"UPDATE {self.table} SET v = 2 WHERE id = 1", conn=second)
            second.commit()

        thread, result = in_thread(update)
        deadline = time.monotonic() + 10
        while not self.query("SELECT count(*) FROM pg_locks WHERE locktype = 'transactionid' AND NOT granted")[0][0]:
            self.assertLess(time.monotonic(), deadline, "the second writer never waited")
            time.sleep(0.01)
        self.execute(f"UPDATE {self.table} SET v = 1 WHERE id = 3", conn=first)
        first.commit()
        thread.join(10)
        self.assertNotIn("error", result)
        ids = {(p["key"]["id"], p["new"]["v"]): i for i, p in self.outbox("id, payload")}
        self.assertLess(ids[(2, 2)], ids[(3, 1)])
        self.assertGreater(ids[(1, 2)], max(ids[(1, 1)], ids[(3, 1)]))

    def test_unicode_and_large_toasted_rows(self):
        """
        Unicode keys and values and a row over a megabyte (TOASTed) come
        through whole.
        """
        self.query(f"CREATE TABLE {self.table} (k text PRIMARY KEY, body text)")
        capture(self.conn, self.table, "big")
        big = "ünïcödé 🐍 漢字 " * 80000
        self.query(f"INSERT INTO {self.table} VALUES (%s, %s)", ("🔑 ключ", big))
        self.query(f"UPDATE {self.table} SET body = body || 'x'")
        [(k1, insert), (k2, update)] = self.changes()
        self.assertEqual((k1, k2), ("🔑 ключ", "🔑 ключ"))
        self.assertGreater(len(big.encode()), 1_000_000)
        self.assertEqual(insert["new"]["body"], big)
        self.assertEqual(update["old"]["body"], big)
        self.assertEqual(update["new"]["body"], big + "x")

    def test_bulk_statement(self):
        """
        One statement changing 20,000 rows makes 20,000 changes (no lock
        per key: the lock table does not fill up) and one wake-up.
        """
        self.query(f"CREATE TABLE {self.table} (id int PRIMARY KEY, n int)")
        self.query(f"INSERT INTO {self.table} SELECT g, 0 FROM generate_series(1, 20000) g")
        capture(self.conn, self.table, "bulk")
        listener = self.connect()
        listener.cursor().execute("LISTEN \"hermes.outbox\"")
        self.query(f"UPDATE {self.table} SET n = n + 1")
        self.assertEqual(self.query("SELECT count(*), count(DISTINCT key) FROM hermes.outbox"), [(20000, 20000)])
        self.assertEqual(notifications(listener), [("hermes.outbox", "bulk")])

    def test_odd_identifiers(self):
        """
        Mixed case, spaces, dots and quotes in schema, table and column
        names work, named the SQL way; names that could inject are just
        names.
        """
        schema = 'My "Odd" Schema'
        table = "Odd.Table; DROP TABLE x; --"
        self.query(f"CREATE SCHEMA IF NOT EXISTS {quoted(schema)}")
        self.query(
            f'CREATE TABLE {quoted(schema)}.{quoted(table)} ("Id Col" int, "Ünï ""q""" text, v text,'
            f' PRIMARY KEY ("Id Col", "Ünï ""q"""))'
        )
        self.addCleanup(self.query, f"DROP TABLE {quoted(schema)}.{quoted(table)}")
        written = f"{quoted(schema)}.{quoted(table)}"
        found = capture(self.conn, written, 'topic "odd" ü')
        self.assertEqual(found.key, ["Id Col", 'Ünï "q"'])
        self.assertEqual(found.display, written)
        self.query(f'INSERT INTO {written} VALUES (1, \'a\', \'v\')')
        [(key, payload)] = self.changes()
        self.assertEqual(payload["table"], written)
        self.assertEqual(payload["key"], {"Id Col": 1, 'Ünï "q"': "a"})
        self.assertEqual(json.loads(key), [1, "a"])
        self.assertEqual(self.query("SELECT to_regclass('x')"), [(None,)])
        self.assertEqual(uncapture(self.conn, written), [capture_trigger('topic "odd" ü')])

    def test_table_names(self):
        """
        A bare name is in public; unquoted names fold to lower case (with a
        hint when that finds nothing); junk is refused in one line.
        """
        self.query(f'CREATE TABLE "Mixed_{self.table}" (id int PRIMARY KEY)')
        self.query(f"CREATE TABLE {self.table} (id int PRIMARY KEY)")
        self.query('CREATE TABLE IF NOT EXISTS "user" (id int PRIMARY KEY)')
        with self.conn.cursor() as cur:
            self.assertEqual(find_table(cur, '"user"').display, 'public."user"')
            self.assertEqual(find_table(cur, self.table.upper()).name, self.table)
            self.assertEqual(find_table(cur, f"public.{self.table}").name, self.table)
            self.assertEqual(find_table(cur, f'"Mixed_{self.table}"').name, f"Mixed_{self.table}")
            error = self.assertRaises(InvalidConfigurationException, find_table, cur, f"Mixed_{self.table}")
            self.assertIn("lower case", str(error))
            for junk in ("a.b.c.d", 'x"y', "", "a..b", "public."):
                error = self.assertRaises(InvalidConfigurationException, find_table, cur, junk)
                self.assertNotIn("\n", str(error))

    def test_refusals(self):
        """
        No primary key, a deferrable one, the outbox's own tables and a
        topic already capturing another table are refused, nothing
        attached.
        """
        self.query(f"CREATE TABLE {self.table}_nopk (a int)")
        self.query(f"CREATE TABLE {self.table}_def (a int PRIMARY KEY DEFERRABLE)")
        self.query(f"CREATE TABLE {self.table}_one (a int PRIMARY KEY)")
        self.query(f"CREATE TABLE {self.table}_two (a int PRIMARY KEY)")
        capture(self.conn, f"{self.table}_one", "taken")
        for table, topic, words in [
            (f"{self.table}_nopk", "x", "no primary key"),
            (f"{self.table}_def", "x", "deferrable"),
            ("hermes.outbox", "x", "own schema"),
            (f"{self.table}_two", "taken", "one table per topic"),
        ]:
            error = self.assertRaises(InvalidConfigurationException, capture, self.conn, table, topic)
            self.assertIn(words, str(error))
        with self.conn.cursor() as cur:
            self.assertEqual([c.topic for c in captures(cur) if c.topic == "x"], [])

    def test_recapture_and_two_topics(self):
        """
        Capturing again is harmless (one trigger, one change per row);
        one table may feed two topics; uncapture by topic, then all.
        """
        self.query(f"CREATE TABLE {self.table} (id int PRIMARY KEY)")
        capture(self.conn, self.table, "one")
        capture(self.conn, self.table, "one")
        capture(self.conn, self.table, "two")
        self.query(f"INSERT INTO {self.table} VALUES (1)")
        self.assertEqual(sorted(t for t, _, _ in self.outbox("topic, key, id")), ["one", "two"])
        self.assertEqual(uncapture(self.conn, self.table, "one"), [capture_trigger("one")])
        self.assertEqual(uncapture(self.conn, self.table, "one"), [])
        self.query(f"INSERT INTO {self.table} VALUES (2)")
        self.assertEqual(len(self.changes("two")), 2)
        self.assertEqual(uncapture(self.conn, self.table), [capture_trigger("two")])
        self.query(f"INSERT INTO {self.table} VALUES (3)")
        self.assertEqual(len(self.outbox()), 3)

    def test_renamed_key_column(self):
        """
        A key column renamed after capture makes writes fail with a clear
        error instead of keyless changes; capturing again mends it.
        """
        self.query(f"CREATE TABLE {self.table} (id int PRIMARY KEY)")
        capture(self.conn, self.table, "renamed")
        self.query(f"ALTER TABLE {self.table} RENAME COLUMN id TO ident")
        error = self.assertRaises(psycopg2.errors.UndefinedColumn, self.query, f"INSERT INTO {self.table} VALUES (1)")
        self.assertIn("run hermes-tx capture again", str(error))
        capture(self.conn, self.table, "renamed")
        self.query(f"INSERT INTO {self.table} VALUES (1)")
        self.assertEqual(self.changes()[0][1]["key"], {"ident": 1})

    def test_partitioned_table(self):
        """
        A partitioned table is captured whole and named as such; a row
        moving to another partition is a DELETE then an INSERT of its key.
        """
        self.query(
            f"CREATE TABLE {self.table} (region text, id int, v text, PRIMARY KEY (region, id))"
            " PARTITION BY LIST (region)"
        )
        self.query(f"CREATE TABLE {self.table}_eu PARTITION OF {self.table} FOR VALUES IN ('eu')")
        capture(self.conn, self.table, "parted")
        self.query(f"CREATE TABLE {self.table}_us PARTITION OF {self.table} FOR VALUES IN ('us')")
        capture(self.conn, self.table, "parted")
        with self.conn.cursor() as cur:
            self.assertEqual([c.table for c in captures(cur) if c.topic == "parted"], [f"public.{self.table}"])
        self.query(f"INSERT INTO {self.table} VALUES ('eu', 1, 'a')")
        self.query(f"UPDATE {self.table} SET region = 'us'")
        self.assertEqual(
            [(json.loads(k), p["op"], p["table"]) for k, p in self.changes()],
            [(["eu", 1], "INSERT", f"public.{self.table}"), (["eu", 1], "DELETE", f"public.{self.table}"),
             (["us", 1], "INSERT", f"public.{self.table}")],
        )

    def test_truncate_is_not_captured(self):
        """
        TRUNCATE fires no row changes (documented).
        """
        self.query(f"CREATE TABLE {self.table} (id int PRIMARY KEY)")
        self.query(f"INSERT INTO {self.table} VALUES (1)")
        capture(self.conn, self.table, "trunc")
        self.query(f"TRUNCATE {self.table}")
        self.assertEqual(self.outbox(), [])

    def test_not_installed(self):
        """
        Capturing into a schema without the outbox says to install it.
        """
        self.query(f"CREATE TABLE {self.table} (id int PRIMARY KEY)")
        error = self.assertRaises(InvalidConfigurationException, capture, self.conn, self.table, "t", "nowhere")
        self.assertIn("hermes-tx install", str(error))


class CaptureRoundTripTests(OutboxDatabase, unittest.TestCase):
    """
    Property tests: whatever text keys and values, the change's key is the
    primary key's value and its row is the row.
    """

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        conn = psycopg2.connect(cls.dsn)
        try:
            conn.autocommit = True
            conn.cursor().execute("CREATE TABLE prop (k text PRIMARY KEY, v text, j jsonb, n bigint)")
            conn.cursor().execute("CREATE TABLE prop2 (a text, b bigint, n int, PRIMARY KEY (a, b))")
            capture(conn, "prop", "prop")
            capture(conn, "prop2", "prop2")
        finally:
            conn.close()

    def round_trip(self, table, insert, params):
        """
        Insert a row, update it, delete it.

        @return: the (key, payload) of the three changes.
        """
        conn = self.connect()
        with conn.cursor() as cur:
            cur.execute("TRUNCATE prop, prop2, hermes.outbox")
            cur.execute(insert, params)
            cur.execute(f"UPDATE {table} SET n = 1")
            cur.execute(f"DELETE FROM {table}")
            cur.execute("SELECT key, payload FROM hermes.outbox WHERE topic = %s ORDER BY id", (table,))
            changes = cur.fetchall()
        self.assertEqual([p["op"] for _, p in changes], ["INSERT", "UPDATE", "DELETE"])
        return changes

    @settings(max_examples=40, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
    @given(key=PG_TEXT, value=st.one_of(st.none(), PG_TEXT), number=st.integers(-(2**63), 2**63 - 1),
           data=st.recursive(st.none() | st.booleans() | st.integers(-(10**6), 10**6) | PG_TEXT,
                             lambda inner: st.lists(inner, max_size=3) | st.dictionaries(PG_TEXT, inner, max_size=3),
                             max_leaves=8))
    def test_single_key(self, key, value, number, data):
        changes = self.round_trip(
            "prop", "INSERT INTO prop VALUES (%s, %s, %s::jsonb, %s)", (key, value, json.dumps(data), number)
        )
        self.assertEqual([k for k, _ in changes], [key] * 3)
        row = {"k": key, "v": value, "j": data, "n": number}
        self.assertEqual([(p["old"], p["new"]) for _, p in changes],
                         [(None, row), (row, dict(row, n=1)), (dict(row, n=1), None)])

    @settings(max_examples=30, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
    @given(a=PG_TEXT, b=st.integers(-(2**63), 2**63 - 1))
    def test_composite_key(self, a, b):
        changes = self.round_trip("prop2", "INSERT INTO prop2 VALUES (%s, %s, 0)", (a, b))
        self.assertEqual([json.loads(k) for k, _ in changes], [[a, b]] * 3)
        self.assertEqual([p["key"] for _, p in changes], [{"a": a, "b": b}] * 3)
