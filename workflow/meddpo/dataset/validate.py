"""Check a DPO pairs file: schema, unique ids, non-empty fields, flags against finish reasons.

``validate_pairs`` returns a list of readable problems (empty when the file is
fine); each names the line and the id. ``legacy=True`` accepts the older layout
(``meta`` with only ``teacher_model`` and ``mmt_ckpt``, no finish reasons).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from pathlib import Path

from meddpo.dataset.pairs import PAIR_FIELDS
from meddpo.dataset.quality import FLAGS
from meddpo.dataset.verdicts import STATUSES
from meddpo.jsonl import DataError, iter_jsonl, read_jsonl

TEXT_FIELDS = ("id", "question", "prompt", "chosen", "rejected")
CURRENT_META = ("teacher_model", "mmt_ckpt", "chosen_finish_reason", "rejected_finish_reason")
LEGACY_META = ("teacher_model", "mmt_ckpt")


def validate_pairs(
    path: str | Path, *, legacy: bool = False, max_problems: int = 200
) -> tuple[int, list[str]]:
    """Returns ``(rows read, problems)``."""
    problems: list[str] = []
    seen: dict[str, int] = {}
    rows = 0

    def problem(line: int, row_id, text: str) -> None:
        problems.append(f"line {line}" + (f" (id {row_id})" if row_id else "") + f": {text}")

    with open(path, "rb") as handle:
        for line, raw in enumerate(handle, start=1):
            if len(problems) >= max_problems:
                problems.append(f"... stopped after {max_problems} problems")
                return rows, problems
            if not raw.strip():
                continue
            rows += 1
            row, unreadable = _decode_row(raw)
            if unreadable:
                problem(line, None, unreadable)
                continue
            _check_row(row, line, seen, legacy, functools.partial(problem, line, row.get("id")))
    if rows == 0:
        problems.append("the file holds no rows")
    return rows, problems


def _decode_row(raw: bytes) -> tuple[dict, str | None]:
    """One line as a JSON object, or why it is not one."""
    try:
        row = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as err:
        return {}, f"not UTF-8 text (byte {err.start + 1} of the line)"
    except json.JSONDecodeError as err:
        # the error's own text says "line 1": the decoder saw this one line alone
        return {}, f"not a JSON line ({err.msg} at column {err.colno})"
    if not isinstance(row, dict):
        return {}, "not a JSON object"
    return row, None


def _check_row(
    row: dict, line: int, seen: dict[str, int], legacy: bool, problem: Callable[[str], None]
) -> None:
    """The problems of one row: its fields, its id (``seen``: first line of each id), its meta."""
    # The pair-row checks of verdicts.check_pairs (what a judge can grade) overlap these, but they
    # stop at the first problem with other messages; this report lists every problem in its own words.
    row_id = row.get("id")
    for field in PAIR_FIELDS:
        if field not in row:
            problem(f"missing field '{field}'")
    for field in TEXT_FIELDS:
        if field in row and (not isinstance(row[field], str) or not row[field].strip()):
            problem(f"field '{field}' is empty or not a string")
    if isinstance(row_id, str) and row_id:
        if row_id in seen:
            problem(f"duplicate id (first on line {seen[row_id]})")
        else:
            seen[row_id] = line
    meta = row.get("meta")
    if "meta" in row and not isinstance(meta, dict):
        problem("field 'meta' is not an object")
        return
    if isinstance(meta, dict):
        _check_meta(meta, legacy, problem)


def _check_meta(meta: dict, legacy: bool, problem: Callable[[str], None]) -> None:
    """The problems of one row's meta: its keys, finish reasons, judge and flags."""
    for key in LEGACY_META if legacy else CURRENT_META:
        if key not in meta:
            problem(f"meta has no '{key}'" + ("" if legacy else " (an older file? use --legacy)"))
    for role in ("chosen", "rejected"):
        reason = meta.get(f"{role}_finish_reason")
        if reason is not None and reason not in ("stop", "length"):
            problem(f"meta.{role}_finish_reason is {reason!r}, not 'stop' or 'length'")
    judge = meta.get("judge")
    if judge is not None:
        _check_judge(judge, problem)
    flags = meta.get("flags")
    if flags is not None:
        if not isinstance(flags, list) or any(f not in FLAGS for f in flags):
            problem(f"meta.flags {flags!r} holds an unknown flag")
            return
        for role in ("chosen", "rejected"):
            reason = meta.get(f"{role}_finish_reason")
            if reason == "stop" and f"{role}_truncated" in flags:
                problem(f"flag {role}_truncated but {role} finish reason is 'stop'")


def _check_judge(judge, problem: Callable[[str], None]) -> None:
    """The problem of a ``meta.judge`` whose status and margin do not add up, if any."""
    status = judge.get("status") if isinstance(judge, dict) else None
    margin = judge.get("margin") if isinstance(judge, dict) else None
    if status not in STATUSES:
        problem(f"meta.judge.status is {status!r}, not one of {', '.join(STATUSES)}")
    elif (status == "judged") != isinstance(margin, (int, float)) or (
        status == "judged" and not -1 <= margin <= 1
    ):
        problem(f"meta.judge: status {status!r} with margin {margin!r}")


def check_against_questions(
    pairs_path: str | Path,
    questions_path: str | Path,
    dropped_path: str | Path | None = None,
    left_out: int | None = None,
) -> list[str]:
    """Problems when a dataset does not account for its question set.

    Every pair (and dropped pair) must be one of the questions, with its text;
    with ``left_out`` (the questions the pairs step counted as unanswered), the
    questions with neither a pair nor a dropped pair must number exactly that:
    a shard file that lost rows shows up here as a shortfall.
    """
    questions = {q["id"]: q["question"] for q in read_jsonl(questions_path, required=("id", "question"))}
    problems = []
    placed: set[str] = set()
    for path in [pairs_path] + ([dropped_path] if dropped_path else []):
        for line, row in iter_jsonl(path, required=("id", "question")):
            if row["id"] not in questions:
                problems.append(f"{path}, line {line} (id {row['id']}): not a question of {questions_path}")
            elif row["question"] != questions[row["id"]]:
                problems.append(
                    f"{path}, line {line} (id {row['id']}): question text differs from {questions_path}"
                )
            placed.add(row["id"])
    unplaced = len(set(questions) - placed)
    if left_out is not None and unplaced != left_out:
        problems.append(
            f"{len(questions)} questions in {questions_path}: {unplaced} have no pair, but the pairs step "
            f"left out {left_out}; an answer or pair file lost rows"
        )
    return problems


def require_pairs_file(path: str | Path) -> None:
    """Stop with one line when ``path`` is not a file of DPO pairs at all (its first row has none of
    prompt, chosen, rejected), instead of listing every row's missing fields."""
    for line, row in iter_jsonl(path):
        if not any(field in row for field in ("prompt", "chosen", "rejected")):
            raise DataError(
                f"{path}, line {line}: not a pairs file (a DPO row has prompt, chosen and rejected; "
                f"this one has {', '.join(sorted(row)[:6]) or 'no fields'})"
            )
        return
    raise DataError(f"{path}: the file holds no rows")
