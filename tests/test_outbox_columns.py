"""
Choosing the columns a capture sends (C{hermes-tx capture --columns} /
C{--exclude-columns}, L{hermes_tx.outbox.columns},
L{hermes_tx.outbox.capture.row_json}): a column left out never appears in
any change, written by a role that is not a superuser, the capture made by
the operator's role through the command.
"""

import json

import psycopg2
from hypothesis import given, settings
from hypothesis import strategies as st
from psycopg2 import sql
from twisted.trial import unittest

from hermes_tx.exceptions import InvalidConfigurationException
from hermes_tx.outbox.capture import Capture, capture, captures, row_json
from hermes_tx.outbox.columns import parse_columns, show, show_list
from hermes_tx.outbox.schema import install
from tests.support.outbox import OutboxDatabase, drop_database, make_database, quoted
from tests.support.shared import shared_primary
from tests.support.roles import OutboxRoles

MARKER = "SECRET-MARKER-1"

#: any name a column may have: not empty, no NUL, at most 63 bytes
COLUMN_NAMES = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
                       min_size=1, max_size=63).filter(lambda n: len(n.encode("utf-8")) <= 63)


class ParseColumnsTests(unittest.TestCase):
    """
    L{parse_columns}: names as in SQL; L{show} writes them back.
    """

    def test_names(self):
        self.assertEqual(parse_columns("a,b , C"), ["a", "b", "c"])
        self.assertEqual(parse_columns(' "Odd, ""Name""" , plain,"UP" '), ['Odd, "Name"', "plain", "UP"])
        self.assertEqual(parse_columns("a,a,\"a\""), ["a"])
        self.assertEqual(parse_columns("ünï_$1"), ["ünï_$1"])
        self.assertEqual(parse_columns('" spaced "'), [" spaced "])

    def test_refused(self):
        """
        Junk is refused in one line naming the option.
        """
        for junk in ("", "a,", ",a", "a,,b", "a b", "1a", "a.b", '"open', '"a"b', '""', "a;drop",
                     '"a\x00"', "x" * 64):
            error = self.assertRaises(InvalidConfigurationException, parse_columns, junk, "--columns")
            self.assertTrue(str(error).startswith("--columns: "), str(error))
            self.assertNotIn("\n", str(error))

    def test_show_round_trips(self):
        names = ["a", "Mixed", "with space", 'q"uote', "a,b", "ünï", "select", "_x$"]
        self.assertEqual([show(n) for n in names[:3]], ["a", '"Mixed"', '"with space"'])
        self.assertEqual(parse_columns(show_list(names)), names)

    @settings(max_examples=300, deadline=None, database=None)
    @given(st.lists(COLUMN_NAMES, min_size=1, max_size=5, unique=True))
    def test_any_names_round_trip(self, names):
        """
        Whatever the names, L{show_list} writes a list L{parse_columns}
        reads back exactly.
        """
        self.assertEqual(parse_columns(show_list(names)), names)

    def test_capture_records(self):
        """
        A L{Capture} reads its selection from the trigger's arguments;
        those of earlier versions have none.
        """
        old = Capture.from_arguments("public.t", 1, "trg", ["t", "", "a", "b"])
        self.assertEqual((old.key, old.columns, old.excluded, old.sends()), (("a", "b"), None, None, "all columns"))
        only = Capture.from_arguments("public.t", 1, "trg", ["t", "", "id", "", "only", "id", "Name x"])
        self.assertEqual((only.key, only.columns, only.excluded), (("id",), ("id", "Name x"), None))
        self.assertEqual(only.sends(), 'only id, "Name x"')
        but = Capture.from_arguments("public.t", 1, "trg", ["t", "public.t", "id", "", "except", "pw"])
        self.assertEqual((but.key, but.columns, but.excluded, but.sends()), (("id",), None, ("pw",), "all but pw"))


