"""The test server's Gemini Batch API, driven by the real google-genai client (sync and async)."""

import asyncio
import datetime as dt
import json
import subprocess
import sys

import pytest

from conftest import REPO
from meddpo.testing.gemini_batches import BatchPlan
from meddpo.testing.gemini_server import GeminiTestServer

KEY = "test-key-not-a-secret-7f3a"
MODEL = "gemini-test"
QUESTIONS = [f"What helps with condition {i} ?" for i in range(4)]


def canned(question: str) -> str:
    """The server's "ok" answer, written out."""
    return f"A careful answer to: {question} Please see a clinician about your own situation."


def client(server, **http):
    from google import genai
    from google.genai import types

    return genai.Client(api_key=KEY, http_options=types.HttpOptions(base_url=server.base_url, **http))


def inlined(questions=QUESTIONS, config=None, metadata=None):
    from google.genai import types

    return [
        types.InlinedRequest(model=MODEL, contents=q, metadata=metadata or {"key": f"q{i}"}, config=config)
        for i, q in enumerate(questions)
    ]


def create(gemini, display="batch-1", src=None):
    return gemini.batches.create(model=MODEL, src=src or inlined(), config={"display_name": display})


def wait(gemini, name, most=10):
    for _ in range(most):
        job = gemini.batches.get(name=name)
        if job.done:
            return job
    raise AssertionError(f"{name} not done after {most} GETs")


def texts(job) -> dict[str, str]:
    return {r.metadata["key"]: r.response.text for r in job.dest.inlined_responses}


def test_a_batch_is_created_then_done_with_each_keys_answer():
    with GeminiTestServer() as server:
        gemini = client(server)
        created = create(gemini)
        assert (created.name, created.display_name, created.model) == (
            "batches/test-0001",
            "batch-1",
            "models/gemini-test",
        )
        assert created.state.name == "JOB_STATE_PENDING" and created.dest is None and created.end_time is None
        job = gemini.batches.get(name=created.name)
        assert job.state.name == "JOB_STATE_SUCCEEDED" and job.done
        assert job.end_time >= job.create_time
        assert [r.metadata for r in job.dest.inlined_responses] == [{"key": f"q{i}"} for i in range(4)]
        assert texts(job) == {f"q{i}": canned(q) for i, q in enumerate(QUESTIONS)}
        usage = job.dest.inlined_responses[0].response.usage_metadata
        assert (usage.prompt_token_count, usage.candidates_token_count) == (16, 18)
        # each request was counted like an online one, at creation
        assert server.requests == {q: 1 for q in QUESTIONS}
        assert server.stats()["requests"] == 4
        assert server.batch_stats() == {
            "created": 1,
            "gets": 1,
            "lists": 0,
            "cancels": 0,
            "uploads": 0,
            "downloads": 0,
        }
        (batch,) = server.batches
        assert (batch.display_name, batch.state, batch.keys, batch.plan, batch.gets) == (
            "batch-1",
            "BATCH_STATE_SUCCEEDED",
            ["q0", "q1", "q2", "q3"],
            BatchPlan(),
            1,
        )


def test_the_server_sees_each_requests_system_instruction_and_generation_config():
    from google.genai import types

    config = types.GenerateContentConfig(
        system_instruction="Be careful.", temperature=0.25, max_output_tokens=64
    )
    metadata = {"key": "q0", "part": "p-7"}
    with GeminiTestServer(reply=lambda text: f"judged: {text}") as server:
        gemini = client(server)
        job = wait(gemini, create(gemini, src=inlined(QUESTIONS[:1], config, metadata)).name)
        assert server.bodies == [
            {
                "model": "models/gemini-test",
                "contents": [{"parts": [{"text": QUESTIONS[0]}], "role": "user"}],
                "systemInstruction": {"parts": [{"text": "Be careful."}], "role": "user"},
                "generationConfig": {"temperature": 0.25, "maxOutputTokens": 64},
            }
        ]
        assert server.batches[0].requests == [{"request": server.bodies[0], "metadata": metadata}]
        # the metadata comes back unchanged, and ``reply`` writes the answer as online
        (entry,) = job.dest.inlined_responses
        assert (entry.metadata, entry.response.text) == (metadata, f"judged: {QUESTIONS[0]}")


