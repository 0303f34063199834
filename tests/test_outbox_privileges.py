"""
Least privilege (L{hermes_tx.outbox.privileges}): a writer, a consumer and
an operator run as roles that are not superusers, each with exactly the
rights the docs name (C{hermes-tx install --grant-...}); a captured
table's writers need nothing from the outbox; a missing right is one line
naming it.
"""

import uuid

import psycopg2
import psycopg2.errors
from twisted.internet import defer
from twisted.trial import unittest

from hermes_tx.components import Component
from hermes_tx.outbox import privileges
from hermes_tx.outbox import sql as statements
from hermes_tx.outbox.schema import install
from hermes_tx.outcomes import Retry
from tests.support.outbox import OutboxDatabase, drop_database, make_database
from tests.support.roles import OutboxRoles as _Roles, role_name
from tests.test_outbox_cli import hermes_tx
from tests.support.shared import wait_until

#: every function of the schema that a part executes: each runs with its
#: owner's rights, its search_path pinned
PART_FUNCTIONS = sorted({f for p in privileges.PARTS.values() for f in p.functions})


class SchemaRightsTests(_Roles, unittest.TestCase):
    def test_functions_run_as_their_owner_and_only_for_grantees(self):
        """
        Each function a part executes is SECURITY DEFINER with search_path
        pinned; no function of the schema is executable by PUBLIC, and no
        table is readable by it.
        """
        rows = self.query(
            "SELECT p.proname, p.prosecdef, p.proconfig,"
            " EXISTS (SELECT 1 FROM aclexplode(coalesce(p.proacl, acldefault('f', p.proowner))) a"
            "         WHERE a.grantee = 0)"
            " FROM pg_proc p WHERE p.pronamespace = 'hermes'::regnamespace ORDER BY 1"
        )
        by_name = {name: (definer, config, public) for name, definer, config, public in rows}
        # The claims also fix how their statements are planned (version 4).
        planning = ["plan_cache_mode=force_generic_plan", "enable_seqscan=off",
                    "enable_bitmapscan=off", "jit=off"]
        for name in PART_FUNCTIONS:
            expected = ["search_path=pg_catalog, pg_temp"] + (planning if name in ("claim", "claim_runs") else [])
            self.assertEqual(by_name[name][:2], (True, expected), name)
        self.assertEqual([name for name, (_, _, public) in by_name.items() if public], [])
        tables = self.query(
            "SELECT c.relname FROM pg_class c, aclexplode(coalesce(c.relacl, acldefault('r', c.relowner))) a"
            " WHERE c.relnamespace = 'hermes'::regnamespace AND a.grantee = 0")
        self.assertEqual(tables, [])

    def test_each_part_has_exactly_its_rights(self):
        """
        What each role may do in the schema is what its part lists: USAGE,
        EXECUTE on its functions, its table privileges; nothing else.
        """
        for name, part in privileges.PARTS.items():
            role = self.roles[name]
            functions = self.query(
                "SELECT p.proname FROM pg_proc p WHERE p.pronamespace = 'hermes'::regnamespace"
                " AND has_function_privilege(%s, p.oid, 'EXECUTE') ORDER BY 1", (role,))
            self.assertEqual([f for f, in functions], sorted(part.functions), name)
            tables = self.query(
                "SELECT c.relname, p FROM pg_class c, unnest(ARRAY['SELECT', 'INSERT', 'UPDATE', 'DELETE',"
                " 'TRUNCATE', 'REFERENCES', 'TRIGGER']) p WHERE c.relnamespace = 'hermes'::regnamespace"
                " AND c.relkind = 'r' AND has_table_privilege(%s, c.oid, p) ORDER BY 1, 2", (role,))
            expected = sorted((t, p) for t, privs in part.tables for p in privs)
            self.assertEqual(sorted(tables), expected, name)
            self.assertEqual(self.query("SELECT has_schema_privilege(%s, 'hermes', 'USAGE'),"
                                        " has_schema_privilege(%s, 'hermes', 'CREATE')", (role, role)),
                             [(True, False)], name)


