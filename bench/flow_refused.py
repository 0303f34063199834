"""
The sections of bench/flow.py where a dependency refuses hermes: a
consumer's role without grants (C{grants}) and a Redis sink with a wrong
password (C{redis-auth}).  Both are judged by C{/ready}, the log and (for
PostgreSQL) the connections the server logged.
"""

import json
import os
import time

from flow_stuck import user_dsn
from stalls import Hermes
from tests.support.redisserver import RedisServer

#: the consumer's connections (hermes_tx/twistd/service.py)
OUTBOX_APP = "hermes-outbox"
#: attempts before the backoff is at least a second (0.1, 0.2, 0.4, 0.8 s)
FIRST_FEW = 5


def poll_ready(hermes, seconds, until=None, interval=0.5):
    """
    GET C{/ready} every C{interval} seconds for C{seconds} (or until
    C{until(status, body)} is true).

    @return: C{(seconds since the call, status, body as text)} per answer
        (status C{None}: no answer yet).
    """
    started = time.monotonic()
    answers = []
    while time.monotonic() - started < seconds:
        status, body, _ = hermes.get("/ready", timeout=5)
        answers.append((time.monotonic() - started, status, body.decode("utf-8", "replace").strip()))
        if until is not None and until(status, body):
            break
        time.sleep(interval)
    return answers


def grants(bench):
    """
    twistd hermes --outbox as a role that may connect but has no grant
    on the outbox, for 40 s (20 s with --quick): the consumer's connection
    attempts (the server's log), its lines naming the cause, /ready.
    """
    seconds = 20 if bench.quick else 40
    role = "hermes_nogrants"
    print(f"grants: a consumer whose role has no grants, {seconds} s", flush=True)
    bench.cluster.execute(f"DROP ROLE IF EXISTS {role}")
    bench.cluster.execute(f"CREATE ROLE {role} LOGIN")
    dsn = bench.database("grants")
    path = bench.workdir("grants")
    mark = bench.server_log_mark()
    hermes = Hermes(["--dsn", user_dsn(dsn, role), "--outbox", "t"], None, os.path.join(path, "twistd.log"))
    try:
        answers = poll_ready(hermes, seconds)
    finally:
        status = hermes.stop()
    bench.server_log(mark, path)
    connections = bench.connections(mark, role)
    consumer = [t for t, app in connections if app == OUTBOX_APP]
    others = sorted({app for _, app in connections if app != OUTBOX_APP})
    gaps = [b - a for a, b in zip(consumer, consumer[1:])]
    later = gaps[FIRST_FEW - 1:]
    bench.add("grants: the consumer's connection attempts",
              f"{len(consumer)} in {seconds} s, gaps {', '.join(f'{g:.1f}' for g in gaps)} s"
              f" ({len(connections) - len(consumer)} other connection(s) of the role: {', '.join(others)})",
              f"<= 1 a second after the first {FIRST_FEW}", bool(consumer) and all(g >= 1.0 for g in later))
    log = hermes.log()
    cause = [line for line in log.splitlines() if "permission denied" in line]
    bad = [phrase for phrase in ("Traceback", "Unhandled Error") if phrase in log]
    bench.add("grants: log lines naming the cause",
              f"{len(cause)} for {len(consumer)} attempts; {', '.join(bad) or 'no traceback'};"
              f" first: {cause[0][cause[0].find('hermes'):][:170] if cause else 'none'}",
              "one clear line (a line per loss at most, no traceback)",
              bool(cause) and not bad and len(cause) <= len(consumer))
    answered = [(s, body) for _, s, body in answers if s is not None]
    refused = [body for s, body in answered if s == 503]
    bench.add("grants: /ready",
              f"{len(refused)} of {len(answered)} answers 503; last: {answered[-1][1][:200] if answered else '-'}",
              "503", bool(answered) and len(refused) == len(answered))
    if status != 0:
        bench.note(f"grants: exit status {status} ({hermes.log_path})")


def redis_auth(bench):
    """
    twistd hermes --outbox --sink redis://:WRONG@... against a redis-server
    of our own requiring another password, with a change pending and with
    none: seconds from the start to /ready 503 naming the processor.
    """
    wrong = "bench-wrong-pw-7c1e"
    server = RedisServer(password="bench-right-pw-3a9d").start()
    try:
        for pending in (True, False):
            what = "a change pending" if pending else "nothing pending"
            print(f"redis-auth: wrong password, {what}", flush=True)
            dsn = bench.database("redis")
            if pending:
                bench.query(dsn, "SELECT hermes.emit('t', 'k', '{\"n\": 1}')")
            path = bench.workdir(f"redis-auth-{bench._databases}")
            hermes = Hermes(["--dsn", dsn, "--outbox", "t", "--sink",
                             f"redis://:{wrong}@127.0.0.1:{server.port}/0?stream=flow"],
                            None, os.path.join(path, "twistd.log"))

            def refused(status, body):
                try:
                    return status == 503 and json.loads(body).get("processor") != "working"
                except ValueError:
                    return False

            try:
                answers = poll_ready(hermes, 40, refused, interval=0.1)
            finally:
                status = hermes.stop()
            at, code, body = answers[-1]
            met = refused(code, body.encode())
            leaked = [where for where, text in (("the log", hermes.log()), ("/ready", body)) if wrong in text]
            bench.add(f"redis-auth: wrong password, {what}: /ready 503 (the processor) after start",
                      (f"{at:.1f} s: {body[:200]}" if met else f"not within 40 s; last {code} {body[:200]}")
                      + (f"; the password is in {' and '.join(leaked)}" if leaked else ""),
                      "<= 30 s, no password shown", met and at <= 30 and not leaked)
            if status != 0 or "Traceback" in hermes.log():
                bench.note(f"redis-auth ({what}): exit status {status}, log {hermes.log_path}")
    finally:
        server.destroy()