def test_pending_polls_give_pending_then_running_then_the_final_state():
    with GeminiTestServer(batch_plans=[BatchPlan(pending_polls=2)]) as server:
        gemini = client(server)
        name = create(gemini).name
        seen = [gemini.batches.get(name=name) for _ in range(5)]
        assert [j.state.name for j in seen] == [
            "JOB_STATE_PENDING",
            "JOB_STATE_PENDING",
            "JOB_STATE_RUNNING",
            "JOB_STATE_SUCCEEDED",
            "JOB_STATE_SUCCEEDED",
        ]
        assert [j.dest is None for j in seen] == [True, True, True, False, False]
        assert [j.end_time is None for j in seen] == [True, True, True, False, False]
        assert seen[3].end_time == seen[4].end_time
        assert server.batch_stats()["gets"] == 5
        # the second batch takes the default plan: done at its first GET
        assert gemini.batches.get(name=create(gemini, "batch-2").name).state.name == "JOB_STATE_SUCCEEDED"


def test_results_can_come_in_reverse_order():
    with GeminiTestServer(batch_plans=[BatchPlan(reverse=True)]) as server:
        gemini = client(server)
        job = wait(gemini, create(gemini).name)
        assert [r.metadata["key"] for r in job.dest.inlined_responses] == ["q3", "q2", "q1", "q0"]
        assert texts(job)["q3"] == canned(QUESTIONS[3])


def test_an_expired_batch_has_the_first_half_of_its_results():
    plans = [BatchPlan(final="EXPIRED", answered_fraction=0.5), BatchPlan(answered_fraction=0.5)]
    with GeminiTestServer(batch_plans=plans) as server:
        gemini = client(server)
        job = wait(gemini, create(gemini).name)
        assert job.state.name == "JOB_STATE_EXPIRED"
        assert texts(job) == {"q0": canned(QUESTIONS[0]), "q1": canned(QUESTIONS[1])}
        # the share is rounded down: half of 3 is 1
        job = wait(gemini, create(gemini, "batch-2", inlined(QUESTIONS[:3])).name)
        assert (job.state.name, list(texts(job))) == ("JOB_STATE_SUCCEEDED", ["q0"])
        # every request was answered (and counted) all the same
        assert server.stats()["requests"] == 7


def test_scripted_steps_give_per_key_errors_and_refusals():
    with GeminiTestServer() as server:
        server.script = {
            QUESTIONS[0]: ["503"],
            QUESTIONS[1]: ["blocked"],
            QUESTIONS[2]: ["timeout"],
            QUESTIONS[3]: ["safety"],
        }
        gemini = client(server)
        entries = {r.metadata["key"]: r for r in wait(gemini, create(gemini).name).dest.inlined_responses}
        assert (entries["q0"].response, entries["q0"].error.code, entries["q0"].error.message) == (
            None,
            503,
            "injected 503",
        )
        assert entries["q1"].response.prompt_feedback.block_reason.name == "SAFETY"
        assert entries["q1"].response.candidates is None
        assert (entries["q2"].error.code, entries["q2"].error.message) == (500, "injected 500")
        assert entries["q3"].response.candidates[0].finish_reason.name == "SAFETY"
        assert entries["q3"].response.text is None
        # the script goes on as it would online: the next batch gets the next (default "ok") steps
        assert texts(wait(gemini, create(gemini, "batch-2").name)) == {
            f"q{i}": canned(q) for i, q in enumerate(QUESTIONS)
        }
        assert server.requests == {q: 2 for q in QUESTIONS}


