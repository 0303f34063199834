"""
The Patroni recipe of docs/failover.rst run end to end from its files
(examples/patroni/, bench/patroni_cluster.py): etcd from Debian's
etcd-server, two Patroni nodes (PyPI) in synchronous mode with
primary_start_timeout 0, every twistd hermes command of hermes.sh, a
sender notifying on "jobs" every 10 ms and a writer emitting numbered
changes to the outbox topic "jobs" (500 keys) all along, through faults in
turn, each once the other node is the synchronous standby again:

  kill        SIGKILL of the primary's postmaster: seconds until the other
              node accepts writes, and until each hermes delivers again
  switchover  patronictl switchover to the other node: the same, from the
              command's start and from its return

"Delivering again": a channel's first notification after its resync (or
start) event; the outbox's first delivery of a change whose COMMIT returned
once the new primary accepted writes.  Then the outbox's guarantee over
every fault (every change whose COMMIT returned is delivered, per key in
order), the longest any change waited (commit -> delivery) and how many
keys waited the visibility timeout; first, what synchronous mode costs a
commit.

    .venv/bin/python bench/patroni.py [--rounds 3] [--patroni /opt/patroni/bin]
                                      [--node-venv /opt/hermes] [--keep]

Run as root: etcd, Patroni and the per-node hermes (which watch 0700 data
directories) run as postgres, so --patroni and --node-venv must be venvs on
the system Python (the per-node hermes run this checkout, put first on
their PYTHONPATH, with --node-venv's twistd and dependencies).
"""

import argparse
import os
import signal
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "bench")]

import psycopg2  # noqa: E402

from harness import Row, Sender, print_table  # noqa: E402
from hermes_tx.outbox.schema import install  # noqa: E402
from patroni_cluster import Demo  # noqa: E402
from patroni_outbox import guarantee, sync_cost  # noqa: E402
from tests.support.deliveries import read_lines  # noqa: E402
from tests.support.fleet import TWISTD, Instance, Writer, prepare_writer_tables, wait_for  # noqa: E402
from tests.support.logcheck import twistd_summary  # noqa: E402

CHANNEL = TOPIC = "jobs"
KEYS = [f"key-{i}" for i in range(500)]
RECORDER = "tests.support.deliveries:AppendRecorder"
TIMEOUT = 60.0  # seconds a fault may take to deliver again
PROMOTED = "--channel (the promoted node's, watched)"


class Hermes:
    """One twistd hermes of hermes.sh and the JSON lines it wrote."""

    def __init__(self, user, argv, log, node_venv):
        self.output = argv[argv.index("-o") + 1]
        self.outbox = "--outbox" in argv
        dsn = os.path.basename(argv[argv.index("--dsn-file") + 1])
        self.node = None if "--watch-path" not in argv else os.path.splitext(dsn)[0]
        kind = "--outbox" if self.outbox else "--channel"
        self.label = f"{kind} ({dsn})" if self.node is None else PROMOTED
        if self.outbox:  # timestamps each delivery; the JSON-lines processor does not
            argv = argv + ["--processor", RECORDER]
        twistd = TWISTD if user is None else os.path.join(node_venv, "bin", "twistd")
        self.instance = Instance(argv, log, command=[twistd], user=user)

    def lines(self):
        return read_lines(self.output)

    def ready(self):
        log = self.instance.log()
        if self.instance.ended():
            raise RuntimeError(f"{self.label} ended:\n{log[-2000:]}")
        if self.node is not None:  # on a standby it only knows its role
            return "role: unknown -> " in log
        return "consuming outbox topics" in log or "listener: listening on" in log

    def again(self, mark, writable, acked):
        """
        @return: when it delivered again after the first C{mark} lines
            (C{time.time()}), or C{None} so far.
        """
        lines = self.lines()[mark:]
        if self.outbox:
            for line in lines:
                if acked.get(line["w"], 0) >= writable:
                    return line["t"]
            return None
        gap = next((i for i, r in enumerate(lines) if r["kind"] in ("start", "resync")), None)
        if gap is not None:
            for record in lines[gap + 1:]:
                if record["kind"] == "notification":
                    return record["received_at"]
        return None


class WriteProbe(threading.Thread):
    """Commits an INSERT on one node every 20 ms until one returns: C{at}."""

    def __init__(self, dsn):
        super().__init__(daemon=True)
        self.dsn = dsn
        self.at = None
        self.stop = threading.Event()

    def run(self):
        while not self.stop.is_set():
            try:
                conn = psycopg2.connect(self.dsn, connect_timeout=1, application_name="bench-probe")
                try:
                    conn.autocommit = True
                    conn.cursor().execute("INSERT INTO bench_probe DEFAULT VALUES")
                    self.at = time.time()
                    return
                finally:
                    conn.close()
            except psycopg2.Error:
                self.stop.wait(0.02)


