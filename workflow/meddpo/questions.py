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

Selection is nested: with the same source and seed, the questions picked for N
are always among those picked for any larger N, whatever the mode. Each mode
first puts every question into one fixed, seeded order (``selection_order``)
and then keeps the first N of it:

* ``first``: source order.
* ``random``: ascending SHA-256 of ``f"{seed}|{id}"`` (the "seeded rank").
* ``stratified``: places are handed out one by one to the question types. With
  ``stratify="proportional"`` each place goes to the type with the highest
  Sainte-Lague/Webster priority ``size / (places_so_far + 0.5)``; with
  ``"equal"`` it goes to the type holding the fewest places so far. A type that
  has all its questions stops receiving places, and ties go to the type whose
  name sorts first. Inside a type, questions come in seeded-rank order.
  Because each place is added on top of the previous ones, growing N never
  takes a place away from a type (a largest-remainder split can: the Alabama
  paradox).

The returned rows are always in source order, so only membership is nested,
not the position of a row in the output.
"""

from __future__ import annotations

import hashlib
import heapq
import logging
import os
import re
import time
import unicodedata
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from fractions import Fraction
from pathlib import Path
from typing import Any

from .jsonl import DataError, iter_jsonl
from .settings import default

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


def _invisible(char: str) -> bool:
    """A control character that is not white space (NUL, ESC, DEL, the C1 block), a format
    character (zero-width space U+200B, joiners, the bidi marks and overrides such as U+202E,
    the byte order mark U+FEFF, the soft hyphen) or a lone surrogate (a JSON escape such as
    ``\\ud800``, which cannot be written as UTF-8)."""
    category = unicodedata.category(char)
    return category in ("Cf", "Cs") or (category == "Cc" and not char.isspace())


def remove_invisible(text: str) -> str:
    """``text`` without the characters of ``_invisible``: they show nothing, or turn text
    around (U+202E), in a question a model is asked and a person reads."""
    if text.isprintable():  # the common case: nothing to look at one by one
        return text
    return "".join(char for char in text if not _invisible(char))


def clean_text(text: str) -> str:
    """Remove invisible characters, then fold every run of white space (newlines and tabs
    included) into one space."""
    return " ".join(remove_invisible(text).split())


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


def is_local_source(dataset: str) -> bool:
    """A file or folder on this machine, not a hub id (the preflight and the plan ask this too)."""
    return (
        os.path.exists(dataset)
        or Path(dataset).suffix.lower() in LOCAL_FORMATS
        or dataset.startswith((".", "/"))
    )


LOADED_COLUMNS = (*REQUIRED_COLUMNS, "category", *KEPT_COLUMNS)


def _no_questions(where: str, why: str) -> DataError:
    return DataError(f"no questions in {where}: {why}; point source.dataset at a source with questions")


def _not_utf8(where: str, raw: bytes, err: UnicodeDecodeError) -> DataError:
    bad = raw[err.start : err.start + 1]
    return DataError(
        f"{where}: not UTF-8 text (byte {err.start + 1} of the value: {bad!r}); save the source as UTF-8"
    )


def _check_jsonl(path: Path) -> int:
    """Rows of a JSONL source; our reader names the line (and field, column) of a bad row."""
    try:
        rows = 0
        for number, row in iter_jsonl(path, required=REQUIRED_COLUMNS):
            rows += 1
            for column in LOADED_COLUMNS:
                value = row.get(column)
                if isinstance(value, str) and any("\ud800" <= char <= "\udfff" for char in value):
                    raise DataError(
                        f"{path}, line {number}, field {column!r}: a lone surrogate escape (\\ud800 to "
                        "\\udfff without its pair) is not text; remove it"
                    )
        return rows
    except DataError as err:
        if path.suffix.lower() == ".json" and "not valid JSON" in str(err):
            raise DataError(
                f"{err}; a .json source must hold one JSON object per line (JSON Lines)"
            ) from None
        raise


def _check_csv(path: Path) -> int:
    """Data rows of a CSV source (blank lines aside); bytes that are not UTF-8 name line, row and column."""
    import csv
    import io

    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    reader = csv.reader(
        io.StringIO((text or data.decode("utf-8", "surrogateescape")).lstrip("\ufeff"), newline="")
    )
    header = next(reader, None) or []
    rows = 0
    while True:
        line = reader.line_num + 1  # where the record starts (a quoted field may hold line breaks)
        record = next(reader, None)
        if record is None:
            break
        if not any(field.strip() for field in record):
            continue
        rows += 1
        if text is not None:
            continue
        for index, field in enumerate(record):
            try:
                field.encode("utf-8")
            except UnicodeEncodeError:
                name = header[index] if index < len(header) else f"#{index + 1}"
                raw = field.encode("utf-8", "surrogateescape")
                err = _first_decode_error(raw)
                raise _not_utf8(f"{path}, line {line} (row {rows}), column {name!r}", raw, err) from None
    if text is None:  # the bad bytes are in the header
        raw = data.split(b"\n", 1)[0]
        raise _not_utf8(f"{path}, line 1 (the header)", raw, _first_decode_error(raw))
    return rows


def _first_decode_error(raw: bytes) -> UnicodeDecodeError:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as err:
        return err
    raise AssertionError("the bytes decode")  # pragma: no cover - called only on bytes that do not


def _check_arrow_text(batches, where: str) -> None:
    """Raise DataError naming the row and column of the first string that is not UTF-8.

    Arrow does not check the bytes of a string column when it reads a Parquet
    file; they fail only once turned into Python text.
    """
    import pyarrow as pa

    first_row = 0
    for batch in batches:
        for name, column in zip(batch.schema.names, batch.columns, strict=True):
            if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
                continue
            try:
                column.validate(full=True)
                continue
            except pa.ArrowInvalid:
                pass
            binary = pa.large_binary() if pa.types.is_large_string(column.type) else pa.binary()
            for offset, raw in enumerate(column.view(binary).to_pylist()):
                if raw is None:
                    continue
                try:
                    raw.decode("utf-8")
                except UnicodeDecodeError as err:
                    raise _not_utf8(
                        f"{where}, row {first_row + offset + 1}, column {name!r}", raw, err
                    ) from None
        first_row += batch.num_rows


def _check_parquet(path: Path) -> int:
    """Rows of a Parquet source; a file that is not Parquet, or text that is not UTF-8, is one line."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
        columns = [name for name in LOADED_COLUMNS if name in parquet.schema_arrow.names]
        if parquet.metadata.num_rows:
            _check_arrow_text(parquet.iter_batches(columns=columns), str(path))
    except (pa.ArrowException, OSError) as err:
        raise DataError(f"{path}: could not be read as Parquet: {_first_line(err)}") from None
    return parquet.metadata.num_rows


