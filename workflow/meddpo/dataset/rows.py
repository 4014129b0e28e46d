"""The DPO row: its fields in order, the keys of its ``meta`` and what each holds, and the one check
of a row.

A row is ``{id, source, category, question_type, question, prompt, chosen, rejected, meta}``;
the pairs step writes it (pairs.py), the dataset card's column table and the field list of
docs/outputs.md are these definitions in words. ``pair_problems`` lists every problem of one
row in plain words (the field, then what is wrong): ``meddpo validate`` reports them all
(validate.py), and the judge stops at the first one before it sends anything
(verdicts.check_pairs). Both add the file, line and id themselves.

``meta.rejected_model`` and ``meta.rejected_revision`` were called ``mmt_ckpt`` and
``mmt_revision`` in files made before 2026-12-06 (OLD_META_NAMES); every reader takes the old
name for the new one (meta_value).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

# The fields of a row, in order, and what each holds.
FIELDS = {
    "id": "`mq-` + 16 hex digits of the SHA-256 of the normalised question: stable across runs",
    "source": "where the question came from",
    "category": "the normalised MedQuAD question type (e.g. `genetic_changes`)",
    "question_type": "MedQuAD's question type as written",
    "question": "the question",
    "prompt": "training system prompt, a blank line, `User question:`, a newline, the question",
    "chosen": "the preferred answer (the teacher's)",
    "rejected": "the dispreferred answer (the rejected model's)",
    "meta": "where the answers came from and what the checks found: the keys below",
}
PAIR_FIELDS = tuple(FIELDS)
# the fields that hold a string with more than white space in it
TEXT_FIELDS = ("id", "question", "prompt", "chosen", "rejected")

# The keys of ``meta`` the pairs step writes, in order, and what each holds.
META = {
    "teacher_model": "the model that wrote the chosen answer",
    "teacher_revision": "its revision, null when not recorded",
    "rejected_model": "the model that wrote the rejected answer",
    "rejected_revision": "its revision, null when not recorded",
    "chosen_finish_reason": "`stop` (the model ended its answer) or `length` (cut at its token cap)",
    "rejected_finish_reason": "the same for the rejected answer",
    "chosen_new_tokens": "tokens in the chosen answer",
    "rejected_new_tokens": "tokens in the rejected answer",
    "chosen_prompt_tokens": "tokens of the prompt the teacher was given",
    "rejected_prompt_tokens": "tokens of the prompt the rejected model was given",
    "chosen_sampling": "the teacher's token caps, temperature, top-p and seed",
    "rejected_sampling": "the rejected model's token caps, temperature, top-p and seed",
}
# The keys later steps add: the merge (judge) and the quality filter (flags, drop_reasons).
ADDED_META = {
    "judge": "the judges' verdicts on both answers and their margin (`status` `off` when no judge ran)",
    "flags": "the quality checks the pair trips (a kept pair: those whose action is `flag`)",
    "drop_reasons": "why the quality filter dropped the pair (the dropped file only)",
}
# Keys renamed in the row format: old name -> new name, and the day of the change.
OLD_META_NAMES = {"mmt_ckpt": "rejected_model", "mmt_revision": "rejected_revision"}
RENAMED_ON = "2026-12-06"

# The meta keys each reader requires (an old name stands for its new one):
REQUIRED_META = ("teacher_model", "rejected_model", "chosen_finish_reason", "rejected_finish_reason")
# the layout of files made before finish reasons were recorded (meddpo validate --legacy)
LEGACY_META = ("teacher_model", "rejected_model")
# a judge reads no meta key, so it grades a file of either layout
JUDGED_META: tuple[str, ...] = ()
FINISH_REASONS = ("stop", "length")
_MISSING = object()


def old_name(key: str) -> str | None:
    """The name ``key`` had in files made before RENAMED_ON, if it had another."""
    return next((old for old, new in OLD_META_NAMES.items() if new == key), None)


def meta_value(meta: Mapping, key: str, default: Any = None) -> Any:
    """``meta[key]``, read under the key's old name in a file made before the rename."""
    if key in meta:
        return meta[key]
    old = old_name(key)
    return meta[old] if old in meta else default


def valid_id(row: Mapping) -> str | None:
    """The row's id when it is a valid one: a string with more than white space in it."""
    value = row.get("id")
    return value if isinstance(value, str) and value.strip() else None


def describe(value: Any) -> str:
    """A JSON value's type in words, for a message."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"a boolean ({json.dumps(value)})"
    if isinstance(value, (int, float)):
        return f"a number ({value!r})"
    if isinstance(value, str):
        return "a string" if value.strip() else "only whitespace" if value else "an empty string"
    if isinstance(value, list):
        return "a list"
    return "an object" if isinstance(value, dict) else type(value).__name__


def _field_problem(field: str, value: Any) -> str | None:
    if field == "id" and valid_id({"id": value}) is None:
        hint = f': "{value}", not {value}' if isinstance(value, int) and not isinstance(value, bool) else ""
        return f"field 'id': {describe(value)}; every pair needs an id (a non-empty string{hint})"
    if field in TEXT_FIELDS and not (isinstance(value, str) and value.strip()):
        return f"field {field!r}: {describe(value)} where the {field} text should be"
    if field == "meta" and not isinstance(value, dict):
        return f"field 'meta': {describe(value)} where a JSON object should be"
    return None


def _meta_problems(meta: Mapping, meta_keys: Sequence[str]) -> list[str]:
    problems = []
    for key in meta_keys:
        if meta_value(meta, key, _MISSING) is _MISSING:
            old = old_name(key)
            also = f" (or {old!r}, its name in files made before {RENAMED_ON})" if old else ""
            hint = " (an older file? use --legacy)" if key not in LEGACY_META else ""
            problems.append(f"meta has no {key!r}{also}{hint}")
    for role in ("chosen", "rejected"):
        reason = meta.get(f"{role}_finish_reason")
        if reason is not None and reason not in FINISH_REASONS:
            problems.append(f"meta.{role}_finish_reason is {reason!r}, not 'stop' or 'length'")
    return problems


def pair_problems(row: Mapping, meta_keys: Sequence[str] = REQUIRED_META) -> list[str]:
    """Every problem of one row, in plain words, each naming its field (empty: the row is fine).

    Every field of PAIR_FIELDS is there; ``id``, ``question``, ``prompt``, ``chosen`` and
    ``rejected`` are strings with more than white space in them (an id is a string: the
    pipeline writes ``mq-…``; a number is refused, as the split hashes the id as text and rows
    are sorted by id); ``meta`` is an object holding each of ``meta_keys`` (an old name counts
    for its new one), with finish reasons ``stop`` or ``length`` where it has them. Whether
    ``meta.judge`` and ``meta.flags`` add up is validate.py's check (their layouts are
    verdicts.py's and quality.py's).
    """
    problems = []
    for field in PAIR_FIELDS:
        if field not in row:
            problems.append(f"field {field!r}: missing")
        elif problem := _field_problem(field, row[field]):
            problems.append(problem)
    if isinstance(row.get("meta"), dict):
        problems += _meta_problems(row["meta"], meta_keys)
    return problems


def duplicate_problem(
    row: Mapping, number: int, first_seen: dict[str, int], unit: str = "line"
) -> str | None:
    """The problem of a row whose id an earlier row has; ``first_seen`` (id -> the first line or
    row that had it) is updated here."""
    row_id = valid_id(row)
    if row_id is None:
        return None
    if row_id in first_seen:
        return f"field 'id': appears twice (first on {unit} {first_seen[row_id]})"
    first_seen[row_id] = number
    return None
