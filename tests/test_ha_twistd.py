"""
Issue 8, item 1, through the real C{twistd -n hermes}: multi-host DSNs in
every host order, with and without C{target_session_attrs=read-write},
while the servers fail over as Patroni makes them (tests.test_ha has items
2-5).

Four processes (two host orders, with and without the option) run at once
through each scenario; every problem of every process is collected
(L{tests.support.hermesproc}) and the test fails listing them all.  For
each: delivery resumes on the new primary with exact payloads, one start or
resync per gap and none before the promotion, C{/ready} and C{/metrics}
answer (polled every half second meanwhile) without anything logged as an
error, SIGTERM ends it with status 0, its log has no "Unhandled Error",
traceback, C{KeyError}, password or burst.
"""

import os
import time

from twisted.internet import defer, reactor, threads
from twisted.trial import unittest

from tests.support.fixtures import PrimaryStandbyFixtures
from tests.support.ha import multi_host_dsn, roles
from tests.support.hermesproc import HermesProcess, StatusPoller, phase
from tests.support.replication import switchover
from tests.support.shared import sleep

TSA = ("read-write", None)


class TwistdMultiHostTests(PrimaryStandbyFixtures, unittest.TestCase):
    def setUp(self):
        super().setUp()
        # A test that failed half-way may have left a server stopped.
        for down, up in ((self.primary, self.standby), (self.standby, self.primary)):
            if not down.is_running() and up.is_running():
                if up.in_recovery():
                    up.promote()
                down.rejoin_as_standby_of(up)

    @defer.inlineCallbacks
    def launch(self, orders):
        """
        Start one process per host order and C{target_session_attrs}, and
        poll their status endpoints once they answer.

        @param orders: C{{name: [cluster or closed port, ...]}}.
        @return: a Deferred firing with the L{HermesProcess}es (finished at
            cleanup if still running).
        """
        processes = [
            HermesProcess(f"{name} tsa={tsa}", multi_host_dsn(*hosts, target_session_attrs=tsa))
            for name, hosts in orders.items() for tsa in TSA]
        self.addCleanup(lambda: defer.gatherResults(
            [p.finish() for p in processes if p.ended is None]))
        for p in processes:
            yield p.wait_serving()
        self.poller = StatusPoller(processes)
        self.addCleanup(self.poller.stop)
        return processes

    @defer.inlineCallbacks
    def finish(self, processes, *clusters):
        """
        SIGTERM them all, then fail listing every problem seen.  Each
        one's log is kept as C{<label>.log} in the test's temp directory.
        """
        yield self.poller.stop()
        yield defer.gatherResults([p.finish() for p in processes])
        logs = self.mktemp()
        os.makedirs(logs)
        for p in processes:
            with open(os.path.join(logs, p.label.replace(",", "-").replace(" ", "_") + ".log"),
                      "wb") as f:
                f.write(p.proto.err)
        problems = [line for p in processes for line in p.problems]
        for cluster in clusters:
            if "cannot execute LISTEN" in cluster.read_log():
                problems.append(f"a LISTEN reached port {cluster.port} as a standby")
        self.assertEqual(problems, [], "\n" + "\n".join(problems + ["logs: " + logs]))

    @defer.inlineCallbacks
    def test_standby_first_and_a_closed_port(self):
        """
        The issue's command: the standby listed with a port nobody listens
        on (the stopped primary's), in both orders.  Nothing is delivered
        while there is no primary; once the standby is promoted all four
        deliver there; the old primary rejoining as a standby makes no
        gap.
        """
        primary, standby = roles(self.primary, self.standby)
        yield threads.deferToThread(primary.stop, "fast")
        processes = yield self.launch({"standby,closed": [standby, primary],
                                 "closed,standby": [primary, standby]})
        yield sleep(3.0)  # role checks meet the standby and the closed port
        for p in processes:
            if p.records():
                p.problem(f"delivered {p.events()} with no primary")
            p.set_mark()
        since = time.time()
        yield threads.deferToThread(standby.promote)
        yield phase(processes, standby, "promoted", since)
        yield threads.deferToThread(primary.rejoin_as_standby_of, standby)
        for p in processes:
            p.set_mark()
        yield phase(processes, standby, "old primary rejoined", since, gap=False)
        yield self.finish(processes, primary)

    @defer.inlineCallbacks
    def test_switchover_and_back(self):
        """
        Patroni-style switchovers (stop the primary -m fast, 1 s, promote
        the standby, rejoin the old primary as its standby) there and back:
        each host order has the standby first at some point.
        """
        a, b = roles(self.primary, self.standby)
        processes = yield self.launch({"primary,standby": [a, b], "standby,primary": [b, a]})
        yield phase(processes, a, "first start", time.time() - 60)
        for old, new in ((a, b), (b, a)):
            for p in processes:
                p.set_mark()
            promoted = defer.Deferred()
            done = threads.deferToThread(
                switchover, old, new, pause=1.0, clock=time.time,
                on_promoted=lambda times: reactor.callFromThread(promoted.callback, times))
            times = yield promoted
            yield phase(processes, new, f"switchover to port {new.port}", times["promote"])
            yield done
        yield self.finish(processes, a, b)
