"""The Gemini teacher with the real google-genai SDK against the local wire-format server."""

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter

import pytest

from conftest import fast_gemini_settings, gemini_env
from meddpo.gemini.client import (
    GeminiSettings,
    MissingKeyError,
    RateLimiter,
    _RetryWait,
    estimate_cost,
    load_api_key,
)
from meddpo.gemini.errors import EndpointUnreachable, EndpointWatch, HardGeminiError, suggested_delay_s
from meddpo.gemini.job import answer_with_gemini
from meddpo.jsonl import read_jsonl, read_jsonl_tolerant, write_jsonl
from meddpo.testing.gemini_server import GeminiTestServer

KEY = "test-key-not-a-secret-7f3a"
QUESTIONS = [{"id": f"q{i:03d}", "question": f"What helps with condition {i} ?"} for i in range(12)]


def run(coro):
    return asyncio.run(coro)


@pytest.mark.slow
def test_transient_errors_are_retried_until_every_question_is_answered(tmp_path):
    with GeminiTestServer() as server:
        # each affected question fails fewer times than the cap of 4 tries: no flakiness possible
        server.script = {
            QUESTIONS[1]["question"]: ["429", "503", "ok"],
            QUESTIONS[2]["question"]: ["500", "500", "500"],
            QUESTIONS[3]["question"]: ["timeout"],
        }
        server.hang_s = 3.0  # longer than the 2 s client time-out
        rows, failures, usage = run(
            answer_with_gemini(
                QUESTIONS, "Be careful.", fast_gemini_settings(server), KEY, store_root=tmp_path
            )
        )
        assert failures == []
        assert [r["id"] for r in rows] == [q["id"] for q in QUESTIONS]
        assert server.requests[QUESTIONS[1]["question"]] == 3
        assert server.requests[QUESTIONS[2]["question"]] == 4
        assert server.requests[QUESTIONS[3]["question"]] == 2
        assert usage["requests"] == sum(server.requests.values()) == 12 + 2 + 3 + 1
        body = server.bodies[0]
        assert body["systemInstruction"]["parts"][0]["text"] == "Be careful."
        assert body["generationConfig"]["maxOutputTokens"] == 4096
        assert server.keys_seen == {KEY}


def test_exhausted_retries_blocked_and_empty_answers_are_failures_with_reasons(tmp_path):
    with GeminiTestServer() as server:
        server.script = {
            QUESTIONS[0]["question"]: ["503"] * 4,
            QUESTIONS[1]["question"]: ["blocked"],
            QUESTIONS[2]["question"]: ["empty"],
            QUESTIONS[3]["question"]: ["safety"],
            QUESTIONS[4]["question"]: ["length"],
        }
        rows, failures, _ = run(
            answer_with_gemini(QUESTIONS, "Be careful.", fast_gemini_settings(server), KEY)
        )
    assert {f["id"]: f["reason"] for f in failures} == {
        "q000": "retries_exhausted:503 UNAVAILABLE",
        "q001": "prompt_blocked:SAFETY",
        "q002": "empty_text",
        "q003": "finish_reason:SAFETY",
    }
    by_id = {r["id"]: r for r in rows}
    assert len(rows) == 8 and by_id["q004"]["finish_reason"] == "length"
    assert by_id["q005"]["finish_reason"] == "stop" and by_id["q005"]["gemini_finish_reason"] == "STOP"


def test_a_hard_error_stops_the_job_at_once():
    with GeminiTestServer(default_step="403") as server:
        with pytest.raises(HardGeminiError, match="403 PERMISSION_DENIED"):
            run(answer_with_gemini(QUESTIONS * 10, "x", fast_gemini_settings(server, concurrency=4), KEY))
        # nothing was retried and the other questions were not all sent
        assert sum(server.requests.values()) < len(QUESTIONS)


def test_rate_limiter_spaces_request_starts_by_count_not_wall_time():
    now = [100.0]
    sleeps = []

    async def fake_sleep(seconds):
        sleeps.append(round(seconds, 6))

    async def go():
        limiter = RateLimiter(120, clock=lambda: now[0], sleep=fake_sleep)
        for _ in range(4):
            await limiter.acquire()

    asyncio.run(go())
    # 120 requests/min = one start every 0.5 s; the clock never moved, so each waits longer
    assert sleeps == [0.5, 1.0, 1.5]


