"""The dataset stage: flag and filter every pair, then write the dataset in each format with its
stats, report, plots and card.

The workflow's ``finalize`` rule names every output path (``DatasetPaths``); this
module decides what goes in them:

* the quality policy splits the pairs into kept and dropped (quality.apply_policy);
* provenance: the workflow commit and config hash, the source and its fingerprint,
  the models and revisions that wrote the answers;
* an optional deterministic train/test split: a row is in the test split when the
  first 8 bytes of the SHA-256 of its id, read as a fraction of 2**64, fall below
  ``test_fraction`` (so a row keeps its split whatever else is in the run);
* optional extra formats: TRL's conversational layout (message lists) and Parquet
  (``meta`` as a JSON string, since its keys vary);
* the stats JSON (stats.py), the Markdown report with its plots (report.py, plots.py)
  and the dataset card (dataset_card.py).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from meddpo.config.settings import default
from meddpo.dataset.card import render_card
from meddpo.dataset.costs import estimate_and_actual
from meddpo.dataset.quality import apply_policy
from meddpo.dataset.report import write_report
from meddpo.dataset.rows import meta_value
from meddpo.dataset.stats import build_stats
from meddpo.jsonl import DataError, atomic_open, write_jsonl

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DatasetPaths:
    """Where each output of the dataset stage goes; None = that output is not wanted."""

    pairs: Path
    dropped: Path
    stats: Path
    report: Path
    card: Path
    plots: Path  # a folder
    conversational: Path | None = None
    parquet: Path | None = None
    # the train/test split, in each format that is written (test_fraction > 0)
    train: Path | None = None
    test: Path | None = None
    conversational_train: Path | None = None
    conversational_test: Path | None = None
    parquet_train: Path | None = None
    parquet_test: Path | None = None


def provenance(
    rows: Sequence[dict], question_stats: Mapping | None, *, workflow_commit: str, config_hash: str
) -> dict[str, Any]:
    """Where the dataset came from: code, config, source and the models that wrote its answers."""
    first_meta = rows[0]["meta"] if rows else {}
    return {
        "workflow_commit": workflow_commit,
        "config_sha256": config_hash,
        "source": (question_stats or {}).get("source_location"),
        "source_fingerprint": (question_stats or {}).get("source_fingerprint"),
        "teacher_model": first_meta.get("teacher_model"),
        "teacher_revision": first_meta.get("teacher_revision"),
        "rejected_revision": meta_value(first_meta, "rejected_revision"),
        "rejected_model": meta_value(first_meta, "rejected_model"),
    }


def in_test_split(row_id: str, test_fraction: float) -> bool:
    """True when the row belongs to the test split (a pure function of its id)."""
    digest = hashlib.sha256(row_id.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < test_fraction


def conversational(rows: Sequence[dict], training_system_prompt: str) -> list[dict]:
    """TRL's conversational layout: prompt, chosen and rejected as message lists."""
    return [
        {
            "id": row["id"],
            "prompt": [
                {"role": "system", "content": training_system_prompt},
                {"role": "user", "content": row["question"]},
            ],
            "chosen": [{"role": "assistant", "content": row["chosen"]}],
            "rejected": [{"role": "assistant", "content": row["rejected"]}],
        }
        for row in rows
    ]


