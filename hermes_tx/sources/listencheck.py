# -*- test-case-name: tests.test_listencheck,tests.test_listencheck_pg -*-
"""
L{ListenCheck}: prove that a LISTEN hears, as an Automat state machine.

A LISTEN can succeed and then hear nothing: through a transaction-pooling
proxy (pgbouncer C{pool_mode=transaction}) the server connection that ran
LISTEN goes back to the pool, and what the server sends it while no client
is linked to it is dropped (pgbouncer logs C{got packet 'A' from server
when not linked}).  So the run that LISTENs also LISTENs on a private
channel (L{private_channel}) and, once its LISTEN succeeded, has a probe
notification sent there from I{another} connection (L{new_connection_sender}):
if it does not come back within C{timeout} seconds, the LISTEN is deaf.

Why another connection (measured, pgbouncer 1.18 in transaction mode, one
listening client): a NOTIFY sent on the listening connection itself comes
back every time (it is delivered to that session right after its own
transaction, while pgbouncer still links the client to it), while 0 of 80
notifications from other sessions arrived.  And why others' notifications
prove nothing until a probe did: the listener's own queries (its liveness
C{SELECT 1}) link it to that server connection for an instant, and
whatever the server sends then gets through (7 of 2,544 notifications sent
at 330/s, one per C{SELECT 1}).  So only a probe turns a run's verdict to
"heard"; once heard, notifications from other backends (L{others_heard})
postpone the next probe, which otherwise comes every C{interval} seconds.

Probes never overlap, each has a timeout, and a probe that cannot be sent
(no connection, an error, no answer) is not "deaf": it is reported as what
it is (C{on_failed}), and the verdict stands until a probe decides.
"""

import secrets
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Protocol

from automat import TypeMachineBuilder
from twisted.internet import defer
from twisted.logger import Logger

from hermes_tx.exceptions import one_line
from hermes_tx.runtime.machines import StateName

#: the private channel's prefix (a random suffix follows)
CHANNEL_PREFIX = "hermes.listencheck."

#: how many recent probe payloads still count when they come back late
RECENT_PROBES = 8

HEARD, DEAF, UNPROVEN = "heard", "deaf", "unproven"


def private_channel(avoid=()):
    """
    @param avoid: channel names the result must differ from (the user's).
    @return: a channel name for probes: L{CHANNEL_PREFIX} and 16 random hex
        digits, so it collides with nobody's channel and cannot be guessed.
    """
    while True:
        name = CHANNEL_PREFIX + secrets.token_hex(8)
        if name not in avoid:
            return name


def sift(batch, channel):
    """
    Split a batch of notifications (psycopg2 C{Notify}) into the user's and
    the probes'.  Call it only when C{channel} is in the batch: checking
    that is the caller's cheap test (C{channel in map(attrgetter("channel"),
    batch)}).

    @return: C{(others, payloads)}: the notifications on other channels, in
        order, and the payloads of those on C{channel}.
    """
    others = [n for n in batch if n.channel != channel]
    payloads = [n.payload for n in batch if n.channel == channel]
    return others, payloads


def new_connection_sender(pg_connector, timeout):
    """
    A sender for L{ListenCheck}: each probe is C{SELECT pg_notify(channel,
    payload)} on a new connection made as C{pg_connector} makes them (the
    same DSN, the same pinned host, C{application_name} with
    C{-listencheck} appended), closed once it answered.  Through a
    transaction-pooling proxy that is another server session than the
    listening one, as a real sender's would be.

    @param pg_connector: the listening run's
        L{hermes_tx.connectors.PostgresConnector}.
    @param timeout: seconds a connection attempt may take.
    @return: C{send(channel, payload)} returning a Deferred that fires once
        the NOTIFY is committed; cancelling it closes the connection.
    """
    from hermes_tx.connectors import PostgresConnector

    params = dict(pg_connector.params)
    params["application_name"] = params.get("application_name", "hermes") + "-listencheck"

    def send(channel, payload):
        connector = PostgresConnector(
            params, reactor=pg_connector.reactor, connect_timeout=timeout,
            resolver=pg_connector.resolve,
        )
        if pg_connector.pinned is not None:
            connector.pin(pg_connector.pinned)
        done = defer.Deferred(lambda _: connector.disconnect())
        d = connector.runQuery("SELECT pg_notify(%s, %s)", (channel, payload))

        def finished(result):
            connector.disconnect()
            if not done.called:
                done.callback(result)

        d.addBoth(finished)
        return done

    return send


