# -*- test-case-name: tests.test_outbox_cli -*-
"""
What each C{hermes-tx} command does (L{COMMANDS}), given its parsed
arguments and a blocking connection to the primary: the command line
itself (parsing, errors, exit status) is L{hermes_tx.outbox.cli}.  Each
command takes C{(conn, args, out, err)}, writes its result to C{out}, and
raises to fail (L{UsageError}: exit status 2; L{Refused}: 1, having said
why on C{err}; anything else: 1, one line).
"""

import json

from hermes_tx.exceptions import HermesException
from hermes_tx.outbox import admin, privileges
from hermes_tx.exceptions import InvalidConfigurationException
from hermes_tx.outbox import backfill as backfills
from hermes_tx.outbox.capture import capture, captures, uncapture
from hermes_tx.outbox.columns import parse_columns
from hermes_tx.outbox.progress import Progress
from hermes_tx.outbox.render import backfill_table, capture_table, dead_letter_table, refusal, status_table
from hermes_tx.outbox.schema import install, latest_version, owned_by_superuser


#: the command's name, in its messages
PROG = "hermes-tx"


class UsageError(Exception):
    """A mistake in the command line (exit status 2)."""


def requested_grants(args, prefix):
    """
    @return: C{(part, role)} for each role named by the options of each
        L{privileges.Part} (C{--grant-consumer ROLE}: prefix C{"grant_"}).
    """
    return [(part, role) for part in privileges.PARTS.values()
            for role in getattr(args, prefix + part.name)]


def install_(conn, args, out, err):
    """
    C{install}: create or upgrade the schema, grant roles their parts; a
    note when a superuser owns the functions.
    """
    granted = requested_grants(args, "grant_")
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


def grants(conn, args, out, err):
    """
    C{grants}: print the GRANT statements of each role named; run nothing.
    """
    wanted = requested_grants(args, "")
    if not wanted:
        raise UsageError("name at least one role: --writer, --consumer or --operator ROLE")
    for part, role in wanted:
        print(f"-- {role}: to {part.doing}", file=out)
        for statement in privileges.grants(part, role, args.schema):
            print(statement.as_string(conn) + ";", file=out)


def capture_(conn, args, out, err):
    """
    C{capture}: attach the capture trigger (replacing the selection of
    columns an earlier C{capture} of the table into the topic made); say
    what it sends.
    """
    try:
        columns = None if args.columns is None else parse_columns(args.columns, "--columns")
        excluded = None if args.exclude_columns is None else parse_columns(args.exclude_columns,
                                                                           "--exclude-columns")
    except InvalidConfigurationException as e:
        raise UsageError(str(e)) from None
    table = capture(conn, args.table, args.topic, args.schema, columns=columns, excluded=excluded)
    with conn.cursor() as cur:
        [found] = [c for c in captures(cur, args.schema) if c.oid == table.oid and c.topic == args.topic]
    print(f"capturing {table.display} into topic {args.topic!r} (key: {', '.join(table.key)}),"
          f" sending {found.sends()}", file=out)


def captures_(conn, args, out, err):
    """
    C{captures}: the captured tables, their topics, keys and what each
    sends.
    """
    with conn.cursor() as cur:
        admin.require_installed(cur, args.schema)
        found = captures(cur, args.schema)
    if args.json:
        print(json.dumps([
            {"table": c.table, "topic": c.topic, "key": list(c.key),
             "columns": None if c.columns is None else list(c.columns),
             "excluded": None if c.excluded is None else list(c.excluded)}
            for c in found
        ]), file=out)
    else:
        print(capture_table(found), file=out)


def uncapture_(conn, args, out, err):
    """
    C{uncapture}: remove capture triggers.
    """
    dropped = uncapture(conn, args.table, args.topic, args.schema)
    what = f"into topic {args.topic!r}" if args.topic else "into any topic"
    if dropped:
        print(f"stopped capturing {args.table} {what} ({_count(dropped, 'trigger')} dropped)", file=out)
    else:
        print(f"{args.table} was not captured {what}", file=out)


def backfill(conn, args, out, err):
    """
    C{backfill}: one READ change per existing row of a table, resumable; a
    progress bar on a terminal, a line every ten seconds otherwise (on
    standard error); Ctrl-C stops it (L{Interrupted}), its progress kept.
    """
    with conn.cursor() as cur:
        admin.require_installed(cur, args.schema)
    progress = Progress(err, _isatty(err))
    try:
        plan, done, this_run = backfills.backfill(
            conn, args.table, args.topic, args.schema, chunk=args.chunk, max_rate=args.max_rate,
            restart=args.restart, progress=progress)
    except KeyboardInterrupt:
        progress.stop()
        if progress.done is None:
            raise Interrupted("interrupted") from None
        # (what was committed: Ctrl-C may come between a chunk's commit and
        # its progress.update)
        done = backfills.rows_done(conn, args.schema, progress.table, progress.topic)
        raise Interrupted(f"interrupted: {progress.done if done is None else done:,} rows of {progress.table}"
                          " done and kept; run the same command again to go on") from None
    print(f"backfilled {plan.table.display} into topic {plan.topic!r}:"
          f" {this_run:,} changes by this run, {done:,} in all", file=out)


def _isatty(stream):
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


class Interrupted(Exception):
    """Ctrl-C: the message is said on one line, exit status 130."""


def status(conn, args, out, err):
    """
    C{status}: pending, in flight, lag and dead letters per topic (with
    C{--json}: a list of objects, one per topic); then, in text, the
    backfills recorded, running, stopped or finished.
    """
    with conn.cursor() as cur:
        admin.require_installed(cur, args.schema)
        rows = admin.status(cur, args.schema)
        running = backfills.status(cur, args.schema)
    if args.json:
        print(json.dumps(rows), file=out)
    else:
        print(status_table(rows), file=out)
        if running:
            print("\n" + backfill_table(running), file=out)


def dead_letters(conn, args, out, err):
    """
    C{dead-letters}: list, retry or purge dead letters.
    """
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


def _retry(cur, args, out, err):
    """
    Retry dead letters (L{admin.retry_dead_letters}, busy ones again a few
    times); one line on standard error per dead letter not retried.
    """
    results = admin.retry_dead_letters(cur, args.schema, args.retry, args.topic, args.force,
                                       busy_tries=BUSY_TRIES)
    retried = [i for i, outcome, _ in results if outcome == admin.RETRIED]
    print(f"retried {_count(retried, 'dead letter')}", file=out)
    refused = [r for r in results if r[1] != admin.RETRIED]
    for id_, outcome, newer in refused:
        print(f"{PROG}: {refusal(id_, outcome, newer)}", file=err)
    if refused:
        raise Refused()


#: how many times C{--retry} tries a dead letter whose key is busy
BUSY_TRIES = 6


class Refused(Exception):
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


def emit(conn, args, out, err):
    """
    C{emit}: write one change in its own transaction; print its id.
    """
    try:
        json.loads(args.payload)
    except ValueError as e:
        raise UsageError(f"--payload is not JSON: {e}") from None
    with conn.cursor() as cur:
        admin.require_installed(cur, args.schema)
        print(admin.emit(cur, args.topic, args.key, args.payload, args.schema), file=out)


COMMANDS = {
    "install": install_,
    "grants": grants,
    "capture": capture_,
    "uncapture": uncapture_,
    "captures": captures_,
    "backfill": backfill,
    "status": status,
    "dead-letters": dead_letters,
    "emit": emit,
}
