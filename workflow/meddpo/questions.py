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
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from .jsonl import DataError, iter_jsonl

log = logging.getLogger(__name__)

REQUIRED_COLUMNS = ("question", "question_type")
# MedQuAD columns carried into the question rows (when the source has them).
KEPT_COLUMNS = (
    "question_focus",
    "question_id",
    "document_id",
    "document_source",
    "document_url",
    "umls_semantic_group",
)
LOCAL_FORMATS = {".parquet": "parquet", ".jsonl": "json", ".json": "json", ".csv": "csv"}
SELECTION_MODES = ("first", "random", "stratified")

# Keyword heuristic for rows without a question_type: the first pattern that
# matches the lower-cased question wins; nothing matching gives "information".
# The categories are MedQuAD's own question types, normalised.
CATEGORY_KEYWORDS: tuple[tuple[str, str], ...] = (
    (r"\bside effects?\b", "side_effects"),
    (r"\bsymptoms?\b|\bsigns?\b", "symptoms"),
    (r"\bgenetic changes?\b|\bgenes?\b|\bmutations?\b", "genetic_changes"),
    (r"\binherit", "inheritance"),
    (r"\bhow many people\b|\bhow common\b|\bprevalen", "frequency"),
    (r"\bprevent", "prevention"),
    (r"\bdiagnos|\btests?\b|\bexams?\b", "exams_and_tests"),
    (r"\boutlook\b|\bprognosis\b|\blife expectancy\b", "outlook"),
    (r"\bcauses?\b|\bwhy do\b|\brisk factors?\b", "causes"),
    (r"\btreat|\btherap|\bcure\b|\bmanage", "treatment"),
    (r"\bdose\b|\bdosage\b|\bhow much\b|\bhow (?:should|do) i take\b", "usage"),
    (r"\boverdose\b|\bemergency\b", "emergency_or_overdose"),
)
_KEYWORD_PATTERNS = tuple((re.compile(pattern), category) for pattern, category in CATEGORY_KEYWORDS)


def clean_text(text: str) -> str:
    """Fold every run of white space (newlines and tabs included) into one space."""
    return " ".join(text.split())


def normalise_question(text: str) -> str:
    """The de-duplication key: lower case with white space folded."""
    return " ".join(text.lower().split())


def question_id(question: str) -> str:
    """Stable id derived from the normalised question text."""
    digest = hashlib.sha256(normalise_question(question).encode("utf-8")).hexdigest()
    return f"mq-{digest[:16]}"


def normalise_question_type(question_type: str) -> str:
    """ "genetic changes" -> "genetic_changes": lower case, non-alphanumerics to '_'."""
    return re.sub(r"[^a-z0-9]+", "_", question_type.lower()).strip("_")


def guess_category(question: str) -> str:
    """Category for a question without a question_type (see CATEGORY_KEYWORDS)."""
    lowered = question.lower()
    for pattern, category in _KEYWORD_PATTERNS:
        if pattern.search(lowered):
            return category
    return "information"


# --------------------------------------------------------------------------- loading


def _is_local_reference(dataset: str) -> bool:
    return (
        os.path.exists(dataset)
        or Path(dataset).suffix.lower() in LOCAL_FORMATS
        or dataset.startswith((".", "/"))
    )


def _check_utf8(path: Path) -> None:
    """Raise DataError naming the first line of ``path`` that is not UTF-8."""
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise DataError(f"{path}, line {number}: not UTF-8 text (byte {err.start})") from None


