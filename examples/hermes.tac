# An existing Twisted application that gains a Hermes Client as one more
# child service.  Run:  HERMES_DSN="host=... dbname=..." twistd -ny examples/hermes.tac
# (HERMES_OUTPUT names the JSON-lines file; default events.jsonl.)
import os

from twisted.application import internet, service
from twisted.internet import protocol

from hermes_tx.client import Client
from hermes_tx.connectors import PostgresConnector
from hermes_tx.listeners import PostgresNotificationListener
from hermes_tx.processors import JsonLinesProcessor

application = service.Application("my-app")

# The application you already have: here a parent MultiService holding an
# echo server.
app_services = service.MultiService()
app_services.setServiceParent(application)
echo = internet.TCPServer(
    int(os.environ.get("ECHO_PORT", "0")),
    protocol.Factory.forProtocol(protocol.Protocol),
    interface="127.0.0.1",
)
echo.setServiceParent(app_services)

# Hermes joins it: started and stopped with the rest of the application.
dsn = os.environ["HERMES_DSN"]
hermes = Client(dsn)
hermes.setName("hermes")
hermes.add_listener(PostgresNotificationListener(PostgresConnector(dsn), ["jobs", "Jobs-Done"]))
hermes.add_processor(JsonLinesProcessor(output=os.environ.get("HERMES_OUTPUT", "events.jsonl")))
hermes.setServiceParent(app_services)
