"""
Real C{twistd hermes --outbox} processes and a writer that commits
numbered changes, for the end-to-end outbox tests and C{bench/outbox.py}.

Nothing here uses the reactor: processes are C{subprocess.Popen}s (Twisted
reaps only the processes it spawned itself), the writer runs in threads of
its own with blocking psycopg2.  Tests wait with
L{tests.support.shared.wait_until}, the bench with L{wait_for}.
"""

import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid

import psycopg2

TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RECORDER = "tests.support.deliveries:AppendRecorder"


def wait_for(predicate, timeout=30.0, what="condition", interval=0.02):
    """
    Block until C{predicate()} is true (not from the reactor thread).

    @return: its first true value.
    @raise AssertionError: still false after C{timeout} seconds.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


class Instance:
    """
    One C{twistd -n hermes} process; its log (standard output and error)
    goes to C{log_path}.
    """

    def __init__(self, args, log_path, env_extra=None, command=None, user=None):
        """
        @param args: C{twistd hermes}'s arguments.
        @param command: what comes before them (default: this venv's
            C{twistd -n --pidfile= hermes}).
        @param user: run it as this user (and only that user's group), not
            as the caller (who must be root).
        """
        env = {k: v for k, v in os.environ.items() if k != "HERMES_DSN" and not k.startswith("PG")}
        env["PYTHONPATH"] = ROOT
        env.update(env_extra or {})
        as_user = {}
        if user is not None:
            import pwd

            entry = pwd.getpwnam(user)
            as_user = {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}
            env["HOME"] = entry.pw_dir
        self.log_path = log_path
        self.killed = False
        # A fresh log: a fleet made again in the same directory (a bench
        # round) must not find the last round's "consuming" line.
        with open(log_path, "wb") as log:
            self.process = subprocess.Popen(
                list(command or [TWISTD, "-n", "--pidfile=", "hermes"]) + list(args),
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=env, **as_user,
            )

    @property
    def pid(self):
        return self.process.pid

    def log(self):
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def consuming(self):
        """@return: whether it said it is consuming its outbox topics."""
        return "consuming outbox topics" in self.log()

    def ended(self):
        return self.process.poll() is not None

    def kill(self):
        """SIGKILL it."""
        self.killed = True
        self.process.send_signal(signal.SIGKILL)

    def terminate(self):
        """SIGTERM it (a clean stop)."""
        if not self.ended():
            self.process.send_signal(signal.SIGTERM)


class Fleet:
    """
    C{twistd hermes --outbox} processes on one DSN, all appending to one
    deliveries file with L{tests.support.deliveries.AppendRecorder} (or
    another processor given as C{processor}, or delivering to a sink URL
    given as C{sink}).

    @ivar instances: every instance started, in order.
    """

    def __init__(self, dsn, topics, workdir, extra=(), processor=RECORDER, execute_delay=None, sink=None,
                 command=None):
        """
        @param command: what comes before C{hermes}'s arguments (see
            L{Instance}), e.g. with C{--reactor asyncio}.
        """
        self.command = command
        self.dsn = dsn
        self.env = {"E2E_EXECUTE_DELAY": str(execute_delay)} if execute_delay else {}
        self.topics = list(topics)
        self.workdir = os.path.abspath(workdir)
        self.extra = list(extra)
        self.processor = processor
        self.sink = sink
        self.output = os.path.join(self.workdir, "deliveries.jsonl")
        self.instances = []

    def start(self):
        """@return: a new running L{Instance}."""
        args = ["--dsn", self.dsn]
        if self.sink is not None:
            args += ["--sink", self.sink]
        else:
            args += ["--processor", self.processor, "-o", self.output]
        for topic in self.topics:
            args += ["--outbox", topic]
        log = os.path.join(self.workdir, f"twistd-{len(self.instances)}.log")
        instance = Instance(args + self.extra, log, self.env, command=self.command)
        self.instances.append(instance)
        return instance

    def consuming(self):
        """
        @return: whether every instance not killed says it is consuming.
        @raise AssertionError: one of them ended by itself (with its log).
        """
        for instance in self.instances:
            if instance.ended() and not instance.killed:
                raise AssertionError(f"twistd hermes ended ({instance.process.returncode}):\n{instance.log()[-3000:]}")
        return all(i.consuming() for i in self.instances if not i.killed)

    def running(self):
        return [i for i in self.instances if not i.ended()]

    def kill_one(self, rng=random):
        """SIGKILL a running instance, chosen by C{rng}; @return: it."""
        victim = rng.choice(self.running())
        victim.kill()
        return victim

    def stop(self):
        """SIGTERM every running instance (wait with L{stopped})."""
        for instance in self.instances:
            instance.terminate()

    def stopped(self):
        return all(i.ended() for i in self.instances)

    def unclean(self):
        """
        @return: complaints about the instances: a clean stop that did not
            exit 0, and any traceback or "Unhandled Error" in any log.
        """
        found = []
        for i, instance in enumerate(self.instances):
            log = instance.log()
            if not instance.killed and instance.process.returncode not in (0, None):
                found.append(f"instance {i} exited {instance.process.returncode}:\n{log[-2000:]}")
            for bad in ("Traceback", "Unhandled Error"):
                if bad in log:
                    found.append(f"instance {i} logged {bad!r}:\n{log[-4000:]}")
        return found

    def kill_all(self):
        """SIGKILL whatever still runs (cleanup)."""
        for instance in self.instances:
            if not instance.ended():
                instance.kill()
                instance.process.wait()


#: tables the writer keeps: per key the last number committed, and every
#: number's writer token (which transaction committed it)
WRITER_TABLES = """
CREATE TABLE IF NOT EXISTS e2e_counters (key text PRIMARY KEY, n integer NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS e2e_history (key text, n integer, w text NOT NULL, PRIMARY KEY (key, n));
"""

#: one transaction: take the key's next number (its row lock orders writers
#: of the key), remember its token, emit the change
EMIT = """
WITH c AS (UPDATE e2e_counters SET n = n + 1 WHERE key = %(key)s RETURNING n),
     h AS (INSERT INTO e2e_history (key, n, w) SELECT %(key)s, n, %(w)s FROM c)
SELECT c.n, hermes.emit(%(topic)s, %(key)s, jsonb_build_object('n', c.n, 'w', %(w)s::text)) FROM c
"""

#: the same through a captured table (C{hermes-tx capture}): the change is
#: the trigger's, the number the row's new C{n}
UPDATE_CAPTURED = "UPDATE e2e_items SET n = n + 1 WHERE id = %(key)s RETURNING n"


def prepare_writer_tables(dsn, keys, captured_topic=None):
    """
    Make the writer's tables with every key at 0; with C{captured_topic},
    also C{e2e_items(id text PRIMARY KEY, n integer)} captured on that topic.
    """
    from hermes_tx.outbox.capture import capture

    conn = psycopg2.connect(dsn)
    try:
        conn.autocommit = True
        cur = conn.cursor()
        cur.execute(WRITER_TABLES)
        cur.executemany("INSERT INTO e2e_counters (key) VALUES (%s) ON CONFLICT DO NOTHING",
                        [(k,) for k in keys])
        if captured_topic is not None:
            cur.execute("CREATE TABLE e2e_items (id text PRIMARY KEY, n integer NOT NULL DEFAULT 0)")
            cur.executemany("INSERT INTO e2e_items (id) VALUES (%s)", [(k,) for k in keys])
            capture(conn, "e2e_items", captured_topic)
    finally:
        conn.close()


def prefill(dsn, keys, per_key, topic="t"):
    """
    Commit C{per_key} numbered changes to each key (none written yet) at
    once, as the writer would have (counters, history, outbox rows in id order per key), in one
    transaction with one wake-up.
    """
    conn = psycopg2.connect(dsn)
    try:
        with conn, conn.cursor() as cur:
            cur.execute(
                "CREATE TEMP TABLE prefill ON COMMIT DROP AS"
                " SELECT k.key, g.n FROM unnest(%s::text[]) k (key), generate_series(1, %s) g (n)",
                (list(keys), per_key),
            )
            cur.execute("UPDATE e2e_counters c SET n = c.n + %s WHERE c.key = ANY (%s)", (per_key, list(keys)))
            cur.execute("INSERT INTO e2e_history (key, n, w) SELECT key, n, 'pre' FROM prefill")
            cur.execute(
                "INSERT INTO hermes.outbox (topic, key, payload)"
                " SELECT %s, key, jsonb_build_object('n', n, 'w', 'pre') FROM prefill ORDER BY n, key",
                (topic,),
            )
            cur.execute("SELECT pg_notify('hermes.outbox', %s)", (topic,))
    finally:
        conn.close()


def committed_on(dsn, captured=False):
    """
    @return: C{(counts, tokens)} as the server at C{dsn} has them: a dict
        of key to its last number, and of C{(key, n)} to the writer's token
        (C{None} for captured rows, which carry none).
    """
    conn = psycopg2.connect(dsn)
    try:
        conn.autocommit = True
        cur = conn.cursor()
        if captured:
            cur.execute("SELECT id, n FROM e2e_items")
            return dict(cur.fetchall()), None
        cur.execute("SELECT key, n FROM e2e_counters")
        counts = dict(cur.fetchall())
        cur.execute("SELECT key, n, w FROM e2e_history")
        return counts, {(k, n): w for k, n, w in cur.fetchall()}
    finally:
        conn.close()


class Writer:
    """
    Commits numbered changes to random keys from C{threads} threads at
    about C{rate} per second in all, until stopped or C{limit} are
    committed.  Each change is one autocommit statement; a lost connection
    is made again (after 50 ms).

    @ivar acknowledged: C{(key, n, w, time)} of every statement that
        returned, i.e. whose COMMIT the server confirmed.
    @ivar unknown: how many statements failed with the connection (their
        outcome is unknown: committed or not).
    @ivar refused: how many statements the server refused (not committed).
    """

    def __init__(self, dsn, keys, topic="t", rate=200.0, threads=2, limit=None, captured=False, seed=1):
        self.dsn = dsn
        self.keys = list(keys)
        self.topic = topic
        self.rate = rate
        self.threads = threads
        self.limit = limit
        self.captured = captured
        self.acknowledged = []
        self.unknown = 0
        self.refused = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._workers = []
        self._seed = seed

    def start(self):
        for i in range(self.threads):
            worker = threading.Thread(target=self._run, args=(random.Random(self._seed + i),), daemon=True)
            worker.start()
            self._workers.append(worker)
        return self

    def stop(self, timeout=10.0):
        """Stop and wait for the threads (blocking)."""
        self._stop.set()
        for worker in self._workers:
            worker.join(timeout)

    def done(self):
        return not any(w.is_alive() for w in self._workers)

    def _connect(self):
        while not self._stop.is_set():
            try:
                conn = psycopg2.connect(self.dsn, connect_timeout=2, application_name="e2e-writer")
                conn.autocommit = True
                return conn
            except psycopg2.Error:
                time.sleep(0.05)
        return None

    def _run(self, rng):
        statement = UPDATE_CAPTURED if self.captured else EMIT
        interval = self.threads / self.rate if self.rate else 0.0
        next_at = time.monotonic()
        conn = self._connect()
        while conn is not None and not self._stop.is_set():
            with self._lock:
                if self.limit is not None and len(self.acknowledged) >= self.limit:
                    break
            key, w = rng.choice(self.keys), uuid.uuid4().hex[:12]
            try:
                with conn.cursor() as cur:
                    cur.execute(statement, {"key": key, "w": w, "topic": self.topic})
                    n = cur.fetchone()[0]
            except (psycopg2.OperationalError, psycopg2.InterfaceError):
                self.unknown += 1
                conn.close()
                time.sleep(0.05)
                conn = self._connect()
                continue
            except psycopg2.Error:
                self.refused += 1  # e.g. read-only: a standby that is not promoted yet
                conn.close()
                time.sleep(0.05)
                conn = self._connect()
                continue
            with self._lock:
                self.acknowledged.append((key, n, w, time.time()))
            if interval:
                next_at += interval
                delay = next_at - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                else:
                    next_at = time.monotonic()
        if conn is not None:
            conn.close()

    def acknowledged_counts(self):
        """@return: per key, the highest number whose commit was confirmed."""
        counts = {}
        for key, n, _, _ in list(self.acknowledged):
            counts[key] = max(counts.get(key, 0), n)
        return counts
