"""The Gemini shard job: chosen answers from Gemini, concurrent, rate-limited, retrying, resumable.

Holds the job that answers one shard's questions through the Gemini client and
keeps what it gets in the answer store: ``GEMINI``, the backend of the registry
(meddpo.backends), ``answer_shard``, ``answer_with_gemini`` and the shard's usage
and verdict.

One async client per job, kept for the job's length; at most ``concurrency``
calls are in flight and calls start no faster than ``requests_per_minute``
allows (retries count too). What the client makes of each question:

* an **answer** is stored;
* a **refusal** is final for the settings that produced it: it is stored with
  its reason and never asked again (on a rerun, a Snakemake retry or
  ``--forcerun``) unless ``ask_refused_again`` is set; the question is left out
  of the pairs;
* a **failure** (tries run out, or the API turned down that question's own
  request) is kept in the store's failures log and asked again on every later
  run. The job fails when more than ``max_failed_fraction`` of its questions fail.

A hard error (meddpo.gemini.errors.HardGeminiError) stops the job at once with no
output; an unreachable endpoint (EndpointUnreachable) stops it once the requests
already at the server are answered and stored.

Every answer and refusal is appended to the answer store as it arrives, and
every request sent (with its tokens) to the store's request log, so a rerun asks
only for what is missing or failed and the usage adds up every request ever sent.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections import Counter
from collections.abc import Sequence

from meddpo.backends import JobContext, Request, ShardResult, in_batch_mode, sent_in_batch
from meddpo.gemini.client import (
    GeminiSettings,
    Outcome,
    RateLimiter,
    ask,
    estimate_cost,
    generation_config,
    load_api_key,
    make_client,
)
from meddpo.gemini.errors import (
    ClientErrorWatch,
    EndpointUnreachable,
    EndpointWatch,
    HardGeminiError,
    describe_error,
    host_port,
)
from meddpo.generation.answer_store import AnswerStore
from meddpo.generation.resume import PROGRESS_EVERY_S, ResumableJob

log = logging.getLogger(__name__)


class _ShardRequests:
    """The requests of one job: the client, its limits, the watches and what was counted."""

    def __init__(self, job: ResumableJob, settings: GeminiSettings, client, limiter, config, max_usd):
        self.job, self.settings, self.client = job, settings, client
        self.limiter, self.config, self.max_usd = limiter, config, max_usd
        self.semaphore = asyncio.Semaphore(settings.concurrency)
        self.usage: Counter = Counter()
        self.failures: list[dict] = []
        self.watch = ClientErrorWatch()
        # named in the stop's message when the error itself does not say where it tried to connect
        endpoint = settings.endpoint()
        self.reach = EndpointWatch(host_port(endpoint) if endpoint else "the SDK's default endpoint")
        self.prices = settings.prices()
        self.spent_before = 0.0
        if max_usd is not None and job.store:
            self.spent_before = records_cost(job.store.read_log("requests"), settings)
        self.capped: list[float] = []  # the spend when the cap stopped new requests (those in flight finish)

    def log_request(self, record: dict) -> None:
        """Count one request sent and its tokens, and append it to the store's request log."""
        self.usage["requests"] += 1
        self.usage["batch_requests"] += sent_in_batch(record)
        self.usage.update({k: v for k, v in record.items() if k.endswith("_tokens")})
        if self.job.store:
            self.job.store.append_log("requests", [record])

    async def one(self, question: dict) -> None:
        """Ask one question (unless the cost cap or an unreachable endpoint stopped the job) and keep it."""
        async with self.semaphore:
            if self.max_usd is not None:
                spent = self.spent_before + estimate_cost(self.usage, self.prices)
                if self.capped or spent >= self.max_usd:
                    self.capped.append(spent)
                    return
            if self.reach.stopped is not None:
                return  # the endpoint cannot be reached: left for the rerun
            try:
                outcome = await ask(
                    self.client,
                    self.limiter,
                    self.settings,
                    self.config,
                    question,
                    self.log_request,
                    self.reach,
                )
            except EndpointUnreachable:
                return  # raised once the requests already at the server are in
        self.keep(question, outcome)

    def keep(self, question: dict, outcome: Outcome) -> None:
        """Store one question's outcome (answer, refusal or failure); a hard client error stops the job."""
        if outcome.client_error is not None and self.watch.is_fatal(outcome.client_error):
            raise HardGeminiError(describe_error(outcome.client_error))
        if outcome.row is not None:
            self.watch.success()
            self.job.record([outcome.row])
        elif outcome.refusal is not None:
            self.watch.success()
            self.job.record_refusal({**outcome.refusal, "attempts": outcome.attempts})
        else:
            failure = {**outcome.failure, "attempts": outcome.attempts}
            if outcome.client_error is not None:
                log.warning("question %s: %s", question["id"], describe_error(outcome.client_error))
            self.failures.append(failure)
            self.job.record_failed([failure])

    def in_batches(self) -> None:
        """Batch mode: the questions left go to the Batch API (gemini_batch); closes the client and job."""
        from meddpo.gemini.batch import BatchRun

        try:
            if self.max_usd is not None and self.spent_before >= self.max_usd:
                raise HardGeminiError(
                    f"the cost cap is reached: about ${self.spent_before:.4f} spent under these settings, "
                    f"max_usd is ${self.max_usd:g}: raise max_usd and rerun to go on"
                )
            BatchRun(self.job, self.settings, self.client, self.config, self.log_request, self.keep).run()
        finally:
            self.client.close()
            self.job.close()

    async def ask_all(self) -> None:
        """Ask every question left; the first hard error cancels the rest. Closes the client and the job."""
        tasks = [asyncio.create_task(self.one(q)) for q in self.job.todo]
        try:
            if tasks:
                # the first hard error cancels everything else at once
                for future in asyncio.as_completed(tasks):
                    await future
            if self.reach.stopped is not None:
                raise EndpointUnreachable(self.reach.stopped)
            if self.capped:
                raise HardGeminiError(
                    f"the cost cap is reached: about ${max(self.capped):.4f} spent under these settings, "
                    f"max_usd is ${self.max_usd:g}; what was answered is kept: "
                    "raise max_usd and rerun to go on"
                )
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self.client.aio.aclose()
            self.job.close()


