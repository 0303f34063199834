# -*- test-case-name: tests.test_components -*-
"""
Components as Twisted services.

  - L{BaseComponent}: the lifecycle every component shares.  Each start
    begins a I{run} (C{set_up}, the work, C{tear_down}); a
    L{hermes_tx.runtime.supervisor.Supervisor} owns the runs, restarts lost ones
    after a backoff, and reports terminated ones on the error queue.
  - L{Component}: the seed's component, a queue consumer: it takes items
    from its C{queue} and runs C{pre_execute()},
    C{execute(pre_exec_value)} and C{post_execute(exec_value)} for each, in
    a L{hermes_tx.runtime.loop.ConsumerLoop}.  Processors subclass it.

Each step may return a plain value or a
L{Deferred <twisted.internet.defer.Deferred>}.  Exceptions go to the
error strategy, which says whether to go on, back off or terminate;
L{hermes_tx.outcomes} lets a processor say more (try again, never).
"""

from hermes_tx.exceptions import InvalidConfigurationException
from hermes_tx.runtime.backoff import Backoff, backoff_policy
from hermes_tx.runtime.breaker import Breaker
from hermes_tx.runtime.component import BaseComponent  # noqa: F401 (for subclasses: its old home)
from hermes_tx.runtime.loglimit import LogLimit
from hermes_tx.runtime.queue import EventQueue
from hermes_tx.runtime.run import ConsumerRun, Run  # noqa: F401 (Run: for subclasses of BaseComponent)
from hermes_tx.runtime.supervisor import (  # noqa: F401 (ComponentError: the seed's name, here)
    LOST,
    STOPPED,
    TERMINATED,
    ComponentError,
    Outcome,
)
from hermes_tx.sources.component import ConnectedComponent  # noqa: F401 (its old home)


#: at most this many lines a second about events that failed (the next line
#: counts those left out)
FAILURE_LINES = 5


class Component(BaseComponent):
    """
    A listener-fed processor (the seed's Component): a queue consumer.

    Subclasses override L{execute} (and may override L{pre_execute},
    L{post_execute}, L{set_up <BaseComponent.set_up>},
    L{tear_down <BaseComponent.tear_down>}).  The seed's process methods
    become: L{ident <BaseComponent.ident>} (the service name),
    L{is_alive <BaseComponent.is_alive>} (running and not terminated) and
    L{join <BaseComponent.join>} (a Deferred that fires when the run ends).

    @ivar current_item: the item being processed, or C{None} between items.
    @ivar processed: notifications processed without error, by channel.
    @ivar failures: exceptions and undelivered outcomes so far.
    @ivar breaker: the L{hermes_tx.runtime.breaker.Breaker} that backs the
        whole processor off while deliveries keep failing (a dependency is
        down); one failing event never does.
    @ivar retry_backoff: the L{hermes_tx.runtime.backoff.Backoff} of
        notifications executed again in memory, and of the C{BACKOFF}
        action for them (1, 2, 4 ... up to C{backoff_limit} seconds; reset
        by a success).
    """

    #: C{None}, or the largest batch in batch mode (see C{__init__})
    max_batch = None
    #: C{None}, or C{observer(event, outcome, detail)} told what became of
    #: each event: C{"done"}, C{"retried"} (detail: the reason),
    #: C{"rejected"} (the reason) or C{"failed"} (the exception, handed to
    #: the error strategy).  L{hermes_tx.testing} sets it.
    outcome_observer = None
    #: seconds an C{execute} Deferred may take (see C{__init__}); C{None} or
    #: 0: no limit.  The same default as C{twistd hermes --execute-timeout}.
    execute_timeout = 60.0

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
        queue=None,
    ):
        """
        @param notification_pipe: the seed's name of C{queue}.
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
        @param execute_timeout: seconds an C{execute} that returned a
            Deferred may take; it is then cancelled and handled by the error
            strategy as an L{hermes_tx.exceptions.ExecuteTimeout}.  C{None}
            keeps the class's (60 s unless a subclass says otherwise); 0
            means no limit.  A subclass may set it as a class attribute
            instead.
        @param queue: where items come from: an
            L{hermes_tx.runtime.queue.EventQueue}, a
            L{twisted.internet.defer.DeferredQueue} or anything whose
            C{get()} returns a Deferred.  C{None} lets a
            L{hermes_tx.client.Client} wire it (or, at start, makes a fresh
            queue).
        """
        BaseComponent.__init__(
            self, error_strategy=error_strategy, error_queue=error_queue,
            backoff_limit=backoff_limit, clock=clock,
        )
        if queue is not None and notification_pipe is not None and queue is not notification_pipe:
            raise InvalidConfigurationException("pass queue or notification_pipe (its seed name), not both")
        self.queue = queue if queue is not None else notification_pipe
        self.shutdown_timeout = shutdown_timeout
        if max_batch is not None:
            self.max_batch = max_batch
        if execute_timeout is not None:
            self.execute_timeout = execute_timeout
        self.current_item = None
        self.processed = {}
        self.failures = 0
        self.retry_backoff = Backoff(self._retry_delay)
        self.breaker = Breaker(self.clock, Backoff(self._breaker_delay), name=lambda: self.ident,
                               log=self.log)
        self.failure_lines = LogLimit(self.clock, FAILURE_LINES, 1.0)

    # backoff_limit is read when a delay is needed: twistd sets it after
    # construction.

    def _retry_delay(self, attempt):
        return backoff_policy(initial=1.0, factor=2.0, max_delay=self.backoff_limit,
                              jitter=None)(attempt)

    def _breaker_delay(self, attempt):
        return backoff_policy(initial=1.0, factor=2.0, max_delay=self.backoff_limit)(attempt)

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

    def new_run(self):
        if self.queue is None:
            self.queue = EventQueue()
        return ConsumerRun(self)

    @property
    def notification_pipe(self):
        """
        The seed's name of C{queue}.
        """
        return self.queue

    @notification_pipe.setter
    def notification_pipe(self, queue):
        self.queue = queue

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


#: what a Component does when pre_execute/post_execute are not overridden
#: (the run loop skips calling them: same result, two calls fewer per item)
Component.chain_defaults = (Component.pre_execute, Component.post_execute)
