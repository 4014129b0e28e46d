"""The Gemini Batch API (Developer API flavour) for the local test server.

``GeminiTestServer`` (gemini_test_server) keeps a ``BatchStore`` and sends it the
batch routes; this module knows the batch resource, its states and its pages,
and nothing of HTTP. Served, under ``/{version}/``:

    POST models/{model}:batchGenerateContent   create; the reply is the batch, PENDING
    GET  batches/{id}                           the batch (each GET may move it on)
    GET  batches?pageSize=N&pageToken=T         a page of batches, newest first
    POST batches/{id}:cancel                    ``{}``; the batch is CANCELLED at once

A batch's requests are inlined (``inputConfig.requests.requests``, each
``{"request", "metadata"}``) or the lines of a JSONL file the server holds
(``inputConfig.fileName``: ``files/<id>``, uploaded through gemini_test_files;
each line ``{"key", "request"}``, blank lines skipped; an unknown file is a 404,
a line that is not such an object a 400).

A batch resource::

    {"name": "batches/<id>",
     "metadata": {"@type": ".../google.ai.generativelanguage.v1main.GenerateContentBatch",
                  "model": "models/<model>", "displayName": ..., "state": "BATCH_STATE_...",
                  "createTime": ..., "updateTime": ..., "batchStats": {"requestCount": "<n>",
                  "pendingRequestCount" until it ends, then "successfulRequestCount", "failedRequestCount"},
                  once final: "endTime": ...,
                              "output": {"inlinedResponses": {"inlinedResponses": [entry, ...]}}
                                  (file input: "output": {"responsesFile": "files/responses<seq>"})},
     once final: "done": true}

An entry is ``{"response": <a generateContent reply>, "metadata": {...}}`` or
``{"error": {"code", "message", "status"}, "metadata": {...}}``; ``metadata`` is the
request's own, unchanged. A file batch's responses file (written when the batch
becomes final, ``ServedBatch.responses_file``) has one JSONL line per entry, in
the same share and order: ``{"key", "response"}`` or ``{"key", "error"}``. Every
request of a batch is answered when the batch is created, by the server's
per-question machinery (its ``script`` and counters), and kept until the batch's
plan lets it out.

A ``BatchPlan`` scripts one batch (the n-th created takes the server's
``batch_plans[n]``, else the default): how many GETs see it PENDING before it
ends (``pending_polls``; when above 0, one more GET sees it RUNNING), its final
state, the share of its requests (the first ones, rounded down) that have an
entry in the output, whether the entries come in reverse order, whether the
create reply is lost or late, and how old the batch claims to be. Only GETs of
the one batch move it on; the create reply and the list show it as it stands.
Cancelling a batch that has already ended changes nothing. A plan may also add entries
the output should not have: the first ``duplicates`` entries listed twice, and
``unknown_keys`` entries for keys no request had (each a billed answer); and
``forgotten`` makes the batch unknown right after its create reply (a GET or a
cancel is a 404 and the list leaves it out), as a batch deleted at Google, or
made under another project's key, is to its job (``forget`` does it later); ``hold``
keeps the batch PENDING for as long as it returns True (a test waits for its own event).

The store also answers with scripted errors: ``faults[call]`` (call ``create``,
``get``, ``list`` or ``cancel``) is a list of steps taken one per call of that
kind, each an HTTP status ("429", with its RetryInfo delay, "503", "404", ...)
or "ok" (served as usual); calls past the list are served as usual.
``empty_pages`` makes the listing start with that many empty pages that still
carry a ``nextPageToken``, as the real service sometimes does. Every call
answered goes into the store's log (``log()``): ``{time, call, batch, state}``,
with the time it was served (seconds since the epoch) and the batch's state
after it (or the HTTP status of a scripted error; for a list, its page token).
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from meddpo.testing.gemini_files import FileStore, rfc3339

BATCH_TYPE = "type.googleapis.com/google.ai.generativelanguage.v1main.GenerateContentBatch"
PENDING, RUNNING = "BATCH_STATE_PENDING", "BATCH_STATE_RUNNING"
FINAL_STATES = ("SUCCEEDED", "FAILED", "EXPIRED", "CANCELLED")

# (inlined request, model) -> (HTTP status, generateContent reply or {"error": ...}); counts the request
Answer = Callable[[dict, str], tuple[int, dict]]
ErrorBody = Callable[..., dict]  # (code, message[, RetryInfo delay in seconds]) -> {"error": ...}


@dataclass
class BatchPlan:
    """How one batch behaves; the default ends SUCCEEDED at its first GET with every result."""

    pending_polls: int = 0  # GETs answered PENDING (then RUNNING once) before the final state
    final: str = "SUCCEEDED"  # SUCCEEDED | FAILED | EXPIRED | CANCELLED (the BATCH_STATE_ suffix)
    answered_fraction: float = 1.0  # share of the batch's keys (first ones in request order) with a result
    reverse: bool = False  # results listed in reverse request order (clients must map by key)
    lose_create_reply: bool = False  # the batch is created, then the connection is closed with no reply
    hang_create_s: float = 0.0  # the batch is created, then the reply waits this long
    age_s: float = 0.0  # createTime is this many seconds in the past
    duplicates: int = 0  # the first this many entries of the output are listed twice
    unknown_keys: int = 0  # this many entries more, for keys no request had (answers all the same)
    forgotten: bool = False  # unknown to the service once its create reply is out (GET, cancel: 404)
    hold: Callable[[], bool] | None = None  # PENDING while this returns True (then as pending_polls says)

    def __post_init__(self) -> None:
        if self.final not in FINAL_STATES:
            raise ValueError(f"BatchPlan.final must be one of {FINAL_STATES}, not {self.final!r}")
        if not 0.0 <= self.answered_fraction <= 1.0:
            raise ValueError(f"BatchPlan.answered_fraction must lie in [0, 1], not {self.answered_fraction}")


@dataclass
class ServedBatch:
    """One created batch as the server holds it (``state`` is the wire value, BATCH_STATE_...)."""

    seq: int
    display_name: str
    model: str
    keys: list[str | None]  # each request's key (metadata key, or the JSONL line's), in request order
    requests: list[dict]  # as sent: inlined (``request``, ``metadata``) or JSONL lines (``key``, ``request``)
    entries: list[dict]  # one output entry per request, in request order
    plan: BatchPlan
    create_time: float
    state: str = PENDING
    gets: int = 0
    update_time: float = 0.0
    end_time: float | None = None
    source_file: str | None = None  # ``files/<id>`` of the JSONL input; None: inlined requests
    responses_file: str | None = None  # ``files/<id>`` of the JSONL output, once final (file input only)

    @property
    def id(self) -> str:
        return f"test-{self.seq:04d}"

    @property
    def name(self) -> str:
        return f"batches/{self.id}"

    @property
    def done(self) -> bool:
        return self.end_time is not None

    extra: list[dict] = field(default_factory=list)  # the plan's entries for unknown keys

    def output(self) -> list[dict]:
        """The entries the output lists: the plan's share, in its order, then its duplicates and
        the entries for unknown keys."""
        answered = math.floor(self.plan.answered_fraction * len(self.entries) + 1e-9)
        entries = self.entries[:answered]
        entries = entries[::-1] if self.plan.reverse else entries
        return entries + entries[: self.plan.duplicates] + self.extra


@dataclass
class BatchStore:
    """The server's batches and counters, guarded by the server's lock."""

    lock: threading.Lock
    answer: Answer
    error: ErrorBody
    plans: list[BatchPlan] = field(default_factory=list)
    list_page_size: int = 50
    created: int = 0
    gets: int = 0
    lists: int = 0
    cancels: int = 0
    files: FileStore | None = None  # where file-based batches read their input and write their output
    faults: dict[str, list[str]] = field(default_factory=dict)  # scripted errors by call (module doc)
    empty_pages: int = 0  # empty pages, each with a nextPageToken, before the listing's first batch
    _batches: dict[str, ServedBatch] = field(default_factory=dict)
    _log: list[dict] = field(default_factory=list)

    def all(self) -> list[ServedBatch]:
        with self.lock:
            return list(self._batches.values())

    def log(self) -> list[dict]:
        """Every call answered, oldest first: ``{time, call, batch, state}``."""
        with self.lock:
            return [dict(event) for event in self._log]

    def forget(self, name: str) -> None:
        """The service no longer knows batch ``name`` (``batches/<id>``): its GETs are 404s from now on."""
        with self.lock:
            self._batches[name.removeprefix("batches/")].plan.forgotten = True

    def serve(
        self, call: str, path: dict, query: dict, body: dict, retry_delay_s: float
    ) -> tuple[int | None, dict | None]:
        """One batch call (``create``, ``get``, ``list``, ``cancel``): its scripted error, else its reply."""
        with self.lock:
            steps = self.faults.get(call) or []
            step = steps.pop(0) if steps else "ok"
            if step != "ok":
                self._log.append({"time": time.time(), "call": call, "batch": path.get("id"), "state": step})
        if step != "ok":
            code = int(step)
            return code, self.error(code, f"injected {code}", retry_delay_s if code == 429 else None)
        if call == "create":
            code, payload, batch = self.create(path["model"], body)
            if batch is not None and batch.plan.lose_create_reply:
                return None, None
            if batch is not None and batch.plan.hang_create_s:
                time.sleep(batch.plan.hang_create_s)
            return code, payload
        if call == "get":
            return self.get(path["id"])
        if call == "cancel":
            return self.cancel(path["id"])
        size = (query.get("pageSize") or [""])[0]
        if size and not size.isdigit():
            return 400, self.error(400, f"invalid pageSize {size!r}")
        return self.list_page(int(size) if size else None, (query.get("pageToken") or [None])[0])

    def stats(self) -> dict[str, int]:
        with self.lock:
            counts = {
                "created": self.created,
                "gets": self.gets,
                "lists": self.lists,
                "cancels": self.cancels,
            }
        files = self.files
        return counts | {
            "uploads": files.uploads if files else 0,
            "downloads": files.downloads if files else 0,
        }

    # -- the routes: each returns (HTTP status, JSON body) -------------------------------------
    def create(self, model: str, body: dict) -> tuple[int, dict, ServedBatch | None]:
        """Answer every request (inlined, or a line of the file named) now, keep the batch, reply with it."""
        batch_body = body.get("batch") or {}
        source = (batch_body.get("inputConfig") or {}).get("fileName") or None
        requests = self._requests(batch_body)
        if isinstance(requests, tuple):  # an error reply
            return *requests, None
        entries = [self._entry(item, model, source is not None) for item in requests]
        with self.lock:
            plan = self.plans[self.created] if self.created < len(self.plans) else BatchPlan()
        like = requests[0] if requests else {}
        extra = [
            self._entry(_unknown(n, like, bool(source)), model, bool(source))
            for n in range(plan.unknown_keys)
        ]
        now = time.time()
        with self.lock:
            self.created += 1
            batch = ServedBatch(
                seq=self.created,
                display_name=batch_body.get("displayName", ""),
                model=model,
                keys=[
                    item.get("key") if source else (item.get("metadata") or {}).get("key")
                    for item in requests
                ],
                requests=requests,
                entries=entries,
                plan=plan,
                create_time=now - plan.age_s,
                update_time=now - plan.age_s,
                source_file=source,
                extra=extra,
            )
            self._batches[batch.id] = batch
            self._log.append({"time": now, "call": "create", "batch": batch.id, "state": batch.state})
            return 200, _resource(batch), batch

    def get(self, batch_id: str) -> tuple[int, dict]:
        with self.lock:
            self.gets += 1
            batch = self._known(batch_id)
            state = batch.state if batch is not None else "404"
            if batch is not None:
                _advance(batch)
                self._publish(batch)
                state = batch.state
            self._log.append({"time": time.time(), "call": "get", "batch": batch_id, "state": state})
            if batch is None:
                return 404, self._not_found(batch_id)
            return 200, _resource(batch)

    def cancel(self, batch_id: str) -> tuple[int, dict]:
        with self.lock:
            self.cancels += 1
            batch = self._known(batch_id)
            if batch is None:
                return 404, self._not_found(batch_id)
            if not batch.done:
                _finish(batch, "BATCH_STATE_CANCELLED")
                self._publish(batch)
            return 200, {}

    def list_page(self, page_size: int | None, token: str | None) -> tuple[int, dict]:
        """Newest first; a page holds at most ``list_page_size``; the token is the next batch's number."""
        with self.lock:
            self.lists += 1
            self._log.append({"time": time.time(), "call": "list", "batch": None, "state": token})
            empty = int(token[1:]) if token and token.startswith("e") and token[1:].isdigit() else 0
            if empty < self.empty_pages and (token is None or token.startswith("e")):
                return 200, {"nextPageToken": f"e{empty + 1}"}  # an empty page that still has a token
            token = None if token and token.startswith("e") else token
            size = max(1, min(page_size or self.list_page_size, self.list_page_size))
            ordered = sorted(
                (b for b in self._batches.values() if not b.plan.forgotten), key=lambda b: b.seq, reverse=True
            )
            if token:
                if not token.isdigit():
                    return 400, self.error(400, f"invalid page token {token!r}")
                ordered = [b for b in ordered if b.seq <= int(token)]
            page, rest = ordered[:size], ordered[size:]
            reply: dict[str, Any] = {}
            if page:
                reply["operations"] = [_resource(b) for b in page]
            if rest:
                reply["nextPageToken"] = str(rest[0].seq)
            return 200, reply

    # -- helpers --------------------------------------------------------------------------------
    def _requests(self, batch_body: dict) -> list[dict] | tuple[int, dict]:
        """The batch's requests: inlined, or the lines of its JSONL file; else an error reply."""
        config = batch_body.get("inputConfig") or {}
        if not config.get("fileName"):
            requests = (config.get("requests") or {}).get("requests")
            if isinstance(requests, list):
                return requests
            return 400, self.error(400, "no inlined requests and no fileName in batch.inputConfig")
        name = str(config["fileName"])
        data = self.files.read(name) if self.files is not None else None
        if data is None:
            return 404, self.error(404, f"Requested entity was not found: {name}")
        lines = []
        for number, line in enumerate(data.decode("utf-8").splitlines(), 1):
            try:
                item = json.loads(line) if line.strip() else None
            except json.JSONDecodeError:
                item = "not JSON"
            if item is not None and not (isinstance(item, dict) and isinstance(item.get("request"), dict)):
                return 400, self.error(400, f"line {number} of {name} is not a {{key, request}} object")
            lines += [item] if item is not None else []
        return lines

    def _entry(self, item: dict, model: str, keyed: bool) -> dict:
        """The output entry of one request: keyed by its JSONL ``key``, or with its inlined ``metadata``."""
        code, payload = self.answer(item.get("request") or {}, model)
        entry: dict[str, Any] = {"key": item.get("key")} if keyed and "key" in item else {}
        if code == 200:
            entry["response"] = payload
        else:
            error = payload["error"]
            entry["error"] = {k: error[k] for k in ("code", "message", "status")}
        if "metadata" in item and not keyed:
            entry["metadata"] = item["metadata"]
        return entry

    def _publish(self, batch: ServedBatch) -> None:
        """Once a file-based batch is final, write its output (the plan's share, in its order) as JSONL."""
        if batch.done and batch.source_file and batch.responses_file is None and self.files is not None:
            data = "".join(json.dumps(entry) + "\n" for entry in batch.output()).encode("utf-8")
            batch.responses_file = self.files.add_generated(f"responses{batch.seq:04d}", batch.name, data)

    def _known(self, batch_id: str) -> ServedBatch | None:
        batch = self._batches.get(batch_id)
        return None if batch is None or batch.plan.forgotten else batch

    def _not_found(self, batch_id: str) -> dict:
        return self.error(404, f"Requested entity was not found: batches/{batch_id}")


