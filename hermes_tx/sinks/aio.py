# -*- test-case-name: tests.test_sink_nats -*-
"""
asyncio libraries (nats-py) under Twisted, on Twisted's asyncio reactor.

That reactor runs on asyncio's event loop, so a coroutine runs in the
reactor's thread and its future becomes a Deferred (L{deferred}): no
second loop, no thread, nothing to hand across.  Under any other reactor
no asyncio loop runs at all; L{require_asyncio_reactor} says so in one
line when a sink is made, before anything starts.
"""

import asyncio

from twisted.internet import defer

from hermes_tx.sinks.urls import SinkURLError

#: what to run instead, in the line L{require_asyncio_reactor} raises
HOW = ("run twistd --reactor asyncio hermes ... (trial: trial --reactor=asyncio; "
       "in Python: twisted.internet.asyncioreactor.install() before anything imports "
       "the reactor)")


class NeedsAsyncioReactor(SinkURLError):
    """
    The sink's client is asyncio-only and the reactor is not Twisted's
    asyncio reactor: the sink cannot be used in this process (C{twistd
    hermes} exits with a usage error, as for a URL it cannot use).
    """


def require_asyncio_reactor(reactor, what):
    """
    @param reactor: the reactor the sink would run on.
    @param what: what needs it, to name in the message (C{"the NATS sink"}).
    @raise NeedsAsyncioReactor: C{reactor} is not an
        C{AsyncioSelectorReactor}.
    """
    from twisted.internet.asyncioreactor import AsyncioSelectorReactor

    if not isinstance(reactor, AsyncioSelectorReactor):
        raise NeedsAsyncioReactor(
            f"{what} needs Twisted's asyncio reactor, not {type(reactor).__name__}: {HOW}")


def deferred(awaitable):
    """
    Run C{awaitable} (a coroutine or a future) on the reactor's asyncio
    loop.

    @return: a Deferred of its result; cancelling it cancels the task (the
        coroutine sees C{asyncio.CancelledError} where it waits).
    """
    return defer.Deferred.fromFuture(asyncio.ensure_future(awaitable))
