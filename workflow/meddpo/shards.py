"""Split the picked questions into shards; each shard is one generation job.

Shard membership is a pure function of the question ids and ``n_shards``:
questions are ordered by id (a hash, so the order mixes question types and
lengths) and dealt round-robin, so shard sizes differ by at most one and every
question lands in exactly one shard. The workflow names shards 000 .. n_shards-1
from the config, so the DAG is known before any job runs.
"""

from __future__ import annotations

from collections.abc import Sequence


def shard_rows(questions: Sequence[dict], n_shards: int, index: int) -> list[dict]:
    """The rows of shard ``index`` (0-based) out of ``n_shards``, in id order."""
    if not 0 <= index < n_shards:
        raise ValueError(f"shard index {index} is outside 0..{n_shards - 1}")
    ordered = sorted(questions, key=lambda row: row["id"])
    return ordered[index::n_shards]
