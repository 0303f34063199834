# -*- test-case-name: tests.test_twistd_options -*-
"""
C{twistd hermes}: command-line options and the service they make::

    twistd [-n] hermes [--dsn DSN | --dsn-file PATH] --channel NAME [--channel NAME ...]
        [--processor module:Class] [--output PATH|-] [--backoff-limit N]
        [--watch-path DIR] [--failover-file NAME ...]
        [--role-check-interval SECONDS] [--max-backoff SECONDS]
        [--liveness-timeout SECONDS] [--shutdown-timeout SECONDS]
        [--payload-format text|json] [--queue-size N] [--max-in-flight-bytes N[K|M|G]]
        [--status-port PORT [--status-interface ADDRESS]]

Mistakes print one line on standard error and exit: status 2 for what the
options say (checked before anything starts), 1 when starting fails.
"""

import ipaddress
import math
import os
import sys

from twisted.logger import textFileLogObserver
from twisted.python import usage

from hermes_tx.events import PAYLOAD_FORMATS
from hermes_tx.exceptions import InvalidConfigurationException
from hermes_tx.outbox.budget import DEFAULT_MAX_BYTES
from hermes_tx.outbox.claims import FIRST_RETRY, LONGEST_RETRY
from hermes_tx.outbox.names import validate_schema, validate_topic
from hermes_tx.postgres import dsn as dsnlib
from hermes_tx.postgres.channels import validate_channels
from hermes_tx.postgres.dsncheck import check_options
from hermes_tx.sinks import sink_class
from hermes_tx.twistd import process
from hermes_tx.twistd.process import EXIT_USAGE, fail
from hermes_tx.twistd.processor import (
    load_processor_class,
    processor_kwargs,
)

DEFAULT_PROCESSOR = "hermes_tx.processors:JsonLinesProcessor"


#: the sane range of each numeric option: (least, most, unit)
BOUNDS = {
    "backoff-limit": (1, 86400, "seconds"),
    "role-check-interval": (0.05, 86400, "seconds"),
    "max-backoff": (0.1, 86400, "seconds"),
    "liveness-timeout": (0.5, 86400, "seconds"),
    "shutdown-timeout": (0.1, 86400, "seconds"),
    "execute-timeout": (0, 86400, "seconds"),
    "poll-interval": (0.01, 86400, "seconds"),
    "visibility-timeout": (1, 86400, "seconds"),
    "max-attempts": (1, 1000000, ""),
    "retry-delay": (0.01, 86400, "seconds"),
    "max-retry-delay": (0.01, 86400, "seconds"),
    "queue-size": (1, 1000000, "events"),
    "max-in-flight-bytes": (1024, 1 << 40, "bytes"),
    "status-port": (0, 65535, ""),
}


def stderr_log_observer():
    """
    twistd C{--logger} factory: log to standard error.  In the foreground
    (C{twistd -n hermes}) the log always goes there, whatever the
    processor, so that standard output carries data only: the JSON lines,
    or what a processor of one's own prints; with a sink it carries
    nothing.
    """
    return textFileLogObserver(sys.stderr)


def _typed(name, kind):
    """
    @return: a coercer for option C{--name} whose error names the option;
        infinities and NaN are refused.
    """
    noun = "a whole number" if kind is int else "a finite number"

    def coerce(value):
        try:
            number = kind(value)
        except ValueError:
            number = math.nan
        if not math.isfinite(number):
            raise ValueError(f"--{name} must be {noun}, not {value!r}")
        return number

    return coerce


#: what a byte count's suffix multiplies it by (binary: K is KiB)
_BYTE_UNITS = {"": 1, "b": 1, "k": 1 << 10, "kb": 1 << 10, "kib": 1 << 10, "m": 1 << 20, "mb": 1 << 20,
               "mib": 1 << 20, "g": 1 << 30, "gb": 1 << 30, "gib": 1 << 30}


def byte_count(name):
    """
    @return: a coercer for option C{--name}, a whole number of bytes with
        an optional binary suffix (C{64MiB}, C{512k}, C{1G}), whose error
        names the option.
    """
    def coerce(value):
        text = value.strip()
        digits = len(text) - len(text.lstrip("0123456789"))
        unit = _BYTE_UNITS.get(text[digits:].strip().lower())
        if not digits or unit is None:
            raise ValueError(f"--{name} must be a whole number of bytes, optionally with a suffix"
                             f" K, M or G (KiB, MiB, GiB), not {value!r}")
        return int(text[:digits]) * unit

    return coerce


def _shown(number):
    return str(int(number)) if float(number).is_integer() else str(number)