_CHECKS = {"json": _check_jsonl, "csv": _check_csv, "parquet": _check_parquet}


def _check_local_source(path: Path) -> str:
    """Read-check a local source (a file, or a folder of them) before datasets loads it.

    Returns the datasets builder of the file (the folder itself for a folder).
    """
    if path.is_dir():
        files = sorted(f for f in path.rglob("*") if f.is_file() and f.suffix.lower() in LOCAL_FORMATS)
        if not files:
            raise _no_questions(str(path), f"the folder holds no {', '.join(LOCAL_FORMATS)} file")
        builder = str(path)
    else:
        files = [path]
        builder = LOCAL_FORMATS.get(path.suffix.lower())
        if builder is None:
            raise DataError(f"{path}: unknown format {path.suffix!r}; use .parquet, .jsonl or .csv")
    if sum(_CHECKS[LOCAL_FORMATS[f.suffix.lower()]](f) for f in files) == 0:
        raise _no_questions(str(path), "the source has no rows")
    return builder


def _quiet_datasets():
    """datasets logs its own ERROR lines before it raises; the error here is one line of ours."""
    import datasets

    datasets.logging.set_verbosity(logging.CRITICAL)
    datasets.disable_progress_bars()
    return datasets


def load_source_rows(
    dataset: str, split: str = "train", revision: str | None = None
) -> tuple[list[dict[str, Any]], str]:
    """Rows of the source as dicts, through ``datasets.load_dataset``, and a fingerprint of the source.

    ``dataset`` is a hub id (``lavita/MedQuAD``), a local parquet/jsonl/csv file
    or a local directory holding such files. Failures become one-line DataErrors
    naming the file, and where it applies the line or row and the column; a
    source without rows is "no questions in <file>".
    """
    datasets = _quiet_datasets()  # heavy import, kept out of module import time
    if is_local_source(dataset):
        path = Path(dataset)
        if not path.exists():
            raise DataError(f"{path}: source file not found (config key source.dataset)")
        builder = _check_local_source(path)
        files = None if path.is_dir() else str(path)
        try:
            ds = datasets.load_dataset(builder, data_files=files, split=split)
        except Exception as err:  # noqa: BLE001 - turned into one clear line
            kind = "a dataset folder" if path.is_dir() else builder
            raise DataError(f"{path}: could not be read as {kind}: {_first_line(err)}") from None
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
    if len(ds) == 0:
        raise _no_questions(dataset, f"split {split!r} has no rows")
    keep = [c for c in LOADED_COLUMNS if c in ds.column_names]
    ds = ds.select_columns(keep)
    if not Path(dataset).is_file():  # a hub dataset or a folder: not looked at row by row yet
        _check_arrow_text(ds.data.to_batches(), dataset)
    return ds.to_list(), source_fingerprint(dataset, ds)


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