def load_source_rows(
    dataset: str, split: str = "train", revision: str | None = None
) -> tuple[list[dict[str, Any]], str]:
    """Rows of the source as dicts, through ``datasets.load_dataset``, and a fingerprint of the source.

    ``dataset`` is a hub id (``lavita/MedQuAD``), a local parquet/jsonl/csv file
    or a local directory holding such files. Failures become one-line DataErrors.
    """
    import datasets  # heavy import, kept out of module import time

    datasets.logging.set_verbosity_error()
    datasets.disable_progress_bars()
    if _is_local_reference(dataset):
        path = Path(dataset)
        if not path.exists():
            raise DataError(f"{path}: source file not found (config key source.dataset)")
        if path.is_dir():
            builder, files = str(path), None
        else:
            builder = LOCAL_FORMATS.get(path.suffix.lower())
            if builder is None:
                raise DataError(f"{path}: unknown format {path.suffix!r}; use .parquet, .jsonl or .csv")
            files = str(path)
            if builder == "json":
                # Our own reader names the line of a malformed row; datasets' would not.
                for _ in iter_jsonl(path, required=REQUIRED_COLUMNS):
                    pass
            elif builder == "csv":
                _check_utf8(path)
        try:
            ds = datasets.load_dataset(builder, data_files=files, split=split)
        except Exception as err:  # noqa: BLE001 - turned into one clear line
            raise DataError(f"{path}: could not be read as {builder}: {_first_line(err)}") from None
    else:
        try:
            ds = datasets.load_dataset(dataset, split=split, revision=revision)
        except Exception as err:  # noqa: BLE001 - no traceback wall for an offline machine
            raise DataError(
                f"could not load {dataset!r} from the Hugging Face Hub "
                f"({type(err).__name__}: {_first_line(err)}). Without network access, copy the dataset to "
                "this machine and set source.dataset in the config to the local .parquet/.jsonl/.csv file."
            ) from None
    missing = [column for column in REQUIRED_COLUMNS if column not in ds.column_names]
    if missing:
        raise DataError(
            f"{dataset}: missing column(s) {', '.join(repr(m) for m in missing)}; found {ds.column_names}"
        )
    keep = [c for c in (*REQUIRED_COLUMNS, "category", *KEPT_COLUMNS) if c in ds.column_names]
    return ds.select_columns(keep).to_list(), source_fingerprint(dataset, ds)


def source_fingerprint(dataset: str, ds) -> str:
    """SHA-256 of a local source file, else the datasets library's fingerprint of what it loaded."""
    path = Path(dataset)
    if path.is_file():
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        return f"sha256:{digest.hexdigest()}"
    return f"datasets:{getattr(ds, '_fingerprint', 'unknown')}"


def _first_line(err: BaseException) -> str:
    text = str(err).strip() or type(err).__name__
    return text.splitlines()[0][:300]


# --------------------------------------------------------------------------- building


def _as_text(value: Any) -> str:
    return "" if value is None else str(value)


def clean_and_dedupe(
    rows: Iterable[dict[str, Any]], *, source: str, min_chars: int
) -> tuple[list[dict], dict]:
    """Clean, drop short/empty/duplicate questions, assign ids and categories.

    Returns ``(questions, counts)``; questions keep source order and the first
    occurrence of each duplicate.
    """
    counts: Counter = Counter()
    seen: set[str] = set()
    seen_exact: set[str] = set()
    out: list[dict] = []
    for row in rows:
        counts["read"] += 1
        raw_question = _as_text(row.get("question"))
        question = clean_text(raw_question)
        if not question:
            counts["dropped_empty"] += 1
            continue
        if len(question) < min_chars:
            counts["dropped_short"] += 1
            continue
        key = normalise_question(question)
        exact_repeat = raw_question in seen_exact
        seen_exact.add(raw_question)
        if key in seen:
            counts["dropped_duplicate"] += 1
            counts["dropped_duplicate_exact"] += exact_repeat
            continue
        seen.add(key)
        question_type = clean_text(_as_text(row.get("question_type")))
        category = normalise_question_type(question_type) if question_type else guess_category(question)
        if not question_type:
            counts["category_guessed"] += 1
        record = {
            "id": question_id(question),
            "source": source,
            "question_type": question_type,
            "category": category,
            "question": question,
            "medquad_category": _as_text(row.get("category")) or None,
        }
        for column in KEPT_COLUMNS:
            value = row.get(column)
            record[column] = None if value is None else clean_text(str(value)) or None
        out.append(record)
    counts["kept"] = len(out)
    return out, {
        key: counts.get(key, 0)
        for key in (
            "read",
            "dropped_empty",
            "dropped_short",
            "dropped_duplicate",
            "dropped_duplicate_exact",
            "category_guessed",
            "kept",
        )
    }


