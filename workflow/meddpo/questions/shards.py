"""Split the picked questions into shards; each shard is one generation job.

Shard membership is a pure function of the question ids and ``n_shards``:
questions are ordered by id (a hash, so the order mixes question types and
lengths) and dealt round-robin, so shard sizes differ by at most one and every
question lands in exactly one shard. The workflow names shards 000 .. n_shards-1
from the config, so the DAG is known before any job runs.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from meddpo.jsonl import DataError, iter_jsonl


def shard_rows(questions: Sequence[dict], n_shards: int, index: int) -> list[dict]:
    """The rows of shard ``index`` (0-based) out of ``n_shards``, in id order."""
    if not 0 <= index < n_shards:
        raise DataError(f"shard index {index} is outside 0..{n_shards - 1} (n_shards is {n_shards})")
    ordered = sorted(questions, key=lambda row: row["id"])
    return ordered[index::n_shards]


def read_shard(path: str | os.PathLike, required: Sequence[str] = ("id", "question")) -> list[dict]:
    """The rows of a question or shard file, checked before any work is done on them.

    Every row needs a non-empty text ``id`` and ``question``, and no id may appear
    twice (two rows would carry one question's answer). The first problem ends
    the job with one line naming the file, line, field and id.
    """
    rows: list[dict] = []
    first_line: dict[str, int] = {}
    for line, row in iter_jsonl(path, required=required):
        row_id = row["id"]
        if not isinstance(row_id, str) or not row_id.strip():
            raise DataError(f"{path}, line {line}, field 'id': empty or not text ({row_id!r})")
        question = row["question"]
        if not isinstance(question, str) or not question.strip():
            raise DataError(f"{path}, line {line}, field 'question': empty or not text (id {row_id})")
        if row_id in first_line:
            first = first_line[row_id]
            raise DataError(
                f"{path}, line {line}, field 'id': id {row_id} appears twice (first on line {first})"
            )
        first_line[row_id] = line
        rows.append(row)
    return rows
