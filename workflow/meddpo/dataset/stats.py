"""The statistics of a DPO pairs file: counts at every stage, drops and flags, lengths, truncation,
per category and question type, generation throughput and what the judge found, as one JSON-able dict.

Works on the workflow's own output (with the question and pair counts of the
earlier stages, job benchmarks and finish reasons) and on any pairs file of the
same layout, including the older one without finish reasons (truncation is then
inferred from text that stops mid-sentence, see quality.truncated).

Imports the quality checks, the row format (for the meta keys' old names), the settings'
defaults, the JSONL reader and the judge's verdict summaries; never the plots or the report
(they read what this module builds).
"""

from __future__ import annotations

import csv
import statistics
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path

from meddpo.config.settings import default
from meddpo.dataset.quality import FLAGS, truncated
from meddpo.dataset.rows import meta_value
from meddpo.dataset.verdicts import KINDS, demo_judging, judge_summary, self_judging

# how the report and the card name a pair whose source row had no question type / category
NO_TYPE = "(no type)"
NO_CATEGORY = "(no category)"


def category_of(row: Mapping) -> str:
    return row.get("category") or NO_CATEGORY


def question_type_of(row: Mapping) -> str:
    return row.get("question_type") or NO_TYPE


def _median(values: Sequence[float]) -> float | None:
    return round(float(statistics.median(values)), 1) if values else None


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 2) if a and b else None


def _lengths(rows: Sequence[dict], role: str) -> dict:
    chars = [len(r.get(role) or "") for r in rows]
    tokens = [
        r["meta"][f"{role}_new_tokens"]
        for r in rows
        if isinstance((r.get("meta") or {}).get(f"{role}_new_tokens"), int)
    ]
    return {
        "median_chars": _median(chars),
        "mean_chars": round(statistics.fmean(chars), 1) if chars else None,
        "p90_chars": sorted(chars)[int(0.9 * (len(chars) - 1))] if chars else None,
        "median_tokens": _median(tokens),
    }


def throughput_per_shard(
    benchmarks: Mapping[str, Sequence[Path]], answers: Mapping[str, Sequence[Path]]
) -> list[dict]:
    """New tokens per second of each generation job, from its benchmark file and its answers.

    Only the answers the job itself generated count: those ``created`` after the
    job started (the benchmark file's time less the job's seconds). Answers it
    took from the answer store made no tokens in that job.
    """
    import os

    from meddpo.jsonl import read_jsonl

    rows = []
    for role, bench_paths in benchmarks.items():
        by_name = {Path(p).stem: p for p in answers.get(role, [])}
        for bench in sorted(bench_paths):
            with open(bench, encoding="utf-8") as handle:
                record = next(csv.DictReader(handle, delimiter="\t"))
            seconds = float(record["s"])
            answer_path = by_name.get(Path(bench).stem)
            answered = read_jsonl(answer_path) if answer_path else []
            started = os.path.getmtime(bench) - seconds - 1.0
            generated = [a for a in answered if a.get("created", started) >= started]
            new_tokens = sum(int(a.get("new_tokens") or 0) for a in generated)
            rows.append(
                {
                    "role": role,
                    "shard": Path(bench).stem,
                    "seconds": round(seconds, 1),
                    "answers": len(answered),
                    "generated": len(generated),
                    "new_tokens": new_tokens,
                    "new_tokens_per_s": round(new_tokens / seconds, 1) if seconds else None,
                    "max_rss_mb": float(record.get("max_rss") or 0) or None,
                }
            )
    return rows


def _answer_verdicts(rows: Sequence[dict], kind: str) -> dict:
    """Per role: verdicts of one judge by status, unsafe labels and the mean score of the judged ones."""
    out = {}
    for role in ("chosen", "rejected"):
        verdicts = [((r.get("meta") or {}).get("judge") or {}).get(role, {}).get(kind) for r in rows]
        verdicts = [v for v in verdicts if v]
        judged = [v for v in verdicts if v["status"] == "judged"]
        out[role] = {
            "answers": len(verdicts),
            "judged": len(judged),
            "unparseable": sum(v["status"] == "unparseable" for v in verdicts),
            "failed": sum(v["status"] == "failed" for v in verdicts),
            "mean_score": round(statistics.mean(v["score"] for v in judged), 3) if judged else None,
        }
        if kind == "classifier":
            out[role]["unsafe"] = sum(v.get("label") == "unsafe" for v in judged)
            out[role]["controversial"] = sum(v.get("label") == "controversial" for v in judged)
    return out


