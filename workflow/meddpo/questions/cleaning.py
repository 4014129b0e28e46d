"""Turning source rows into question rows: cleaning, ids, categories, de-duplication.

A question is text only; invisible characters are removed, white space is
folded, lengths are bounded, and duplicates (same question after case and white
space folding) are dropped. Each kept row gets its id (``question_id``) and its
category (the normalised ``question_type``, else the keyword heuristic of
``CATEGORY_KEYWORDS``). ``clean_and_dedupe`` counts every row it drops, by reason.

Imports: the standard library and meddpo.questions.sources (the column names) only.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable
from typing import Any

from meddpo.questions.sources import KEPT_COLUMNS

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
        usable = _usable_question(row, counts, min_chars, max_chars)
        if usable is None:
            continue
        raw_question, question = usable
        key = normalise_question(question)
        exact_repeat = raw_question in seen_exact
        seen_exact.add(raw_question)
        if key in seen:
            counts["dropped_duplicate"] += 1
            counts["dropped_duplicate_exact"] += exact_repeat
            continue
        seen.add(key)
        out.append(_question_record(row, question, source, counts))
    counts["kept"] = len(out)
    return out, {key: counts.get(key, 0) for key in COUNT_KEYS}


def _usable_question(
    row: dict[str, Any], counts: Counter, min_chars: int, max_chars: int | None
) -> tuple[str, str] | None:
    """``(raw, cleaned)`` question of a row, or None for a row dropped (and counted in ``counts``)."""
    raw_question = row.get("question")
    if raw_question is None:
        raw_question = ""
    elif not isinstance(raw_question, str):
        counts["dropped_not_text"] += 1
        return None
    counts["invisible_removed"] += remove_invisible(raw_question) != raw_question
    question = clean_text(raw_question)
    if not question:
        counts["dropped_empty"] += 1
        return None
    if len(question) < min_chars:
        counts["dropped_short"] += 1
        return None
    if max_chars is not None and len(question) > max_chars:
        counts["dropped_long"] += 1
        return None
    return raw_question, question


def _question_record(row: dict[str, Any], question: str, source: str, counts: Counter) -> dict:
    """The output row of a kept question: id, category (a guessed one is counted) and kept columns."""
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
    return record
