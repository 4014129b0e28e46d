"""Gemini Batch mode for one shard job: one Batch API job for the questions left, at batch prices.

Called by the shard job (gemini_teacher) when its block says ``mode: batch``; the
answers, refusals, failures and request log go to the same answer store, under
the same fingerprint, as in online mode.

**Exactly once.** Each batch has a record in the store's ``batches`` log (one
fsync'd JSON line per event, so a killed job leaves whole records):

1. ``intent``: the attempt, a display name no other batch has, and the question
   ids, written before ``batches.create`` is called;
2. ``created``: the batch's name, written as soon as ``create`` returns;
3. ``ended``: its final state and how many results it had, once they are stored.

A job first takes up the batches of its part that have not ended. One with a
name is polled with ``batches.get``. One with an intent but no name (the job
was killed during ``create``, or the reply was lost) is looked up by its display
name over every page of ``batches.list``; only when no batch has that name is it
taken as never created. A batch is never found by listing alone, and nothing is
created while a batch of the part is still open.

**Results** are mapped back by each request's ``key`` (the question id), never
by position. A result with a response is read like an online reply (answer or
final refusal); a result with an error is a failure, asked again by a later
run. An expired, failed or cancelled batch keeps whatever came back; the
questions it left without an outcome go into the next batch, up to
``batch_max_attempts`` batches. A batch older than ``batch_max_age_h`` is
cancelled, then treated the same way (or the job stops, with
``batch_too_old: stop``).

**Waiting.** The job looks at its batch every ``batch_poll_s`` seconds, the
wait doubling up to 10 minutes, for at most ``batch_wait_h`` hours in all; then
it stops with one line. The batch runs on at Google, and a rerun collects it
without sending anything again.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from meddpo.errors import UserError
from meddpo.gemini.client import GeminiSettings, Outcome, interpret_response
from meddpo.gemini.errors import HardGeminiError, describe_error, error_reason, is_transient, never_reached
from meddpo.generation.resume import ResumableJob

log = logging.getLogger(__name__)

BATCH_LOG = "batches"
FINAL_STATES = (
    "JOB_STATE_SUCCEEDED",
    "JOB_STATE_PARTIALLY_SUCCEEDED",
    "JOB_STATE_FAILED",
    "JOB_STATE_CANCELLED",
    "JOB_STATE_EXPIRED",
)
LONGEST_POLL_S = 600.0
# A create call that failed without a reply may still land at Google: its batch counts as never
# created only when no batch has its display name this long after the intent (plus timeout_s).
CREATE_GRACE_S = 300.0


class BatchStillRunning(UserError):
    """The job's wait ran out while its batch runs on: a rerun collects it."""


@dataclass
class Batch:
    """One batch as the store's batches log tells it: from its intent, created and ended records."""

    display_name: str
    attempt: int
    keys: list[str]
    name: str | None = None
    part: str = ""
    since: float = 0.0  # time of the intent record
    state: str | None = None  # the final state once its ended record is there; None while open
    results: int = 0  # results kept, once ended