class _Inputs(Protocol):
    def start(self) -> None:
        "LISTEN succeeded: probe now."

    def stop(self) -> None:
        "Stop checking; a probe in flight is forgotten."

    def pause(self) -> None:
        "Notifications are not read for now (back-pressure): stop probing."

    def resume(self) -> None:
        "Notifications are read again: probe after the interval."

    def sent(self) -> None:
        "The probe in flight is committed: its notification is on its way."

    def send_failed(self, reason: str) -> None:
        "The probe in flight could not be sent."

    def came_back(self) -> None:
        "The notification of one of our probes arrived."

    def timed_out(self) -> None:
        "The probe in flight took longer than the timeout."

    def due(self) -> None:
        "Time for the next probe."


@dataclass
class _Core:
    clock: Any
    send: Callable[[str, str], defer.Deferred]
    channel: str
    on_heard: Callable[[], None]
    on_deaf: Callable[[str], None]
    on_failed: Callable[[str], None]
    interval: float
    timeout: float
    log: Logger
    timer: Optional[Any] = None
    sending: Optional[defer.Deferred] = None
    recent: deque = field(default_factory=lambda: deque(maxlen=RECENT_PROBES))
    others: int = 0  # notifications from other backends so far (batches)
    others_seen: int = 0  # ... when the Heard state last looked

    def enter(self, delay=None, fire=None):
        """Leave the state's timer behind; arm the new state's, if any."""
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.timer = None if delay is None else self.clock.callLater(delay, fire)

    def send_probe(self, machine):
        payload = secrets.token_hex(8)
        self.recent.append(payload)
        self.enter(self.timeout, machine.timed_out)
        d = self.sending = defer.maybeDeferred(self.send, self.channel, payload)

        def sent(_):
            if self.sending is d:
                self.sending = None
                machine.sent()

        def failed(failure):
            if self.sending is d:
                self.sending = None
                machine.send_failed(one_line(failure.value))

        d.addCallbacks(sent, failed)

    def forget_probe(self):
        d, self.sending = self.sending, None
        if d is not None:
            d.cancel()

    def heard_due(self, machine):
        # Heard's timer: notifications from other backends since the last
        # look mean the LISTEN still hears; look again later.
        if self.others != self.others_seen:
            self.others_seen = self.others
            self.enter(self.interval, lambda: self.heard_due(machine))
        else:
            machine.due()

    def report(self, callback, *args):
        try:
            callback(*args)
        except Exception:
            self.log.failure("listen check: {callback!r} failed", callback=callback)


def _build():
    builder = TypeMachineBuilder(_Inputs, _Core)
    stopped = builder.state("Stopped")
    sending = builder.state("Sending")
    waiting = builder.state("Waiting")
    heard = builder.state("Heard")
    deaf = builder.state("Deaf")
    unproven = builder.state("Unproven")
    paused = builder.state("Paused")
    resting = (heard, deaf, unproven)
    probing = (sending, waiting)

    @stopped.upon(_Inputs.start).to(sending)
    @heard.upon(_Inputs.start).to(sending)
    @deaf.upon(_Inputs.start).to(sending)
    @unproven.upon(_Inputs.start).to(sending)
    @heard.upon(_Inputs.due).to(sending)
    @deaf.upon(_Inputs.due).to(sending)
    @unproven.upon(_Inputs.due).to(sending)
    def probe(inputs, core):
        core.send_probe(inputs)

    @sending.upon(_Inputs.sent).to(waiting)
    def wait_for_it(inputs, core):
        core.enter(core.timeout, inputs.timed_out)

    for state in probing + (deaf, unproven):
        @state.upon(_Inputs.came_back).to(heard)
        def came_back(inputs, core):
            # Also a probe's notification arriving before its commit was
            # acknowledged, or after its timeout (late, but it heard).
            core.forget_probe()
            core.others_seen = core.others
            core.enter(core.interval, lambda: core.heard_due(inputs))
            core.report(core.on_heard)

    @sending.upon(_Inputs.send_failed).to(unproven)
    def not_sent(inputs, core, reason):
        core.enter(core.interval, inputs.due)
        core.report(core.on_failed, reason)

    @sending.upon(_Inputs.timed_out).to(unproven)
    def not_sent_in_time(inputs, core):
        core.forget_probe()
        core.enter(core.interval, inputs.due)
        core.report(core.on_failed, f"the probe was not sent within {core.timeout:g} s")

    @waiting.upon(_Inputs.timed_out).to(deaf)
    def not_heard(inputs, core):
        core.enter(core.interval, inputs.due)
        core.report(core.on_deaf, f"a probe notification sent from another connection "
                                  f"did not come back within {core.timeout:g} s")

    for state in probing + resting + (paused,):
        @state.upon(_Inputs.stop).to(stopped)
        def stop(inputs, core):
            core.forget_probe()
            core.enter()

    for state in probing + resting:
        @state.upon(_Inputs.pause).to(paused)
        def pause(inputs, core):
            core.forget_probe()
            core.enter()

    @paused.upon(_Inputs.resume).to(unproven)
    def resume(inputs, core):
        # No verdict is due from a pause: the next probe comes after the
        # interval (a backlog that pauses and resumes often does not make
        # a probe connection each time).
        core.enter(core.interval, inputs.due)

    # Inputs that change nothing: a start while probing or paused, late
    # news of a probe already forgotten, duplicates.
    ignored = {
        stopped: ("stop", "pause", "resume", "sent", "send_failed", "came_back", "timed_out",
                  "due"),
        sending: ("start", "resume", "due"),
        waiting: ("start", "resume", "sent", "send_failed", "due"),
        heard: ("resume", "sent", "send_failed", "came_back", "timed_out"),
        deaf: ("resume", "sent", "send_failed", "timed_out"),
        unproven: ("resume", "sent", "send_failed", "timed_out"),
        paused: ("start", "pause", "sent", "send_failed", "came_back", "timed_out", "due"),
    }
    for state, names in ignored.items():
        for name in names:
            state.upon(getattr(_Inputs, name)).loop().returns(None)
    return builder.build()


