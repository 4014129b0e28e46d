"""`meddpo validate` on a pairs file (meddpo.dataset.validate): every problem of every row, named by
line and id."""

import json

import pytest

from meddpo.dataset.validate import validate_pairs

GOOD_CHOSEN = (
    "Gout is a form of arthritis caused by uric acid crystals in a joint. A doctor can confirm it "
    "with a blood test or by examining fluid from the joint, and treatment eases the pain."
)
GOOD_REJECTED = "Gout is just joint pain. Take some painkillers and it will go away."


def pair(
    i=1, chosen=GOOD_CHOSEN, rejected=GOOD_REJECTED, chosen_reason="stop", rejected_reason="stop", **meta
):
    return {
        "id": f"mq-{i:04d}",
        "source": "s",
        "category": "information",
        "question_type": "information",
        "question": "What is gout ?",
        "prompt": "Be careful.\n\nUser question:\nWhat is gout ?",
        "chosen": chosen,
        "rejected": rejected,
        "meta": {
            "teacher_model": "t",
            "mmt_ckpt": "m",
            "chosen_finish_reason": chosen_reason,
            "rejected_finish_reason": rejected_reason,
            "chosen_new_tokens": 40,
            "rejected_new_tokens": 15,
            **meta,
        },
    }


def _write(tmp_path, rows):
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


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
        ([pair(1), pair(2), pair(1)], "line 3 (id mq-0001): duplicate id (first on line 1)"),
        ([pair(1), pair(2, chosen="")], "line 2 (id mq-0002): field 'chosen' is empty or not a string"),
        (
            [pair(1), {k: v for k, v in pair(2).items() if k != "prompt"}],
            "line 2 (id mq-0002): missing field 'prompt'",
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
