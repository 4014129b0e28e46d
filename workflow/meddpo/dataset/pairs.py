"""Join questions with their rejected and chosen answers into DPO rows.

A row is ``{id, source, category, question_type, question, prompt, chosen,
rejected, meta}`` (rows.py: its fields, meta keys and check): ``prompt`` is the
training system prompt, a blank line, ``User question:``, a newline and the
question (see chat_format.training_prompt); any DPO trainer that reads
prompt/chosen/rejected strings (e.g. TRL's DPOTrainer) takes it unchanged. A
question without a non-empty answer from both models is left out and counted in
the stats.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence

from meddpo.dataset.rows import PAIR_FIELDS as PAIR_FIELDS  # the merge command reads it here
from meddpo.dataset.verdicts import attach
from meddpo.generation.chat_format import training_prompt
from meddpo.jsonl import DataError

QUESTION_FIELDS = ("id", "question", "source", "category", "question_type")
ANSWER_FIELDS = ("id", "text", "finish_reason", "model")
STAT_KEYS = (
    "questions",
    "missing_rejected",
    "missing_chosen",
    "empty_rejected",
    "empty_chosen",
    "pairs",
)


def _index_answers(rows: Iterable[dict], role: str) -> dict[str, dict]:
    index: dict[str, dict] = {}
    for row in rows:
        if row["id"] in index:
            raise DataError(f"{role} answers: id {row['id']!r} appears twice")
        index[row["id"]] = row
    return index


def _meta(rejected: dict, chosen: dict) -> dict:
    """The meta the pairs step writes (rows.META, in its order)."""
    return {
        "teacher_model": chosen["model"],
        "teacher_revision": chosen.get("revision"),
        "rejected_model": rejected["model"],
        "rejected_revision": rejected.get("revision"),
        "chosen_finish_reason": chosen["finish_reason"],
        "rejected_finish_reason": rejected["finish_reason"],
        "chosen_new_tokens": chosen.get("new_tokens"),
        "rejected_new_tokens": rejected.get("new_tokens"),
        "chosen_prompt_tokens": chosen.get("prompt_tokens"),
        "rejected_prompt_tokens": rejected.get("prompt_tokens"),
        "chosen_sampling": chosen.get("sampling"),
        "rejected_sampling": rejected.get("sampling"),
    }


def build_pairs(
    questions: Sequence[dict],
    rejected_rows: Iterable[dict],
    chosen_rows: Iterable[dict],
    system_prompt: str,
    chosen_failures: Iterable[dict] = (),
) -> tuple[list[dict], dict]:
    """DPO rows for one shard, sorted by id, and the counts of what was left out.

    ``chosen_failures`` ({id, reason} rows from the Gemini teacher) explain some of
    the missing chosen answers; their reasons are counted in the stats.
    """
    rejected = _index_answers(rejected_rows, "rejected")
    chosen = _index_answers(chosen_rows, "chosen")
    counts: Counter = Counter()
    pairs = []
    for question in questions:
        counts["questions"] += 1
        r, c = rejected.get(question["id"]), chosen.get(question["id"])
        missing = False
        for role, answer in (("rejected", r), ("chosen", c)):
            if answer is None:
                counts[f"missing_{role}"] += 1
                missing = True
            elif not answer["text"].strip():
                counts[f"empty_{role}"] += 1
                missing = True
        if missing:
            continue
        pairs.append(
            {
                "id": question["id"],
                "source": question["source"],
                "category": question["category"],
                "question_type": question["question_type"],
                "question": question["question"],
                "prompt": training_prompt(system_prompt, question["question"]),
                "chosen": c["text"],
                "rejected": r["text"],
                "meta": _meta(r, c),
            }
        )
    counts["pairs"] = len(pairs)
    pairs.sort(key=lambda row: row["id"])
    stats = {key: counts.get(key, 0) for key in STAT_KEYS}
    chosen_failures = list(chosen_failures)
    stats["chosen_failure_reasons"] = dict(sorted(Counter(f["reason"] for f in chosen_failures).items()))
    stats["chosen_left_out"] = dict(sorted(Counter(f.get("kind", "failed") for f in chosen_failures).items()))
    return pairs, stats


def check_complete(
    questions: Sequence[dict],
    answers: Iterable[dict],
    path: str,
    accounted: Iterable[dict] = (),
    rerun: tuple[str, str] = ("snakemake", ""),
) -> None:
    """Every question of the shard has a row in the answer file (or a recorded refusal or failure).

    A shortfall means the file was cut or belongs to another run: one line naming the file and
    the command that redoes that shard: ``rerun``'s Snakemake program and the run's options (its
    cores, profile, config files and --config values), so that it runs as printed.
    """
    wanted = {q["id"] for q in questions}
    have = {row["id"] for row in answers} | {row["id"] for row in accounted}
    missing, foreign = wanted - have, have - wanted
    program, options = rerun
    redo = f"redo this shard with: {program} --forcerun {path}" + (f" {options}" if options else "")
    if missing:
        raise DataError(
            f"{path}: {len(missing)} of {len(wanted)} ids missing (the file was cut or is stale, or a "
            f"teacher's failures file was not given); {redo}"
        )
    if foreign:
        raise DataError(
            f"{path}: {len(foreign)} ids that are not in this shard (e.g. {sorted(foreign)[0]}); {redo}"
        )


USAGE_KEYS = (
    "requests",
    "batch_requests",  # of those, the ones sent in batch mode (at batch prices)
    "input_tokens",
    "output_tokens",
    "thinking_tokens",
    "requests_this_job",
    "reused_from_store",
    "refused",
    "failed",
    "estimated_cost_usd",
    "usage_missing",  # replies without token counts: their tokens are estimates
    "duplicate_results",  # batch entries that repeated a key, billed all the same
    "unknown_results",  # batch entries for keys no request had, billed all the same
)


def add_up_usage(usages: Sequence[dict]) -> dict:
    """Usage summaries of several jobs of one judge: numbers added up, names kept, counts merged."""
    total: dict = {}
    for usage in usages:
        for key, value in usage.items():
            if isinstance(value, bool) or value is None:
                continue
            if isinstance(value, (int, float)):
                total[key] = round(total.get(key, 0) + value, 6)
            elif isinstance(value, dict):
                merged = Counter(total.get(key) or {})
                merged.update({k: v for k, v in value.items() if isinstance(v, int)})
                total[key] = dict(sorted(merged.items()))
            elif isinstance(value, str) and key in ("kind", "model", "backend"):
                total[key] = value
    return total


def merge_pair_shards(
    shards: Sequence[tuple[list[dict], dict]],
    teacher_usage: Sequence[dict] = (),
    judge_verdicts: dict[str, list[dict]] | None = None,
    judge_usage: Sequence[dict] = (),
) -> tuple[list[dict], dict]:
    """Concatenate per-shard pairs (sorted by id, ids checked unique) and add up their stats.

    ``teacher_usage`` (one Gemini usage summary per shard) adds requests, tokens
    and estimated cost of the run to the stats. ``judge_verdicts`` (verdict rows
    by file name) puts ``meta.judge`` on every pair (status ``off`` without a
    judge); ``judge_usage`` adds up each judge's usage.
    """
    rows = [row for shard_rows, _ in shards for row in shard_rows]
    rows = attach(rows, judge_verdicts or {})
    rows.sort(key=lambda row: row["id"])
    for before, after in zip(rows, rows[1:], strict=False):
        if before["id"] == after["id"]:
            raise DataError(f"pair id {after['id']!r} appears in two shards")
    totals = Counter()
    for _, stats in shards:
        totals.update({key: stats.get(key, 0) for key in STAT_KEYS})
    stats = {key: totals.get(key, 0) for key in STAT_KEYS}
    stats["shards"] = len(shards)
    for key in ("chosen_failure_reasons", "chosen_left_out"):
        reasons = Counter()
        for _, shard_stats in shards:
            reasons.update(shard_stats.get(key, {}))
        stats[key] = dict(sorted(reasons.items()))
    if teacher_usage:
        totals = Counter()
        for usage in teacher_usage:
            totals.update({key: usage.get(key) or 0 for key in USAGE_KEYS})
        stats["teacher_usage"] = {key: round(totals[key], 6) for key in USAGE_KEYS}
        if any(usage.get("estimated_cost_usd", 0) is None for usage in teacher_usage):
            stats["teacher_usage"]["estimated_cost_usd"] = None  # a model without a price: no total
        served = Counter()
        for usage in teacher_usage:
            served.update(usage.get("served_models") or {})
        if served:  # the model each answer's reply named, with its count
            stats["teacher_usage"]["served_models"] = dict(sorted(served.items()))
    if judge_usage:
        kinds = sorted({usage["kind"] for usage in judge_usage})
        stats["judge_usage"] = {
            kind: add_up_usage([usage for usage in judge_usage if usage["kind"] == kind]) for kind in kinds
        }
    stats["finish_reasons"] = {
        role: dict(sorted(Counter(row["meta"][f"{role}_finish_reason"] for row in rows).items()))
        for role in ("chosen", "rejected")
    }
    return rows, stats