COUNT_KEYS = (
    "read",
    "dropped_empty",
    "dropped_not_text",
    "dropped_short",
    "dropped_long",
    "dropped_duplicate",
    "dropped_duplicate_exact",
    "invisible_removed",
    "category_guessed",
    "kept",
)


def clean_and_dedupe(
    rows: Iterable[dict[str, Any]], *, source: str, min_chars: int, max_chars: int | None = None
) -> tuple[list[dict], dict]:
    """Clean, drop unusable and duplicate questions, assign ids and categories.

    A question that is missing or blank counts as ``dropped_empty``; one that is
    not a string at all (a number, a list, a dict, ...) as ``dropped_not_text``.
    Control and format characters (NUL, U+202E, U+200B, U+FEFF, ...; see
    ``remove_invisible``) are removed first and each question that held any is
    counted in ``invisible_removed``; one with nothing else in it is then empty.
    Lengths are measured after white space is folded: below ``min_chars`` is
    ``dropped_short``, above ``max_chars`` (when given) is ``dropped_long``.

    Returns ``(questions, counts)``; questions keep source order and the first
    occurrence of each duplicate. ``counts`` has the keys of ``COUNT_KEYS``, in
    that order.
    """
    counts: Counter = Counter()
    seen: set[str] = set()
    seen_exact: set[str] = set()
    out: list[dict] = []
    for row in rows:
        counts["read"] += 1
        raw_question = row.get("question")
        if raw_question is None:
            raw_question = ""
        elif not isinstance(raw_question, str):
            counts["dropped_not_text"] += 1
            continue
        counts["invisible_removed"] += remove_invisible(raw_question) != raw_question
        question = clean_text(raw_question)
        if not question:
            counts["dropped_empty"] += 1
            continue
        if len(question) < min_chars:
            counts["dropped_short"] += 1
            continue
        if max_chars is not None and len(question) > max_chars:
            counts["dropped_long"] += 1
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
    return out, {key: counts.get(key, 0) for key in COUNT_KEYS}


# --------------------------------------------------------------------------- selection


def seeded_rank(seed: int, row_id: str) -> bytes:
    """Sort key of a question for ``seed``: SHA-256 of ``"<seed>|<id>"``.

    It depends only on the seed and the question's own id, so adding or removing
    other questions never reorders the ones already there.
    """
    return hashlib.sha256(f"{seed}|{row_id}".encode()).digest()


def _rank_order(questions: Sequence[dict], indices: Iterable[int], seed: int) -> list[int]:
    """``indices`` sorted by seeded rank (the source index settles a hash tie)."""
    return sorted(indices, key=lambda i: (seeded_rank(seed, questions[i]["id"]), i))