def test_a_lost_create_reply_leaves_a_batch_found_by_its_display_name():
    with GeminiTestServer(batch_plans=[BatchPlan(lose_create_reply=True)]) as server:
        gemini = client(server)
        with pytest.raises(Exception, match="Server disconnected without sending a response"):
            create(gemini, "lost-one")
        assert server.batch_stats()["created"] == 1
        found = [
            j.name for j in gemini.batches.list(config={"page_size": 10}) if j.display_name == "lost-one"
        ]
        assert found == ["batches/test-0001"]
        assert texts(wait(gemini, found[0])) == {f"q{i}": canned(q) for i, q in enumerate(QUESTIONS)}


def test_a_late_create_reply_and_an_old_batch():
    with GeminiTestServer(batch_plans=[BatchPlan(hang_create_s=1.0, age_s=3 * 3600)]) as server:
        gemini = client(server, timeout=300)  # milliseconds
        with pytest.raises(Exception, match="timed out"):
            create(gemini, "late-one")
        (batch,) = server.batches
        assert (batch.display_name, server.batch_stats()["created"]) == ("late-one", 1)
        job = gemini.batches.get(name=batch.name)
        age_h = (dt.datetime.now(dt.UTC) - job.create_time).total_seconds() / 3600
        assert 3.0 <= age_h < 3.01


def test_listing_walks_every_page_newest_first():
    with GeminiTestServer(list_page_size=2) as server:
        gemini = client(server)
        for n in range(5):
            create(gemini, f"batch-{n}", inlined(QUESTIONS[:1]))
        pager = gemini.batches.list(config={"page_size": 10})
        assert [j.display_name for j in pager] == ["batch-4", "batch-3", "batch-2", "batch-1", "batch-0"]
        assert server.batch_stats()["lists"] == 3  # pages of 2, 2 and 1
        assert [j.state.name for j in gemini.batches.list(config={"page_size": 1})] == [
            "JOB_STATE_PENDING"
        ] * 5
        assert server.batch_stats()["lists"] == 3 + 5
        server.list_page_size = 50
        assert len(gemini.batches.list(config={"page_size": 3}).page) == 3


def test_an_empty_list_and_listing_without_a_page_size():
    with GeminiTestServer() as server:
        gemini = client(server)
        assert list(gemini.batches.list()) == []
        create(gemini)
        assert [j.name for j in gemini.batches.list()] == ["batches/test-0001"]


def test_a_cancelled_batch_keeps_what_came_back():
    plans = [BatchPlan(pending_polls=5, answered_fraction=0.5), BatchPlan()]
    with GeminiTestServer(batch_plans=plans) as server:
        gemini = client(server)
        name = create(gemini).name
        assert gemini.batches.get(name=name).state.name == "JOB_STATE_PENDING"
        assert gemini.batches.cancel(name=name) is None
        job = gemini.batches.get(name=name)
        assert (job.state.name, list(texts(job))) == ("JOB_STATE_CANCELLED", ["q0", "q1"])
        assert server.batches[0].state == "BATCH_STATE_CANCELLED"
        # cancelling a batch that has ended changes nothing
        done = wait(gemini, create(gemini, "batch-2").name)
        gemini.batches.cancel(name=done.name)
        assert gemini.batches.get(name=done.name).state.name == "JOB_STATE_SUCCEEDED"
        assert server.batch_stats()["cancels"] == 2


def test_an_unknown_batch_is_a_404_and_a_wrong_key_a_400():
    from google.genai import errors

    with GeminiTestServer(expected_key=KEY) as server:
        gemini = client(server)
        for call in (gemini.batches.get, gemini.batches.cancel):
            with pytest.raises(errors.ClientError) as raised:
                call(name="batches/no-such-batch")
            assert (raised.value.code, raised.value.status, raised.value.message) == (
                404,
                "NOT_FOUND",
                "Requested entity was not found: batches/no-such-batch",
            )
        from google import genai
        from google.genai import types

        wrong = genai.Client(api_key="wrong", http_options=types.HttpOptions(base_url=server.base_url))
        for call in (lambda: create(wrong), lambda: list(wrong.batches.list())):
            with pytest.raises(errors.ClientError) as raised:
                call()
            assert (raised.value.code, raised.value.status) == (400, "INVALID_ARGUMENT")
        assert server.batch_stats() == {
            "created": 0,
            "gets": 1,
            "lists": 0,
            "cancels": 1,
            "uploads": 0,
            "downloads": 0,
        }
        assert server.stats()["requests"] == 0


