import os
import subprocess
import sys

import pytest

from conftest import REPO
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


# --------------------------------------------------------------------------- no empty shard


def _meddpo(*argv, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "meddpo", *map(str, argv)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd or REPO,
        env={**os.environ, "PYTHONPATH": str(REPO / "workflow")},
    )


def _one_error_line(result) -> str:
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return lines[0]


def test_fewer_questions_than_shards_is_refused_by_the_config_check(tmp_path):
    # a pilot of 2 questions on the demo's 3 shards used to plan an empty shard without a word
    pilot = tmp_path / "pilot.yaml"
    pilot.write_text("questions:\n  n: 2\nn_shards: 3\n")
    line = _one_error_line(_meddpo("check-config", "demo/config.yaml", pilot))
    assert line == (
        "meddpo check-config: error: config key questions.n: 2 questions in 3 shards (n_shards) would leave "
        "1 shard empty, each still a job of every model: set n_shards to 2 or fewer "
        f"(questions.n set in {pilot}, n_shards set in {pilot})"
    )
    # the real run's 20 shards and a 10-question pilot: 10 empty GPU jobs
    pilot.write_text("questions:\n  n: 10\n")
    line = _one_error_line(_meddpo("preflight", "--configfile", pilot))
    assert line == (
        "meddpo preflight: error: config key questions.n: 10 questions in 20 shards (n_shards) would leave "
        "10 shards empty, each still a job of every model: set n_shards to 10 or fewer "
        f"(questions.n set in {pilot}, n_shards set in config.yaml)"
    )
    pilot.write_text("questions:\n  n: 3\nn_shards: 3\n")
    assert _meddpo("check-config", "demo/config.yaml", pilot).returncode == 0


def test_a_source_with_fewer_questions_than_shards_stops_the_preflight(tmp_path):
    # questions.n null (all): the count is known once the source is read
    overlay = tmp_path / "all.yaml"
    overlay.write_text("questions:\n  n: null\nn_shards: 100\n")
    result = _meddpo("preflight", "--configfile", "demo/config.yaml", overlay)
    assert result.returncode == 2
    errors = [line for line in result.stdout.splitlines() if ": error: " in line]
    assert errors == [
        "meddpo preflight: error: n_shards 100: demo/medquad_demo.jsonl has only 63 questions that survive "
        "cleaning (questions.n is null: all), so 37 shards would be empty, each still a job of every model; "
        "set n_shards to 63 or fewer"
    ]


def test_the_shard_step_never_writes_an_empty_shard(tmp_path):
    questions = tmp_path / "questions.jsonl"
    write_jsonl(questions, _questions(2))
    out = tmp_path / "shard.jsonl"
    line = _one_error_line(
        _meddpo("shard", "--questions", questions, "--n-shards", "3", "--index", "2", "--out", out)
    )
    assert line == (
        f"meddpo shard: error: {questions}: 2 questions for 3 shards: shard 2 would be empty; "
        "set n_shards to 2 or fewer"
    )
    assert not out.exists()