def judge_stats(
    every: Sequence[dict],
    min_margin: float,
    pair_stats: Mapping | None = None,
) -> dict | None:
    """What the judge found, for the report; None when no pair was judged (judge off, or an older file)."""
    judged_rows = [
        r for r in every if ((r.get("meta") or {}).get("judge") or {}).get("status", "off") != "off"
    ]
    if not judged_rows:
        return None
    judges: dict[str, dict] = {}
    for row in judged_rows:
        judges.update(row["meta"]["judge"].get("judges") or {})

    def grouped(name_of) -> dict:
        return {
            name: judge_summary([r for r in every if name_of(r) == name], min_margin)
            for name in sorted({name_of(r) for r in every})
        }

    teachers = sorted({(r.get("meta") or {}).get("teacher_model") for r in every} - {None})
    rejected = sorted({meta_value(r.get("meta") or {}, "rejected_model") for r in every} - {None})
    return {
        "min_margin": min_margin,
        "judges": judges,
        "summary": judge_summary(every, min_margin),
        "per_category": grouped(category_of),
        "per_question_type": grouped(question_type_of),
        "answers": {kind: _answer_verdicts(every, kind) for kind in KINDS if kind in judges},
        "margins": sorted(
            r["meta"]["judge"]["margin"] for r in judged_rows if r["meta"]["judge"]["status"] == "judged"
        ),
        "usage": (pair_stats or {}).get("judge_usage"),
        "notes": self_judging(teachers, rejected, judges) + demo_judging(judges),
    }


def _stages(
    every: Sequence[dict],
    kept: Sequence[dict],
    dropped: Sequence[dict],
    question_stats: Mapping | None,
    pair_stats: Mapping | None,
) -> dict:
    """The count at every stage, from the questions read to the pairs kept (None: not known)."""
    picked = (question_stats or {}).get("picked")
    left_out = None
    if pair_stats:
        left_out = pair_stats["questions"] - pair_stats["pairs"]
    return {
        "questions_read": (question_stats or {}).get("read"),
        # changed, not dropped: invisible characters (NUL, bidi overrides, ...) taken out
        "questions_with_invisible_characters_removed": (question_stats or {}).get("invisible_removed"),
        "dropped_empty_question": (question_stats or {}).get("dropped_empty"),
        "dropped_not_text_question": (question_stats or {}).get("dropped_not_text"),
        "dropped_short_question": (question_stats or {}).get("dropped_short"),
        "dropped_long_question": (question_stats or {}).get("dropped_long"),
        "dropped_duplicate_question": (question_stats or {}).get("dropped_duplicate"),
        "after_cleaning_and_dedupe": (question_stats or {}).get("kept"),
        "picked": picked,
        "answered_rejected": (
            pair_stats["questions"] - pair_stats["missing_rejected"] - pair_stats["empty_rejected"]
        )
        if pair_stats
        else None,
        "answered_chosen": (
            pair_stats["questions"] - pair_stats["missing_chosen"] - pair_stats["empty_chosen"]
        )
        if pair_stats
        else None,
        "left_out_missing_or_failed_answer": left_out,
        "pairs_before_filter": len(every),
        "pairs_kept": len(kept),
        "pairs_dropped": len(dropped),
    }


def _category_stats(rows: Sequence[dict], kept_rows: Sequence[dict], picked: int | None) -> dict:
    """The pairs of one category: picked, kept, dropped, median lengths and truncation."""
    chosen_cut = sum(truncated(r, "chosen") for r in rows)
    rejected_cut = sum(truncated(r, "rejected") for r in rows)
    chosen_len, rejected_len = _lengths(rows, "chosen"), _lengths(rows, "rejected")
    return {
        "picked": picked,
        "pairs": len(rows),
        "kept": len(kept_rows),
        "dropped": len(rows) - len(kept_rows),
        "drop_rate": round((len(rows) - len(kept_rows)) / len(rows), 3) if rows else None,
        "chosen_median_chars": chosen_len["median_chars"],
        "rejected_median_chars": rejected_len["median_chars"],
        "length_ratio_chosen_to_rejected": _ratio(chosen_len["median_chars"], rejected_len["median_chars"]),
        "chosen_truncated": chosen_cut,
        "rejected_truncated": rejected_cut,
        "chosen_truncation_rate": round(chosen_cut / len(rows), 3) if rows else None,
        "rejected_truncation_rate": round(rejected_cut / len(rows), 3) if rows else None,
    }


