# -*- test-case-name: tests.test_outbox_columns -*-
"""
Column names as users write them on the command line (C{hermes-tx capture
--columns a,b} / C{--exclude-columns x,y}) and as they are shown back.

A list is names separated by commas, each written as in SQL: unquoted
names fold to lower case (C{Email} is C{email}), double quotes keep a name
exactly, a doubled quote inside being one quote (C{"Say ""hi"", Bob"} is
C{Say "hi", Bob}).  Spaces around names are ignored.  The parse is done
here, not by the server: a name never reaches SQL text, only literals and
quoted identifiers (C{psycopg2.sql}).
"""

import re

from hermes_tx.exceptions import InvalidConfigurationException

#: what an unquoted name may be (PostgreSQL's identifier syntax: letters,
#: digits, C{_} and C{$}, not starting with a digit or C{$}; any
#: character past ASCII counts as a letter)
_UNQUOTED = re.compile(r"[A-Za-z_\u0080-\U0010ffff][A-Za-z0-9_$\u0080-\U0010ffff]*")
#: a name shown without quotes (PostgreSQL's C{quote_ident}, keywords aside:
#: they read back the same through L{parse_columns})
_PLAIN = re.compile(r"[a-z_][a-z0-9_$]*")

#: PostgreSQL truncates identifiers beyond this many bytes
MAX_COLUMN_BYTES = 63


def _fold(name):
    """
    @return: C{name} folded as PostgreSQL folds unquoted identifiers in a
        UTF-8 database: ASCII letters only.
    """
    return "".join(chr(ord(c) + 32) if "A" <= c <= "Z" else c for c in name)


def parse_columns(text, option="--columns"):
    """
    @param text: a comma-separated list of column names (see the module
        docstring).
    @param option: the option it came from, for messages.
    @return: the names, exact, in the order given, each once.
    @raise InvalidConfigurationException: an empty list or name, an
        unclosed quote, text after a closing quote, an unquoted name that
        needs quotes, a name over 63 bytes or holding NUL (one line).
    """
    names = []
    i, n = 0, len(text)
    while True:
        while i < n and text[i].isspace():
            i += 1
        if i < n and text[i] == '"':
            j, parts = i + 1, []
            while True:
                end = text.find('"', j)
                if end < 0:
                    raise InvalidConfigurationException(f"{option}: unclosed quote in {text!r}")
                parts.append(text[j:end])
                if text.startswith('"', end + 1):
                    parts.append('"')
                    j = end + 2
                    continue
                i = end + 1
                break
            name = "".join(parts)
            if not name:
                raise InvalidConfigurationException(f"{option}: an empty name (\"\") in {text!r}")
        else:
            end = text.find(",", i)
            end = n if end < 0 else end
            written = text[i:end].strip()
            if not written:
                raise InvalidConfigurationException(
                    f"{option}: an empty name in {text!r} (separate names with single commas)"
                )
            if not _UNQUOTED.fullmatch(written):
                raise InvalidConfigurationException(
                    f"{option}: {written!r} needs double quotes (a name with spaces, quotes,"
                    f" dots or other signs: '\"{written.replace(chr(34), chr(34) * 2)}\"')"
                )
            name = _fold(written)
            i = end
        if "\x00" in name:
            raise InvalidConfigurationException(f"{option}: a name must not contain NUL")
        if len(name.encode("utf-8")) > MAX_COLUMN_BYTES:
            raise InvalidConfigurationException(
                f"{option}: {show(name)} is longer than {MAX_COLUMN_BYTES} bytes: no column has that name"
            )
        if name not in names:
            names.append(name)
        while i < n and text[i].isspace():
            i += 1
        if i == n:
            return names
        if text[i] != ",":
            raise InvalidConfigurationException(
                f"{option}: unexpected {text[i:i + 20]!r} after {show(name)} (separate names with commas)"
            )
        i += 1


def show(name):
    """
    @return: a column's name as it is written back to L{parse_columns} and
        in SQL: bare when it is a plain lower-case name, double-quoted
        otherwise.
    """
    if _PLAIN.fullmatch(name):
        return name
    return '"' + name.replace('"', '""') + '"'


def show_list(names):
    """
    @return: C{names} as a list L{parse_columns} reads back (C{a, "B c"}).
    """
    return ", ".join(show(n) for n in names)