async def answer_with_gemini(
    questions: Sequence[dict],
    system_prompt: str,
    settings: GeminiSettings,
    api_key: str,
    *,
    store_root: str | os.PathLike | None = None,
    store_part: str = "answers",
    limiter: RateLimiter | None = None,
    progress_every_s: float = PROGRESS_EVERY_S,
    response_schema: dict | None = None,
    key_extra: dict | None = None,
    max_usd: float | None = None,
) -> tuple[list[dict], list[dict], dict]:
    """Answer every question not yet answered or refused. Returns ``(rows, left_out, usage)``.

    ``rows`` are the answers in question order; ``left_out`` lists each question
    without one as ``{id, reason, kind}``, kind ``refused`` (final, this job's or
    an earlier one's) or ``failed`` (asked again next time); ``usage`` counts the
    requests and tokens of this job. ``response_schema`` asks for JSON output;
    ``key_extra`` joins the answer store's key (a judge's own settings);
    ``max_usd`` stops the job, with what it has kept, once every request logged
    under these settings (this job's and earlier ones') has cost that much.
    """
    job = ResumableJob(
        questions,
        settings.text_settings(system_prompt, key_extra),
        store_root=store_root,
        store_part=store_part,
        progress_every_s=progress_every_s,
        ask_refused_again=settings.ask_refused_again,
    )
    _refuse_open_batches(job, settings)
    log.info(
        "Gemini %s: %d questions to request, %d in flight at most, %.0f requests/min",
        settings.model,
        len(job.todo),
        settings.concurrency,
        settings.requests_per_minute,
    )
    limiter = limiter or RateLimiter(settings.requests_per_minute)
    config = generation_config(settings, system_prompt, response_schema)
    client = make_client(api_key, settings)
    requests = _ShardRequests(job, settings, client, limiter, config, max_usd)
    if in_batch_mode(settings):
        requests.in_batches()  # blocking, in this thread: Ctrl-C stops it at once
    else:
        await requests.ask_all()
    rows = job.rows()
    left_out = _left_out(questions, requests.failures, job.refusals())
    usage = requests.usage
    usage["reused_from_store"] = len(questions) - len(job.todo)
    usage["unreached"] = requests.reach.attempts
    usage["log"] = str(job.store.log_path("failures")) if job.store else None
    return rows, left_out, dict(usage)


