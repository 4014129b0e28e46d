"""Gemini Batch mode, one shard's side: the store's batches log and what each batch brought back.

The answers, refusals, failures and request log of a batch-mode job go to the same
answer store, under the same fingerprint, as in online mode. Each shard (a store
*part*) has its batches recorded in the store's ``batches`` log, one fsync'd JSON
line per event, so a killed job leaves whole records:

1. ``intent``: the attempt, a display name no other batch has, and the question
   ids, written before ``batches.create`` is called;
2. ``created``: the batch's name, written as soon as ``create`` returns (or once a
   lost reply's batch is found by its display name);
3. ``ended``: its final state and how many results it had, once they are stored;
   ``NOT_FOUND`` when the API answers 404 for it, ``NOT_CREATED`` when Google never
   made it.

**Results** are put back by each entry's key (the question id), never by position,
and every entry the API returned is logged in the request log, as it may be billed:
a second entry for a key (``duplicate``) and an entry for a key that no request of
the batch had (``unknown_key``) are logged and counted, never kept. A reply without
token counts is logged with estimated tokens and ``usage_missing``
(meddpo.gemini.client.response_usage). A reply is read like an online reply (an
answer, or a final refusal); an error that another try may get past (429, 5xx, or
no code) leaves its question without an outcome, so it goes into the shard's next
batch, and other errors (a 4xx about the request, an unreadable result) are failures
of this run. The batches themselves are created and waited for by
meddpo.gemini.batch_run, every shard's at once.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from meddpo.gemini.batch_api import UNREADABLE
from meddpo.gemini.client import GeminiSettings, Outcome, interpret_response, response_usage
from meddpo.gemini.errors import RETRY_CODES, HardGeminiError
from meddpo.gemini.served import served_model
from meddpo.generation.resume import ResumableJob

log = logging.getLogger(__name__)

BATCH_LOG = "batches"
NOT_FOUND, NOT_CREATED = "NOT_FOUND", "NOT_CREATED"  # ended states of batches the API does not have


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


def refuse_open_batches(records: list[dict], ids: set[str], own_parts: set[str] = frozenset()) -> None:
    """Stop with one line when a batch still open holds one of ``ids`` (a batch-mode job takes up
    the batches of its own parts, ``own_parts``): asking those questions now would pay for them twice."""
    for batch in open_batches(records):
        if batch.part not in own_parts and ids & set(batch.keys):
            raise HardGeminiError(
                f"batch {batch.name or batch.display_name} (store part {batch.part}) is still open and holds "
                f"{len(ids & set(batch.keys))} of these questions: run that shard's job in batch mode to "
                "collect it first (asking them now would pay twice)"
            )


def resubmitted(code: object) -> bool:
    """Whether a batch entry's error leaves its question for the next batch (another try may get past it)."""
    if code == UNREADABLE:
        return False
    return not isinstance(code, int) or code in RETRY_CODES or not 400 <= code < 500


