# -*- test-case-name: tests.test_components -*-
"""
Components as Twisted services.

  - L{BaseComponent}: the lifecycle every component shares.  Each start
    begins a I{run} (C{set_up}, the work, C{tear_down}); a
    L{hermes_tx.supervisor.Supervisor} owns the runs, restarts lost ones
    after a backoff, and reports terminated ones on the error queue.
  - L{Component}: the seed's component, a queue consumer: it takes items
    from its C{notification_pipe} and runs C{pre_execute()},
    C{execute(pre_exec_value)} and C{post_execute(exec_value)} for each, in
    a L{hermes_tx.runloop.ConsumerLoop}.  Processors subclass it.

Each step may return a plain value or a
L{Deferred <twisted.internet.defer.Deferred>}.  Exceptions go to the
error strategy, which says whether to go on, back off or terminate;
L{hermes_tx.outcomes} lets a processor say more (try again, never).
"""

import psycopg2
from twisted.application import service
from twisted.internet import defer
from twisted.logger import Logger

from hermes_tx import strategies
from hermes_tx.backoff import Backoff, backoff_policy
from hermes_tx.exceptions import HermesException, one_line
from hermes_tx.queues import EventQueue
from hermes_tx.runloop import ConsumerLoop
from hermes_tx.supervisor import (  # noqa: F401 (ComponentError: the seed's name, here)
    LOST,
    STOPPED,
    TERMINATED,
    ComponentError,
    Outcome,
    Supervisor,
)


class BaseComponent(service.Service):
    """
    The lifecycle of a listener or processor: an
    L{twisted.application.service.IService} whose runs a
    L{hermes_tx.supervisor.Supervisor} owns.

    Subclasses implement L{_new_run} and may override L{set_up} and
    L{tear_down} (called at the start and end of every run).

    @ivar supervisor: the L{hermes_tx.supervisor.Supervisor} of its runs.
    @ivar backoff_limit: the longest backoff in seconds.
    """

    log = Logger()

    def __init__(self, error_strategy=None, error_queue=None, backoff_limit=16, clock=None):
        """
        @param error_strategy: an L{strategies.AbstractErrorStrategy};
            C{None} means L{strategies.CommonErrorStrategy}.
        @param error_queue: where a terminating component reports a
            L{ComponentError}; C{None} lets the Client wire it.
        @param backoff_limit: the longest backoff, in seconds.
        @param clock: an L{twisted.internet.interfaces.IReactorTime} for every
            delay; C{None} means the global reactor.
        """
        self.error_strategy = error_strategy or strategies.CommonErrorStrategy()
        self.error_queue = error_queue
        self.backoff_limit = backoff_limit
        if clock is None:
            from twisted.internet import reactor as clock
        self.clock = clock
        self.supervisor = Supervisor(self, clock, Backoff(self._restart_delay), log=self.log)
        self.supervisor.add_observer(_ReportTermination())

    def _restart_delay(self, attempt):
        # Read backoff_limit now: twistd sets it after construction.
        return backoff_policy(initial=0.1, factor=2.0, max_delay=self.backoff_limit)(attempt)

    # -- the seed's extension points ----------------------------------------

    def set_up(self):
        """
        Called when a run starts, before any work.  May return a Deferred.
        """

    def tear_down(self):
        """
        Called when a run ends, after the last work.  May return a Deferred.
        """

    def _new_run(self):
        """
        @return: a new run object (see L{hermes_tx.supervisor.Supervisor}).
        """
        raise NotImplementedError

    # -- the seed's process methods, honestly -------------------------------

    @property
    def ident(self):
        """
        The component's name (its service name, or its class name when
        unnamed).  There is no process: every component runs in the reactor.
        """
        return self.name or type(self).__name__

    def is_alive(self):
        """
        @return: True while the service runs and has not terminated on an
            error.
        """
        return bool(self.running) and self.supervisor.state != "terminated"

    @property
    def terminated(self):
        """
        The L{ComponentError} that terminated the last run, while the
        component is terminated; else C{None}.
        """
        if self.supervisor.state != "terminated":
            return None
        return self.supervisor.last_outcome.report

    def join(self):
        """
        @return: a Deferred that fires when the current run has ended (after
            L{tear_down}); already fired when no run is in progress.  Never
            blocks.
        """
        run = self.supervisor.run
        if run is None:
            return defer.succeed(None)
        return run.when_ended()

    # -- IService -----------------------------------------------------------

    def startService(self):
        service.Service.startService(self)
        self.supervisor.start()

    def stopService(self):
        """
        End the current run (see the subclass for how) and stop restarting.

        @return: a Deferred that fires when the run has ended.
        """
        service.Service.stopService(self)
        return self.supervisor.stop()

    #: seconds a stop may take (see L{Run.stop}); C{None}: no limit
    shutdown_timeout = None

    def terminate(self, report):
        """
        End the current run for good and put C{report} (a L{ComponentError})
        on the error queue, so the Client learns of it.
        """
        run = self.supervisor.run
        if run is not None:
            run.terminate(report)

    def backoff_delay(self):
        """
        @return: the seconds to wait for this backoff (1, 2, 4 ... up to
            C{backoff_limit}), counting it as one more attempt.
        """
        policy = backoff_policy(initial=1.0, factor=2.0, max_delay=self.backoff_limit, jitter=None)
        delay = policy(self._backoff_attempts)
        self._backoff_attempts += 1
        return delay

    _backoff_attempts = 0


