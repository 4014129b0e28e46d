"""The Gemini shard job: chosen answers from Gemini, concurrent, rate-limited, retrying, resumable.

Holds the job that answers shards' questions through the Gemini client and keeps
what it gets in the answer store: ``GEMINI``, the backend of the registry
(meddpo.backends), ``answer_shard`` / ``answer_shards``, ``answer_with_gemini``.
The shard's usage and the reason it fails are in meddpo.gemini.usage.

Online (mode ``online``), one async client per job answers the shards in turn: at
most ``concurrency`` calls are in flight and calls start no faster than
``requests_per_minute`` allows (retries count too). In batch mode every shard
given to the job is one Batch API job, all created at once and waited for
together (meddpo.gemini.batch_run). What the client makes of each question:

* an **answer** is stored;
* a **refusal** is final for the settings that produced it: it is stored with
  its reason and never asked again (on a rerun, a Snakemake retry or
  ``--forcerun``) unless ``ask_refused_again`` is set; the question is left out
  of the pairs;
* a **failure** (tries run out, or the API turned down that question's own
  request) is kept in the store's failures log and asked again on every later
  run. A shard fails when more than ``max_failed_fraction`` of its questions fail.

Every answer and refusal records the model that served it, and the job stops with
one line when that is not the configured model (meddpo.gemini.served).

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
from meddpo.gemini.served import ServedModels
from meddpo.gemini.usage import FLAG_COUNTS, records_cost, shard_problem, shard_records, shard_totals
from meddpo.generation.resume import PROGRESS_EVERY_S, ResumableJob

log = logging.getLogger(__name__)


class _ShardRequests:
    """The requests of one shard of a job: the shared client, limits and watches, and what was counted."""

    def __init__(self, job: ResumableJob, settings: GeminiSettings, client, limiter, config, max_usd, served):
        self.job, self.settings, self.client = job, settings, client
        self.limiter, self.config, self.max_usd = limiter, config, max_usd
        self.served: ServedModels = served
        self.semaphore = asyncio.Semaphore(settings.concurrency)
        self.usage: Counter = Counter()
        self.failures: list[dict] = []
        self.watch = ClientErrorWatch()
        # named in the stop's message when the error itself does not say where it tried to connect
        endpoint = settings.endpoint()
        self.reach = EndpointWatch(host_port(endpoint) if endpoint else "the SDK's default endpoint")
        self.prices = settings.prices()
        if max_usd is not None and self.prices is None:
            billed_as = settings.accept_served_model or settings.model
            raise HardGeminiError(
                f"a cost cap (max_usd {max_usd:g}) needs the price of {billed_as}: add gemini_prices."
                f"{billed_as} (input_per_million, output_per_million, batch_input_per_million, "
                "batch_output_per_million, written), or set the cap to null"
            )
        self.spent_before = 0.0
        if max_usd is not None and job.store:
            self.spent_before = records_cost(job.store.read_log("requests"), settings) or 0.0
        self.capped: list[float] = []  # the spend when the cap stopped new requests (those in flight finish)

    def log_request(self, record: dict) -> None:
        """Count one request sent (or batch entry returned) and its tokens; append it to the request log."""
        self.usage["requests"] += 1
        self.usage["batch_requests"] += sent_in_batch(record)
        self.usage.update({k: v for k, v in record.items() if k.endswith("_tokens")})
        self.usage.update({name: 1 for flag, name in FLAG_COUNTS.items() if record.get(flag)})
        if self.job.store:
            self.job.store.append_log("requests", [record])

    async def one(self, question: dict) -> None:
        """Ask one question (unless the cost cap or an unreachable endpoint stopped the job) and keep it."""
        async with self.semaphore:
            if self.max_usd is not None:
                spent = self.spent_before + (estimate_cost(self.usage, self.prices) or 0.0)
                if self.capped or spent >= self.max_usd:
                    self.capped.append(spent)
                    return
            if self.reach.stopped is not None or self.served.problem is not None:
                return  # the endpoint cannot be reached, or a served model stops the job: left for the rerun
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
        """Store one question's outcome (answer, refusal or failure), then check the model that served it;
        a hard client error, or a served model the rule refuses, stops the job."""
        if outcome.client_error is not None and self.watch.is_fatal(outcome.client_error):
            raise HardGeminiError(describe_error(outcome.client_error))
        if outcome.row is not None:
            self.watch.success()
            self.job.record([outcome.row])
            self.served.count(question["id"], outcome.row.get("served_model"))
        elif outcome.refusal is not None:
            self.watch.success()
            self.job.record_refusal({**outcome.refusal, "attempts": outcome.attempts})
            self.served.count(question["id"], outcome.refusal.get("served_model"))
        else:
            failure = {**outcome.failure, "attempts": outcome.attempts}
            if outcome.client_error is not None:
                log.warning("question %s: %s", question["id"], describe_error(outcome.client_error))
            self.failures.append(failure)
            self.job.record_failed([failure])

    def check_cap(self) -> None:
        """Batch mode: stop before any batch once the requests logged under these settings cost max_usd."""
        if self.max_usd is not None and self.spent_before >= self.max_usd:
            raise HardGeminiError(
                f"the cost cap is reached: about ${self.spent_before:.4f} spent under these settings, "
                f"max_usd is ${self.max_usd:g}: raise max_usd and rerun to go on"
            )

    async def ask_all(self) -> None:
        """Ask every question left; the first hard error cancels the rest."""
        tasks = [asyncio.create_task(self.one(q)) for q in self.job.todo]
        try:
            if tasks:
                # the first hard error cancels everything else at once
                for future in asyncio.as_completed(tasks):
                    await future
            if self.reach.stopped is not None:
                raise EndpointUnreachable(self.reach.stopped)
            if self.served.problem is not None:
                raise HardGeminiError(self.served.problem)
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


def _in_batches(shards: list[_ShardRequests], settings: GeminiSettings, client, config, prompt: str) -> None:
    """Batch mode: every shard's questions left go to the Batch API at once (gemini.batch_run)."""
    from meddpo.gemini.batch import Part
    from meddpo.gemini.batch_api import BatchApi
    from meddpo.gemini.batch_run import BatchRun

    for shard in shards:
        shard.check_cap()
    parts = [Part(s.job, settings, s.keep, s.log_request, prompt) for s in shards]
    served = shards[0].served if shards else None
    BatchRun(
        parts, BatchApi(client, settings), settings, config, stop=lambda: served and served.problem
    ).run()


