"""The dataset stage (meddpo.dataset.build): filter, split, formats, report and card, written where told."""

import json
import os

import pyarrow.parquet as pq
import pytest
import yaml

from meddpo.dataset.build import DatasetPaths, build_dataset, conversational, in_test_split
from meddpo.dataset.card import model_terms, source_lines
from meddpo.jsonl import DataError, read_jsonl

TRAINING = "Be a careful assistant."
GOOD = "Rest and fluids help most people. See a doctor if the fever lasts more than three days."
BAD = "Take whatever pills you have at home, it will pass."


def _row(i, chosen=GOOD, rejected=BAD, chosen_reason="stop"):
    return {
        "id": f"mq-{i:04d}",
        "source": "test",
        "category": "treatment" if i % 2 else "symptoms",
        "question_type": "treatment" if i % 2 else "symptoms",
        "question": f"What should I do about fever number {i}?",
        "prompt": f"{TRAINING}\n\nUser question:\nWhat should I do about fever number {i}?",
        "chosen": chosen,
        "rejected": rejected,
        "meta": {
            "teacher_model": "Qwen/Qwen2.5-7B-Instruct",
            "teacher_revision": "abc",
            "rejected_model": "my-org/loose-model",
            "rejected_revision": "def",
            "chosen_finish_reason": chosen_reason,
            "rejected_finish_reason": "stop",
        },
    }


def _paths(folder, **optional):
    return DatasetPaths(
        pairs=folder / "data" / "pairs.jsonl",
        dropped=folder / "data" / "dropped.jsonl",
        stats=folder / "stats.json",
        report=folder / "report.md",
        card=folder / "README.md",
        plots=folder / "figures",
        **optional,
    )


SETTINGS = {"prompts": {"training": TRAINING, "teacher": "t", "rejected": "r"}, "source_name": "test"}


def _build(rows, paths, test_fraction=0.0, policy=None):
    return build_dataset(
        rows,
        paths,
        policy=policy or {},
        near_identical_threshold=0.9,
        min_plain_share=0.9,
        test_fraction=test_fraction,
        settings=SETTINGS,
        workflow_commit="c0ffee",
        config_hash="1234",
    )


def test_every_output_goes_where_the_rule_says(tmp_path):
    rows = [_row(i) for i in range(40)] + [_row(40, chosen_reason="length"), _row(41, chosen=BAD)]
    paths = _paths(
        tmp_path,
        conversational=tmp_path / "conv.jsonl",
        parquet=tmp_path / "pairs.parquet",
        train=tmp_path / "split" / "train.jsonl",
        test=tmp_path / "split" / "test.jsonl",
        conversational_train=tmp_path / "split" / "conv-train.jsonl",
        conversational_test=tmp_path / "split" / "conv-test.jsonl",
        parquet_train=tmp_path / "split" / "train.parquet",
        parquet_test=tmp_path / "split" / "test.parquet",
    )
    stats = _build(rows, paths, test_fraction=0.25)

    kept, dropped = read_jsonl(paths.pairs), read_jsonl(paths.dropped)
    assert len(kept) == 40 and [r["id"] for r in dropped] == ["mq-0040", "mq-0041"]
    assert dropped[0]["meta"]["drop_reasons"] == ["chosen_truncated"]
    assert dropped[1]["meta"]["drop_reasons"] == ["near_identical"]
    assert stats["stages"]["pairs_kept"] == 40 and stats["stages"]["pairs_dropped"] == 2
    assert (
        stats["provenance"]["workflow_commit"] == "c0ffee" and stats["provenance"]["config_sha256"] == "1234"
    )
    assert json.loads(paths.stats.read_text())["stages"]["pairs_kept"] == 40

    train, test = read_jsonl(paths.train), read_jsonl(paths.test)
    assert sorted(r["id"] for r in train + test) == sorted(r["id"] for r in kept)
    assert {r["id"] for r in test} == {r["id"] for r in kept if in_test_split(r["id"], 0.25)}
    assert 4 <= len(test) <= 16  # 40 ids at a 25% share
    # every format follows the same assignment: no test row leaks into another format's train split
    for fmt_train, fmt_test in ((paths.conversational_train, paths.conversational_test),):
        assert [r["id"] for r in read_jsonl(fmt_train)] == [r["id"] for r in train]
        assert [r["id"] for r in read_jsonl(fmt_test)] == [r["id"] for r in test]
    assert [r["id"] for r in pq.read_table(paths.parquet_train).to_pylist()] == [r["id"] for r in train]
    assert [r["id"] for r in pq.read_table(paths.parquet_test).to_pylist()] == [r["id"] for r in test]

    conv = read_jsonl(paths.conversational)
    assert conv[0] == {
        "id": "mq-0000",
        "prompt": [
            {"role": "system", "content": TRAINING},
            {"role": "user", "content": "What should I do about fever number 0?"},
        ],
        "chosen": [{"role": "assistant", "content": GOOD}],
        "rejected": [{"role": "assistant", "content": BAD}],
    }
    table = pq.read_table(paths.parquet).to_pylist()
    assert len(table) == 40 and json.loads(table[0]["meta"])["teacher_model"] == "Qwen/Qwen2.5-7B-Instruct"

    assert sorted(p.name for p in paths.plots.iterdir()) == [
        "drops_by_category.png",
        "lengths.png",
        "truncation_by_category.png",
    ]
    report = paths.report.read_text()
    assert "](figures/lengths.png)" in report

    card = paths.card.read_text()
    assert (
        'pairs = load_dataset("json", data_files={"train": "split/train.jsonl", "test": "split/test.jsonl"})'
        in card
    )
    header = yaml.safe_load(card.split("---")[1])
    assert header["configs"] == [
        {
            "config_name": "default",
            "data_files": [
                {"split": "train", "path": "split/train.jsonl"},
                {"split": "test", "path": "split/test.jsonl"},
            ],
        },
        {
            "config_name": "conversational",
            "data_files": [
                {"split": "train", "path": "split/conv-train.jsonl"},
                {"split": "test", "path": "split/conv-test.jsonl"},
            ],
        },
    ]
    # the Parquet copy is not a header config (a folder load reads one format: it would be read
    # as JSON); the card's example loads it with its own loader, and every line of it runs
    assert (
        'pairs_parquet = load_dataset("parquet", data_files={"train": "split/train.parquet", '
        '"test": "split/test.parquet"})' in card
    )
    from datasets import load_dataset

    example = card.split("```python\n", 1)[1].split("```", 1)[0]
    cwd = os.getcwd()
    os.chdir(paths.card.parent)
    try:
        scope = {}
        exec(example, scope)
        folder = load_dataset(str(paths.card.parent), "conversational")
    finally:
        os.chdir(cwd)
    assert scope["pairs_parquet"]["test"]["id"] == scope["pairs"]["test"]["id"] == [r["id"] for r in test]
    assert folder["train"].num_rows == len(train)


