"""What a run took against what the preflight estimated at its start, per model.

The preflight of every real run records its estimate in the output folder
(``logs/estimate.json``: the work left per rule, priced with what earlier jobs
measured, each figure with its source). Against it:

* a local model's actual hours: the wall time of the shard jobs this run started
  (their Snakemake benchmark files, written after the estimate), the time a cluster
  bills for them;
* the Gemini teacher's actual dollars: what its usage adds up to now, less what had
  been spent on the same questions before the run started (recorded in the estimate).
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from meddpo.dataset.report_format import table

# Which shard jobs' benchmark files belong to a rule: the folder under benchmarks/ they are in.
BENCHMARK_FOLDERS = {"rejected": "rejected", "chosen": "chosen", "judge_classifier": "judge/classifier"}


def benchmark_folder(rule: str) -> str:
    """The folder under benchmarks/ of a rule's shard jobs (judge_rubric_local -> judge/rubric)."""
    if rule.startswith("chosen_"):
        return "chosen"
    if rule.startswith("judge_rubric_"):
        return "judge/rubric"
    return BENCHMARK_FOLDERS[rule]


def read_estimate(path: str | os.PathLike | None) -> dict | None:
    """The estimate the run's preflight recorded; None when there is none (or it cannot be read)."""
    if path is None or not Path(path).is_file():
        return None
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _jobs_since(paths: Sequence[Path], since: float) -> list[float]:
    """The seconds of each benchmark file written at or after ``since`` (a job of this run)."""
    seconds = []
    for path in paths:
        if os.path.getmtime(path) + 1.0 < since:
            continue  # a job of an earlier run, whose output this run kept
        with open(path, encoding="utf-8") as handle:
            seconds.append(float(next(csv.DictReader(handle, delimiter="\t"))["s"]))
    return seconds


def estimate_and_actual(
    estimate: Mapping | None, benchmarks: Sequence[str | os.PathLike], teacher_usage: Mapping | None
) -> dict | None:
    """Per rule: the work left and its price as estimated at the start, and what the run took."""
    if not estimate or "work_left" not in estimate:
        return None
    since = float(estimate.get("made_unix") or 0)
    by_folder: dict[str, list[Path]] = {}
    for path in map(Path, benchmarks):
        folder = path.parent.as_posix().rsplit("benchmarks/", 1)[-1]
        by_folder.setdefault(folder, []).append(path)
    rows = []
    for left in estimate["work_left"]:
        row = {"rule": left["rule"], "answers": left["answers"], "left": left["left"]}
        if "usd" in left and left["usd"] is None:
            row.update(estimated_usd=None, source=left["usd_source"], actual_usd=None)
        elif "usd" in left:
            spent = float((teacher_usage or {}).get("estimated_cost_usd") or 0.0)
            before = float(left.get("usd_spent_before") or 0.0)
            row.update(
                estimated_usd=left["usd"], source=left["usd_source"], actual_usd=round(spent - before, 6)
            )
        else:
            jobs = _jobs_since(by_folder.get(benchmark_folder(left["rule"]), []), since)
            row.update(
                estimated_hours=left["hours"],
                device=left["device"],
                source=f"{left['length_source']}; {left['speed_source']}",
                jobs=len(jobs),
                actual_hours=round(sum(jobs) / 3600, 4),
            )
        rows.append(row)
    return {"estimated_at": estimate.get("made"), "rules": rows}


def _estimate_cells(row: Mapping) -> tuple[str, str]:
    """A rule's estimate and what the run took, as two table cells."""
    if "estimated_usd" in row and row["estimated_usd"] is None:
        return "no price", "no price"
    if "estimated_usd" in row:
        return f"${row['estimated_usd']:.4f}", f"${row['actual_usd']:.4f}"
    jobs = f"{row['jobs']} job{'s' * (row['jobs'] != 1)}"
    return f"{row['estimated_hours']:.4f} h on {row['device']}", f"{row['actual_hours']:.4f} h ({jobs})"


def estimate_section(s: Mapping) -> list[str]:
    """What the preflight estimated at the start of the run, beside what the run took."""
    if "estimate_and_actual" not in s:
        return []  # the report of a pairs file, not of a run (meddpo report)
    heading = ["## Estimated and actual cost", ""]
    costs = s["estimate_and_actual"]
    if costs is None:
        return [
            *heading,
            "No estimate was recorded at the start of this run (the preflight records one at the start of "
            "every real Snakemake run, in logs/estimate.json).",
            "",
        ]
    return [
        *heading,
        f"Estimated by the preflight at the start of the run ({costs['estimated_at']}) for the work it had "
        "left; actual: the wall time of the shard jobs this run started, and the Gemini dollars its "
        "requests added.",
        "",
        table(
            ("model", "answers", "left at the start", "estimated", "actual"),
            [(r["rule"], r["answers"], r["left"], *_estimate_cells(r)) for r in costs["rules"]],
        ),
        "",
        *[f"- {r['rule']}: {r['source']}" for r in costs["rules"]],
        "",
    ]
