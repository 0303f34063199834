"""
Tests for C{hermes-tx backfill} (L{hermes_tx.outbox.backfill}): READ
changes shaped as capture's, composite keys, partitioned tables, odd
keys; resuming after a SIGKILL and a Ctrl-C of the real process; a second
backfill of a table refused; per key, a READ never overtakes a concurrent
writer's change; an operator with exactly the documented rights.
"""

import io
import random
import signal
import subprocess
import sys
import threading
import time

import psycopg2
from twisted.trial import unittest

from hermes_tx.outbox import backfill as backfills
from hermes_tx.outbox.progress import Progress
from tests.support.outbox import OutboxDatabase, in_thread
from tests.test_outbox_cli import hermes_tx
from tests.support.roles import OutboxRoles


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


class PacerTests(unittest.TestCase):
    def test_paces_to_the_rate(self):
        """
        The pause after each chunk brings the average since the start down
        to the rate; time spent working counts; no rate, no pause.
        """
        clock = FakeClock()
        pacer = backfills.Pacer(100, clock)
        self.assertEqual(pacer.pause(50), 0.5)
        clock.now += 0.5
        clock.now += 0.2  # the next chunk took 0.2 s
        self.assertAlmostEqual(pacer.pause(50), 0.3)
        clock.now += 5
        self.assertEqual(pacer.pause(50), 0.0)
        self.assertEqual(backfills.Pacer(None, clock).pause(10 ** 6), 0.0)


class _Plan:
    class table:
        display = "public.items"

    topic = "items"

    def __init__(self, estimate):
        self.estimate = estimate


class ProgressTests(unittest.TestCase):
    def test_terminal_bar(self):
        """
        On a terminal: one line redrawn in place (rows, rate, share, time
        left), at most every REDRAW seconds, ended before the last line.
        """
        out, clock = io.StringIO(), FakeClock()
        progress = Progress(out, True, clock)
        progress.start(_Plan(1000), 0, False)
        clock.now += 1
        progress.update(250)
        progress.update(260)  # too soon: not drawn
        clock.now += 1
        progress.update(500)
        clock.now += 1
        progress.finish(1000)
        text = out.getvalue()
        self.assertTrue(text.startswith("backfilling public.items into topic 'items', from the first key"
                                        " (about 1,000 rows)\n"), text)
        draws = text.split("\r\x1b[K")[1:]
        self.assertEqual(len(draws), 2, text)
        self.assertIn(" 25% 250 rows, 250 rows/s, about 0:00:03 left", draws[0])
        self.assertTrue(draws[1].startswith("[" + "#" * 15 + " " * 15 + "]  50% 500 rows"), draws[1])
        self.assertTrue(draws[1].endswith("\ndone: 1,000 rows (1,000 by this run in 3.0 s)\n"), draws[1])

    def test_plain_lines(self):
        """
        Elsewhere: a plain line every interval, no control characters; an
        unknown estimate leaves the share and time left out.
        """
        out, clock = io.StringIO(), FakeClock()
        progress = Progress(out, False, clock, interval=10)
        progress.start(_Plan(None), 40, True)
        clock.now += 5
        progress.update(60)
        clock.now += 5
        progress.update(140)
        progress.finish(140)
        self.assertEqual(out.getvalue().splitlines(), [
            "backfilling public.items into topic 'items', going on after 40 rows",
            "140 rows, 10 rows/s",
            "done: 140 rows (100 by this run in 10.0 s)",
        ])
        self.assertEqual(progress.done, 140)


