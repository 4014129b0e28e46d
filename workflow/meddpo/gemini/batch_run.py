"""Gemini Batch mode: one job creates a batch for every shard at once and waits for them together.

A batch-mode job gets one or more shards (store parts, meddpo.gemini.batch.Part). It

1. takes up each part's batches that have not ended: one with a name is polled; one
   with an intent but no name (the job was killed during ``create``, or the reply was
   lost) is looked up by its display name over every page of ``batches.list``, once
   for all parts; only when no batch has that name, and its create call can no
   longer land (``timeout_s`` plus 5 minutes after the intent), is it taken as never
   created; before that the job stops with one line asking for a later rerun;
2. creates one batch for each part that has questions left and no batch open, all
   of them before it waits for any (the intent is on disk before ``create`` and the
   name right after);
3. polls every open batch in turn, the wait between rounds doubling from
   ``batch_poll_s`` up to 10 minutes. A batch that ends has its results kept at once,
   and its part's questions still without an outcome (never answered, or an error
   another try may get past) go into that part's next batch, up to
   ``batch_max_attempts`` batches per part in one job; what is left then fails for
   this run. A batch the API answers 404 for is ended as not found, and its part
   goes on the same way. A batch older than ``batch_max_age_h`` is cancelled and
   treated the same way (or the job stops, with ``batch_too_old: stop``).

After ``batch_wait_h`` hours the job stops with one line naming the batches still
running; they run on at Google, and a rerun takes them up without sending anything
again. Nothing is ever created while a batch of the same part is open.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable

from meddpo.errors import UserError
from meddpo.gemini.batch import NOT_CREATED, NOT_FOUND, Batch, Part
from meddpo.gemini.batch_api import (
    FINAL_STATES,
    LONGEST_WAIT_S,
    BatchApi,
    age_h,
    request_json,
    short,
    state_of,
)
from meddpo.gemini.client import GeminiSettings
from meddpo.gemini.errors import HardGeminiError, describe_error, never_reached

log = logging.getLogger(__name__)

# A create call that failed without a reply may still land at Google: its batch counts as never
# created only when no batch has its display name this long after the intent (plus timeout_s).
CREATE_GRACE_S = 300.0


class BatchStillRunning(UserError):
    """The job's wait ran out while batches run on: a rerun collects them."""


