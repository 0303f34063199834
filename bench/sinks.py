"""
Each built-in sink against a minimal hand-written client loop for the same
system, in one run, from a backlog of events built in memory (the outbox
consumer is not part of this measurement).

    .venv/bin/pip install -r bench/requirements.txt   (redis-py, for comparison)
    .venv/bin/python bench/sinks.py [--events 100000] [--rounds 3] [--only SYSTEM]
        [--es-events 20000] [--es-rounds 1] [--es-timeout 120]

Every measurement runs in a process of its own (the reactor cannot be
restarted) and is timed from the first request to the last answer:

  redis     RedisStreamSink (max_batch 500, XADD pipelined per batch) vs
            redis-py pipelined XADD, 500 per pipeline, on a redis-server of
            the bench's own
  amqp      AmqpSink (max_batch 200, publisher confirms) vs pika
            BlockingConnection publishing with confirms, on 127.0.0.1:5672
  webhook   WebhookSink (max_batch 100) vs http.client, one POST of a JSON
            array per 100 events on one keep-alive connection
  es        ElasticsearchSink (max_batch 500) vs http.client, one _bulk POST
            per 500 events
  nats      NatsSink (max_batch 500, on the asyncio reactor, into a stream
            it makes) vs a minimal nats-py loop publishing the same messages
            (the JSON record, Nats-Msg-Id) with publish_async and awaiting
            each batch's 500 acknowledgements, into a stream of its own, on
            a nats-server of the bench's own (-js, file storage)

The HTTP servers (a webhook that reads and decodes each body, and the
tests' stand-in for the _bulk API) run in a separate process.  Each sink is
driven like the consumer drives it: one batch at a time, the next after the
previous batch's outcome.

Then the section es-429 (C{--only es-429} runs it alone; bench/sinks_429.py):
the same outbox drained through C{twistd hermes --outbox --sink
elasticsearch+http://...} without 429s and with 3% of the items answered
429 the first time the stand-in sees them, on a throwaway PostgreSQL.
"""

import argparse
import http.client
import json
import os
import statistics
import subprocess
import sys
import time
import uuid

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

PAIRS = [("redis", "redis-sink", "redis-py"), ("amqp", "amqp-sink", "pika-blocking"),
         ("webhook", "webhook-sink", "http.client"), ("es", "es-sink", "es-http.client"),
         ("nats", "nats-sink", "nats-py")]


def backlog(n):
    """@return: C{n} changes over 1,000 keys, each an UPDATE of a small row."""
    from hermes_tx.events import Change

    out = []
    for i in range(1, n + 1):
        key = f"k{i % 1000}"
        data = {"table": "public.items", "op": "UPDATE", "key": {"id": key}, "old": None,
                "new": {"id": key, "name": f"item {i}", "price": i % 977, "tags": ["a", "b"]}}
        out.append(Change(i, "items", key, 0, 1_700_000_000.0 + i, json.dumps(data), data))
    return out


# -- workers (one per process) ------------------------------------------------

def run_sink(url, events, max_batch):
    from twisted.internet import defer, reactor

    from hermes_tx.outcomes import Retry
    from hermes_tx.sinks import from_url

    result = {}

    @defer.inlineCallbacks
    def main():
        try:
            sink = from_url(url, max_batch=max_batch)
            yield sink.execute(events[:max_batch])  # connect, warm up
            started = time.perf_counter()
            for i in range(max_batch, len(events), max_batch):
                batch = events[i:i + max_batch]
                try:
                    outcome = yield sink.execute(batch)
                except Retry as e:
                    raise RuntimeError(f"batch failed: {e}")
                if outcome is not None:
                    raise RuntimeError(f"batch not all done: {outcome}")
            result["seconds"] = time.perf_counter() - started
            result["events"] = len(events) - max_batch
            yield sink.tear_down()
        finally:
            reactor.stop()

    reactor.callWhenRunning(main)
    reactor.run()
    return result


def redis_py(port, stream, events):
    import redis

    client = redis.Redis(port=port)
    pipe = client.pipeline(transaction=False)
    for e in events[:500]:
        pipe.xadd(stream, {"topic": e.topic, "key": e.key, "id": str(e.id), "payload": e.payload})
    pipe.execute()
    started = time.perf_counter()
    for i in range(500, len(events), 500):
        pipe = client.pipeline(transaction=False)
        for e in events[i:i + 500]:
            pipe.xadd(stream, {"topic": e.topic, "key": e.key, "id": str(e.id),
                               "payload": e.payload})
        pipe.execute()
    return {"seconds": time.perf_counter() - started, "events": len(events) - 500}


