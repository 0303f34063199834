"""
Roles for least-privilege tests: a database with the outbox installed by a
superuser granting a writer, a consumer and an operator role their parts
(L{hermes_tx.outbox.privileges}), an application role with only its own
table's rights, and a role with nothing.
"""

import os
import uuid

import psycopg2
import psycopg2.errors

from hermes_tx.outbox.schema import install
from tests.support.outbox import OutboxDatabase, drop_database
from tests.test_outbox_cli import hermes_tx


def role_name(what):
    return f"hermes_{what}_{os.getpid()}_{uuid.uuid4().hex[:6]}"


class OutboxRoles(OutboxDatabase):
    """
    A database of the class's own with the outbox installed by a superuser
    granting C{writer}, C{consumer} and C{operator} their parts; C{app}
    has only the rights of its own table (C{public.items}, captured,
    owned by C{operator}); C{nobody} has nothing.
    """

    install_outbox = False
    parts = ("writer", "consumer", "operator")

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.roles = {name: role_name(name) for name in cls.parts + ("app", "nobody")}
        for role in cls.roles.values():
            cls.cluster.execute(f'CREATE ROLE "{role}" LOGIN')
        conn = psycopg2.connect(cls.dsn)
        try:
            install(conn, grants=[(p, cls.roles[p]) for p in cls.parts])
        finally:
            conn.close()
        cls.cluster.execute("CREATE TABLE public.items (id int PRIMARY KEY, v text)", dbname=cls.dbname)
        cls.cluster.execute(f'ALTER TABLE public.items OWNER TO "{cls.roles["operator"]}"', dbname=cls.dbname)
        cls.cluster.execute(f'GRANT SELECT, INSERT, UPDATE, DELETE ON public.items TO "{cls.roles["app"]}"',
                            dbname=cls.dbname)

    @classmethod
    def tearDownClass(cls):
        drop_database(cls.cluster, cls.dbname)
        # (at exit, trial may tear a class down after the shared cluster
        # stopped, its roles gone with it)
        if cls.cluster.is_running():
            for role in cls.roles.values():
                cls.cluster.execute(f'DROP ROLE IF EXISTS "{role}"')

    def dsn_of(self, part):
        return self.cluster.dsn(self.dbname, user=self.roles[part])

    def connect_as(self, part):
        conn = psycopg2.connect(self.dsn_of(part))
        conn.autocommit = True
        self.addCleanup(conn.close)
        return conn

    def run_as(self, part, statement, params=None):
        with self.connect_as(part).cursor() as cur:
            cur.execute(statement, params)
            return cur.fetchall() if cur.description is not None else None

    def denied(self, part, statement, params=None):
        """
        @return: the InsufficientPrivilege error C{statement} raises when
            run as C{part}.
        """
        return self.assertRaises(psycopg2.errors.InsufficientPrivilege, self.run_as, part, statement, params)

    def cli(self, part, *args):
        return hermes_tx(*args, "--dsn", self.dsn_of(part))