def _refuse_open_batches(job: ResumableJob, settings: GeminiSettings) -> None:
    """One line when a batch still open holds some of the job's questions: asking them would pay twice."""
    if not job.store:
        return
    from meddpo.gemini.batch import BATCH_LOG, refuse_open_batches

    try:
        own = job.store.part.name if in_batch_mode(settings) else None  # a batch job takes up its own
        refuse_open_batches(job.store.read_log(BATCH_LOG), {q["id"] for q in job.todo}, own)
    except HardGeminiError:
        job.close()
        raise


def _left_out(questions: Sequence[dict], failures: list[dict], refusals) -> list[dict]:
    """Each question without an answer, in question order: ``{id, reason, kind, attempts}``."""
    failed = {f["id"]: f for f in failures}
    refused = {r["id"]: r for r in refusals}
    left_out = []
    for question in questions:
        if question["id"] in refused:
            row = refused[question["id"]]
            left_out.append(
                {
                    "id": row["id"],
                    "reason": row["refused"],
                    "kind": "refused",
                    "attempts": row.get("attempts"),
                }
            )
        elif question["id"] in failed:
            left_out.append({**failed[question["id"]], "kind": "failed"})
    return left_out


USAGE_COUNTS = ("requests", "input_tokens", "output_tokens", "thinking_tokens")


def records_cost(records, settings: GeminiSettings) -> float:
    """US dollars of request-log records, each at the prices of the mode it was sent in (online or batch)."""
    by_mode: dict[bool, list[dict]] = {}
    for record in records:
        by_mode.setdefault(sent_in_batch(record), []).append(record)
    return round(
        sum(estimate_cost(_add_up(rows), settings.prices(batch)) for batch, rows in by_mode.items()), 6
    )


def _add_up(records) -> dict:
    """Requests and tokens of request-log records."""
    totals: Counter = Counter()
    for record in records:
        totals["requests"] += 1
        totals.update({key: record.get(key, 0) for key in USAGE_COUNTS[1:]})
    return {key: totals.get(key, 0) for key in USAGE_COUNTS}


def answer_shard(
    questions: Sequence[dict],
    system_prompt: str,
    settings: GeminiSettings,
    *,
    store_root: str | os.PathLike | None,
    store_part: str,
    progress_every_s: float = PROGRESS_EVERY_S,
    response_schema: dict | None = None,
    key_extra: dict | None = None,
    max_usd: float | None = None,
) -> tuple[list[dict], list[dict], dict, str | None]:
    """One shard job: ``(answers, left_out, usage, problem)``.

    ``usage`` adds up every request ever sent for the shard's questions (with the
    estimated cost); ``problem`` is the one-line reason the job must fail (too
    many failures, or too many refusals when that is set to fail), else None.
    """
    for name in ("httpx", "httpx2", "google_genai"):
        logging.getLogger(name).setLevel(logging.WARNING)
    api_key = load_api_key(settings.secrets_file)
    rows, left_out, this_job = asyncio.run(
        answer_with_gemini(
            questions,
            system_prompt,
            settings,
            api_key,
            store_root=store_root,
            store_part=store_part,
            progress_every_s=progress_every_s,
            response_schema=response_schema,
            key_extra=key_extra,
            max_usd=max_usd,
        )
    )
    store = (
        AnswerStore(store_root, settings.text_settings(system_prompt, key_extra), store_part)
        if store_root is not None
        else None
    )
    usage = _shard_totals(store, questions, settings, rows, left_out, this_job)
    return rows, left_out, usage, shard_problem(usage, settings, this_job.get("log"))


