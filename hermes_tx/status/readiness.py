# -*- test-case-name: tests.test_status -*-
"""
L{readiness}: whether a Client can deliver now, and why not.
"""

from hermes_tx.exceptions import one_line
from hermes_tx.failover.roles import PRIMARY
from hermes_tx.runtime.breaker import CLOSED


def readiness(client):
    """
    @return: C{(ready, details)}: ready is True when the server is the
        primary, the listener is listening and its LISTEN is not known to
        hear nothing (its C{deaf}), the outbox consumer (if any) is
        consuming and the processor is working (not terminated, not paused
        by its circuit breaker, not stuck on one event for longer than its
        C{execute_timeout}); details is a dict for humans.
    """
    listener = client.listener
    processor = client.processor
    listening = bool(getattr(listener, "is_listening", False))
    deaf = getattr(listener, "deaf", None) if listening else None
    details = {"role": client.role, "listening": listening and deaf is None}
    if client.role != PRIMARY:
        details["reason"] = f"server role is {client.role}"
    elif listener is not None and not listening:
        details["reason"] = "listener is " + _source_state(listener)
    elif deaf is not None:
        details["reason"] = f"listener's LISTEN hears nothing: {deaf}"
    elif client.outbox is not None and not client.outbox.is_consuming:
        details["reason"] = "outbox consumer is " + _source_state(client.outbox)
    elif processor is not None and getattr(processor, "terminated", None) is not None:
        details["reason"] = "processor terminated: " + one_line(processor.terminated.error)
    elif processor is not None and not processor.running:
        details["reason"] = "processor is stopped"
    elif _circuit_open(processor):
        details["reason"] = _paused(client, processor.breaker)
    elif getattr(processor, "failing", None) is not None:
        reason, since = processor.failing
        details["reason"] = f"processor failing since {client.clock.seconds() - since:.0f} s: {reason}"
    else:
        stuck = _stuck_for(client, processor)
        if stuck is not None:
            details["reason"] = f"processor busy with one event for {stuck:.0f} s"
    outbox_hearing = getattr(client.outbox, "hearing", None)
    if outbox_hearing is not None and outbox_hearing.deaf is not None:
        # Still delivering, by polling: ready, and the body says how.
        details["outbox"] = f"polling only: wake-ups are not heard ({outbox_hearing.deaf})"
    return "reason" not in details, details


def _source_state(source):
    """
    @return: a source's state, and why it waits to reconnect (the last
        loss, scrubbed of the DSN's secrets) when it does.
    """
    state = getattr(source, "state", "missing")
    supervisor = getattr(source, "supervisor", None)
    outcome = getattr(supervisor, "last_outcome", None)
    if state != "waiting" or outcome is None or outcome.error is None:
        return state
    line = one_line(outcome.error)
    scrub = getattr(getattr(source, "pg_connector", None), "scrub", None)
    return f"{state} to reconnect after {scrub(line) if scrub is not None else line}"


def _circuit_open(processor):
    breaker = getattr(processor, "breaker", None)
    return breaker is not None and breaker.state != CLOSED


def _paused(client, breaker):
    """
    @return: why an open (or half-open) circuit pauses the processor.
    """
    text = f"processor paused: {breaker.failures} deliveries failed in a row"
    if breaker.reason:
        text += f" (last: {breaker.reason})"
    if breaker.retry_at is not None:
        text += f"; next try in {max(0.0, breaker.retry_at - client.clock.seconds()):.1f} s"
    else:
        text += "; trying again now"
    return text


def _stuck_for(client, processor):
    """
    @return: seconds the processor has spent on its current event when that
        exceeds its C{execute_timeout}, else C{None}.
    """
    timeout = getattr(processor, "execute_timeout", None)
    since = getattr(processor, "busy_since", None)
    if not timeout or since is None:
        return None
    age = client.clock.seconds() - since
    return age if age > timeout else None

