"""The DPO row (meddpo.dataset.rows) and its two readers that refuse junk: `meddpo validate`
(validate.validate_pairs, every problem of every row) and the judge's check before it sends
anything (verdicts.read_pairs / check_pairs, the first problem in one line). Both must refuse
every junk row below and accept a good row; the messages are written out here."""

import copy
import json

import pytest

from conftest import pair
from meddpo.dataset.validate import validate_pairs
from meddpo.dataset.verdicts import check_pairs, read_pairs
from meddpo.jsonl import DataError

GOOD = {
    "id": "mq-0001",
    "source": "lavita/MedQuAD",
    "category": "information",
    "question_type": "information",
    "question": "What is gout ?",
    "prompt": "Be careful.\n\nUser question:\nWhat is gout ?",
    "chosen": "Gout is a form of arthritis. A doctor can confirm it with a blood test.",
    "rejected": "Gout is just joint pain. Take some painkillers.",
    "meta": {
        "teacher_model": "teacher",
        "teacher_revision": None,
        "rejected_model": "loose",
        "rejected_revision": None,
        "chosen_finish_reason": "stop",
        "rejected_finish_reason": "length",
    },
}
FIX = "fix or remove this pair, then rerun (nothing was sent)"


def _write(tmp_path, rows):
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def _row(**changes):
    """Row mq-0002: the good row with fields changed (a value of ... removes the field)."""
    row = copy.deepcopy(GOOD) | {"id": "mq-0002"}
    for field, value in changes.items():
        if value is ...:
            del row[field]
        else:
            row[field] = value
    return row


# Each junk row is line 2 of a file whose line 1 is GOOD: what validate says about it, and the
# judge's one line after "<file>, ".
JUNK = {
    "integer id": (
        _row(id=7),
        "line 2: field 'id': a number (7); every pair needs an id (a non-empty string: \"7\", not 7)",
        "line 2: field 'id': a number (7); every pair needs an id (a non-empty string: \"7\", not 7); " + FIX,
    ),
    "bool id": (
        _row(id=True),
        "line 2: field 'id': a boolean (true); every pair needs an id (a non-empty string)",
        "line 2: field 'id': a boolean (true); every pair needs an id (a non-empty string); " + FIX,
    ),
    "empty id": (
        _row(id=""),
        "line 2: field 'id': an empty string; every pair needs an id (a non-empty string)",
        "line 2: field 'id': an empty string; every pair needs an id (a non-empty string); " + FIX,
    ),
    "whitespace id": (
        _row(id="  "),
        "line 2: field 'id': only whitespace; every pair needs an id (a non-empty string)",
        "line 2: field 'id': only whitespace; every pair needs an id (a non-empty string); " + FIX,
    ),
    "no id": (_row(id=...), "line 2: field 'id': missing", "line 2: field 'id': missing; " + FIX),
    "no question": (
        _row(question=...),
        "line 2 (id mq-0002): field 'question': missing",
        "line 2 (id mq-0002): field 'question': missing; " + FIX,
    ),
    "whitespace chosen": (
        _row(chosen=" \n"),
        "line 2 (id mq-0002): field 'chosen': only whitespace where the chosen text should be",
        "line 2 (id mq-0002): field 'chosen': only whitespace where the chosen text should be; " + FIX,
    ),
    "null chosen": (
        _row(chosen=None),
        "line 2 (id mq-0002): field 'chosen': null where the chosen text should be",
        "line 2 (id mq-0002): field 'chosen': null where the chosen text should be; " + FIX,
    ),
    "number rejected": (
        _row(rejected=3),
        "line 2 (id mq-0002): field 'rejected': a number (3) where the rejected text should be",
        "line 2 (id mq-0002): field 'rejected': a number (3) where the rejected text should be; " + FIX,
    ),
    "meta a string": (
        _row(meta="x"),
        "line 2 (id mq-0002): field 'meta': a string where a JSON object should be",
        "line 2 (id mq-0002): field 'meta': a string where a JSON object should be; " + FIX,
    ),
    "no meta": (
        _row(meta=...),
        "line 2 (id mq-0002): field 'meta': missing",
        "line 2 (id mq-0002): field 'meta': missing; " + FIX,
    ),
    "no prompt": (
        _row(prompt=...),
        "line 2 (id mq-0002): field 'prompt': missing",
        "line 2 (id mq-0002): field 'prompt': missing; " + FIX,
    ),
    "empty prompt": (
        _row(prompt=""),
        "line 2 (id mq-0002): field 'prompt': an empty string where the prompt text should be",
        "line 2 (id mq-0002): field 'prompt': an empty string where the prompt text should be; " + FIX,
    ),
    "no source": (
        _row(source=...),
        "line 2 (id mq-0002): field 'source': missing",
        "line 2 (id mq-0002): field 'source': missing; " + FIX,
    ),
    "unknown finish reason": (
        _row(meta=GOOD["meta"] | {"chosen_finish_reason": "eos"}),
        "line 2 (id mq-0002): meta.chosen_finish_reason is 'eos', not 'stop' or 'length'",
        "line 2 (id mq-0002): meta.chosen_finish_reason is 'eos', not 'stop' or 'length'; " + FIX,
    ),
    "duplicate id": (
        copy.deepcopy(GOOD),
        "line 2 (id mq-0001): field 'id': appears twice (first on line 1)",
        "line 2 (id mq-0001): field 'id': appears twice (first on line 1); one verdict row per pair id: "
        "remove or rename one of them, then rerun (nothing was sent)",
    ),
}


