# -*- test-case-name: tests.test_client,tests.test_failover -*-
"""
L{Client}: the Hermes client as a Twisted L{MultiService}.  Its listener and
processor are child services, started only while the server is the primary.

What makes the Client check the server's role (C{pg_is_in_recovery()}):
start-up; a timer every C{role_check_interval} seconds (one query on a kept
connection); a change of a failover file under C{watch_path}; and a
connection error reported by the listener.
"""

from twisted.application import service
from twisted.internet import defer, task
from twisted.logger import Logger

from hermes_tx import dsn as dsnlib
from hermes_tx import strategies
from hermes_tx.components import Component
from hermes_tx.connectors import PostgresConnector
from hermes_tx.exceptions import InvalidConfigurationException, one_line
from hermes_tx.queues import EventQueue
from hermes_tx.roles import PRIMARY, UNKNOWN, ask_role
from hermes_tx.watchers import DEFAULT_FAILOVER_FILES, FailoverFileWatcher



class Client(service.MultiService):
    """
    Keeps one listener and one processor running while the server is the
    primary, and stopped while it is a standby or cannot be reached.

    The Client wires the listener's queue to the processor's pipe and both
    components to its error queue (unless they were given their own).  Put
    it in any L{service.MultiService} with C{setServiceParent}.

    @ivar role: C{"primary"}, C{"standby"} or C{"unknown"} (not yet known, or
        the server cannot be reached).
    @ivar notification_queue: the queue between listener and processor.
    @ivar error_queue: where components report L{ComponentError}s.
    @ivar listener: the listener component, or C{None}.
    @ivar processor: the processor component, or C{None}.
    """

    log = Logger()

    def __init__(
        self,
        dsn,
        watch_path=None,
        failover_files=None,
        role_check_interval=1.0,
        max_backoff=32.0,
        role_check_timeout=5.0,
        clock=None,
        connector=None,
        queue_size=10000,
    ):
        """
        @param dsn: the server's DSN (dict, C{key=value} string or URI),
            multi-host ones included.
        @param watch_path: C{None}, or the server's data directory, watched
            (not recursively) for changes of failover files.
        @param failover_files: file names under C{watch_path} whose changes
            mean a role change; C{None} means C{recovery.conf},
            C{recovery.done}, C{standby.signal}, C{recovery.signal},
            C{promote}.
        @param role_check_interval: seconds between periodic role checks.
        @param max_backoff: the longest wait, in seconds, between role
            checks while the server cannot be reached (1, 2, 4 ... with
            jitter).
        @param role_check_timeout: seconds a role check may take before the
            connection is declared dead.
        @param clock: an C{IReactorTime}; C{None} means the reactor.
        @param connector: the L{PostgresConnector} for role checks; C{None}
            makes one from C{dsn} (application_name C{hermes-role}).
        @param queue_size: how many events may wait for the processor before
            the listener stops reading (back-pressure; C{None}: no bound).
        @raise InvalidConfigurationException: the DSN does not parse.
        """
        service.MultiService.__init__(self)
        dsnlib.parse(dsn)
        if clock is None:
            from twisted.internet import reactor as clock
        self.dsn = dsn
        self.watch_path = watch_path
        self.failover_files = tuple(failover_files or DEFAULT_FAILOVER_FILES)
        self.role_check_interval = role_check_interval
        self.max_backoff = max_backoff
        self.role_check_timeout = role_check_timeout
        self.clock = clock
        self.connector = connector or PostgresConnector(dsn, application_name="hermes-role")
        self.notification_queue = EventQueue(maxsize=queue_size)
        self.error_queue = defer.DeferredQueue()
        self.listener = None
        self.processor = None
        self.role = UNKNOWN
        self._backoff = strategies.backoff_policy(initial=1.0, factor=2.0, max_delay=max_backoff)
        self._failed_checks = 0
        self._checking = None  # the role check in progress
        self._again = False  # another check was asked for during one
        self._timer = None
        self._watcher = None
        self._error_wait = None
        self._pauses = set()  # failover-file bursts pausing between checks

    def __repr__(self):
        return f"<Client {dsnlib.redact(self.dsn)!r} role={self.role}>"

    # -- configuration ------------------------------------------------------

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
        if hasattr(listener, "on_trouble"):
            listener.on_trouble = self._component_trouble
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

    # -- IService -----------------------------------------------------------

    def startService(self):
        # Not MultiService.startService: the components start only once the
        # server is known to be the primary.
        service.Service.startService(self)
        self._watch_errors()
        if self.watch_path is not None:
            self._watcher = FailoverFileWatcher(
                self.watch_path, self._failover_file_changed, self.failover_files
            )
            self._watcher.start()
        self.execute_role_based_procedure()

    def stopService(self):
        """
        Stop role checks, the file watcher and the components.

        @return: a Deferred firing when all of them have stopped.
        """
        service.Service.stopService(self)
        if self._error_wait is not None:
            self._error_wait.cancel()
        self._cancel_timer()
        for pause in list(self._pauses):
            pause.cancel()
        waits = [self._stop_components()]
        if self._watcher is not None:
            waits.append(self._watcher.stop())
            self._watcher = None
        self.connector.disconnect()
        self.role = UNKNOWN  # nobody is looking any more
        return defer.gatherResults(waits, consumeErrors=True).addCallback(lambda _: None)

    # -- role checks --------------------------------------------------------

    def execute_role_based_procedure(self):
        """
        Ask the server its role and start the components on a primary, stop
        them on a standby or when the server cannot be reached.

        @return: a Deferred firing with the role found (C{"primary"},
            C{"standby"} or C{"unknown"}) once components are started or
            stopped accordingly.  Checks do not overlap: asking during a
            check makes one more check follow it.
        """
        if self._checking is not None:
            self._again = True
            done = defer.Deferred()
            self._checking.addBoth(lambda r: (done.callback(self.role), r)[1])
            return done
        self._cancel_timer()
        self._checking = d = self._check_role()
        d.addBoth(self._check_done)
        return d

    def _check_role(self):
        def unreachable(failure):
            if not self.running:
                return UNKNOWN  # stopping closed the connection: not news
            self._failed_checks += 1
            if strategies.is_connection_error(failure.value):
                self.log.warn("role check failed: {error}", error=one_line(failure.value))
            else:
                self.log.failure("role check failed", failure)
            return UNKNOWN

        d = ask_role(self.connector, self.clock, self.role_check_timeout, lambda: self.running)
        return d.addErrback(unreachable).addCallback(self._apply_role)

    @defer.inlineCallbacks
    def _apply_role(self, role):
        if not self.running:
            return role
        if role != self.role:
            self.log.info("role: {old} -> {new}", old=self.role, new=role)
            self.role = role
        if role == PRIMARY:
            self._failed_checks = 0
            self._start_components()
        else:
            yield self._stop_components()
        return role

    def _check_done(self, role):
        self._checking = None
        if not self.running:
            return role
        if self._again:
            self._again = False
            self.execute_role_based_procedure()
        elif role == UNKNOWN:
            self._schedule(self._backoff(self._failed_checks - 1))
        else:
            self._schedule(self.role_check_interval)
        return role

    def _schedule(self, delay):
        self._cancel_timer()
        self._timer = self.clock.callLater(delay, self.execute_role_based_procedure)

    def _cancel_timer(self):
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _component_trouble(self, error):
        # The listener lost its connection: the server may have gone, or
        # changed role.  Check now.
        if self.running:
            self.execute_role_based_procedure()

    # -- failover files -----------------------------------------------------

    @defer.inlineCallbacks
    def _failover_file_changed(self, event_type, name, window=1.0, interval=0.01):
        """
        A failover file changed: check the role now, and keep checking every
        C{interval} seconds for up to C{window} seconds until it differs
        from what it was, because PostgreSQL deletes C{standby.signal} a few
        milliseconds before it leaves recovery.
        """
        if not self.running:
            return
        self.log.info("failover file {name} {event}", name=name, event=event_type)
        before = self.role
        deadline = self.clock.seconds() + window
        while True:
            role = yield self.execute_role_based_procedure()
            if not self.running or role != before or self.clock.seconds() >= deadline:
                return
            # stopService cancels the pause, so no timer outlives the Client.
            pause = task.deferLater(self.clock, interval, lambda: None)
            self._pauses.add(pause)
            try:
                yield pause
            except defer.CancelledError:
                return
            finally:
                self._pauses.discard(pause)

    # -- components ---------------------------------------------------------

    def _start_components(self):
        for component in self:
            if not component.running:
                component.startService()

    def _stop_components(self):
        return defer.gatherResults(
            [defer.maybeDeferred(c.stopService) for c in reversed(list(self)) if c.running],
            consumeErrors=True,
        )

    def _watch_errors(self):
        self._error_wait = self.error_queue.get()
        self._error_wait.addCallbacks(self._component_failed, lambda f: f.trap(defer.CancelledError))

    def _component_failed(self, report):
        self._error_wait = None
        self.log.error(
            "{ident} stopped: {error} (expected={expected}, action={action})",
            ident=report.component.ident, error=one_line(report.error),
            expected=report.expected, action=report.action,
        )
        if self.running:
            self._watch_errors()

