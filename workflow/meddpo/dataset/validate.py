"""Check a DPO pairs file: every row's fields and meta (rows.pair_problems), unique ids, and the
judge's margins and the quality flags against the finish reasons.

``validate_pairs`` returns a list of readable problems (empty when the file is fine); each names
the line and the id. ``legacy=True`` accepts the older layout (``meta`` with only the two model
names, no finish reasons).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from meddpo.dataset.quality import FLAGS
from meddpo.dataset.rows import LEGACY_META, REQUIRED_META, duplicate_problem, pair_problems, valid_id
from meddpo.dataset.verdicts import STATUSES
from meddpo.jsonl import DataError, iter_jsonl, read_jsonl


def validate_pairs(
    path: str | Path, *, legacy: bool = False, max_problems: int = 200
) -> tuple[int, list[str]]:
    """Returns ``(rows read, problems)``."""
    problems: list[str] = []
    seen: dict[str, int] = {}
    rows = 0
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
                problems.append(f"line {line}: {unreadable}")
                continue
            where = f"line {line}" + (f" (id {valid_id(row)})" if valid_id(row) else "")
            problems += [f"{where}: {text}" for text in _row_problems(row, line, seen, legacy)]
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


def _row_problems(row: dict, line: int, seen: dict[str, int], legacy: bool) -> list[str]:
    """The problems of one row: its fields and meta, its id (``seen``: first line of each id), and
    whether its judge margin and flags add up."""
    problems = pair_problems(row, LEGACY_META if legacy else REQUIRED_META)
    if duplicate := duplicate_problem(row, line, seen):
        problems.append(duplicate)
    meta = row.get("meta")
    if isinstance(meta, dict):
        if meta.get("judge") is not None:
            _check_judge(meta["judge"], problems.append)
        _check_flags(meta, problems.append)
    return problems


def _check_flags(meta: dict, problem: Callable[[str], None]) -> None:
    """The problem of ``meta.flags`` naming an unknown flag, or a cut answer that ended at 'stop'."""
    flags = meta.get("flags")
    if flags is None:
        return
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