class _Backfill(OutboxDatabase):
    """
    A database of the class's own; every test starts with an empty outbox
    and no backfill recorded.
    """

    def setUp(self):
        super().setUp()
        self.query("TRUNCATE hermes.outbox, hermes.backfills")

    def cli(self, *args):
        return hermes_tx(*args, "--dsn", self.dsn)

    def ok(self, *args):
        status, out, err = self.cli(*args)
        self.assertEqual(status, 0, err)
        self.assertNotIn("Traceback", err)
        return out, err

    def changes(self, topic):
        """
        @return: C{(id, key, payload)} of the topic's changes, by id.
        """
        return self.query("SELECT id, key, payload FROM hermes.outbox WHERE topic = %s ORDER BY id", (topic,))

    def popen(self, *args):
        proc = subprocess.Popen([sys.executable, "-m", "hermes_tx.outbox", *args, "--dsn", self.dsn],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.addCleanup(lambda: (proc.poll() is None and proc.kill(), proc.communicate()))
        return proc

    def progress(self, table, topic):
        rows = self.query("SELECT rows_done, finished_at IS NOT NULL FROM hermes.backfills"
                          " WHERE table_name = %s AND topic = %s", (table, topic))
        return rows[0] if rows else (0, False)

    def wait_for_rows(self, proc, table, topic, rows, timeout=30):
        deadline = time.monotonic() + timeout
        while self.progress(table, topic)[0] < rows:
            self.assertIsNone(proc.poll(), "the backfill ended early")
            self.assertLess(time.monotonic(), deadline, "the backfill made no progress")
            time.sleep(0.02)


class ShapeTests(_Backfill, unittest.TestCase):
    def test_composite_key_odd_text(self):
        """
        A composite key whose text part holds quotes, commas, spaces, a
        backslash, a newline and non-ASCII: every row once, in key order,
        op READ, old null, key and row exactly as capture renders them
        (an UPDATE of each row afterwards carries the same key and, as
        old, the same row), across several chunks.
        """
        self.query("CREATE TABLE comp (a int, b text, v text, PRIMARY KEY (a, b))")
        odd = ["x", "'q'", '"dq"', "a, b", "back\\slash", "new\nline", "é ü 🚀", " sp "]
        self.query("INSERT INTO comp SELECT g %% 3, o || g, 'v' || g FROM generate_series(1, 40) g,"
                   " unnest(%s::text[]) o", (odd,))
        self.ok("capture", "--table", "comp", "--topic", "comp")
        out, err = self.ok("backfill", "--table", "comp", "--chunk", "37")
        self.assertEqual(out, "backfilled public.comp into topic 'comp': 320 changes by this run, 320 in all\n")
        self.assertIn("done: 320 rows", err)
        reads = self.changes("comp")
        self.assertEqual(len(reads), 320)
        self.assertEqual({p["op"] for _, _, p in reads}, {"READ"})
        self.assertEqual({p["old"] for _, _, p in reads}, {None})
        self.assertEqual({p["table"] for _, _, p in reads}, {"public.comp"})
        keys = [(p["new"]["a"], p["new"]["b"]) for _, _, p in reads]
        self.assertEqual(keys, self.query("SELECT a, b FROM comp ORDER BY a, b"))
        self.query("UPDATE comp SET v = v || '!'")
        updates = {key: p for _, key, p in self.changes("comp")[320:]}
        self.assertEqual(len(updates), 320)
        for _, key, p in reads:
            self.assertEqual((p["key"], p["new"]), (updates[key]["key"], updates[key]["old"]), key)

    def test_partitioned_and_text_key(self):
        """
        A partitioned table (its name in each change, as capture gives it)
        with a text key holding odd characters; a table not captured needs
        --topic, a captured one is backfilled into its own topic only; the
        progress is shown by status as finished.
        """
        self.query('CREATE TABLE "Parted" (k text PRIMARY KEY, n int) PARTITION BY RANGE (k)')
        self.query('CREATE TABLE parted_a PARTITION OF "Parted" FOR VALUES FROM (MINVALUE) TO (\'m\')')
        self.query('CREATE TABLE parted_b PARTITION OF "Parted" FOR VALUES FROM (\'m\') TO (MAXVALUE)')
        self.query("INSERT INTO \"Parted\" SELECT chr(97 + g % 26) || ' ''\"\\' || g, g"
                   " FROM generate_series(1, 300) g")
        status, out, err = self.cli("backfill", "--table", '"Parted"')
        self.assertEqual(status, 1)
        self.assertEqual(err, 'hermes-tx: error: public."Parted" is not captured:'
                              ' capture it first (hermes-tx capture) or give --topic\n')
        self.ok("capture", "--table", '"Parted"', "--topic", "parted")
        self.ok("backfill", "--table", '"Parted"', "--chunk", "50")
        reads = self.changes("parted")
        self.assertEqual([key for _, key, _ in reads], [k for k, in self.query('SELECT k FROM "Parted" ORDER BY k')])
        self.assertEqual({p["table"] for _, _, p in reads}, {'public."Parted"'})
        self.assertEqual([p["key"] for _, _, p in reads], [{"k": key} for _, key, _ in reads])
        self.query("UPDATE \"Parted\" SET n = -n WHERE k = %s", (reads[7][1],))
        update = self.changes("parted")[-1][2]
        self.assertEqual((update["table"], update["old"]), ('public."Parted"', reads[7][2]["new"]))
        out, _ = self.ok("status")
        self.assertRegex(out, r'\npublic\."Parted" +parted +finished +300 ')
        # not into a topic that does not capture it
        code, out, err = self.cli("backfill", "--table", '"Parted"', "--topic", "copy")
        self.assertEqual((code, err), (1, 'hermes-tx: error: public."Parted" is captured into \'parted\', not'
                                          " 'copy': backfill into its topic, or capture it into 'copy' first\n"))
        self.assertEqual(self.changes("copy"), [])

    def test_selected_columns_only(self):
        """
        A column holding a marker, excluded from the capture (then, the
        capture run again, left out of its chosen columns), never appears
        in a READ change, on a composite-key table; the key columns always
        do; an UPDATE afterwards renders the row as the READ did.
        """
        marker = "SECRET-MARKER-1"
        self.query("CREATE TABLE secret (a int, b text, v text, s text, PRIMARY KEY (a, b))")
        self.query("INSERT INTO secret SELECT g, 'k' || g, 'v' || g, %s FROM generate_series(1, 50) g", (marker,))
        for selection in (("--exclude-columns", "s"), ("--columns", "v")):
            self.query("TRUNCATE hermes.outbox, hermes.backfills")
            self.ok("capture", "--table", "secret", "--topic", "secret", *selection)
            self.ok("backfill", "--table", "secret", "--chunk", "7")
            reads = self.changes("secret")
            self.assertEqual(len(reads), 50)
            self.assertEqual({tuple(sorted(p["new"])) for _, _, p in reads}, {("a", "b", "v")}, selection)
            self.assertEqual(self.query("SELECT count(*) FROM hermes.outbox WHERE payload::text LIKE %s",
                                        (f"%{marker}%",)), [(0,)])
            self.query("UPDATE secret SET v = v || '!' WHERE a = 1")
            update = self.changes("secret")[-1][2]
            self.assertEqual(update["old"], reads[0][2]["new"])

    def test_waits_for_a_dead_letter_retry(self):
        """
        A key with a dead letter is written under emit's lock on it, as
        capture writes it: while a retry holds that lock, the backfill's
        chunk waits; other keys' chunks do not take it.
        """
        self.query("CREATE TABLE dl (id int PRIMARY KEY)")
        self.query("INSERT INTO dl SELECT generate_series(1, 10)")
        self.ok("capture", "--table", "dl", "--topic", "dl")
        self.query("INSERT INTO hermes.dead_letters (id, topic, key, payload, created_at, attempts)"
                   " VALUES (1, 'dl', '7', '{}', now(), 3)")
        self.query("SELECT hermes.rebuild_dead_keys()")
        self.addCleanup(self.query, "SELECT hermes.rebuild_dead_keys()")
        self.addCleanup(self.query, "DELETE FROM hermes.dead_letters")
        holder = self.connect(autocommit=False)
        self.execute("SELECT pg_advisory_xact_lock(hashtextextended('7', hashtextextended('dl',"
                     " hashtextextended('hermes', 0))))", conn=holder)
        conn = self.connect()
        thread, result = in_thread(backfills.backfill, conn, "dl", None, "hermes", 4)
        time.sleep(1)
        self.assertEqual(result, {})
        self.assertEqual(self.query("SELECT rows_done FROM hermes.backfills"), [(4,)])
        holder.rollback()
        thread.join(10)
        self.assertEqual(result["value"][1:], (10, 10))

    def test_refusals(self):
        """
        One line each: no such table, no primary key, a table captured into
        two topics without --topic, a bad --chunk or --max-rate.
        """
        self.query("CREATE TABLE nokey (v int)")
        self.query("CREATE TABLE twice (id int PRIMARY KEY)")
        self.ok("capture", "--table", "twice", "--topic", "t1")
        self.ok("capture", "--table", "twice", "--topic", "t2")
        for args, status, words in [
            (("--table", "nosuch"), 1, "no table public.nosuch"),
            (("--table", "nokey", "--topic", "n"), 1, "has no primary key"),
            (("--table", "twice"), 1, "captured into 2 topics (t1, t2): choose one with --topic"),
            (("--table", "twice", "--chunk", "0"), 2, "must be positive"),
            (("--table", "twice", "--max-rate", "nan"), 2, "must be positive"),
        ]:
            code, out, err = self.cli("backfill", *args)
            self.assertEqual((code, len(err.splitlines())), (status, 1), err)
            self.assertIn(words, err)
        self.assertEqual(self.query("SELECT count(*) FROM hermes.outbox"), [(0,)])


class ResumeTests(_Backfill, unittest.TestCase):
    rows = 20000
    chunk = 200

    def setUp(self):
        super().setUp()
        self.query("DROP TABLE IF EXISTS big")
        self.query("CREATE TABLE big (id int PRIMARY KEY, v text)")
        self.query("INSERT INTO big SELECT g, md5(g::text) FROM generate_series(1, %s) g", (self.rows,))
        self.query("ANALYZE big")
        self.ok("capture", "--table", "big", "--topic", "big")

    def assertAllOnce(self, limit):
        """
        Every row has a READ change; at most C{limit} rows have two.
        """
        counts = dict(self.query("SELECT key::int, count(*) FROM hermes.outbox WHERE topic = 'big' GROUP BY 1"))
        self.assertEqual(sorted(counts), list(range(1, self.rows + 1)))
        twice = [k for k, n in counts.items() if n > 1]
        self.assertLessEqual(len(twice), limit)
        self.assertEqual(max(counts.values()), 1 if not twice else 2)
        return len(twice)

    def test_sigkill_then_again(self):
        """
        A backfill SIGKILLed halfway (status: running while it runs, then
        stopped), a second one refused while the first runs, then run again:
        it goes on after the last chunk done; every row delivered, none
        twice more than the chunk in flight (none at all: the chunk in
        flight rolled back).
        """
        proc = self.popen("backfill", "--table", "big", "--chunk", str(self.chunk), "--max-rate", "4000")
        self.wait_for_rows(proc, "public.big", "big", self.rows // 4)
        code, out, err = self.cli("backfill", "--table", "big")
        self.assertEqual(code, 1)
        self.assertRegex(err, r"^hermes-tx: error: a backfill of public\.big is already running"
                              r" \(backend pid \d+\): wait for it or stop it\n$")
        out, _ = self.ok("status")
        self.assertRegex(out, r"\npublic\.big +big +running +\d+ +20000 ")
        self.wait_for_rows(proc, "public.big", "big", self.rows // 2)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        done, finished = self.progress("public.big", "big")
        self.assertFalse(finished)
        self.assertLess(done, self.rows)
        self.assertEqual(self.query("SELECT count(*) FROM hermes.outbox WHERE topic = 'big'"), [(done,)])
        deadline = time.monotonic() + 10
        while "stopped" not in self.ok("status")[0]:  # the server notices the dead client
            self.assertLess(time.monotonic(), deadline)
            time.sleep(0.05)
        out, err = self.ok("backfill", "--table", "big", "--chunk", str(self.chunk))
        self.assertIn(f"going on after {done:,} rows", err)
        self.assertEqual(out, f"backfilled public.big into topic 'big': {self.rows - done:,} changes by this run,"
                              f" {self.rows:,} in all\n")
        self.assertEqual(self.assertAllOnce(self.chunk), 0)

    def test_ctrl_c(self):
        """
        Ctrl-C (SIGINT): one line, exit status 130, the progress kept; run
        again, it goes on; --restart starts over.
        """
        proc = self.popen("backfill", "--table", "big", "--chunk", str(self.chunk), "--max-rate", "4000")
        self.wait_for_rows(proc, "public.big", "big", self.rows // 4)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
        self.assertEqual(proc.returncode, 130, err)
        last = err.splitlines()[-1]
        self.assertRegex(last, r"^hermes-tx: interrupted: [\d,]+ rows of public\.big done and kept;"
                               r" run the same command again to go on$")
        self.assertNotIn("Traceback", err)
        done, finished = self.progress("public.big", "big")
        self.assertIn(f"{done:,} rows", last)
        self.assertFalse(finished)
        self.ok("backfill", "--table", "big")
        self.assertEqual(self.assertAllOnce(0), 0)
        out, err = self.ok("backfill", "--table", "big")  # finished: starts over
        self.assertIn("from the first key", err)
        self.assertEqual(self.query("SELECT count(*) FROM hermes.outbox"), [(2 * self.rows,)])


class ConcurrentWriterTests(_Backfill, unittest.TestCase):
    def test_never_backwards(self):
        """
        Writers update (a version column, +1), delete and re-insert random
        rows while the backfill runs in small chunks: per key, in id
        order, the versions never go backwards, nothing follows a DELETE
        but an INSERT, and the last change holds the row as it is.
        """
        rows = 5000
        self.query("CREATE TABLE hot (id int PRIMARY KEY, version int NOT NULL, pad text)")
        self.query("INSERT INTO hot SELECT g, 0, repeat('x', 50) FROM generate_series(1, %s) g", (rows,))
        self.ok("capture", "--table", "hot", "--topic", "hot")
        stop = threading.Event()
        errors = []

        def write(seed):
            rng = random.Random(seed)
            conn = psycopg2.connect(self.dsn)
            conn.autocommit = True
            try:
                with conn.cursor() as cur:
                    while not stop.is_set():
                        k = rng.randint(1, rows)
                        if rng.random() < 0.05:
                            cur.execute("DELETE FROM hot WHERE id = %s", (k,))
                            cur.execute("INSERT INTO hot VALUES (%s, 1000000, 'again') ON CONFLICT DO NOTHING",
                                        (k,))
                        else:
                            cur.execute("UPDATE hot SET version = version + 1 WHERE id = %s", (k,))
            except Exception as e:  # reported below
                errors.append(e)
            finally:
                conn.close()

        threads = [threading.Thread(target=write, args=(seed,)) for seed in range(3)]
        for t in threads:
            t.start()
        try:
            time.sleep(0.3)
            self.ok("backfill", "--table", "hot", "--chunk", "25")
        finally:
            stop.set()
            for t in threads:
                t.join()
        self.assertEqual(errors, [])
        history = {}
        for _, key, p in self.changes("hot"):
            history.setdefault(int(key), []).append(p)
        self.assertEqual(sorted(history), list(range(1, rows + 1)))
        final = dict(self.query("SELECT id, version FROM hot"))
        reads = 0
        for key, changes in history.items():
            last, alive = -1, True
            for p in changes:
                if p["op"] == "DELETE":
                    last, alive = -1, False
                    continue
                if not alive:
                    self.assertEqual(p["op"], "INSERT", (key, changes))
                reads += p["op"] == "READ"
                self.assertGreaterEqual(p["new"]["version"], last, (key, changes))
                last, alive = p["new"]["version"], True
            self.assertEqual(changes[-1]["new"]["version"] if changes[-1]["new"] else None, final.get(key), key)
        self.assertGreater(reads, rows // 2)


class OperatorTests(OutboxRoles, unittest.TestCase):
    def test_operator_with_documented_rights(self):
        """
        An operator that is not a superuser, with exactly its documented
        grants, and SELECT and UPDATE on one column of a table it does not
        own (FOR SHARE asks for it), backfills it; without them, one line
        naming them; status shows the backfill.
        """
        self.cluster.execute("CREATE TABLE public.theirs (id int PRIMARY KEY, v text)", dbname=self.dbname)
        self.cluster.execute("INSERT INTO public.theirs SELECT g, 'v' FROM generate_series(1, 500) g",
                             dbname=self.dbname)
        operator = self.roles["operator"]
        code, out, err = self.cli("operator", "backfill", "--table", "theirs", "--topic", "theirs")
        self.assertEqual((code, len(err.splitlines())), (1, 1), err)
        line = (f"hermes-tx: error: permission denied for table theirs: a backfill reads it and locks its rows"
                f" FOR SHARE with the rights of role {operator!r}, which needs SELECT and UPDATE on one column"
                f" (nothing is updated): GRANT SELECT, UPDATE (id) ON public.theirs TO {operator}\n")
        self.assertEqual(err, line)
        self.cluster.execute(f'GRANT SELECT ON public.theirs TO "{operator}"', dbname=self.dbname)
        self.assertEqual(self.cli("operator", "backfill", "--table", "theirs", "--topic", "theirs")[1:], ("", line))
        self.cluster.execute(f'GRANT UPDATE (id) ON public.theirs TO "{operator}"', dbname=self.dbname)
        code, out, err = self.cli("operator", "backfill", "--table", "theirs", "--topic", "theirs", "--chunk", "64")
        self.assertEqual(code, 0, err)
        self.assertEqual(self.query("SELECT count(*), min(payload ->> 'op') FROM hermes.outbox"
                                    " WHERE topic = 'theirs'"), [(500, "READ")])
        code, out, err = self.cli("operator", "status")
        self.assertEqual(code, 0, err)
        self.assertIn("public.theirs  theirs  finished  500", out)
        self.assertEqual(self.query("SELECT rolsuper FROM pg_roles WHERE rolname = %s", (operator,)), [(False,)])
        # the consumer may not backfill
        code, out, err = self.cli("consumer", "backfill", "--table", "items", "--topic", "x")
        self.assertEqual((code, len(err.splitlines())), (1, 1), err)
        self.assertIn("--grant-operator", err)