class WriterTests(_Roles, unittest.TestCase):
    def setUp(self):
        super().setUp()
        self.clear()
        self.query("TRUNCATE public.items")

    def test_captured_table_needs_no_grant(self):
        """
        A role with only its own table's rights keeps inserting, updating
        and deleting a captured table; the changes are in the outbox,
        which it can neither read nor write itself.
        """
        status, out, err = self.cli("operator", "capture", "--table", "items", "--topic", "items")
        self.assertEqual((status, err), (0, ""), out)
        self.run_as("app", "INSERT INTO public.items VALUES (1, 'a'), (2, 'b')")
        self.run_as("app", "UPDATE public.items SET v = 'c' WHERE id = 1")
        self.run_as("app", "DELETE FROM public.items WHERE id = 2")
        self.assertEqual([(k, p["op"]) for k, p in self.outbox("key, payload")],
                         [("1", "INSERT"), ("2", "INSERT"), ("1", "UPDATE"), ("2", "DELETE")])
        self.denied("app", "SELECT * FROM hermes.outbox")
        self.denied("app", "SELECT hermes.emit('items', '1', '{}')")
        e = self.denied("app", "CREATE TRIGGER sneaky AFTER INSERT ON public.items"
                               " FOR EACH ROW EXECUTE FUNCTION hermes.capture('items', '', 'id')")
        self.assertIn("permission denied", str(e))

    def test_emit_needs_the_writer_grant(self):
        [(change,)] = self.run_as("writer", "SELECT hermes.emit('t', 'k', '{\"a\": 1}')")
        self.assertEqual(self.outbox("id, key"), [(change, "k")])
        self.denied("writer", "SELECT * FROM hermes.outbox")
        self.denied("writer", "DELETE FROM hermes.dead_letters")
        e = self.denied("nobody", "SELECT hermes.emit('t', 'k', '{}')")
        line = privileges.explain_denied(e, "writer", self.roles["nobody"])
        self.assertIn("USAGE ON SCHEMA hermes", line)
        self.assertIn(f"hermes-tx install --grant-writer {self.roles['nobody']}", line)


class Failing(Component):
    """
    Fails every change (a receiver that is down), counting deliveries.
    """

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.seen = []

    def execute(self, change):
        if change.kind == "change":
            self.seen.append(change.id)
            raise Retry("receiver down")
        return None


