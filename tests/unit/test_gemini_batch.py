"""Gemini Batch mode: the real google-genai client against the local server's Batch API.

One batch per shard job, results mapped by key, exactly one ``create`` per batch across
lost replies and kill -9, partial batches resubmitting only what has no outcome, and usage
at batch prices. The workflow's run in batch mode is in test_workflow.py.
"""

import json
import os
import signal
import subprocess
import sys
import time

from conftest import fast_gemini_settings, gemini_env
from meddpo.errors import UserError
from meddpo.gemini.job import answer_shard
from meddpo.jsonl import read_jsonl, read_jsonl_tolerant, write_jsonl
from meddpo.testing.gemini_batches import BatchPlan
from meddpo.testing.gemini_server import GeminiTestServer

KEY = "test-key-for-batches-5e1d"
QUESTIONS = [{"id": f"q{i:03d}", "question": f"What helps with condition {i} ?"} for i in range(12)]
IDS = [q["id"] for q in QUESTIONS]


def batch_settings(server, **overrides):
    return fast_gemini_settings(server, mode="batch", batch_poll_s=0.01, **overrides)


def shard_job(server, tmp_path, questions=QUESTIONS, **overrides):
    """One shard job in batch mode against ``server``: (answers, left_out, usage, problem)."""
    before, os.environ["GEMINI_API_KEY"] = os.environ.get("GEMINI_API_KEY"), KEY
    try:
        return answer_shard(
            questions,
            "Be careful.",
            batch_settings(server, **overrides),
            store_root=tmp_path / "store",
            store_part="shard-000",
        )
    finally:
        if before is None:
            del os.environ["GEMINI_API_KEY"]
        else:
            os.environ["GEMINI_API_KEY"] = before


def test_a_shard_is_one_batch_and_its_rerun_creates_none_and_sends_nothing(tmp_path):
    with GeminiTestServer(expected_key=KEY) as server:
        answers, left_out, usage, problem = shard_job(server, tmp_path)
        assert server.batch_stats()["created"] == 1
        assert server.stats()["requests"] == 12
        (batch,) = server.batches
        assert batch.keys == IDS
        request = batch.requests[0]["request"]
        assert request["systemInstruction"]["parts"][0]["text"] == "Be careful."
        assert request["generationConfig"]["maxOutputTokens"] == 4096

        again = shard_job(server, tmp_path)
        assert server.batch_stats() == {
            "created": 1,
            "gets": 1,
            "lists": 0,
            "cancels": 0,
            "uploads": 0,
            "downloads": 0,
        }
        assert server.stats()["requests"] == 12
    assert problem is None and left_out == []
    assert [a["id"] for a in answers] == IDS
    assert answers[3]["text"].startswith("A careful answer to: What helps with condition 3 ?")
    # 12 x 16 input and 12 x 18 output tokens at $0.15 and $1.25 per million: $0.0002988, half of the
    # $0.0005976 they cost online
    assert usage["requests"] == 12 and usage["input_tokens"] == 192 and usage["output_tokens"] == 216
    assert usage["estimated_cost_usd"] == 0.000299
    assert again[0] == answers and again[2]["requests_this_job"] == 0 and again[2]["reused_from_store"] == 12


def test_a_shard_over_the_inline_limit_goes_as_an_uploaded_file_and_its_results_by_key(tmp_path):
    plans = [BatchPlan(final="EXPIRED", answered_fraction=0.5, reverse=True)]
    with GeminiTestServer(batch_plans=plans) as server:
        server.script = {QUESTIONS[4]["question"]: ["500"]}
        answers, left_out, usage, _ = shard_job(server, tmp_path, batch_inline_limit_mb=0.001)
        stats = server.batch_stats()
        first, second = server.batches
        uploaded = [f for f in server.files if f.source == "UPLOADED"]
    assert stats["created"] == 2 and stats["uploads"] == 2 and stats["downloads"] == 2
    # the second batch: the key whose entry was a 500, and the six the expired batch left without one
    assert first.source_file and first.keys == IDS and second.keys == ["q004", *IDS[6:]]
    line = json.loads(uploaded[0].data.decode().splitlines()[0])
    assert line["key"] == "q000" and line["request"]["systemInstruction"] == {
        "parts": [{"text": "Be careful."}]
    }
    assert line["request"]["contents"] == [
        {"role": "user", "parts": [{"text": "What helps with condition 0 ?"}]}
    ]
    assert [a["id"] for a in answers] == IDS and left_out == []
    for answer in answers:
        assert f"condition {int(answer['id'][1:])} ?" in answer["text"]
    assert usage["requests"] == 13 and usage["batch_requests"] == 13  # the 500 was an entry too


