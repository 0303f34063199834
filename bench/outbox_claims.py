"""
The claim's goals (issues 15 and 18) on the SQL alone, one throwaway
server: the sections C{waiting}, C{takeover}, C{bursts}, C{backlog} and
C{keys} of C{bench/outbox_sql.py} (run that, not this module).
"""

import os
import random
import signal
import statistics
import string
import subprocess
import sys
import textwrap
import threading
import time
import uuid

import psycopg2

from hermes_tx.outbox import sql as outbox_sql
from hermes_tx.outbox.capture import capture

BATCH = 500
TOPIC = "bench"
PAYLOAD = "jsonb_build_object('id', g, 'name', 'item ' || g, 'n', g * 7)"


def connect(dsn, autocommit=True):
    conn = psycopg2.connect(dsn, application_name="bench-claims")
    conn.autocommit = autocommit
    return conn


def cpu_seconds(pid):
    """@return: user + system CPU seconds of a local process (a backend)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def insert(cur, rows, keys, prefix=""):
    """Insert C{rows} changes, keyed C{prefix} and C{g} or C{g % keys}."""
    key = "g::text" if keys is None else f"(g %% {keys})::text"
    cur.execute(f"INSERT INTO hermes.outbox (topic, key, payload)"
                f" SELECT %s, %s || {key}, {PAYLOAD} FROM generate_series(1, %s) g", (TOPIC, prefix, rows))


def timed_claims(cur, count, limit=BATCH, hold=False):
    """
    @return: (milliseconds of each of C{count} claims, rows of the last);
        the claimed rows are given back unless C{hold}.
    """
    times = []
    for _ in range(count):
        token = str(uuid.uuid4())
        start = time.perf_counter()
        cur.execute(outbox_sql.claim(), ([TOPIC], limit, token, 30.0))
        got = cur.fetchall()
        times.append((time.perf_counter() - start) * 1000)
        if not hold and got:
            cur.execute(outbox_sql.unclaim(), ([r[0] for r in got], token))
    return times, got


def summary(times):
    return f"median {statistics.median(times):7.2f} ms, max {max(times):7.2f} ms"


def waiting(cur, keys=100_000):
    """Goal: 100k keys waiting for a retry, a claim under 20 ms."""
    print(f"claim(500) with {keys:,} keys waiting for a retry (claimed, released for 300 s)")
    cur.execute("TRUNCATE hermes.outbox")
    insert(cur, keys, None)
    cur.execute("ANALYZE hermes.outbox")
    release = outbox_sql.release()
    while True:
        token = str(uuid.uuid4())
        cur.execute(outbox_sql.claim(), ([TOPIC], BATCH, token, 30.0))
        ids = [r[0] for r in cur.fetchall()]
        if not ids:
            break
        cur.execute(release, (ids, token, [300.0] * len(ids), ["down"] * len(ids), 10))
    times, got = timed_claims(cur, 20)
    print(f"  heads only:                     {summary(times)}, got {len(got)}")
    insert(cur, keys, None)
    times, got = timed_claims(cur, 20)
    print(f"  + a row behind each, first 20:  {summary(times)}, got {len(got)}")
    start, rounds = time.perf_counter(), 0
    while rounds < 400:
        timed_claims(cur, 1)
        rounds += 1
        cur.execute("SELECT count(*) FROM hermes.outbox WHERE available_at <= now()")
        if cur.fetchone()[0] == 0:
            break
    print(f"  until none is left to defer:    {rounds} more claims in {time.perf_counter() - start:.1f} s")
    times, got = timed_claims(cur, 20)
    print(f"  + a row behind each, then:      {summary(times)}, got {len(got)}")
    insert(cur, 10_000, None, "fresh-")
    times, got = timed_claims(cur, 20)
    print(f"  + 10,000 fresh keys:            {summary(times)}, got {len(got)}")
    cur.execute("TRUNCATE hermes.outbox")


CLAIMER = textwrap.dedent(
    """
    import sys, time, psycopg2
    conn = psycopg2.connect(sys.argv[1])
    conn.autocommit = True
    cur = conn.cursor()
    cur.execute("SELECT id FROM hermes.claim(%s, 500, gen_random_uuid(), 30)", ([sys.argv[2]],))
    print(len(cur.fetchall()), flush=True)
    time.sleep(600)
    """
)


def takeover(cur, dsn, rounds=5, give_up=40.0):
    """Goal: a SIGKILLed consumer's keys flow again within 2 s."""
    print("SIGKILL a process holding 500 claims (visibility 30 s): seconds until another claims them")
    seconds = []
    for _ in range(rounds):
        cur.execute("TRUNCATE hermes.outbox")
        insert(cur, BATCH, None)
        proc = subprocess.Popen([sys.executable, "-c", CLAIMER, dsn, TOPIC], stdout=subprocess.PIPE, text=True)
        try:
            held = int(proc.stdout.readline())
            proc.send_signal(signal.SIGKILL)
            start = time.perf_counter()
            while time.perf_counter() - start < give_up:
                cur.execute(outbox_sql.claim(), ([TOPIC], BATCH, str(uuid.uuid4()), 30.0))
                if cur.fetchall():
                    break
                time.sleep(0.01)
            seconds.append(time.perf_counter() - start)
        finally:
            proc.kill()
            proc.wait()
    print(f"  held {held}: median {statistics.median(seconds):.3f} s, max {max(seconds):.3f} s"
          f" over {rounds} kills")
    cur.execute("TRUNCATE hermes.outbox")


