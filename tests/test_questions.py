import csv
import json
import subprocess
import sys
import time

import pytest

from conftest import DEMO_QUESTIONS, require_medquad
from meddpo.jsonl import DataError
from meddpo.questions import (
    build_questions,
    clean_and_dedupe,
    guess_category,
    normalise_question_type,
    question_id,
    select_questions,
)


def _row(question, question_type="information", **extra):
    return {"question": question, "question_type": question_type, **extra}


def test_cleaning_and_dedupe_counts():
    rows = [
        _row("What is  asthma ?"),
        _row("what is asthma ?"),  # same after case and space folding
        _row("What is  asthma ?"),  # exact repeat of the first
        _row("Asthma?"),  # too short
        _row("   "),
        _row(None),
        _row("What causes\tgout ?", "causes"),
    ]
    kept, counts = clean_and_dedupe(rows, source="s", min_chars=10)
    assert [r["question"] for r in kept] == ["What is asthma ?", "What causes gout ?"]
    assert counts == {
        "read": 7,
        "dropped_empty": 2,
        "dropped_short": 1,
        "dropped_duplicate": 2,
        "dropped_duplicate_exact": 1,
        "category_guessed": 0,
        "kept": 2,
    }


def test_categories_normalise_question_type_and_keep_medquad_category():
    kept, _ = clean_and_dedupe(
        [_row("What are the genetic changes related to X ?", "genetic changes", category="Disease")],
        source="lavita/MedQuAD",
        min_chars=5,
    )
    row = kept[0]
    assert row["category"] == "genetic_changes"
    assert row["question_type"] == "genetic changes"
    assert row["medquad_category"] == "Disease"
    assert row["source"] == "lavita/MedQuAD"
    assert normalise_question_type("Emergency or Overdose") == "emergency_or_overdose"


@pytest.mark.parametrize(
    "question, expected",
    [
        ("What are the symptoms of gout ?", "symptoms"),
        ("How is gout treated ?", "treatment"),
        ("Is Marfan syndrome inherited ?", "inheritance"),
        ("How many people are affected by gout ?", "frequency"),
        ("What are the side effects of aspirin ?", "side_effects"),
        ("What is gout ?", "information"),
    ],
)
def test_keyword_heuristic_when_question_type_missing(question, expected):
    assert guess_category(question) == expected
    kept, counts = clean_and_dedupe([_row(question, "")], source="s", min_chars=5)
    assert kept[0]["category"] == expected and counts["category_guessed"] == 1


def _pool(n_types=4, per_type=(40, 30, 20, 10)):
    rows = [
        _row(f"Question number {i} about topic {t} ?", f"type {t}")
        for t in range(n_types)
        for i in range(per_type[t])
    ]
    kept, _ = clean_and_dedupe(rows, source="s", min_chars=5)
    return kept


def test_select_first_takes_source_order():
    pool = _pool()
    assert select_questions(pool, 7, "first", seed=0) == pool[:7]


def test_select_random_is_seeded_and_keeps_source_order():
    pool = _pool()
    a = select_questions(pool, 25, "random", seed=3)
    assert a == select_questions(pool, 25, "random", seed=3)
    assert a != select_questions(pool, 25, "random", seed=4)
    positions = [pool.index(r) for r in a]
    assert positions == sorted(positions) and len(set(positions)) == 25


def test_select_stratified_proportional_and_equal():
    pool = _pool()  # 40/30/20/10 per type
    picked = select_questions(pool, 50, "stratified", seed=1)
    counts = {}
    for row in picked:
        counts[row["category"]] = counts.get(row["category"], 0) + 1
    assert counts == {"type_0": 20, "type_1": 15, "type_2": 10, "type_3": 5}
    equal = select_questions(pool, 50, "stratified", seed=1, stratify="equal")
    counts = {}
    for row in equal:
        counts[row["category"]] = counts.get(row["category"], 0) + 1
    # 12 or 13 each would be even; type_3 has only 10, the rest is spread over the others
    assert counts["type_3"] == 10 and sum(counts.values()) == 50
    assert max(counts.values()) - min(v for k, v in counts.items() if k != "type_3") <= 1