def write_parquet(path: Path, rows: Sequence[dict]) -> None:
    """The pairs as Parquet; ``meta`` becomes a JSON string (its keys vary between rows)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pylist(
        [{**row, "meta": json.dumps(row["meta"], ensure_ascii=False)} for row in rows]
    )
    with atomic_open(path, "wb") as handle:
        pq.write_table(table, handle)


def _relative(path: Path, folder: Path) -> str:
    return Path(os.path.relpath(path, folder)).as_posix()


def _formats(paths: DatasetPaths, training_prompt: str) -> dict:
    """Each output format: its whole-set file, its train and test files and how to write rows there."""
    return {
        "default": (paths.pairs, paths.train, paths.test, write_jsonl),
        "conversational": (
            paths.conversational,
            paths.conversational_train,
            paths.conversational_test,
            lambda path, rows: write_jsonl(path, conversational(rows, training_prompt)),
        ),
        "parquet": (paths.parquet, paths.parquet_train, paths.parquet_test, write_parquet),
    }


def _write_formats(
    kept: Sequence[dict], paths: DatasetPaths, test_fraction: float, training_prompt: str
) -> list[dict]:
    """Write the kept pairs in every wanted format (and split); returns the card's ``configs`` entries.

    The default format's whole-set file is written by the caller, before this.
    """
    test_ids = {r["id"] for r in kept if in_test_split(r["id"], test_fraction)}
    configs = []
    for name, (whole, train, test, write) in _formats(paths, training_prompt).items():
        if whole is None:
            continue
        if name != "default":
            write(whole, kept)
        if test_fraction > 0:
            if train is None or test is None:
                raise DataError(f"a test_fraction above 0 needs the {name} split paths")
            # one assignment for every format: a row is in the same split whatever the file
            write(train, [r for r in kept if r["id"] not in test_ids])
            write(test, [r for r in kept if r["id"] in test_ids])
            files = {"train": train, "test": test}
        else:
            files = {"train": whole}
        configs.append(
            {
                "config_name": name,
                "data_files": [
                    {"split": split, "path": _relative(path, paths.card.parent)}
                    for split, path in files.items()
                ],
            }
        )
    return configs


def _write_card(
    path: Path,
    kept: Sequence[dict],
    configs: Sequence[Mapping],
    stats: Mapping,
    settings: Mapping,
    origin: Mapping,
) -> None:
    """The dataset card (README.md) beside the data files, with the first kept pair as its example."""
    card = render_card(
        n_rows=len(kept),
        configs=configs,
        stats=stats,
        settings=settings,
        provenance=origin,
        example=kept[0] if kept else None,
    )
    with atomic_open(path) as handle:
        handle.write(card)


def build_dataset(
    rows: Sequence[dict],
    paths: DatasetPaths,
    *,
    policy: Mapping[str, str],
    near_identical_threshold: float,
    min_plain_share: float,
    test_fraction: float,
    judge_min_margin: float = default("judge.min_margin"),
    settings: Mapping[str, Any],
    question_stats: Mapping | None = None,
    pair_stats: Mapping | None = None,
    throughput: Sequence[dict] = (),
    workflow_commit: str = "unknown",
    config_hash: str = "unknown",
    estimate: Mapping | None = None,
    benchmarks: Sequence[str | os.PathLike] = (),
) -> dict:
    """Filter the pairs and write every output of ``paths``; returns the stats.

    ``estimate`` is what the preflight recorded at the start of the run; ``benchmarks`` the
    shard jobs' benchmark files: the report sets one beside the other (meddpo.dataset.costs).
    """
    kept, dropped, quality_counts = apply_policy(
        rows,
        policy,
        near_identical_threshold=near_identical_threshold,
        min_plain_share=min_plain_share,
        judge_min_margin=judge_min_margin,
    )
    every = kept + dropped
    origin = provenance(every, question_stats, workflow_commit=workflow_commit, config_hash=config_hash)
    stats = build_stats(
        kept,
        dropped,
        question_stats=question_stats,
        pair_stats=pair_stats,
        quality_counts=quality_counts,
        throughput=throughput,
        provenance=origin,
        judge_min_margin=judge_min_margin,
    )
    stats["estimate_and_actual"] = estimate_and_actual(estimate, benchmarks, stats["teacher_usage"])
    stats["quality_settings"] = {
        "near_identical_threshold": near_identical_threshold,
        "min_plain_share": min_plain_share,
        "judge_min_margin": judge_min_margin,
    }
    if test_fraction > 0 and (paths.train is None or paths.test is None):
        raise DataError("a test_fraction above 0 needs the split paths (--out-train, --out-test)")
    write_jsonl(paths.pairs, kept)
    write_jsonl(paths.dropped, dropped)
    configs = _write_formats(kept, paths, test_fraction, settings["prompts"]["training"])
    write_report(
        kept, dropped, stats, stats_path=paths.stats, report_path=paths.report, plots_dir=paths.plots
    )
    _write_card(paths.card, kept, configs, stats, settings, origin)
    log.info("%d pairs: %d kept, %d dropped %s -> %s", len(every), len(kept), len(dropped),
             stats["dropped_by_reason"], paths.pairs)  # fmt: skip
    return stats
