"""
How fast does hermes_tx deliver again after a fault?  Each scenario runs
in its own process (bench/harness.py) with a Client on a throwaway primary
while a sender notifies every 10 ms on its own connection.  "Delivering
again" is the processor receiving the first notification after the
fault's resync event (so over the new connection; with one sent every
10 ms it comes at most ~10 ms after LISTEN).

  back-to-back kills
                pg_terminate_backend of the listener's backend as soon as
                delivery resumed, 20 times (--quick: 8): seconds from each
                kill to delivering again.
  restart fast / restart immediate
                pg_ctl stop -m MODE, then start: seconds from the server
                accepting connections again (the first connection a
                polling thread gets) to delivering again; 3 rounds each
                (--quick: 1).  Also the whole outage, from the stop request.
  hung backend  SIGSTOP of the listener's backend, liveness_timeout=10 s:
                seconds from the SIGSTOP to delivering (not with --quick).

Every row also counts "Unhandled Error" log lines and the most hermes_tx
log lines in any one second.

Run:  .venv/bin/python bench/resilience.py [--quick]   (about 1-4 minutes)
"""

import argparse
import os
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from twisted.internet import defer, threads  # noqa: E402

from harness import (  # noqa: E402
    LISTENER_APP, Row, Sender, child_main, delivering_again, log_dir, print_table, run_round,
    sleep, start_client, wait_for)
from tests.support.pgcluster import Cluster  # noqa: E402
from tests.support.probes import AcceptProbe  # noqa: E402

TIMEOUT = 30.0  # seconds a fault may take to deliver again


def with_client(body, **listener_kwargs):
    """
    Run C{body(cluster, client, recorder)} with a fresh primary, a started
    Client delivering, and the sender; clean everything up.
    """
    @defer.inlineCallbacks
    def run(spec):
        cluster = yield threads.deferToThread(Cluster.create_primary)
        client, recorder = start_client(cluster.dsn(), listener_kwargs)
        sender = Sender(cluster.dsn())
        sender.start()
        try:
            yield wait_for(lambda: recorder.received, TIMEOUT, "the first notification")
            return (yield body(spec, cluster, client, recorder))
        finally:
            sender.done.set()
            yield threads.deferToThread(sender.join)
            yield client.stopService()
            yield threads.deferToThread(cluster.destroy)
    return run


@defer.inlineCallbacks
def kills(spec, cluster, client, recorder):
    samples = []
    for _ in range(spec["kills"]):
        before = len(recorder.gaps)
        t0 = time.monotonic()
        yield threads.deferToThread(cluster.terminate_backends, LISTENER_APP)
        again = yield delivering_again(recorder, before, TIMEOUT)
        if again is None:
            samples.append(None)
            break
        samples.append(again[1] - t0)
    return {"samples": samples}


@defer.inlineCallbacks
def restarts(spec, cluster, client, recorder):
    after_start, outage = [], []
    for _ in range(spec["rounds"]):
        yield sleep(1.0)
        before = len(recorder.gaps)
        t_stop = time.monotonic()
        yield threads.deferToThread(cluster.stop, spec["mode"])
        probe = AcceptProbe(cluster)
        probe.start()
        yield threads.deferToThread(cluster.start)
        accepted = yield threads.deferToThread(probe.wait, 10)
        again = yield delivering_again(recorder, before, TIMEOUT)
        after_start.append(None if again is None else again[1] - accepted)
        outage.append(None if again is None else again[1] - t_stop)
        if again is None:
            break
    return {"samples": after_start, "outage": outage}


@defer.inlineCallbacks
def hung(spec, cluster, client, recorder):
    (pid,) = cluster.backend_pids(LISTENER_APP)
    yield sleep(0.5)
    before = len(recorder.gaps)
    t0 = time.monotonic()
    os.kill(pid, signal.SIGSTOP)
    try:
        again = yield delivering_again(recorder, before, TIMEOUT)
    finally:
        os.kill(pid, signal.SIGCONT)
    return {"samples": [None if again is None else again[1] - t0]}


SCENARIOS = {
    "kills": with_client(kills),
    "restarts": with_client(restarts),
    "hung": with_client(hung, liveness_timeout=10.0),
}


def main(args):
    logs = log_dir("resilience")
    rounds = 1 if args.quick else 3
    kill_row = Row(f"{8 if args.quick else 20} back-to-back kills", "kill", 0.3, 1.0, TIMEOUT)
    plan = [(kill_row, {"scenario": "kills", "kills": 8 if args.quick else 20}, None)]
    for mode in ("fast", "immediate"):
        row = Row(f"restart -m {mode}", "accepting", 0.5, 0.5, TIMEOUT)
        outage = Row(f"restart -m {mode}, whole outage", "stop request", timeout=TIMEOUT)
        plan.append((row, {"scenario": "restarts", "mode": mode, "rounds": rounds}, outage))
    if not args.quick:
        plan.append((Row("backend SIGSTOPped (liveness 10 s)", "SIGSTOP", 12.0, 12.0, TIMEOUT),
                     {"scenario": "hung"}, None))
    rows = []
    for row, spec, outage in plan:
        result = run_round(__file__, logs, row.name, spec, row)
        rows.append(row)
        if outage is not None:
            outage.add(result.get("outage", []), result)
            rows.append(outage)
    print_table("seconds until the processor receives notifications again", rows)
    print(f"  child logs: {logs}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="8 kills, 1 restart each, no SIGSTOP")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child_main(SCENARIOS, args.child)
    else:
        main(args)
