"""The pair/verdict data model: what ``meta.judge`` of a pair holds and how it is read.

The keys of the answer texts a verdict graded (item_key, pair_keys), the checks
of a pairs file a judge reads (check_pairs, read_pairs), combining the verdict
rows of several judge kinds into ``meta.judge`` (combine, attach), the margins
(margin_side, pair_side), the summary (judge_summary) and the notes on a judge
of the teacher's or the rejected model's family (model_family, self_judging).
What a pairs file's rows must hold is rows.py's; check_pairs stops at the first
row a judge must not grade.

The pairs, quality, validate and report steps read verdicts through this
module, and so does the judge stage that writes them.

The margin of a pair is the chosen answer's score minus the rejected one's, per
judge; with both judges it is the mean of the two (of those that graded both
answers). It runs from -1 (chosen judged unsafe, rejected safe) to 1.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from meddpo.dataset.rows import JUDGED_META, duplicate_problem, pair_problems, valid_id
from meddpo.jsonl import DataError, iter_jsonl
from meddpo.planning.paths import DEMO_MODEL_NOTES, demo_model_of

KINDS = ("classifier", "rubric")
VERDICT_FIELDS = ("id", "kind", "judge", "keys", "chosen", "rejected")
STATUSES = ("judged", "unparseable", "failed", "off")

# --------------------------------------------------------------------------- items


def item_key(question: str, answer: str) -> str:
    """The store id of one (question, answer): a new answer text is a new item."""
    digest = hashlib.sha256(f"{question}\x00{answer}".encode()).hexdigest()
    return f"a{digest[:20]}"


def pair_keys(pair: Mapping) -> dict[str, str]:
    """The item keys of a pair's two answers: a verdict row names the texts it graded."""
    return {role: item_key(pair["question"], pair[role]) for role in ("chosen", "rejected")}


# --------------------------------------------------------------------------- pairs files


def check_pairs(numbered: Iterable[tuple[int, Mapping]], source: str, unit: str = "line") -> None:
    """Raise DataError at the first pair a judge must not grade, in one line naming ``source``, the
    line (or row), the id and the field: the first problem of rows.pair_problems (the row's fields,
    no meta key required: a judge grades files of the older layout too) or an id an earlier pair has.

    Every row is checked before the first request, so nothing is paid for a file with junk in it.
    """
    first_seen: dict[str, int] = {}
    for number, pair in numbered:
        problems = pair_problems(pair, JUDGED_META)
        advice = "fix or remove this pair"
        if not problems and (duplicate := duplicate_problem(pair, number, first_seen, unit)):
            problems = [duplicate]
            advice = "one verdict row per pair id: remove or rename one of them"
        if problems:
            ident = f" (id {valid_id(pair)})" if valid_id(pair) else ""
            raise DataError(
                f"{source}, {unit} {number}{ident}: {problems[0]}; {advice}, then rerun (nothing was sent)"
            )


def read_pairs(path: str | os.PathLike) -> list[dict]:
    """The pairs of a file for a judge, every row checked (see check_pairs)."""
    numbered = list(iter_jsonl(path))
    check_pairs(numbered, str(path))
    return [pair for _, pair in numbered]


# --------------------------------------------------------------------------- pairs and margins


def combine(by_kind: Mapping[str, Mapping]) -> dict:
    """``meta.judge`` of one pair from its verdict row of each judge that ran (none: status ``off``)."""
    if not by_kind:
        return {"status": "off"}
    margins = {}
    for kind, row in sorted(by_kind.items()):
        chosen, rejected = row["chosen"], row["rejected"]
        if chosen["status"] == "judged" and rejected["status"] == "judged":
            margins[kind] = round(chosen["score"] - rejected["score"], 4)
    statuses = {row[role]["status"] for row in by_kind.values() for role in ("chosen", "rejected")}
    if margins:
        status = "judged"
    elif "unparseable" in statuses:
        status = "unparseable"
    else:
        status = "failed"
    return {
        "status": status,
        "margin": round(sum(margins.values()) / len(margins), 4) if margins else None,
        "margins": margins,
        "chosen": {kind: row["chosen"] for kind, row in sorted(by_kind.items())},
        "rejected": {kind: row["rejected"] for kind, row in sorted(by_kind.items())},
        "judges": {kind: row["judge"] for kind, row in sorted(by_kind.items())},
    }


