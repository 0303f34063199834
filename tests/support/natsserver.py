"""
A nats-server of a test's own (C{nats-server -js -sd DIR} on a free
loopback port; the shared one on 4222 is never touched), that a test may
stop, kill, freeze and start again with the same store, and a reader of a
JetStream stream's messages.

L{read_stream} is a coroutine: under the asyncio reactor run it with
L{hermes_tx.sinks.aio.deferred}; from any other reactor's tests, in a
thread of its own with L{read_stream_blocking} (C{threads.deferToThread}).
"""

import asyncio
import json
import os
import subprocess
import tempfile

from tests.support.httpserver import free_port
from tests.support.serverprocess import ServerProcess, started


class NatsServer(ServerProcess):
    """
    @ivar port: its client port on 127.0.0.1.
    @ivar dir: its directory: the JetStream store (C{js}), its log
        (C{log}) and configuration (C{nats.conf}).
    """

    def __init__(self, config=""):
        """
        @param config: more of the server's configuration file (an
            C{authorization} block, C{tls}, C{max_payload} ...).
        """
        self.dir = tempfile.mkdtemp(prefix="hermes-nats-")
        self.port = free_port()
        self.config = os.path.join(self.dir, "nats.conf")
        with open(self.config, "w") as f:
            f.write(config)
        self.process = None

    @property
    def url(self):
        return f"nats://127.0.0.1:{self.port}"

    def start(self):
        args = ["nats-server", "-c", self.config, "-js", "-a", "127.0.0.1", "-p", str(self.port),
                "-sd", os.path.join(self.dir, "js"), "-l", os.path.join(self.dir, "log")]
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            return self.wait_ready(lambda reply: reply.startswith(b"INFO "), what="nats-server")
        except RuntimeError as e:
            raise RuntimeError(f"{e}: {self.log()[-2000:]}") from None

    def restart(self):
        """SIGTERM (JetStream writes what it holds), then start again."""
        self.stop()
        return self.start()

    def log(self):
        try:
            with open(os.path.join(self.dir, "log"), errors="replace") as f:
                return f.read()
        except OSError:
            return ""


def start_nats(case, **kwargs):
    """
    @return: a started L{NatsServer}, destroyed when the test C{case} ends.
    """
    return started(case, NatsServer(**kwargs))


class Message:
    """
    A stored message: C{seq}, C{subject}, C{headers} (a dict), C{data}
    (bytes) and C{record} (the decoded JSON body).
    """

    def __init__(self, seq, subject, headers, data):
        self.seq = seq
        self.subject = subject
        self.headers = headers or {}
        self.data = data
        self.record = json.loads(data)

    @property
    def msg_id(self):
        return self.headers.get("Nats-Msg-Id")


async def read_stream(url, stream, **options):
    """
    @param url: the server's URL.
    @param options: for nats-py's C{connect} (C{user}, C{password} ...).
    @return: the messages of C{stream}, in sequence order (L{Message}s),
        or C{None} when there is no such stream.
    """
    import nats
    from nats.js.errors import NotFoundError

    nc = await nats.connect(url, allow_reconnect=False, **options)
    try:
        js = nc.jetstream(timeout=10)
        try:
            info = await js.stream_info(stream)
        except NotFoundError:
            return None
        found = []
        if info.state.messages:
            for seq in range(info.state.first_seq, info.state.last_seq + 1):
                try:
                    raw = await js.get_msg(stream, seq)
                except NotFoundError:
                    continue
                found.append(Message(raw.seq, raw.subject, raw.headers, raw.data))
        return found
    finally:
        await nc.close()


async def admin(url, action, **options):
    """
    Run C{await action(js)} on a connection of its own (to make, change or
    delete streams).

    @return: what it returned.
    """
    import nats

    nc = await nats.connect(url, allow_reconnect=False, **options)
    try:
        return await action(nc.jetstream(timeout=10))
    finally:
        await nc.close()


def read_stream_blocking(url, stream, **options):
    """L{read_stream} on an asyncio loop of its own (not from the reactor's thread)."""
    return asyncio.run(read_stream(url, stream, **options))


def make_certificates(directory):
    """
    Make a CA and, signed by it, a server certificate for 127.0.0.1 and a
    client certificate (EC P-256, valid for a day), with C{openssl}.

    @return: a dict of paths: C{ca}, C{server_cert}, C{server_key},
        C{client_cert}, C{client_key}.
    """
    path = {name: os.path.join(directory, name + ".pem")
            for name in ("ca", "ca_key", "server_cert", "server_key", "client_cert", "client_key")}
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]

    def openssl(*args):
        subprocess.run(["openssl", *args], check=True, capture_output=True)

    openssl("req", "-x509", *ec, "-keyout", path["ca_key"], "-out", path["ca"], "-days", "1",
            "-subj", "/CN=hermes test CA")
    for who, extension in (("server", "subjectAltName=IP:127.0.0.1"),
                           ("client", "extendedKeyUsage=clientAuth")):
        request = os.path.join(directory, who + ".csr")
        extfile = os.path.join(directory, who + ".ext")
        with open(extfile, "w") as f:
            f.write(extension + "\n")
        openssl("req", *ec, "-keyout", path[who + "_key"], "-out", request,
                "-subj", f"/CN=hermes test {who}")
        openssl("x509", "-req", "-in", request, "-CA", path["ca"], "-CAkey", path["ca_key"],
                "-CAcreateserial", "-out", path[who + "_cert"], "-days", "1", "-extfile", extfile)
    return path