@dataclass
class Part:
    """One shard's side of a batch-mode job: its questions left, its batches, and what it kept.

    ``keep`` stores an outcome (and may stop the job: a served model that breaks the rule);
    ``log_request`` appends a line to the request log and counts it.
    """

    job: ResumableJob
    settings: GeminiSettings
    keep: Callable[[dict, Outcome], None]
    log_request: Callable[[dict], None]
    system_prompt: str | None = None
    done: set[str] = field(default_factory=set)  # questions with an outcome in this job
    errored: dict[str, tuple[str, int]] = field(
        default_factory=dict
    )  # key -> (reason, attempt), left for a retry
    submitted: int = 0  # batches this job created for the part
    _memory: list[dict] = field(default_factory=list)  # the batches log without a store

    @property
    def name(self) -> str:
        return self.job.store.part.name if self.job.store else "memory"

    @property
    def fingerprint(self) -> str:
        return self.job.store.key if self.job.store else "nostore"

    # -- the batches log ----------------------------------------------------------------------
    def append(self, record: dict) -> None:
        record = {**record, "part": self.name, "time": round(time.time(), 3)}
        if self.job.store:
            self.job.store.append_log(BATCH_LOG, [record])
        else:
            self._memory.append(record)

    def history(self) -> list[Batch]:
        """This part's batches, from the batches log, in the order of their intents."""
        records = self.job.store.read_log(BATCH_LOG) if self.job.store else self._memory
        return [batch for batch in batch_history(records) if batch.part == self.name]

    def open_batches(self) -> list[Batch]:
        return [batch for batch in self.history() if batch.state is None]

    def attempts_used(self) -> int:
        return max((batch.attempt for batch in self.history()), default=0)

    def todo(self) -> list[dict]:
        """The part's questions still without an outcome."""
        return [q for q in self.job.todo if q["id"] not in self.done]

    def text(self, key: str | None) -> str:
        """The question asked under ``key`` ("" for a key no question of the part has)."""
        if not hasattr(self, "_texts"):
            self._texts = {q["id"]: q["question"] for q in self.job.questions}
        return self._texts.get(key or "", "")

    # -- an ended batch -------------------------------------------------------------------------
    def collect(self, batch: Batch, entries: list[tuple[str | None, object, object]], state: str) -> None:
        """Keep every entry of an ended batch and log each one (duplicates and unknown keys too)."""
        wanted = set(batch.keys)
        requests = self.job.store.read_log("requests") if self.job.store else []
        logged = Counter(r["id"] for r in requests if r.get("batch") == batch.name)  # by a killed job
        seen: Counter = Counter()
        kept = 0
        for key, response, error in entries:
            seen[key] += 1
            if seen[key] <= logged[key]:
                continue  # logged (and kept) by an earlier job that collected this batch
            record = {"id": key, "attempt": batch.attempt, "mode": "batch", "batch": batch.name}
            if key not in wanted or seen[key] > 1:
                flag = "unknown_key" if key not in wanted else "duplicate"
                self.log_request({**record, flag: True, **self._usage(key, response, error)})
            elif not (key in self.done or key in self.job.stored or key in self.job.refused):
                kept += self.keep_result(key, response, error, record)
            # else: kept by a job killed before it logged the result (counted once, by nobody)
        self.append(
            {
                "event": "ended",
                "display_name": batch.display_name,
                "name": batch.name,
                "state": state,
                "results": kept,
            }
        )
        left = len(wanted - self.done)
        log.info(
            "batch %s ended %s: %d results kept, %d questions without an outcome",
            batch.name,
            state,
            kept,
            left,
        )

    def _usage(self, key: str | None, response, error) -> dict:
        """What a logged entry cost: its tokens (estimated when the reply has none), or its error."""
        if response is None:
            return {"error": str(error)}
        usage = response_usage(response, self.text(key), self.system_prompt)
        return {**usage, "served_model": served_model(response)}

    def keep_result(self, key: str, response, error, record: dict) -> int:
        """One result for a question of the batch: an answer or refusal (kept, then logged), a failure,
        or an error left for the next batch. Returns 1 when an outcome was kept."""
        question = {"id": key}
        if response is None:
            self.log_request({**record, "error": str(error)})
            if resubmitted(error):
                self.errored[key] = (f"batch_error:{error}", record["attempt"])
                return 0
            self.done.add(key)
            self.keep(
                question,
                Outcome(failure={"id": key, "reason": f"batch_error:{error}"}, attempts=record["attempt"]),
            )
            return 1
        usage = response_usage(response, self.text(key), self.system_prompt)
        outcome = interpret_response(key, response, self.settings, usage)
        outcome.attempts = record["attempt"]
        self.done.add(key)
        self.errored.pop(key, None)
        try:
            self.keep(question, outcome)  # stored first: a logged result is a kept one
        finally:
            self.log_request({**record, **usage, "served_model": served_model(response)})
        return 1

    def give_up(self) -> None:
        """Questions still without an outcome once the job's batches are spent: failures of this run."""
        todo = self.todo()
        if not todo:
            return
        log.warning(
            "%s: %d questions still have no outcome after %d batches: they fail for this run",
            self.name,
            len(todo),
            self.submitted,
        )
        for question in todo:
            reason, attempt = self.errored.get(question["id"], ("batch_attempts_used", self.attempts_used()))
            self.keep(question, Outcome(failure={"id": question["id"], "reason": reason}, attempts=attempt))