def _place_sequence(sizes: dict[str, int], n: int, stratify: str) -> list[str]:
    """Which group receives each of the first ``n`` places, one place at a time.

    ``proportional``: the Sainte-Lague/Webster divisor method; the next place
    goes to the group with the largest ``size / (places + 0.5)``, compared as
    exact fractions. ``equal``: the group with the fewest places so far. A group
    leaves the running once it holds as many places as it has questions, and
    equal priorities go to the group name that sorts first. Every place is added
    to the ones before it, so the sequence for n is a prefix of the one for n + 1.
    A heap over the groups makes each place cost O(log groups).
    """
    if stratify == "proportional":

        def priority(group: str, places: int) -> Any:
            # heapq pops the smallest key: negate the Webster quotient.
            return -Fraction(2 * sizes[group], 2 * places + 1)

    elif stratify == "equal":

        def priority(group: str, places: int) -> Any:
            return places

    else:
        raise DataError(
            f"config key questions.stratify: unknown value {stratify!r}; use 'proportional' or 'equal'"
        )
    places = dict.fromkeys(sizes, 0)
    heap = [(priority(group, 0), group) for group, size in sizes.items() if size > 0]
    heapq.heapify(heap)
    sequence: list[str] = []
    while heap and len(sequence) < n:
        _, group = heapq.heappop(heap)
        sequence.append(group)
        places[group] += 1
        if places[group] < sizes[group]:
            heapq.heappush(heap, (priority(group, places[group]), group))
    return sequence


def selection_order(
    questions: Sequence[dict],
    mode: str,
    seed: int,
    stratify: str = "proportional",
    n: int | None = None,
) -> list[int]:
    """Source indices of ``questions`` in the order ``mode`` picks them.

    ``select_questions(questions, k, ...)`` is exactly the first k of this order
    (put back into source order), which is what makes selections nested. With
    ``n`` only the first ``n`` are worked out; without it, all of them.
    """
    if mode not in SELECTION_MODES:
        raise DataError(
            f"config key questions.selection: unknown mode {mode!r}; use one of {SELECTION_MODES}"
        )
    if n is not None and n < 0:
        raise DataError(f"config key questions.n: must be 0 or more, got {n}")
    limit = len(questions) if n is None else min(n, len(questions))
    if mode == "first":
        return list(range(limit))
    if mode == "random":
        return _rank_order(questions, range(len(questions)), seed)[:limit]
    groups: dict[str, list[int]] = defaultdict(list)
    for index, row in enumerate(questions):
        groups[row["category"]].append(index)
    sequence = _place_sequence({g: len(idx) for g, idx in groups.items()}, limit, stratify)
    wanted = Counter(sequence)
    ranked = {g: iter(_rank_order(questions, groups[g], seed)[: wanted[g]]) for g in wanted}
    return [next(ranked[g]) for g in sequence]


def select_questions(
    questions: Sequence[dict], n: int | None, mode: str, seed: int, stratify: str = "proportional"
) -> list[dict]:
    """Pick n questions deterministically; the result keeps source order.

    The pick is the first n of ``selection_order`` (see the module docstring),
    so for a fixed seed and input the questions picked for n are a subset of
    those picked for any larger n:

    * ``first``: the first n in source order.
    * ``random``: the n questions with the lowest seeded rank.
    * ``stratified``: places handed to the ``question_type`` categories one at a
      time, by Webster's divisor method (``proportional``) or round robin
      (``equal``), each type capped at its size; the lowest seeded ranks inside
      each type.
    """
    if mode not in SELECTION_MODES:
        raise DataError(
            f"config key questions.selection: unknown mode {mode!r}; use one of {SELECTION_MODES}"
        )
    if mode == "stratified" and stratify not in ("proportional", "equal"):
        raise DataError(
            f"config key questions.stratify: unknown value {stratify!r}; use 'proportional' or 'equal'"
        )
    if n is None:
        return list(questions)
    if n < 0:
        raise DataError(f"config key questions.n: must be 0 or more, got {n}")
    if n > len(questions):
        raise DataError(
            f"config key questions.n: asked for {n} questions but only {len(questions)} remain "
            "after cleaning and de-duplication"
        )
    picked = selection_order(questions, mode, seed, stratify, n=n)
    return [questions[i] for i in sorted(picked)]


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
    return _no_questions(dataset, f"none of its {read} rows is a usable question ({said})")


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