def _shard_totals(
    store: AnswerStore | None,
    questions: Sequence[dict],
    settings: GeminiSettings,
    rows: list[dict],
    left_out: list[dict],
    this_job: dict,
) -> dict:
    """The shard's usage (every request ever sent, the cost, this job's counts, the outcomes), logged."""
    if store is None:  # this job's own counts
        usage = {key: this_job.get(key, 0) for key in USAGE_COUNTS}
        usage["batch_requests"] = this_job.get("batch_requests", 0)
        usage["estimated_cost_usd"] = estimate_cost(usage, settings.prices())
    else:  # every request ever sent for these questions under these settings, from the request log
        ids = {q["id"] for q in questions}
        records = [record for record in store.read_log("requests") if record["id"] in ids]
        usage = _add_up(records)
        usage["batch_requests"] = sum(sent_in_batch(record) for record in records)
        usage["estimated_cost_usd"] = records_cost(records, settings)
    refused = [r for r in left_out if r["kind"] == "refused"]
    failed = [r for r in left_out if r["kind"] == "failed"]
    usage.update(
        requests_this_job=this_job.get("requests", 0),
        unreached_this_job=this_job.get("unreached", 0),
        reused_from_store=this_job["reused_from_store"],
        questions=len(questions),
        answered=len(rows),
        refused=len(refused),
        failed=len(failed),
        refusal_reasons=summarise_failures(refused),
        failure_reasons=summarise_failures(failed),
        model=settings.model,
    )
    log.info(
        "%d answered, %d refused %s, %d failed %s; %d requests (%d by this job), tokens in/out/thinking "
        "%d/%d/%d, estimated $%.4f",
        len(rows),
        len(refused),
        usage["refusal_reasons"],
        len(failed),
        usage["failure_reasons"],
        usage["requests"],
        usage["requests_this_job"],
        usage["input_tokens"],
        usage["output_tokens"],
        usage["thinking_tokens"],
        usage["estimated_cost_usd"],
    )
    return usage


def shard_problem(usage: dict, settings: GeminiSettings, failures_log: str | None) -> str | None:
    """Why the shard job must fail, in one line, or None.

    Failures (not final) above ``max_failed_fraction`` always fail it; refusals
    above ``max_refused_fraction`` only warn unless ``too_many_refusals`` is ``fail``.
    """
    questions = usage["questions"]
    if not questions:
        return None
    where = f"; the list is kept in {failures_log}" if failures_log else ""
    if usage["failed"] / questions > settings.max_failed_fraction:
        return (
            f"{usage['failed']} of {questions} questions failed ({usage['failure_reasons']}), more than "
            f"max_failed_fraction {settings.max_failed_fraction}{where}. "
            "Rerun to ask again for the failed ones only."
        )
    if usage["refused"] / questions > settings.max_refused_fraction:
        message = (
            f"{usage['refused']} of {questions} questions were refused ({usage['refusal_reasons']}), more "
            f"than max_refused_fraction {settings.max_refused_fraction}"
        )
        if settings.too_many_refusals == "fail":
            return message + "; refusals are final: see docs/gemini.md to ask again"
        log.warning("%s: they are left out of the pairs", message)
    return None


def summarise_failures(failures: Sequence[dict]) -> dict[str, int]:
    return dict(sorted(Counter(f["reason"] for f in failures).items()))


class GeminiBackend:
    """The Gemini shard job as a backend (meddpo.backends.ShardBackend); ``settings``: a Gemini block
    (teacher.gemini, judge.gemini) as a mapping or GeminiSettings."""

    @staticmethod
    def _settings(settings) -> GeminiSettings:
        return settings if isinstance(settings, GeminiSettings) else GeminiSettings(**settings)

    def answer_shard(
        self, questions: Sequence[dict], settings, request: Request, job: JobContext
    ) -> ShardResult:
        rows, left_out, usage, problem = answer_shard(
            questions,
            request.system_prompt,
            self._settings(settings),
            store_root=job.store_root,
            store_part=job.store_part,
            progress_every_s=job.progress_every_s,
            response_schema=request.response_schema,
            key_extra=request.key_extra,
            max_usd=request.max_usd,
        )
        return ShardResult(answers=rows, left_out=left_out, usage=usage, problem=problem)

    def store_key(self, settings, request: Request) -> dict:
        return self._settings(settings).text_settings(request.system_prompt, request.key_extra)


GEMINI = GeminiBackend()