def _per_category(every: Sequence[dict], kept: Sequence[dict], question_stats: Mapping | None) -> dict:
    """Per category (those of the pairs and those picked): see _category_stats."""
    categories = sorted(
        {category_of(r) for r in every} | set((question_stats or {}).get("picked_per_category", {}))
    )
    per_category = {}
    for category in categories:
        rows = [r for r in every if category_of(r) == category]
        kept_rows = [r for r in kept if category_of(r) == category]
        picked = (question_stats or {}).get("picked_per_category", {}).get(category)
        per_category[category] = _category_stats(rows, kept_rows, picked)
    return per_category


def _overall_lengths(every: Sequence[dict]) -> dict:
    """Length figures of all chosen and all rejected answers, and the ratios of their medians."""
    lengths = {"chosen": _lengths(every, "chosen"), "rejected": _lengths(every, "rejected")}
    lengths["ratio_of_medians_chars"] = _ratio(
        lengths["chosen"]["median_chars"], lengths["rejected"]["median_chars"]
    )
    lengths["ratio_of_medians_tokens"] = _ratio(
        lengths["chosen"]["median_tokens"], lengths["rejected"]["median_tokens"]
    )
    return lengths


def _truncation(every: Sequence[dict]) -> dict:
    """Per role: answers cut at the token cap, of how many, and the rate."""
    truncation = {
        role: {"truncated": sum(truncated(r, role) for r in every), "of": len(every)}
        for role in ("chosen", "rejected")
    }
    for role in truncation:
        of = truncation[role]["of"]
        truncation[role]["rate"] = round(truncation[role]["truncated"] / of, 3) if of else None
    return truncation


def served_models(pair_stats: Mapping | None) -> dict[str, dict[str, int]]:
    """The models that served the API answers, as each reply named them, with their counts: the
    Gemini teacher's answers (``chosen``) and each Gemini judge's verdicts (``judge_<kind>``)."""
    found = {}
    teacher = ((pair_stats or {}).get("teacher_usage") or {}).get("served_models")
    if teacher:
        found["chosen"] = dict(teacher)
    for kind, usage in sorted(((pair_stats or {}).get("judge_usage") or {}).items()):
        if usage.get("served_models"):
            found[f"judge_{kind}"] = dict(usage["served_models"])
    return found


def build_stats(
    kept: Sequence[dict],
    dropped: Sequence[dict] = (),
    *,
    question_stats: Mapping | None = None,
    pair_stats: Mapping | None = None,
    quality_counts: Mapping | None = None,
    throughput: Sequence[dict] = (),
    provenance: Mapping | None = None,
    judge_min_margin: float = default("judge.min_margin"),
) -> dict:
    """Everything the report shows, as one JSON-able dict."""
    every = list(kept) + list(dropped)
    drop_reasons = Counter(reason for row in dropped for reason in row["meta"].get("drop_reasons", []))
    per_question_type = Counter(question_type_of(r) for r in kept)
    inferred = not any("chosen_finish_reason" in (r.get("meta") or {}) for r in every)
    models = {
        "chosen": sorted({(r.get("meta") or {}).get("teacher_model", "?") for r in every}),
        "rejected": sorted({meta_value(r.get("meta") or {}, "rejected_model", "?") for r in every}),
    }
    return {
        "stages": _stages(every, kept, dropped, question_stats, pair_stats),
        "dropped_by_reason": dict(sorted(drop_reasons.items())),
        "flagged": dict(
            (quality_counts or {}).get("flagged")
            or {f: sum(f in (r.get("meta") or {}).get("flags", []) for r in every) for f in FLAGS}
        ),
        "policy": (quality_counts or {}).get("policy"),
        "chosen_failure_reasons": (pair_stats or {}).get("chosen_failure_reasons", {}),
        "chosen_left_out": (pair_stats or {}).get("chosen_left_out", {}),
        "teacher_usage": (pair_stats or {}).get("teacher_usage"),
        "models": models,
        "served_models": served_models(pair_stats),
        "lengths": _overall_lengths(every),
        "truncation": _truncation(every),
        "truncation_inferred_from_text": inferred,
        "per_category": _per_category(every, kept, question_stats),
        "kept_per_question_type": dict(sorted(per_question_type.items())),
        "throughput_per_shard": list(throughput),
        "judge": judge_stats(every, judge_min_margin, pair_stats),
        "provenance": dict(provenance or {}),
    }
