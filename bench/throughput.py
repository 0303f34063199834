"""
hermes_tx against its peers, on one throwaway server, in one run.

    .venv/bin/pip install -r bench/requirements.txt   (asyncpg, for comparison)
    .venv/bin/python bench/throughput.py [--rounds 3] [--drain 500000]

Receivers (bench/receivers.py, one process each): hermes (the whole
pipeline), hermes-batch (the same with a batch-mode processor,
max_batch=1000), psycopg2 (plain select/poll loop), asyncpg (add_listener),
txpostgres (stock addNotifyObserver).  Rounds alternate between receivers;
medians are reported, with ratios to the psycopg2 loop and to asyncpg.

  drain    the receiver is frozen (SIGSTOP) while N notifications queue,
           then timed from SIGCONT to the N-th delivery
  burst    N notifications sent 20,000 per statement to a live receiver,
           timed from the first statement to the N-th delivery
  latency  1,000 notifications/s for 5 s, payload = CLOCK_MONOTONIC at send
  memory   resident set size after 100k and after 1M notifications (burst)
"""

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import psycopg2  # noqa: E402

from tests.support.pgcluster import Cluster  # noqa: E402

RECEIVERS = ["hermes", "hermes-batch", "psycopg2", "asyncpg", "txpostgres"]
CHANNEL = "bench"


def start_receiver(mode, dsn, count, latency=False):
    cmd = [sys.executable, os.path.join(ROOT, "bench", "receivers.py"), mode, dsn, CHANNEL, str(count)]
    if latency:
        cmd.append("--latency")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    if not line or not json.loads(line).get("ready"):
        proc.kill()
        raise RuntimeError(f"{mode} receiver did not start: {line!r}")
    time.sleep(0.2)  # let a receiver's start-up work (role checks) settle
    return proc


def finish(proc, timeout=600):
    line = proc.stdout.readline()
    proc.wait(timeout)
    if not line:
        raise RuntimeError("receiver ended without a result")
    return json.loads(line)


def send_range(cur, first, last):
    cur.execute("SELECT count(pg_notify(%s, g::text)) FROM generate_series(%s, %s) g",
                (CHANNEL, first, last))


def drain(mode, dsn, n):
    proc = start_receiver(mode, dsn, n)
    os.kill(proc.pid, signal.SIGSTOP)
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    send_range(conn.cursor(), 1, n)
    conn.close()
    t0 = time.monotonic()
    os.kill(proc.pid, signal.SIGCONT)
    result = finish(proc)
    return n / (result["last"] - t0)


def burst(mode, dsn, n, step=20_000):
    proc = start_receiver(mode, dsn, n)
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    cur = conn.cursor()
    t0 = time.monotonic()
    for first in range(1, n + 1, step):
        send_range(cur, first, min(n, first + step - 1))
    sent = time.monotonic() - t0
    result = finish(proc)
    conn.close()
    return n / (result["last"] - t0), n / sent, result["rss"]


def latency(mode, dsn, rate=1000, seconds=5):
    time.sleep(1)  # let the server settle after the previous burst
    n = rate * seconds
    proc = start_receiver(mode, dsn, n, latency=True)
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    cur = conn.cursor()
    start = time.monotonic()
    for i in range(n):
        target = start + i / rate
        delay = target - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        cur.execute("SELECT pg_notify(%s, %s)", (CHANNEL, str(time.monotonic_ns())))
    result = finish(proc)
    conn.close()
    return result["latency_ms"]


def median_of(rounds, key=None):
    values = [r if key is None else r[key] for r in rounds]
    return statistics.median(values)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--drain", type=int, default=500_000)
    parser.add_argument("--burst", type=int, default=500_000)
    parser.add_argument("--memory", type=int, default=1_000_000)
    parser.add_argument("--receivers", default=",".join(RECEIVERS))
    args = parser.parse_args()
    receivers = args.receivers.split(",")
    cluster = Cluster.create_primary()
    dsn = cluster.dsn()
    results = {m: {"drain": [], "burst": [], "sender": [], "latency": []} for m in receivers}
    try:
        for r in range(args.rounds):
            for mode in receivers:
                results[mode]["drain"].append(drain(mode, dsn, args.drain))
                rate, sender, _ = burst(mode, dsn, args.burst)
                results[mode]["burst"].append(rate)
                results[mode]["sender"].append(sender)
                results[mode]["latency"].append(latency(mode, dsn))
                print(f"round {r + 1} {mode:10} drain {results[mode]['drain'][-1]:>11,.0f}/s"
                      f"  burst {rate:>11,.0f}/s  latency {results[mode]['latency'][-1]}",
                      flush=True)
        memory = {}
        for mode in receivers:
            _, _, rss = burst(mode, dsn, args.memory, step=50_000)
            memory[mode] = rss
    finally:
        cluster.destroy()
    report(results, memory, receivers, args)


def report(results, memory, receivers, args):
    med = {m: {k: statistics.median(v) for k, v in results[m].items() if k != "latency"}
           for m in receivers}
    lat = {m: {q: statistics.median(r[q] for r in results[m]["latency"]) for q in ("p50", "p99", "max")}
           for m in receivers}
    base = med.get("psycopg2")
    peer = med.get("asyncpg")
    print()
    print(f"medians of {args.rounds} rounds; drain N={args.drain:,}, burst N={args.burst:,}")
    print(f"{'receiver':12}{'drain/s':>12}{'x psycopg2':>11}{'x asyncpg':>10}"
          f"{'burst/s':>12}{'x psycopg2':>11}{'p50 ms':>8}{'p99 ms':>8}{'max ms':>8}"
          f"{'RSS 100k':>10}{'RSS 1M':>9}")
    for m in receivers:
        d, b = med[m]["drain"], med[m]["burst"]
        print(f"{m:12}{d:>12,.0f}"
              f"{(d / base['drain'] if base else float('nan')):>11.2f}"
              f"{(d / peer['drain'] if peer else float('nan')):>10.2f}"
              f"{b:>12,.0f}{(b / base['burst'] if base else float('nan')):>11.2f}"
              f"{lat[m]['p50']:>8.3f}{lat[m]['p99']:>8.3f}{lat[m]['max']:>8.3f}"
              f"{memory[m].get('100k', float('nan')):>9.1f}M{memory[m]['end']:>8.1f}M")
    print(f"(sender alone: {statistics.median(results[receivers[0]]['sender']):,.0f}/s)")


if __name__ == "__main__":
    main()
