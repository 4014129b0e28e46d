import os
import subprocess
import sys

import pytest

from meddpo.jsonl import DataError, write_jsonl
from meddpo.questions.shards import read_shard, shard_rows


def _questions(n):
    return [{"id": f"mq-{i:04x}", "question": f"q{i}"} for i in range(n)]


@pytest.mark.parametrize("n, n_shards", [(10, 3), (10000, 20), (5, 8), (1, 1)])
def test_every_question_in_exactly_one_shard_and_balanced(n, n_shards):
    questions = _questions(n)
    shards = [shard_rows(questions, n_shards, i) for i in range(n_shards)]
    ids = [row["id"] for shard in shards for row in shard]
    assert sorted(ids) == sorted(q["id"] for q in questions)
    sizes = [len(shard) for shard in shards]
    assert max(sizes) - min(sizes) <= 1


def test_sharding_ignores_input_order():
    questions = _questions(100)
    assert shard_rows(questions, 4, 2) == shard_rows(list(reversed(questions)), 4, 2)


@pytest.mark.parametrize(
    "rows, message",
    [
        (
            [
                {"id": "a", "question": "q one"},
                {"id": "b", "question": "q two"},
                {"id": "a", "question": "q three"},
            ],
            "shard.jsonl, line 3, field 'id': id a appears twice (first on line 1)",
        ),
        (
            [{"id": "a", "question": "q one"}, {"id": "b", "question": "  "}],
            "line 2, field 'question': empty",
        ),
        ([{"id": "a", "question": 7}], "line 1, field 'question': empty or not text (id a)"),
        ([{"id": "", "question": "q"}], "line 1, field 'id': empty or not text"),
    ],
)
def test_a_shard_with_a_duplicate_id_or_empty_question_is_refused(tmp_path, rows, message):
    path = tmp_path / "shard.jsonl"
    write_jsonl(path, rows)
    with pytest.raises(DataError) as caught:
        read_shard(path)
    assert message in str(caught.value) and "\n" not in str(caught.value)


@pytest.mark.parametrize("command", ["shard", "generate", "gemini"])
def test_each_step_refuses_a_bad_shard_with_one_line(tmp_path, command):
    path = tmp_path / "shard.jsonl"
    write_jsonl(path, [{"id": "a", "question": "q one"}, {"id": "a", "question": "q two"}])
    out = tmp_path / "out.jsonl"
    args = {
        "shard": ["--questions", str(path), "--n-shards", "2", "--index", "0", "--out", str(out)],
        "generate": ["--shard", str(path), "--out", str(out), "--model", "m", "--max-new-tokens", "4"]
        + ["--temperature", "0", "--system-prompt", "s"],
        "gemini": [
            "--shard",
            str(path),
            "--out",
            str(out),
            "--failures",
            str(out) + ".f",
            "--usage",
            str(out) + ".u",
        ]
        + ["--system-prompt", "s"],
    }[command]
    env = {**os.environ, "GEMINI_API_KEY": "not-used"}
    result = subprocess.run(
        [sys.executable, "-m", "meddpo", command, *args], capture_output=True, text=True, env=env, timeout=120
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"meddpo {command}: error: {path}, line 2, field 'id': id a appears twice (first on line 1)"
    ]
    assert not out.exists()