def pika_blocking(exchange, events):
    import pika

    from hermes_tx.sinks.records import encode, record

    connection = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1"))
    channel = connection.channel()
    channel.exchange_declare(exchange=exchange, exchange_type="topic", durable=True)
    channel.confirm_delivery()
    started = time.perf_counter()
    for e in events:
        properties = pika.BasicProperties(content_type="application/json", delivery_mode=2,
                                          message_id=str(e.id))
        channel.basic_publish(exchange, e.topic, encode(record(e)).encode(), properties)
    seconds = time.perf_counter() - started
    connection.close()
    return {"seconds": seconds, "events": len(events)}


def nats_py(port, tag, events, size=500):
    """
    The nats-py loop: each batch's messages published with
    C{publish_async}, then its acknowledgements awaited together.
    """
    import asyncio

    import nats

    from hermes_tx.sinks.records import encode, record

    async def main():
        nc = await nats.connect(f"nats://127.0.0.1:{port}")
        js = nc.jetstream()
        await js.add_stream(name=f"BENCH{tag}", subjects=[f"bench{tag}.>"])

        async def batch(chunk):
            acks = []
            for e in chunk:
                acks.append(await js.publish_async(
                    f"bench{tag}.{e.topic}", encode(record(e)).encode("utf-8"),
                    headers={"Nats-Msg-Id": f"{e.topic}:{e.id}"}))
            for ack in await asyncio.gather(*acks):
                if ack.duplicate:
                    raise RuntimeError("duplicate")

        await batch(events[:size])
        started = time.perf_counter()
        for i in range(size, len(events), size):
            await batch(events[i:i + size])
        seconds = time.perf_counter() - started
        await js.delete_stream(f"BENCH{tag}")
        await nc.close()
        return {"seconds": seconds, "events": len(events) - size}

    return asyncio.run(main())


def delete_nats_stream(port, name):
    import asyncio

    import nats

    async def main():
        nc = await nats.connect(f"nats://127.0.0.1:{port}")
        await nc.jetstream().delete_stream(name)
        await nc.close()

    asyncio.run(main())


def http_client(port, path, events, size, body_of):
    connection = http.client.HTTPConnection("127.0.0.1", port)
    started = time.perf_counter()
    for i in range(0, len(events), size):
        body = body_of(events[i:i + size])
        connection.request("POST", path, body=body,
                           headers={"Content-Type": "application/json"})
        response = connection.getresponse()
        answer = response.read()
        if response.status != 200:
            raise RuntimeError(f"HTTP {response.status}")
        if path.endswith("_bulk") and json.loads(answer)["errors"]:
            raise RuntimeError("bulk errors")
    return {"seconds": time.perf_counter() - started, "events": len(events)}


def webhook_body(batch):
    from hermes_tx.sinks.records import encode, record

    return ("[" + ",".join(encode(record(e)) for e in batch) + "]").encode()


def bulk_body(index, batch):
    lines = []
    for e in batch:
        lines.append(json.dumps({"index": {"_index": index, "_id": e.key, "version": e.id,
                                           "version_type": "external"}}))
        lines.append(json.dumps(e.data["new"]))
    return ("\n".join(lines) + "\n").encode()


def worker(args):
    if args.worker == "nats-sink":
        from twisted.internet import asyncioreactor

        asyncioreactor.install()
    events = backlog(args.events)
    name, port = args.worker, args.port
    tag = uuid.uuid4().hex[:8]
    if name == "redis-sink":
        result = run_sink(f"redis://127.0.0.1:{port}/0?stream=bench-{tag}", events, 500)
    elif name == "redis-py":
        result = redis_py(port, f"bench-{tag}", events)
    elif name == "amqp-sink":
        result = run_sink(f"amqp://guest:guest@127.0.0.1:5672/?exchange=bench-{tag}", events, 200)
    elif name == "pika-blocking":
        result = pika_blocking(f"bench-{tag}", events)
    elif name == "webhook-sink":
        result = run_sink(f"http://127.0.0.1:{port}/hook", events, 100)
    elif name == "http.client":
        result = http_client(port, "/hook", events, 100, webhook_body)
    elif name == "es-sink":
        result = run_sink(f"elasticsearch+http://127.0.0.1:{port}/bench-{tag}", events, 500)
    elif name == "es-http.client":
        result = http_client(port, "/_bulk", events, 500,
                             lambda batch: bulk_body(f"bench-{tag}", batch))
    elif name == "nats-sink":
        result = run_sink(f"nats://127.0.0.1:{port}/bench{tag}.{{topic}}?stream=BENCH{tag}",
                          events, 500)
        delete_nats_stream(port, f"BENCH{tag}")
    elif name == "nats-py":
        result = nats_py(port, tag, events)
    else:
        raise SystemExit(f"unknown worker {name}")
    if name.startswith("amqp") or name.startswith("pika"):
        cleanup_exchange(f"bench-{tag}")
    print(json.dumps(result))