def test_results_listed_out_of_order_land_on_their_own_ids(tmp_path):
    with GeminiTestServer(batch_plans=[BatchPlan(reverse=True, pending_polls=2)]) as server:
        answers, _, _, _ = shard_job(server, tmp_path)
        assert server.batch_stats()["gets"] == 4  # PENDING, PENDING, RUNNING, SUCCEEDED
    assert [a["id"] for a in answers] == IDS
    for answer, question in zip(answers, QUESTIONS, strict=True):
        assert f"to: {question['question']} Please" in answer["text"]


def test_an_expired_batch_with_half_its_results_resubmits_exactly_the_other_half_once(tmp_path):
    with GeminiTestServer(batch_plans=[BatchPlan(final="EXPIRED", answered_fraction=0.5)]) as server:
        answers, left_out, usage, _ = shard_job(server, tmp_path)
        first, second = server.batches
    assert first.keys == IDS and second.keys == IDS[6:]
    assert [a["id"] for a in answers] == IDS and left_out == []
    # requests that came back: 6 from the expired batch, 6 from the second
    assert usage["requests"] == 12
    log = [r for p in (tmp_path / "store").glob("*/*/batches/*.jsonl") for r in read_jsonl_tolerant(p)]
    ended = [r for r in log if r["event"] == "ended"]
    assert [(r["state"], r["results"]) for r in ended] == [
        ("JOB_STATE_EXPIRED", 6),
        ("JOB_STATE_SUCCEEDED", 6),
    ]


def test_transient_per_key_errors_are_resubmitted_in_the_job_and_blocks_are_final(tmp_path):
    with GeminiTestServer() as server:
        server.script = {
            QUESTIONS[1]["question"]: ["500", "503"],
            QUESTIONS[5]["question"]: ["429"],
            QUESTIONS[2]["question"]: ["blocked"],
            QUESTIONS[3]["question"]: ["safety"],
            QUESTIONS[4]["question"]: ["400"],  # about the request itself: another try would get the same
        }
        answers, left_out, usage, problem = shard_job(server, tmp_path, max_failed_fraction=0.1)
        # one job run: the 500 and the 429 go into a second batch, the 503 into a third
        assert [b.keys for b in server.batches] == [IDS, ["q001", "q005"], ["q001"]]
        rerun, rerun_left_out, _, _ = shard_job(server, tmp_path, max_failed_fraction=0.1)
        assert [b.keys for b in server.batches][3:] == [["q004"]]  # the 400 is asked again by a rerun only
    assert {r["id"]: (r["kind"], r["reason"]) for r in left_out} == {
        "q002": ("refused", "prompt_blocked:SAFETY"),
        "q003": ("refused", "finish_reason:SAFETY"),
        "q004": ("failed", "batch_error:400"),
    }
    assert problem is None and [a["id"] for a in answers] == [
        i for i in IDS if i not in ("q002", "q003", "q004")
    ]
    assert usage["requests"] == 12 + 3 and usage["failure_reasons"] == {"batch_error:400": 1}
    assert [a["id"] for a in rerun] == [i for i in IDS if i not in ("q002", "q003")]
    assert [r["id"] for r in rerun_left_out] == ["q002", "q003"]