def test_optional_outputs_are_written_only_when_asked(tmp_path):
    _build([_row(i) for i in range(5)], _paths(tmp_path))
    written = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    # (nothing was dropped: no plot of drops)
    assert written == [
        "README.md",
        "data/dropped.jsonl",
        "data/pairs.jsonl",
        "figures/lengths.png",
        "figures/truncation_by_category.png",
        "report.md",
        "stats.json",
    ]


def test_a_split_without_its_paths_is_refused(tmp_path):
    with pytest.raises(DataError, match="needs the split paths"):
        _build([_row(1)], _paths(tmp_path), test_fraction=0.5)


def test_test_split_is_a_pure_function_of_the_id():
    assert in_test_split("mq-0001", 0.0) is False and in_test_split("mq-0001", 1.0) is True
    ids = [f"mq-{i:05d}" for i in range(2000)]
    share = sum(in_test_split(i, 0.1) for i in ids) / len(ids)
    assert 0.08 < share < 0.12


def test_conversational_layout():
    assert conversational([_row(3)], "S")[0]["prompt"][0] == {"role": "system", "content": "S"}


def test_card_names_only_licences_it_knows():
    lines = model_terms(
        ["Qwen/Qwen2.5-7B-Instruct", "gemini-2.5-flash", "my-org/loose-model", "Qwen/Qwen2.5-7B-Instruct"]
    )
    assert lines == [
        "- `Qwen/Qwen2.5-7B-Instruct`: released under the Apache 2.0 licence.",
        "- `gemini-2.5-flash`: answers generated through the Gemini API are subject to its Additional Terms "
        "of Service (including its rules on using outputs to develop models).",
        "- `my-org/loose-model`: terms not known to this workflow: check the model's own card before "
        "redistributing.",
    ]


def test_card_of_a_run_lists_the_models_it_used(tmp_path):
    paths = _paths(tmp_path)
    _build([_row(i) for i in range(3)], paths)
    card = paths.card.read_text()
    assert "`Qwen/Qwen2.5-7B-Instruct`: released under the Apache 2.0 licence" in card
    assert "`my-org/loose-model`: terms not known to this workflow" in card
    assert "Mistral" not in card and "Gemini" not in card


def test_a_file_made_before_the_rename_still_names_its_rejected_model(tmp_path):
    # meta.rejected_model and meta.rejected_revision were mmt_ckpt and mmt_revision before 2026-12-06
    old = []
    for i in range(3):
        row = _row(i)
        meta = row["meta"]
        meta["mmt_ckpt"], meta["mmt_revision"] = meta.pop("rejected_model"), meta.pop("rejected_revision")
        old.append(row)
    paths = _paths(tmp_path)
    stats = _build(old, paths)
    assert stats["models"]["rejected"] == ["my-org/loose-model"]
    assert (stats["provenance"]["rejected_model"], stats["provenance"]["rejected_revision"]) == (
        "my-org/loose-model",
        "def",
    )
    card = paths.card.read_text()
    assert "- **Rejected answers**: `my-org/loose-model` (revision def)" in card
    assert "| rejected_model | `my-org/loose-model` |" in card
    assert (
        "| `rejected_model` | the model that wrote the rejected answer (called `mmt_ckpt` in files made "
        "before 2026-12-06) |" in card
    )
    # the rows themselves are written as they were read: the pairs step alone writes the new names
    assert read_jsonl(paths.pairs)[0]["meta"]["mmt_ckpt"] == "my-org/loose-model"


