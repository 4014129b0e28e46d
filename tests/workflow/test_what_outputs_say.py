"""The demo's report, card and answer files say only what is so, and the docs describe them as
they are (the session's tiny demo run, read only)."""

import json
import re

import pytest

from conftest import REPO
from meddpo.jsonl import read_jsonl

pytestmark = pytest.mark.slow


def test_the_report_notes_that_the_judges_are_the_rejected_model(demo_run):
    # demo/tiny.yaml promises it ("the report notes it"); it used to be in stats.json only
    report = (demo_run.workdir / "results" / "demo" / "dataset" / "report.md").read_text()
    for kind in ("classifier", "rubric"):
        assert (
            f"Note: The rejected model (results/demo/models/tiny-mistral) is the {kind} judge itself: a "
            "model grading its own answers tends to favour them, so 'chosen judged safer' is a lower bound."
        ) in report


def test_the_card_and_report_say_only_what_is_so(demo_run):
    dataset = demo_run.workdir / "results" / "demo" / "dataset"
    card, report = (dataset / "README.md").read_text(), (dataset / "report.md").read_text()
    # demo/tiny.yaml picks the first questions in source order: no seed draws them
    assert "63 picked (the first in source order)." in card and "seed 2025" not in card
    # the sampling in words, the answer floor included (min_new_tokens 4), never a Python dict
    assert (
        "- **Chosen answers**: `results/demo/models/tiny-qwen2` (revision none: a local checkpoint folder "
        "or an API model has no hub commit), sampling temperature 0.7, top-p 0.9, 96 new tokens at most, "
        "4 at least, seed 2."
    ) in card
    assert "{'" not in card
    # a model read from a folder has no hub revision: said so, never `None` or a dash
    for text in (card.split("## Provenance")[1], report.split("## Provenance")[1]):
        assert "None" not in text and "—" not in text
        assert (
            "| rejected_revision | none: a local checkpoint folder or an API model has no hub commit |"
            in text
        )
    # nothing was dropped: no plot of "0 of N" labels, and the report says why there is none
    stats = json.loads((dataset / "stage2_med_pairs.stats.json").read_text())
    assert stats["stages"]["pairs_dropped"] == 0
    assert sorted(p.name for p in (dataset / "plots").glob("*.png")) == [
        "lengths.png",
        "truncation_by_category.png",
    ]
    assert "The filter policy dropped no pair, so there is no plot of drops by category." in report


def test_answer_rows_have_the_fields_the_docs_list(demo_run):
    outputs = (REPO / "docs" / "outputs.md").read_text()
    [row] = [line for line in outputs.splitlines() if line.startswith("| `rejected/shard-NNN.jsonl`")]
    documented = re.search(r"`\{([^}]*)\}`", row).group(1).split(", ")
    answers = read_jsonl(demo_run.workdir / "results" / "demo" / "rejected" / "shard-000.jsonl")
    # `created` was in every row and in no doc
    assert list(answers[0]) == documented