class BatchRun:
    """The batches of one job's parts: taken up, created together, waited for together."""

    def __init__(
        self,
        parts: list[Part],
        api: BatchApi,
        settings: GeminiSettings,
        config,
        clock: Callable[[], float] = time.monotonic,
        stop: Callable[[], str | None] = lambda: None,
    ):
        self.parts, self.api, self.settings, self.config, self.clock = parts, api, settings, config, clock
        self.stop = stop  # the reason to create nothing more and stop, once there is one
        self.started = clock()
        self.cancelled: set[str] = set()  # batches this job asked to cancel (a cancel takes a while)
        self.states: dict[str, str] = {}  # the state each batch had when last looked at

    def run(self) -> None:
        """Every part's batches until each part has an outcome for every question, or attempts run out."""
        waiting = self.take_up()
        busy = {id(part) for part, _ in waiting}
        for part in self.parts:
            if id(part) not in busy:
                waiting += self.next_batch(part)
        self.wait_all(waiting)
        for part in self.parts:
            part.give_up()

    # -- 1. batches left open by an earlier job ------------------------------------------------------
    def take_up(self) -> list[tuple[Part, Batch]]:
        """The open batches of every part, each with a name (looked up when its create reply was lost)."""
        found = [(part, batch) for part in self.parts for batch in part.open_batches()]
        for part, batch in found:
            log.info(
                "batch %s (%s, attempt %d) was left open by an earlier job: taking it up",
                batch.name or batch.display_name,
                part.name,
                batch.attempt,
            )
        unnamed = {batch.display_name for _, batch in found if batch.name is None}
        names = self.api.names(unnamed) if unnamed else {}
        waiting = []
        for part, batch in found:
            if batch.name is None:
                batch.name = names.get(batch.display_name)
                if batch.name is None:
                    self.never_created(part, batch)
                    continue
                part.append({"event": "created", "display_name": batch.display_name, "name": batch.name})
            waiting.append((part, batch))
        return waiting

    def never_created(self, part: Part, batch: Batch) -> None:
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
        part.append({"event": "ended", "display_name": batch.display_name, "state": NOT_CREATED})

    # -- 2. new batches ------------------------------------------------------------------------
    def next_batch(self, part: Part) -> list[tuple[Part, Batch]]:
        """A new batch for the part's questions left, unless none is left or its attempts are spent."""
        todo = part.todo()
        if not todo or part.submitted >= self.settings.batch_max_attempts:
            return []
        self.check_stop()
        part.submitted += 1
        return [(part, self.submit(part, todo, part.attempts_used() + 1))]

    def submit(self, part: Part, todo: list[dict], attempt: int) -> Batch:
        """Create one batch for ``todo``; its intent is on disk first and its name right after."""
        display = f"meddpo-{part.fingerprint}-{part.name}-a{attempt}-{uuid.uuid4().hex[:12]}"
        batch = Batch(display, attempt, [q["id"] for q in todo], part=part.name)
        src = self.requests(display, todo)
        part.append({"event": "intent", "display_name": display, "attempt": attempt, "keys": batch.keys})
        try:
            batch.name = self.api.create(src, display)
        except Exception as error:  # noqa: BLE001 - the batch may exist all the same: looked up below
            if never_reached(error):
                raise HardGeminiError(f"batch {display} not created: {describe_error(error)}") from None
            log.warning("creating batch %s: %s; looking it up by its name", display, describe_error(error))
            batch.name = self.api.names({display}).get(display)
            if batch.name is None:  # it may still land: the intent stays open for the rerun to look up
                raise HardGeminiError(
                    f"creating batch {display}: {describe_error(error)}; Google lists no batch by that name "
                    "yet: rerun in a few minutes, and the batch is looked up again before anything is sent"
                ) from None
        part.append({"event": "created", "display_name": display, "name": batch.name})
        log.info(
            "batch %s created as %s: %d requests (%s, attempt %d)",
            display,
            batch.name,
            len(todo),
            part.name,
            attempt,
        )
        return batch

    def requests(self, display: str, todo: list[dict]):
        """The batch's requests: inline, or an uploaded JSONL file's name over ``batch_inline_limit_mb``."""
        from google.genai import types

        lines = [{"key": q["id"], "request": request_json(q["question"], self.config)} for q in todo]
        if sum(len(json.dumps(line)) for line in lines) > self.settings.batch_inline_limit_mb * 1e6:
            return self.api.upload(display, lines)  # an uploaded file costs nothing: no intent needed yet
        return [
            types.InlinedRequest(
                model=self.settings.model,
                contents=q["question"],
                metadata={"key": q["id"]},
                config=self.config,
            )
            for q in todo
        ]

    # -- 3. waiting ----------------------------------------------------------------------------
    def wait_all(self, waiting: list[tuple[Part, Batch]]) -> None:
        """Poll every open batch in rounds until none is left; BatchStillRunning once the wait runs out."""
        delay = min(self.settings.batch_poll_s, LONGEST_WAIT_S)
        while waiting:
            still: list[tuple[Part, Batch]] = []
            for part, batch in waiting:
                still += self.look_at(part, batch)
            self.check_stop()  # what ended so far is kept and recorded; open batches wait for the rerun
            waiting = still
            if not waiting:
                return
            waited = self.clock() - self.started
            if waited + delay > self.settings.batch_wait_h * 3600:
                raise BatchStillRunning(self.still_running(waiting, waited))
            self.api.sleep(delay)
            delay = min(delay * 2, LONGEST_WAIT_S)

    def check_stop(self) -> None:
        """Stop with the job's reason, if it has one (batches still open stay for the rerun)."""
        reason = self.stop()
        if reason:
            raise HardGeminiError(reason)

    def look_at(self, part: Part, batch: Batch) -> list[tuple[Part, Batch]]:
        """One poll of ``batch``: what is still to be waited for then (it, its successor, or nothing)."""
        assert batch.name is not None
        job = self.api.get(batch.name)
        if job is None:
            log.warning(
                "batch %s (%s, %d questions): the Batch API answers 404 (deleted, or made under another "
                "project's key): ended as not found; its questions without an outcome go into a new batch",
                batch.name,
                part.name,
                len(batch.keys),
            )
            part.append(
                {"event": "ended", "display_name": batch.display_name, "name": batch.name, "state": NOT_FOUND}
            )
            return self.next_batch(part)
        state = self.states[batch.name] = state_of(job)
        if state in FINAL_STATES:
            part.collect(batch, self.api.results(job), state)
            return self.next_batch(part)
        hours = age_h(job)
        if hours is not None and hours > self.settings.batch_max_age_h and batch.name not in self.cancelled:
            self.too_old(batch, state, hours)
        return [(part, batch)]

    def too_old(self, batch: Batch, state: str, hours: float) -> None:
        """Cancel a batch past ``batch_max_age_h`` (or stop, with ``batch_too_old: stop``)."""
        message = (
            f"batch {batch.name} is still {short(state)} {hours:.1f} h after it was created "
            f"(batch_max_age_h {self.settings.batch_max_age_h:g})"
        )
        if self.settings.batch_too_old == "stop":
            raise HardGeminiError(message + "; cancel it, or raise batch_max_age_h, then rerun")
        log.warning("%s: cancelling it; what it answered is kept and the rest resubmitted", message)
        self.api.cancel(batch.name)
        self.cancelled.add(batch.name)  # asked once, then waited for

    def still_running(self, waiting: list[tuple[Part, Batch]], waited: float) -> str:
        """The one line of a wait that ran out."""
        wait = f"this job waited {waited / 3600:.2f} h (batch_wait_h {self.settings.batch_wait_h:g})"
        if len(waiting) == 1:
            (_, batch), state = waiting[0], self._last_state(waiting[0][1])
            return (
                f"batch {batch.name} ({len(batch.keys)} questions) is still {state} after {wait}; it runs on "
                "at Google: rerun the job to collect it (nothing is sent again)"
            )
        listed = ", ".join(
            f"{batch.name} ({part.name}, {self._last_state(batch)})" for part, batch in waiting
        )
        questions = sum(len(batch.keys) for _, batch in waiting)
        return (
            f"{len(waiting)} batches ({questions} questions) are still running after {wait}: {listed}; they "
            "run on at Google: rerun the job to collect them (nothing is sent again)"
        )

    def _last_state(self, batch: Batch) -> str:
        return short(self.states.get(batch.name or "", "JOB_STATE_PENDING"))
