# -*- test-case-name: tests.test_outcomes -*-
"""
What a processor tells hermes_tx about the events it was given, beyond
"done" (returning normally) and "an error" (raising, handled by its error
strategy).

A sink to another system needs three answers per event: confirmed,
try again later (perhaps after a time the other side asked for), and never
(the other side rejected it for good).  For the durable outbox they mean
acknowledge, release with a backoff, and move to the dead letters; for
LISTEN/NOTIFY events, which cannot be fetched again, "try again" means the
same event is executed again after a delay, and "never" means it is logged
and skipped.

  - raise L{Retry} (optionally with C{retry_after}) when the whole event or
    batch should be tried again; L{Unavailable} when the other side is
    down (not the events' fault);
  - raise L{Reject} when the whole event or batch can never succeed;
  - return a L{BatchOutcome} from a batch processor's C{execute} (or fire
    its Deferred with one) when the answers differ per event.
"""

from hermes_tx.exceptions import HermesException


class Retry(HermesException):
    """
    The event (or batch) was not delivered but may be later.

    @ivar retry_after: C{None}, or the least number of seconds to wait
        before trying again (an HTTP C{Retry-After}, say).
    """

    def __init__(self, reason, retry_after=None):
        HermesException.__init__(self, reason)
        self.retry_after = retry_after


class Unavailable(Retry):
    """
    The other side is unavailable (down, unreachable, refusing our
    credentials, overloaded as a whole): nothing was delivered, and it is
    not these events' fault.  They are tried again later, their delivery
    not counted toward the dead letters while the processor's circuit
    breaker pauses it, and such failures in a row open the circuit
    (L{hermes_tx.runtime.breaker}).  The built-in sinks raise it for a
    batch that failed as a whole.
    """


class Reject(HermesException):
    """
    The event (or batch) can never be delivered (the other side refused it
    for good: a 4xx answer, a mapping error).  Outbox changes go to the dead
    letters; notifications are logged and skipped.
    """


class BatchOutcome:
    """
    Per-event answers for a batch.  Events of the batch named in neither
    list are done.

    @ivar retry: a list of C{(event, reason, retry_after)}: not delivered,
        try again (C{retry_after} C{None} or seconds).
    @ivar rejected: a list of C{(event, reason)}: never deliverable.
    """

    def __init__(self, retry=(), rejected=()):
        self.retry = list(retry)
        self.rejected = list(rejected)

    def retry_event(self, event, reason, retry_after=None):
        """
        Mark C{event} to be tried again.
        """
        self.retry.append((event, reason, retry_after))

    def reject_event(self, event, reason):
        """
        Mark C{event} as never deliverable.
        """
        self.rejected.append((event, reason))

    def done(self, batch):
        """
        @return: the events of C{batch} that are neither retried nor rejected.
        """
        unsettled = {id(e) for e, *_ in self.retry} | {id(e) for e, _ in self.rejected}
        return [e for e in batch if id(e) not in unsettled]

    def __repr__(self):
        return f"<BatchOutcome retry={len(self.retry)} rejected={len(self.rejected)}>"
