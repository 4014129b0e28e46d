"""What a Gemini shard cost and how it went: its usage file and the one-line reason it must fail.

A shard's usage adds up every request ever logged for its questions under its
settings (this job's, and those of every earlier, killed or failed job), from the
answer store's request log, so it matches what the server billed: each line is one
request, or one entry a batch returned (a duplicate entry, and an entry for a key
no request had, count too; they are logged under the batch that returned them).
A reply that came without token counts is counted in ``usage_missing`` and priced at
its estimated tokens (meddpo.gemini.client.response_usage), never as free.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence

from meddpo.backends import sent_in_batch
from meddpo.gemini.client import GeminiSettings, estimate_cost
from meddpo.gemini.served import served_counts

log = logging.getLogger(__name__)

USAGE_COUNTS = ("requests", "input_tokens", "output_tokens", "thinking_tokens")
# request-log flags, counted by name: a line whose reply had no token counts, a batch's second
# entry for a key, an entry for a key no request of the batch had
FLAG_COUNTS = {
    "usage_missing": "usage_missing",
    "duplicate": "duplicate_results",
    "unknown_key": "unknown_results",
}


def add_up(records: Iterable[Mapping]) -> dict:
    """Requests, tokens and flagged lines of request-log records."""
    totals: Counter = Counter()
    for record in records:
        totals["requests"] += 1
        totals.update({key: record.get(key, 0) for key in USAGE_COUNTS[1:]})
        totals.update({name: 1 for flag, name in FLAG_COUNTS.items() if record.get(flag)})
    return {key: totals.get(key, 0) for key in (*USAGE_COUNTS, *FLAG_COUNTS.values())}


def records_cost(records: Iterable[Mapping], settings: GeminiSettings) -> float | None:
    """US dollars of request-log records, each at the prices of the mode it was sent in (online or
    batch); None when gemini_prices has no price for the model."""
    if settings.prices() is None:
        return None
    by_mode: dict[bool, list[Mapping]] = {}
    for record in records:
        by_mode.setdefault(sent_in_batch(record), []).append(record)
    costs = [estimate_cost(add_up(rows), settings.prices(batch)) or 0.0 for batch, rows in by_mode.items()]
    return round(sum(costs), 6)


def shard_records(store, ids: set[str], own_batches: set[str]) -> list[dict]:
    """The request-log lines of a shard: its questions' lines, and the lines of entries for keys nobody
    asked that its own batches (``own_batches``, their names) returned."""
    return [
        record
        for record in store.read_log("requests")
        if record["id"] in ids or (record.get("unknown_key") and record.get("batch") in own_batches)
    ]


def shard_totals(
    records: list[dict] | None,
    questions: Sequence[dict],
    settings: GeminiSettings,
    rows: list[dict],
    left_out: list[dict],
    this_job: dict,
) -> dict:
    """The shard's usage (every request ever logged for it, the cost, this job's counts, the outcomes,
    the models that served its answers), logged in one line. ``records`` None: no store, this job's counts."""
    if records is None:
        usage = {key: this_job.get(key, 0) for key in (*USAGE_COUNTS, *FLAG_COUNTS.values())}
        usage["batch_requests"] = this_job.get("batch_requests", 0)
        usage["estimated_cost_usd"] = estimate_cost(usage, settings.prices())
    else:
        usage = add_up(records)
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
        served_models=served_counts(rows),
    )
    if usage["estimated_cost_usd"] is None:
        log.warning("gemini_prices has no price for %s: no cost estimate", settings.model)
    log.info(
        "%d answered, %d refused %s, %d failed %s; %d requests (%d by this job), tokens in/out/thinking "
        "%d/%d/%d, estimated $%s; served by %s",
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
        "?" if usage["estimated_cost_usd"] is None else f"{usage['estimated_cost_usd']:.4f}",
        usage["served_models"],
    )
    if usage["usage_missing"]:
        log.warning(
            "%d replies came without token counts: their tokens are estimated", usage["usage_missing"]
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