class ConsumerTests(_Roles, unittest.TestCase):
    def setUp(self):
        super().setUp()
        self.clear()

    def consume(self, statement, *params):
        return self.run_as("consumer", statement, params)

    def test_every_statement(self):
        """
        The consumer's role runs every statement of
        L{hermes_tx.outbox.sql}, a release moving changes to the dead
        letters included, and nothing more.
        """
        ids = [self.emit("t", f"k{i}") for i in range(5)]
        token = str(uuid.uuid4())
        rows = self.consume(statements.claim(), ["t"], 10, token, 30.0)
        self.assertEqual([r[0] for r in rows], ids)
        self.assertEqual(self.consume(statements.extend(), ids, token, 60.0), [(i,) for i in ids])
        within = str(uuid.uuid4())
        self.assertEqual(self.consume(statements.claim_within(), ["t"], 10, within, 30.0, 1 << 20, True), [])
        self.assertEqual(self.consume(statements.ack(), ids[:1], token), [(ids[0],)])
        self.assertEqual(sorted(self.consume(statements.release(), ids[1:3], token, [0, 0], ["x", None], 1)),
                         [(ids[1], "dead"), (ids[2], "dead")])
        self.assertEqual(self.consume(statements.dead_letter(), ids[3:4], token, ["bad"]), [(ids[3],)])
        self.assertEqual(self.consume(statements.unclaim(), ids[4:], token), [(ids[4],)])
        self.assertEqual([r[:3] + r[4:] for r in self.consume(statements.stats())], [("t", 1, 0, 3)])
        self.assertEqual([r[:3] + r[4:] for r in self.consume(statements.figures(), ["t"], 10)],
                         [("t", 1, 0, 3, False)])
        self.denied("consumer", "SELECT * FROM hermes.outbox")
        self.denied("consumer", "SELECT * FROM hermes.retry_dead_letters('{1}', false)")

    @defer.inlineCallbacks
    def test_max_attempts_holds(self):
        """
        Issue 18: a consumer that could not write its dead letters failed
        every release and delivered past --max-attempts.  As the consumer
        role, a change failing every time goes to the dead letters after
        exactly max_attempts deliveries.
        """
        from hermes_tx.client import Client
        from hermes_tx.connectors import PostgresConnector
        from hermes_tx.outbox.consumer import OutboxConsumer

        change = self.emit("t", "k")
        failing = Failing(backoff_limit=0.2)
        client = Client(self.dsn_of("consumer"), role_check_interval=0.5)
        consumer = OutboxConsumer(PostgresConnector(self.dsn_of("consumer")), ["t"],
                                  poll_interval=0.1, max_attempts=2, retry_delay=0.1, max_retry_delay=0.1)
        client.add_outbox(consumer)
        client.add_processor(failing)
        client.startService()
        self.addCleanup(lambda: client.stopService() if client.running else None)
        yield wait_until(lambda: self.query("SELECT id, attempts FROM hermes.dead_letters"),
                         timeout=20, what="the dead letter")
        self.assertEqual(self.query("SELECT id, attempts FROM hermes.dead_letters"), [(change, 2)])
        self.assertEqual(failing.seen, [change, change])

    def test_missing_grants_are_one_line(self):
        """
        Each consumer statement run by a role without the grants: one line
        naming the right and the fix; with USAGE alone, the function.
        """
        params = {"claim": (["t"], 1, str(uuid.uuid4()), 1.0), "ack": ([1], str(uuid.uuid4())),
                  "stats": ()}
        for name, args in params.items():
            e = self.denied("nobody", getattr(statements, name)(), args)
            line = privileges.explain_denied(e, privileges.CONSUMER, self.roles["nobody"])
            self.assertEqual(line.count("\n"), 0)
            self.assertIn("needs USAGE ON SCHEMA hermes", line)
            self.assertIn("--grant-consumer", line)
        self.query(f'GRANT USAGE ON SCHEMA hermes TO "{self.roles["nobody"]}"')
        self.addCleanup(self.query, f'REVOKE USAGE ON SCHEMA hermes FROM "{self.roles["nobody"]}"')
        e = self.denied("nobody", statements.ack(), ([1], str(uuid.uuid4())))
        self.assertEqual(
            privileges.explain_denied(e, privileges.CONSUMER, "app"),
            "permission denied for function ack: role 'app' needs EXECUTE ON FUNCTION hermes.ack"
            " (to consume the outbox: hermes-tx install --grant-consumer app)")