def test_online_and_batch_requests_share_the_script_and_the_counters():
    from google.genai import types

    with GeminiTestServer() as server:
        server.script = {QUESTIONS[0]: ["429", "length"]}
        gemini = client(server)
        job = wait(gemini, create(gemini, src=inlined(QUESTIONS[:1])).name)
        assert job.dest.inlined_responses[0].error.code == 429
        online = gemini.models.generate_content(
            model=MODEL, contents=QUESTIONS[0], config=types.GenerateContentConfig(max_output_tokens=9)
        )
        assert (online.text, online.candidates[0].finish_reason.name) == (
            f"A long answer to: {QUESTIONS[0]} that was cut",
            "MAX_TOKENS",
        )
        assert server.requests == {QUESTIONS[0]: 2}


def test_a_retired_model_is_a_404_and_a_routed_one_names_the_model_that_served_it():
    from google.genai import errors

    with GeminiTestServer(
        known_models={MODEL, "gemini-test-lite"}, model_versions={MODEL: "gemini-test-lite"}
    ) as server:
        gemini = client(server)
        assert gemini.models.get(model=MODEL).name == "models/gemini-test"
        reply = gemini.models.generate_content(model=MODEL, contents=QUESTIONS[0])
        assert reply.model_version == "gemini-test-lite"
        for call in (
            lambda: gemini.models.get(model="gemini-retired"),
            lambda: gemini.models.generate_content(model="gemini-retired", contents=QUESTIONS[0]),
        ):
            with pytest.raises(errors.ClientError) as raised:
                call()
            assert (raised.value.code, raised.value.status) == (404, "NOT_FOUND")
            assert raised.value.message == "models/gemini-retired is not found for API version v1beta"


def test_a_reply_without_usage_and_a_batch_with_duplicate_and_unknown_entries():
    with GeminiTestServer(batch_plans=[BatchPlan(duplicates=2, unknown_keys=1)]) as server:
        server.script = {QUESTIONS[1]: ["nousage"]}
        gemini = client(server)
        job = wait(gemini, create(gemini).name)
        entries = job.dest.inlined_responses
        assert [e.metadata["key"] for e in entries] == ["q0", "q1", "q2", "q3", "q0", "q1", "not-asked-0"]
        assert entries[1].response.usage_metadata is None and entries[1].response.text == canned(QUESTIONS[1])
        assert entries[0].response.usage_metadata.prompt_token_count == 16
        assert entries[6].response.text == canned("A question nobody asked 0 ?")
        assert server.stats()["requests"] == 5  # the four asked and the one nobody asked


def test_a_forgotten_batch_is_a_404_and_gone_from_the_list():
    from google.genai import errors

    with GeminiTestServer(batch_plans=[BatchPlan(forgotten=True)]) as server:
        gemini = client(server)
        first = create(gemini, "gone")
        assert first.name == "batches/test-0001"
        with pytest.raises(errors.ClientError) as raised:
            gemini.batches.get(name=first.name)
        assert raised.value.code == 404
        second = create(gemini, "kept")
        assert [j.name for j in gemini.batches.list()] == [second.name]
        server.batch_store.forget(second.name)
        assert list(gemini.batches.list()) == []


def test_empty_list_pages_with_a_token_break_the_sdks_pager_but_not_a_page_walk():
    with GeminiTestServer() as server:
        server.batch_store.empty_pages = 2
        gemini = client(server)
        create(gemini)
        # google-genai 3.3.0's pager indexes into an empty page it fetched: why meddpo walks the pages itself
        with pytest.raises(IndexError):
            list(gemini.batches.list())
        pager = gemini.batches.list(config={"page_size": 10})
        pages = [pager.page]
        while pager.config.get("page_token"):
            pages.append(pager.next_page())
        assert [[j.name for j in page] for page in pages] == [[], [], ["batches/test-0001"]]


