"""
Several C{twistd -n hermes} processes followed through the same faults
(tests.test_ha_twistd): their JSON lines, status endpoint and log, with
every problem collected per process rather than stopping at the first, so
one run says which host orders and options fail, and why.
"""

import json
import time

from twisted.internet import defer, error, reactor, task, threads
from twisted.web.client import Agent, readBody

from tests.support.faults import CHANNEL, SECRET
from tests.support.ha import EXACT, MAX_LINES_PER_SECOND, check_gap, send_payloads
from tests.support.logcheck import twistd_summary
from tests.support.shared import sleep, wait_until
from tests.test_twistd import free_port, run_twistd

#: Phrases that must never be in a process's log.
FORBIDDEN = ("Unhandled Error", "Traceback", "KeyError")


class HermesProcess(object):
    """
    One C{twistd -n hermes --dsn DSN -c CHANNEL --status-port P}.

    @ivar label: names the process (host order, options) in problems.
    @ivar mark: the number of its JSON lines when the last fault began.
    @ivar problems: what went wrong, one line each, prefixed with the label.
    """

    def __init__(self, label, dsn, *args):
        self.label = label
        self.status_port = free_port()
        self.proto, self.transport = run_twistd(
            ["--dsn", dsn, "-c", CHANNEL, "--status-port", str(self.status_port)] + list(args))
        self.ended = None  # ProcessDone or ProcessTerminated, once it has
        self.proto.ended.addBoth(self._ended)
        self.mark = 0
        self.problems = []
        self.bodies = []  # every status body received
        self.status_failures = []  # why each /ready request got no answer
        self._agent = Agent(reactor, connectTimeout=2)

    def _ended(self, reason):
        self.ended = reason

    def problem(self, text):
        self.problems.append(f"{self.label}: {text}")

    def records(self):
        """@return: the JSON lines written so far (complete lines only)."""
        lines = self.proto.out.decode("utf-8", "replace").split("\n")[:-1]
        return [json.loads(line) for line in lines]

    def events(self, start=0):
        return [(r["kind"], r.get("payload")) for r in self.records()[start:]]

    def notifications(self, start=0):
        return [payload for kind, payload in self.events(start) if kind == "notification"]

    def set_mark(self):
        self.mark = len(self.records())

    @defer.inlineCallbacks
    def get(self, path):
        """
        GET a status path.

        @return: a Deferred firing with C{(code, body)}, or C{(None,
            error text)} if the request failed.
        """
        url = f"http://127.0.0.1:{self.status_port}{path}".encode()
        try:
            response = yield self._agent.request(b"GET", url).addTimeout(5, reactor)
            body = yield readBody(response).addTimeout(5, reactor)
        except Exception as e:
            return None, f"{type(e).__name__}: {e}"
        self.bodies.append(body)
        return response.code, body

    @defer.inlineCallbacks
    def wait_serving(self, timeout=20.0):
        """Wait until the status endpoint answers C{/health} (twistd is up)."""
        deadline = time.monotonic() + timeout
        while (yield self.get("/health"))[0] != 200:
            if time.monotonic() > deadline or self.ended is not None:
                raise AssertionError(f"{self.label}: no status endpoint after {timeout} s; "
                                     f"log: {self.proto.err.decode()[-2000:]}")
            yield sleep(0.1)

    @defer.inlineCallbacks
    def check_ready(self, what):
        """The status endpoint says ready on a primary, and serves metrics."""
        code, body = yield self.get("/ready")
        if code != 200 or json.loads(body) != {"ready": True, "role": "primary",
                                                "listener": "listening", "processor": "working"}:
            self.problem(f"{what}: /ready answered {code} {body!r}")
        code, body = yield self.get("/metrics")
        if code != 200:
            self.problem(f"{what}: /metrics answered {code} {body!r}")

    @defer.inlineCallbacks
    def finish(self):
        """
        SIGTERM it and check how it ended and what it logged.
        """
        if self.ended is None:
            self.transport.signalProcess("TERM")
            try:
                yield wait_until(lambda: self.ended is not None, timeout=15, what="exit")
            except AssertionError:
                self.problem("still running 15 s after SIGTERM (killed)")
                self.transport.signalProcess("KILL")
                yield wait_until(lambda: self.ended is not None, timeout=5, what="exit")
        if not isinstance(self.ended, error.ProcessDone):
            self.problem(f"ended with {self.ended}")
        err = self.proto.err.decode("utf-8", "replace")
        for phrase in FORBIDDEN:
            if phrase in err:
                self.problem(f"{err.count(phrase)} {phrase!r} in its log, first: "
                             + err[err.index(phrase):][:300].replace("\n", " | "))
        if self.status_failures:
            self.problem(f"{len(self.status_failures)} /ready requests got no answer: "
                         f"{self.status_failures[:3]}")
        busiest, _ = twistd_summary(err)
        if busiest > MAX_LINES_PER_SECOND:
            self.problem(f"{busiest} hermes_tx log lines within one second")
        for blob in [self.proto.out, self.proto.err] + self.bodies:
            if SECRET.encode() in blob:
                self.problem("the password is in its output, log or status")
                break