def test_keys_still_errored_after_the_last_batch_fail_with_their_last_error(tmp_path):
    with GeminiTestServer() as server:
        server.script = {QUESTIONS[1]["question"]: ["500", "503", "500"]}
        _, left_out, _, problem = shard_job(server, tmp_path, batch_max_attempts=2)
        assert [b.keys for b in server.batches] == [IDS, ["q001"]]
    assert left_out == [{"id": "q001", "reason": "batch_error:503", "attempts": 2, "kind": "failed"}]
    assert problem == (
        "1 of 12 questions failed ({'batch_error:503': 1}), more than max_failed_fraction 0.02; the list is "
        f"kept in {next((tmp_path / 'store').glob('*/*/failures/shard-000.jsonl'))}. Rerun to ask again for "
        "the failed ones only."
    )


def test_a_lost_create_reply_is_found_by_its_display_name_over_every_page_empty_ones_too(tmp_path):
    from google import genai
    from google.genai import types

    with GeminiTestServer(list_page_size=2) as server:
        client = genai.Client(api_key=KEY, http_options=types.HttpOptions(base_url=server.base_url))
        for i in range(5):  # other batches, so the lookup needs more than one page
            client.batches.create(
                model="gemini-2.5-flash",
                src=[types.InlinedRequest(contents=f"other {i}", metadata={"key": f"o{i}"})],
                config={"display_name": f"someone-else-{i}"},
            )
        server.batch_plans = [BatchPlan()] * 5 + [BatchPlan(lose_create_reply=True)]
        server.batch_store.empty_pages = 2  # google-genai's own iterator raises IndexError on these
        answers, _, _, _ = shard_job(server, tmp_path)
        stats = server.batch_stats()
    assert stats["created"] == 6 and stats["lists"] == 3  # two empty pages, then the page that has it
    assert [a["id"] for a in answers] == IDS