def test_scripted_batch_call_errors_and_the_log_of_calls_with_their_times():
    from google.genai import errors

    from meddpo.gemini.errors import suggested_delay_s

    with GeminiTestServer(retry_delay_s=7) as server:
        server.batch_faults = {"get": ["429", "ok", "503"]}
        gemini = client(server)
        name = create(gemini).name
        with pytest.raises(errors.ClientError) as raised:
            gemini.batches.get(name=name)
        assert raised.value.code == 429 and suggested_delay_s(raised.value) == 7.0
        assert gemini.batches.get(name=name).state.name == "JOB_STATE_SUCCEEDED"
        with pytest.raises(errors.ServerError):
            gemini.batches.get(name=name)
        assert gemini.batches.get(name=name).state.name == "JOB_STATE_SUCCEEDED"
        events = server.batch_events()
    assert [(e["call"], e["batch"], e["state"]) for e in events] == [
        ("create", "test-0001", "BATCH_STATE_PENDING"),
        ("get", "test-0001", "429"),
        ("get", "test-0001", "BATCH_STATE_SUCCEEDED"),
        ("get", "test-0001", "503"),
        ("get", "test-0001", "BATCH_STATE_SUCCEEDED"),
    ]
    times = [e["time"] for e in events]
    assert times == sorted(times)


def test_a_plan_with_an_unknown_final_state_is_refused():
    with pytest.raises(ValueError, match="BatchPlan.final"):
        BatchPlan(final="DONE")
    with pytest.raises(ValueError, match="answered_fraction"):
        BatchPlan(answered_fraction=1.5)


def test_the_async_client():
    async def scenario(gemini):
        created = await gemini.aio.batches.create(
            model=MODEL, src=inlined(), config={"display_name": "async-1"}
        )
        states = [(await gemini.aio.batches.get(name=created.name)).state.name for _ in range(3)]
        job = await gemini.aio.batches.get(name=created.name)
        second = await gemini.aio.batches.create(
            model=MODEL, src=inlined(), config={"display_name": "async-2"}
        )
        await gemini.aio.batches.cancel(name=second.name)
        listed = [
            (j.display_name, j.state.name)
            async for j in await gemini.aio.batches.list(config={"page_size": 5})
        ]
        return states, job, listed

    with GeminiTestServer(batch_plans=[BatchPlan(pending_polls=1, reverse=True)], list_page_size=1) as server:
        states, job, listed = asyncio.run(scenario(client(server)))
        assert states == ["JOB_STATE_PENDING", "JOB_STATE_RUNNING", "JOB_STATE_SUCCEEDED"]
        assert [r.metadata["key"] for r in job.dest.inlined_responses] == ["q3", "q2", "q1", "q0"]
        assert texts(job) == {f"q{i}": canned(q) for i, q in enumerate(QUESTIONS)}
        assert listed == [("async-2", "JOB_STATE_CANCELLED"), ("async-1", "JOB_STATE_SUCCEEDED")]
        assert server.batch_stats() == {
            "created": 2,
            "gets": 4,
            "lists": 2,
            "cancels": 1,
            "uploads": 0,
            "downloads": 0,
        }


