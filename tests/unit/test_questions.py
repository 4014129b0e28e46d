import csv
import hashlib
import json
import subprocess
import sys
import time
from collections import Counter

import pytest

from conftest import DEMO_QUESTIONS, require_medquad
from meddpo.jsonl import DataError
from meddpo.questions.build import build_questions
from meddpo.questions.cleaning import clean_and_dedupe, guess_category, normalise_question_type, question_id
from meddpo.questions.selection import select_questions, selection_order

# (selection, stratify) for every selection mode of select_questions
MODES = [
    ("first", "proportional"),
    ("random", "proportional"),
    ("stratified", "proportional"),
    ("stratified", "equal"),
]
MODE_IDS = ["first", "random", "stratified-proportional", "stratified-equal"]


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
        "dropped_not_text": 0,
        "dropped_short": 1,
        "dropped_long": 0,
        "dropped_duplicate": 2,
        "dropped_duplicate_exact": 1,
        "invisible_removed": 0,
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


def _per_type(rows):
    return dict(sorted(Counter(r["category"] for r in rows).items()))


def test_not_text_and_long_questions_are_dropped_and_counted():
    rows = [
        _row("What is  asthma ?"),  # 16 characters once the double space is folded
        _row(42),
        _row(["What is a list ?"]),
        _row({"text": "What is a dict ?"}),
        _row(3.5),
        _row(None),  # missing: empty, as before
        _row("What causes gout in older adults ?", "causes"),  # 34 characters: too long
        _row("What is gout ?"),
    ]
    kept, counts = clean_and_dedupe(rows, source="s", min_chars=10, max_chars=16)
    assert [r["question"] for r in kept] == ["What is asthma ?", "What is gout ?"]
    assert counts == {
        "read": 8,
        "dropped_empty": 1,
        "dropped_not_text": 4,
        "dropped_short": 0,
        "dropped_long": 1,
        "dropped_duplicate": 0,
        "dropped_duplicate_exact": 0,
        "invisible_removed": 0,
        "category_guessed": 0,
        "kept": 2,
    }
    assert (
        list(counts)
        == (
            "read dropped_empty dropped_not_text dropped_short dropped_long dropped_duplicate "
            "dropped_duplicate_exact invisible_removed category_guessed kept"
        ).split()
    )
    # without max_chars there is no upper limit
    kept, counts = clean_and_dedupe(rows, source="s", min_chars=10)
    assert len(kept) == 3 and counts["dropped_long"] == 0 and counts["dropped_not_text"] == 4


def test_build_questions_passes_max_chars_on(tmp_path):
    path = tmp_path / "q.jsonl"
    lines = [
        {"question": "What is gout ?", "question_type": "information"},
        {"question": "What are the long term complications of untreated gout ?", "question_type": "x"},
    ]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    rows, stats = build_questions(str(path), n=None, min_chars=5, max_chars=20)
    assert [r["question"] for r in rows] == ["What is gout ?"]
    assert stats["dropped_long"] == 1 and stats["dropped_not_text"] == 0 and stats["kept"] == 1
    rows, stats = build_questions(str(path), n=None, min_chars=5)
    assert len(rows) == 2 and stats["dropped_long"] == 0


@pytest.mark.parametrize("mode, stratify", MODES, ids=MODE_IDS)
def test_selection_is_deterministic_and_depends_on_the_seed(mode, stratify):
    pool = _pool()
    ids = [r["id"] for r in select_questions(pool, 30, mode, seed=5, stratify=stratify)]
    assert ids == [r["id"] for r in select_questions(pool, 30, mode, seed=5, stratify=stratify)]
    other = [r["id"] for r in select_questions(pool, 30, mode, seed=6, stratify=stratify)]
    if mode == "first":
        assert other == ids
    else:
        assert set(other) != set(ids)


def test_random_takes_the_lowest_seeded_hashes():
    pool = _pool()
    expected = sorted(pool, key=lambda r: hashlib.sha256(f"11|{r['id']}".encode()).digest())[:20]
    picked = select_questions(pool, 20, "random", seed=11)
    assert {r["id"] for r in picked} == {r["id"] for r in expected}


@pytest.mark.parametrize("mode, stratify", MODES, ids=MODE_IDS)
def test_selection_is_nested_for_every_n_on_a_small_pool(mode, stratify):
    pool = _pool(per_type=(37, 23, 9, 2))
    previous: set[str] = set()
    for n in range(0, len(pool) + 1):
        picked = select_questions(pool, n, mode, seed=2, stratify=stratify)
        ids = {r["id"] for r in picked}
        assert len(ids) == n and previous <= ids, n
        previous = ids


