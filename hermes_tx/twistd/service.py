# -*- test-case-name: tests.test_twistd_options -*-
"""
The service C{twistd hermes} runs, made from its parsed options
(L{hermes_tx.twistd.options.Options}).
"""

from hermes_tx.client import Client
from hermes_tx.connectors import PostgresConnector
from hermes_tx.exceptions import one_line
from hermes_tx.listeners import PostgresNotificationListener
from hermes_tx.outbox.consumer import OutboxConsumer
from hermes_tx.sinks import SinkURLError, redact_url
from hermes_tx.status.site import StatusService, check_listen
from hermes_tx.twistd import process
from hermes_tx.twistd.process import EXIT_START_FAILED, EXIT_USAGE, fail
from hermes_tx.twistd.processor import make_processor


def makeService(options):
    """
    @return: a L{process.ProcessService} (the top, which handles signals
        while it runs) holding the L{Client} (named C{"client"}, with a
        listener on the channels and the processor) and, with
        C{--status-port}, the L{StatusService} (named C{"status"}).
        Starting it cannot fail for a status port already taken: that, and
        a processor whose constructor raises, print one line and exit 1
        here; a sink URL (or secret file) that cannot be used exits 2.
    """
    cls = options["processor_class"]
    try:
        processor = make_processor(cls, options)
    except SinkURLError as e:
        # The URL or its secret file cannot be used: a usage error, as the
        # scheme's is (the message is redacted).
        fail(f"--sink: {e}", EXIT_USAGE)
    except Exception as e:
        what = f"sink {redact_url(options['sink'])}" if options["sink"] else (
            f"processor {cls.__module__}.{cls.__qualname__}")
        fail(f"{what} failed to start: {one_line(e)}", EXIT_START_FAILED)
    port, interface = options["status-port"], options["status-interface"]
    if port is not None:
        try:
            check_listen(port, interface)
        except OSError as e:
            fail(f"--status-port {port} on {interface}: {e.strerror or e}", EXIT_START_FAILED)
    reopeners = [("output file", processor.reopen)] if hasattr(processor, "reopen") else []
    top = process.ProcessService(
        reopeners=reopeners, shutdown_timeout=options["shutdown-timeout"]
    )
    client = Client(
        options["dsn"],
        watch_path=options["watch-path"],
        failover_files=options["failover-files"] or None,
        role_check_interval=options["role-check-interval"],
        max_backoff=options["max-backoff"],
        queue_size=options["queue-size"],
    )
    client.setName("client")
    client.watch_failures(
        lambda report: top.fail(f"{report.component.ident} terminated: {one_line(report.error)}")
    )
    if options["channels"]:
        listener = PostgresNotificationListener(
            PostgresConnector(options["dsn"]),
            options["channels"],
            backoff_limit=options["backoff-limit"],
            liveness_timeout=options["liveness-timeout"],
            payload_format=options["payload-format"],
        )
        listener.setName("listener")
        client.add_listener(listener)
    if options["topics"]:
        consumer = OutboxConsumer(
            PostgresConnector(options["dsn"], application_name="hermes-outbox"),
            options["topics"],
            schema=options["outbox-schema"],
            poll_interval=options["poll-interval"],
            visibility_timeout=options["visibility-timeout"],
            max_attempts=options["max-attempts"],
            retry_delay=options["retry-delay"],
            max_retry_delay=options["max-retry-delay"],
            max_in_flight_bytes=options["max-in-flight-bytes"],
            backoff_limit=options["backoff-limit"],
            liveness_timeout=options["liveness-timeout"],
        )
        consumer.setName("outbox")
        client.add_outbox(consumer)
    processor.setName("processor")
    client.add_processor(processor)
    client.setServiceParent(top)
    if port is not None:
        status = StatusService(client, port, interface)
        status.setName("status")
        status.setServiceParent(top)
    return top