def attach(pairs: Sequence[dict], verdict_files: Mapping[str, Sequence[dict]]) -> list[dict]:
    """Pairs with ``meta.judge``; ``verdict_files`` maps a file name to its verdict rows.

    Every pair must have one verdict row of every judge kind found: a verdict
    file that was cut short, or that belongs to other pairs, is an error.
    """
    by_pair: dict[str, dict[str, dict]] = {}
    kinds: set[str] = set()
    where: dict[tuple[str, str], str] = {}
    for name, rows in verdict_files.items():
        for line, row in enumerate(rows, 1):
            kinds.add(row["kind"])
            slot = by_pair.setdefault(row["id"], {})
            if row["kind"] in slot:
                raise DataError(
                    f"{name}: line {line}: id {row['id']}: a second {row['kind']} verdict "
                    f"(the first is in {where[(row['id'], row['kind'])]})"
                )
            slot[row["kind"]] = row
            where[(row["id"], row["kind"])] = name
    ids = {pair["id"] for pair in pairs}
    for (pair_id, kind), name in where.items():
        if pair_id not in ids:
            raise DataError(f"{name}: id {pair_id}: a {kind} verdict for a pair that is not in the pairs")
    out = []
    for pair in pairs:
        found = by_pair.get(pair["id"], {})
        missing = sorted(kinds - set(found))
        if missing:
            raise DataError(
                f"pair id {pair['id']}: no {missing[0]} verdict in the judge files; "
                "was a verdict file cut short?"
            )
        keys = pair_keys(pair)
        for kind, row in found.items():
            if row["keys"] != keys:
                raise DataError(
                    f"{where[(pair['id'], kind)]}: id {pair['id']}: the {kind} verdict graded other answer "
                    "texts than this pair's (a verdict file from an earlier run?); judge the pairs again"
                )
        out.append({**pair, "meta": {**pair["meta"], "judge": combine(found)}})
    return out


FAMILIES = ("gemini", "gemma", "qwen", "mistral", "mixtral", "llama", "granite", "phi", "gpt")


def model_family(model: str) -> str | None:
    """The model family a hub id or checkpoint path names (``Qwen/Qwen2.5-7B`` -> qwen), if known.

    A word of the name must start with the family's name: ``dolphin`` is not ``phi``.
    """
    words = re.split(r"[^a-z0-9]+", model.lower().rsplit("/", 1)[-1])
    for family in FAMILIES:
        if any(word.startswith(family) for word in words):
            return "mistral" if family == "mixtral" else family
    return None


def self_judging(
    teacher_models: Sequence[str], rejected_models: Sequence[str], judges: Mapping[str, Mapping]
) -> list[str]:
    """Lines for the report where a judge is the teacher or the rejected model, or of its family.

    A model grading answers it wrote, or answers like its own, tends to favour them: judged by
    the teacher's family, 'chosen judged safer' leans high; by the rejected model's, low.
    """
    notes = []
    for kind, judge in sorted(judges.items()):
        family = model_family(judge["model"])
        for role, models, lean in (
            ("teacher", teacher_models, "an upper bound"),
            ("rejected model", rejected_models, "a lower bound"),
        ):
            for model in models:
                if model == judge["model"]:
                    notes.append(
                        f"The {role} ({model}) is the {kind} judge itself: a model grading its own answers "
                        f"tends to favour them, so 'chosen judged safer' is {lean}."
                    )
                elif family and family == model_family(model):
                    notes.append(
                        f"The {kind} judge ({judge['model']}) is of the {role}'s family ({family}): "
                        "judges tend to favour answers written like their own, so 'chosen judged safer' "
                        f"may be {lean}."
                    )
    return notes


def demo_judging(judges: Mapping[str, Mapping]) -> list[str]:
    """Lines for the report where a judge is one of the models the demo builds: not a real grader."""
    notes = []
    for kind, judge in sorted(judges.items()):
        name = demo_model_of(judge["model"])
        if name:
            notes.append(
                f"The {kind} judge is a model the demo built ({DEMO_MODEL_NOTES[name]}): its verdicts are "
                "not informative and show the machinery only."
            )
    return notes


def margin_side(margin: float, min_margin: float) -> str:
    """``safer`` (chosen ahead by at least min_margin), ``inverted`` (behind by that much) or ``tie``."""
    if margin > 0 and margin >= min_margin:
        return "safer"
    if margin < 0 and margin <= -min_margin:
        return "inverted"
    return "tie"


def pair_side(judge: Mapping[str, Any], min_margin: float) -> str | None:
    """Where a judged pair falls: ``inverted`` if any judge finds chosen less safe by min_margin,
    else ``safer`` or ``tie`` by the mean margin; None for a pair without a margin.

    With one judge this is its margin's side. With two, one judge's inversion is not averaged
    away by the other's tie (a classifier often finds both answers safe: margin 0).
    """
    if judge.get("status") != "judged":
        return None
    if any(margin_side(m, min_margin) == "inverted" for m in (judge.get("margins") or {}).values()):
        return "inverted"
    return margin_side(judge["margin"], min_margin)


def judge_summary(rows: Sequence[Mapping], min_margin: float) -> dict:
    """How many pairs the judge found chosen safer, equal or less safe, and why the others have no margin."""
    statuses: Counter = Counter()
    safer = equal = less = 0
    for row in rows:
        judge = (row.get("meta") or {}).get("judge") or {"status": "off"}
        statuses[judge["status"]] += 1
        side = pair_side(judge, min_margin)
        if side is None:
            continue
        safer += side == "safer"
        less += side == "inverted"
        equal += side == "tie"
    return {
        "pairs": len(rows),
        "with_verdict": safer + equal + less,
        "chosen_safer": safer,
        "equal": equal,
        "chosen_less_safe": less,
        "status": {status: statuses.get(status, 0) for status in STATUSES},
    }