def test_kill_9_during_create_then_rerun_creates_no_second_batch(tmp_path):
    shard = tmp_path / "shard.jsonl"
    write_jsonl(shard, QUESTIONS)
    with GeminiTestServer(batch_plans=[BatchPlan(hang_create_s=60)]) as server:
        job = subprocess.Popen(_cli(shard, tmp_path), env=gemini_env(server, KEY), stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while server.batch_stats()["created"] == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        job.send_signal(signal.SIGKILL)  # the batch exists at the server; its name never reached the job
        job.wait(timeout=30)
        assert server.batch_stats()["created"] == 1
        rerun = subprocess.run(
            _cli(shard, tmp_path), env=gemini_env(server, KEY), capture_output=True, text=True, timeout=120
        )
        assert rerun.returncode == 0, rerun.stderr
        assert server.batch_stats()["created"] == 1
        assert server.stats()["requests"] == 12
    assert [r["id"] for r in read_jsonl(tmp_path / "chosen" / "shard-000.jsonl")] == IDS
    assert "taking it up" in rerun.stderr


def test_a_wait_that_runs_out_is_one_line_and_the_rerun_collects_the_batch(tmp_path):
    shard = tmp_path / "shard.jsonl"
    write_jsonl(shard, QUESTIONS)
    with GeminiTestServer(batch_plans=[BatchPlan(pending_polls=3)]) as server:
        first = subprocess.run(
            _cli(shard, tmp_path, "--batch-wait-h", "1e-9"),
            env=gemini_env(server, KEY),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert first.returncode == 2
        errors = [line for line in first.stderr.splitlines() if "error" in line]
        assert errors == [
            "meddpo gemini: error: batch batches/test-0001 (12 questions) is still PENDING after this job "
            "waited 0.00 h (batch_wait_h 1e-09); it runs on at Google: rerun the job to collect it "
            "(nothing is sent again)"
        ]
        assert not (tmp_path / "chosen" / "shard-000.jsonl").exists()
        rerun = subprocess.run(
            _cli(shard, tmp_path), env=gemini_env(server, KEY), capture_output=True, text=True, timeout=120
        )
        assert rerun.returncode == 0, rerun.stderr
        assert server.batch_stats()["created"] == 1 and server.stats()["requests"] == 12
    usage = json.loads((tmp_path / "chosen" / "shard-000.usage.json").read_text())
    assert usage["answered"] == 12 and usage["requests"] == 12


def test_a_batch_past_its_age_is_cancelled_and_only_its_missing_half_resubmitted(tmp_path):
    old = BatchPlan(pending_polls=100, age_s=3 * 3600, answered_fraction=0.5)
    with GeminiTestServer(batch_plans=[old]) as server:
        answers, _, _, _ = shard_job(server, tmp_path, batch_max_age_h=2)
        assert server.batch_stats()["cancels"] == 1
        assert [b.keys for b in server.batches] == [IDS, IDS[6:]]
    assert [a["id"] for a in answers] == IDS


def test_a_batch_past_its_age_stops_the_job_when_told_to(tmp_path):
    shard = tmp_path / "shard.jsonl"
    write_jsonl(shard, QUESTIONS)
    old = BatchPlan(pending_polls=100, age_s=3 * 3600)
    with GeminiTestServer(batch_plans=[old]) as server:
        result = subprocess.run(
            _cli(shard, tmp_path, "--batch-max-age-h", "2", "--batch-too-old", "stop"),
            env=gemini_env(server, KEY),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert server.batch_stats()["cancels"] == 0 and server.batch_stats()["created"] == 1
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if "error" in line]
    assert errors == [
        "meddpo gemini: error: batch batches/test-0001 is still PENDING 3.0 h after it was created "
        "(batch_max_age_h 2); cancel it, or raise batch_max_age_h, then rerun"
    ]


def test_status_shows_each_batch_with_its_state_and_age():
    from meddpo.preflight.status import batches_by_part

    records = [
        {
            "event": "intent",
            "part": "shard-000.jsonl",
            "display_name": "a",
            "attempt": 1,
            "keys": ["x", "y"],
            "time": 1000.0,
        },
        {
            "event": "created",
            "part": "shard-000.jsonl",
            "display_name": "a",
            "name": "batches/1",
            "time": 1001.0,
        },
        {
            "event": "ended",
            "part": "shard-000.jsonl",
            "display_name": "a",
            "name": "batches/1",
            "state": "JOB_STATE_EXPIRED",
            "results": 1,
            "time": 5000.0,
        },
        {
            "event": "intent",
            "part": "shard-000.jsonl",
            "display_name": "b",
            "attempt": 2,
            "keys": ["y"],
            "time": 5001.0,
        },
        {
            "event": "created",
            "part": "shard-000.jsonl",
            "display_name": "b",
            "name": "batches/2",
            "time": 5002.0,
        },
    ]
    assert batches_by_part(records, now=1000.0 + 7200) == {
        "shard-000.jsonl": [
            {
                "name": "batches/1",
                "display_name": "a",
                "state": "EXPIRED",
                "questions": 2,
                "results": 1,
                "age_h": 2.0,
            },
            {"name": "batches/2", "display_name": "b", "state": "waiting", "questions": 1, "age_h": 0.89},
        ]
    }


def test_status_live_asks_the_api_for_each_open_batch_and_finds_a_lost_one_by_its_name(monkeypatch):
    from google import genai
    from google.genai import types

    from meddpo.preflight.status import ask_live, render

    monkeypatch.setenv("GEMINI_API_KEY", KEY)
    plans = [
        BatchPlan(pending_polls=100),
        BatchPlan(),
        BatchPlan(forgotten=True),
        BatchPlan(pending_polls=100),
    ]
    with GeminiTestServer(batch_plans=plans) as server:
        gemini = genai.Client(api_key=KEY, http_options=types.HttpOptions(base_url=server.base_url))
        for display in ("running", "done", "deleted", "lost-reply"):
            src = [types.InlinedRequest(contents=f"q{i}", metadata={"key": f"k{i}"}) for i in range(3)]
            gemini.batches.create(model="gemini-2.5-flash", src=src, config={"display_name": display})
        gemini.batches.get(name="batches/test-0002")  # it ends at its first look
        names = {"running": "batches/test-0001", "done": "batches/test-0002", "deleted": "batches/test-0003"}
        batches = [
            {"name": names.get(d), "display_name": d, "state": "waiting", "questions": 3, "age_h": 0.5}
            for d in ("running", "done", "deleted", "lost-reply")
        ]
        rows = [{"role": "chosen", "shard": "shard-000", "questions": 12, "answered": 0, "refused": 0}]
        rows[0].update(done=False, batches=batches)
        gemini_block = {"base_url": server.base_url, "secrets_file": None, "max_attempts": 2}
        ask_live({"teacher": {"gemini": gemini_block}, "judge": {"gemini": gemini_block}}, rows, {})
    old = " " * 21 + "batch batches/test-000{}: waiting, 3 questions, 0.50 h old (at Google: {})"
    assert render(rows)[1:5] == [
        old.format(1, "PENDING, 3 requests: 3 pending"),
        old.format(2, "SUCCEEDED, 3 requests: 3 succeeded, 0 failed"),
        old.format(3, "NOT FOUND (404)"),
        old.format(4, "PENDING, 3 requests: 3 pending"),  # its create reply was lost: found by its name
    ]


def _cli(shard, tmp_path, *extra):
    chosen = tmp_path / "chosen"
    return [
        *(sys.executable, "-m", "meddpo", "gemini", "--shard", str(shard)),
        *("--out", str(chosen / "shard-000.jsonl"), "--failures", str(chosen / "shard-000.failures.jsonl")),
        *("--usage", str(chosen / "shard-000.usage.json"), "--system-prompt", "Be careful."),
        *("--store", str(tmp_path / "store"), "--mode", "batch", "--batch-poll-s", "0.01"),
        *("--initial-backoff", "0.001", "--max-backoff", "0.01", "--timeout", "5"),
        *extra,
    ]


def test_a_batch_mode_teacher_is_one_job_that_waits_where_snakemake_runs_and_preflight_prints_both_prices(
    tmp_path,
):
    from conftest import REPO
    from meddpo.planning.checks import load_config
    from meddpo.planning.plan import estimate, render_estimate

    overlay = tmp_path / "batch.yaml"
    overlay.write_text("teacher:\n  backend: gemini\n  gemini:\n    mode: batch\n    batch_wait_h: 47.5\n")
    plan = estimate(load_config([overlay], base=REPO / "config.yaml"))
    assert plan["jobs"]["chosen_gemini"] == 1 and plan["jobs"]["rejected"] == 20
    assert "chosen_gemini" not in plan["time_limit_minutes"] and plan["batch_wait_hours"] == {
        "chosen_gemini": 47.5
    }
    lines = render_estimate(plan)
    assert (
        "chosen_gemini: one job for every shard, run where Snakemake runs (no cluster job, no core): it "
        "creates every shard's batch at once and waits for them together, up to 47.5 h (batch_wait_h)"
    ) in lines
    assert plan["gemini_usd_at_most"] == 102.8 and plan["gemini_batch_usd_at_most"] == 51.4
    assert "Gemini at most $102.80 online, $51.40 in batch mode (every answer at max_output_tokens)" in lines


def test_a_job_never_asks_questions_that_an_open_batch_holds(tmp_path, monkeypatch):
    monkeypatch.setenv("GEMINI_API_KEY", KEY)
    with GeminiTestServer(batch_plans=[BatchPlan(pending_polls=100)]) as server:
        # a batch-mode job stops waiting (its wait is tiny); its batch stays open at Google
        try:
            shard_job(server, tmp_path, batch_wait_h=1e-9)
        except UserError as error:
            assert "is still PENDING" in str(error)
        # the same shard online now would pay twice for the 12 questions: one line, no request
        for settings in ({"mode": "online"}, {"mode": "batch", "batch_wait_h": 1e-9}):
            try:
                answer_shard(
                    QUESTIONS[:3],
                    "Be careful.",
                    fast_gemini_settings(server, batch_poll_s=0.01, **settings),
                    store_root=tmp_path / "store",
                    store_part="shard-001" if settings["mode"] == "batch" else "shard-000",
                )
            except UserError as error:
                message = str(error)
            else:
                raise AssertionError("the job asked questions that an open batch holds")
            assert message == (
                "batch batches/test-0001 (store part shard-000.jsonl) is still open and holds 3 of these "
                "questions: run that shard's job in batch mode to collect it first (asking them now would "
                "pay twice)"
            )
        assert server.stats()["requests"] == 12 and server.batch_stats()["created"] == 1


def test_collecting_a_batch_again_after_a_kill_keeps_and_counts_each_result_once(tmp_path):
    with GeminiTestServer() as server:
        server.script = {QUESTIONS[1]["question"]: ["500"]}
        shard_job(server, tmp_path)
        # as if the job had been killed after storing the results but before the batch's end record
        (batches,) = (tmp_path / "store").glob("*/*/batches/shard-000.jsonl")
        batches.write_text("".join(line + "\n" for line in batches.read_text().splitlines()[:-1]))
        answers, left_out, usage, _ = shard_job(server, tmp_path)
        # the second job collects the batch again (kept results skipped) and asks q001 again
        assert [b.keys for b in server.batches] == [IDS, ["q001"]]
    assert [a["id"] for a in answers] == IDS and left_out == []
    (requests,) = (tmp_path / "store").glob("*/*/requests/shard-000.jsonl")
    assert len(read_jsonl_tolerant(requests)) == 13 and usage["requests"] == 13


def test_every_entry_a_batch_returns_is_billed_once_duplicates_unknown_keys_and_missing_usage_too(tmp_path):
    with GeminiTestServer(batch_plans=[BatchPlan(duplicates=2, unknown_keys=1)]) as server:
        server.script = {QUESTIONS[3]["question"]: ["nousage"]}
        answers, _, usage, _ = shard_job(server, tmp_path)
        (batch,) = server.batches
        returned = len(batch.output())
        again = shard_job(server, tmp_path)[2]  # a rerun logs nothing again
    assert [a["id"] for a in answers] == IDS and returned == 15
    # 12 answers, q000 and q001 listed twice, one entry for a key nobody asked: 15 entries billed
    assert usage["requests"] == 15 and usage["batch_requests"] == 15
    assert (usage["duplicate_results"], usage["unknown_results"], usage["usage_missing"]) == (2, 1, 1)
    # 14 entries with their counts, 16 tokens in and 18 out each; q003's reply had none: estimated at
    # four characters a token, 10 in (system prompt and question) and 25 out (its 99-character answer)
    assert usage["input_tokens"] == 14 * 16 + 10 and usage["output_tokens"] == 14 * 18 + 25
    assert answers[3]["tokens_estimated"] is True and answers[3]["new_tokens"] == 25
    assert (again["requests"], again["requests_this_job"], again["input_tokens"]) == (15, 0, 14 * 16 + 10)
    (log,) = (tmp_path / "store").glob("*/*/requests/shard-000.jsonl")
    flags = ("duplicate", "unknown_key", "usage_missing")
    flagged = [(r["id"], [k for k in flags if r.get(k)]) for r in read_jsonl(log)]
    assert [f for f in flagged if f[1]] == [
        ("q003", ["usage_missing"]),
        ("q000", ["duplicate"]),
        ("q001", ["duplicate"]),
        ("not-asked-0", ["unknown_key"]),
    ]


def test_a_batch_the_api_no_longer_knows_is_ended_and_its_questions_resubmitted_once(tmp_path):
    shard = tmp_path / "shard.jsonl"
    write_jsonl(shard, QUESTIONS)
    with GeminiTestServer(batch_plans=[BatchPlan(pending_polls=100)]) as server:
        first = subprocess.run(
            _cli(shard, tmp_path, "--batch-wait-h", "1e-9"),
            env=gemini_env(server, KEY),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert first.returncode == 2 and "is still PENDING" in first.stderr
        server.batch_store.forget("batches/test-0001")  # deleted at Google, or the key's project changed
        rerun = subprocess.run(
            _cli(shard, tmp_path), env=gemini_env(server, KEY), capture_output=True, text=True, timeout=120
        )
        assert rerun.returncode == 0, rerun.stderr
        assert [b.keys for b in server.batches] == [IDS, IDS]
        again = subprocess.run(
            _cli(shard, tmp_path), env=gemini_env(server, KEY), capture_output=True, text=True, timeout=120
        )
        assert again.returncode == 0 and server.batch_stats()["created"] == 2
    warnings = [line.split(": ", 1)[1] for line in rerun.stderr.splitlines() if "WARNING" in line]
    assert warnings == [
        "batch batches/test-0001 (shard-000.jsonl, 12 questions): the Batch API answers 404 (deleted, or "
        "made under another project's key): ended as not found; its questions without an outcome go into a "
        "new batch"
    ]
    log = [r for p in (tmp_path / "store").glob("*/*/batches/*.jsonl") for r in read_jsonl_tolerant(p)]
    assert [(r["event"], r.get("state")) for r in log if r["event"] == "ended"] == [
        ("ended", "NOT_FOUND"),
        ("ended", "JOB_STATE_SUCCEEDED"),
    ]
    assert [r["id"] for r in read_jsonl(tmp_path / "chosen" / "shard-000.jsonl")] == IDS


def test_batch_calls_wait_the_delay_a_429_asks_for(monkeypatch):
    from google import genai
    from google.genai import types

    from meddpo.gemini.batch_api import BatchApi

    slept = []
    with GeminiTestServer(retry_delay_s=37) as server:
        gemini = genai.Client(api_key=KEY, http_options=types.HttpOptions(base_url=server.base_url))
        name = gemini.batches.create(
            model="gemini-2.5-flash", src=[types.InlinedRequest(contents="hi", metadata={"key": "k"})]
        ).name
        server.batch_faults = {"get": ["429", "503"], "list": ["429"]}
        settings = batch_settings(server, initial_backoff_s=0.5, max_backoff_s=5)
        api = BatchApi(gemini, settings, sleep=slept.append)
        assert api.get(name).state.name == "JOB_STATE_SUCCEEDED"
        assert api.names({"nothing-by-this-name"}) == {}
        assert api.get("batches/no-such-batch") is None  # a 404 is an answer: the batch is gone
    # the 429s' RetryInfo asks for 37 s; the 503 gets the back-off (0.5 s, doubled once)
    assert slept == [37.0, 1.0, 37.0]


def test_a_failure_of_the_sdk_itself_is_named_as_the_sdks():
    from meddpo.gemini.errors import describe_error

    assert describe_error(IndexError("list index out of range")) == (
        "the google-genai SDK (google-genai 3.3.0) failed: IndexError: list index out of range"
    )


def test_one_job_creates_every_shards_batch_before_it_waits_for_any(tmp_path, monkeypatch):
    from meddpo.gemini.job import answer_shards

    monkeypatch.setenv("GEMINI_API_KEY", KEY)
    shards = [(QUESTIONS[i::3], f"shard-00{i}") for i in range(3)]
    with GeminiTestServer(batch_plans=[BatchPlan(pending_polls=3)] * 3) as server:
        results = answer_shards(shards, "Be careful.", batch_settings(server), store_root=tmp_path / "store")
        calls = [(e["call"], e["batch"]) for e in server.batch_events()]
    assert calls[:3] == [("create", "test-0001"), ("create", "test-0002"), ("create", "test-0003")]
    # then rounds of polls, each looking at every batch still open
    assert calls[3:6] == [("get", "test-0001"), ("get", "test-0002"), ("get", "test-0003")]
    assert [[a["id"] for a in answers] for answers, _, _, _ in results] == [IDS[0::3], IDS[1::3], IDS[2::3]]
    assert [usage["requests"] for _, _, usage, _ in results] == [4, 4, 4]


def test_a_wait_that_runs_out_names_every_batch_still_running(tmp_path, monkeypatch):
    from meddpo.gemini.job import answer_shards

    monkeypatch.setenv("GEMINI_API_KEY", KEY)
    shards = [(QUESTIONS[i::2], f"shard-00{i}") for i in range(2)]
    with GeminiTestServer(batch_plans=[BatchPlan(pending_polls=100)] * 2) as server:
        try:
            answer_shards(
                shards, "Be careful.", batch_settings(server, batch_wait_h=1e-9), store_root=tmp_path
            )
        except UserError as error:
            message = str(error)
    assert message == (
        "2 batches (12 questions) are still running after this job waited 0.00 h (batch_wait_h 1e-09): "
        "batches/test-0001 (shard-000.jsonl, PENDING), batches/test-0002 (shard-001.jsonl, PENDING); "
        "they run on at Google: rerun the job to collect them (nothing is sent again)"
    )