@pytest.mark.parametrize("junk, by_validate, by_judge", JUNK.values(), ids=JUNK)
def test_validate_and_the_judge_refuse_the_same_junk_rows(tmp_path, junk, by_validate, by_judge):
    path = _write(tmp_path, [GOOD, junk])
    assert validate_pairs(path) == (2, [by_validate])
    with pytest.raises(DataError) as refused:
        read_pairs(path)
    assert str(refused.value) == f"{path}, {by_judge}"


def test_the_judge_checks_pairs_it_is_given_the_same_way():
    # run_judge checks the pairs a caller hands it: rows, not lines, and no file name
    with pytest.raises(DataError) as refused:
        check_pairs(enumerate([GOOD, _row(id=7)], 1), "pairs", unit="row")
    assert str(refused.value) == (
        "pairs, row 2: field 'id': a number (7); every pair needs an id (a non-empty string: \"7\", not 7); "
        + FIX
    )


def test_a_line_that_is_no_object_is_refused_by_both(tmp_path):
    path = _write(tmp_path, [GOOD, "[1, 2]"])
    assert validate_pairs(path) == (2, ["line 2: not a JSON object"])
    with pytest.raises(DataError) as refused:
        read_pairs(path)
    assert str(refused.value) == f"{path}, line 2: expected a JSON object, got list"


def test_a_good_row_is_accepted_by_both(tmp_path):
    path = _write(tmp_path, [GOOD, _row()])
    assert validate_pairs(path) == (2, [])
    assert read_pairs(path) == [GOOD, _row()]


def test_a_row_made_before_the_rename_is_read_with_its_old_names(tmp_path):
    # meta.rejected_model and meta.rejected_revision were mmt_ckpt and mmt_revision before 2026-12-06
    meta = {k: v for k, v in GOOD["meta"].items() if not k.startswith("rejected_")}
    old = _row(meta=meta | {"mmt_ckpt": "loose", "mmt_revision": None, "rejected_finish_reason": "stop"})
    path = _write(tmp_path, [GOOD, old])
    assert validate_pairs(path) == (2, [])
    assert read_pairs(path)[1]["meta"]["mmt_ckpt"] == "loose"
    neither = _row(meta={k: v for k, v in old["meta"].items() if k != "mmt_ckpt"})
    assert validate_pairs(_write(tmp_path, [neither]))[1] == [
        "line 1 (id mq-0002): meta has no 'rejected_model' (or 'mmt_ckpt', its name in files made before "
        "2026-12-06)"
    ]


def test_the_older_layout_needs_legacy_to_validate_and_nothing_to_be_judged(tmp_path):
    # the old reference files: meta with the two model names only, the old name for the rejected one
    old = _row(meta={"teacher_model": "gemini-2.5-flash", "mmt_ckpt": "/ckpt/mistral"})
    path = _write(tmp_path, [old])
    assert validate_pairs(path, legacy=True) == (1, [])
    assert validate_pairs(path) == (
        1,
        [
            "line 1 (id mq-0002): meta has no 'chosen_finish_reason' (an older file? use --legacy)",
            "line 1 (id mq-0002): meta has no 'rejected_finish_reason' (an older file? use --legacy)",
        ],
    )
    assert read_pairs(path) == [old]  # a judge reads no meta key
    assert validate_pairs(_write(tmp_path, [_row(meta={"mmt_ckpt": "m"})]), legacy=True)[1] == [
        "line 1 (id mq-0002): meta has no 'teacher_model'"
    ]


# --------------------------------------------------------------------------- meddpo validate


def test_validate_accepts_a_good_file(tmp_path):
    rows, problems = validate_pairs(_write(tmp_path, [pair(1), pair(2)]))
    assert (rows, problems) == (2, [])


def test_validate_names_the_file_line_and_column_of_broken_json(tmp_path):
    path = _write(tmp_path, [pair(1), pair(2)])
    with path.open("ab") as handle:
        handle.write(b'{"id": "mq-0003", "chosen": }\n{"id": "caf\xe9"}\n')
    rows, problems = validate_pairs(path)
    assert (rows, problems) == (
        4,
        [
            "line 3: not a JSON line (Expecting value at column 29)",
            "line 4: not UTF-8 text (byte 12 of the line)",
        ],
    )


@pytest.mark.parametrize(
    "rows, expected",
    [
        ([pair(1), pair(2), pair(1)], "line 3 (id mq-0001): field 'id': appears twice (first on line 1)"),
        (
            [pair(1), pair(2, chosen="")],
            "line 2 (id mq-0002): field 'chosen': an empty string where the chosen text should be",
        ),
        (
            [pair(1), {k: v for k, v in pair(2).items() if k != "prompt"}],
            "line 2 (id mq-0002): field 'prompt': missing",
        ),
        (
            [pair(1, flags=["chosen_truncated"])],
            "line 1 (id mq-0001): flag chosen_truncated but chosen finish reason is 'stop'",
        ),
    ],
)
def test_validate_names_the_row_of_each_problem(tmp_path, rows, expected):
    _, problems = validate_pairs(_write(tmp_path, rows))
    assert expected in problems


def test_validate_legacy_layout(tmp_path):
    old = pair(1)
    old["meta"] = {"teacher_model": "gemini-2.5-flash", "mmt_ckpt": "/ckpt/mistral"}
    path = _write(tmp_path, [old])
    assert validate_pairs(path, legacy=True) == (1, [])
    assert any("use --legacy" in p for p in validate_pairs(path)[1])
