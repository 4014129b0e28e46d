"""A generation job killed mid-shard loses nothing and generates nothing twice."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter

import pytest

from meddpo.jsonl import read_jsonl, read_jsonl_tolerant, write_jsonl


def _store_rows(store):
    return [row for path in sorted(store.glob("*/*/*.jsonl")) for row in read_jsonl_tolerant(path)]


@pytest.mark.slow
def test_kill_9_mid_shard_then_rerun(tmp_path, tiny_mistral):
    shard = tmp_path / "shard-000.jsonl"
    questions = [
        {"id": f"q{i:04d}", "question": f"What are the symptoms of condition number {i} ?"}
        for i in range(600)
    ]
    write_jsonl(shard, questions)
    out, store = tmp_path / "rejected" / "shard-000.jsonl", tmp_path / "store"
    command = [
        sys.executable,
        "-m",
        "meddpo",
        "generate",
        "--shard",
        str(shard),
        "--out",
        str(out),
        "--model",
        str(tiny_mistral),
        "--system-prompt",
        "Answer briefly.",
        "--max-new-tokens",
        "48",
        "--temperature",
        "0.8",
        "--top-p",
        "0.95",
        "--seed",
        "4",
        "--batch-size",
        "4",
        "--store",
        str(store),
        "--progress-every",
        "0",
    ]
    first_log = tmp_path / "first.log"
    with open(first_log, "w") as log:
        job = subprocess.Popen(command, stderr=log)
        # kill once the store holds some answers: the trigger is the row count, not a sleep
        deadline = time.monotonic() + 120
        while job.poll() is None and time.monotonic() < deadline:
            if sum(1 for _ in _store_rows(store)) >= 40:
                os.kill(job.pid, signal.SIGKILL)
                break
            time.sleep(0.01)
        job.wait(timeout=60)
    assert job.returncode == -signal.SIGKILL, "the job finished before it could be killed"
    assert not out.exists(), "a killed job must not leave a complete-looking output"
    before = {row["id"] for row in _store_rows(store)}
    assert 40 <= len(before) < 600

    # the rerun batches what is left 64 at a time: the batch size sets only the speed, so the
    # store's answers still count (they are keyed by question and settings, not by batch)
    faster = [
        *command[: command.index("--batch-size") + 1],
        "64",
        *command[command.index("--batch-size") + 2 :],
    ]
    rerun = subprocess.run(faster, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    match = re.search(r"(\d+) of 600 answers already there, (\d+) to generate", rerun.stderr)
    assert match and int(match.group(1)) == len(before) and int(match.group(2)) == 600 - len(before)

    rows = read_jsonl(out)
    assert [row["id"] for row in rows] == [q["id"] for q in questions]
    generations = Counter(row["id"] for row in _store_rows(store))
    assert set(generations) == {q["id"] for q in questions}
    assert max(generations.values()) == 1, "some answer was generated twice"
    settings = json.loads(next(store.rglob("settings.json")).read_text())
    assert settings["system_prompt"] == "Answer briefly." and settings["seed"] == 4


def test_both_backends_resume_through_the_shared_loop(tmp_path, tiny_mistral, caplog):
    """Half a shard in the store: each backend asks only for the other half, and says so the same way."""
    import asyncio
    import logging

    from meddpo.backends import JobContext
    from meddpo.gemini.client import GeminiSettings
    from meddpo.gemini.job import answer_with_gemini
    from meddpo.generation.local_shard import answer_questions
    from meddpo.generation.transformers_engine import LocalGenerator
    from meddpo.generation.types import ModelSpec, Sampling
    from meddpo.testing.gemini_server import GeminiTestServer

    questions = [{"id": f"r{i}", "question": f"How is condition {i} treated ?"} for i in range(6)]
    caplog.set_level(logging.INFO, logger="meddpo")

    def resume_lines():
        lines = [
            r.getMessage()
            for r in caplog.records
            if r.name == "meddpo.generation.resume" and "already there" in r.message
        ]
        caplog.clear()
        return [line.split(": ", 1)[1] for line in lines]

    generator = LocalGenerator(ModelSpec(name=str(tiny_mistral)))
    sampling = Sampling(max_new_tokens=3, temperature=0.7)
    store = tmp_path / "local"
    answer_questions(generator, questions[:3], "Be brief.", sampling, 2, context=JobContext(store_root=store))
    resume_lines()
    rows = answer_questions(
        generator, questions, "Be brief.", sampling, 2, context=JobContext(store_root=store)
    )
    assert [r["id"] for r in rows] == [q["id"] for q in questions]
    assert resume_lines() == ["3 of 6 answers already there, 3 to generate"]
    assert sum(1 for _ in _store_rows(store)) == 6

    with GeminiTestServer() as server:
        settings = GeminiSettings(base_url=server.base_url, requests_per_minute=1e6, max_attempts=1)
        store = tmp_path / "gemini"
        asyncio.run(answer_with_gemini(questions[:3], "Be brief.", settings, "k", store_root=store))
        resume_lines()
        rows, failures, usage = asyncio.run(
            answer_with_gemini(questions, "Be brief.", settings, "k", store_root=store)
        )
        assert [r["id"] for r in rows] == [q["id"] for q in questions] and failures == []
        assert resume_lines() == ["3 of 6 answers already there, 3 to generate"]
        assert usage["requests"] == 3 and sum(server.requests.values()) == 6