class ColumnsAsRolesTests(OutboxRoles, unittest.TestCase):
    """
    The operator captures its tables through C{hermes-tx capture}; the app
    role (only its tables' rights) writes them.
    """

    #: (label, CREATE TABLE tail, INSERT values, key-changing UPDATE)
    SHAPES = [
        ("plain", "(id int PRIMARY KEY, name text, secret text, note text)",
         "(1, 'n1', %(m)s, 'x'), (2, 'n2', %(m)s, 'y')", "SET id = id + 10 WHERE id = 1"),
        ("composite", "(a int, b text, name text, secret text, note text, PRIMARY KEY (b, a))",
         "(1, 'k', 'n1', %(m)s, 'x'), (2, 'k', 'n2', %(m)s, 'y')", "SET b = 'kk' WHERE a = 1"),
        ("parted", "(region text, id int, name text, secret text, note text, PRIMARY KEY (region, id))"
         " PARTITION BY LIST (region)",
         "('eu', 1, 'n1', %(m)s, 'x'), ('eu', 2, 'n2', %(m)s, 'y')", "SET region = 'us' WHERE id = 1"),
    ]

    def setUp(self):
        super().setUp()
        self.clear()

    def ok(self, *args):
        status, out, err = self.cli("operator", *args)
        self.assertEqual((status, err), (0, ""), out)
        return out

    def make(self, label, tail):
        table = f"cols_{label}"
        self.query(f"DROP TABLE IF EXISTS {table}")
        self.query(f"CREATE TABLE {table} {tail}")
        if label == "parted":
            self.query(f"CREATE TABLE {table}_eu PARTITION OF {table} FOR VALUES IN ('eu')")
            self.query(f"CREATE TABLE {table}_us PARTITION OF {table} FOR VALUES IN ('us')")
        for owned in [table] + ([f"{table}_eu", f"{table}_us"] if label == "parted" else []):
            self.query(f'ALTER TABLE {owned} OWNER TO "{self.roles["operator"]}"')
        self.query(f'GRANT SELECT, INSERT, UPDATE, DELETE ON {table} TO "{self.roles["app"]}"')
        return table

    def write(self, table, values, key_update):
        """
        As the app role: insert two rows, update one without touching the
        key, change the other's key, delete both.
        """
        self.run_as("app", f"INSERT INTO {table} VALUES {values}", {"m": MARKER})
        self.run_as("app", f"UPDATE {table} SET note = 'changed', secret = secret || '!' WHERE name = 'n2'")
        self.run_as("app", f"UPDATE {table} {key_update}")
        self.run_as("app", f"DELETE FROM {table}")

    def check(self, table, values, key_update, sent):
        """
        Write C{table}; every change's old and new hold exactly the columns
        C{sent}, and the marker is nowhere in the outbox.
        """
        self.clear()
        self.write(table, values, key_update)
        changes = [p for p, in self.outbox("payload")]
        self.assertEqual([c["op"] for c in changes],
                         ["INSERT", "INSERT", "UPDATE", "DELETE", "INSERT", "DELETE", "DELETE"])
        for change in changes:
            for row in (change["old"], change["new"]):
                if row is not None:
                    self.assertEqual(sorted(row), sorted(sent), change)
        self.assertEqual(self.query(f"SELECT count(*) FROM {quoted(self.schema)}.outbox"
                                    " WHERE strpos(payload::text, %s) > 0 OR strpos(key, %s) > 0",
                                    (MARKER, MARKER)), [(0,)])

    def test_marker_never_leaves(self):
        """
        On a plain, a composite-key and a partitioned table: with the
        secret column excluded, and with it not among the columns listed,
        no INSERT, UPDATE (of the key too) or DELETE carries it; capturing
        again without a selection sends every column again (so the check
        can see the marker).
        """
        for label, tail, values, key_update in self.SHAPES:
            table = self.make(label, tail)
            key = {"plain": ["id"], "composite": ["b", "a"], "parted": ["region", "id"]}[label]
            everything = key + [c for c in ("name", "secret", "note") if c not in key]
            out = self.ok("capture", "--table", table, "--topic", label, "--exclude-columns", "secret")
            self.assertIn("sending all but secret", out)
            self.check(table, values, key_update, [c for c in everything if c != "secret"])
            out = self.ok("capture", "--table", table, "--topic", label, "--columns", "NAME")
            self.assertIn(f"sending only {', '.join(key)}, name", out)
            self.check(table, values, key_update, key + ["name"])
            out = self.ok("capture", "--table", table, "--topic", label)
            self.assertIn("sending all columns", out)
            self.clear()
            self.write(table, values, key_update)
            self.assertIn(MARKER, json.dumps([p for p, in self.outbox("payload")]))

    def test_listing(self):
        """
        C{hermes-tx captures} shows each captured table, its topic, key and
        what it sends (names quoted as written); C{--json} the same.
        """
        table = self.make("listed", '(id int PRIMARY KEY, "Odd, ""Name""" text, "Sec Ret" text)')
        self.ok("capture", "--table", table, "--topic", "odd", "--columns", '"Odd, ""Name"""')
        self.ok("capture", "--table", table, "--topic", "but", "--exclude-columns", ' "Sec Ret" ')
        self.ok("capture", "--table", table, "--topic", "all")
        lines = self.ok("captures").splitlines()
        self.assertEqual([line.split()[:2] for line in lines],
                         [["TABLE", "TOPIC"], [f"public.{table}", "all"], [f"public.{table}", "but"],
                          [f"public.{table}", "odd"]])
        self.assertTrue(lines[1].endswith("all columns"))
        self.assertTrue(lines[2].endswith('all but "Sec Ret"'))
        self.assertTrue(lines[3].endswith('only id, "Odd, ""Name"""'), lines[3])
        listed = json.loads(self.ok("captures", "--json"))
        self.assertEqual(listed[2], {"table": f"public.{table}", "topic": "odd", "key": ["id"],
                                     "columns": ["id", 'Odd, "Name"'], "excluded": None})
        self.run_as("app", f'INSERT INTO {table} VALUES (1, %s, %s)', ("v", MARKER))
        by_topic = {t: p["new"] for t, p in self.outbox("topic, payload")}
        self.assertEqual(by_topic["odd"], {"id": 1, 'Odd, "Name"': "v"})
        self.assertEqual(by_topic["but"], {"id": 1, 'Odd, "Name"': "v"})
        self.assertEqual(by_topic["all"], {"id": 1, 'Odd, "Name"': "v", "Sec Ret": MARKER})

    def test_mistakes_are_one_line(self):
        """
        Unknown columns (all named), a key column excluded, both options,
        a malformed list: one line, nothing attached.
        """
        table = self.make("mistakes", '(id int PRIMARY KEY, "Email" text, v text)')
        cases = [
            (["--columns", "v,nope,\"Also no\""], 1, f'table public.{table} has no columns nope, "Also no"'
                                                     ' (its columns: id, "Email", v)'),
            (["--columns", "email"], 1, 'has no column email (unquoted names are folded to lower case:'
                                        ' did you mean "Email"?)'),
            (["--exclude-columns", "id"], 1, "id is in the primary key"),
            (["--columns", "v", "--exclude-columns", "id"], 2, "not allowed with argument"),
            (["--columns", "a b"], 2, "needs double quotes"),
            (["--exclude-columns", ""], 2, "an empty name"),
        ]
        for args, expected, words in cases:
            status, out, err = self.cli("operator", "capture", "--table", table, "--topic", "m", *args)
            self.assertEqual((status, out), (expected, ""), err)
            self.assertIn(words, err)
            self.assertEqual(len(err.splitlines()), 1, err)
        with self.connect().cursor() as cur:
            self.assertEqual([c for c in captures(cur) if c.topic == "m"], [])


