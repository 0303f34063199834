# -*- test-case-name: tests.test_processors -*-
"""
L{json_line}: a record as one line of strict JSON, the line
L{hermes_tx.processors.JsonLinesProcessor} writes for each event.
"""

import datetime
import decimal
import json
import math
import uuid


def _jsonable(value):
    # json.dumps's default: the types a processor is likely to put in an
    # event that JSON has no form for.
    if isinstance(value, (datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, (decimal.Decimal, uuid.UUID)):
        return str(value)
    if isinstance(value, (set, frozenset)):
        return list(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _finite(value):
    # A copy of value with NaN and infinities made null.
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def json_line(record):
    """
    @param record: what to write (a dict, usually an event's C{as_dict()}).
    @return: C{record} as one line of strict JSON (RFC 8259), newline
        included, non-ASCII characters as they are.  Non-finite floats
        (C{NaN}, C{Infinity}), which JSON has no form for, become C{null}
        as in JavaScript's C{JSON.stringify}; dates and times become ISO
        8601 strings, C{Decimal} and C{UUID} strings, sets lists.
    @raise TypeError: C{record} holds anything else JSON cannot represent.
    @raise ValueError: C{record} refers to itself.
    """
    try:
        text = json.dumps(record, ensure_ascii=False, allow_nan=False, default=_jsonable)
    except ValueError:
        text = json.dumps(
            _finite(record), ensure_ascii=False, allow_nan=False,
            default=lambda value: _finite(_jsonable(value)),
        )
    return text + "\n"
