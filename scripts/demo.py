"""
The demo behind scripts/demo: start `twistd -n hermes`, send notifications,
show the JSON lines they become, stop it with SIGTERM; then the river:
capture a table that already holds rows, backfill it, consume its topic,
change rows, and show the changes arriving in order; clean up.
"""

import json
import os
import signal
import subprocess
import sys
import threading
import time

import psycopg2

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

CHANNELS = ["orders", 'Mixed-Case "q"']


def main():
    cluster = None
    dsn = os.environ.get("HERMES_DSN")
    if dsn:
        print("using HERMES_DSN", flush=True)
    else:
        from tests.support.pgcluster import Cluster

        print("starting a throwaway PostgreSQL cluster ...", flush=True)
        cluster = Cluster.create_primary()
        dsn = cluster.dsn()
        print(f"  {dsn}", flush=True)
    twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
    try:
        code, lines = listen(dsn, twistd)
        notifications(lines, code)
        ok = code == 0 and len(lines) >= 4
        if cluster is None:
            print("(the river part makes a table and an outbox: it runs on a throwaway cluster,"
                  " without HERMES_DSN)")
        elif ok:
            ok = river(dsn, twistd)
    finally:
        if cluster is not None:
            cluster.destroy()
    return 0 if ok else 1


def listen(dsn, twistd):
    """
    The notifications: C{twistd -n hermes --channel ...}, three NOTIFYs,
    SIGTERM.

    @return: twistd's exit status and the lines it wrote.
    """
    cmd = [twistd, "-n", "--pidfile=", "hermes", "--dsn", dsn]
    for channel in CHANNELS:
        cmd += ["--channel", channel]
    print("running: twistd -n hermes --dsn <dsn> --channel orders --channel 'Mixed-Case \"q\"'",
          flush=True)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)
    lines = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, b"")))
    reader.start()
    try:
        if not wait(lambda: lines, 20):
            raise SystemExit("hermes did not start listening:\n" + proc.stderr.read1().decode())
        conn = psycopg2.connect(dsn)
        conn.autocommit = True
        with conn.cursor() as cur:
            for channel, payload in [
                ("orders", '{"id": 1, "status": "paid"}'),
                ("orders", '{"id": 2, "status": "shipped"}'),
                ('Mixed-Case "q"', "ünïcødé and 'quotes'"),
            ]:
                print(f"NOTIFY {channel!r}, {payload!r}", flush=True)
                cur.execute("SELECT pg_notify(%s, %s)", (channel, payload))
        conn.close()
        wait(lambda: len(lines) >= 4, 10)
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(30)
        reader.join()
    return code, lines


def notifications(lines, code):
    print("hermes wrote (one JSON object per event):")
    for line in lines:
        print("  " + line.decode("utf-8").rstrip())
    print(f"twistd exited with status {code} after SIGTERM")


def hermes_tx(dsn, *args):
    """
    Run C{hermes-tx ARGS}, show the command and what it printed.
    """
    print("$ hermes-tx " + " ".join(args), flush=True)
    proc = subprocess.run([os.path.join(os.path.dirname(sys.executable), "hermes-tx"), *args, "--dsn", dsn],
                          capture_output=True, text=True, cwd=ROOT)
    for line in (proc.stderr + proc.stdout).splitlines():
        print("  " + line)
    if proc.returncode:
        raise SystemExit(f"hermes-tx {args[0]} failed")


def river(dsn, twistd):
    """
    The river: rows already in a table, captured and backfilled, then
    changed while hermes consumes the topic: every change, in order per
    key, the backfilled rows first.

    @return: whether the changes arrived as expected.
    """
    print("\nthe river: a table with rows, captured, backfilled, then changed", flush=True)
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    cur = conn.cursor()
    cur.execute("CREATE TABLE items (id int PRIMARY KEY, name text, price numeric)")
    cur.execute("INSERT INTO items VALUES (1, 'pen', 1.5), (2, 'ink', 4), (3, 'nib', 2)")
    print("  3 rows in public.items before anything is captured")
    hermes_tx(dsn, "install")
    hermes_tx(dsn, "capture", "--table", "items", "--topic", "items")
    hermes_tx(dsn, "backfill", "--table", "items")
    print("running: twistd -n hermes --dsn <dsn> --outbox items", flush=True)
    proc = subprocess.Popen([twistd, "-n", "--pidfile=", "hermes", "--dsn", dsn, "--outbox", "items"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)
    lines = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, b"")))
    reader.start()
    try:
        wait(lambda: len(lines) >= 3, 20)
        for statement in ["UPDATE items SET price = 1.75 WHERE id = 1",
                          "INSERT INTO items VALUES (4, 'cap', 0.5)",
                          "DELETE FROM items WHERE id = 2"]:
            print(f"  {statement}", flush=True)
            cur.execute(statement)
        wait(lambda: len(lines) >= 6, 20)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
        reader.join()
        conn.close()
    print("hermes delivered (op, key, new):")
    seen = []
    for line in lines:
        data = json.loads(line)["data"]
        seen.append((data["op"], data["key"]["id"]))
        print(f"  {data['op']:<6} {json.dumps(data['key'])}  {json.dumps(data['new'])}")
    expected = [("READ", 1), ("READ", 2), ("READ", 3), ("UPDATE", 1), ("INSERT", 4), ("DELETE", 2)]
    print("in order, per key and overall" if seen == expected else f"UNEXPECTED: {seen}")
    return seen == expected


def wait(predicate, timeout):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


if __name__ == "__main__":
    sys.exit(main())