def test_backoff_honours_the_servers_suggested_delay():
    from google.genai import errors

    error = errors.ClientError(
        429,
        {
            "error": {
                "code": 429,
                "status": "RESOURCE_EXHAUSTED",
                "message": "slow down",
                "details": [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "37s"}],
            }
        },
    )
    assert suggested_delay_s(error) == 37.0

    class State:
        attempt_number = 1

        class outcome:
            failed = True

            @staticmethod
            def exception():
                return error

    assert _RetryWait(initial=1.0, maximum=60.0)(State) == 37.0
    assert _RetryWait(initial=1.0, maximum=10.0)(State) == 10.0  # never beyond the cap


def test_key_from_environment_or_secrets_file(tmp_path, monkeypatch):
    for name in ("GEMINI_API_KEY", "GOOGLE_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    secrets = tmp_path / "secrets.env"
    with pytest.raises(MissingKeyError, match=r"GEMINI_API_KEY.*secrets\.env"):
        load_api_key(secrets)
    secrets.write_text("# my key\nGEMINI_API_KEY='abc123'\n")
    assert load_api_key(secrets) == "abc123"
    monkeypatch.setenv("GOOGLE_API_KEY", "from-env")
    assert load_api_key(secrets) == "from-env"


def test_cost_estimate_counts_thinking_as_output():
    usage = {"input_tokens": 1_000_000, "output_tokens": 500_000, "thinking_tokens": 500_000}
    assert estimate_cost(usage, {"input_per_million": 0.3, "output_per_million": 2.5}) == 2.8


def _cli(shard, tmp_path, *extra):
    return [
        sys.executable,
        "-m",
        "meddpo",
        "gemini",
        "--shard",
        str(shard),
        "--out",
        str(tmp_path / "chosen" / "shard-000.jsonl"),
        "--failures",
        str(tmp_path / "chosen" / "shard-000.failures.jsonl"),
        "--usage",
        str(tmp_path / "chosen" / "shard-000.usage.json"),
        "--system-prompt",
        "Be careful.",
        "--store",
        str(tmp_path / "store"),
        "--initial-backoff",
        "0.001",
        "--max-backoff",
        "0.01",
        "--progress-every",
        "0",
        *extra,
    ]


def _env(server, **extra):
    return gemini_env(server, KEY, **extra)


def test_cli_bad_key_fails_fast_with_one_line_and_no_output(tmp_path):
    shard = tmp_path / "shard.jsonl"
    write_jsonl(shard, QUESTIONS)
    with GeminiTestServer(expected_key="the-right-key") as server:
        result = subprocess.run(
            _cli(shard, tmp_path), env=_env(server), capture_output=True, text=True, timeout=120
        )
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if "error" in line.lower()]
    assert errors == [
        line for line in errors if "400 INVALID_ARGUMENT" in line and "API key not valid" in line
    ]
    assert len(errors) == 1 and "Traceback" not in result.stderr
    assert not (tmp_path / "chosen").exists()
    assert KEY not in result.stderr