def test_validate_accounts_for_every_question(tmp_path):
    from meddpo.dataset.validate import check_against_questions
    from meddpo.jsonl import write_jsonl

    rows = [_row(i) for i in range(6)]
    questions = [{"id": r["id"], "question": r["question"]} for r in rows]
    write_jsonl(tmp_path / "q.jsonl", questions)
    write_jsonl(tmp_path / "pairs.jsonl", rows[:4])
    write_jsonl(tmp_path / "dropped.jsonl", rows[4:5])
    pairs, q, dropped = tmp_path / "pairs.jsonl", tmp_path / "q.jsonl", tmp_path / "dropped.jsonl"
    assert check_against_questions(pairs, q, dropped, left_out=1) == []
    assert check_against_questions(pairs, q, dropped, left_out=0) == [
        f"6 questions in {q}: 1 have no pair, but the pairs step left out 0; an answer or pair file lost rows"
    ]
    write_jsonl(pairs, rows[:4] + [{**_row(99)}])
    assert check_against_questions(pairs, q, dropped) == [
        f"{pairs}, line 5 (id mq-0099): not a question of {q}"
    ]


def test_card_loading_example_without_a_split_loads_the_one_file(tmp_path):
    paths = _paths(tmp_path)
    _build([_row(i) for i in range(3)], paths)
    card = paths.card.read_text()
    assert 'pairs = load_dataset("json", data_files="data/pairs.jsonl", split="train")' in card
    assert "test" not in card.split("```python", 1)[1].split("```", 1)[0]


def test_card_loading_example_with_a_split_keeps_the_test_rows_out_of_train(tmp_path):
    paths = _paths(
        tmp_path, train=tmp_path / "splits" / "train.jsonl", test=tmp_path / "splits" / "test.jsonl"
    )
    _build([_row(i) for i in range(40)], paths, test_fraction=0.25)
    example = paths.card.read_text().split("```python\n", 1)[1].split("```", 1)[0]
    cwd = os.getcwd()
    os.chdir(paths.card.parent)  # the example's paths are relative to the card
    try:
        scope = {}
        exec(example, scope)
    finally:
        os.chdir(cwd)
    pairs = scope["pairs"]
    assert sorted(pairs["test"]["id"]) == sorted(r["id"] for r in read_jsonl(paths.test))
    assert sorted(pairs["train"]["id"]) == sorted(r["id"] for r in read_jsonl(paths.train))
    assert pairs["train"].num_rows + pairs["test"].num_rows == 40 and pairs["test"].num_rows == 12


@pytest.mark.parametrize(
    "name, dataset, questions, licence",
    [
        (
            "meddpo-demo",
            "demo/medquad_demo.jsonl",
            "`meddpo-demo` (read from `demo/medquad_demo.jsonl`): questions written for this project in "
            "MedQuAD's column layout, none of them taken from MedQuAD",
            "apache-2.0",
        ),
        (
            "lavita/MedQuAD",
            "lavita/MedQuAD",
            '`lavita/MedQuAD`: MedQuAD (Ben Abacha & Demner-Fushman, 2019, "A question-entailment approach '
            'to question answering")',
            "cc-by-4.0",
        ),
        (
            "lavita/MedQuAD",
            "/data/medquad/train.parquet",
            "`lavita/MedQuAD` (read from `/data/medquad/train.parquet`): MedQuAD (Ben Abacha & "
            'Demner-Fushman, 2019, "A question-entailment approach to question answering")',
            "cc-by-4.0",
        ),
        ("my-questions", "q.csv", "`my-questions` (read from `q.csv`)", "unknown"),
    ],
)
def test_card_credits_the_source_the_config_names(tmp_path, name, dataset, questions, licence):
    assert source_lines({"source_name": name, "source_dataset": dataset})["questions"] == questions
    paths = _paths(tmp_path)
    build_dataset(
        [_row(i) for i in range(3)],
        paths,
        policy={},
        near_identical_threshold=0.9,
        min_plain_share=0.9,
        test_fraction=0.0,
        settings=SETTINGS | {"source_name": name, "source_dataset": dataset},
    )
    card = paths.card.read_text()
    assert f"- **Questions**: {questions}. Cleaned" in card
    assert yaml.safe_load(card.split("---")[1])["license"] == licence
    assert f"This card's licence field (`{licence}`) covers the questions" in card
    medquad_credit = "MedQuAD is released under CC BY 4.0"
    assert (medquad_credit in card) == (name == "lavita/MedQuAD")
    assert ("Ben Abacha" in card) == (name == "lavita/MedQuAD")