def _unknown(n: int, like: dict, keyed: bool) -> dict:
    """A request for a key no request of the batch had (a plan's ``unknown_keys``), shaped as ``like``."""
    text = [{"role": "user", "parts": [{"text": f"A question nobody asked {n} ?"}]}]
    request = {**(like.get("request") or {}), "contents": text}
    key = f"not-asked-{n}"
    return {"key": key, "request": request} if keyed else {"request": request, "metadata": {"key": key}}


def _advance(batch: ServedBatch) -> None:
    """One more GET of ``batch``: PENDING for ``pending_polls`` GETs, RUNNING once, then final."""
    if batch.plan.hold is not None and not batch.done and batch.plan.hold():
        return  # held PENDING: this GET does not count towards pending_polls
    batch.gets += 1
    if batch.done:
        return
    polls = batch.plan.pending_polls
    if batch.gets <= polls:
        return
    if polls > 0 and batch.gets == polls + 1:
        batch.state, batch.update_time = RUNNING, time.time()
        return
    _finish(batch, f"BATCH_STATE_{batch.plan.final}")


def _finish(batch: ServedBatch, state: str) -> None:
    batch.state = state
    batch.update_time = batch.end_time = time.time()


def _stats(batch: ServedBatch) -> dict:
    """The batch's counts as the API writes them (numbers as strings): all pending until it ends."""
    stats = {"requestCount": str(len(batch.entries))}
    if not batch.done:
        return {**stats, "pendingRequestCount": str(len(batch.entries))}
    output = batch.output()[: len(batch.output()) - len(batch.extra)]
    succeeded = sum("response" in entry for entry in output)
    return {
        **stats,
        "successfulRequestCount": str(succeeded),
        "failedRequestCount": str(len(output) - succeeded),
    }


def _resource(batch: ServedBatch) -> dict:
    metadata: dict[str, Any] = {
        "@type": BATCH_TYPE,
        "model": f"models/{batch.model}",
        "displayName": batch.display_name,
        "state": batch.state,
        "createTime": rfc3339(batch.create_time),
        "updateTime": rfc3339(batch.update_time),
        "batchStats": _stats(batch),
    }
    resource: dict[str, Any] = {"name": batch.name, "metadata": metadata}
    if batch.end_time is not None:
        metadata["endTime"] = rfc3339(batch.end_time)
        if batch.source_file:
            metadata["output"] = {"responsesFile": batch.responses_file}
        else:
            metadata["output"] = {"inlinedResponses": {"inlinedResponses": batch.output()}}
        resource["done"] = True
    return resource