def test_cli_missing_key_says_where_to_put_it(tmp_path):
    shard = tmp_path / "shard.jsonl"
    write_jsonl(shard, QUESTIONS)
    env = {k: v for k, v in os.environ.items() if k not in ("GEMINI_API_KEY", "GOOGLE_API_KEY")}
    result = subprocess.run(
        _cli(shard, tmp_path, "--secrets-file", str(tmp_path / "secrets.env")),
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert "set GEMINI_API_KEY" in result.stderr and "secrets.env" in result.stderr


@pytest.mark.slow
def test_cli_killed_mid_shard_rerun_requests_only_what_was_missing(tmp_path):
    questions = [{"id": f"k{i:03d}", "question": f"Is treatment {i} safe ?"} for i in range(120)]
    shard = tmp_path / "shard.jsonl"
    write_jsonl(shard, questions)
    store = tmp_path / "store"
    with GeminiTestServer(latency_s=0.05) as server:
        job = subprocess.Popen(
            _cli(shard, tmp_path, "--concurrency", "4"), env=_env(server), stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 120
        while job.poll() is None and time.monotonic() < deadline:
            if sum(len(read_jsonl_tolerant(p)) for p in store.glob("*/*/*.jsonl")) >= 30:
                os.kill(job.pid, signal.SIGKILL)
                break
            time.sleep(0.01)
        job.wait(timeout=60)
        assert job.returncode == -signal.SIGKILL, "the job finished before it could be killed"
        assert not (tmp_path / "chosen" / "shard-000.jsonl").exists()
        stored = {row["id"] for p in store.glob("*/*/*.jsonl") for row in read_jsonl_tolerant(p)}
        before = Counter(server.requests)

        rerun = subprocess.run(
            _cli(shard, tmp_path, "--concurrency", "4"),
            env=_env(server),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert rerun.returncode == 0, rerun.stderr
        asked_again = {q for q in server.requests if server.requests[q] > before[q]}
    missing = {q["question"] for q in questions if q["id"] not in stored}
    assert asked_again == missing
    assert all(server.requests[q] - before[q] == 1 for q in asked_again)
    rows = read_jsonl(tmp_path / "chosen" / "shard-000.jsonl")
    assert [r["id"] for r in rows] == [q["id"] for q in questions]
    usage = json.loads((tmp_path / "chosen" / "shard-000.usage.json").read_text())
    assert usage["reused_from_store"] == len(stored) and usage["requests_this_job"] == len(missing)
    # every request ever sent for the shard, the killed job's included, up to the 4 it had in flight
    seen_by_server = sum(server.requests.values())
    assert seen_by_server - 4 <= usage["requests"] <= seen_by_server


def test_cli_too_many_failures_fails_the_job_and_the_list_survives_it(tmp_path):
    shard = tmp_path / "shard.jsonl"
    write_jsonl(shard, QUESTIONS)
    with GeminiTestServer() as server:
        server.script = {q["question"]: ["503"] * 6 for q in QUESTIONS[:3]}
        result = subprocess.run(
            _cli(shard, tmp_path, "--max-failed-fraction", "0.1", "--max-attempts", "2"),
            env=_env(server),
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert result.returncode == 3
    errors = [line for line in result.stderr.splitlines() if "error" in line]
    assert len(errors) == 1 and "3 of 12 questions failed" in errors[0]
    assert not (tmp_path / "chosen" / "shard-000.jsonl").exists()
    # the list is kept beside the store, where Snakemake's clean-up of a failed job cannot reach it
    kept = errors[0].split("the list is kept in ")[1].split(". Rerun")[0]
    assert kept.startswith(str(tmp_path / "store")) and kept.endswith("failures/shard-000.jsonl")
    # one line per failed question, in the order they failed (concurrent requests: any order)
    assert sorted((f["id"], f["reason"]) for f in read_jsonl(kept)) == [
        (q["id"], "retries_exhausted:503 UNAVAILABLE") for q in QUESTIONS[:3]
    ]


@pytest.mark.slow
def test_refusals_are_final_counted_and_only_warn_by_default(tmp_path):
    shard = tmp_path / "shard.jsonl"
    write_jsonl(shard, QUESTIONS)
    with GeminiTestServer() as server:
        server.script = {QUESTIONS[0]["question"]: ["blocked"], QUESTIONS[1]["question"]: ["safety"]}
        first = subprocess.run(
            _cli(shard, tmp_path), env=_env(server), capture_output=True, text=True, timeout=120
        )
        assert first.returncode == 0, first.stderr
        assert "2 of 12 questions were refused" in first.stderr  # above 5%: a warning, not a failure
        left_out = read_jsonl(tmp_path / "chosen" / "shard-000.failures.jsonl")
        assert [(r["id"], r["reason"], r["kind"]) for r in left_out] == [
            ("q000", "prompt_blocked:SAFETY", "refused"),
            ("q001", "finish_reason:SAFETY", "refused"),
        ]
        assert len(read_jsonl(tmp_path / "chosen" / "shard-000.jsonl")) == 10
        sent = sum(server.requests.values())

        # a rerun (a Snakemake retry, --forcerun) asks nothing again: refusals are final
        again = subprocess.run(
            _cli(shard, tmp_path), env=_env(server), capture_output=True, text=True, timeout=120
        )
        assert again.returncode == 0 and sum(server.requests.values()) == sent
        assert len(read_jsonl(tmp_path / "chosen" / "shard-000.failures.jsonl")) == 2

        # unless the user asks for it; an answer then wins over the stored refusal
        server.script = {}
        asked = subprocess.run(
            _cli(shard, tmp_path, "--ask-refused-again"),
            env=_env(server),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert asked.returncode == 0 and sum(server.requests.values()) == sent + 2
        assert read_jsonl(tmp_path / "chosen" / "shard-000.failures.jsonl") == []
        assert len(read_jsonl(tmp_path / "chosen" / "shard-000.jsonl")) == 12

        # a user who wants a high refusal rate to stop the run says so
        others = [{"id": f"s{i}", "question": f"{q['question']} (again)"} for i, q in enumerate(QUESTIONS)]
        write_jsonl(shard, others)
        server.script = {others[2]["question"]: ["blocked"], others[3]["question"]: ["empty"]}
        strict = subprocess.run(
            _cli(shard, tmp_path / "strict", "--too-many-refusals", "fail"),
            env=_env(server),
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert strict.returncode == 3
    assert "2 of 12 questions were refused" in strict.stderr and "error" in strict.stderr


def test_a_400_on_one_question_is_that_questions_failure(tmp_path):
    with GeminiTestServer() as server:
        server.script = {QUESTIONS[5]["question"]: ["400"]}
        rows, left_out, usage = run(
            answer_with_gemini(
                QUESTIONS, "Be careful.", fast_gemini_settings(server), KEY, store_root=tmp_path
            )
        )
    assert len(rows) == 11
    assert [(r["id"], r["reason"], r["kind"]) for r in left_out] == [
        ("q005", "client_error:400 INVALID_ARGUMENT", "failed")
    ]
    assert usage["requests"] == 12  # a 400 is not retried


def test_the_same_400_on_every_first_request_stops_the_job():
    with GeminiTestServer(default_step="400") as server:
        with pytest.raises(HardGeminiError, match="400 INVALID_ARGUMENT"):
            run(answer_with_gemini(QUESTIONS * 10, "x", fast_gemini_settings(server, concurrency=2), KEY))
        assert sum(server.requests.values()) < 12


# --------------------------------------------------------------------------- an unreachable endpoint


def _closed_port() -> int:
    """A port of 127.0.0.1 that nothing listens on: bound to find a free one, then closed."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.slow
def test_cli_teacher_at_a_closed_port_stops_within_a_minute_naming_it_and_pays_nothing(tmp_path):
    shard = tmp_path / "shard.jsonl"
    write_jsonl(
        shard, [{"id": f"q{i:04d}", "question": f"What helps with condition {i} ?"} for i in range(500)]
    )
    port = _closed_port()
    env = {k: v for k, v in os.environ.items() if k not in ("GEMINI_API_KEY", "GOOGLE_API_KEY")}
    env.update(GEMINI_API_KEY=KEY, GOOGLE_GEMINI_BASE_URL=f"http://127.0.0.1:{port}")
    # the schema's back-off (2 s, doubling, 6 tries) and one request at a time: the slowest way to find out
    command = [part for part in _cli(shard, tmp_path, "--concurrency", "1") if part not in ("0.001", "0.01")]
    command = [part for part in command if part not in ("--initial-backoff", "--max-backoff")]
    started = time.monotonic()
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    elapsed = time.monotonic() - started
    assert result.returncode == 2, result.stderr[-2000:]
    assert elapsed < 60 and "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and errors[0] == result.stderr.strip().splitlines()[-1]
    assert errors[0] == (
        f"meddpo gemini: error: cannot reach the Gemini endpoint 127.0.0.1:{port}: 3 attempts in a row "
        "never got there (connection refused); nothing was sent for them and none is counted as paid. "
        "Check base_url (or GOOGLE_GEMINI_BASE_URL), the network and any proxy, then rerun: what was "
        "answered is kept"
    )
    assert [row for path in (tmp_path / "store").rglob("requests/*.jsonl") for row in read_jsonl(path)] == []
    assert not (tmp_path / "chosen").exists()


def test_a_host_that_never_accepts_is_found_out_by_the_connect_time_out(monkeypatch):
    import socket

    import meddpo.gemini.client as client

    monkeypatch.setattr(client, "CONNECT_TIMEOUT_S", 0.5)
    with socket.socket() as full:
        full.bind(("127.0.0.1", 0))
        full.listen(0)  # never accepted: once its queue is full, the kernel ignores new connections
        port = full.getsockname()[1]
        queued = [socket.socket() for _ in range(3)]
        for sock in queued:
            sock.setblocking(False)
            sock.connect_ex(("127.0.0.1", port))
        time.sleep(0.2)
        settings = GeminiSettings(base_url=f"http://127.0.0.1:{port}", timeout_s=60, concurrency=4)
        started = time.monotonic()
        with pytest.raises(
            EndpointUnreachable, match=rf"127.0.0.1:{port}: .*the connection did not open in time"
        ):
            run(answer_with_gemini(QUESTIONS, "x", settings, KEY))
        assert time.monotonic() - started < 10  # the 60 s time-out of a whole request did not apply
        for sock in queued:
            sock.close()


def test_a_server_that_answers_503_keeps_its_retries_and_the_answers_come():
    with GeminiTestServer() as server:
        # every question: two 503s, then an answer; 24 errors in all, and none stops the job
        server.script = {q["question"]: ["503", "503", "ok"] for q in QUESTIONS}
        rows, left_out, usage = run(answer_with_gemini(QUESTIONS, "x", fast_gemini_settings(server), KEY))
    assert [r["id"] for r in rows] == [q["id"] for q in QUESTIONS] and left_out == []
    assert usage["requests"] == 36 and usage["unreached"] == 0


def test_attempts_that_never_reached_the_server_are_not_requests(tmp_path):
    port = _closed_port()
    settings = GeminiSettings(
        base_url=f"http://127.0.0.1:{port}", initial_backoff_s=0.5, max_backoff_s=0.5, concurrency=1
    )
    server = GeminiTestServer(port=port)

    async def late_server():
        await asyncio.sleep(0.2)  # the first attempt found the port closed; the retry finds the server
        server.start()

    async def go():
        starting = asyncio.create_task(late_server())
        result = await answer_with_gemini(QUESTIONS, "x", settings, KEY, store_root=tmp_path)
        await starting
        return result

    try:
        rows, left_out, usage = run(go())
    finally:
        server.stop()
    assert len(rows) == 12 and left_out == []
    assert usage["unreached"] == 1 and usage["requests"] == 12 == server.stats()["requests"]
    logged = [row for path in tmp_path.rglob("requests/*.jsonl") for row in read_jsonl(path)]
    assert len(logged) == 12 and not any("error" in row for row in logged)


def test_requests_at_the_server_when_it_goes_away_are_kept_and_never_bought_again(tmp_path):
    slow = [QUESTIONS[0]["question"], QUESTIONS[1]["question"]]
    # each reply closes its connection, so after the stop every new request is refused
    server = GeminiTestServer(latency_s=0.1, hang_s=3.0, keep_alive=False).start()
    server.script = dict.fromkeys(slow, ["timeout"])
    settings = fast_gemini_settings(server, concurrency=3, timeout_s=20.0)

    async def go():
        async def unplug():
            await asyncio.sleep(0.5)  # the two slow ones are at the server, the third slot busy
            await asyncio.to_thread(server.stop)

        unplugging = asyncio.create_task(unplug())
        try:
            return await answer_with_gemini(QUESTIONS, "x", settings, KEY, store_root=tmp_path)
        finally:
            await unplugging

    with pytest.raises(EndpointUnreachable, match=r"cannot reach the Gemini endpoint 127\.0\.0\.1:"):
        run(go())
    served = sum(server.requests.values())  # each of them answered: the slow two too, after the stop
    logged = [row for path in tmp_path.rglob("requests/*.jsonl") for row in read_jsonl(path)]
    # every answer the server gave is in the usage log (a connection cut as the server went away
    # may add a request logged with its error: counted, as it may have been sent, never answered)
    assert len([row for row in logged if "error" not in row]) == served
    # the rerun: the two answers that were in flight are in the store, not asked again
    with GeminiTestServer() as again:
        rows, left_out, usage = run(
            answer_with_gemini(
                QUESTIONS,
                "x",
                fast_gemini_settings(again, concurrency=3, timeout_s=20.0),
                KEY,
                store_root=tmp_path,
            )
        )
    assert (again.requests[slow[0]], again.requests[slow[1]]) == (0, 0)
    assert len(rows) == 12 and left_out == []
    assert usage["requests"] + usage["reused_from_store"] == 12


def test_unreachable_means_that_many_in_a_row_with_no_reply_between():
    import httpx2

    refused = httpx2.ConnectError("refused", request=httpx2.Request("POST", "http://example.test:8080/v1"))
    watch = EndpointWatch("example.test:8080")
    watch.unreached(refused)
    watch.unreached(refused)
    watch.reached()  # any reply, a 503 too, starts the count again
    watch.unreached(refused)
    watch.unreached(refused)
    with pytest.raises(
        EndpointUnreachable, match="cannot reach the Gemini endpoint example.test:8080: 3 attempts"
    ):
        watch.unreached(refused)
    with pytest.raises(EndpointUnreachable):
        watch.check()  # and every request still waiting to start stops too
