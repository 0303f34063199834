"""
The sections of bench/flow.py where the server does not answer in time: a
hung backend (C{hung}) and a role whose statements are cut after 50 ms
(C{timeout50}).
"""

import os
import signal
import time

import psycopg2.extensions

from harness import Sender
from hermes_tx.outbox.privileges import grant
from stalls import Hermes
from tests.support.deliveries import read_lines
from tests.support.fleet import wait_for

EVENTS = "tests.support.deliveries:EventRecorder"
RECORDER = "tests.support.deliveries:AppendRecorder"
#: every hermes_tx backend but the test clusters' own short-lived ones
HERMES_BACKENDS = ("SELECT pid, application_name FROM pg_stat_activity"
                   " WHERE application_name LIKE 'hermes%' AND application_name <> 'hermes-pgcluster'"
                   " AND backend_type = 'client backend' AND pid <> pg_backend_pid()")


def user_dsn(dsn, user):
    """@return: C{dsn} connecting as C{user}."""
    return psycopg2.extensions.make_dsn(dsn, user=user)


def signal_all(pids, signum):
    for pid in pids:
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass


def hung(bench):
    """
    One twistd hermes with an outbox topic and a channel, a sender
    notifying every 10 ms; each round SIGSTOPs every hermes backend, emits
    a change, and times the change and the first notification sent after
    the SIGSTOP to their delivery.
    """
    print(f"hung: every hermes backend SIGSTOPped, --liveness-timeout 3, {bench.rounds} round(s)",
          flush=True)
    dsn = bench.database("hung")
    path = bench.workdir("hung")
    out = os.path.join(path, "events.jsonl")
    hermes = Hermes(["--dsn", dsn, "--outbox", "t", "-c", "hung", "--liveness-timeout", "3",
                     "--processor", EVENTS, "-o", out], None, os.path.join(path, "twistd.log"))
    sender = Sender(dsn, "hung")
    conn, cur = bench.connect(dsn)
    stopped, samples = [], {"change": [], "notification": []}
    try:
        hermes.wait_started("consuming outbox topics")
        hermes.wait_started("listening on")
        sender.start()
        for r in range(bench.rounds):
            mark = sender.sent
            wait_for(lambda: _notified_after(out, mark), 30, "notifications delivered")
            time.sleep(0.5)
            rows = bench.cluster.execute(HERMES_BACKENDS)
            pids = [pid for pid, _ in rows]
            signal_all(pids, signal.SIGSTOP)
            stopped += pids
            at, sent = time.time(), sender.sent
            cur.execute("SELECT hermes.emit('t', %s, '{\"n\": 1}')", (f"hung-{r}",))
            found = {}
            deadline = time.monotonic() + 30
            while len(found) < 2 and time.monotonic() < deadline:
                for line in read_lines(out):
                    if line.get("key") == f"hung-{r}":
                        found.setdefault("change", line["t"] - at)
                    elif line.get("kind") == "notification" and int(line["payload"]) > sent:
                        found.setdefault("notification", line["t"] - at)
                time.sleep(0.05)
            for kind in samples:
                samples[kind].append(found.get(kind))
            print(f"    round {r + 1}: stopped {sorted(app for _, app in rows)}; change "
                  f"{_s(found.get('change'))}, notification {_s(found.get('notification'))}", flush=True)
            signal_all(pids, signal.SIGCONT)
            time.sleep(1.0)
    finally:
        signal_all(stopped, signal.SIGCONT)
        sender.done.set()
        conn.close()
        status = hermes.stop()
    for kind, values in samples.items():
        worst = None if None in values else max(values)
        bench.add(f"hung: every hermes backend SIGSTOPped, a new {kind} delivered",
                  f"worst {_s(worst)} of {len(values)} ({', '.join(_s(v) for v in values)})",
                  "<= 6 s", worst is not None and worst <= 6.0)
    _log_problems(bench, "hung", hermes, status)


def _notified_after(path, mark):
    return any(line.get("kind") == "notification" and int(line["payload"]) > mark
               for line in read_lines(path))


def _s(value):
    return "never" if value is None else f"{value:.2f} s"


def _log_problems(bench, section, hermes, status):
    log = hermes.log()
    bad = [phrase for phrase in ("Traceback", "Unhandled Error") if phrase in log]
    if bad or status != 0:
        bench.note(f"{section}: exit status {status}; {', '.join(bad) or 'no traceback'} in"
                   f" {hermes.log_path}")