class Consumer(threading.Thread):
    """
    A blocking claim(500) + ack loop on its own connection that claims when
    woken (LISTEN) and every 0.1 s; records when each change was claimed.
    """

    def __init__(self, dsn):
        super().__init__(daemon=True)
        self.conn = connect(dsn)
        self.cur = self.conn.cursor()
        self.cur.execute(outbox_sql.listen())
        self.cur.execute("SELECT pg_backend_pid()")
        self.pid = self.cur.fetchone()[0]
        self.claimed = {}
        self.claims = 0
        self.running = True

    def run(self):
        import select

        while self.running:
            token = str(uuid.uuid4())
            self.cur.execute(outbox_sql.claim(), ([TOPIC], BATCH, token, 30.0))
            rows = self.cur.fetchall()
            self.claims += 1
            now = time.monotonic()
            for row in rows:
                self.claimed.setdefault(row[0], now)
            if rows:
                self.cur.execute(outbox_sql.ack(), ([r[0] for r in rows], token))
                continue
            if select.select([self.conn], [], [], 0.1)[0]:
                self.conn.poll()
                self.conn.notifies.clear()

    def stop(self):
        self.running = False
        self.join(30)
        self.conn.close()


def bursts(cur, dsn, count=3, size=100_000, rate=500, seconds=20, keys=500):
    """Goal: after three bursts of 100,000 changes, paced 500/s p99 under 50 ms."""
    print(f"{count} bursts of {size:,} changes (1,000 per transaction), then {rate}/s for {seconds} s"
          f" over {keys} keys: commit -> claimed")
    cur.execute("TRUNCATE hermes.outbox")
    consumer = Consumer(dsn)
    consumer.start()
    try:
        for burst in range(count):
            start = time.perf_counter()
            for first in range(0, size, 1000):
                cur.execute("SELECT count(hermes.emit(%s, (g %% %s)::text, " + PAYLOAD + "))"
                            " FROM generate_series(%s, %s) g", (TOPIC, keys, first, first + 999))
            while True:
                cur.execute("SELECT EXISTS (SELECT 1 FROM hermes.outbox)")
                if not cur.fetchone()[0]:
                    break
                time.sleep(0.05)
            print(f"  burst {burst + 1}: drained in {time.perf_counter() - start:.1f} s")
        cpu, claims = cpu_seconds(consumer.pid), consumer.claims
        committed = {}
        rng = random.Random(1)
        start = time.monotonic()
        for n in range(rate * seconds):
            due = start + n / rate
            pause = due - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            cur.execute("SELECT hermes.emit(%s, %s, '{}')", (TOPIC, f"k{rng.randrange(keys)}"))
            committed[cur.fetchone()[0]] = time.monotonic()
        deadline = time.monotonic() + 30
        while len(consumer.claimed.keys() & committed.keys()) < len(committed) and time.monotonic() < deadline:
            time.sleep(0.05)
        cpu, claims = cpu_seconds(consumer.pid) - cpu, consumer.claims - claims
    finally:
        consumer.stop()
    waits = sorted((consumer.claimed[i] - t) * 1000 for i, t in committed.items() if i in consumer.claimed)
    print(f"  paced: {len(waits):,} of {len(committed):,} claimed; p50 {waits[len(waits) // 2]:.1f} ms,"
          f" p99 {waits[int(len(waits) * 0.99)]:.1f} ms, max {waits[-1]:.1f} ms;"
          f" the consumer's backend: {claims:,} claims, CPU {cpu:.1f} s")