def test_the_command_line_server_serves_batches():
    process = subprocess.Popen(
        [sys.executable, "-m", "meddpo.testing.gemini_server", "--lifetime", "60"],
        cwd=REPO / "workflow",
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        base_url = json.loads(process.stdout.readline())["base_url"]
        from google import genai
        from google.genai import types

        gemini = genai.Client(api_key=KEY, http_options=types.HttpOptions(base_url=base_url))
        job = wait(gemini, create(gemini, src=inlined(QUESTIONS[:2])).name)
        assert texts(job) == {"q0": canned(QUESTIONS[0]), "q1": canned(QUESTIONS[1])}
        out, _ = process.communicate("", timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert json.loads(out) == {"requests": 2, "in_flight": 0, "max_in_flight": 1}


# -- the file route: upload a JSONL, create a batch from it, download its responses file --------------


def shard(tmp_path, questions=QUESTIONS, name="shard.jsonl"):
    """A JSONL file of keyed generateContent requests, as a client writes it (camelCase)."""
    path = tmp_path / name
    lines = [
        {
            "key": f"q{i}",
            "request": {
                "contents": [{"role": "user", "parts": [{"text": q}]}],
                "systemInstruction": {"parts": [{"text": "Be careful."}]},
                "generationConfig": {"temperature": 0.25, "maxOutputTokens": 64},
            },
        }
        for i, q in enumerate(questions)
    ]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def upload(gemini, path, display="shard-1"):
    from google.genai import types

    return gemini.files.upload(
        file=path, config=types.UploadFileConfig(display_name=display, mime_type="jsonl")
    )


def results(gemini, job) -> list[dict]:
    """The lines of a finished file batch's responses file."""
    return [json.loads(line) for line in gemini.files.download(file=job.dest.file_name).decode().splitlines()]


def test_a_file_batch_is_uploaded_created_and_its_responses_file_downloaded(tmp_path):
    path = shard(tmp_path)
    with GeminiTestServer(expected_key=KEY) as server:
        gemini = client(server)
        uploaded = upload(gemini, path)
        assert (uploaded.name, uploaded.display_name, uploaded.mime_type, uploaded.size_bytes) == (
            "files/upload0001",
            "shard-1",
            "jsonl",
            path.stat().st_size,
        )
        assert (uploaded.state.name, uploaded.source.name, uploaded.uri) == (
            "ACTIVE",
            "UPLOADED",
            f"{server.base_url}/v1/files/upload0001",
        )
        assert uploaded.expiration_time - uploaded.create_time == dt.timedelta(hours=48)
        created = gemini.batches.create(model=MODEL, src=uploaded.name, config={"display_name": "file-1"})
        assert (created.name, created.state.name, created.dest) == (
            "batches/test-0001",
            "JOB_STATE_PENDING",
            None,
        )
        job = wait(gemini, created.name)
        assert (job.state.name, job.dest.file_name, job.dest.inlined_responses) == (
            "JOB_STATE_SUCCEEDED",
            "files/responses0001",
            None,
        )
        lines = results(gemini, job)
        assert [line["key"] for line in lines] == ["q0", "q1", "q2", "q3"]
        # the responses file's resource, and a download by it
        responses = gemini.files.get(name=job.dest.file_name)
        assert (responses.source.name, responses.mime_type, responses.download_uri) == (
            "GENERATED",
            "application/jsonl",
            f"{server.base_url}/download/v1/files/responses0001:download?alt=media",
        )
        assert [json.loads(line) for line in gemini.files.download(file=responses).splitlines()] == lines
        assert lines[0] == {
            "key": "q0",
            "response": {
                "candidates": [
                    {
                        "finishReason": "STOP",
                        "index": 0,
                        "content": {"role": "model", "parts": [{"text": canned(QUESTIONS[0])}]},
                    }
                ],
                "usageMetadata": {
                    "promptTokenCount": 16,
                    "totalTokenCount": 34,
                    "candidatesTokenCount": 18,
                    "thoughtsTokenCount": 0,
                },
                "modelVersion": "gemini-test",
            },
        }
        assert {
            line["key"]: line["response"]["candidates"][0]["content"]["parts"][0]["text"] for line in lines
        } == {f"q{i}": canned(q) for i, q in enumerate(QUESTIONS)}
        # the server saw each line's request as an online one, in file order, and counted it
        assert [b["systemInstruction"]["parts"][0]["text"] for b in server.bodies] == ["Be careful."] * 4
        assert [b["generationConfig"] for b in server.bodies] == [
            {"temperature": 0.25, "maxOutputTokens": 64}
        ] * 4
        assert server.requests == {q: 1 for q in QUESTIONS}
        (batch,) = server.batches
        assert (batch.source_file, batch.responses_file, batch.keys, batch.display_name) == (
            "files/upload0001",
            "files/responses0001",
            ["q0", "q1", "q2", "q3"],
            "file-1",
        )
        assert batch.requests[0]["request"] == server.bodies[0]
        assert [(f.name, f.source) for f in server.files] == [
            ("files/upload0001", "UPLOADED"),
            ("files/responses0001", "GENERATED"),
        ]
        assert server.batch_stats() == {
            "created": 1,
            "gets": 1,
            "lists": 0,
            "cancels": 0,
            "uploads": 1,
            "downloads": 2,
        }


def test_a_file_batch_keeps_its_plans_share_in_its_order(tmp_path):
    plans = [
        BatchPlan(final="EXPIRED", answered_fraction=0.5, reverse=True),
        BatchPlan(pending_polls=3, answered_fraction=0.75),
    ]
    with GeminiTestServer(batch_plans=plans) as server:
        gemini = client(server)
        name = upload(gemini, shard(tmp_path)).name
        job = wait(gemini, gemini.batches.create(model=MODEL, src=name).name)
        assert (job.state.name, job.dest.file_name) == ("JOB_STATE_EXPIRED", "files/responses0001")
        assert [line["key"] for line in results(gemini, job)] == ["q1", "q0"]
        # a cancelled one keeps its share too (3 of 4); the same upload serves a second batch
        second = gemini.batches.create(model=MODEL, src=name).name
        assert gemini.batches.get(name=second).dest is None
        gemini.batches.cancel(name=second)
        job = gemini.batches.get(name=second)
        assert (job.state.name, job.dest.file_name) == ("JOB_STATE_CANCELLED", "files/responses0002")
        assert [line["key"] for line in results(gemini, job)] == ["q0", "q1", "q2"]
        assert server.stats()["requests"] == 8
        assert [b.source_file for b in server.batches] == ["files/upload0001"] * 2


def test_scripted_steps_give_per_key_error_lines(tmp_path):
    with GeminiTestServer(reply=lambda text: f"judged: {text}") as server:
        server.script = {QUESTIONS[0]: ["503"], QUESTIONS[1]: ["blocked"], QUESTIONS[2]: ["drop"]}
        gemini = client(server)
        job = wait(gemini, gemini.batches.create(model=MODEL, src=upload(gemini, shard(tmp_path)).name).name)
        lines = {line["key"]: line for line in results(gemini, job)}
        assert lines["q0"] == {
            "key": "q0",
            "error": {"code": 503, "message": "injected 503", "status": "UNAVAILABLE"},
        }
        assert lines["q1"]["response"]["promptFeedback"] == {"blockReason": "SAFETY"}
        assert lines["q2"] == {
            "key": "q2",
            "error": {"code": 500, "message": "injected 500", "status": "INTERNAL"},
        }
        assert lines["q3"]["response"]["candidates"][0]["content"]["parts"] == [
            {"text": f"judged: {QUESTIONS[3]}"}
        ]


def test_files_get_delete_and_their_errors(tmp_path):
    from google.genai import errors

    with GeminiTestServer(expected_key=KEY) as server:
        gemini = client(server)
        name = upload(gemini, shard(tmp_path), "kept").name
        got = gemini.files.get(name=name)
        assert (got.name, got.display_name, got.size_bytes, got.source.name) == (
            "files/upload0001",
            "kept",
            shard(tmp_path).stat().st_size,
            "UPLOADED",
        )
        assert got.sha256_hash == server.files[0].resource(server.base_url, "v1")["sha256Hash"]
        with pytest.raises(errors.ClientError, match="Only generated files can be downloaded") as raised:
            gemini.files.download(file=name)
        assert raised.value.code == 400
        # a name asked for is kept, once
        named = gemini.files.upload(file=shard(tmp_path), config={"name": "kept0", "mime_type": "jsonl"})
        assert named.name == "files/kept0"
        with pytest.raises(errors.ClientError, match="files/kept0 already exists") as raised:
            gemini.files.upload(file=shard(tmp_path), config={"name": "kept0", "mime_type": "jsonl"})
        assert (raised.value.code, raised.value.status) == (409, "ALREADY_EXISTS")
        gemini.files.delete(name=name)
        assert [f.name for f in server.files] == ["files/kept0"]
        calls = [
            lambda: gemini.files.get(name=name),
            lambda: gemini.files.delete(name="files/nothing"),
            lambda: gemini.files.download(file="files/nothing"),
            lambda: gemini.batches.create(model=MODEL, src=name),
        ]
        for call in calls:
            with pytest.raises(errors.ClientError) as raised:
                call()
            assert (raised.value.code, raised.value.status) == (404, "NOT_FOUND")
            assert raised.value.message.startswith("Requested entity was not found: files/")
        # a line that is not a {key, request} object
        bad = tmp_path / "bad.jsonl"
        bad.write_text('{"key": "q0", "request": {"contents": []}}\n\n["not", "a", "request"]\n')
        with pytest.raises(errors.ClientError, match="line 3 of files/upload0004 is not") as raised:
            gemini.batches.create(model=MODEL, src=upload(gemini, bad).name)
        assert raised.value.code == 400
        from google import genai
        from google.genai import types

        wrong = genai.Client(api_key="wrong", http_options=types.HttpOptions(base_url=server.base_url))
        for call in (
            lambda: upload(wrong, shard(tmp_path)),
            lambda: wrong.files.get(name="files/upload0001"),
        ):
            with pytest.raises(errors.ClientError) as raised:
                call()
            assert (raised.value.code, raised.value.status) == (400, "INVALID_ARGUMENT")
        stats = server.batch_stats()
        assert (stats["uploads"], stats["downloads"], stats["created"]) == (4, 2, 0)


def test_a_chunked_upload_and_the_async_client(tmp_path, monkeypatch):
    from google.genai import _api_client

    monkeypatch.setattr(_api_client, "CHUNK_SIZE", 100)  # several "upload" POSTs, then "upload, finalize"
    path = shard(tmp_path)

    async def scenario(gemini):
        from google.genai import types

        uploaded = await gemini.aio.files.upload(
            file=path, config=types.UploadFileConfig(display_name="async", mime_type="jsonl")
        )
        created = await gemini.aio.batches.create(model=MODEL, src=uploaded.name)
        job = await gemini.aio.batches.get(name=created.name)
        return uploaded, job, await gemini.aio.files.download(file=job.dest.file_name)

    with GeminiTestServer(batch_plans=[BatchPlan(reverse=True)]) as server:
        chunks, real = [], server.file_store.upload_chunk

        def spy(upload_id, headers, data, *rest):
            chunks.append((headers["X-Goog-Upload-Command"], headers["X-Goog-Upload-Offset"], len(data)))
            return real(upload_id, headers, data, *rest)

        server.file_store.upload_chunk = spy
        gemini = client(server)
        assert upload(gemini, path).size_bytes == path.stat().st_size == 952
        assert chunks == [("upload", str(offset), 100) for offset in range(0, 900, 100)] + [
            ("upload, finalize", "900", 52)
        ]
        uploaded, job, data = asyncio.run(scenario(gemini))
        assert (uploaded.name, uploaded.size_bytes) == ("files/upload0002", path.stat().st_size)
        assert server.batches[0].source_file == "files/upload0002"
        assert [json.loads(line)["key"] for line in data.decode().splitlines()] == ["q3", "q2", "q1", "q0"]
        assert server.file_store.read("files/upload0001") == path.read_bytes()
        assert server.batch_stats()["uploads"] == 2 and server.batch_stats()["downloads"] == 1