class Options(usage.Options):
    """
    The options of C{twistd hermes}.  After parsing, C{self["dsn"]} is the
    DSN to use (from C{--dsn}, C{--dsn-file} or C{$HERMES_DSN}),
    C{self["channels"]} and C{self["topics"]} the checked channel names and
    outbox topics, and C{self["processor_class"]} the processor class (of
    C{--processor}, or the sink of C{--sink}); a usage error names the
    option and, for a number, its bounds (L{BOUNDS}).
    """

    synopsis = "[--dsn DSN | --dsn-file PATH] --channel NAME [--channel NAME ...] [options]"
    longdesc = (
        "LISTEN on PostgreSQL channels and run a processor for every event. "
        "The DSN comes from --dsn, --dsn-file or HERMES_DSN; with none of them libpq's "
        "defaults apply (PGHOST, PGPORT, PGUSER, PGDATABASE, PGPASSWORD, PGPASSFILE ...), "
        "so no password need sit on the command line."
    )
    optParameters = [
        ["dsn", "d", None, "libpq connection string or postgresql:// URI (default: $HERMES_DSN)"],
        ["dsn-file", None, None, "read the DSN from this file (keeps a password out of ps)"],
        ["processor", "p", DEFAULT_PROCESSOR, "the processor class, module:Class"],
        ["output", "o", "-", "where the processor writes, for processors that take it (- for stdout)"],
        ["backoff-limit", None, 16, "longest backoff in seconds", _typed("backoff-limit", int)],
        ["watch-path", None, None, "the server's data directory, watched for failover files"],
        ["role-check-interval", None, 1.0, "seconds between role checks", _typed("role-check-interval", float)],
        ["max-backoff", None, 2.0, "longest wait between role checks while no host answers", _typed("max-backoff", float)],
        ["liveness-timeout", None, 10.0,
         "seconds a query or liveness probe may go unanswered before reconnecting",
         _typed("liveness-timeout", float)],
        ["shutdown-timeout", None, 10.0,
         "seconds a stop waits for the event in progress", _typed("shutdown-timeout", float)],
        ["execute-timeout", None, 60.0,
         "seconds an execute may take before it is cancelled (0: no limit)", _typed("execute-timeout", float)],
        ["payload-format", None, "text", "text, or json to decode payloads for processors"],
        ["queue-size", None, 10000,
         "events waiting for the processor before reading pauses", _typed("queue-size", int)],
        ["max-in-flight-bytes", None, DEFAULT_MAX_BYTES,
         "bytes of outbox payloads held (claimed, not yet settled) at once; "
         "a suffix K, M or G counts KiB, MiB, GiB (default 64 MiB)", byte_count("max-in-flight-bytes")],
        ["status-port", None, None, "serve /health, /ready and /metrics on this TCP port", _typed("status-port", int)],
        ["status-interface", None, "127.0.0.1", "the IP address the status port listens on"],
        ["outbox-schema", None, "hermes", "the schema of the outbox (hermes-tx install --schema)"],
        ["poll-interval", None, 1.0,
         "seconds between outbox claims while nothing wakes the consumer", _typed("poll-interval", float)],
        ["visibility-timeout", None, 30.0,
         "seconds an outbox claim lasts unless extended by a live consumer",
         _typed("visibility-timeout", float)],
        ["max-attempts", None, 10,
         "deliveries of an outbox change before it moves to the dead letters", _typed("max-attempts", int)],
        ["retry-delay", None, FIRST_RETRY,
         "seconds before a failed outbox change's first retry (three times longer each further retry)",
         _typed("retry-delay", float)],
        ["max-retry-delay", None, LONGEST_RETRY,
         "the longest delay before a failed outbox change's retry", _typed("max-retry-delay", float)],
        ["sink", None, None, "a built-in sink as the processor: http(s)://, elasticsearch+http(s)://, "
         "redis://, amqp://, nats:// URL (instead of --processor; nats:// needs twistd --reactor "
         "asyncio)"],
        ["sink-secret-file", None, None, "a file holding the sink's password, token or HMAC secret"],
    ]

    def __init__(self):
        usage.Options.__init__(self)
        self["channels"] = []
        self["topics"] = []
        self["failover-files"] = []

    def opt_failover_file(self, name):
        """
        a failover file under --watch-path (repeatable; replaces the defaults)
        """
        self["failover-files"].append(name)

    def opt_outbox(self, topic):
        """
        an outbox topic to consume (repeatable): changes written with
        hermes.emit or captured with hermes-tx capture
        """
        self["topics"].append(topic)

    def opt_channel(self, name):
        """
        a channel to LISTEN on, exactly as named (repeatable)
        """
        self["channels"].append(name)

    opt_c = opt_channel

    def parseOptions(self, options=None):
        if self.parent is None:
            return usage.Options.parseOptions(self, options)
        # Under twistd, a usage error is one clear line, not twistd's whole
        # help text followed by the error.
        try:
            return usage.Options.parseOptions(self, options)
        except usage.UsageError as e:
            fail(str(e).removeprefix("Parameter type enforcement failed: "), EXIT_USAGE)

    def postOptions(self):
        self["dsn"] = self._dsn()
        if not self["channels"] and not self["topics"]:
            raise usage.UsageError(
                "nothing to consume: pass --channel NAME or --outbox TOPIC at least once"
            )
        for name, (least, most, unit) in BOUNDS.items():
            value = self[name]
            if value is not None and not least <= value <= most:
                raise usage.UsageError(
                    f"--{name} must be between {_shown(least)} and {_shown(most)} {unit}".rstrip()
                    + f", not {_shown(value)}"
                )
        if self["retry-delay"] > self["max-retry-delay"]:
            raise usage.UsageError(
                f"--retry-delay ({_shown(self['retry-delay'])} s) must not be longer than --max-retry-delay "
                f"({_shown(self['max-retry-delay'])} s)")
        if self["payload-format"] not in PAYLOAD_FORMATS:
            raise usage.UsageError("--payload-format must be text or json")
        try:
            ipaddress.ip_address(self["status-interface"])
        except ValueError:
            raise usage.UsageError(
                f"--status-interface must be an IP address, not {self['status-interface']!r}"
            ) from None
        path = self["watch-path"]
        if path is not None and not os.path.isdir(path):
            raise usage.UsageError(f"--watch-path {path!r} is not a directory")
        if self["failover-files"] and path is None:
            raise usage.UsageError("--failover-file needs --watch-path")
        try:
            check_options(self["dsn"])
            if self["channels"]:
                self["channels"] = validate_channels(self["channels"])
            if self["topics"]:
                self["topics"] = [validate_topic(t) for t in dict.fromkeys(self["topics"])]
                validate_schema(self["outbox-schema"])
        except InvalidConfigurationException as e:
            raise usage.UsageError(str(e))
        self["processor_class"] = self._processor_class()
        self._for_twistd()

    def _processor_class(self):
        if self["sink"] is None:
            if self["sink-secret-file"] is not None:
                raise usage.UsageError("--sink-secret-file needs --sink")
            return load_processor_class(self["processor"])
        if self["processor"] != DEFAULT_PROCESSOR:
            raise usage.UsageError("pass --processor or --sink, not both")
        try:
            return sink_class(self["sink"])
        except InvalidConfigurationException as e:
            raise usage.UsageError(str(e))

    def _dsn(self):
        """
        @return: the DSN from --dsn, --dsn-file or HERMES_DSN, else C{""}
            (libpq's defaults).
        """
        if self["dsn"] is not None and self["dsn-file"] is not None:
            raise usage.UsageError("pass --dsn or --dsn-file, not both")
        if self["dsn-file"] is not None:
            try:
                return dsnlib.read_file(self["dsn-file"])
            except InvalidConfigurationException as e:
                raise usage.UsageError(str(e))
        if self["dsn"] is not None:
            return self["dsn"]
        return os.environ.get("HERMES_DSN", "")

    def _for_twistd(self):
        # What depends on twistd's own options: where output and logs go.
        parent = self.parent
        if parent is None:
            return
        daemon = not (parent.get("nodaemon") or parent.get("debug"))
        to_stdout = self["output"] == "-" and "output" in processor_kwargs(
            self["processor_class"], self
        )
        if daemon and to_stdout:
            raise usage.UsageError(
                "daemon mode needs --output FILE (a daemon's standard output is /dev/null); "
                "or run in the foreground with twistd -n"
            )
        logfile = parent.get("logfile")
        if parent.get("logger") or parent.get("syslog") or logfile == "-":
            return  # the operator's choice (twistd refuses "-" for daemons)
        if daemon or logfile:
            # A log file: ours, so SIGHUP can reopen it.
            process.log_to_file(logfile or "twistd.log")
            parent["logger"] = "hermes_tx.twistd.process.twistd_log_observer"
        else:
            # twistd -n logs to stdout by default; stdout is for data (the
            # JSON lines, a processor's own output), the log goes to stderr.
            parent["logger"] = "hermes_tx.twistd.options.stderr_log_observer"

