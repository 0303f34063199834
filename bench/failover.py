"""
How fast does hermes_tx follow a failover?  Each round runs in its own
process on a throwaway primary/standby pair (bench/harness.py), with a
sender notifying every 10 ms on a read-write multi-host connection:

  switchover ORDER tsa=...
                Patroni-style switchover there and back (stop the primary
                -m fast, wait, promote the standby, rejoin the old primary
                as its standby), with a multi-host DSN listing the hosts
                in ORDER (P,S: the first primary first; S,P: its standby
                first), with and without target_session_attrs=read-write:
                seconds from each promotion request to delivering again.
  crashed primary back
                multi-host DSN P,S; the primary's postmaster is SIGKILLed
                and started again 3.5 s later: seconds from its accepting
                connections again to delivering again.
  re-cloned watched standby
                Client on a standby watching its data directory
                (role_check_interval=30 s, so only the watch can be quick);
                the directory is deleted and cloned again (patronictl
                reinit), then the standby promoted: seconds from the
                promotion request to the start event.
  watched / polled standby
                the same without the re-clone, and without a watched
                directory (role checks every 1 s): promotion -> start.

"Delivering again" is the first notification after the gap's start or
resync event.  Every row also counts "Unhandled Error" log lines and the
most hermes_tx log lines in any one second.

Run:  .venv/bin/python bench/failover.py [--rounds N] [--quick]
      (default 3 rounds: about 5-10 minutes; --quick: 1 round, shorter pauses)
"""

import argparse
import os
import random
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from twisted.internet import defer, reactor, threads  # noqa: E402

from harness import (  # noqa: E402
    Row, Sender, child_main, delivering_again, first_gap, log_dir, print_table, run_round, sleep,
    start_client, wait_for)
from tests.support.ha import multi_host_dsn  # noqa: E402
from tests.support.pgcluster import Cluster  # noqa: E402
from tests.support.probes import AcceptProbe  # noqa: E402
from tests.support.replication import switchover  # noqa: E402

TIMEOUT = 20.0  # seconds a round may take to deliver again
NOTICE_TIMEOUT = 40.0  # ... to notice a promotion (the periodic check is 30 s)
TSA = ("read-write", None)


@defer.inlineCallbacks
def with_pair(spec, body):
    """Run C{body(primary, standby)} on a fresh pair; always destroy it."""
    primary = yield threads.deferToThread(Cluster.create_primary)
    try:
        standby = yield threads.deferToThread(primary.create_standby)
    except BaseException:
        primary.destroy()
        raise
    try:
        return (yield body(primary, standby))
    finally:
        yield threads.deferToThread(standby.destroy)
        yield threads.deferToThread(primary.destroy)


@defer.inlineCallbacks
def stop_client(client, sender=None):
    if sender is not None:
        sender.done.set()
        yield threads.deferToThread(sender.join)
    yield defer.maybeDeferred(client.stopService).addTimeout(15, reactor).addErrback(
        lambda f: None)


def run_switchover(spec):
    @defer.inlineCallbacks
    def body(p, s):
        hosts = [p, s] if spec["order"] == "P,S" else [s, p]
        client, recorder = start_client(multi_host_dsn(*hosts, target_session_attrs=spec["tsa"]))
        sender = Sender(multi_host_dsn(p, s, target_session_attrs="read-write"))
        sender.start()
        samples = []
        try:
            # Not every order finds a primary at first: go on regardless.
            yield delivering_again(recorder, 0, 5.0)
            for old, new in ((p, s), (s, p)):
                before = len(recorder.gaps)
                promoted = defer.Deferred()
                done = threads.deferToThread(
                    switchover, old, new, pause=spec["pause"],
                    on_promoted=lambda t: reactor.callFromThread(promoted.callback, t))
                times = yield promoted
                again = yield delivering_again(recorder, before, TIMEOUT)
                samples.append(None if again is None else again[1] - times["promote"])
                yield done
                yield sleep(1.0)
        finally:
            yield stop_client(client, sender)
        return {"samples": samples}
    return with_pair(spec, body)