_Machine = _build()


class ListenCheck:
    """
    Proves, for one run (one connection), that its LISTEN hears: the run
    L{start}s it once LISTEN succeeded, hands it what arrives on its private
    channel (L{received}) and notes others' notifications
    (L{others_heard}); it tells the run C{on_heard()}, C{on_deaf(reason)}
    or C{on_failed(reason)} after each probe.

    @ivar state: C{"stopped"}, C{"sending"} (a probe is being sent),
        C{"waiting"} (for its notification), C{"heard"}, C{"deaf"},
        C{"unproven"} (the last probe could not be sent, or reading was
        paused) or C{"paused"}.
    @ivar strangers: notifications on the private channel that were none
        of our recent probes (someone else NOTIFYing there): ignored.
    """

    log = Logger()

    def __init__(self, clock, send, channel, on_heard, on_deaf, on_failed,
                 interval=30.0, timeout=5.0):
        """
        @param clock: an C{IReactorTime} for every timer.
        @param send: C{send(channel, payload)} returning a Deferred that
            fires once the NOTIFY is committed (fails if it cannot be sent);
            cancelling it abandons the probe (L{new_connection_sender}).
        @param channel: the private channel the run LISTENs on
            (L{private_channel}).
        @param on_heard: called with no argument when a probe came back.
        @param on_deaf: called with a one-line reason when a probe was sent
            and its notification did not come back within C{timeout}.
        @param on_failed: called with a one-line reason when a probe could
            not be sent (no connection, an error, not within C{timeout}):
            that says nothing about the LISTEN.
        @param interval: seconds from one verdict to the next probe.
        @param timeout: seconds a probe may take to be sent, and then to
            come back.
        """
        self.strangers = 0
        self._core = _Core(clock, send, channel, on_heard, on_deaf, on_failed,
                           interval, timeout, self.log)
        self._machine = _Machine(self._core)
        self._state = StateName(self._machine, "Stopped")

    @property
    def state(self):
        return self._state.name.lower()

    @property
    def channel(self):
        return self._core.channel

    def start(self):
        """LISTEN succeeded: send a probe now."""
        self._machine.start()

    def stop(self):
        """Stop for good (the run ends); a probe in flight is abandoned."""
        self._machine.stop()

    def pause(self):
        """
        The run stopped reading notifications (back-pressure): no probe
        until L{resume}, and a probe in flight is abandoned (its
        notification could not be read in time).
        """
        self._machine.pause()

    def resume(self):
        """The run reads again: the next probe comes after C{interval}."""
        self._machine.resume()

    def received(self, payload):
        """
        A notification arrived on the private channel.
        """
        if payload in self._core.recent:
            self._machine.came_back()
        else:
            self.strangers += 1

    def others_heard(self):
        """
        A notification from another backend arrived (cheap: call it once
        per batch).  It postpones the next probe once a probe proved the
        LISTEN hears; before that it proves nothing.
        """
        self._core.others += 1
