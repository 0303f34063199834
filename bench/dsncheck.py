"""
How long does hermes_tx.postgres.dsncheck.check_options take?  It asks libpq to
start an asynchronous connection to a socket path that cannot exist, so it
should cost a fraction of a millisecond and never wait on a name lookup or
the network.  2000 checks of each DSN below; milliseconds.

    .venv/bin/python bench/dsncheck.py
"""

import statistics
import sys
import time

from hermes_tx.postgres.dsncheck import check_options
from hermes_tx.exceptions import InvalidConfigurationException

DSNS = [
    "host=db.example.com port=5432 sslmode=require",
    "host=a,b,c port=1,2,3 target_session_attrs=read-write",
    "postgresql://u:pw@h1:1,h2:2/db",
    "sslmode=bogus",
]


def measure(dsn, rounds):
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        try:
            check_options(dsn, environ={})
        except InvalidConfigurationException:
            pass
        times.append((time.perf_counter() - start) * 1e3)
    times.sort()
    return statistics.median(times), times[int(len(times) * 0.99)], times[-1]


def main(rounds=2000):
    print(f"{'DSN':55} {'median':>8} {'p99':>8} {'max':>8}")
    for dsn in DSNS:
        median, p99, most = measure(dsn, rounds)
        print(f"{dsn:55} {median:8.3f} {p99:8.3f} {most:8.3f}")


if __name__ == "__main__":
    main(*map(int, sys.argv[1:]))