@dataclass
class BatchRun:
    """One shard job's batches: the client, what was counted, and the store's batches log."""

    job: ResumableJob
    settings: GeminiSettings
    client: object
    config: object
    log_request: Callable[[dict], None]
    keep: Callable[[dict, Outcome], None]
    sleep: Callable[[float], None] = time.sleep
    clock: Callable[[], float] = time.monotonic

    def __post_init__(self) -> None:
        self.started = self.clock()
        self.part = self.job.store.part.name if self.job.store else "memory"
        self._log_memory: list[dict] = []
        self.done: set[str] = set()  # questions with an outcome in this job

    # -- the batches log ----------------------------------------------------------------------
    def _append(self, record: dict) -> None:
        record = {**record, "part": self.part, "time": round(time.time(), 3)}
        if self.job.store:
            self.job.store.append_log(BATCH_LOG, [record])
        else:
            self._log_memory.append(record)

    def history(self) -> list[Batch]:
        """This part's batches, from the batches log, in the order of their intents."""
        records = self.job.store.read_log(BATCH_LOG) if self.job.store else self._log_memory
        return [batch for batch in batch_history(records) if batch.part == self.part]

    def open_batches(self) -> list[Batch]:
        """This part's batches that have an intent but no end, oldest first."""
        return [batch for batch in self.history() if batch.state is None]

    def attempts_used(self) -> int:
        return max((batch.attempt for batch in self.history()), default=0)

    # -- the job --------------------------------------------------------------------------------
    def run(self) -> None:
        """Take up open batches, then submit the questions left until none is left or attempts run out."""
        for batch in self.open_batches():
            log.info(
                "batch %s (attempt %d) was left open by an earlier job: taking it up",
                batch.display_name,
                batch.attempt,
            )
            if batch.name is None:
                batch.name = self.find_by_display_name(batch.display_name)
                if batch.name is None:
                    self.never_created(batch)
                    continue
                self._append({"event": "created", "display_name": batch.display_name, "name": batch.name})
            self.collect(batch)
        for _ in range(self.settings.batch_max_attempts):
            todo = [q for q in self.job.todo if q["id"] not in self.done]
            if not todo:
                return
            self.collect(self.submit(todo, self.attempts_used() + 1))
        todo = [q for q in self.job.todo if q["id"] not in self.done]
        if todo:
            self.give_up(todo)

    def never_created(self, batch: Batch) -> None:
        """An intent whose batch Google does not list: ended as never created, once its create call
        can no longer land; before that, the job stops with one line."""
        left = batch.since + self.settings.timeout_s + CREATE_GRACE_S - time.time()
        if left > 0:
            raise HardGeminiError(
                f"batch {batch.display_name}: its create call got no reply and Google lists no batch by "
                f"that name yet; it may still appear: rerun in {left / 60:.0f} minutes or later (nothing "
                "is sent again before then)"
            )
        log.info("no batch is named %s at Google: it was never created", batch.display_name)
        self._append({"event": "ended", "display_name": batch.display_name, "state": "NOT_CREATED"})

    def give_up(self, todo: list[dict]) -> None:
        """Questions still without an outcome after ``batch_max_attempts`` batches: failures of this job."""
        log.warning(
            "%d questions still have no outcome after %d batches: they fail for this run",
            len(todo),
            self.settings.batch_max_attempts,
        )
        for question in todo:
            failure = {"id": question["id"], "reason": "batch_attempts_used"}
            self.keep(question, Outcome(failure=failure, attempts=self.settings.batch_max_attempts))

    def submit(self, todo: list[dict], attempt: int) -> Batch:
        """Create one batch for ``todo``; its intent is on disk first and its name right after."""
        from google.genai import types

        fingerprint = self.job.store.key if self.job.store else "nostore"
        display = f"meddpo-{fingerprint}-{self.part}-a{attempt}-{uuid.uuid4().hex[:12]}"
        batch = Batch(display, attempt, [q["id"] for q in todo])
        lines = [{"key": q["id"], "request": request_json(q["question"], self.config)} for q in todo]
        if sum(len(json.dumps(line)) for line in lines) > self.settings.batch_inline_limit_mb * 1e6:
            src = self.upload(display, lines)  # an uploaded file costs nothing: no intent needed yet
        else:
            src = [
                types.InlinedRequest(
                    model=self.settings.model,
                    contents=q["question"],
                    metadata={"key": q["id"]},
                    config=self.config,
                )
                for q in todo
            ]
        self._append({"event": "intent", "display_name": display, "attempt": attempt, "keys": batch.keys})
        try:
            created = self.client.batches.create(
                model=self.settings.model, src=src, config=types.CreateBatchJobConfig(display_name=display)
            )
            batch.name = created.name
        except Exception as error:  # noqa: BLE001 - the batch may exist all the same: looked up below
            if never_reached(error):
                raise HardGeminiError(f"batch {display} not created: {describe_error(error)}") from None
            log.warning("creating batch %s: %s; looking it up by its name", display, describe_error(error))
            batch.name = self.find_by_display_name(display)
            if batch.name is None:  # it may still land: the intent stays open for the rerun to look up
                raise HardGeminiError(
                    f"creating batch {display}: {describe_error(error)}; Google lists no batch by that name "
                    "yet: rerun in a few minutes, and the batch is looked up again before anything is sent"
                ) from None
        self._append({"event": "created", "display_name": display, "name": batch.name})
        log.info("batch %s created as %s: %d requests (attempt %d)", display, batch.name, len(todo), attempt)
        return batch

    def upload(self, display: str, lines: list[dict]) -> str:
        """The requests as a JSONL file uploaded with the Files API (over the inline limit); its name."""
        import tempfile

        from google.genai import types

        with tempfile.TemporaryDirectory(prefix="meddpo-batch-") as folder:
            path = Path(folder) / f"{display}.jsonl"
            path.write_text("".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines), "utf-8")
            config = types.UploadFileConfig(display_name=display, mime_type="jsonl")
            uploaded = self._retry(lambda: self.client.files.upload(file=str(path), config=config))
        log.info("batch %s: %d requests uploaded as %s", display, len(lines), uploaded.name)
        return uploaded.name

    def find_by_display_name(self, display: str) -> str | None:
        """The name of the batch with this display name, over every page of ``batches.list``; None if none."""
        for item in self._retry(lambda: list(self.client.batches.list(config={"page_size": 100}))):
            if item.display_name == display:
                return item.name
        return None

    def collect(self, batch: Batch) -> None:
        """Wait for ``batch`` to end (cancelling it when too old), then keep every result it has."""
        job = self.wait(batch)
        state = _state(job)
        wanted = set(batch.keys)
        requests = self.job.store.read_log("requests") if self.job.store else []
        logged = {r["id"] for r in requests if r.get("batch") == batch.name}  # kept by a killed job
        kept = 0
        for key, response, error in self.results(job):
            if key not in wanted or key in self.done or key in self.job.stored or key in self.job.refused:
                continue
            if key in logged:
                continue  # not this batch's, or kept already (by this job, or by a killed one)
            self.keep_result(key, response, error, batch)
            kept += 1
        missing = len(wanted - self.done)
        self._append(
            {
                "event": "ended",
                "display_name": batch.display_name,
                "name": batch.name,
                "state": state,
                "results": kept,
            }
        )
        log.info(
            "batch %s ended %s: %d results kept, %d questions without one", batch.name, state, kept, missing
        )

    def results(self, job) -> list[tuple[str | None, object, object]]:
        """``(key, response, error code)`` of each result of an ended batch, inline or in its results file."""
        dest = job.dest
        if dest is not None and dest.file_name:
            data = self._retry(lambda: self.client.files.download(file=dest.file_name))
            return [
                _file_result(line) for line in data.decode("utf-8", "replace").splitlines() if line.strip()
            ]
        return [
            ((entry.metadata or {}).get("key"), entry.response, _code(entry.error) if entry.error else None)
            for entry in (dest.inlined_responses if dest is not None else None) or []
        ]

    def keep_result(self, key: str, response, error, batch: Batch) -> None:
        """One result of a batch: an answer or refusal (with its tokens logged), or a failure."""
        question = {"id": key}
        record = {"id": key, "attempt": batch.attempt, "mode": "batch", "batch": batch.name}
        # the outcome is stored before the request is logged: a logged result is a kept one, so a
        # rerun that collects the batch again skips it (a kill in between only undercounts it)
        if response is None:
            failure = {"id": key, "reason": f"batch_error:{error}"}
            self.keep(question, Outcome(failure=failure, attempts=batch.attempt))
            self.log_request({**record, "error": str(error)})
        else:
            outcome = interpret_response(key, response, self.settings)
            outcome.attempts = batch.attempt
            self.keep(question, outcome)
            self.log_request({**record, **(outcome.usage or {})})
        self.done.add(key)

    def wait(self, batch: Batch):
        """Poll ``batch`` until it ends; BatchStillRunning once ``batch_wait_h`` has gone by."""
        delay, cancelled = min(self.settings.batch_poll_s, LONGEST_POLL_S), False
        while True:
            job = self._retry(lambda: self.client.batches.get(name=batch.name))
            state = _state(job)
            if state in FINAL_STATES:
                return job
            age_h = _age_h(job)
            if age_h is not None and age_h > self.settings.batch_max_age_h and not cancelled:
                self.too_old(batch, state, age_h)
                cancelled = True  # a cancel takes a while at Google: asked once, then waited for
            waited = self.clock() - self.started
            if waited + delay > self.settings.batch_wait_h * 3600:
                raise BatchStillRunning(
                    f"batch {batch.name} ({len(batch.keys)} questions) is still {_short(state)} after "
                    f"this job waited {waited / 3600:.2f} h (batch_wait_h {self.settings.batch_wait_h:g}); "
                    "it runs on at Google: rerun the job to collect it (nothing is sent again)"
                )
            self.sleep(delay)
            delay = min(delay * 2, LONGEST_POLL_S)

    def too_old(self, batch: Batch, state: str, age_h: float) -> None:
        """Cancel a batch past ``batch_max_age_h`` (or stop, with ``batch_too_old: stop``)."""
        message = (
            f"batch {batch.name} is still {_short(state)} {age_h:.1f} h after it was created "
            f"(batch_max_age_h {self.settings.batch_max_age_h:g})"
        )
        if self.settings.batch_too_old == "stop":
            raise HardGeminiError(message + "; cancel it, or raise batch_max_age_h, then rerun")
        log.warning("%s: cancelling it; what it answered is kept and the rest resubmitted", message)
        self._retry(lambda: self.client.batches.cancel(name=batch.name))

    def _retry(self, call):
        """``call()`` again on transient errors (429, 5xx, time-outs), up to ``max_attempts`` tries."""
        delay = self.settings.initial_backoff_s
        for attempt in range(1, self.settings.max_attempts + 1):
            try:
                return call()
            except Exception as error:  # noqa: BLE001 - transient ones are retried, the rest re-raised
                if not is_transient(error) or attempt == self.settings.max_attempts:
                    raise HardGeminiError(f"the Batch API: {describe_error(error)}") from None
                log.warning("the Batch API: %s; trying again", error_reason(error))
                self.sleep(delay)
                delay = min(max(delay * 2, 0.001), self.settings.max_backoff_s)
        raise AssertionError("unreachable")