def _quotas(sizes: dict[str, int], n: int, weights: dict[str, float]) -> dict[str, int]:
    """Split n over groups in proportion to ``weights``, never above a group's size.

    Largest-remainder rounding; what a full group cannot take is spread over the
    others in the same proportions. Ties break on the group name, so the result
    is deterministic.
    """
    quota = {group: 0 for group in sizes}
    open_groups = {g for g in sizes if sizes[g] > 0}
    remaining = n
    while remaining > 0 and open_groups:
        total = sum(weights[g] for g in open_groups)
        exact = {g: remaining * weights[g] / total for g in open_groups}
        share = {g: min(int(exact[g]), sizes[g] - quota[g]) for g in open_groups}
        leftover = remaining - sum(share.values())
        by_remainder = sorted(open_groups, key=lambda g: (-(exact[g] - int(exact[g])), g))
        for g in by_remainder:
            if leftover == 0:
                break
            if quota[g] + share[g] < sizes[g]:
                share[g] += 1
                leftover -= 1
        for g, k in share.items():
            quota[g] += k
        remaining = n - sum(quota.values())
        open_groups = {g for g in open_groups if quota[g] < sizes[g]}
        if not any(share.values()):
            break
    return quota


def select_questions(
    questions: Sequence[dict], n: int | None, mode: str, seed: int, stratify: str = "proportional"
) -> list[dict]:
    """Pick n questions deterministically; the result keeps source order.

    * ``first``: the first n in source order.
    * ``random``: a uniform sample seeded by ``seed``.
    * ``stratified``: per ``question_type`` (its normalised category), either in
      proportion to the type's size (``proportional``) or as evenly as the types
      allow (``equal``); a seeded sample inside each type.
    """
    if mode not in SELECTION_MODES:
        raise DataError(
            f"config key questions.selection: unknown mode {mode!r}; use one of {SELECTION_MODES}"
        )
    if n is None:
        return list(questions)
    if n > len(questions):
        raise DataError(
            f"config key questions.n: asked for {n} questions but only {len(questions)} remain "
            "after cleaning and de-duplication"
        )
    if mode == "first":
        return list(questions[:n])
    rng = random.Random(seed)
    if mode == "random":
        return [questions[i] for i in sorted(rng.sample(range(len(questions)), n))]
    groups: dict[str, list[int]] = defaultdict(list)
    for index, row in enumerate(questions):
        groups[row["category"]].append(index)
    sizes = {g: len(idx) for g, idx in groups.items()}
    if stratify == "proportional":
        weights = {g: float(s) for g, s in sizes.items()}
    elif stratify == "equal":
        weights = {g: 1.0 for g in sizes}
    else:
        raise DataError(
            f"config key questions.stratify: unknown value {stratify!r}; use 'proportional' or 'equal'"
        )
    quota = _quotas(sizes, n, weights)
    picked: list[int] = []
    for group in sorted(groups):
        picked.extend(rng.sample(groups[group], quota[group]))
    return [questions[i] for i in sorted(picked)]


def build_questions(
    dataset: str,
    *,
    n: int | None,
    selection: str = "first",
    seed: int = 0,
    min_chars: int = 10,
    stratify: str = "proportional",
    split: str = "train",
    revision: str | None = None,
    source_name: str | None = None,
) -> tuple[list[dict], dict]:
    """Load, clean, de-duplicate and select; returns ``(rows, stats)``."""
    raw, fingerprint = load_source_rows(dataset, split=split, revision=revision)
    questions, counts = clean_and_dedupe(raw, source=source_name or dataset, min_chars=min_chars)
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
    return picked, stats
