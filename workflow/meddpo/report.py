"""Statistics, plots and a readable report of a DPO pairs file.

Works on the workflow's own output (with the question and pair counts of the
earlier stages, job benchmarks and finish reasons) and on any pairs file of the
same layout, including the older one without finish reasons (truncation is then
inferred from text that stops mid-sentence, see quality.truncated).
"""

from __future__ import annotations

import csv
import statistics
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from .quality import FLAGS, truncated
from .settings import default
from .verdicts import KINDS, judge_summary, self_judging

PLOTS = ("lengths.png", "truncation_by_category.png", "drops_by_category.png")
# drawn only when some pair has a judged margin
MARGIN_PLOT = "judge_margins.png"
# under this share of pairs with a margin, the report says the verdicts were mostly unreadable
FEW_VERDICTS = 0.1
# how the report and the card name a pair whose source row had no question type / category
NO_TYPE = "(no type)"
NO_CATEGORY = "(no category)"


def share(part: int, whole: int) -> str:
    """A count and its share of a whole, the one format of the report and the card: ``12 of 63 (19.0%)``."""
    if not whole:
        return f"{part} of {whole}"
    return f"{part} of {whole} ({100 * part / whole:.1f}%)"


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

    from .jsonl import read_jsonl

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
    rejected = sorted({(r.get("meta") or {}).get("mmt_ckpt") for r in every} - {None})
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
        "notes": self_judging(teachers, rejected, judges),
    }


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
    picked = (question_stats or {}).get("picked")
    left_out = None
    if pair_stats:
        left_out = pair_stats["questions"] - pair_stats["pairs"]
    stages = {
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
    drop_reasons = Counter(reason for row in dropped for reason in row["meta"].get("drop_reasons", []))
    categories = sorted(
        {category_of(r) for r in every} | set((question_stats or {}).get("picked_per_category", {}))
    )
    per_category = {}
    for category in categories:
        rows = [r for r in every if category_of(r) == category]
        kept_rows = [r for r in kept if category_of(r) == category]
        chosen_cut = sum(truncated(r, "chosen") for r in rows)
        rejected_cut = sum(truncated(r, "rejected") for r in rows)
        chosen_len, rejected_len = _lengths(rows, "chosen"), _lengths(rows, "rejected")
        per_category[category] = {
            "picked": (question_stats or {}).get("picked_per_category", {}).get(category),
            "pairs": len(rows),
            "kept": len(kept_rows),
            "dropped": len(rows) - len(kept_rows),
            "drop_rate": round((len(rows) - len(kept_rows)) / len(rows), 3) if rows else None,
            "chosen_median_chars": chosen_len["median_chars"],
            "rejected_median_chars": rejected_len["median_chars"],
            "length_ratio_chosen_to_rejected": _ratio(
                chosen_len["median_chars"], rejected_len["median_chars"]
            ),
            "chosen_truncated": chosen_cut,
            "rejected_truncated": rejected_cut,
            "chosen_truncation_rate": round(chosen_cut / len(rows), 3) if rows else None,
            "rejected_truncation_rate": round(rejected_cut / len(rows), 3) if rows else None,
        }
    per_question_type = Counter(question_type_of(r) for r in kept)
    lengths = {"chosen": _lengths(every, "chosen"), "rejected": _lengths(every, "rejected")}
    lengths["ratio_of_medians_chars"] = _ratio(
        lengths["chosen"]["median_chars"], lengths["rejected"]["median_chars"]
    )
    lengths["ratio_of_medians_tokens"] = _ratio(
        lengths["chosen"]["median_tokens"], lengths["rejected"]["median_tokens"]
    )
    truncation = {
        role: {"truncated": sum(truncated(r, role) for r in every), "of": len(every)}
        for role in ("chosen", "rejected")
    }
    for role in truncation:
        of = truncation[role]["of"]
        truncation[role]["rate"] = round(truncation[role]["truncated"] / of, 3) if of else None
    inferred = not any("chosen_finish_reason" in (r.get("meta") or {}) for r in every)
    models = {
        "chosen": sorted({(r.get("meta") or {}).get("teacher_model", "?") for r in every}),
        "rejected": sorted({(r.get("meta") or {}).get("mmt_ckpt", "?") for r in every}),
    }
    return {
        "stages": stages,
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
        "lengths": lengths,
        "truncation": truncation,
        "truncation_inferred_from_text": inferred,
        "per_category": per_category,
        "kept_per_question_type": dict(sorted(per_question_type.items())),
        "throughput_per_shard": list(throughput),
        "judge": judge_stats(every, judge_min_margin, pair_stats),
        "provenance": dict(provenance or {}),
    }


def write_plots(kept: Sequence[dict], dropped: Sequence[dict], stats: Mapping, folder: Path) -> list[Path]:
    """The three PNG plots of the report."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    folder.mkdir(parents=True, exist_ok=True)
    every = list(kept) + list(dropped)
    paths = []

    chosen = [max(len(r.get("chosen") or ""), 1) for r in every]
    rejected = [max(len(r.get("rejected") or ""), 1) for r in every]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    if every:
        bins = np.logspace(np.log10(min(chosen + rejected) / 1.2), np.log10(max(chosen + rejected) * 1.2), 40)
        ax.hist(
            rejected,
            bins=bins,
            alpha=0.6,
            label=f"rejected (median {stats['lengths']['rejected']['median_chars']:.0f})",
            color="#d95f02",
        )
        ax.hist(
            chosen,
            bins=bins,
            alpha=0.6,
            label=f"chosen (median {stats['lengths']['chosen']['median_chars']:.0f})",
            color="#1b9e77",
        )
        ax.set_xscale("log")
    ratio = stats["lengths"]["ratio_of_medians_chars"]
    ax.set_title(f"Answer length, characters (chosen / rejected median ratio: {ratio}x)")
    ax.set_xlabel("characters (log scale)")
    ax.set_ylabel("answers")
    ax.legend()
    fig.tight_layout()
    paths.append(folder / PLOTS[0])
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    per_category = stats["per_category"]
    names = [c for c in sorted(per_category) if per_category[c]["pairs"]]
    height = max(3.0, 0.28 * len(names) + 1.2)
    fig, ax = plt.subplots(figsize=(8, height))
    y = np.arange(len(names))
    chosen_rate = [100 * (per_category[c]["chosen_truncation_rate"] or 0) for c in names]
    rejected_rate = [100 * (per_category[c]["rejected_truncation_rate"] or 0) for c in names]
    ax.barh(y - 0.2, chosen_rate, height=0.4, label="chosen", color="#1b9e77")
    ax.barh(y + 0.2, rejected_rate, height=0.4, label="rejected", color="#d95f02")
    ax.set_yticks(y, names)
    ax.invert_yaxis()
    ax.set_xlim(0, 100)
    ax.set_xlabel(
        "% of answers cut at the token cap"
        + (" (inferred from text)" if stats["truncation_inferred_from_text"] else "")
    )
    ax.set_title("Truncation by category", pad=22)
    ax.legend(ncol=2, loc="lower center", bbox_to_anchor=(0.5, 1.0), frameon=False)
    fig.tight_layout()
    paths.append(folder / PLOTS[1])
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(8, height))
    rates = [100 * (per_category[c]["drop_rate"] or 0) for c in names]
    ax.barh(y, rates, color="#7570b3")
    for index, category in enumerate(names):
        ax.text(
            min(rates[index] + 1, 75),
            index,
            share(per_category[category]["dropped"], per_category[category]["pairs"]),
            va="center",
            fontsize=8,
        )
    ax.set_yticks(y, names)
    ax.invert_yaxis()
    ax.set_xlim(0, 100)
    ax.set_xlabel("% of pairs dropped by the filter policy")
    ax.set_title("Drops by category")
    fig.tight_layout()
    paths.append(folder / PLOTS[2])
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    judge = stats.get("judge")
    if judge and judge["margins"]:
        fig, ax = plt.subplots(figsize=(8, 4.5))
        ax.hist(judge["margins"], bins=np.linspace(-1, 1, 21), color="#1b9e77")
        for edge in (-judge["min_margin"], judge["min_margin"]):
            ax.axvline(edge, color="#666666", linestyle="--", linewidth=1)
        ax.set_xlim(-1, 1)
        ax.set_xlabel("margin: chosen score minus rejected score (dashed: the tie band)")
        ax.set_ylabel("pairs")
        ax.set_title(f"Judge margins ({len(judge['margins'])} pairs with a verdict on both answers)")
        fig.tight_layout()
        paths.append(folder / MARGIN_PLOT)
        fig.savefig(paths[-1], dpi=110)
        plt.close(fig)
    return paths


def _table(header: Sequence[str], rows: Iterable[Sequence]) -> str:
    def cell(value):
        return "—" if value is None else str(value)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _has_something(value) -> bool:
    return value not in (None, 0, 0.0, "", {}, [])


def _amounts(items: Iterable[tuple[str, object]]) -> list[tuple[str, object]]:
    """The rows of a usage table that have something in them (a dict value on one line)."""
    return [
        (key, ", ".join(f"{k} {v}" for k, v in value.items()) if isinstance(value, dict) else value)
        for key, value in items
        if _has_something(value)
    ]


def _left_out_line(kinds: Mapping[str, int]) -> str:
    return ", ".join(f"{n} {kind}" for kind, n in sorted(kinds.items())) or "none"


def _sum(values: Iterable[int | None]) -> int | None:
    values = [v for v in values if v is not None]
    return sum(values) if values else None


def render_report(
    stats: Mapping, title: str = "Stage 2 medical-safety DPO pairs", plots_dir: str = "plots"
) -> str:
    """The report as Markdown, with the plots as relative image links."""
    s = stats
    before_filter = s["stages"]["pairs_before_filter"]
    kept = s["stages"]["pairs_kept"]
    parts = [f"# {title}: quality report", ""]
    parts += [
        "## Counts at every stage",
        "",
        _table(
            ("stage", "count"), [(k.replace("_", " "), v) for k, v in s["stages"].items() if v is not None]
        ),
        "",
    ]
    if s["dropped_by_reason"]:
        parts += [
            "## Dropped pairs by reason",
            "",
            "A pair can have several reasons.",
            "",
            _table(
                ("reason", "pairs"), [(r, share(n, before_filter)) for r, n in s["dropped_by_reason"].items()]
            ),
            "",
        ]
    found = {flag: n for flag, n in s["flagged"].items() if n}
    parts += ["## Flags found (before the filter)", ""]
    if found:
        parts += [
            _table(
                ("flag", "pairs", "policy"),
                [
                    (flag, share(n, before_filter), (s.get("policy") or {}).get(flag, "—"))
                    for flag, n in found.items()
                ],
            ),
            "",
        ]
    absent = [flag for flag in s["flagged"] if flag not in found]
    if absent:
        parts += [f"Found in no pair: {', '.join(absent)}.", ""]
    if s.get("chosen_failure_reasons"):
        parts += [
            "## Questions the teacher did not answer (left out)",
            "",
            "Refusals (a blocked prompt, a SAFETY stop, an empty answer) are final for the settings that "
            "produced them and are not asked again; failures (retries run out, a request turned down) are "
            f"asked again on the next run. Left out: {_left_out_line(s.get('chosen_left_out') or {})}.",
            "",
            _table(("reason", "questions"), s["chosen_failure_reasons"].items()),
            "",
        ]
    teacher_usage = _amounts((s.get("teacher_usage") or {}).items())
    if teacher_usage:
        parts += ["## Teacher API usage", "", _table(("what", "amount"), teacher_usage), ""]
    lengths, trunc = s["lengths"], s["truncation"]
    parts += [
        "## Lengths and truncation",
        "",
        _table(
            ("", "chosen", "rejected"),
            [
                ("model", ", ".join(s["models"]["chosen"]), ", ".join(s["models"]["rejected"])),
                ("median characters", lengths["chosen"]["median_chars"], lengths["rejected"]["median_chars"]),
                (
                    "90th percentile characters",
                    lengths["chosen"]["p90_chars"],
                    lengths["rejected"]["p90_chars"],
                ),
                (
                    "median new tokens",
                    lengths["chosen"]["median_tokens"],
                    lengths["rejected"]["median_tokens"],
                ),
                (
                    "truncated at the cap",
                    share(trunc["chosen"]["truncated"], trunc["chosen"]["of"]),
                    share(trunc["rejected"]["truncated"], trunc["rejected"]["of"]),
                ),
            ],
        ),
        "",
        f"Chosen answers are **{lengths['ratio_of_medians_chars']}×** as long as rejected ones (median "
        "characters). A DPO model can learn that length itself is preferred; compare the ratio per category "
        "below.",
        "",
    ]
    if s["truncation_inferred_from_text"]:
        parts += [
            "This file has no finish reasons: an answer counts as truncated when its text stops mid-sentence "
            "(no closing punctuation).",
            "",
        ]
    per_category = s["per_category"]
    parts += [
        f"![Answer lengths]({plots_dir}/{PLOTS[0]})",
        "",
        "## Per category",
        "",
        "Pairs before the filter; kept and dropped after it. Cut: answers that hit their token cap.",
        "",
        _table(
            (
                "category",
                "picked",
                "pairs",
                "kept",
                "dropped",
                "chosen median chars",
                "rejected median chars",
                "ratio",
                "chosen cut",
                "rejected cut",
            ),
            [
                (
                    c,
                    v["picked"],
                    v["pairs"],
                    v["kept"],
                    share(v["dropped"], v["pairs"]),
                    v["chosen_median_chars"],
                    v["rejected_median_chars"],
                    v["length_ratio_chosen_to_rejected"],
                    share(v["chosen_truncated"], v["pairs"]),
                    share(v["rejected_truncated"], v["pairs"]),
                )
                for c, v in per_category.items()
            ]
            + [
                (
                    "total",
                    _sum(v["picked"] for v in per_category.values()),
                    before_filter,
                    kept,
                    share(s["stages"]["pairs_dropped"], before_filter),
                    lengths["chosen"]["median_chars"],
                    lengths["rejected"]["median_chars"],
                    lengths["ratio_of_medians_chars"],
                    share(trunc["chosen"]["truncated"], trunc["chosen"]["of"]),
                    share(trunc["rejected"]["truncated"], trunc["rejected"]["of"]),
                )
            ],
        ),
        "",
        f"![Truncation by category]({plots_dir}/{PLOTS[1]})",
        "",
        f"![Drops by category]({plots_dir}/{PLOTS[2]})",
        "",
        "## Kept pairs per question type",
        "",
        _table(
            ("question type", "kept pairs"),
            [(t, share(n, kept)) for t, n in s["kept_per_question_type"].items()] + [("total", kept)],
        ),
        "",
    ]
    if NO_TYPE in s["kept_per_question_type"]:
        parts += [
            f"{NO_TYPE}: the source row has no question type; its category comes from words in the question.",
            "",
        ]
    parts += _judge_section(s.get("judge"), before_filter, plots_dir)
    if s["throughput_per_shard"]:
        parts += [
            "## Generation throughput per shard job",
            "",
            _table(
                (
                    "model",
                    "shard",
                    "seconds",
                    "answers",
                    "generated by the job",
                    "their new tokens",
                    "new tokens/s",
                    "max RSS MB",
                ),
                [
                    (
                        t["role"],
                        t["shard"],
                        t["seconds"],
                        t["answers"],
                        t.get("generated"),
                        t["new_tokens"],
                        t["new_tokens_per_s"],
                        t["max_rss_mb"],
                    )
                    for t in s["throughput_per_shard"]
                ],
            ),
            "",
        ]
    if s["provenance"]:
        parts += ["## Provenance", "", _table(("what", "value"), s["provenance"].items()), ""]
    return "\n".join(parts)


def no_margin_line(summary: Mapping) -> str:
    """Why pairs have no judge margin, in counts: ``63 unparseable, 0 failed``."""
    status = summary["status"]
    line = f"{status['unparseable']} unparseable, {status['failed']} failed"
    return line + (f", {status['off']} not judged" if status.get("off") else "")


def _judge_section(j: Mapping | None, pairs: int, plots_dir: str) -> list[str]:
    """The report's judge section: safer / equal / less safe, per category and type, rates, usage.

    With nothing to count (no judge ran, or no pair has a margin) it is one line saying why.
    """
    heading = "## Judge: is the chosen answer safer?"
    if not j:
        return [
            heading,
            "",
            f"No judge ran on these {pairs} pairs (`meta.judge` is off or absent): nothing here checks that "
            "the chosen answer is the safer one.",
            "",
        ]
    summary = j["summary"]
    b, n = summary["with_verdict"], summary["pairs"]
    who = "; ".join(
        f"{kind}: {judge['model']} ({judge['backend']}"
        + (f", {judge['format']} format" if judge.get("format") else "")
        + f", {judge['version']})"
        for kind, judge in sorted(j["judges"].items())
    )
    parts = [heading, ""]
    usage = []
    for kind, amounts in sorted((j.get("usage") or {}).items()):
        rows = _amounts(amounts.items())
        if rows:
            usage += [f"Judge usage ({kind}):", "", _table(("what", "amount"), rows), ""]
    notes = [f"Note: {note}" for note in j["notes"]] + ([""] if j["notes"] else [])
    if not b:
        return parts + [
            f"Judges: {who}. **No pair has a judge margin: {no_margin_line(summary)}, of {n} pairs** (an "
            "unreadable verdict is counted, never guessed; a judge that writes noise, as the demo's "
            "random-weight models do, gives this).",
            "",
            *usage,
        ]
    parts += [
        f"Judges: {who}. Each answer was graded on its own; the margin is the chosen answer's score minus "
        "the rejected one's (from -1 to 1). A pair is less safe when a judge's margin is at or below "
        f"-{j['min_margin']}; otherwise equal when the margin (with two judges, their mean) is under "
        f"{j['min_margin']}.",
        "",
        "Of the pairs with a margin:",
        "",
        f"- **chosen judged safer: {share(summary['chosen_safer'], b)}**",
        f"- chosen judged equal: {share(summary['equal'], b)}",
        f"- chosen judged less safe: {share(summary['chosen_less_safe'], b)}",
        "",
        f"Pairs without a margin: {share(n - b, n)}: {no_margin_line(summary)} (an unparseable verdict is "
        "counted, never guessed).",
        "",
    ]
    for kind, roles in sorted(j["answers"].items()):
        line = f"{kind} verdicts: " + "; ".join(
            f"{role} {v['judged']} judged, {v['unparseable']} unparseable, {v['failed']} failed"
            + (f", mean score {v['mean_score']}" if v["mean_score"] is not None else "")
            for role, v in roles.items()
        )
        parts += [line + ".", ""]
        if kind == "classifier" and (roles["chosen"]["judged"] or roles["rejected"]["judged"]):
            parts += [
                "Unsafe rate (classifier, of the answers it judged): chosen "
                f"{share(roles['chosen']['unsafe'], roles['chosen']['judged'])}, rejected "
                f"{share(roles['rejected']['unsafe'], roles['rejected']['judged'])}.",
                "",
            ]
    if b >= FEW_VERDICTS * n:
        parts += [f"![Judge margins]({plots_dir}/{MARGIN_PLOT})", ""]
    else:
        parts += [
            f"Only {share(b, n)} pairs have a margin: most verdicts could not be read, so the plot "
            f"([{MARGIN_PLOT}]({plots_dir}/{MARGIN_PLOT})) says little.",
            "",
        ]
    parts += [f"All {n} pairs before the filter (the filter drops pairs judged less safe):", ""]
    for title, field in (("category", "per_category"), ("question type", "per_question_type")):
        groups = [(name, v) for name, v in j[field].items() if v["pairs"]] + [("total", summary)]
        parts += [
            _table(
                (title, "pairs", "with a margin", "chosen safer", "equal", "less safe", "without a margin"),
                [
                    (
                        name,
                        v["pairs"],
                        v["with_verdict"],
                        share(v["chosen_safer"], v["with_verdict"]),
                        share(v["equal"], v["with_verdict"]),
                        share(v["chosen_less_safe"], v["with_verdict"]),
                        no_margin_line(v),
                    )
                    for name, v in groups
                ],
            ),
            "",
        ]
    return parts + usage + notes


def write_report(
    kept: Sequence[dict],
    dropped: Sequence[dict],
    stats: Mapping,
    *,
    stats_path: Path,
    report_path: Path,
    plots_dir: Path,
    title: str | None = None,
) -> None:
    """The plots, the stats JSON and the Markdown report of a set of pairs."""
    import os

    from .jsonl import atomic_open, write_json

    write_plots(kept, dropped, stats, Path(plots_dir))
    write_json(stats_path, stats)
    link = Path(os.path.relpath(plots_dir, Path(report_path).parent)).as_posix()
    render = {"plots_dir": link} if title is None else {"plots_dir": link, "title": title}
    with atomic_open(report_path) as handle:
        handle.write(render_report(stats, **render))
