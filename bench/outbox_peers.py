"""
The peers of C{bench/outbox.py}'s drain: pgqueuer and procrastinate each
enqueue and then process N no-op jobs, through their documented APIs, in a
database of their own (schema installed first).  Enqueue and processing
are timed separately.  Installed from C{bench/requirements.txt}.

Tables are ANALYZEd after enqueueing, as the outbox bench does with its
own.  Each function returns C{(enqueue_seconds, process_seconds, left)}, C{left}
being the jobs still queued after processing (0 when all were done).
"""

import asyncio
import json
import time
from importlib.metadata import version

CHUNK = 1000  # jobs per enqueue call (one transaction each)


def payload(g):
    """The job's data: what the outbox bench's changes carry."""
    return {"id": g, "name": f"item {g}", "n": g * 7}


def versions():
    return {name: version(name) for name in ("pgqueuer", "procrastinate")}


def pgqueuer_drain(dsn, rows, batch_size):
    """
    pgqueuer (asyncpg driver): C{Queries.enqueue} with lists of 1000, then
    C{PgQueuer} with a no-op entrypoint, its queue manager run in C{drain}
    mode (it stops when the queue is empty) with C{batch_size}.
    """
    return asyncio.run(_pgqueuer(dsn, rows, batch_size))


async def _pgqueuer(dsn, rows, batch_size):
    import asyncpg
    from pgqueuer import AsyncpgDriver, PgQueuer, Queries
    from pgqueuer.types import QueueExecutionMode

    conn = await asyncpg.connect(dsn)
    try:
        queries = Queries(AsyncpgDriver(conn))
        if not await queries.schema_is_installed():
            await queries.install()
        start = time.perf_counter()
        for first in range(1, rows + 1, CHUNK):
            chunk = range(first, min(first + CHUNK, rows + 1))
            await queries.enqueue(["noop"] * len(chunk), [json.dumps(payload(g)).encode() for g in chunk],
                                  [0] * len(chunk))
        enqueued = time.perf_counter() - start
        await conn.execute("ANALYZE pgqueuer")  # as the outbox bench does (and autovacuum would)
        worker = await asyncpg.connect(dsn)
        try:
            pgq = PgQueuer.from_asyncpg_connection(worker)

            @pgq.entrypoint("noop")
            async def noop(job):
                return None

            start = time.perf_counter()
            await pgq.qm.run(mode=QueueExecutionMode.drain, batch_size=batch_size)
            processed = time.perf_counter() - start
        finally:
            await worker.close()
        left = await conn.fetchval("SELECT count(*) FROM pgqueuer WHERE status = 'queued'")
        return enqueued, processed, left
    finally:
        await conn.close()


def procrastinate_drain(conninfo, rows, concurrency):
    """
    procrastinate (psycopg 3): C{Task.batch_defer_async} with 1000 jobs per
    call, then C{App.run_worker_async(wait=False)} (it stops once caught
    up) with C{concurrency}, deleting successful jobs (as the outbox does).
    """
    return asyncio.run(_procrastinate(conninfo, rows, concurrency))


async def _procrastinate(conninfo, rows, concurrency):
    import procrastinate

    app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=conninfo))

    @app.task(name="noop", queue="bench")
    async def noop(**kwargs):
        return None

    async with app.open_async():
        try:
            await app.schema_manager.apply_schema_async()
        except procrastinate.exceptions.ConnectorException as e:  # installed by an earlier round
            if "already exists" not in str(e.__cause__):
                raise
        start = time.perf_counter()
        for first in range(1, rows + 1, CHUNK):
            await noop.batch_defer_async(*[payload(g) for g in range(first, min(first + CHUNK, rows + 1))])
        enqueued = time.perf_counter() - start
        await app.connector.execute_query_async("ANALYZE procrastinate_jobs")
        start = time.perf_counter()
        await app.run_worker_async(queues=["bench"], wait=False, concurrency=concurrency,
                                   delete_jobs="successful", install_signal_handlers=False)
        processed = time.perf_counter() - start
        async with app.connector.pool.connection() as conn:
            cur = await conn.execute("SELECT count(*) FROM procrastinate_jobs WHERE status = 'todo'")
            left = (await cur.fetchone())[0]
        return enqueued, processed, left