def _open_jobs(shards, settings: GeminiSettings, text_settings: dict, store_root, progress_every_s) -> list:
    """One resumable job per shard (each holds its part of the store), checked against open batches."""
    jobs: list[ResumableJob] = []
    try:
        for questions, part in shards:
            jobs.append(
                ResumableJob(
                    questions,
                    text_settings,
                    store_root=store_root,
                    store_part=part,
                    progress_every_s=progress_every_s,
                    ask_refused_again=settings.ask_refused_again,
                )
            )
        _refuse_open_batches(jobs, settings)
    except BaseException:
        for job in jobs:
            job.close()
        raise
    return jobs


async def answer_parts(
    shards: Sequence[tuple[Sequence[dict], str]],
    system_prompt: str,
    settings: GeminiSettings,
    api_key: str,
    *,
    store_root: str | os.PathLike | None = None,
    limiter: RateLimiter | None = None,
    progress_every_s: float = PROGRESS_EVERY_S,
    response_schema: dict | None = None,
    key_extra: dict | None = None,
    max_usd: float | None = None,
) -> list[tuple[list[dict], list[dict], dict]]:
    """Answer every question not yet answered or refused of each shard ``(questions, store part)``.

    Returns ``(rows, left_out, usage)`` per shard, as answer_with_gemini does for one.
    """
    text_settings = settings.text_settings(system_prompt, key_extra)
    jobs = _open_jobs(shards, settings, text_settings, store_root, progress_every_s)
    block = "judge.gemini" if key_extra and "judge" in key_extra else "teacher.gemini"
    try:
        stored = [*jobs[0].stored.values(), *jobs[0].refused.values()] if jobs else []
        served = ServedModels(settings.model, settings.accept_served_model, block, stored)
    except HardGeminiError:
        for job in jobs:
            job.close()
        raise
    log.info(
        "Gemini %s (%s): %d questions to request in %d shard(s), %d in flight at most, %.0f requests/min",
        settings.model,
        settings.mode,
        sum(len(job.todo) for job in jobs),
        len(jobs),
        settings.concurrency,
        settings.requests_per_minute,
    )
    limiter = limiter or RateLimiter(settings.requests_per_minute)
    config = generation_config(settings, system_prompt, response_schema)
    client = make_client(api_key, settings)
    requests: list[_ShardRequests] = []
    try:
        requests += [_ShardRequests(job, settings, client, limiter, config, max_usd, served) for job in jobs]
        if in_batch_mode(settings):
            # blocking, in this thread: Ctrl-C stops it at once
            _in_batches(requests, settings, client, config, system_prompt)
        else:
            for shard in requests:
                await shard.ask_all()
    finally:
        if in_batch_mode(settings):
            client.close()
        else:
            await client.aio.aclose()
        for job in jobs:
            job.close()
    return [_result(shard, questions) for shard, (questions, _) in zip(requests, shards, strict=True)]


def _result(shard: _ShardRequests, questions: Sequence[dict]) -> tuple[list[dict], list[dict], dict]:
    job = shard.job
    rows = job.rows()
    usage = shard.usage
    usage["reused_from_store"] = len(questions) - len(job.todo)
    usage["unreached"] = shard.reach.attempts
    usage["log"] = str(job.store.log_path("failures")) if job.store else None
    return rows, _left_out(questions, shard.failures, job.refusals()), dict(usage)


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
    [result] = await answer_parts(
        [(questions, store_part)],
        system_prompt,
        settings,
        api_key,
        store_root=store_root,
        limiter=limiter,
        progress_every_s=progress_every_s,
        response_schema=response_schema,
        key_extra=key_extra,
        max_usd=max_usd,
    )
    return result