def run_crash(spec):
    @defer.inlineCallbacks
    def body(p, s):
        client, recorder = start_client(multi_host_dsn(p, s, target_session_attrs=spec["tsa"]))
        sender = Sender(multi_host_dsn(p, s, target_session_attrs="read-write"))
        sender.start()
        try:
            yield delivering_again(recorder, 0, TIMEOUT)
            before = len(recorder.gaps)
            yield threads.deferToThread(p.crash)
            yield sleep(3.5)
            probe = AcceptProbe(p)
            probe.start()
            yield threads.deferToThread(p.start)
            accepted = yield threads.deferToThread(probe.wait, 10)
            again = yield delivering_again(recorder, before, TIMEOUT)
        finally:
            yield stop_client(client, sender)
        return {"samples": [None if again is None else again[1] - accepted]}
    return with_pair(spec, body)


def run_promotion(spec):
    """A Client on the standby: re-cloned and watched, watched, or polled."""
    @defer.inlineCallbacks
    def body(p, s):
        kwargs = {}
        if spec["kind"] != "polled":
            kwargs = {"watch_path": s.data_dir,
                      "role_check_interval": 30 if spec["kind"] == "re-cloned" else 1.0}
        client, recorder = start_client(s.dsn(), **kwargs)
        try:
            yield wait_for(lambda: client.role == "standby", 10, "role standby")
            if spec["kind"] == "re-cloned":
                yield threads.deferToThread(s.recreate_as_standby_of, p)
                try:
                    yield wait_for(lambda: client.role == "standby", NOTICE_TIMEOUT,
                                   "role standby after the re-clone")
                except TimeoutError:
                    pass  # promote anyway: noticing it is what is measured
            # Anywhere between two periodic checks.
            yield sleep(random.uniform(0.3, 1.3))
            t0 = time.monotonic()
            yield threads.deferToThread(s.promote)
            started = yield first_gap(recorder, 0, NOTICE_TIMEOUT)
        finally:
            yield stop_client(client)
        return {"samples": [None if started is None else started - t0]}
    return with_pair(spec, body)


SCENARIOS = {"switchover": run_switchover, "crash": run_crash, "promotion": run_promotion}


def main(args):
    logs = log_dir("failover")
    pause = 1.0 if args.quick else 2.0
    rows = []
    plan = []  # (row, spec)
    for order in ("P,S", "S,P"):
        for tsa in TSA:
            row = Row(f"switchover {order} tsa={tsa or 'none'}", "promote", 3.0, 3.0, TIMEOUT)
            plan.append((row, {"scenario": "switchover", "order": order, "tsa": tsa,
                               "pause": pause}))
    for tsa in TSA:
        row = Row(f"crashed primary back, P,S tsa={tsa or 'none'}", "accepting", 3.0, 3.0,
                  TIMEOUT)
        plan.append((row, {"scenario": "crash", "tsa": tsa}))
    for kind, name, goal in (("re-cloned", "re-cloned watched standby (30 s checks)", 1.5),
                             ("watched", "watched standby", 0.5),
                             ("polled", "polled standby (1 s checks)", 1.5)):
        plan.append((Row(f"{name} promoted", "promote", goal, goal, NOTICE_TIMEOUT),
                     {"scenario": "promotion", "kind": kind}))
    for row, spec in plan:
        rows.append(row)
        for i in range(args.rounds):
            run_round(__file__, logs, f"{row.name} round {i + 1}", spec, row)
    print_table("seconds until delivering again (or the start event) after a failover", rows)
    print(f"  child logs: {logs}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--quick", action="store_true", help="1 round, 1 s switchover pauses")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child_main(SCENARIOS, args.child)
    else:
        args.rounds = args.rounds or (1 if args.quick else 3)
        main(args)
