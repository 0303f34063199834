# -*- test-case-name: tests.test_outbox_cli -*-
"""
C{hermes-tx}: install the outbox, capture tables, look at it, handle dead
letters::

    hermes-tx install      [--dsn DSN] [--schema NAME] [--owner ROLE]
                           [--grant-writer ROLE] [--grant-consumer ROLE] [--grant-operator ROLE]
    hermes-tx grants       [--writer ROLE] [--consumer ROLE] [--operator ROLE]
    hermes-tx capture      --table SCHEMA.TABLE --topic NAME
    hermes-tx uncapture    --table SCHEMA.TABLE [--topic NAME]
    hermes-tx status       [--json]
    hermes-tx dead-letters [--topic T] [--limit N] [--json]
                           [--retry ID ... | --retry-all [--force] | --purge ID ... | --purge-all]
    hermes-tx emit         --topic T --key K --payload JSON

The DSN comes from C{--dsn} or C{$HERMES_DSN}; with several hosts, the
primary is used (L{hermes_tx.outbox.db.connect}).  A mistake in the
command line is one line on standard error and exit status 2; a failure
(cannot connect, no such table, a standby, a missing right) one line and
exit status 1; never a traceback, never a password (scrubbed by
L{hermes_tx.secrets}), not even when standard output is closed early
(C{hermes-tx dead-letters | head -1}).
"""

import argparse
import json
import os
import sys
import time

import psycopg2
import psycopg2.errors

from hermes_tx.exceptions import HermesException
from hermes_tx.outbox import admin, privileges
from hermes_tx.outbox.capture import capture, uncapture
from hermes_tx.outbox.db import connect, first_line
from hermes_tx.outbox.names import DEFAULT_SCHEMA
from hermes_tx.outbox.render import dead_letter_table, status_table
from hermes_tx.outbox.schema import install, latest_version, owned_by_superuser
from hermes_tx.postgres.dsn import dsn_secrets

PROG = "hermes-tx"


