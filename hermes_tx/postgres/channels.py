# -*- test-case-name: tests.test_listeners -*-
"""
Channel names: what PostgreSQL accepts, and LISTEN statements that keep
them exact.

Channel names are identifiers.  Unquoted, PostgreSQL folds them to lower
case and refuses hyphens and quotes; quoted, they are exact.
C{pg_notify('Any "Name"', ...)} takes the name verbatim, so hermes_tx always
quotes.
"""

from psycopg2 import sql

from hermes_tx.exceptions import InvalidConfigurationException

#: PostgreSQL truncates identifiers longer than this many bytes (NAMEDATALEN-1).
MAX_CHANNEL_BYTES = 63


def validate_channels(notif_channel):
    """
    @param notif_channel: one channel name or a list of them.
    @return: the names as a list, duplicates removed, order kept.
    @raise InvalidConfigurationException: a name is not a non-empty string
        of at most 63 bytes (UTF-8) without NUL.
    """
    names = [notif_channel] if isinstance(notif_channel, str) else list(notif_channel or ())
    if not names:
        raise InvalidConfigurationException("at least one channel is required")
    for name in names:
        if not isinstance(name, str) or not name:
            raise InvalidConfigurationException(f"channel name must be a non-empty string: {name!r}")
        if "\x00" in name:
            raise InvalidConfigurationException(f"channel name contains NUL: {name!r}")
        size = len(name.encode("utf-8"))
        if size > MAX_CHANNEL_BYTES:
            raise InvalidConfigurationException(
                f"channel name is {size} bytes, PostgreSQL allows {MAX_CHANNEL_BYTES}: {name!r}"
            )
    return list(dict.fromkeys(names))


def listen_statement(channels):
    """
    @return: one SQL statement LISTENing on every channel, each quoted as an
        identifier: C{MyChan}, C{my-chan} and C{a "q"} are exact,
        case-sensitive names, and nothing in a name can inject SQL.
    """
    return sql.SQL("; ").join(sql.SQL("LISTEN {}").format(sql.Identifier(c)) for c in channels)
