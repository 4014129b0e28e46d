"""The report's PNG plots: answer lengths, truncation by category, drops by category (when the filter
dropped some pair) and the judge's margins (when some pair has a judged margin); one function per plot.

Draws from the stats dict (stats.build_stats) and the pairs. matplotlib is loaded inside
write_plots, so importing this module stays cheap.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from meddpo.dataset.report_format import share

PLOTS = ("lengths.png", "truncation_by_category.png")
# drawn only when the filter dropped some pair (else a bar of "0 of N" per category)
DROPS_PLOT = "drops_by_category.png"
# drawn only when some pair has a judged margin
MARGIN_PLOT = "judge_margins.png"


def _save(plt, fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _lengths_plot(plt, np, every: Sequence[dict], stats: Mapping, path: Path) -> Path:
    """Histograms of chosen and rejected answer lengths, in characters on a log scale."""
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
    return _save(plt, fig, path)


def _category_names(per_category: Mapping) -> list[str]:
    """The categories with pairs, in the order the bar plots list them."""
    return [c for c in sorted(per_category) if per_category[c]["pairs"]]


def _bar_height(names: Sequence[str]) -> float:
    return max(3.0, 0.28 * len(names) + 1.2)


def _truncation_plot(plt, np, stats: Mapping, path: Path) -> Path:
    """Per category: the share of chosen and of rejected answers cut at the token cap."""
    per_category = stats["per_category"]
    names = _category_names(per_category)
    fig, ax = plt.subplots(figsize=(8, _bar_height(names)))
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
    return _save(plt, fig, path)


def _drops_plot(plt, np, stats: Mapping, path: Path) -> Path:
    """Per category: the share of pairs the filter policy dropped."""
    per_category = stats["per_category"]
    names = _category_names(per_category)
    fig, ax = plt.subplots(figsize=(8, _bar_height(names)))
    y = np.arange(len(names))
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
    return _save(plt, fig, path)


def _margins_plot(plt, np, judge: Mapping, path: Path) -> Path:
    """A histogram of the judge's margins, with the tie band dashed."""
    fig, ax = plt.subplots(figsize=(8, 4.5))
    ax.hist(judge["margins"], bins=np.linspace(-1, 1, 21), color="#1b9e77")
    for edge in (-judge["min_margin"], judge["min_margin"]):
        ax.axvline(edge, color="#666666", linestyle="--", linewidth=1)
    ax.set_xlim(-1, 1)
    ax.set_xlabel("margin: chosen score minus rejected score (dashed: the tie band)")
    ax.set_ylabel("pairs")
    ax.set_title(f"Judge margins ({len(judge['margins'])} pairs with a verdict on both answers)")
    return _save(plt, fig, path)


def write_plots(kept: Sequence[dict], dropped: Sequence[dict], stats: Mapping, folder: Path) -> list[Path]:
    """The PNG plots of the report (a plot not drawn this time is removed, should an earlier one be there)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    folder.mkdir(parents=True, exist_ok=True)
    every = list(kept) + list(dropped)
    paths = [
        _lengths_plot(plt, np, every, stats, folder / PLOTS[0]),
        _truncation_plot(plt, np, stats, folder / PLOTS[1]),
    ]
    if dropped:
        paths.append(_drops_plot(plt, np, stats, folder / DROPS_PLOT))
    judge = stats.get("judge")
    if judge and judge["margins"]:
        paths.append(_margins_plot(plt, np, judge, folder / MARGIN_PLOT))
    for name in (DROPS_PLOT, MARGIN_PLOT):
        if folder / name not in paths:
            (folder / name).unlink(missing_ok=True)
    return paths
