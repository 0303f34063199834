"""
Test support for the outbox: a fresh database per test class on the shared
throwaway primary, with the outbox installed, and blocking connections to
it.
"""

import os
import select
import threading
import time
import uuid

import psycopg2

from hermes_tx.outbox import sql as statements
from hermes_tx.outbox.schema import install
from tests.support.fixtures import ClassFixtures
from tests.support.shared import shared_primary


def quoted(name):
    """
    @return: C{name} as a quoted SQL identifier.
    """
    return '"' + name.replace('"', '""') + '"'


def make_database(cluster, label):
    """
    @return: the name of a new, empty database on C{cluster}.
    """
    name = f"outbox_{label.lower()[:30]}_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    cluster.execute(f'CREATE DATABASE "{name}"')
    return name


def drop_database(cluster, name):
    """
    Drop a database made by L{make_database}, unless its server is gone
    already (at exit, trial may tear a class down after the clusters).
    """
    try:
        cluster.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    except psycopg2.OperationalError:
        if cluster.is_running():
            raise


class OutboxDatabase(ClassFixtures):
    """
    Mixin (before C{TestCase}): C{cls.cluster} (the shared primary),
    C{cls.dbname} (a database of the class's own) and C{cls.dsn}; the outbox
    is installed in C{cls.schema} unless C{install_outbox} is false.
    """

    schema = "hermes"
    install_outbox = True
    #: C{hermes.claim_window} for every connection to the class's database:
    #: C{"bounds"} makes claims find their window as on PostgreSQL 11 to 14
    claim_window = None

    @classmethod
    def setUpClass(cls):
        cls.cluster = shared_primary()
        cls.dbname = make_database(cls.cluster, cls.__name__)
        cls.dsn = cls.cluster.dsn(cls.dbname)
        if cls.claim_window is not None:
            cls.cluster.execute(f'ALTER DATABASE "{cls.dbname}" SET hermes.claim_window = %s', (cls.claim_window,))
        if cls.install_outbox:
            conn = psycopg2.connect(cls.dsn)
            try:
                install(conn, cls.schema)
            finally:
                conn.close()

    @classmethod
    def tearDownClass(cls):
        drop_database(cls.cluster, cls.dbname)

    def connect(self, autocommit=True):
        """
        @return: a blocking connection to the class's database, closed when
            the test ends.
        """
        conn = psycopg2.connect(self.dsn)
        conn.autocommit = autocommit
        self.addCleanup(conn.close)
        return conn

    def start_consumer(self, topics, processor, application_name="hermes-outbox-test", **kwargs):
        """
        Start a Client on the class's database with an outbox consumer of
        C{topics} (keyword arguments go to it) and C{processor}; stopped at
        cleanup.

        @param application_name: the consumer connection's.
        @return: C{(client, consumer)}.
        """
        from hermes_tx.client import Client
        from hermes_tx.connectors import PostgresConnector
        from hermes_tx.outbox.consumer import OutboxConsumer

        client = Client(self.dsn, role_check_interval=0.5)
        consumer = OutboxConsumer(PostgresConnector(self.dsn, application_name=application_name),
                                  list(topics), **kwargs)
        client.add_outbox(consumer)
        client.add_processor(processor)
        client.startService()
        self.addCleanup(lambda: client.stopService() if client.running else None)
        return client, consumer

    def query(self, statement, params=None):
        """
        @return: the rows of one autocommit statement.
        """
        return self.cluster.execute(statement, params, dbname=self.dbname)

    def emit(self, topic, key, payload="{}", conn=None):
        """
        @return: the id of a change emitted in its own transaction.
        """
        rows = self.execute(
            f"SELECT {quoted(self.schema)}.emit(%s, %s, %s::jsonb)", (topic, key, payload), conn
        )
        return rows[0][0]

    def execute(self, statement, params=None, conn=None):
        """
        Run one statement on C{conn} (or a short-lived connection).

        @return: its rows, or C{None}.
        """
        if conn is None:
            return self.query(statement, params)
        with conn.cursor() as cur:
            cur.execute(statement, params)
            return cur.fetchall() if cur.description is not None else None

    def claim(self, topics, limit=100, token=None, visibility=30.0, conn=None):
        """
        Claim on C{conn}, or on one connection kept open for the whole test
        (a claim whose backend is gone is taken over by the next claim).

        @return: C{(token, rows)} of a claim (a new token unless given).
        """
        if conn is None:
            conn = self.__dict__.get("_claimer")
            if conn is None:
                conn = self._claimer = self.connect()
        token = token or str(uuid.uuid4())
        rows = self.execute(statements.claim(self.schema), (list(topics), limit, token, visibility), conn)
        return token, rows

    def ack(self, ids, token, conn=None):
        """
        @return: the ids acknowledged.
        """
        return [r[0] for r in self.execute(statements.ack(self.schema), (list(ids), token), conn)]

    def outbox(self, columns="id, topic, key, payload"):
        """
        @return: every row of the outbox, by id.
        """
        return self.query(f"SELECT {columns} FROM {quoted(self.schema)}.outbox ORDER BY id")

    def clear(self):
        """Empty the outbox and the dead letters."""
        self.query(f"TRUNCATE {quoted(self.schema)}.outbox, {quoted(self.schema)}.dead_letters")


def in_thread(target, *args):
    """
    Start C{target(*args)} in a daemon thread.

    @return: C{(thread, result)}: C{result} is a dict that gets C{"value"}
        or C{"error"} when the target ends.
    """
    result = {}

    def run():
        try:
            result["value"] = target(*args)
        except BaseException as e:  # reported to the test through result
            result["error"] = e

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, result


def join_threads(test, threads, timeout=60.0):
    """
    Wait for L{in_thread} threads; fail C{test} if one is still running or
    raised.

    @return: their values, in order.
    """
    for thread, result in threads:
        thread.join(timeout)
        test.assertFalse(thread.is_alive())
        test.assertNotIn("error", result)
    return [result["value"] for _, result in threads]


def notifications(conn, wait=1.0):
    """
    @return: the (channel, payload) of every notification that arrives on
        C{conn} within C{wait} seconds (stopping 0.2 s after the last).
    """
    got = []
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        if select.select([conn], [], [], 0.05)[0]:
            conn.poll()
            got.extend((n.channel, n.payload) for n in conn.notifies)
            conn.notifies.clear()
            deadline = min(deadline, time.monotonic() + 0.2)
    return got
