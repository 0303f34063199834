"""
The demo behind scripts/demo: start `twistd -n hermes`, send notifications,
show the JSON lines they become, stop it with SIGTERM, clean up.
"""

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
        if cluster is not None:
            cluster.destroy()
    print("hermes wrote (one JSON object per event):")
    for line in lines:
        print("  " + line.decode("utf-8").rstrip())
    print(f"twistd exited with status {code} after SIGTERM")
    return 0 if code == 0 and len(lines) >= 4 else 1


def wait(predicate, timeout):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


if __name__ == "__main__":
    sys.exit(main())
