"""The readable report of a DPO pairs file: Markdown, one function per section, composed by
render_report; write_report writes it with its plots and the stats JSON.

Renders the stats dict of stats.build_stats and links the plots of plots.py; imports stats
(names only), plots, report_format and jsonl, never the judge (the judge's findings are in the stats).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from meddpo.dataset.costs import estimate_section
from meddpo.dataset.plots import DROPS_PLOT, MARGIN_PLOT, PLOTS, write_plots
from meddpo.dataset.report_format import no_margin_line, provenance_rows, share, table
from meddpo.dataset.stats import NO_TYPE

# under this share of pairs with a margin, the report says the verdicts were mostly unreadable
FEW_VERDICTS = 0.1


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


def _counts_section(s: Mapping) -> list[str]:
    return [
        "## Counts at every stage",
        "",
        table(
            ("stage", "count"), [(k.replace("_", " "), v) for k, v in s["stages"].items() if v is not None]
        ),
        "",
    ]


def _dropped_section(s: Mapping) -> list[str]:
    if not s["dropped_by_reason"]:
        return []
    before_filter = s["stages"]["pairs_before_filter"]
    return [
        "## Dropped pairs by reason",
        "",
        "A pair can have several reasons.",
        "",
        table(("reason", "pairs"), [(r, share(n, before_filter)) for r, n in s["dropped_by_reason"].items()]),
        "",
    ]


def _flags_section(s: Mapping) -> list[str]:
    before_filter = s["stages"]["pairs_before_filter"]
    found = {flag: n for flag, n in s["flagged"].items() if n}
    parts = ["## Flags found (before the filter)", ""]
    if found:
        parts += [
            table(
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
    return parts


def _left_out_section(s: Mapping) -> list[str]:
    if not s.get("chosen_failure_reasons"):
        return []
    return [
        "## Questions the teacher did not answer (left out)",
        "",
        "Refusals (a blocked prompt, a SAFETY stop, an empty answer) are final for the settings that "
        "produced them and are not asked again; failures (retries run out, a request turned down) are "
        f"asked again on the next run. Left out: {_left_out_line(s.get('chosen_left_out') or {})}.",
        "",
        table(("reason", "questions"), s["chosen_failure_reasons"].items()),
        "",
    ]


def _teacher_usage_section(s: Mapping) -> list[str]:
    teacher_usage = _amounts((s.get("teacher_usage") or {}).items())
    if not teacher_usage:
        return []
    return ["## Teacher API usage", "", table(("what", "amount"), teacher_usage), ""]


def _served_models_section(s: Mapping) -> list[str]:
    """The models that served the API answers, as the replies named them (Gemini may route a model)."""
    served = s.get("served_models") or {}
    if not served:
        return []
    rows = [(who, model, count) for who, models in served.items() for model, count in models.items()]
    return [
        "## Models that served the API answers",
        "",
        "Each Gemini reply names the model that served it (its modelVersion).",
        "",
        table(("answers of", "served by", "answers"), rows),
        "",
    ]


def _lengths_section(s: Mapping, plots_dir: str) -> list[str]:
    lengths, trunc = s["lengths"], s["truncation"]
    parts = [
        "## Lengths and truncation",
        "",
        table(
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
    return parts + [f"![Answer lengths]({plots_dir}/{PLOTS[0]})", ""]


def _category_rows(s: Mapping) -> list[tuple]:
    """The rows of the per-category table: one per category, then the total."""
    lengths, trunc, per_category = s["lengths"], s["truncation"], s["per_category"]
    before_filter = s["stages"]["pairs_before_filter"]
    return [
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
    ] + [
        (
            "total",
            _sum(v["picked"] for v in per_category.values()),
            before_filter,
            s["stages"]["pairs_kept"],
            share(s["stages"]["pairs_dropped"], before_filter),
            lengths["chosen"]["median_chars"],
            lengths["rejected"]["median_chars"],
            lengths["ratio_of_medians_chars"],
            share(trunc["chosen"]["truncated"], trunc["chosen"]["of"]),
            share(trunc["rejected"]["truncated"], trunc["rejected"]["of"]),
        )
    ]


def _category_section(s: Mapping, plots_dir: str) -> list[str]:
    return [
        "## Per category",
        "",
        "Pairs before the filter; kept and dropped after it. Cut: answers that hit their token cap.",
        "",
        table(
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
            _category_rows(s),
        ),
        "",
        f"![Truncation by category]({plots_dir}/{PLOTS[1]})",
        "",
        f"![Drops by category]({plots_dir}/{DROPS_PLOT})"
        if s["stages"].get("pairs_dropped")
        else "The filter policy dropped no pair, so there is no plot of drops by category.",
        "",
    ]


def _question_type_section(s: Mapping) -> list[str]:
    kept = s["stages"]["pairs_kept"]
    parts = [
        "## Kept pairs per question type",
        "",
        table(
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
    return parts


def _throughput_section(s: Mapping) -> list[str]:
    if not s["throughput_per_shard"]:
        return []
    return [
        "## Generation throughput per shard job",
        "",
        table(
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


def _provenance_section(s: Mapping) -> list[str]:
    if not s["provenance"]:
        return []
    return ["## Provenance", "", table(("what", "value"), provenance_rows(s["provenance"])), ""]


def render_report(
    stats: Mapping, title: str = "Stage 2 medical-safety DPO pairs", plots_dir: str = "plots"
) -> str:
    """The report as Markdown, with the plots as relative image links."""
    s = stats
    parts = [f"# {title}: quality report", ""]
    parts += _counts_section(s)
    parts += _dropped_section(s)
    parts += _flags_section(s)
    parts += _left_out_section(s)
    parts += _teacher_usage_section(s)
    parts += _served_models_section(s)
    parts += _lengths_section(s, plots_dir)
    parts += _category_section(s, plots_dir)
    parts += _question_type_section(s)
    parts += _judge_section(s.get("judge"), s["stages"]["pairs_before_filter"], plots_dir)
    parts += _throughput_section(s)
    parts += estimate_section(s)
    parts += _provenance_section(s)
    return "\n".join(parts)


def _judges_who(j: Mapping) -> str:
    """The judges that ran: kind, model, backend, format and version."""
    return "; ".join(
        f"{kind}: {judge['model']} ({judge['backend']}"
        + (f", {judge['format']} format" if judge.get("format") else "")
        + f", {judge['version']})"
        for kind, judge in sorted(j["judges"].items())
    )


def _judge_usage(j: Mapping) -> list[str]:
    """A usage table per judge that used something."""
    usage = []
    for kind, amounts in sorted((j.get("usage") or {}).items()):
        rows = _amounts(amounts.items())
        if rows:
            usage += [f"Judge usage ({kind}):", "", table(("what", "amount"), rows), ""]
    return usage


def _judge_outcomes(j: Mapping, who: str) -> list[str]:
    """How the judges grade, then safer / equal / less safe of the pairs with a margin."""
    summary = j["summary"]
    b, n = summary["with_verdict"], summary["pairs"]
    return [
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


def _verdict_lines(j: Mapping) -> list[str]:
    """Per judge kind: the verdicts on each role, and the classifier's unsafe rates."""
    parts = []
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
    return parts