class OperatorTests(_Roles, unittest.TestCase):
    def setUp(self):
        super().setUp()
        self.clear()

    def ok(self, part, *args):
        status, out, err = self.cli(part, *args)
        self.assertEqual((status, err), (0, ""), out)
        return out

    def test_every_command(self):
        """
        The operator's role runs every hermes-tx command but install:
        status, dead-letters (list, retry, purge), emit, capture and
        uncapture of a table it owns, and prints grants.
        """
        self.assertIn("capturing public.items", self.ok("operator", "capture", "--table", "items",
                                                        "--topic", "ops"))
        ids = [int(self.ok("operator", "emit", "--topic", "t", "--key", f"k{i}", "--payload", "{}"))
               for i in range(3)]
        token, _ = self.claim(["t"])
        self.query(statements.dead_letter(), (ids, token, ["bad", "bad", "bad"]))
        self.assertIn("DEAD LETTERS", self.ok("operator", "status"))
        self.assertEqual(len(self.ok("operator", "dead-letters").splitlines()), 4)
        self.assertEqual(self.ok("operator", "dead-letters", "--retry", str(ids[0])), "retried 1 dead letter\n")
        self.assertEqual(self.ok("operator", "dead-letters", "--purge", str(ids[1])), "purged 1 dead letter\n")
        self.assertEqual(self.ok("operator", "dead-letters", "--retry-all"), "retried 1 dead letter\n")
        self.assertIn("GRANT USAGE", self.ok("operator", "grants", "--consumer", "someone"))
        self.assertIn("1 trigger dropped", self.ok("operator", "uncapture", "--table", "items"))

    def test_missing_grant_is_one_line(self):
        for args, words in [
            (("status",), ["USAGE ON SCHEMA hermes", "--grant-operator"]),
            (("emit", "--topic", "t", "--key", "k", "--payload", "1"), ["USAGE ON SCHEMA hermes", "--grant-writer"]),
        ]:
            status, out, err = self.cli("nobody", *args)
            self.assertEqual(status, 1, err)
            self.assertEqual(len(err.splitlines()), 1, err)
            for word in words:
                self.assertIn(word, err)
        status, out, err = self.cli("consumer", "dead-letters")
        self.assertEqual(status, 1)
        self.assertIn("--grant-operator", err)
        status, out, err = self.cli("app", "capture", "--table", "items", "--topic", "x")
        self.assertEqual((status, len(err.splitlines())), (1, 1), err)


class GrantsCommandTests(OutboxDatabase, unittest.TestCase):
    """
    C{hermes-tx grants} prints what C{install --grant-...} runs; a role
    given exactly those statements works as its part.
    """

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.role = role_name("printed")
        cls.cluster.execute(f'CREATE ROLE "{cls.role}" LOGIN')

    @classmethod
    def tearDownClass(cls):
        drop_database(cls.cluster, cls.dbname)
        cls.cluster.execute(f'DROP ROLE IF EXISTS "{cls.role}"')

    def test_printed_statements_suffice(self):
        status, out, err = hermes_tx("grants", "--consumer", self.role, "--dsn", self.dsn)
        self.assertEqual((status, err), (0, ""))
        self.assertTrue(out.startswith(f"-- {self.role}: to consume the outbox\nGRANT USAGE ON SCHEMA"), out)
        self.query(out)
        conn = psycopg2.connect(self.cluster.dsn(self.dbname, user=self.role))
        conn.autocommit = True
        self.addCleanup(conn.close)
        change = self.emit("t", "k")
        token, rows = self.claim(["t"], conn=conn)
        self.assertEqual([r[0] for r in rows], [change])
        self.assertEqual(self.ack([change], token, conn=conn), [change])
        status, out, err = hermes_tx("grants", "--dsn", self.dsn)
        self.assertEqual(status, 2)