class RowJsonTests(OutboxDatabase, unittest.TestCase):
    """
    L{row_json} renders a row exactly as the trigger renders C{new}.
    """

    def setUp(self):
        super().setUp()
        self.clear()
        self.conn = self.connect()

    def compare(self, table, **selection):
        """
        Capture C{table} with C{selection}, update each of its rows
        through the trigger, and compare each change's C{new} with
        L{row_json}'s rendering (the JSON text PostgreSQL prints).
        """
        self.clear()
        capture(self.conn, table, table, **selection)
        self.query(f"UPDATE {table} SET id = id")
        with self.conn.cursor() as cur:
            [found] = [c for c in captures(cur) if c.topic == table]
            cur.execute(sql.SQL("SELECT ({})::text FROM {} AS {}").format(
                row_json(found, "odd alias"), sql.Identifier(table), sql.Identifier("odd alias")))
            rendered = sorted(r for r, in cur.fetchall())
        updated = sorted(p for p, in self.outbox("(payload -> 'new')::text"))
        self.assertEqual(len(rendered), 3)
        self.assertEqual(rendered, updated)
        return [json.loads(r) for r in rendered]

    def test_types_and_selections(self):
        """
        Numbers, times, arrays, JSON, composites, bytea, odd names: the
        same JSON for every column, all but some, and only some; a
        selection wider than one function call's arguments too.
        """
        self.query("DROP TABLE IF EXISTS rj_types")
        self.query("DROP TYPE IF EXISTS rj_pair")
        self.query("CREATE TYPE rj_pair AS (x int, y text)")
        self.query(
            'CREATE TABLE rj_types (id bigint PRIMARY KEY, n numeric, f float8, t timestamptz, d date,'
            ' arr int[], j json, jb jsonb, p rj_pair, b bytea, "Odd ""Col""" text, secret text,'
            ' g int GENERATED ALWAYS AS (id * 2) STORED)')
        self.query(
            "INSERT INTO rj_types (id, n, f, t, d, arr, j, jb, p, b, \"Odd \"\"Col\"\"\", secret) VALUES"
            " (1, 1.50, 'NaN', '2024-02-29 12:00:00.5+02', '2024-02-29', '{1,NULL}', '{\"a\": [1, 2]}',"
            "  '{\"z\": null}', ROW(1, 'ü'), '\\x00ff', 'q\"', %s),"
            " (2, NULL, 'Infinity', NULL, NULL, '{}', 'null', '[]', NULL, NULL, NULL, NULL),"
            " (3, -1e-20, 1.25, 'epoch', '-infinity', NULL, '\"s\"', '1', ROW(NULL, NULL), '', '', '')",
            (MARKER,))
        every = self.compare("rj_types")
        self.assertIn(MARKER, json.dumps(every))
        but = self.compare("rj_types", excluded=["secret", "jb"])
        self.assertNotIn(MARKER, json.dumps(but))
        self.assertEqual(sorted(but[0]), sorted(set(every[0]) - {"secret", "jb"}))
        only = self.compare("rj_types", columns=['Odd "Col"', "p", "g", "n", "f"])
        self.assertEqual(sorted(only[0]), sorted(["id", 'Odd "Col"', "p", "g", "n", "f"]))

        self.query("DROP TABLE IF EXISTS rj_wide")
        names = [f"c{i}" for i in range(95)]
        self.query(f"CREATE TABLE rj_wide (id int PRIMARY KEY, {', '.join(n + ' int' for n in names)})")
        for i in range(1, 4):
            self.query(f"INSERT INTO rj_wide VALUES ({i}, {', '.join(str(i * 100 + j) for j in range(95))})")
        wide = self.compare("rj_wide", columns=names[:90])
        self.assertEqual(len(wide[0]), 91)