class StatusPoller(object):
    """GET C{/ready} of every process every C{interval} seconds."""

    def __init__(self, processes, interval=0.5):
        self.processes = processes
        self.failures = 0
        self._loop = task.LoopingCall(self._poll)
        self._done = self._loop.start(interval, now=False)

    @defer.inlineCallbacks
    def _poll(self):
        for p in self.processes:
            if p.ended is None:
                code, body = yield p.get("/ready")
                if code is None:
                    p.status_failures.append(f"{time.strftime('%H:%M:%S')} {body}")

    def stop(self):
        """
        Stop polling.

        @return: a Deferred firing once a poll in flight has finished, so
            that no request is still on its way when the processes are
            stopped (it would count as unanswered).
        """
        if self._loop.running:
            self._loop.stop()
        return self._done


@defer.inlineCallbacks
def phase(processes, cluster, what, since, gap=True, timeout=15.0, interval=0.05):
    """
    After a fault: probe C{cluster} until every process delivers since its
    L{HermesProcess.mark}, send L{EXACT}, and check each one's lines since
    its mark (L{check_gap}), that its start/resync came at or after
    C{since}, and its status endpoint.  Problems go to the processes.

    @param since: C{time.time()} when the server became primary: a start
        or resync before it would have come from elsewhere.
    @param gap: whether there was a gap (a start or resync is due).
    """
    probes = []
    deadline = time.monotonic() + timeout
    pending = list(processes)
    while pending:
        if time.monotonic() > deadline:
            for p in pending:
                p.problem(f"{what}: not delivering within {timeout} s "
                          f"(since the fault: {[k for k, _ in p.events(p.mark)][:8]})")
            break
        # In a thread: a connect to a server that is busy promoting or
        # being cloned can take seconds, and the status polls must not
        # wait for it (they would time out here, not in hermes).
        probes += yield threads.deferToThread(
            send_payloads, cluster, [f"{what} probe {len(probes)}"])
        yield sleep(interval)
        pending = [p for p in pending if not p.notifications(p.mark)]
    delivering = [p for p in processes if p.notifications(p.mark)]
    due = {p: len(p.notifications(p.mark)) + len(EXACT) for p in delivering}
    sent = yield threads.deferToThread(send_payloads, cluster, EXACT)
    if sent != list(EXACT):
        raise AssertionError(f"{what}: port {cluster.port} took no NOTIFY")
    try:
        yield wait_until(lambda: all(len(p.notifications(p.mark)) >= due[p] for p in delivering),
                         timeout=5, what=f"{what}: the exact payloads")
    except AssertionError:
        pass  # check_gap says which
    yield sleep(0.1)  # nothing more arrives
    for p in delivering:
        first = None
        if gap:
            first = "resync" if "start" in [k for k, _ in p.events(0)[:p.mark]] else "start"
        problem = check_gap(p.events(p.mark), probes, first, EXACT)
        if problem is not None:
            p.problem(f"{what}: {problem}")
        early = [r["kind"] for r in p.records()[p.mark:]
                 if r["kind"] in ("start", "resync") and r["received_at"] < since]
        if early:
            p.problem(f"{what}: {early} before the server became primary")
        yield p.check_ready(what)
