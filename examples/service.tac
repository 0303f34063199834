# The whole of what `twistd hermes` makes, as a .tac of your own: a Client
# (a listener on a channel decoding JSON, the JSON-lines processor), the
# status endpoint, and twistd hermes's behaviour as a process: SIGTERM and
# SIGINT stop cleanly and exit 0, SIGHUP reopens the output file, a
# terminated component stops the service with exit status 1.  Run:
#   HERMES_DSN="host=... dbname=..." twistd -ny examples/service.tac
# (HERMES_OUTPUT: the JSON-lines file, default events.jsonl;
#  HERMES_STATUS_PORT: the status port, default 8080.)
import os

from twisted.application import service

from hermes_tx.client import Client
from hermes_tx.connectors import PostgresConnector
from hermes_tx.exceptions import one_line
from hermes_tx.listeners import PostgresNotificationListener
from hermes_tx.processors import JsonLinesProcessor
from hermes_tx.status import StatusService
from hermes_tx.twistd.process import ProcessService

dsn = os.environ.get("HERMES_DSN", "")
application = service.Application("hermes")

processor = JsonLinesProcessor(output=os.environ.get("HERMES_OUTPUT", "events.jsonl"))
top = ProcessService(reopeners=[("output file", processor.reopen)], shutdown_timeout=10.0)
top.setName("process")
top.setServiceParent(application)

hermes = Client(dsn, role_check_interval=1.0)
hermes.setName("hermes")
hermes.add_listener(PostgresNotificationListener(PostgresConnector(dsn), ["items"],
                                                 payload_format="json"))
hermes.add_processor(processor)
# A terminated processor would leave the queue filling: stop with exit
# status 1, and let the supervisor (systemd ...) start the service again.
hermes.watch_failures(
    lambda report: top.fail(f"{report.component.ident} terminated: {one_line(report.error)}"))
hermes.setServiceParent(top)

status = StatusService(hermes, int(os.environ.get("HERMES_STATUS_PORT", "8080")))
status.setName("status")
status.setServiceParent(top)
