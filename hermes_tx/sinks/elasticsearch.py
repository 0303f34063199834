# -*- test-case-name: tests.test_sink_elasticsearch -*-
"""
L{ElasticsearchSink}: keep an Elasticsearch or OpenSearch index in sync
through the C{_bulk} API, one request per batch.
"""

import json

from hermes_tx.outcomes import BatchOutcome, Retry
from hermes_tx.sinks.base import Unsendable
from hermes_tx.sinks.httpsink import HttpSink
from hermes_tx.sinks.records import encode
from hermes_tx.sinks.statuses import snippet
from hermes_tx.sinks.urls import SinkURL, SinkURLError, Secrets, read_secret

#: query parameters of the sink URL passed on to C{_bulk}
BULK_PARAMS = ("refresh", "pipeline", "routing", "timeout")
#: errors of a bulk item answered 400 that are the index's, not the
#: document's: the item is retried, not rejected
INDEX_ERRORS = frozenset(["index_closed_exception", "invalid_index_name_exception",
                          "index_not_found_exception", "cluster_block_exception"])


def action(event, index):
    """
    The bulk lines for one event.

    A change whose data has an C{op} (as C{hermes-tx capture} writes it)
    indexes C{data["new"]} for C{INSERT}, C{UPDATE} and C{READ} (a
    backfilled row) and deletes for
    C{DELETE}; a change without C{op} indexes its whole data.  Changes use
    C{_id} = the key and C{version} = the outbox id with
    C{version_type=external}, so a stale retry never overwrites a newer
    document.  A notification's decoded data is indexed with an id the
    server picks.

    @return: C{(op, lines)}: C{"index"} or C{"delete"}, and its one or two
        NDJSON lines (UTF-8 bytes).
    @raise Unsendable: the event has no JSON object to index or an unknown op.
    """
    if event.kind == "change":
        meta = {"_index": index, "_id": event.key, "version": event.id,
                "version_type": "external"}
        data = event.data
        op = data.get("op") if isinstance(data, dict) else None
        if op == "DELETE":
            return "delete", _lines({"delete": meta})
        if op is None:
            doc = data
        elif op in ("INSERT", "UPDATE", "READ"):
            doc = data.get("new")
        else:
            raise Unsendable(f"unknown op {op!r}")
    else:
        meta = {"_index": index}
        doc = getattr(event, "data", None)
    if not isinstance(doc, dict):
        raise Unsendable("no JSON object to index")
    return "index", _lines({"index": meta}, doc)


def _lines(*values):
    """
    @return: C{values} as NDJSON, UTF-8.
    @raise Unsendable: not strict JSON, or not encodable.
    """
    try:
        return "".join(encode(v) + "\n" for v in values).encode("utf-8")
    except ValueError as e:  # UnicodeEncodeError too
        raise Unsendable(f"not strict JSON: {e}") from None


def item_outcome(outcome, event, op, item):
    """
    Record in C{outcome} what one bulk item says about C{event}: 2xx, a 404
    on a delete and 409 (a newer version is already there) are done; a 400
    (a mapping error: the document's fault) is rejected, unless its error
    is the index's (L{INDEX_ERRORS}); any other status (429, 5xx, 403 of a
    read-only index, 404 of a missing index) is retried.
    """
    result = item.get(op) if isinstance(item, dict) else None
    status = result.get("status") if isinstance(result, dict) else None
    if not isinstance(status, int):
        outcome.retry_event(event, f"bulk item without a status: {str(item)[:200]}")
        return
    if 200 <= status < 300 or status == 409 or (status == 404 and op == "delete"):
        return
    error = result.get("error")
    kind = error.get("type") if isinstance(error, dict) else None
    if isinstance(error, dict):
        why = f"{kind or ''}: {error.get('reason', '')}"
    else:
        why = str(error or "")
    reason = f"{op} {status}" + (f": {why[:300]}" if why else "")
    if status == 400 and kind not in INDEX_ERRORS:
        outcome.reject_event(event, reason)
    else:
        outcome.retry_event(event, reason)


class ElasticsearchSink(HttpSink):
    """
    Sends each batch as one C{_bulk} request (NDJSON,
    C{application/x-ndjson}) to C{elasticsearch+http://host:9200/INDEX}
    (or C{+https}; C{opensearch+} works the same).

    Per event: see L{action} for what is sent and L{item_outcome} for the
    per-item answers.  For the whole request: as the webhook
    (L{hermes_tx.sinks.statuses}): 400, 413 and 422 split the batch in
    halves (a single event refused is rejected); every other status
    retries it.  Credentials come from the URL or from a
    secret file (the password; the user name from the URL) and are sent as
    HTTP basic authentication.
    """

    kind = "elasticsearch"
    default_max_batch = 500

    def __init__(self, url, secret_file=None, password=None, **http_kwargs):
        """
        @param url: C{elasticsearch+http(s)://[user[:password]@]host:port/[PREFIX/]INDEX
            [?refresh=...&pipeline=...]}.
        @param secret_file: a file holding the password.
        @param password: the password (instead of the URL's or the file's).
        @param http_kwargs: passed to L{HttpSink} and L{Sink}: C{timeout}
            (seconds for a whole request, default 30), C{max_retry_after},
            C{max_batch}, C{clock}, C{reactor}, ...
        """
        parsed = SinkURL(url, safe_params=BULK_PARAMS)
        family, _, scheme = parsed.scheme.partition("+")
        if family not in ("elasticsearch", "opensearch") or scheme not in ("http", "https"):
            raise SinkURLError(f"sink URL {parsed.redacted}: expected elasticsearch+http(s)://")
        parsed.require_host()
        prefix, _, index = parsed.path.rstrip("/").rpartition("/")
        if not index or index.startswith("_"):
            raise SinkURLError(f"sink URL {parsed.redacted} names no index (.../INDEX)")
        if secret_file is not None:
            password = read_secret(secret_file)
        elif password is None:
            password = parsed.password
        secrets = Secrets()
        secrets.add_basic_auth(parsed.username, password)
        host = parsed.host if ":" not in parsed.host else f"[{parsed.host}]"
        port = f":{parsed.port}" if parsed.port else ""
        query = "&".join(f"{k}={v}" for k, v in parsed.params.items() if k in BULK_PARAMS)
        path = f"/{prefix}/_bulk" if prefix else "/_bulk"
        bulk_url = f"{scheme}://{host}{port}{path}" + (f"?{query}" if query else "")
        HttpSink.__init__(self, parsed.redacted, secrets, bulk_url,
                          {"Content-Type": "application/x-ndjson"}, username=parsed.username,
                          password=password, **http_kwargs)
        self.index = index

    def prepare(self, event):
        return action(event, self.index)

    def body(self, events, prepared):
        return b"".join(prepared[id(e)][1] for e in events), {}

    def answered(self, events, prepared, status, content):
        try:
            reply = json.loads(content)
            items = reply["items"]
            errors = reply.get("errors", True)
        except (ValueError, KeyError, TypeError):
            raise Retry(f"unreadable bulk answer (HTTP {status})" + snippet(content)) \
                from None
        if not isinstance(items, list) or len(items) != len(events):
            raise Retry(f"bulk answer has {len(items) if isinstance(items, list) else 'no'}"
                        f" items for {len(events)} actions")
        if not errors:
            return None
        outcome = BatchOutcome()
        for e, item in zip(events, items):
            item_outcome(outcome, e, prepared[id(e)][0], item)
        return outcome
