"""
What the high-availability tests (tests.test_ha, tests.test_ha_twistd)
check after every fault: delivery resumes on the primary with exactly the
payloads sent once it is back, one start or resync per gap, nothing
processed while the Client thought the server a standby, a Client still
running, and a clean log (no "Unhandled Error", no traceback, no password,
no burst of hermes_tx lines).
"""

import psycopg2
from twisted.internet import defer, reactor, threads

from tests.support.faults import CHANNEL, SECRET, FaultHelpers, event_text
from tests.support.logcheck import hermes_times, max_per_second
from tests.support.shared import Collector, sleep, wait_until

#: Most hermes_tx log lines allowed within any one second.
MAX_LINES_PER_SECOND = 10

#: Sent after the probes once delivery resumed: they must arrive exactly.
EXACT = ("a", "", "ü ☃", "quote ' \" \\ ;", "last")


def multi_host_dsn(*clusters, **extra):
    """
    @param clusters: the hosts in order; an C{int} stands for a port nobody
        listens on.
    @param extra: more libpq keywords (C{None} values are left out).
    @return: a C{key=value} DSN with a password (trust auth ignores it).
    """
    ports = ",".join(str(c if isinstance(c, int) else c.port) for c in clusters)
    words = [f"host={','.join(['127.0.0.1'] * len(clusters))}", f"port={ports}",
             "user=postgres", "dbname=postgres", f"password={SECRET}"]
    words += [f"{k}={v}" for k, v in extra.items() if v is not None]
    return " ".join(words)


def roles(a, b):
    """@return: C{(primary, standby)} among the running servers C{a} and C{b}."""
    return (b, a) if a.in_recovery() else (a, b)


def send_payloads(cluster, payloads):
    """
    NOTIFY each payload on L{CHANNEL} over one connection (blocking, a
    few milliseconds).

    @return: the payloads sent: all of them, or none if C{cluster} is down
        or a standby.
    """
    try:
        conn = psycopg2.connect(cluster.dsn(application_name="hermes-ha-sender",
                                            connect_timeout=2))
    except psycopg2.Error:
        return []
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            for payload in payloads:
                cur.execute("SELECT pg_notify(%s, %s)", (CHANNEL, payload))
        return list(payloads)
    except psycopg2.Error:
        return []
    finally:
        conn.close()


def check_gap(events, probes, first, exact=EXACT):
    """
    Say what is wrong with the events after a gap, or C{None}.

    @param events: C{(kind, payload)} of every event since the fault.
    @param probes: the probe payloads sent since the fault, in order.
    @param first: the kind the gap must begin with (C{"start"} if the
        Client never listened before, else C{"resync"}); C{None} when there
        was no gap (then there must be neither).
    @param exact: the payloads sent once delivery resumed.
    """
    kinds = [kind for kind, _ in events]
    gaps = kinds.count("start") + kinds.count("resync")
    if first is None:
        if gaps:
            return f"a start/resync without a gap: {kinds}"
    elif not kinds or kinds[0] != first:
        return f"expected {first!r} first, got {kinds[:8]}"
    elif gaps != 1:
        return f"more than one start/resync: {kinds}"
    got = [payload for kind, payload in events if kind == "notification"]
    resumed = len(got) - len(exact)
    if resumed < 1 or tuple(got[resumed:]) != tuple(exact) or got[:resumed] != probes[-resumed:]:
        return f"payloads {got!r} are not a tail of the probes then {list(exact)!r}"
    return None


class RoleCollector(Collector):
    """
    A L{Collector} that also records its Client's role at every event.

    @ivar client: the L{hermes_tx.client.Client}, set once made.
    """

    client = None

    def __init__(self):
        super().__init__()
        self.roles = []

    def execute(self, event):
        self.roles.append(self.client.role)
        super().execute(event)


class HAHelpers(FaultHelpers):
    """
    L{FaultHelpers} for multi-host DSNs and servers that change role.
    """

    def start_ha_client(self, dsn, name, **client_kwargs):
        """
        Start a Client on C{dsn} with a listener on L{CHANNEL} (its own
        connection, application_name C{hermes-faults-NAME}) and a
        L{RoleCollector}; stopped at cleanup.

        @return: C{(client, collector, app_name)}.
        """
        app = f"hermes-faults-{name}"[:63]
        collector = RoleCollector()
        client, collector, app = self.start_client(
            None, name, processor=collector, client_dsn=dsn,
            listener_dsn=f"{dsn} application_name={app}", **client_kwargs)
        collector.client = client
        return client, collector, app

    @defer.inlineCallbacks
    def deliver_again(self, cluster, client, collector, index, what, timeout=15.0,
                      first="resync", exact=EXACT, interval=0.02):
        """
        Send probes to C{cluster} every C{interval} seconds until the
        collector gets one (after its event C{index}), then the C{exact}
        payloads; check the events since C{index} (L{check_gap}) and that
        the Client was on a primary for each.

        @param what: names the fault in payloads and failure messages.
        @return: a Deferred firing with C{collector.times} of the first
            notification after the gap.
        """
        probes = []
        deadline = reactor.seconds() + timeout
        while not collector.notifications(index):
            if reactor.seconds() > deadline:
                self.fail(f"{what}: not delivering within {timeout} s (role {client.role}, "
                          f"listening {client.listener.is_listening}, events since "
                          f"the fault {collector.kinds(index)})")
            probes += send_payloads(cluster, [f"{what} probe {len(probes)}"])
            yield sleep(interval)
        kinds = collector.kinds(index)
        resumed_at = collector.times[index + kinds.index("notification")]
        if exact:
            count = len(collector.notifications(index)) + len(exact)
            sent = yield threads.deferToThread(send_payloads, cluster, exact)
            self.assertEqual(sent, list(exact), f"{what}: {cluster.port} took no NOTIFY")
            yield wait_until(lambda: len(collector.notifications(index)) >= count, timeout=5,
                             what=f"{what}: the exact payloads")
        yield sleep(0.05)  # nothing more arrives
        problem = check_gap([(e.kind, e.payload) for e in collector.events[index:]],
                            probes, first, exact)
        self.assertIsNone(problem, f"{what}: {problem}")
        self.assertEqual(set(collector.roles[index:]), {"primary"}, what)
        return resumed_at

    def assert_on_primary(self, client, collector):
        """The Client runs on a primary, listening, its processor running."""
        self.assertTrue(client.running)
        self.assertEqual(client.role, "primary")
        self.assertTrue(client.listener.is_listening)
        self.assertTrue(collector.running)
        self.assertEqual(list(client.error_queue.pending), [])

    def assert_ha_log(self, log):
        """
        L{FaultHelpers.assert_clean_log}, no password anywhere, and at most
        L{MAX_LINES_PER_SECOND} hermes_tx lines within any second.
        """
        self.assert_clean_log(log)
        for e in log:
            self.assertNotIn(SECRET, event_text(e))
        busiest = max_per_second(hermes_times(log))
        self.assertLessEqual(busiest, MAX_LINES_PER_SECOND, "%d hermes_tx lines within one "
                             "second; the log begins: %r" % (busiest, [
                                 event_text(e) for e in log][:20]))