class UpgradeTests(unittest.TestCase):
    """
    Triggers attached by version 6 keep working after the upgrade to
    version 7, which chooses columns; a selection is refused before it.
    """

    def test_old_triggers_keep_working(self):
        cluster = shared_primary()
        dbname = make_database(cluster, "columns_upgrade")
        self.addCleanup(drop_database, cluster, dbname)
        conn = psycopg2.connect(cluster.dsn(dbname))
        self.addCleanup(conn.close)
        install(conn, target=6)
        cluster.execute("CREATE TABLE one (id int PRIMARY KEY, v text)", dbname=dbname)
        cluster.execute("CREATE TABLE two (a int, b int, v text, PRIMARY KEY (a, b))"
                        " PARTITION BY RANGE (a)", dbname=dbname)
        cluster.execute("CREATE TABLE two_all PARTITION OF two DEFAULT", dbname=dbname)
        capture(conn, "one", "one")
        capture(conn, "two", "two")
        error = self.assertRaises(InvalidConfigurationException, capture, conn, "one", "one", excluded=["v"])
        self.assertIn("run hermes-tx install", str(error))
        before = cluster.execute("SELECT tgname, tgargs FROM pg_trigger WHERE NOT tgisinternal ORDER BY 1",
                                 dbname=dbname)
        install(conn)
        self.assertEqual(cluster.execute("SELECT tgname, tgargs FROM pg_trigger WHERE NOT tgisinternal"
                                         " ORDER BY 1", dbname=dbname), before)
        cluster.execute("INSERT INTO one VALUES (1, 'a')", dbname=dbname)
        cluster.execute("UPDATE one SET id = 2", dbname=dbname)
        cluster.execute("INSERT INTO two VALUES (1, 2, 'b')", dbname=dbname)
        cluster.execute("DELETE FROM two", dbname=dbname)
        rows = cluster.execute("SELECT topic, key, payload FROM hermes.outbox ORDER BY id", dbname=dbname)
        self.assertEqual([(t, k, p["op"], p["old"], p["new"]) for t, k, p in rows], [
            ("one", "1", "INSERT", None, {"id": 1, "v": "a"}),
            ("one", "1", "DELETE", {"id": 1, "v": "a"}, None),
            ("one", "2", "INSERT", None, {"id": 2, "v": "a"}),
            ("two", "[1, 2]", "INSERT", None, {"a": 1, "b": 2, "v": "b"}),
            ("two", "[1, 2]", "DELETE", {"a": 1, "b": 2, "v": "b"}, None),
        ])
        self.assertEqual(rows[3][2]["key"], {"a": 1, "b": 2})
        capture(conn, "one", "one", excluded=["v"])
        cluster.execute("UPDATE one SET v = 'z'", dbname=dbname)
        last = cluster.execute("SELECT payload FROM hermes.outbox ORDER BY id DESC LIMIT 1", dbname=dbname)
        self.assertEqual((last[0][0]["old"], last[0][0]["new"]), ({"id": 2}, {"id": 2}))