def test_select_more_than_available_is_a_clear_error():
    with pytest.raises(DataError, match="questions.n: asked for 1000 questions but only 100 remain"):
        select_questions(_pool(), 1000, "first", seed=0)


def test_ids_stable_across_n_and_modes():
    pool = _pool()
    by_question = {}
    for n in (10, 50, 100):
        for mode in ("first", "random", "stratified"):
            for row in select_questions(pool, n, mode, seed=9):
                assert by_question.setdefault(row["question"], row["id"]) == row["id"]
    assert question_id("What is  Asthma ?") == question_id("what is asthma ?")


def test_local_jsonl_csv_and_parquet_give_the_same_questions(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [json.loads(line) for line in DEMO_QUESTIONS.read_text().splitlines()]
    with open(tmp_path / "q.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "q.parquet")
    results = [
        build_questions(str(path), n=None, selection="first", min_chars=10)[0]
        for path in (DEMO_QUESTIONS, tmp_path / "q.csv", tmp_path / "q.parquet")
    ]
    ids = [[r["id"] for r in result] for result in results]
    assert ids[0] == ids[1] == ids[2]
    assert len(ids[0]) == 63


def test_missing_column_is_named(tmp_path):
    path = tmp_path / "q.csv"
    path.write_text("question,answer\nWhat is gout ?,x\n")
    with pytest.raises(DataError, match="missing column.*'question_type'"):
        build_questions(str(path), n=None)


def test_malformed_jsonl_source_names_line(tmp_path):
    path = tmp_path / "q.jsonl"
    path.write_text('{"question": "What is gout ?", "question_type": "information"}\n{"question": "x"}\n')
    with pytest.raises(DataError, match=r"q\.jsonl, line 2, field 'question_type': missing"):
        build_questions(str(path), n=None)


def test_non_utf8_csv_names_line(tmp_path):
    path = tmp_path / "q.csv"
    path.write_bytes(b"question,question_type\nWhat is gout ?,information\nWhat is caf\xe9 ?,information\n")
    with pytest.raises(DataError, match=r"q\.csv, line 3: not UTF-8"):
        build_questions(str(path), n=None)


def test_hub_load_offline_is_one_clear_line(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "meddpo",
            "questions",
            "--source",
            "lavita/MedQuAD",
            "--n",
            "10",
            "--out",
            str(tmp_path / "q.jsonl"),
            "--stats",
            str(tmp_path / "s.json"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "lavita/MedQuAD" in lines[0] and "source.dataset" in lines[0] and "local" in lines[0]
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "q.jsonl").exists()


def test_ids_unique_over_whole_medquad():
    medquad = require_medquad()
    rows, stats = build_questions(str(medquad), n=None)
    assert stats["read"] == 47436
    assert stats["dropped_duplicate"] == 3992 and stats["dropped_duplicate_exact"] == 2838
    ids = [r["id"] for r in rows]
    assert len(ids) == len(set(ids)) == 47436 - 3992
    normalised = {" ".join(r["question"].lower().split()) for r in rows}
    assert len(normalised) == len(rows)


def test_build_10000_from_medquad(capsys):
    medquad = require_medquad()
    by_mode = {}
    for mode in ("first", "random", "stratified"):
        started = time.perf_counter()
        rows, stats = build_questions(str(medquad), n=10000, selection=mode, seed=7)
        elapsed = time.perf_counter() - started
        with capsys.disabled():
            print(f"\n10,000 questions ({mode}) from the 47k-row MedQuAD file in {elapsed:.1f}s")
        assert len(rows) == 10000 and len({r["id"] for r in rows}) == 10000
        assert len({r["question"].lower() for r in rows}) == 10000
        by_mode[mode] = {r["id"]: r["question"] for r in rows}
    # a question present under two modes has the same id under both
    shared = by_mode["first"].keys() & by_mode["random"].keys()
    assert shared and all(by_mode["first"][i] == by_mode["random"][i] for i in shared)
    # stratified keeps every question type of MedQuAD
    assert stats["picked_per_category"].keys() >= {"information", "symptoms", "why_get_vaccinated"}