def fault(kind, demo, hermes, writer):
    """One fault once the cluster is whole; @return: what was measured (C{time.time()} values)."""
    leader = wait_for(demo.healthy, 120, "a leader with a synchronous standby", 0.2)
    time.sleep(3.0)  # everyone delivering on this leader
    candidate = demo.other(leader)
    marks = {h: len(h.lines()) for h in hermes}
    probe = WriteProbe(candidate.dsn)
    probe.start()
    result = {"kind": kind, "from": leader.name, "to": candidate.name, "returned": None}
    if kind == "kill":
        pid = leader.postmaster_pid()
        result["start"] = time.time()
        os.kill(pid, signal.SIGKILL)
    else:
        result["start"] = time.time()
        demo.patronictl("switchover", "--leader", leader.name, "--candidate", candidate.name, "--force")
        result["returned"] = time.time()
    probe.join(TIMEOUT)
    probe.stop.set()
    result["writable"] = probe.at
    deadline = time.monotonic() + TIMEOUT
    pending = [h for h in hermes if h.node in (None, candidate.name)]
    while pending and probe.at is not None and time.monotonic() < deadline:
        acked = {w: t for _, _, w, t in list(writer.acknowledged)}
        for h in list(pending):
            at = h.again(marks[h], probe.at, acked)
            if at is not None:
                result[h.label] = at
                pending.remove(h)
        time.sleep(0.1)
    wait_for(lambda: demo.healthy() is candidate, 120, f"{leader.name} back as synchronous standby", 0.2)
    result["whole"] = time.time()
    shown = ", ".join(f"{k} {v - result['start']:.2f}" for k, v in result.items()
                      if isinstance(v, float) and k != "start")
    print(f"  {kind} {leader.name} -> {candidate.name}: {shown} s", flush=True)
    return result


def table(faults, hermes):
    rows = []

    def row(name, since, key, kind, origin, proc=None):
        r = Row(name, since, timeout=TIMEOUT)
        samples = [None if f.get(key) is None else f[key] - f[origin] for f in faults if f["kind"] == kind]
        counts = {}
        for p in proc or ():
            busiest, unhandled = twistd_summary(p.instance.log())
            counts["worst_lps"] = max(counts.get("worst_lps", 0), busiest)
            counts["unhandled"] = counts.get("unhandled", 0) + unhandled + p.instance.log().count("Traceback")
        r.add(samples, counts)
        rows.append(r)

    for kind, origins in (("kill", (("SIGKILL", "start"),)),
                          ("switchover", (("command start", "start"), ("command return", "returned")))):
        for since, origin in origins:
            row(f"{kind}: other node accepts writes", since, "writable", kind, origin)
            for h in [h for h in hermes if h.node is None] + [h for h in hermes if h.node][:1]:
                row(f"{kind}: {h.label} delivering again", since, h.label, kind, origin,
                    [p for p in hermes if p.label == h.label])
        if kind == "switchover":
            row("switchover: patronictl switchover returned", "command start", "returned", kind, "start")
        row(f"{kind}: old primary back as synchronous standby", origins[0][0], "whole", kind, "start")
    print_table("Patroni recipe (seconds; '-' in 'goal': no goal, measured only)", rows)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--rounds", type=int, default=3, help="faults of each kind")
    parser.add_argument("--patroni", default="/opt/patroni/bin", help="where patroni and patronictl are")
    parser.add_argument("--node-venv", default="/opt/hermes", help="a venv postgres can run twistd from")
    parser.add_argument("--keep", action="store_true", help="keep the data directories")
    args = parser.parse_args()
    demo = Demo(args.patroni)
    print(f"demo directory {demo.base}" + (f"; ports {demo.substituted} taken, all substituted:"
                                           f" {demo.ports}" if demo.substituted else ""), flush=True)
    hermes, sender, writer = [], None, None
    try:
        started = time.monotonic()
        demo.start_etcd()
        demo.start_node("node1")
        wait_for(demo.leader, 120, "node1 leading", 0.2)
        demo.start_node("node2")
        wait_for(demo.healthy, 120, "node2 synchronous standby", 0.2)
        print(f"cluster up in {time.monotonic() - started:.1f} s", flush=True)
        with open(demo.path("cluster.dsn")) as f:
            writable = f.read().strip() + " target_session_attrs=read-write"
        with psycopg2.connect(writable) as conn:
            install(conn)
            conn.cursor().execute("CREATE TABLE bench_probe (at timestamptz DEFAULT now())")
        conn.close()
        prepare_writer_tables(writable, KEYS)
        cost = sync_cost(demo, writable)
        hermes = [Hermes(user, argv, log, args.node_venv) for user, argv, log in demo.hermes_commands()]
        wait_for(lambda: all(h.ready() for h in hermes), 60, "every hermes started", 0.2)
        sender = Sender(writable, CHANNEL)
        sender.start()
        writer = Writer(writable, KEYS, topic=TOPIC, rate=200, threads=4).start()
        faults = []
        for _ in range(args.rounds):
            for kind in ("kill", "switchover"):
                faults.append(fault(kind, demo, hermes, writer))
        writer.stop()
        sender.done.set()
        outbox = next(h for h in hermes if h.outbox)
        verdict = guarantee(writable, writer, outbox, faults)
        for h in hermes:
            h.instance.terminate()
        wait_for(lambda: all(h.instance.ended() for h in hermes), 30, "hermes stopped", 0.2)
        table(faults, hermes)
        print()
        for line in cost + verdict:
            print(line)
    finally:
        if writer is not None:
            writer.stop()
        if sender is not None:
            sender.done.set()
        for h in hermes:
            if not h.instance.ended():
                h.instance.kill()
                h.instance.process.wait()
        demo.stop()
        if not args.keep:
            demo.remove_data()
        print(f"logs and JSON lines: {demo.base}")


if __name__ == "__main__":
    main()
