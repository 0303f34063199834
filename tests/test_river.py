"""
The river example of the docs (docs/outbox.rst), end to end: a table with
rows, captured and backfilled with hermes-tx, twistd hermes consuming its
topic into an Elasticsearch bulk sink (the in-process stand-in of
tests/support/fake_es.py: no Elasticsearch can be installed here), through
the real processes.
"""

import os
import subprocess
import sys

from twisted.internet import defer, error, reactor
from twisted.trial import unittest
from twisted.web import server

from tests.support.fake_es import FakeBulk
from tests.support.outbox import OutboxDatabase
from tests.support.shared import wait_until
from tests.support.twistd import ROOT, run_twistd

HERMES_TX = os.path.join(os.path.dirname(sys.executable), "hermes-tx")


class RiverTests(OutboxDatabase, unittest.TestCase):
    install_outbox = False  # the example installs it with hermes-tx

    def hermes_tx(self, *args):
        return subprocess.run([HERMES_TX, *args, "--dsn", self.dsn], capture_output=True,
                              text=True, cwd=ROOT, check=True)

    def outbox_size(self, cur):
        cur.execute("SELECT count(*) FROM hermes.outbox")
        return cur.fetchone()[0]

    @defer.inlineCallbacks
    def test_a_table_kept_in_an_index(self):
        """
        The recipe's steps: rows already in the table, captured and
        backfilled, then rows inserted, updated and deleted while twistd
        hermes consumes: the index holds documents with id = the primary
        key, the latest version of each, deletes deleted; the outbox ends
        empty.
        """
        db = self.connect()
        cur = db.cursor()
        cur.execute("CREATE TABLE items (id int PRIMARY KEY, name text, price numeric)")
        cur.execute("INSERT INTO items VALUES (1, 'pen', 1.5), (2, 'ink', 4)")
        self.hermes_tx("install")
        self.hermes_tx("capture", "--table", "items", "--topic", "items")
        self.hermes_tx("backfill", "--table", "items")
        es = FakeBulk()
        port = reactor.listenTCP(0, server.Site(es), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        url = f"elasticsearch+http://127.0.0.1:{port.getHost().port}/items"
        proto, transport = run_twistd(["--dsn", self.dsn, "--outbox", "items", "--sink", url])
        try:
            cur.execute("INSERT INTO items VALUES (3, 'nib', 2)")
            cur.execute("UPDATE items SET price = 1.75 WHERE id = 1")
            cur.execute("DELETE FROM items WHERE id = 2")
            yield wait_until(lambda: set(es.live("items")) == {"1", "3"} and len(es.applied) == 5,
                             timeout=30, what="the index in sync")
            yield wait_until(lambda: self.outbox_size(cur) == 0, timeout=10, what="every ack")
        finally:
            transport.signalProcess("TERM")
            ended = yield proto.ended
        log = (proto.out + proto.err).decode()
        self.assertIsInstance(ended, error.ProcessDone, log)
        live = es.live("items")
        self.assertEqual(live["1"][1], {"id": 1, "name": "pen", "price": 1.75})
        self.assertEqual(live["3"][1], {"id": 3, "name": "nib", "price": 2})
        self.assertEqual([a[0] for a in es.applied], ["index", "index", "index", "index", "delete"])
        self.assertNotIn("Traceback", log)