def _refuse_open_batches(jobs: list[ResumableJob], settings: GeminiSettings) -> None:
    """One line when a batch still open holds some of the jobs' questions: asking them would pay twice.

    A batch-mode job takes up the open batches of its own shards' parts."""
    from meddpo.gemini.batch import BATCH_LOG, refuse_open_batches

    stored = [job for job in jobs if job.store]
    if not stored:
        return
    own = {job.store.part.name for job in stored} if in_batch_mode(settings) else set()
    ids = {q["id"] for job in stored for q in job.todo}
    refuse_open_batches(stored[0].store.read_log(BATCH_LOG), ids, own)


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


def answer_shards(
    shards: Sequence[tuple[Sequence[dict], str]],
    system_prompt: str,
    settings: GeminiSettings,
    *,
    store_root: str | os.PathLike | None,
    progress_every_s: float = PROGRESS_EVERY_S,
    response_schema: dict | None = None,
    key_extra: dict | None = None,
    max_usd: float | None = None,
) -> list[tuple[list[dict], list[dict], dict, str | None]]:
    """One job for shards ``(questions, store part)``: ``(answers, left_out, usage, problem)`` per shard.

    ``usage`` adds up every request ever sent for the shard's questions (with the
    estimated cost); ``problem`` is the one-line reason the shard must fail (too
    many failures, or too many refusals when that is set to fail), else None.
    """
    for name in ("httpx", "httpx2", "google_genai"):
        logging.getLogger(name).setLevel(logging.WARNING)
    api_key = load_api_key(settings.secrets_file)
    results = asyncio.run(
        answer_parts(
            shards,
            system_prompt,
            settings,
            api_key,
            store_root=store_root,
            progress_every_s=progress_every_s,
            response_schema=response_schema,
            key_extra=key_extra,
            max_usd=max_usd,
        )
    )
    out = []
    for (questions, part), (rows, left_out, this_job) in zip(shards, results, strict=True):
        records = None
        if store_root is not None:
            from meddpo.gemini.batch import BATCH_LOG, batch_history
            from meddpo.generation.answer_store import AnswerStore

            store = AnswerStore(store_root, settings.text_settings(system_prompt, key_extra), part)
            own = {b.name for b in batch_history(store.read_log(BATCH_LOG)) if b.part == store.part.name}
            records = shard_records(store, {q["id"] for q in questions}, own)
        usage = shard_totals(records, questions, settings, rows, left_out, this_job)
        out.append((rows, left_out, usage, shard_problem(usage, settings, this_job.get("log"))))
    return out


def answer_shard(
    questions: Sequence[dict],
    system_prompt: str,
    settings: GeminiSettings,
    *,
    store_root: str | os.PathLike | None,
    store_part: str,
    **options,
) -> tuple[list[dict], list[dict], dict, str | None]:
    """One shard job (answer_shards with one shard): ``(answers, left_out, usage, problem)``."""
    [result] = answer_shards(
        [(questions, store_part)], system_prompt, settings, store_root=store_root, **options
    )
    return result


class GeminiBackend:
    """The Gemini shard job as a backend (meddpo.backends.ShardBackend); ``settings``: a Gemini block
    (teacher.gemini, judge.gemini) as a mapping or GeminiSettings."""

    @staticmethod
    def _settings(settings) -> GeminiSettings:
        return settings if isinstance(settings, GeminiSettings) else GeminiSettings(**settings)

    def answer_shard(
        self, questions: Sequence[dict], settings, request: Request, job: JobContext
    ) -> ShardResult:
        [result] = self.answer_shards([(questions, job)], settings, request)
        return result

    def answer_shards(
        self, shards: Sequence[tuple[Sequence[dict], JobContext]], settings, request: Request
    ) -> list[ShardResult]:
        """Several shards in one job (batch mode: their batches are waited for together); their
        contexts must share the store and progress interval, each has its own store part."""
        first = shards[0][1]
        results = answer_shards(
            [(questions, job.store_part) for questions, job in shards],
            request.system_prompt,
            self._settings(settings),
            store_root=first.store_root,
            progress_every_s=first.progress_every_s,
            response_schema=request.response_schema,
            key_extra=request.key_extra,
            max_usd=request.max_usd,
        )
        return [
            ShardResult(answers=rows, left_out=left_out, usage=usage, problem=problem)
            for rows, left_out, usage, problem in results
        ]

    def store_key(self, settings, request: Request) -> dict:
        return self._settings(settings).text_settings(request.system_prompt, request.key_extra)


GEMINI = GeminiBackend()
