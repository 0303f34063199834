"""
An in-process stand-in for Elasticsearch's C{_bulk} API (no Elasticsearch
server can be installed on this machine).  It answers as the bulk API
documents: NDJSON in, C{{"took", "errors", "items"}} out, one item per
action in order with its own C{status}; external versioning (an index or
delete whose version is not above the stored one, tombstones included, is
a 409 C{version_conflict_engine_exception}); a delete of a missing
document is a 404 (and leaves a tombstone with its version); a document
with a C{"__bad__"} field is a 400 C{mapper_parsing_exception}; an
C{_id} over 512 bytes makes the whole request a 400
C{action_request_validation_exception}; a body over C{max_body} bytes is a
whole-request 413; C{item_429} of the actions (at random) get 429
C{es_rejected_execution_exception} and are not applied, and so do
C{first_sight_429} of them (chosen by a hash of the id and version) the
first time they are seen; C{blocked} makes every index and delete a 403
C{cluster_block_exception} (a read-only index); C{script(n)} may fail whole
requests (an HTTP status, a dropped connection before or after applying).

C{GET /_fake/INDEX} answers the index's state: the live documents, the
number of applied actions and of items answered 429.
"""

import hashlib
import json
import random
import time

from twisted.web import resource, server

DROP = "drop"
DROP_AFTER = "drop-after"