def cleanup_exchange(exchange):
    import pika

    connection = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1"))
    connection.channel().exchange_delete(exchange)
    connection.close()


# -- the HTTP server process --------------------------------------------------

def serve(port_file, first_sight_429=0.0):
    from twisted.internet import reactor
    from twisted.web import resource, server

    from tests.support.fake_es import FakeBulk

    class Hook(resource.Resource):
        isLeaf = True

        def render_POST(self, request):
            json.loads(request.content.read())
            return b'{"ok":true}'

    class Root(resource.Resource):
        def getChild(self, name, request):
            return bulk if name in (b"_bulk", b"_fake") else hook

    bulk, hook = FakeBulk(first_sight_429=first_sight_429), Hook()
    site = server.Site(Root())
    site.log = lambda request: None
    port = reactor.listenTCP(0, site, interface="127.0.0.1")
    with open(port_file, "w") as f:
        f.write(str(port.getHost().port))
    reactor.run()


# -- the parent ---------------------------------------------------------------

def measure(name, port, events):
    out = subprocess.run([sys.executable, __file__, "--worker", name, "--port", str(port),
                          "--events", str(events)], capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"{name} failed:\n{out.stderr[-2000:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    return result["events"] / result["seconds"]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--worker")
    parser.add_argument("--port", type=int)
    parser.add_argument("--serve")
    parser.add_argument("--only", help="one system: redis, amqp, webhook, es, nats or es-429")
    parser.add_argument("--first-sight-429", type=float, default=0.0)
    parser.add_argument("--es-events", type=int, default=20_000)
    parser.add_argument("--es-timeout", type=float, default=120.0)
    parser.add_argument("--es-rounds", type=int, default=1)
    parser.add_argument("--hermes-arg", action="append", default=[],
                        help="es-429: an argument for twistd hermes (repeatable), e.g. --hermes-arg=--retry-delay=0.05")
    args = parser.parse_args()
    if args.serve:
        return serve(args.serve, args.first_sight_429)
    if args.worker:
        return worker(args)
    if args.only != "es-429":
        pairs(args)
    if args.only in (None, "es-429"):
        sys.path.insert(0, os.path.join(ROOT, "bench"))
        import sinks_429

        sinks_429.run(os.path.abspath(__file__), events=args.es_events,
                      rounds=args.es_rounds, timeout=args.es_timeout, extra=args.hermes_arg)


def pairs(args):
    """Each sink against its hand-written loop."""
    from tests.support.natsserver import NatsServer
    from tests.support.redisserver import RedisServer

    redis_server = RedisServer().start()
    nats_server = NatsServer().start()
    port_file = os.path.join(redis_server.dir, "http-port")
    http_server = subprocess.Popen([sys.executable, __file__, "--serve", port_file])
    try:
        while not os.path.exists(port_file) or not open(port_file).read():
            time.sleep(0.05)
        http_port = int(open(port_file).read())
        rates = {}
        for r in range(args.rounds):
            for system, sink, peer in PAIRS:
                if args.only and system != args.only:
                    continue
                port = {"redis": redis_server.port, "nats": nats_server.port}.get(system, http_port)
                for name in ((sink, peer) if r % 2 == 0 else (peer, sink)):
                    rate = measure(name, port, args.events)
                    rates.setdefault(name, []).append(rate)
                    print(f"round {r + 1}: {name:16} {rate:10,.0f} events/s", flush=True)
        print()
        print(f"{'system':8}  {'sink':>14}  {'hand-written':>14}  {'peer':16}  ratio")
        for system, sink, peer in PAIRS:
            if args.only and system != args.only:
                continue
            s, p = statistics.median(rates[sink]), statistics.median(rates[peer])
            print(f"{system:8}  {s:14,.0f}  {p:14,.0f}  {peer:16}  {s / p:5.2f}x")
    finally:
        http_server.terminate()
        http_server.wait()
        redis_server.destroy()
        nats_server.destroy()


if __name__ == "__main__":
    main()
