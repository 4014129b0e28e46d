"""The resume loop every answering backend shares: what is stored, what is left, keep each answer.

A backend (local transformers model, Gemini, ...) opens a ``ResumableJob`` for
its shard, answers only ``job.todo``, and hands each finished answer row to
``job.record`` as it arrives: the row goes to the answer store at once (so a
killed job loses only the answers in flight) and into the job's result. The
job prints one line on what the store already holds and periodic progress lines
(done / total, rows/s, new tokens/s, ETA) that read well in a Slurm log.
``job.rows()`` gives the answers in question order, stored and new alike.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from meddpo.backends import PROGRESS_EVERY_S
from meddpo.generation.answer_store import AnswerStore

log = logging.getLogger(__name__)


def _duration(seconds: float) -> str:
    if seconds == float("inf"):
        return "unknown"
    seconds = int(round(seconds))
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m{seconds % 60:02d}s"


@dataclass
class Progress:
    """Periodic progress lines; ``every_s`` = 0 prints one per update."""

    total: int
    already_done: int
    every_s: float = PROGRESS_EVERY_S
    started: float = field(default_factory=time.perf_counter)
    done: int = 0
    failed: int = 0
    new_tokens: int = 0
    _last: float = 0.0

    def update(self, rows: Sequence[Mapping[str, Any]] = (), failed: int = 0, force: bool = False) -> None:
        self.done += len(rows)
        self.failed += failed
        self.new_tokens += sum(int(row.get("new_tokens") or 0) for row in rows)
        now = time.perf_counter()
        if not force and now - self._last < self.every_s:
            return
        self._last = now
        elapsed = max(now - self.started, 1e-9)
        finished = self.done + self.failed
        remaining = self.total - self.already_done - finished
        rate = finished / elapsed
        eta = remaining / rate if rate else float("inf")
        failed_note = f", {self.failed} failed or refused" if self.failed else ""
        log.info(
            "%d/%d answers (%d from the store%s), %.2f rows/s, %.0f new tokens/s, ETA %s",
            self.already_done + self.done,
            self.total,
            self.already_done,
            failed_note,
            rate,
            self.new_tokens / elapsed,
            _duration(eta),
        )


class ResumableJob:
    """One shard job of one backend: the store's answers, the questions left, new answers kept at once."""

    def __init__(
        self,
        questions: Sequence[dict],
        settings: Mapping[str, Any],
        *,
        store_root: str | os.PathLike | None,
        store_part: str,
        progress_every_s: float = PROGRESS_EVERY_S,
        ask_refused_again: bool = False,
    ):
        self.questions = list(questions)
        self.store = AnswerStore(store_root, settings, store_part) if store_root is not None else None
        if self.store:
            self.store.lock()
        self.stored = self.store.load() if self.store else {}
        # a refusal is final for these settings: not asked again unless the user says so
        self.refused = self.store.load_refusals() if self.store and not ask_refused_again else {}
        self.todo = [q for q in self.questions if q["id"] not in self.stored and q["id"] not in self.refused]
        self.new: dict[str, dict] = {}
        already = len(self.questions) - len(self.todo)
        if self.store:
            refused = sum(q["id"] in self.refused for q in self.questions)
            log.info(
                "answer store %s: %d of %d answers already there, %d to generate",
                self.store.folder,
                already - refused,
                len(self.questions),
                len(self.todo),
            )
            if refused:
                log.info("%d questions were refused before under these settings: not asked again", refused)
        self.progress = Progress(total=len(self.questions), already_done=already, every_s=progress_every_s)

    def record(self, rows: Sequence[dict]) -> None:
        """Finished answers: into the store (on disk before this returns), then into the result.

        Each row gets ``created`` (Unix time), so a report can tell the answers a job
        made from the ones it took from the store.
        """
        now = round(time.time(), 3)
        rows = [{**row, "created": now} for row in rows]
        if self.store:
            self.store.append(rows)
        self.new.update((row["id"], row) for row in rows)
        self.progress.update(rows)

    def record_refusal(self, row: dict) -> None:
        """A final refusal (``row`` has ``id`` and ``refused``): stored at once, never asked again."""
        if self.store:
            self.store.append([row])
        self.refused[row["id"]] = row
        self.progress.update(failed=1)

    def record_failed(self, rows: Sequence[dict]) -> None:
        """Questions that got no answer in this job: kept in the store's failures log, asked again later."""
        if self.store:
            self.store.append_log("failures", rows)
        self.progress.update(failed=len(rows))

    def refusals(self) -> list[dict]:
        """The refusals of this job's questions (earlier jobs' included), in question order."""
        return [
            self.refused[q["id"]]
            for q in self.questions
            if q["id"] in self.refused and q["id"] not in self.new
        ]

    def close(self) -> None:
        """The job is over: another job may take this shard's part of the store."""
        if self.store:
            self.store.unlock()

    def rows(self) -> list[dict]:
        """Every answer, stored or new, in question order; unanswered questions are left out.

        Called when the job is done: it also releases the job's hold on the store.
        """
        self.close()
        self.progress.update(force=True)
        found = (self.new.get(q["id"]) or self.stored.get(q["id"]) for q in self.questions)
        return [row for row in found if row is not None]