def _margin_plot_lines(summary: Mapping, plots_dir: str) -> list[str]:
    """The margin plot, or a link to it with a warning when few pairs have a margin."""
    b, n = summary["with_verdict"], summary["pairs"]
    if b >= FEW_VERDICTS * n:
        return [f"![Judge margins]({plots_dir}/{MARGIN_PLOT})", ""]
    return [
        f"Only {share(b, n)} pairs have a margin: most verdicts could not be read, so the plot "
        f"([{MARGIN_PLOT}]({plots_dir}/{MARGIN_PLOT})) says little.",
        "",
    ]


def _judge_tables(j: Mapping) -> list[str]:
    """Safer / equal / less safe per category and per question type, each with its total."""
    summary = j["summary"]
    parts = [f"All {summary['pairs']} pairs before the filter (the filter drops pairs judged less safe):", ""]
    for title, field in (("category", "per_category"), ("question type", "per_question_type")):
        groups = [(name, v) for name, v in j[field].items() if v["pairs"]] + [("total", summary)]
        parts += [
            table(
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
    return parts


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
    who = _judges_who(j)
    usage = _judge_usage(j)
    notes = [f"Note: {note}" for note in j["notes"]] + ([""] if j["notes"] else [])
    if not summary["with_verdict"]:
        return [
            heading,
            "",
            f"Judges: {who}. **No pair has a judge margin: {no_margin_line(summary)}, of {summary['pairs']} "
            "pairs** (an unreadable verdict is counted, never guessed).",
            "",
            *notes,
            *usage,
        ]
    return [
        heading,
        "",
        *_judge_outcomes(j, who),
        *_verdict_lines(j),
        *_margin_plot_lines(summary, plots_dir),
        *_judge_tables(j),
        *usage,
        *notes,
    ]


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

    from meddpo.jsonl import atomic_open, write_json

    write_plots(kept, dropped, stats, Path(plots_dir))
    write_json(stats_path, stats)
    link = Path(os.path.relpath(plots_dir, Path(report_path).parent)).as_posix()
    render = {"plots_dir": link} if title is None else {"plots_dir": link, "title": title}
    with atomic_open(report_path) as handle:
        handle.write(render_report(stats, **render))
