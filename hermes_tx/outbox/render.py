# -*- test-case-name: tests.test_outbox_cli -*-
"""
Plain text for C{hermes-tx status}, C{captures} and C{dead-letters}: tables,
and why a dead letter was not retried.  Every cell is one line of
printable text: control characters in keys and error messages are
escaped, long cells cut.
"""

from hermes_tx.outbox import admin

#: cells longer than this are cut, with an ellipsis
MAX_CELL = 60


def cell(value, width=MAX_CELL):
    """
    @return: C{value} as one printable line of at most C{width} characters
        (C{"-"} for C{None}).
    """
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.1f}"
    text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(value))
    return text if len(text) <= width else text[: width - 1] + "…"


def table(headers, rows, whole=()):
    """
    @param whole: the indexes of the columns whose cells are not cut.
    @return: C{rows} (sequences of cells) under C{headers}, columns padded.
    """
    lines = [list(headers)] + [[cell(v, 10**9 if i in whole else MAX_CELL) for i, v in enumerate(row)]
                               for row in rows]
    widths = [max(len(line[i]) for line in lines) for i in range(len(headers))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in lines)


def status_table(rows):
    """
    @param rows: L{hermes_tx.outbox.admin.status} dicts.
    """
    if not rows:
        return "no changes and no dead letters"
    return table(
        ("TOPIC", "PENDING", "IN FLIGHT", "OLDEST (s)", "DEAD LETTERS"),
        [(r["topic"], r["pending"], r["in_flight"], r["oldest_age"], r["dead_letters"]) for r in rows],
    )


def capture_table(found):
    """
    @param found: L{hermes_tx.outbox.capture.Capture}s.
    @return: one line per capture: table, topic, key, what it sends (not
        cut: a selection is shown whole).
    """
    if not found:
        return "no table is captured"
    return table(("TABLE", "TOPIC", "KEY", "SENDS"),
                 [(c.table, c.topic, ", ".join(c.key), c.sends()) for c in found], whole=(3,))


def backfill_table(rows):
    """
    @param rows: L{hermes_tx.outbox.backfill.status} dicts.
    @return: the backfills, one line each: state (running, stopped: run
        it again to go on, finished), rows done and the planner's
        estimate, when it was last updated.
    """
    return table(
        ("BACKFILL", "TOPIC", "STATE", "ROWS", "OF ABOUT", "UPDATED"),
        [(r["table"], r["topic"], r["state"], r["rows_done"], r["rows_estimate"],
          r["updated_at"].isoformat(timespec="seconds")) for r in rows],
    )


def dead_letter_table(rows, total):
    """
    @param rows: L{hermes_tx.outbox.admin.dead_letters} dicts.
    @param total: how many there are in all.
    @return: the table; C{SUPERSEDED BY} is the newer change of the key
        delivered since (a retry of it is refused without C{--force}).
    """
    if not rows:
        return "no dead letters"
    text = table(
        ("ID", "TOPIC", "KEY", "ATTEMPTS", "FAILED AT", "SUPERSEDED BY", "LAST ERROR"),
        [
            (r["id"], r["topic"], r["key"], r["attempts"],
             r["failed_at"].isoformat(timespec="seconds"), r["superseded_by"], r["last_error"])
            for r in rows
        ],
    )
    if total > len(rows):
        text += f"\n({total - len(rows)} more; --limit shows more)"
    return text


_REFUSALS = {
    admin.SUPERSEDED: "change {newer} of its key was delivered after it failed (it would overwrite "
                      "newer data); --force retries it anyway, --purge {id} drops it",
    admin.IN_FLIGHT: "change {newer} of its key is being delivered; retry it once that is done",
    admin.BUSY: "its key was being written or claimed the whole time; try again",
    admin.MISSING: "there is no dead letter with that id",
}


def refusal(id_, outcome, newer):
    """
    @param id_: a dead letter's id.
    @param outcome: what L{hermes_tx.outbox.admin.retry_dead_letters} said
        of it (not L{hermes_tx.outbox.admin.RETRIED}).
    @param newer: the newer change it named, or C{None}.
    @return: one line saying why it was not retried and what to do.
    """
    return f"dead letter {id_} not retried: {_REFUSALS[outcome].format(newer=newer, id=id_)}"