def _cut(server_log):
    """
    @return: how many statements the server cut for their statement
        timeout, by where (the first words of their C{CONTEXT} or
        C{STATEMENT} line).
    """
    cut = {}
    lines = server_log.splitlines()
    for i, line in enumerate(lines):
        if "canceling statement due to statement timeout" in line:
            where = next((s.split(":  ", 1)[1].split() for s in lines[i + 1:i + 3]
                          if "CONTEXT:" in s or "STATEMENT:" in s), ["?"])
            words = " ".join(where)[:40]
            cut[words] = cut.get(words, 0) + 1
    return ", ".join(f"{n} x {words!r}" for words, n in sorted(cut.items(), key=lambda kv: -kv[1])) or "none"


def timeout50(bench):
    """
    A consumer whose role has C{statement_timeout = 50ms} starts on a
    400,000-change backlog (over 4,000 keys, and with a key each unless
    --quick): seconds to its first delivery, the drain rate, its
    connections lost and the statements the server cut.
    """
    count = 400000
    role = "hermes_slow"
    bench.cluster.execute(f"DROP ROLE IF EXISTS {role}")
    bench.cluster.execute(f"CREATE ROLE {role} LOGIN")
    bench.cluster.execute(f"ALTER ROLE {role} SET statement_timeout = '50ms'")
    for keys in ([4000] if bench.quick else [4000, None]):
        shape = "a key each" if keys is None else f"{keys:,} keys"
        print(f"timeout50: statement_timeout 50ms, {count:,} pending changes over {shape}", flush=True)
        dsn = bench.database("slow")
        key = "'k' || g" if keys is None else f"'k' || (g % {keys})"
        conn, cur = bench.connect(dsn)
        try:
            grant(cur, "consumer", role)  # exactly what the docs grant a consumer
        finally:
            conn.close()
        bench.query(dsn, f"INSERT INTO hermes.outbox (topic, key, payload)"
                         f"  SELECT 't', {key}, jsonb_build_object('n', g) FROM generate_series(1, {count}) g")
        bench.query(dsn, "VACUUM ANALYZE hermes.outbox")  # not whenever autovacuum gets to it
        path = bench.workdir(f"timeout50-{bench._databases}")
        out = os.path.join(path, "deliveries.jsonl")
        mark = bench.server_log_mark()
        started = time.time()
        hermes = Hermes(["--dsn", user_dsn(dsn, role), "--outbox", "t", "--processor", RECORDER, "-o", out],
                        None, os.path.join(path, "twistd.log"))
        conn, cur = bench.connect(dsn)
        try:
            def done():
                cur.execute("SELECT NOT EXISTS (SELECT 1 FROM hermes.outbox)")
                return cur.fetchone()[0] or hermes.process.poll() is not None

            try:
                wait_for(done, 60 if bench.quick else 120, "an empty outbox", interval=0.05)
            except AssertionError:
                pass
            cur.execute("SELECT count(*) FROM hermes.outbox")
            left = cur.fetchone()[0]
        finally:
            conn.close()
            status = hermes.stop()
        lines = read_lines(out)
        times = sorted(line["t"] for line in lines)
        distinct = len({line["id"] for line in lines})
        losses = [line for line in hermes.log().splitlines() if "reconnecting in" in line]
        first = times[0] - started if times else None
        rate = (distinct - 1) / (times[-1] - times[0]) if len(times) > 1 else 0.0
        bench.add(f"timeout50 ({shape}): first change delivered after start",
                  f"{_s(first)}; {distinct:,} delivered at {rate:,.0f}/s ({len(lines) - distinct:,} again),"
                  + (f" {left:,} left" if left else " outbox empty"), "<= 30 s",
                  first is not None and first <= 30)
        bench.add(f"timeout50 ({shape}): connections lost, statements cut",
                  f"{len(losses)} lost, cut: {_cut(bench.server_log(mark, path))}"
                  + (f"; first loss: {losses[0][losses[0].find('] ') + 2:][:120]}" if losses else ""),
                  "no reconnect loop (< 3 lost)", len(losses) < 3)
        _log_problems(bench, "timeout50", hermes, status)
