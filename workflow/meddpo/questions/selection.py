"""Picking N of the cleaned questions: first, seeded random or stratified by question type.

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

Imports: the standard library, meddpo.jsonl (DataError) and meddpo.config.settings (the schema's
allowed values) only.
"""

from __future__ import annotations

import hashlib
import heapq
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from fractions import Fraction
from typing import Any

from meddpo.config.settings import choices
from meddpo.jsonl import DataError

# the allowed values, from the config schema (questions.selection, questions.stratify)
SELECTION_MODES = choices("questions.selection")
STRATIFY_MODES = choices("questions.stratify")


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
    if mode == "stratified" and stratify not in STRATIFY_MODES:
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
