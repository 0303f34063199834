# -*- test-case-name: tests.test_outbox_cli -*-
"""
C{hermes-tx}: install the outbox, capture tables, look at it, handle dead
letters (what each command does: L{hermes_tx.outbox.commands})::

    hermes-tx install      [--dsn DSN] [--schema NAME] [--owner ROLE]
                           [--grant-writer ROLE] [--grant-consumer ROLE] [--grant-operator ROLE]
    hermes-tx grants       [--writer ROLE] [--consumer ROLE] [--operator ROLE]
    hermes-tx capture      --table SCHEMA.TABLE --topic NAME [--columns A,B | --exclude-columns X,Y]
    hermes-tx uncapture    --table SCHEMA.TABLE [--topic NAME]
    hermes-tx captures     [--json]
    hermes-tx backfill     --table SCHEMA.TABLE [--topic NAME] [--chunk N] [--max-rate ROWS_PER_S] [--restart]
    hermes-tx status       [--json]
    hermes-tx dead-letters [--topic T] [--limit N] [--json]
                           [--retry ID ... | --retry-all [--force] | --purge ID ... | --purge-all]
    hermes-tx emit         --topic T --key K --payload JSON

The DSN comes from C{--dsn} or C{$HERMES_DSN}; with several hosts, the
primary is used (L{hermes_tx.outbox.db.connect}).  A mistake in the
command line is one line on standard error and exit status 2; a failure
(cannot connect, no such table, a standby, a missing right) one line and
exit status 1; Ctrl-C one line and exit status 130; never a traceback, never a password (scrubbed by
L{hermes_tx.secrets}), not even when standard output is closed early
(C{hermes-tx dead-letters | head -1}).
"""

import argparse
import os
import sys

import psycopg2
import psycopg2.errors

from hermes_tx.exceptions import HermesException
from hermes_tx.outbox import privileges
from hermes_tx.outbox.commands import COMMANDS, PROG, Interrupted, Refused, UsageError
from hermes_tx.outbox.backfill import DEFAULT_CHUNK
from hermes_tx.outbox.db import connect, first_line
from hermes_tx.outbox.names import DEFAULT_SCHEMA
from hermes_tx.postgres.dsn import dsn_secrets


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


def _rate(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0 or value == float("inf"):
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
    chosen = cmd.add_mutually_exclusive_group()
    chosen.add_argument("--columns", metavar="A,B",
                        help="send only these columns (the primary key's always leave too); "
                        "names as in SQL: unquoted ones fold to lower case, '\"Odd, Name\"' keeps one exactly")
    chosen.add_argument("--exclude-columns", metavar="X,Y",
                        help="send every column but these (not a key column)")

    cmd = commands.add_parser("uncapture", parents=[common], help="stop capturing a table's changes")
    cmd.add_argument("--table", required=True)
    cmd.add_argument("--topic", help="only this topic (default: every topic)")

    cmd = commands.add_parser("captures", parents=[common],
                              help="the captured tables: topic, key and the columns each sends")
    cmd.add_argument("--json", action="store_true", help="print JSON")

    cmd = commands.add_parser("backfill", parents=[common],
                              help="emit a READ change per existing row of a table (resumable)")
    cmd.add_argument("--table", required=True, help="the table (as for capture)")
    cmd.add_argument("--topic", help="the topic (default: the one capturing the table)")
    cmd.add_argument("--chunk", type=_positive, default=DEFAULT_CHUNK,
                     help="rows per transaction (default: %(default)s)")
    cmd.add_argument("--max-rate", type=_rate, metavar="ROWS_PER_S", help="at most this many rows per second")
    cmd.add_argument("--restart", action="store_true",
                     help="start from the first key, forgetting an unfinished backfill's progress")

    cmd = commands.add_parser("status", parents=[common],
                              help="pending, in flight, lag and dead letters per topic; backfills")
    cmd.add_argument("--json", action="store_true", help="print JSON")

    cmd = commands.add_parser("dead-letters", parents=[common], help="list, retry or purge dead letters")
    cmd.add_argument("--topic", help="only this topic")
    cmd.add_argument("--limit", type=_positive, default=100, help="list at most this many (default: %(default)s)")
    cmd.add_argument("--json", action="store_true", help="print JSON")
    action = cmd.add_mutually_exclusive_group()
    action.add_argument("--retry", nargs="+", type=_positive, metavar="ID", help="move these back to the outbox")
    action.add_argument("--retry-all", action="store_true", help="move all (of --topic) back to the outbox")
    action.add_argument("--purge", nargs="+", type=_positive, metavar="ID", help="delete these for good")
    action.add_argument("--purge-all", action="store_true", help="delete all (of --topic) for good")
    cmd.add_argument("--force", action="store_true",
                     help="retry dead letters superseded by a newer change of their key too")

    cmd = commands.add_parser("emit", parents=[common], help="emit one change (its own transaction)")
    cmd.add_argument("--topic", required=True)
    cmd.add_argument("--key", required=True)
    cmd.add_argument("--payload", required=True, help="JSON")
    return parser


#: which part of a deployment each command plays, for a missing right's
#: message (L{privileges.explain_denied}; C{None}: the schema's owner)
PARTS = {
    "install": None,
    "grants": privileges.OPERATOR,
    "capture": privileges.OPERATOR,
    "uncapture": privileges.OPERATOR,
    "captures": privileges.OPERATOR,
    "backfill": privileges.OPERATOR,
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
            role = privileges.current_role(conn)
            return fail(privileges.explain_denied(e, PARTS[args.command], role, args.schema), 1)
        finally:
            conn.close()
        return 0
    except UsageError as e:
        return fail(first_line(e), 2)
    except Refused:
        return 1
    except Interrupted as e:
        print(f"{PROG}: {secrets.scrub(str(e))}", file=err)
        return 130
    except (HermesException, psycopg2.Error) as e:
        return fail(first_line(e), 1)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=err)
        return 130


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