def batch_history(records: list[dict]) -> list[Batch]:
    """Every batch a store's batches log records (every part), in the order of their intents."""
    found: dict[str, Batch] = {}
    for record in records:
        display = record["display_name"]
        if record["event"] == "intent":
            found[display] = Batch(
                display, record["attempt"], record["keys"], part=record["part"], since=record["time"]
            )
        elif display not in found:
            continue  # no intent before it: not a batch this log can speak for
        elif record["event"] == "created":
            found[display].name = record["name"]
        elif record["event"] == "ended":
            found[display].state, found[display].results = record["state"], record.get("results", 0)
    return list(found.values())


def open_batches(records: list[dict]) -> list[Batch]:
    """The batches of a store's batches log that have an intent but no end (every part), oldest first."""
    return [batch for batch in batch_history(records) if batch.state is None]


def refuse_open_batches(records: list[dict], ids: set[str], except_part: str | None = None) -> None:
    """Stop with one line when a batch still open holds one of ``ids`` (a batch-mode job takes up
    its own part's, ``except_part``): asking those questions now would pay for them twice."""
    for batch in open_batches(records):
        if batch.part != except_part and ids & set(batch.keys):
            raise HardGeminiError(
                f"batch {batch.name or batch.display_name} (store part {batch.part}) is still open and holds "
                f"{len(ids & set(batch.keys))} of these questions: run that shard's job in batch mode to "
                "collect it first (asking them now would pay twice)"
            )


