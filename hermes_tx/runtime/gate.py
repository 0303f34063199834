# -*- test-case-name: tests.test_client,tests.test_client_memory -*-
"""
L{ComponentGate}: the Client's components as child services that run only
while the gate is open (for the Client: while the server is the primary).

It wires the sources' queue (listener, outbox consumer) to the processor
and every component to its error queue, starts children added later only
if the gate is open, stops the processor before the sources (its last
outcome is written by a source still connected), and tells whoever asked
(L{ComponentGate.watch_failures}) when a component terminates.
"""

from twisted.application import service
from twisted.internet import defer
from twisted.logger import Logger

from hermes_tx.runtime.component import BaseComponent
from hermes_tx.exceptions import InvalidConfigurationException, one_line
from hermes_tx.runtime.queue import EventQueue


class ComponentGate(service.MultiService):
    """
    A L{service.MultiService} of components gated by L{is_open}.

    @ivar queue: the queue between the sources and the processor (also
        known by the seed's name, C{notification_queue}).
    @ivar error_queue: where components report
        L{hermes_tx.components.ComponentError}s.
    @ivar listener: the listener component, or C{None}.
    @ivar outbox: the outbox consumer component, or C{None}.
    @ivar processor: the processor component, or C{None}.
    """

    log = Logger()

    def __init__(self, queue_size=10000):
        """
        @param queue_size: how many events may wait for the processor before
            the sources stop reading (back-pressure; C{None}: no bound).
        """
        service.MultiService.__init__(self)
        if queue_size is not None and (not isinstance(queue_size, int) or queue_size < 1):
            raise InvalidConfigurationException(
                f"queue_size must be a whole number of at least 1 (or None), not {queue_size!r}")
        self.queue = EventQueue(maxsize=queue_size)
        self.error_queue = defer.DeferredQueue()
        self.listener = None
        self.outbox = None
        self.processor = None
        self._wired_processor = False  # the processor reads the queue this gate gave it
        self._error_wait = None
        self._failure_observers = []
        # Bumped by every start and stop of the components: a stop sequence
        # that waited for the processor goes on only if nothing came since.
        self._turn = 0

    @property
    def notification_queue(self):
        """
        The seed's name of L{queue}.
        """
        return self.queue

    @property
    def is_open(self):
        """
        True while the components should run; subclasses decide.
        """
        return bool(self.running)

    def _wired(self, component):
        """
        Called for each component added (a subclass's hook).
        """

    # -- configuration ------------------------------------------------------

    def add_listener(self, listener):
        """
        Add the listener (a component with a C{queue}, normally a
        L{hermes_tx.listeners.PostgresNotificationListener}).

        @raise InvalidConfigurationException: not a component, or a listener
            was already added.
        """
        self._check(listener, "listener", self.listener)
        self._add_source(listener)
        self.listener = listener

    def add_outbox(self, consumer):
        """
        Add the outbox consumer (a
        L{hermes_tx.outbox.consumer.OutboxConsumer}): its changes go to the
        same processor as the listener's notifications.

        @raise InvalidConfigurationException: not a component, or an outbox
            consumer was already added.
        """
        self._check(consumer, "outbox consumer", self.outbox)
        self._add_source(consumer)
        self.outbox = consumer
        self._pace_outbox()

    def _add_source(self, source):
        own = getattr(source, "queue", None)
        if own is None:
            source.queue = self.queue
        elif own is not self.queue:
            # The user brought a queue: every source and the processor
            # must share it, or events would go where nobody reads.
            if self._queue_taken():
                raise InvalidConfigurationException(
                    "the listener, the outbox consumer and the processor must share one queue: "
                    "this source brings its own, but the Client's is already in use "
                    "(give none, or the same one to all)")
            self.queue = own
            if self._wired_processor:
                self.processor.queue = own
        self._wire(source)
        source.setServiceParent(self)

    def _queue_taken(self):
        """
        @return: True when a source or a processor that brought its own
            pipe already uses the Client's queue.
        """
        return (self.listener is not None or self.outbox is not None
                or (self.processor is not None and not self._wired_processor))

    def add_processor(self, processor):
        """
        Add the processor (a L{hermes_tx.components.Component} whose
        C{execute} handles each event).

        @raise InvalidConfigurationException: not a component, a processor
            was already added, or it brings a queue of its own that is not
            the sources' (every source and the processor share one queue).
        """
        self._check(processor, "processor", self.processor)
        own = getattr(processor, "queue", None)
        if own is None:
            processor.queue = self.queue
        elif own is not self.queue:
            if self.listener is not None or self.outbox is not None:
                raise InvalidConfigurationException(
                    "the listener, the outbox consumer and the processor must share one queue: "
                    "this processor brings its own queue, the sources use the "
                    "Client's (give none, or the same one to all)")
            self.queue = own
        self._wired_processor = own is None
        self._wire(processor)
        self.processor = processor
        processor.setServiceParent(self)
        self._pace_outbox()

    def _pace_outbox(self):
        # A batch processor's batches stay full only if the consumer holds
        # at least two of them (hermes_tx.outbox.pacing); while its circuit
        # is open the consumer claims nothing (hermes_tx.runtime.breaker).
        if self.outbox is None or self.processor is None:
            return
        pacer = getattr(self.outbox, "pacer", None)
        if pacer is not None:
            pacer.set_floor(2 * (self.processor.max_batch or 1))
        breaker = getattr(self.processor, "breaker", None)
        follow = getattr(self.outbox, "follow_breaker", None)
        if breaker is not None and follow is not None:
            follow(breaker)

    def _check(self, component, role, existing):
        if not isinstance(component, BaseComponent):
            raise InvalidConfigurationException(
                f"{role} must be a hermes_tx.components.Component, "
                f"not {type(component).__name__}"
            )
        if existing is not None:
            raise InvalidConfigurationException(f"this Client already has a {role}")

    def _wire(self, component):
        if component.error_queue is None:
            component.error_queue = self.error_queue
        component.supervisor.add_observer(self)
        self._wired(component)

    def addService(self, child):
        """
        Add a child service.  Unlike L{service.MultiService.addService}, a
        child added to a running Client starts only if the server is the
        primary (it is started with the others when the gate opens).
        """
        if child.name is not None:
            if child.name in self.namedServices:
                raise RuntimeError(f"cannot have two services with same name {child.name!r}")
            self.namedServices[child.name] = child
        self.services.append(child)
        if self.is_open and not child.running:
            child.privilegedStartService()
            child.startService()

    def watch_failures(self, callback):
        """
        Call C{callback(report)} with the L{ComponentError} of every
        component that terminates (its error strategy said so, or its
        C{set_up} failed).  C{twistd hermes} stops with a non-zero status
        on the first one.
        """
        self._failure_observers.append(callback)

    # -- components ---------------------------------------------------------

    def _start_components(self):
        self._turn += 1
        for component in self:
            if not component.running:
                component.startService()

    def _stop_components(self):
        """
        Stop the processor first (its last event's outcome is written by
        the outbox consumer, which is still connected), then the others.
        A component whose stop is already under way is waited for.  If the
        components are started (or stopped) again while the processor
        stops, this sequence leaves the others to that newer one.

        @return: a Deferred firing once they have stopped.
        """
        self._turn += 1
        turn = self._turn
        d = _stopped(self.processor) if self.processor is not None else defer.succeed(None)

        def the_others(_):
            if turn != self._turn:
                return None
            return defer.gatherResults(
                [_stopped(c) for c in reversed(list(self)) if c is not self.processor],
                consumeErrors=True,
            )

        return d.addBoth(the_others)

    def _start_gate(self):
        """
        Begin watching the error queue (from the subclass's startService).
        """
        self._watch_errors()

    def _stop_gate(self):
        """
        Stop watching the error queue and stop the components.

        @return: a Deferred firing when they have stopped.
        """
        if self._error_wait is not None:
            self._error_wait.cancel()
        return self._stop_components()

    def run_terminated(self, component, error):
        report = component.supervisor.last_outcome.report
        for callback in list(self._failure_observers):
            try:
                callback(report)
            except Exception:
                self.log.failure("failure observer failed")

    def _watch_errors(self):
        self._error_wait = self.error_queue.get()
        self._error_wait.addCallbacks(self._component_failed, lambda f: f.trap(defer.CancelledError))

    def _component_failed(self, report):
        self._error_wait = None
        if not self._failure_observers:  # else they say it
            self.log.error(
                "{ident} stopped: {error} (expected={expected}, action={action})",
                ident=report.component.ident, error=one_line(report.error),
                expected=report.expected, action=report.action,
            )
        if self.running:
            self._watch_errors()


def _stopped(component):
    """
    Stop C{component}, or wait for its stop under way.

    @return: a Deferred firing once its run has ended.
    """
    if component.running:
        return defer.maybeDeferred(component.stopService)
    supervisor = getattr(component, "supervisor", None)  # any IService may be added
    return defer.succeed(None) if supervisor is None else supervisor.stop()