class ConnectedComponent(BaseComponent):
    """
    A component that owns a connector (C{pg_connector}) and so must follow
    the primary when a multi-host DSN's primary moves: the listener and the
    outbox consumer.
    """

    pg_connector = None

    def follow_primary(self, entry):
        """
        The Client found the primary at C{entry} (a
        L{hermes_tx.hosts.HostEntry} of a multi-host DSN): connect there
        from now on, moving a connection that is elsewhere (a new run).
        """
        connector = self.pg_connector
        before = getattr(connector, "pinned", None)
        pin = getattr(connector, "pin", None)
        if pin is None or not pin(entry) or connector.pinned == before:
            return
        if before is not None and self.supervisor.state in ("running", "waiting"):
            self.supervisor.stop()
            self.supervisor.start()


class _ReportTermination:
    """
    The component's own observer: a terminated run is reported on the
    error queue, as in the seed.
    """

    def run_terminated(self, component, error):
        report = component.supervisor.last_outcome.report
        if component.error_queue is not None and report is not None:
            component.error_queue.put(report)


class Run:
    """
    One run: C{set_up}, the work, C{tear_down}, then C{on_end(outcome)}.
    Subclasses implement L{_work} and L{_end_work}.

    @ivar on_ready: set by the supervisor; call once the work is under way.
    @ivar on_end: set by the supervisor; called once with the L{Outcome}.
    """

    def __init__(self, component):
        self.component = component
        self.on_ready = lambda: None
        self.on_end = lambda outcome: None
        self._ended = defer.Deferred()
        self._setting_up = True
        self._stop_requested = False
        self._early_end = None  # an Outcome decided while set_up ran
        self._tearing_down = False

    def when_ended(self):
        d = defer.Deferred()
        self._ended.addBoth(lambda r: (d.callback(None), r)[1])
        return d

    def start(self):
        d = defer.maybeDeferred(self.component.set_up)
        d.addCallbacks(self._set_up_done, self._set_up_failed)

    def _set_up_done(self, _):
        self._setting_up = False
        if self._early_end is not None:
            self.end(self._early_end)
        elif self._stop_requested:
            self.end(Outcome(STOPPED))
        else:
            self._work()

    def _set_up_failed(self, failure):
        # set_up raised: that ends this run; reported like a TERMINATE.  An
        # environment's or a database's refusal is one line; a bug gets its
        # traceback.
        self._setting_up = False
        component = self.component
        if failure.check(OSError, psycopg2.Error, HermesException):
            component.log.error("{ident}: set_up failed: {error}", ident=component.ident,
                                error=one_line(failure.value))
        else:
            component.log.failure("{ident}: set_up failed", failure=failure, ident=component.ident)
        report = ComponentError(False, strategies.TERMINATE, component, failure.value)
        self.end(Outcome(TERMINATED, failure.value, report), tear_down=False)

    def stop(self):
        """
        End the run on request (the subclass decides how fast), within the
        component's C{shutdown_timeout} if it has one: past it, the run is
        over whatever is still pending (the item in progress, a slow
        C{tear_down}), and nothing pending can touch a later run.
        """
        self._stop_requested = True
        timeout = getattr(self.component, "shutdown_timeout", None)
        if timeout is not None and not self._ended.called:
            timer = self.component.clock.callLater(timeout, self._give_up)
            self._ended.addBoth(lambda r: (timer.active() and timer.cancel(), r)[1])
        if not self._setting_up and not self._tearing_down:
            self._end_work()

    def _give_up(self):
        component = self.component
        if not self._tearing_down:
            component.log.warn(
                "{ident}: the item in progress did not finish within {t:g} s; stopping anyway",
                ident=component.ident, t=component.shutdown_timeout,
            )
            self.end(Outcome(STOPPED))
        if not self._ended.called:
            component.log.warn(
                "{ident}: tear_down did not finish within {t:g} s; stopped anyway",
                ident=component.ident, t=component.shutdown_timeout,
            )
            self._report(Outcome(STOPPED))

    def terminate(self, report):
        """
        End the run for good with C{report}.
        """
        if self._setting_up:
            self._early_end = Outcome(TERMINATED, report.error, report)
        elif not self._tearing_down:
            self._terminate_work(report)

    def _work(self):
        raise NotImplementedError

    def _end_work(self):
        raise NotImplementedError

    def _terminate_work(self, report):
        self.end(Outcome(TERMINATED, report.error, report))

    def end(self, outcome, tear_down=True):
        """
        Finish the run: C{tear_down}, then report C{outcome}.  Only the
        first call counts.
        """
        if self._tearing_down:
            return
        self._tearing_down = True
        component = self.component
        d = defer.maybeDeferred(component.tear_down) if tear_down else defer.succeed(None)
        d.addErrback(
            lambda f: component.log.failure(
                "{ident}: tear_down failed", failure=f, ident=component.ident
            )
        )
        d.addBoth(lambda _: self._report(outcome))

    def _report(self, outcome):
        if self._ended.called:
            return  # given up on already: this end is nobody's news
        self._ended.callback(outcome)
        self.on_end(outcome)