def test_stratified_proportional_avoids_the_alabama_paradox():
    # Sizes 6/6/2: a largest-remainder split gives the small type 2 of 10 places
    # but only 1 of 11. One place at a time (Webster), it keeps its place.
    pool = _pool(n_types=3, per_type=(6, 6, 2))
    counts = {n: _per_type(select_questions(pool, n, "stratified", seed=0)) for n in (9, 10, 11, 12)}
    assert counts[9] == {"type_0": 4, "type_1": 4, "type_2": 1}
    assert counts[10] == {"type_0": 5, "type_1": 4, "type_2": 1}  # three-way tie: name order
    assert counts[11] == {"type_0": 5, "type_1": 5, "type_2": 1}
    assert counts[12] == {"type_0": 5, "type_1": 5, "type_2": 2}


def test_stratified_equal_spreads_evenly_and_caps_at_a_type_size():
    pool = _pool()  # 40/30/20/10 per type
    counts = {n: _per_type(select_questions(pool, n, "stratified", 3, "equal")) for n in (6, 40, 50, 95)}
    assert counts[6] == {"type_0": 2, "type_1": 2, "type_2": 1, "type_3": 1}
    assert counts[40] == {"type_0": 10, "type_1": 10, "type_2": 10, "type_3": 10}
    assert counts[50] == {"type_0": 14, "type_1": 13, "type_2": 13, "type_3": 10}
    # type_2 and type_3 are full by then; type_1 fills up at 30 and the rest go to type_0
    assert counts[95] == {"type_0": 35, "type_1": 30, "type_2": 20, "type_3": 10}


def test_selection_order_matches_select_questions():
    pool = _pool()
    for mode, stratify in MODES:
        order = selection_order(pool, mode, seed=4, stratify=stratify)
        assert sorted(order) == list(range(len(pool)))
        for n in (0, 1, 17, 64, 100):
            expected = [pool[i] for i in sorted(order[:n])]
            assert select_questions(pool, n, mode, seed=4, stratify=stratify) == expected


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
    with pytest.raises(DataError, match=r"q\.csv, line 3 \(row 2\), column 'question': not UTF-8"):
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


# --------------------------------------------------------------------------- nested selection on MedQuAD


@pytest.fixture(scope="module")
def medquad_pool():
    return build_questions(str(require_medquad()), n=None)[0]


@pytest.mark.parametrize("mode, stratify", MODES, ids=MODE_IDS)
def test_nested_selection_on_medquad_every_n_to_2000(medquad_pool, mode, stratify, capsys):
    pool = medquad_pool
    started = time.perf_counter()
    # The seeded order is worked out once; select_questions is checked against it below.
    order = selection_order(pool, mode, seed=7, stratify=stratify, n=2001)
    assert len(order) == len(set(order)) == 2001
    sizes = Counter(r["category"] for r in pool)
    per_type: Counter = Counter()
    previous: set[str] = set()
    for n in range(1, 2001):
        row = pool[order[n - 1]]
        current = previous | {row["id"]}
        assert len(current) == n and previous < current
        previous = current
        per_type[row["category"]] += 1
        if mode == "stratified" and stratify == "proportional":
            # one place at a time never drifts far from the exact share
            assert max(abs(per_type[g] - n * sizes[g] / len(pool)) for g in sizes) <= 2, n
        elif mode == "stratified":
            # round robin: the types that still have questions left differ by at most one
            # place, and a full type holds no more than the others
            top = max(per_type.values())
            open_counts = [per_type[g] for g in sizes if per_type[g] < sizes[g]]
            assert top - min(open_counts) <= 1, n
            assert all(per_type[g] == sizes[g] <= top for g in sizes if per_type[g] >= sizes[g]), n
    # select_questions itself, for consecutive n at spread-out points
    for n in (1, 2, 3, 10, 99, 500, 1234, 1999):
        small = select_questions(pool, n, mode, seed=7, stratify=stratify)
        large = select_questions(pool, n + 1, mode, seed=7, stratify=stratify)
        assert small == [pool[i] for i in sorted(order[:n])]
        small_ids, large_ids = {r["id"] for r in small}, {r["id"] for r in large}
        assert len(large_ids - small_ids) == 1 and small_ids < large_ids
    elapsed = time.perf_counter() - started
    with capsys.disabled():
        print(f"\nnested selection, every n from 1 to 2,000 ({mode}/{stratify}): {elapsed:.2f}s")


@pytest.mark.parametrize("mode, stratify", MODES, ids=MODE_IDS)
def test_nested_selection_on_medquad_1000_within_10000(medquad_pool, mode, stratify):
    small = select_questions(medquad_pool, 1000, mode, seed=7, stratify=stratify)
    started = time.perf_counter()
    large = select_questions(medquad_pool, 10000, mode, seed=7, stratify=stratify)
    assert time.perf_counter() - started < 2.0
    small_ids, large_ids = {r["id"] for r in small}, {r["id"] for r in large}
    assert len(small_ids) == 1000 and len(large_ids) == 10000
    assert small_ids <= large_ids


