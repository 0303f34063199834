# -*- test-case-name: tests.test_components -*-
"""
L{Component}: the base of listeners and processors, as a Twisted service.

A component takes items from its C{notification_pipe} one at a time and runs
C{pre_execute()}, C{execute(pre_exec_value)} and C{post_execute(exec_value)}
for each, between C{set_up()} at start and C{tear_down()} at stop.  Each of
those may return a plain value or a L{Deferred}.  Exceptions go to the error
strategy, which says whether to go on, back off or terminate.
"""

from collections import namedtuple

from twisted.application import service
from twisted.internet import defer, task
from twisted.logger import Logger

from hermes_tx import strategies
from hermes_tx.exceptions import failure_of, one_line
from hermes_tx.queues import EventQueue
from hermes_tx.runloop import run_items

#: What a component puts on its error queue when it terminates: the seed's
#: C{(expected, action)} pair, plus the component and the error itself.
ComponentError = namedtuple("ComponentError", "expected action component error")


class Component(service.Service):
    """
    A listener or processor: a L{twisted.application.service.IService}.

    Subclasses override L{execute} (and may override L{pre_execute},
    L{post_execute}, L{set_up}, L{tear_down}).  The seed's process methods
    become: L{ident} (the service name), L{is_alive} (running and not
    terminated) and L{join} (a Deferred that fires when the run ends).

    @ivar current_item: the item being processed, or C{None} between items.
    @ivar backoff_limit: the longest backoff in seconds.
    """

    log = Logger()
    _wired_pipe = False  # True when a Client supplied notification_pipe
    #: C{None}, or the largest batch in batch mode (see C{__init__})
    max_batch = None

    def __init__(
        self,
        notification_pipe=None,
        error_strategy=None,
        error_queue=None,
        backoff_limit=16,
        clock=None,
        shutdown_timeout=10.0,
        max_batch=None,
    ):
        """
        @param notification_pipe: where items come from: a
            L{defer.DeferredQueue} or anything whose C{get()} returns a
            Deferred.  C{None} lets a L{hermes_tx.client.Client} wire it (or,
            at start, makes a fresh queue).
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
        """
        self.notification_pipe = notification_pipe
        self.error_strategy = error_strategy or strategies.CommonErrorStrategy()
        self.error_queue = error_queue
        self.backoff_limit = backoff_limit
        self.shutdown_timeout = shutdown_timeout
        if max_batch is not None:
            self.max_batch = max_batch
        if clock is None:
            from twisted.internet import reactor as clock
        self.clock = clock
        self.current_item = None
        #: notifications processed without error, by channel (for metrics)
        self.processed = {}
        #: exceptions raised while processing (for metrics)
        self.failures = 0
        self._backoff_attempts = 0
        self._stopping = False
        self._terminated = False
        self._waiting = None  # the pipe's get() Deferred while idle
        self._sleeping = None  # the backoff delay while backing off
        self._run_done = None  # fires when the current run has ended
        # Each start begins a new run; a loop from an older run (one a
        # shutdown timeout gave up on) must leave the new one alone.
        self._generation = 0
        self._tearing_down = None  # the generation whose tear_down runs

    # -- the seed's extension points ----------------------------------------

    def set_up(self):
        """
        Called once when the component starts, before any item.  May return a
        Deferred.
        """

    def tear_down(self):
        """
        Called once when the component stops, after the last item.  May return
        a Deferred.
        """

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
        @return: a value or a Deferred; passed to L{post_execute}.
        """
        raise NotImplementedError("Subclasses MUST override the 'execute' method")

    def post_execute(self, exec_value):
        """
        Called last for each item with what L{execute} returned.
        """

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
        return bool(self.running) and not self._terminated

    def join(self):
        """
        @return: a Deferred that fires when the current run has ended (after
            L{tear_down}); already fired when the component is not running.
            Never blocks.
        """
        if self._run_done is None or self._run_done.called:
            return defer.succeed(None)
        d = defer.Deferred()
        self._run_done.addBoth(lambda r: (d.callback(None), r)[1])
        return d

    # -- IService -----------------------------------------------------------

    def startService(self):
        service.Service.startService(self)
        if self.notification_pipe is None:
            self.notification_pipe = EventQueue()
        generation = self._begin_run()
        d = defer.maybeDeferred(self.set_up)
        d.addCallback(lambda _: self._run(generation))
        d.addErrback(self._run_failed)
        d.addBoth(self._finish_run, generation)

    def _begin_run(self):
        """
        Reset the state of one run (start to stop).

        @return: the new run's number.
        """
        self._stopping = False
        self._terminated = False
        self._backoff_attempts = 0
        self._run_done = defer.Deferred()
        self._generation += 1
        return self._generation

    def stopService(self):
        """
        Stop taking items, let the item in progress finish (for at most
        C{shutdown_timeout} seconds), then C{tear_down()}.  Items still
        queued stay in the pipe.

        @return: a Deferred that fires when the run has ended.
        """
        service.Service.stopService(self)
        self._stopping = True
        for d in (self._waiting, self._sleeping):
            if d is not None and not d.called:
                d.cancel()
        done = self.join()
        if not done.called and self.shutdown_timeout is not None:
            timer = self.clock.callLater(self.shutdown_timeout, self._give_up_on_item)
            done.addBoth(lambda r: (timer.active() and timer.cancel(), r)[1])
        return done

    def _give_up_on_item(self):
        self.log.warn(
            "{ident}: the item in progress did not finish within {t:g} s; stopping anyway",
            ident=self.ident, t=self.shutdown_timeout,
        )
        self._finish_run(None, self._generation)

    # -- the run loop -------------------------------------------------------

    def _run(self, generation):
        return run_items(self, generation, Component.pre_execute, Component.post_execute)

    @defer.inlineCallbacks
    def _handle_error(self, error, item=None):
        """
        Apply the error strategy to C{error}.

        @return: a Deferred firing True to go on, False when terminated.
        """
        self.failures += 1
        expected, action = self.error_strategy.handle_exception(error)
        channel = getattr(item, "channel", None)
        where = f" (channel {channel!r})" if channel is not None else ""
        if action == strategies.CONTINUE:
            self.log.warn(
                "{ident}: skipped an item after {error!r}{where}",
                ident=self.ident, error=error, where=where,
            )
            return True
        if action == strategies.BACKOFF:
            delay = self.backoff_delay()
            if expected:
                self.log.warn(
                    "{ident}: {error}{where}; backing off {delay:g} s",
                    ident=self.ident, error=one_line(error), where=where, delay=delay,
                )
            else:
                self.log.failure(
                    "{ident}: unexpected error{where}; backing off {delay:g} s",
                    failure=failure_of(error), ident=self.ident, where=where, delay=delay,
                )
            self._sleeping = task.deferLater(self.clock, delay, lambda: None)
            try:
                yield self._sleeping
            except defer.CancelledError:
                return False
            finally:
                self._sleeping = None
            return True
        if action == strategies.TERMINATE:
            self.log.warn(
                "{ident}: terminated by {error}{where}",
                ident=self.ident, error=one_line(error), where=where,
            )
        else:
            self.log.failure(
                "{ident}: error strategy returned unknown action {action!r}",
                failure=failure_of(error), ident=self.ident, action=action,
            )
        self.terminate(ComponentError(expected, action, self, error))
        return False

    def backoff_delay(self):
        """
        @return: the seconds to wait for this backoff (1, 2, 4 ... up to
            C{backoff_limit}), counting it as one more attempt.
        """
        policy = strategies.backoff_policy(
            initial=1.0, factor=2.0, max_delay=self.backoff_limit, jitter=None
        )
        delay = policy(self._backoff_attempts)
        self._backoff_attempts += 1
        return delay

    def terminate(self, report):
        """
        Stop processing and put C{report} (a L{ComponentError}) on the error
        queue, so the Client learns of it.
        """
        self._terminated = True
        self._stopping = True
        if self.error_queue is not None:
            self.error_queue.put(report)

    def _run_failed(self, failure):
        # set_up raised: that ends this run; report it like a TERMINATE.
        self.log.failure("{ident}: set_up failed", failure=failure, ident=self.ident)
        self.terminate(ComponentError(False, strategies.TERMINATE, self, failure.value))

    def _finish_run(self, _, generation=None):
        if generation is not None and generation != self._generation:
            return  # an older run, given up on: the current one is not ours
        run_done = self._run_done
        if run_done is None or run_done.called or self._tearing_down == self._generation:
            return  # already ending (a shutdown timeout gave up on the item)
        # Remember which run is tearing down, and fire that run's Deferred:
        # a slow tear_down must not end a run started after it.
        self._tearing_down = self._generation
        d = defer.maybeDeferred(self.tear_down)
        d.addErrback(
            lambda f: self.log.failure("{ident}: tear_down failed", failure=f, ident=self.ident)
        )
        d.addBoth(lambda _: run_done.called or run_done.callback(None))