class FakeBulk(resource.Resource):
    """
    @ivar docs: C{{(index, id): {"version", "source", "deleted"}}}.
    @ivar applied: every applied action as C{(op, index, id, version)}, in
        order.
    @ivar applied_at: for every applied index action, C{(id, source["n"],
        time.time())}: when a document's numbered version reached the index
        (benchmarks time commit to index with it).
    @ivar bodies: the raw request bodies, with their headers.
    """

    isLeaf = True

    def __init__(self, script=None, max_body=None, item_429=0.0, seed=0, first_sight_429=0.0):
        resource.Resource.__init__(self)
        self.script = script or (lambda n: None)
        self.max_body = max_body
        self.item_429 = item_429
        self.first_sight_429 = first_sight_429
        self.seen = set()
        self.answered_429 = 0
        self.blocked = False
        self.rng = random.Random(seed)
        self.docs = {}
        self.applied = []
        self.bodies = []
        self.auto_id = 0
        self.applied_at = []

    def render_POST(self, request):
        body = request.content.read()
        headers = {k.decode().lower(): v[0].decode()
                   for k, v in request.requestHeaders.getAllRawHeaders()}
        self.bodies.append((headers, body))
        if not request.path.endswith(b"/_bulk"):
            return self.answer(request, 404, {"error": "no handler"})
        action = self.script(len(self.bodies) - 1)
        if action == DROP:
            request.channel.transport.abortConnection()
            return server.NOT_DONE_YET
        if isinstance(action, tuple):
            status, answer_headers = action
            for k, v in answer_headers.items():
                request.setHeader(k, v)
            return self.answer(request, status, {"error": {"type": "scripted"}, "status": status})
        if self.max_body is not None and len(body) > self.max_body:
            return self.answer(request, 413, {"error": "request entity too large"})
        text = body.decode("utf-8")
        # Only a line over 512 bytes can hold an _id that long (cheap).
        invalid = self.validate(text) if len(max(text.split("\n"), key=len)) > 512 else None
        if invalid:
            error = {"type": "action_request_validation_exception", "reason": invalid}
            return self.answer(request, 400, {"error": dict(error, root_cause=[error]),
                                              "status": 400})
        items = self.bulk(text)
        if action == DROP_AFTER:
            request.channel.transport.abortConnection()
            return server.NOT_DONE_YET
        errors = any(not 200 <= next(iter(i.values()))["status"] < 300 for i in items)
        return self.answer(request, 200, {"took": 1, "errors": errors, "items": items})

    def render_GET(self, request):
        parts = request.path.decode().strip("/").split("/")
        if len(parts) != 2 or parts[0] != "_fake":
            return self.answer(request, 404, {"error": "no handler"})
        answer = {"live": self.live(parts[1]), "applied": len(self.applied),
                  "answered_429": self.answered_429}
        if b"times" in request.args:
            answer["applied_at"] = self.applied_at
        return self.answer(request, 200, answer)

    def validate(self, text):
        """
        @return: why a bulk body is refused as a whole (an C{_id} over 512
            bytes), or C{None}.
        """
        lines = text.split("\n")[:-1]
        while lines:
            (op, params), = json.loads(lines.pop(0)).items()
            if op == "index":
                lines.pop(0)
            doc_id = params.get("_id") or ""
            if len(doc_id.encode()) > 512:
                return (f"Validation Failed: 1: id [{doc_id[:20]}...] is too long, must be no"
                        f" longer than 512 bytes but was: {len(doc_id.encode())};")
        return None

    def answer(self, request, status, doc):
        request.setResponseCode(status)
        request.setHeader("Content-Type", "application/json")
        return json.dumps(doc).encode()

    def bulk(self, text):
        lines = text.split("\n")
        if lines[-1] != "":
            raise ValueError("bulk body must end with a newline")
        lines.pop()
        items = []
        while lines:
            meta = json.loads(lines.pop(0))
            (op, params), = meta.items()
            source = json.loads(lines.pop(0)) if op == "index" else None
            items.append({op: self.apply(op, params, source)})
        return items

    def apply(self, op, params, source):
        index = params["_index"]
        doc_id = params.get("_id")
        if doc_id is None:
            self.auto_id += 1
            doc_id = f"auto-{self.auto_id}"
        result = {"_index": index, "_id": doc_id}
        if (self.item_429 and self.rng.random() < self.item_429) or \
                self.first_sight(index, doc_id, params.get("version")):
            self.answered_429 += 1
            return dict(result, status=429, error={
                "type": "es_rejected_execution_exception", "reason": "queue full"})
        if self.blocked:
            return dict(result, status=403, error={
                "type": "cluster_block_exception",
                "reason": f"index [{index}] blocked by: [FORBIDDEN/8/index write (api)];"})
        version = params.get("version")
        external = params.get("version_type") == "external"
        current = self.docs.get((index, doc_id))
        if external and current is not None and current["version"] >= version:
            return dict(result, status=409, error={
                "type": "version_conflict_engine_exception",
                "reason": f"[{doc_id}]: version conflict, current version "
                          f"[{current['version']}] is higher or equal to the one provided "
                          f"[{version}]"})
        if op == "index" and "__bad__" in source:
            return dict(result, status=400, error={
                "type": "mapper_parsing_exception", "reason": "failed to parse field [__bad__]"})
        new_version = version if external else (current["version"] + 1 if current else 1)
        if op == "delete":
            missing = current is None or current["deleted"]
            self.docs[(index, doc_id)] = {"version": new_version, "source": None,
                                          "deleted": True}
            self.applied.append((op, index, doc_id, new_version))
            return dict(result, status=404 if missing else 200,
                        result="not_found" if missing else "deleted", _version=new_version)
        created = current is None or current["deleted"]
        self.docs[(index, doc_id)] = {"version": new_version, "source": source, "deleted": False}
        self.applied.append((op, index, doc_id, new_version))
        if isinstance(source, dict):
            self.applied_at.append((doc_id, source.get("n"), time.time()))
        return dict(result, status=201 if created else 200,
                    result="created" if created else "updated", _version=new_version)

    def first_sight(self, index, doc_id, version):
        """
        @return: whether this action is one of the C{first_sight_429} chosen
            (by a hash of its id and version) and seen for the first time.
        """
        if not self.first_sight_429:
            return False
        action = f"{index}/{doc_id}/{version}"
        digest = hashlib.sha256(action.encode()).digest()
        if int.from_bytes(digest[:4], "big") >= self.first_sight_429 * 2 ** 32:
            return False
        if action in self.seen:
            return False
        self.seen.add(action)
        return True

    def live(self, index):
        """@return: C{{id: (version, source)}} of the live documents."""
        return {i: (d["version"], d["source"]) for (ix, i), d in self.docs.items()
                if ix == index and not d["deleted"]}
