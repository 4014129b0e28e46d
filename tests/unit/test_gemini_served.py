"""Which model answered: each Gemini reply's modelVersion, recorded and held against the configured model.

The real google-genai client against the local server, whose ``model_versions`` stands in for a
model that Google routes to another one.
"""

import subprocess
import sys

import pytest

from conftest import fast_gemini_settings, gemini_env
from meddpo.errors import UserError
from meddpo.gemini.job import answer_shard
from meddpo.gemini.served import is_version_of
from meddpo.jsonl import read_jsonl, write_jsonl
from meddpo.testing.gemini_server import GeminiTestServer

KEY = "test-key-for-served-models-2c9e"
QUESTIONS = [{"id": f"q{i:03d}", "question": f"What helps with condition {i} ?"} for i in range(6)]
FLASH = "gemini-2.5-flash"


@pytest.mark.parametrize(
    "served, accepted",
    [
        ("gemini-2.5-flash", True),
        ("models/gemini-2.5-flash", True),
        ("gemini-2.5-flash-001", True),
        ("gemini-2.5-flash-preview-09-2025", True),
        ("gemini-2.5-flash-exp-0827", True),
        ("gemini-2.5-flash-latest", True),
        ("gemini-2.5-flash-lite", False),  # another model, not a version
        ("gemini-2.5-flash-lite-preview-06-17", False),
        ("gemini-2.5-flash-image", False),
        ("gemini-2.5-pro", False),
        ("gemini-2.5-flashy", False),
    ],
)
def test_a_version_is_the_model_with_a_suffix_of_numbers_preview_exp_or_latest(served, accepted):
    assert is_version_of(served, FLASH) is accepted


def shard(server, tmp_path, questions=QUESTIONS, part="shard-000", **overrides):
    return answer_shard(
        questions,
        "Be careful.",
        fast_gemini_settings(server, concurrency=1, **overrides),
        store_root=tmp_path / "store",
        store_part=part,
    )


def test_every_answer_names_the_version_that_served_it_and_usage_counts_them(tmp_path, monkeypatch):
    monkeypatch.setenv("GEMINI_API_KEY", KEY)
    with GeminiTestServer(model_versions={FLASH: "gemini-2.5-flash-001"}) as server:
        server.script = {QUESTIONS[2]["question"]: ["blocked"]}
        answers, left_out, usage, _ = shard(server, tmp_path)
    assert {a["served_model"] for a in answers} == {"gemini-2.5-flash-001"} and len(answers) == 5
    assert {(a["model"], a["revision"]) for a in answers} == {(FLASH, "gemini-2.5-flash-001")}
    assert usage["served_models"] == {"gemini-2.5-flash-001": 5}
    (log,) = (tmp_path / "store").glob("*/*/requests/shard-000.jsonl")
    # the blocked prompt's reply names no model
    assert [r["served_model"] for r in read_jsonl(log)] == ["gemini-2.5-flash-001"] * 2 + [None] + [
        "gemini-2.5-flash-001"
    ] * 3
    (store,) = (tmp_path / "store").glob("*/*/shard-000.jsonl")
    refusal = [r for r in read_jsonl(store) if "refused" in r]
    assert refusal == [
        {
            "id": "q002",
            "refused": "prompt_blocked:SAFETY",
            "model": FLASH,
            "served_model": None,  # a blocked prompt's reply names no model
            "attempts": 1,
        }
    ]
    assert left_out[0]["id"] == "q002"


def _cli(shard_file, tmp_path, *extra):
    chosen = tmp_path / "chosen"
    return [
        *(sys.executable, "-m", "meddpo", "gemini", "--shard", str(shard_file)),
        *("--out", str(chosen / "shard-000.jsonl"), "--failures", str(chosen / "shard-000.failures.jsonl")),
        *("--usage", str(chosen / "shard-000.usage.json"), "--system-prompt", "Be careful."),
        *("--store", str(tmp_path / "store"), "--concurrency", "1", "--initial-backoff", "0.001"),
        *("--batch-poll-s", "0.01", "--timeout", "5"),
        *extra,
    ]


@pytest.mark.parametrize("mode", ["online", "batch"])
def test_another_model_serving_stops_the_job_in_one_line_and_naming_it_takes_its_answers(tmp_path, mode):
    shard_file = tmp_path / "shard.jsonl"
    write_jsonl(shard_file, QUESTIONS)
    with GeminiTestServer(model_versions={FLASH: "gemini-2.5-flash-lite"}) as server:
        env = gemini_env(server, KEY)
        stopped = subprocess.run(
            _cli(shard_file, tmp_path, "--mode", mode), env=env, capture_output=True, text=True, timeout=120
        )
        assert stopped.returncode == 2
        errors = [line for line in stopped.stderr.splitlines() if "error" in line]
        assert errors == [
            "meddpo gemini: error: question q000: Gemini says gemini-2.5-flash-lite answered, not "
            "gemini-2.5-flash or a version of it: to take its answers on purpose set "
            "teacher.gemini.accept_served_model: gemini-2.5-flash-lite, else choose another "
            "teacher.gemini.model (what it answered is kept in the store)"
        ]
        assert not (tmp_path / "chosen" / "shard-000.jsonl").exists()
        sent = server.stats()["requests"]
        named = _cli(shard_file, tmp_path, "--mode", mode, "--accept-served-model", "gemini-2.5-flash-lite")
        taken = subprocess.run(named, env=env, capture_output=True, text=True, timeout=120)
        assert taken.returncode == 0, taken.stderr
        # what was answered before the stop is taken from the store, never bought again
        assert server.stats()["requests"] == (6 if mode == "batch" else 6) and sent == (
            6 if mode == "batch" else 1
        )
    answers = read_jsonl(tmp_path / "chosen" / "shard-000.jsonl")
    assert [a["served_model"] for a in answers] == ["gemini-2.5-flash-lite"] * 6


def test_a_served_model_that_changes_within_the_run_stops_it(tmp_path, monkeypatch):
    monkeypatch.setenv("GEMINI_API_KEY", KEY)
    with GeminiTestServer(model_versions={FLASH: "gemini-2.5-flash-001"}) as server:
        shard(server, tmp_path, QUESTIONS[:3], "shard-000")
        server.model_versions = {FLASH: "gemini-2.5-flash-002"}
        with pytest.raises(UserError) as stopped:
            shard(server, tmp_path, QUESTIONS[3:], "shard-001")
        assert str(stopped.value) == (
            "question q003: Gemini says gemini-2.5-flash-002 answered, but gemini-2.5-flash-001 answered "
            "question q000 of this run: the served model changed; to go on with both set "
            "teacher.gemini.accept_served_model: gemini-2.5-flash-002 (what either answered is kept in the "
            "store)"
        )
        answers, _, usage, _ = shard(
            server, tmp_path, QUESTIONS[3:], "shard-001", accept_served_model="gemini-2.5-flash-002"
        )
        assert server.stats()["requests"] == 6
    assert usage["served_models"] == {"gemini-2.5-flash-002": 3}