def _file_result(line: str) -> tuple[str | None, object, object]:
    """One line of a batch's results file, read as the SDK reads an inline result (unknown fields
    dropped); a line that cannot be read is a failure of its key."""
    from google.genai import types
    from google.genai.batches import _InlinedResponse_from_mldev

    try:
        row = json.loads(line)
    except json.JSONDecodeError:
        return None, None, "unreadable_result"  # no key to put it on: its question gets no outcome
    key = row.get("key") if isinstance(row, dict) else None
    if key is None or "response" not in row:
        return key, None, (row.get("error") or {}).get("code", "unknown") if key else "unreadable_result"
    try:
        entry = _InlinedResponse_from_mldev({"response": row["response"]})
        return key, types.InlinedResponse.model_validate(entry).response, None
    except Exception:  # noqa: BLE001 - an unreadable result is that key's failure, never a traceback
        return key, None, "unreadable_result"


def request_json(question: str, config) -> dict:
    """One generateContent request as the REST API reads it (a line of an uploaded batch file)."""
    body: dict = {"contents": [{"role": "user", "parts": [{"text": question}]}]}
    if config.system_instruction:
        body["systemInstruction"] = {"parts": [{"text": config.system_instruction}]}
    generation = {"temperature": config.temperature, "maxOutputTokens": config.max_output_tokens}
    if config.response_mime_type:
        generation["responseMimeType"] = config.response_mime_type
    if config.response_json_schema is not None:
        generation["responseJsonSchema"] = config.response_json_schema
    if config.thinking_config is not None:
        generation["thinkingConfig"] = {"thinkingBudget": config.thinking_config.thinking_budget}
    body["generationConfig"] = generation
    return body


def _code(error) -> object:
    return error.get("code") if isinstance(error, dict) else getattr(error, "code", None)


def _state(job) -> str:
    state = job.state
    return getattr(state, "name", None) or str(state)


def _short(state: str) -> str:
    return state.removeprefix("JOB_STATE_")


def _age_h(job) -> float | None:
    created = job.create_time
    if created is None:
        return None
    if isinstance(created, str):
        created = dt.datetime.fromisoformat(created.replace("Z", "+00:00"))
    if created.tzinfo is None:
        created = created.replace(tzinfo=dt.UTC)
    return (dt.datetime.now(dt.UTC) - created).total_seconds() / 3600
