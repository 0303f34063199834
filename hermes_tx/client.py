# -*- test-case-name: tests.test_client -*-
"""
L{Client}: the Hermes client as a Twisted L{MultiService}, with its listener
and processor as child services wired to each other.
"""

from twisted.application import service
from twisted.internet import defer
from twisted.logger import Logger

from hermes_tx import dsn as dsnlib
from hermes_tx.components import Component, _one_line
from hermes_tx.exceptions import InvalidConfigurationException


class Client(service.MultiService):
    """
    Keeps one listener and one processor running.

    The Client wires the listener's queue to the processor's pipe and both
    components to its error queue (unless they were given their own), so no
    queue needs building by hand.  Starting the Client starts its components;
    stopping it stops them.  Put it in any L{service.MultiService} (a twistd
    application or your own) with C{setServiceParent}.

    @ivar notification_queue: the queue between listener and processor.
    @ivar error_queue: where components report L{ComponentError}s.
    @ivar listener: the listener component, or C{None}.
    @ivar processor: the processor component, or C{None}.
    """

    log = Logger()

    def __init__(self, dsn, watch_path=None, failover_files=None):
        """
        @param dsn: the server's DSN (dict, C{key=value} string or URI); used
            for role checks.  The listener has its own connector.
        @param watch_path: the data directory to watch for failover files
            (failover support; may be C{None}).
        @param failover_files: names of files under C{watch_path} whose
            changes mean a role change (failover support; C{None} for the
            default set).
        @raise InvalidConfigurationException: the DSN does not parse.
        """
        service.MultiService.__init__(self)
        dsnlib.parse(dsn)
        self.dsn = dsn
        self.watch_path = watch_path
        self.failover_files = failover_files
        self.notification_queue = defer.DeferredQueue()
        self.error_queue = defer.DeferredQueue()
        self.listener = None
        self.processor = None
        self._error_wait = None

    def __repr__(self):
        return f"<Client {dsnlib.redact(self.dsn)!r}>"

    def add_listener(self, listener):
        """
        Add the listener (a L{Component} with a C{notif_queue}, normally a
        L{hermes_tx.listeners.PostgresNotificationListener}).

        @raise InvalidConfigurationException: not a Component, or a listener
            was already added.
        """
        self._check(listener, "listener", self.listener)
        if getattr(listener, "notif_queue", None) is None:
            listener.notif_queue = self.notification_queue
        else:
            # The user brought a queue: the processor reads that one.
            self.notification_queue = listener.notif_queue
            if self.processor is not None and self.processor._wired_pipe:
                self.processor.notification_pipe = self.notification_queue
        self._wire_errors(listener)
        self.listener = listener
        listener.setServiceParent(self)

    def add_processor(self, processor):
        """
        Add the processor (a L{Component} whose C{execute} handles each
        event).

        @raise InvalidConfigurationException: not a Component, or a processor
            was already added.
        """
        self._check(processor, "processor", self.processor)
        processor._wired_pipe = processor.notification_pipe is None
        if processor._wired_pipe:
            processor.notification_pipe = self.notification_queue
        self._wire_errors(processor)
        self.processor = processor
        processor.setServiceParent(self)

    def _check(self, component, role, existing):
        if not isinstance(component, Component):
            raise InvalidConfigurationException(
                f"{role} must be a hermes_tx.components.Component, "
                f"not {type(component).__name__}"
            )
        if existing is not None:
            raise InvalidConfigurationException(f"this Client already has a {role}")

    def _wire_errors(self, component):
        if component.error_queue is None:
            component.error_queue = self.error_queue

    def startService(self):
        service.MultiService.startService(self)
        self._watch_errors()

    def stopService(self):
        if self._error_wait is not None:
            self._error_wait.cancel()
        return service.MultiService.stopService(self)

    def _watch_errors(self):
        self._error_wait = self.error_queue.get()
        self._error_wait.addCallbacks(self._component_failed, lambda f: f.trap(defer.CancelledError))

    def _component_failed(self, report):
        self._error_wait = None
        self.log.error(
            "{ident} stopped: {error} (expected={expected}, action={action})",
            ident=report.component.ident, error=_one_line(report.error),
            expected=report.expected, action=report.action,
        )
        if self.running:
            self._watch_errors()
