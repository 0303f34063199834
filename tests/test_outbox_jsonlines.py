"""
The default processor (L{hermes_tx.processors.JsonLinesProcessor}) as an
outbox consumer's processor: a change may be acknowledged (deleted from the
outbox) only once its line is in the output file, or a crash between the
two (SIGKILL, power loss of the process) loses a change that no one will
deliver again.
"""

import json

from twisted.internet import defer
from twisted.trial import unittest

from hermes_tx.client import Client
from hermes_tx.connectors import PostgresConnector
from hermes_tx.outbox.consumer import OutboxConsumer
from hermes_tx.processors import JsonLinesProcessor
from tests.support.outbox import OutboxDatabase
from tests.support.shared import wait_until


class AcknowledgedOnlyOnceWrittenTests(OutboxDatabase, unittest.TestCase):
    @defer.inlineCallbacks
    def test_no_ack_before_the_line_is_written(self):
        """
        While a backlog drains, every acknowledgement the consumer sends
        names only changes whose lines the output file already holds.
        """
        rows = 3000
        self.query(
            "INSERT INTO hermes.outbox (topic, key, payload)"
            " SELECT 't', (g %% 500)::text, jsonb_build_object('n', g) FROM generate_series(1, %s) g",
            (rows,),
        )
        path = self.mktemp()
        client = Client(self.dsn, role_check_interval=0.5)
        consumer = OutboxConsumer(PostgresConnector(self.dsn, application_name="hermes-outbox-test"), ["t"])
        client.add_outbox(consumer)
        client.add_processor(JsonLinesProcessor(output=path))
        early = []  # ids acknowledged before their line was in the file

        def written_ids():
            with open(path, "rb") as f:
                return {json.loads(line)["id"] for line in f.read().splitlines()}

        def watch_writes():
            writer = consumer.ledger.writer

            def checked(owed):
                acked = [change.id for kind, _, change, _, _ in owed if kind == "ack"]
                if acked:
                    have = written_ids()
                    early.extend(i for i in acked if i not in have)
                return writer(owed)

            consumer.ledger.writer = checked
            return True

        client.startService()
        self.addCleanup(client.stopService)
        # (connected: its first claim may not have come back yet)
        yield wait_until(lambda: consumer.state in ("starting", "consuming") and watch_writes(),
                         what="connected")
        yield wait_until(lambda: consumer.ledger.counts["acked"] >= rows, timeout=60,
                         what=f"{rows} acknowledgements")
        self.assertEqual(len(written_ids()), rows)
        self.assertEqual(early, [], f"{len(early)} change(s) acknowledged before their line was written")