class UsageError(Exception):
    """A mistake in the command line (exit status 2)."""


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line, raised, not printed."""

    def error(self, message):
        raise UsageError(message)


def _positive(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive: {text!r}")
    return value


def build_parser():
    """
    @return: the C{hermes-tx} argument parser.
    """
    common = _Parser(add_help=False)
    common.add_argument(
        "--dsn",
        help="libpq connection string or postgresql:// URI (default: $HERMES_DSN); "
        "prefer $HERMES_DSN, PGPASSWORD or ~/.pgpass to keep a password off the command line",
    )
    common.add_argument("--schema", default=DEFAULT_SCHEMA, help="the outbox's schema (default: %(default)s)")
    parser = _Parser(prog=PROG, description="The hermes_tx durable outbox: schema, capture, status, dead letters.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    commands.required = True

    cmd = commands.add_parser("install", parents=[common], help="create or upgrade the outbox schema")
    cmd.add_argument("--owner", metavar="ROLE",
                     help="install as ROLE (you must be a member of it): it owns what is made, "
                     "and the outbox's functions run with its rights")
    for part in privileges.PARTS.values():
        cmd.add_argument(part.option, action="append", default=[], metavar="ROLE",
                         help=f"grant ROLE what it needs to {part.doing} (repeatable)")

    cmd = commands.add_parser("grants", parents=[common],
                              help="print the GRANT statements roles need (runs nothing)")
    for part in privileges.PARTS.values():
        cmd.add_argument(f"--{part.name}", action="append", default=[], metavar="ROLE",
                         help=f"the statements for ROLE to {part.doing} (repeatable)")

    cmd = commands.add_parser("capture", parents=[common], help="capture a table's changes into a topic")
    cmd.add_argument("--table", required=True, help='TABLE (in public), SCHEMA.TABLE or \'"Odd Schema"."Odd.Table"\'')
    cmd.add_argument("--topic", required=True)

    cmd = commands.add_parser("uncapture", parents=[common], help="stop capturing a table's changes")
    cmd.add_argument("--table", required=True)
    cmd.add_argument("--topic", help="only this topic (default: every topic)")

    cmd = commands.add_parser("status", parents=[common], help="pending, in flight, lag and dead letters per topic")
    cmd.add_argument("--json", action="store_true", help="print JSON")

    cmd = commands.add_parser("dead-letters", parents=[common], help="list, retry or purge dead letters")
    cmd.add_argument("--topic", help="only this topic")
    cmd.add_argument("--limit", type=_positive, default=100, help="list at most this many (default: %(default)s)")
    cmd.add_argument("--json", action="store_true", help="print JSON")
    action = cmd.add_mutually_exclusive_group()
    action.add_argument("--retry", nargs="+", type=_positive, metavar="ID", help="move these back to the outbox")
    action.add_argument("--retry-all", action="store_true", help="move all (of --topic) back to the outbox")
    cmd.add_argument("--force", action="store_true",
                     help="retry dead letters superseded by a newer change of their key too")
    action.add_argument("--purge", nargs="+", type=_positive, metavar="ID", help="delete these for good")
    action.add_argument("--purge-all", action="store_true", help="delete all (of --topic) for good")

    cmd = commands.add_parser("emit", parents=[common], help="emit one change (its own transaction)")
    cmd.add_argument("--topic", required=True)
    cmd.add_argument("--key", required=True)
    cmd.add_argument("--payload", required=True, help="JSON")
    return parser


def _requested_grants(args, prefix):
    return [(part, role) for part in privileges.PARTS.values()
            for role in getattr(args, prefix + part.name)]


def _install(conn, args, out, err):
    granted = _requested_grants(args, "grant_")
    applied = install(conn, args.schema, owner=args.owner, grants=granted)
    if applied:
        names = ", ".join(f"{m.version:04d}_{m.name}" for m in applied)
        print(f"schema {args.schema!r} installed at version {latest_version()} (applied {names})", file=out)
    else:
        print(f"schema {args.schema!r} is up to date (version {latest_version()})", file=out)
    for part, role in granted:
        print(f"granted {role!r} what it needs to {part.doing}", file=out)
    with conn.cursor() as cur:
        superuser = owned_by_superuser(cur, args.schema)
    if superuser:
        print(f"note: the outbox's functions belong to superuser {superuser!r} and run with its rights;"
              " a captured table's owner could run code with them (a cast to json):"
              " install with --owner ROLE (docs: Roles and privileges)", file=out)


def _grants(conn, args, out, err):
    wanted = _requested_grants(args, "")
    if not wanted:
        raise UsageError("name at least one role: --writer, --consumer or --operator ROLE")
    for part, role in wanted:
        print(f"-- {role}: to {part.doing}", file=out)
        for statement in privileges.grants(part, role, args.schema):
            print(statement.as_string(conn) + ";", file=out)


def _capture(conn, args, out, err):
    table = capture(conn, args.table, args.topic, args.schema)
    print(f"capturing {table.display} into topic {args.topic!r} (key: {', '.join(table.key)})", file=out)


def _uncapture(conn, args, out, err):
    dropped = uncapture(conn, args.table, args.topic, args.schema)
    what = f"into topic {args.topic!r}" if args.topic else "into any topic"
    if dropped:
        print(f"stopped capturing {args.table} {what} ({_count(dropped, 'trigger')} dropped)", file=out)
    else:
        print(f"{args.table} was not captured {what}", file=out)


def _status(conn, args, out, err):
    with conn.cursor() as cur:
        admin.require_installed(cur, args.schema)
        rows = admin.status(cur, args.schema)
    if args.json:
        print(json.dumps(rows), file=out)
    else:
        print(status_table(rows), file=out)


def _dead_letters(conn, args, out, err):
    with conn.cursor() as cur:
        admin.require_installed(cur, args.schema)
        if args.retry or args.retry_all:
            _retry(cur, args, out, err)
        elif args.purge or args.purge_all:
            purged = admin.purge_dead_letters(cur, args.schema, args.purge, args.topic)
            _report(args.purge, purged, "purged", out)
        else:
            rows, total = admin.dead_letters(cur, args.schema, args.topic, args.limit)
            if args.json:
                print(json.dumps(rows, default=lambda v: v.isoformat()), file=out)
            else:
                print(dead_letter_table(rows, total), file=out)


#: how often, and how long apart, a dead letter whose key was busy is
#: tried again before C{--retry} gives up on it
BUSY_TRIES, BUSY_PAUSE = 5, 0.2


def _retry(cur, args, out, err):
    """
    Retry dead letters (L{admin.retry_dead_letters}); busy ones again a few
    times; one line on standard error per dead letter not retried.
    """
    results = admin.retry_dead_letters(cur, args.schema, args.retry, args.topic, args.force)
    for _ in range(BUSY_TRIES):
        busy = [i for i, outcome, _ in results if outcome == admin.BUSY]
        if not busy:
            break
        time.sleep(BUSY_PAUSE)
        again = dict((r[0], r) for r in admin.retry_dead_letters(cur, args.schema, busy, None, args.force))
        results = [again.get(r[0], r) for r in results]
    retried = [i for i, outcome, _ in results if outcome == admin.RETRIED]
    print(f"retried {_count(retried, 'dead letter')}", file=out)
    refused = [r for r in results if r[1] != admin.RETRIED]
    for id_, outcome, newer in refused:
        print(f"{PROG}: dead letter {id_} not retried: {_REFUSALS[outcome].format(newer=newer, id=id_)}",
              file=err)
    if refused:
        raise _Refused()


_REFUSALS = {
    admin.SUPERSEDED: "change {newer} of its key was delivered after it failed (it would overwrite "
                      "newer data); --force retries it anyway, --purge {id} drops it",
    admin.IN_FLIGHT: "change {newer} of its key is being delivered; retry it once that is done",
    admin.BUSY: "its key was being written or claimed the whole time; try again",
    admin.MISSING: "there is no dead letter with that id",
}


class _Refused(Exception):
    """Some dead letters were not retried (each said so): exit status 1."""


def _report(asked, done, verb, out):
    """
    Say how many dead letters were C{verb}; raise when some asked for were
    not there.
    """
    print(f"{verb} {_count(done, 'dead letter')}", file=out)
    missing = sorted(set(asked or ()) - set(done))
    if missing:
        raise HermesException(f"no dead letter with id {', '.join(map(str, missing))}")


def _count(items, noun):
    return f"{len(items)} {noun}{'' if len(items) == 1 else 's'}"


def _emit(conn, args, out, err):
    try:
        json.loads(args.payload)
    except ValueError as e:
        raise UsageError(f"--payload is not JSON: {e}") from None
    with conn.cursor() as cur:
        admin.require_installed(cur, args.schema)
        print(admin.emit(cur, args.topic, args.key, args.payload, args.schema), file=out)


COMMANDS = {
    "install": _install,
    "grants": _grants,
    "capture": _capture,
    "uncapture": _uncapture,
    "status": _status,
    "dead-letters": _dead_letters,
    "emit": _emit,
}


#: which part of a deployment each command plays, for a missing right's
#: message (L{privileges.explain_denied}; C{None}: the schema's owner)
PARTS = {
    "install": None,
    "grants": privileges.OPERATOR,
    "capture": privileges.OPERATOR,
    "uncapture": privileges.OPERATOR,
    "status": privileges.OPERATOR,
    "dead-letters": privileges.OPERATOR,
    "emit": privileges.WRITER,
}


def run(argv, environ, out, err):
    """
    Run one command.

    @param argv: the arguments after the program name.
    @param environ: the environment (C{HERMES_DSN}).
    @return: the exit status.
    @raise BrokenPipeError: C{out} was closed (L{main} ends quietly).
    """
    secrets = dsn_secrets(*_dsn_candidates(argv, environ), environ=environ)

    def fail(message, status):
        print(f"{PROG}: error: {secrets.scrub(message)}", file=err)
        return status

    try:
        args = build_parser().parse_args(argv)
        dsn = args.dsn or environ.get("HERMES_DSN")
        if not dsn:
            raise UsageError("--dsn or $HERMES_DSN is required")
        conn = connect(dsn)
        try:
            COMMANDS[args.command](conn, args, out, err)
        except psycopg2.errors.InsufficientPrivilege as e:
            return fail(privileges.explain_denied(e, PARTS[args.command], _role(conn), args.schema), 1)
        finally:
            conn.close()
        return 0
    except UsageError as e:
        return fail(first_line(e), 2)
    except _Refused:
        return 1
    except (HermesException, psycopg2.Error) as e:
        return fail(first_line(e), 1)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=err)
        return 130


def _role(conn):
    """
    @return: the connection's C{current_user}, or C{None} when it cannot
        be asked.
    """
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT current_user")
            return cur.fetchone()[0]
    except psycopg2.Error:
        return None


def _dsn_candidates(argv, environ):
    """
    @return: every string that may be a DSN: C{$HERMES_DSN} and what
        follows C{--dsn} on the command line (before it is parsed: a usage
        error may quote any argument).
    """
    found = [environ.get("HERMES_DSN")]
    for i, arg in enumerate(argv):
        if arg == "--dsn" and i + 1 < len(argv):
            found.append(argv[i + 1])
        elif arg.startswith("--dsn="):
            found.append(arg[len("--dsn="):])
    return [dsn for dsn in found if dsn]


def main(argv=None):
    """
    The C{hermes-tx} console script.  Standard output closed early (C{|
    head}) ends it quietly, with exit status 1 (what is done is done).
    """
    try:
        try:
            status = run(sys.argv[1:] if argv is None else argv, os.environ, sys.stdout, sys.stderr)
        except SystemExit as e:  # --help
            status = e.code
        sys.stdout.flush()
    except BrokenPipeError:
        # Python would report the pipe again when it flushes at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        status = 1
    sys.exit(status)