class ConsumerRun(Run):
    """
    A run of a L{Component}: its L{ConsumerLoop} until stopped (the item in
    progress may take up to C{shutdown_timeout} seconds) or terminated.
    """

    loop = None

    def _work(self):
        component = self.component
        self.loop = ConsumerLoop(component, component.clock)
        self.on_ready()
        d = self.loop.run(Component.pre_execute, Component.post_execute)
        d.addErrback(
            lambda f: component.log.failure("{ident}: consumer loop failed", failure=f,
                                            ident=component.ident)
        )
        d.addBoth(lambda _: self._loop_ended())

    def _loop_ended(self):
        report = self.loop.report
        if report is not None:
            self.end(Outcome(TERMINATED, report.error, report))
        else:
            self.end(Outcome(STOPPED))

    def _end_work(self):
        self.loop.stop()

    def _terminate_work(self, report):
        self.loop.terminate(report)


class Component(BaseComponent):
    """
    A listener-fed processor (the seed's Component): a queue consumer.

    Subclasses override L{execute} (and may override L{pre_execute},
    L{post_execute}, L{set_up}, L{tear_down}).  The seed's process methods
    become: L{ident} (the service name), L{is_alive} (running and not
    terminated) and L{join} (a Deferred that fires when the run ends).

    @ivar current_item: the item being processed, or C{None} between items.
    @ivar processed: notifications processed without error, by channel.
    @ivar failures: exceptions and undelivered outcomes so far.
    """

    _wired_pipe = False  # True when a Client supplied notification_pipe
    #: C{None}, or the largest batch in batch mode (see C{__init__})
    max_batch = None
    #: C{None}, or seconds an C{execute} Deferred may take (see C{__init__})
    execute_timeout = None

    def __init__(
        self,
        notification_pipe=None,
        error_strategy=None,
        error_queue=None,
        backoff_limit=16,
        clock=None,
        shutdown_timeout=10.0,
        max_batch=None,
        execute_timeout=None,
    ):
        """
        @param notification_pipe: where items come from: an
            L{hermes_tx.queues.EventQueue}, a L{defer.DeferredQueue} or
            anything whose C{get()} returns a Deferred.  C{None} lets a
            L{hermes_tx.client.Client} wire it (or, at start, makes a fresh
            queue).
        @param error_strategy: an L{strategies.AbstractErrorStrategy};
            C{None} means L{strategies.CommonErrorStrategy}.
        @param error_queue: where a terminating component reports a
            L{ComponentError}; C{None} lets the Client wire it.
        @param backoff_limit: the longest backoff, in seconds: backoffs wait
            1, 2, 4 ... up to this, and start again at 1 after a success.
        @param clock: an L{twisted.internet.interfaces.IReactorTime} for every
            delay; C{None} means the global reactor.
        @param shutdown_timeout: seconds C{stopService} waits for the item in
            progress before it gives up on it (C{None}: wait for ever).
        @param max_batch: C{None} for one item at a time, or a number: batch
            mode, where each item handed to the pre/execute/post chain is a
            list of up to C{max_batch} items, all that were queued at once
            (a sink with a bulk API then makes one request per batch).  A
            subclass may set it as a class attribute instead.
        @param execute_timeout: C{None}, or seconds an C{execute} that
            returned a Deferred may take; it is then cancelled and handled
            by the error strategy as an
            L{hermes_tx.runloop.ExecuteTimeout}.  A subclass may set it as
            a class attribute instead.
        """
        BaseComponent.__init__(
            self, error_strategy=error_strategy, error_queue=error_queue,
            backoff_limit=backoff_limit, clock=clock,
        )
        self.notification_pipe = notification_pipe
        self.shutdown_timeout = shutdown_timeout
        if max_batch is not None:
            self.max_batch = max_batch
        if execute_timeout is not None:
            self.execute_timeout = execute_timeout
        self.current_item = None
        self.processed = {}
        self.failures = 0

    # -- the seed's extension points ----------------------------------------

    def pre_execute(self):
        """
        Called first for each item.  Its value is passed to L{execute}; by
        default that is the item itself (also in L{current_item}).
        """
        return self.current_item

    def execute(self, pre_exec_value):
        """
        Process one item.  Subclasses must override this.

        @param pre_exec_value: what L{pre_execute} returned.
        @return: a value or a Deferred; passed to L{post_execute}.  A
            L{hermes_tx.outcomes.BatchOutcome} says what became of each
            event of a batch; raising L{hermes_tx.outcomes.Retry} or
            L{hermes_tx.outcomes.Reject} says it for all of them.
        """
        raise NotImplementedError("Subclasses MUST override the 'execute' method")

    def post_execute(self, exec_value):
        """
        Called last for each item with what L{execute} returned.
        """

    # -- runs -----------------------------------------------------------------

    def _new_run(self):
        if self.notification_pipe is None:
            self.notification_pipe = EventQueue()
        return ConsumerRun(self)

    @property
    def failing(self):
        """
        C{None}, or C{(reason, since)} while the processor keeps failing to
        deliver the same events (it raised L{hermes_tx.outcomes.Retry}, for
        example because its output cannot be written).
        """
        loop = getattr(self.supervisor.run, "loop", None)
        return None if loop is None else loop.failing

    @property
    def busy_since(self):
        """
        Clock time at which the item in progress was taken, or C{None}.
        """
        run = self.supervisor.run
        loop = getattr(run, "loop", None)
        if loop is None or loop.current is None:
            return None
        return loop.started_at