def backlog(cluster, dbname, cur, rows=400_000, seconds=30):
    """Goal: a role with statement_timeout=50ms delivers from a 400,000-change backlog."""
    role = f"bench_claimer_{os.getpid()}"
    cur.execute(f"CREATE ROLE {role} LOGIN")
    cur.execute(f"ALTER ROLE {role} SET statement_timeout = '50ms'")
    cur.execute(f"GRANT USAGE ON SCHEMA hermes TO {role}")
    cur.execute(f"GRANT SELECT, UPDATE, DELETE ON hermes.outbox TO {role}")
    print(f"a role with statement_timeout=50ms, {rows:,} changes inserted at once (not analyzed):"
          f" claims holding two batches, then a claim + ack loop for {seconds} s")
    try:
        for keys in (None, 500):
            cur.execute("TRUNCATE hermes.outbox")
            insert(cur, rows, keys)
            conn = connect(cluster.dsn(dbname, user=role))
            own = conn.cursor()
            times, held = [], []
            cancelled = {"claim": 0, "ack": 0}

            def run(what, statement, params):
                try:
                    own.execute(statement, params)
                    return own.fetchall()
                except psycopg2.errors.QueryCanceled:
                    cancelled[what] += 1
                    return []

            for _ in range(20):
                token = str(uuid.uuid4())
                start = time.perf_counter()
                held.append((token, [r[0] for r in run("claim", outbox_sql.claim(), ([TOPIC], BATCH, token, 30.0))]))
                times.append((time.perf_counter() - start) * 1000)
                if len(held) > 2:
                    token, ids = held.pop(0)
                    run("ack", outbox_sql.ack(), (ids, token))
            for token, ids in held:
                run("ack", outbox_sql.ack(), (ids, token))
            delivered, first, start = 0, None, time.perf_counter()
            while time.perf_counter() - start < seconds:
                token = str(uuid.uuid4())
                ids = [r[0] for r in run("claim", outbox_sql.claim(), ([TOPIC], BATCH, token, 30.0))]
                delivered += len(run("ack", outbox_sql.ack(), (ids, token)))
                first = first or (delivered and time.perf_counter() - start)
            conn.close()
            label = "one key each" if keys is None else f"{keys} keys"
            print(f"  {label:>12}: first claim {times[0]:.1f} ms, then {summary(times[1:])};"
                  f" loop: {delivered:,} delivered in {seconds} s ({delivered / seconds:,.0f}/s),"
                  f" first after {first or 0:.3f} s; cancelled: {cancelled['claim']} claim(s),"
                  f" {cancelled['ack']} ack(s)")
    finally:
        cur.execute("TRUNCATE hermes.outbox")
        cur.execute(f"DROP OWNED BY {role}")
        cur.execute(f"DROP ROLE {role}")


def noise(length, seed):
    rng = random.Random(seed)
    return "".join(rng.choice(string.ascii_letters + string.digits) for _ in range(length))


def keys(conn, cur):
    """Goal: emit with a 100 kB key, capture of a 2,690-byte text primary key."""
    print("long keys: emit with a 100 kB incompressible key; capture of a table whose text"
          " primary key is 2,690 bytes")
    cur.execute("TRUNCATE hermes.outbox")
    key = noise(100_000, 1)
    try:
        start = time.perf_counter()
        cur.execute("SELECT hermes.emit(%s, %s, '{}')", (TOPIC, key))
        emitted = time.perf_counter() - start
        cur.execute(outbox_sql.claim(), ([TOPIC], BATCH, str(uuid.uuid4()), 30.0))
        ok = [r[2] for r in cur.fetchall()] == [key]
        print(f"  emit 100 kB key: {emitted * 1000:.1f} ms; claimed back intact: {ok}")
    except psycopg2.Error as e:
        print(f"  emit 100 kB key: {type(e).__name__}: {str(e).splitlines()[0]}")
    cur.execute("DROP TABLE IF EXISTS long_keys")
    cur.execute("CREATE TABLE long_keys (id text PRIMARY KEY, n int)")
    capture(conn, "long_keys", "long")
    key = noise(2690, 2)
    try:
        cur.execute("INSERT INTO long_keys VALUES (%s, 1)", (key,))
        cur.execute(outbox_sql.claim(), (["long"], BATCH, str(uuid.uuid4()), 30.0))
        print(f"  captured INSERT of a 2,690-byte key: delivered {[r[2] for r in cur.fetchall()] == [key]}")
    except psycopg2.Error as e:
        print(f"  captured INSERT of a 2,690-byte key: {type(e).__name__}: {str(e).splitlines()[0]}")
    cur.execute("DROP TABLE long_keys")
    cur.execute("TRUNCATE hermes.outbox")

