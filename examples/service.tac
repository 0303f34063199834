# The whole of what `twistd hermes` makes, as a .tac of your own: a Client
# (listener on a channel, a batch processor writing a table), the status
# endpoint, and a stop when the processor terminates.  Run:
#   HERMES_DSN="host=... dbname=..." twistd -ny examples/service.tac
# (HERMES_STATUS_PORT: the status port, default 8080.)
import os

from twisted.application import service
from twisted.internet import reactor
from twisted.logger import Logger

from examples.tables import Latest
from hermes_tx.client import Client
from hermes_tx.connectors import PostgresConnector
from hermes_tx.exceptions import one_line
from hermes_tx.listeners import PostgresNotificationListener
from hermes_tx.status import StatusService

dsn = os.environ.get("HERMES_DSN", "")
log = Logger(namespace="service.tac")

application = service.Application("hermes")

hermes = Client(dsn, role_check_interval=1.0)
hermes.setName("hermes")
hermes.add_listener(PostgresNotificationListener(PostgresConnector(dsn), ["items"],
                                                 payload_format="json"))
hermes.add_processor(Latest(dsn))
hermes.setServiceParent(application)

status = StatusService(hermes, int(os.environ.get("HERMES_STATUS_PORT", "8080")))
status.setName("status")
status.setServiceParent(application)


def stop(report):
    # A terminated processor would leave the queue filling: stop, and let the
    # supervisor (systemd ...) start the service again.
    log.critical("{ident} terminated: {error}; stopping",
                 ident=report.component.ident, error=one_line(report.error))
    reactor.stop()


hermes.watch_failures(stop)
