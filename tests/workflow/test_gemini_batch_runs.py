"""Gemini batch mode through real Snakemake: one job for every shard, against the local server."""

import json
import subprocess

import pytest

from conftest import DEMO_FILES, SNAKEMAKE, job_counts, snakemake_env
from meddpo.testing.gemini_batches import BatchPlan
from meddpo.testing.gemini_server import GeminiTestServer

pytestmark = pytest.mark.slow  # real Snakemake runs

KEY = "AIza-batch-run-test-key-never-written-42"


def test_with_one_core_every_shards_batch_is_created_at_once_and_the_gpu_jobs_run_meanwhile(
    demo_copy, tmp_path
):
    # the session's demo run, copied: its three rejected shards are made again (from the answer
    # store), and the Gemini teacher in batch mode writes the chosen answers
    overlay = tmp_path / "batch.yaml"
    overlay.write_text(
        "teacher:\n  backend: gemini\n  gemini: {mode: batch, batch_poll_s: 0.05, initial_backoff_s: 0.001,"
        " max_backoff_s: 0.01, batch_wait_h: 0.1}\njudge:\n  kinds: []\n"
    )
    rejected = [demo_copy / "results" / "demo" / "rejected" / f"shard-00{i}.jsonl" for i in range(3)]
    before = max(path.stat().st_mtime for path in rejected)

    def rejected_not_yet_redone() -> bool:
        return not all(path.exists() and path.stat().st_mtime > before for path in rejected)

    # each batch stays PENDING until the three rejected shards are written again: with --cores 1
    # the run finishes only if they run while the one Gemini job waits for its batches
    plans = [BatchPlan(hold=rejected_not_yet_redone, pending_polls=1)] * 3
    command = [*SNAKEMAKE, "--cores", "1", "--configfile", *DEMO_FILES, str(overlay)]
    with GeminiTestServer(expected_key=KEY, batch_plans=plans) as server:
        env = snakemake_env()
        env.update(GEMINI_API_KEY=KEY, GOOGLE_GEMINI_BASE_URL=server.base_url)
        run = subprocess.run(
            [*command, "--forcerun", "rejected"],
            cwd=demo_copy,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
        events = server.batch_events()
        assert [len(batch.keys) for batch in server.batches] == [21, 21, 21]
    counts = job_counts(run.stderr)
    assert (counts["chosen_gemini"], counts["rejected"], counts["pairs"]) == (1, 3, 3)
    creates = [event for event in events if event["call"] == "create"]
    first_get = next(i for i, event in enumerate(events) if event["call"] == "get")
    # the server's log: the three creates, then the polls; none was created after another had been polled
    assert [event["call"] for event in events[:first_get]] == ["create"] * 3
    assert [event["batch"] for event in creates] == ["test-0001", "test-0002", "test-0003"]
    start = creates[0]["time"]
    print("batches created at", [round(event["time"] - start, 3) for event in creates], "s")
    ended = [event for event in events if event["state"] == "BATCH_STATE_SUCCEEDED"]
    print("batches ended at", [round(event["time"] - start, 3) for event in ended], "s")
    assert len(ended) == 3
    stats = json.loads((demo_copy / "results" / "demo" / "pairs" / "all_pairs.stats.json").read_text())
    assert stats["pairs"] == 63 and stats["teacher_usage"]["batch_requests"] == 63