class UpgradeTests(unittest.TestCase):
    """
    Roles that wrote version 2's tables directly keep working after the
    upgrade to version 3, through the functions; version 2's dead letters
    are superseded like the others.
    """

    def test_old_grants_carried_over(self):
        from tests.support.shared import shared_primary

        cluster = shared_primary()
        dbname = make_database(cluster, "upgrade_rights")
        writer, consumer = role_name("oldwriter"), role_name("oldconsumer")
        for role in (writer, consumer):
            cluster.execute(f'CREATE ROLE "{role}" LOGIN')
            self.addCleanup(cluster.execute, f'DROP ROLE IF EXISTS "{role}"')
        self.addCleanup(drop_database, cluster, dbname)  # (before the roles)
        conn = psycopg2.connect(cluster.dsn(dbname))
        self.addCleanup(conn.close)
        install(conn, target=2)
        cluster.execute("SELECT hermes.emit('t', 'k', '{}')", dbname=dbname)
        cluster.execute("WITH c AS (SELECT * FROM hermes.claim('{t}', 1, gen_random_uuid(), 30))"
                        " INSERT INTO hermes.dead_letters (id, topic, key, payload, created_at, attempts)"
                        " SELECT c.id, c.topic, c.key, c.payload::jsonb, now(), 1 FROM c", dbname=dbname)
        cluster.execute("DELETE FROM hermes.outbox", dbname=dbname)
        for statement in (f'GRANT USAGE ON SCHEMA hermes TO "{writer}", "{consumer}"',
                          f'GRANT INSERT ON hermes.outbox TO "{writer}"',
                          f'GRANT SELECT, UPDATE, DELETE ON hermes.outbox TO "{consumer}"',
                          f'GRANT SELECT, INSERT ON hermes.dead_letters TO "{consumer}"'):
            cluster.execute(statement, dbname=dbname)
        install(conn)
        as_writer = psycopg2.connect(cluster.dsn(dbname, user=writer))
        as_consumer = psycopg2.connect(cluster.dsn(dbname, user=consumer))
        for c in (as_writer, as_consumer):
            c.autocommit = True
            self.addCleanup(c.close)
        as_writer.cursor().execute("SELECT hermes.emit('t', 'k', '{}')")
        cur = as_consumer.cursor()
        token = str(uuid.uuid4())
        cur.execute(statements.claim(), (["t"], 10, token, 30.0))
        [row] = cur.fetchall()
        cur.execute(statements.ack(), ([row[0]], token))
        self.assertEqual(cur.fetchall(), [(row[0],)])
        # the dead letter of version 2 is superseded by the newer change
        self.assertEqual(cluster.execute("SELECT superseded_by FROM hermes.dead_letters", dbname=dbname),
                         [(row[0],)])
        # a consumer may read the figures of /metrics (version 6)
        cur.execute(statements.figures(), (["t"], 10))
        self.assertEqual([r[:3] + r[4:] for r in cur.fetchall()], [("t", 0, 0, 1, False)])


class OwnerTests(unittest.TestCase):
    """
    C{install --owner ROLE}: everything made belongs to ROLE, so the
    functions run with its rights, not a superuser's (no note printed).
    """

    def test_owner(self):
        from tests.support.shared import shared_primary

        cluster = shared_primary()
        dbname = make_database(cluster, "owner")
        owner = role_name("owner")
        cluster.execute(f'CREATE ROLE "{owner}" NOLOGIN')
        self.addCleanup(cluster.execute, f'DROP ROLE IF EXISTS "{owner}"')
        self.addCleanup(drop_database, cluster, dbname)  # (before the role)
        cluster.execute(f'GRANT CREATE ON DATABASE "{dbname}" TO "{owner}"')
        status, out, err = hermes_tx("install", "--owner", owner, "--dsn", cluster.dsn(dbname))
        self.assertEqual((status, err), (0, ""))
        self.assertNotIn("note:", out)
        owners = cluster.execute(
            "SELECT DISTINCT r.rolname FROM pg_proc p JOIN pg_roles r ON r.oid = p.proowner"
            " WHERE p.pronamespace = 'hermes'::regnamespace UNION"
            " SELECT r.rolname FROM pg_namespace n JOIN pg_roles r ON r.oid = n.nspowner"
            " WHERE n.nspname = 'hermes'", dbname=dbname)
        self.assertEqual(owners, [(owner,)])
        status, out, err = hermes_tx("install", "--dsn", cluster.dsn(dbname))
        self.assertIn("up to date", out)
        self.assertNotIn("note:", out)
        status, out, err = hermes_tx("install", "--dsn", cluster.dsn(dbname, user=owner))
        self.assertEqual(status, 1)
        self.assertEqual(len(err.splitlines()), 1, err)
