"""Stage 2A: read MedQuAD, clean, de-duplicate, categorise and pick N questions.

The source is the Hugging Face dataset ``lavita/MedQuAD`` (loaded with
``datasets.load_dataset``) or a local parquet / jsonl / csv file with the same
columns. Every output row is::

    {id, source, question_type, category, question,
     medquad_category, question_focus, question_id, document_id,
     document_source, document_url, umls_semantic_group}

* ``id`` is ``mq-`` plus 16 hex digits of the SHA-256 of the normalised question
  (lower case, runs of white space folded). After de-duplication no two rows share
  a normalised question, so ids are unique, and a question keeps its id whatever
  N or the selection mode. MedQuAD's own ``question_id`` is not unique and is kept
  only as a field.
* ``category`` is the normalised ``question_type`` ("genetic changes" ->
  "genetic_changes"). When ``question_type`` is empty, ``guess_category`` applies
  the keyword heuristic in ``CATEGORY_KEYWORDS`` to the question text.
* MedQuAD's ``category`` column (Disease / Drug / Other) is kept as
  ``medquad_category``.
* A question enters only as text: a value that is not a string (a number, a
  list, ...) is dropped and counted as ``dropped_not_text``. Invisible
  characters (controls such as NUL, format characters such as U+200B, U+202E,
  U+FEFF) are removed and the questions that held any counted as
  ``invisible_removed``. After white space is folded, questions shorter than
  ``min_chars`` or longer than ``max_chars`` are dropped and counted as
  ``dropped_short`` / ``dropped_long``.
* A source with no rows, or none that survive cleaning, stops here with one
  line ("no questions in <file>"), never later in the workflow.

The stage is three parts, one module each: reading the source (meddpo.questions.sources),
cleaning and de-duplicating it (meddpo.questions.cleaning) and picking N questions
(meddpo.questions.selection, whose docstring says how each mode picks). This module runs
them in that order and writes the stats.

Imports: those three modules, meddpo.jsonl and meddpo.config.settings (the defaults).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Mapping
from typing import Any

from meddpo.config.settings import default
from meddpo.jsonl import DataError
from meddpo.questions.cleaning import clean_and_dedupe
from meddpo.questions.selection import select_questions
from meddpo.questions.sources import load_source_rows, no_questions

log = logging.getLogger(__name__)


def build_questions(
    dataset: str,
    *,
    n: int | None,
    selection: str = default("questions.selection"),
    seed: int = default("questions.seed"),
    min_chars: int = default("questions.min_chars"),
    max_chars: int | None = default("questions.max_chars"),
    stratify: str = default("questions.stratify"),
    split: str = default("source.split"),
    revision: str | None = default("source.revision"),
    source_name: str | None = None,
) -> tuple[list[dict], dict]:
    """Load, clean, de-duplicate and select; returns ``(rows, stats)``.

    ``max_chars`` of None means no upper limit on a question's length.
    """
    started = time.perf_counter()
    raw, fingerprint = load_source_rows(dataset, split=split, revision=revision)
    questions, counts = clean_and_dedupe(
        raw, source=source_name or dataset, min_chars=min_chars, max_chars=max_chars
    )
    if not questions:
        raise _nothing_survives(dataset, counts, min_chars, max_chars)
    picked = select_questions(questions, n, selection, seed, stratify)
    stats = {
        "source": source_name or dataset,
        "source_location": dataset,
        "source_fingerprint": fingerprint,
        "selection": selection,
        "seed": seed,
        "n_requested": n,
        **counts,
        "picked": len(picked),
        "picked_per_category": dict(sorted(Counter(r["category"] for r in picked).items())),
    }
    stats["seconds"] = round(time.perf_counter() - started, 2)
    return picked, stats


def build_from_settings(settings: Mapping[str, Any]) -> tuple[list[dict], dict]:
    """``build_questions`` with the ``source`` and ``questions`` settings by their config names, in one
    flat mapping: a run's ``{**config["source"], **config["questions"]}`` (as the questions rule
    passes them) or the options of ``meddpo questions``."""
    return build_questions(
        settings["dataset"],
        n=settings["n"],
        selection=settings["selection"],
        seed=settings["seed"],
        min_chars=settings["min_chars"],
        max_chars=settings["max_chars"],
        stratify=settings["stratify"],
        split=settings["split"],
        revision=settings["revision"],
        source_name=settings["name"],
    )


def _nothing_survives(dataset: str, counts: dict, min_chars: int, max_chars: int | None) -> DataError:
    """The one line for a source whose rows all fall out in cleaning: what they were."""
    read = counts["read"]
    if counts["dropped_not_text"] == read:
        return DataError(
            f"no questions in {dataset}: its 'question' column holds no text (none of its {read} values "
            "is a string; numbers?); point source.dataset at a source whose 'question' column is text"
        )
    reasons = [
        f"{counts['dropped_empty']} empty",
        f"{counts['dropped_not_text']} not text",
        f"{counts['dropped_short']} shorter than questions.min_chars ({min_chars})",
        f"{counts['dropped_long']} longer than questions.max_chars ({max_chars})",
    ]
    said = ", ".join(reason for reason in reasons if not reason.startswith("0 "))
    return no_questions(dataset, f"none of its {read} rows is a usable question ({said})")


def summary_line(stats: dict) -> str:
    """What question building did, in one log line."""
    s = stats
    return (
        f"read {s['read']} rows: {s['invisible_removed']} with invisible characters removed; "
        f"{s['dropped_empty']} empty, {s['dropped_not_text']} not text, "
        f"{s['dropped_short']} short, {s['dropped_long']} long, {s['dropped_duplicate']} duplicates "
        f"({s['dropped_duplicate_exact']} exact) dropped; picked {s['picked']} ({s['selection']}) "
        f"in {s['seconds']:.1f}s"
    )