def test_stratified_share_gap_on_medquad(medquad_pool, capsys):
    pool = medquad_pool
    picked = select_questions(pool, 10000, "stratified", seed=7, stratify="proportional")
    sizes = Counter(r["category"] for r in pool)
    counts = Counter(r["category"] for r in picked)
    assert sum(counts.values()) == 10000 and set(counts) == set(sizes)
    gaps = {g: abs(counts[g] - 10000 * sizes[g] / len(pool)) for g in sizes}
    worst = max(gaps, key=gaps.get)
    with capsys.disabled():
        print(f"\nlargest gap from the exact proportional share at 10,000: {gaps[worst]:.3f} ({worst})")
    assert gaps[worst] <= 2


def test_invisible_characters_are_removed_and_counted():
    rows = [
        _row("What is\x00 gout ?"),  # NUL
        _row("What is \u202egout and \u2066lupus\u2069 ?"),  # bidi override, isolate
        _row("What is lu\u200bpus ?"),  # zero-width space
        _row("\ufeffWhat is asthma ?\x7f"),  # byte order mark, DEL
        _row("What\x07 is ac\u00adne ?\x9b"),  # BEL, soft hyphen, a C1 control
        _row("What\tis\u2028acne\x85treated with ?"),  # white space: folded, not counted
        _row("What is lupus ?"),  # the zero-width space hid a duplicate
        _row("\u200b\u202e\x00\ufeff"),  # nothing left
    ]
    kept, counts = clean_and_dedupe(rows, source="s", min_chars=10)
    assert [r["question"] for r in kept] == [
        "What is gout ?",
        "What is gout and lupus ?",
        "What is lupus ?",
        "What is asthma ?",
        "What is acne ?",
        "What is acne treated with ?",
    ]
    assert (counts["invisible_removed"], counts["dropped_empty"], counts["dropped_duplicate"]) == (6, 1, 1)
    assert kept[2]["id"] == question_id("What is lupus ?")


def test_non_utf8_jsonl_source_names_line_and_field(tmp_path):
    path = tmp_path / "q.jsonl"
    path.write_bytes(b'{"question_type": "information", "question": "What is caf\xe9 ?"}\n')
    with pytest.raises(DataError) as caught:
        build_questions(str(path), n=None)
    assert str(caught.value) == (
        f"{path}, line 1: not UTF-8 text in field 'question' (byte 58 of the line: b'\\xe9'); "
        "save the file as UTF-8"
    )


def test_non_utf8_in_a_csv_header_names_the_header(tmp_path):
    path = tmp_path / "q.csv"
    path.write_bytes(b"question,question_type,caf\xe9\nWhat is gout ?,information,x\n")
    with pytest.raises(DataError, match=r"q\.csv, line 1 \(the header\): not UTF-8 text"):
        build_questions(str(path), n=None)


def test_rows_that_all_fall_out_in_cleaning_say_why(tmp_path):
    path = tmp_path / "q.jsonl"
    path.write_text(
        '{"question": "Gout?", "question_type": "x"}\n{"question": " ", "question_type": "x"}\n'
        '{"question": 7, "question_type": "x"}\n'
    )
    with pytest.raises(DataError) as caught:
        build_questions(str(path), n=None)
    assert str(caught.value) == (
        f"no questions in {path}: none of its 3 rows is a usable question (1 empty, 1 not text, "
        "1 shorter than questions.min_chars (10)); point source.dataset at a source with questions"
    )


def test_a_folder_source_is_checked_file_by_file(tmp_path):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a.jsonl").write_text('{"question": "What is gout ?", "question_type": "x"}\n')
    (tmp_path / "src" / "b.jsonl").write_text('{"question": "What is gout ?", "question_type": }\n')
    with pytest.raises(DataError) as caught:
        build_questions(str(tmp_path / "src"), n=None)
    assert str(caught.value) == (
        f"{tmp_path}/src/b.jsonl, line 1: not valid JSON (Expecting value at column 49)"
    )


def test_non_utf8_parquet_counts_rows_across_row_groups(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    texts = [f"What is condition {i} ?".encode() for i in range(5)]
    texts[4] = b"What is \xff ?"
    table = pa.table({"question": pa.array(texts, pa.binary()).view(pa.string()), "question_type": ["x"] * 5})
    pq.write_table(table, tmp_path / "q.parquet", row_group_size=2)
    with pytest.raises(DataError) as caught:
        build_questions(str(tmp_path / "q.parquet"), n=None)
    assert str(caught.value) == (
        f"{tmp_path}/q.parquet, row 5, column 'question': not UTF-8 text (byte 9 of the value: b'\\xff'); "
        "save the source as UTF-8"
    )
