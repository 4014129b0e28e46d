"""backends.py: one interface for every backend, one registry of them by config name.

Every backend returns the same ShardResult; a new backend is one module and one registry entry."""

import dataclasses

import pytest

from conftest import fast_gemini_settings
from meddpo import backends
from meddpo.backends import REGISTRY, Backend, JobContext, Request, ShardBackend, ShardResult, answer_shard
from meddpo.generation.local_shard import answer_questions
from meddpo.testing.gemini_server import GeminiTestServer

KEY = "test-key-not-a-secret-7f3a"
QUESTIONS = [{"id": f"e{i}", "question": f"Is remedy {i} safe for children ?"} for i in range(3)]
FIELDS = ["answers", "left_out", "usage", "problem"]


def check_shape(result) -> None:
    assert type(result) is ShardResult
    assert [f.name for f in dataclasses.fields(result)] == FIELDS


def gemini_block(server, **overrides) -> dict:
    return {"backend": "gemini", "gemini": fast_gemini_settings(server, **overrides)}


def test_a_local_engine_returns_a_shard_result(tmp_path, tiny_mistral):
    model = {
        "model": str(tiny_mistral),
        "engine": "padded",
        "max_new_tokens": 4,
        "temperature": 0.7,
        "batch_size": 2,
    }
    job = JobContext(store_root=tmp_path, store_part="t")
    result = answer_shard(model, QUESTIONS, Request("Be brief."), job)
    check_shape(result)
    assert [row["id"] for row in result.answers] == ["e0", "e1", "e2"]
    assert {row["engine"] for row in result.answers} == {"padded"}
    assert (len(result.answers), len(result.refusals), len(result.failures)) == (3, 0, 0)
    assert result.left_out == [] and result.problem is None
    assert result.usage["answers"] == 3
    assert result.usage["new_tokens"] == sum(row["new_tokens"] for row in result.answers) == 12  # no EOS
    # a second job finds every answer in the store: the same result
    assert answer_shard(model, QUESTIONS, Request("Be brief."), job) == result


def test_an_empty_shard_is_an_empty_result():
    model = {"model": "not-loaded", "engine": "padded", "max_new_tokens": 4, "temperature": 0.0}
    result = answer_shard(model, [], Request(""))
    check_shape(result)
    assert result == ShardResult(answers=[], usage={"answers": 0, "new_tokens": 0, "prompt_tokens": 0})


def test_the_gemini_backend_returns_a_shard_result(tmp_path, monkeypatch):
    monkeypatch.setenv("GEMINI_API_KEY", KEY)
    with GeminiTestServer() as server:
        block = gemini_block(server, concurrency=4, max_attempts=3)
        result = answer_shard(block, QUESTIONS, Request("Be careful."), JobContext(tmp_path, "t"))
    check_shape(result)
    assert [row["id"] for row in result.answers] == ["e0", "e1", "e2"]
    assert (len(result.answers), len(result.refusals), len(result.failures)) == (3, 0, 0)
    assert result.problem is None
    assert result.usage["answered"] == 3 and result.usage["requests"] == 3


def test_gemini_refusals_and_failures_are_apart_and_in_order(tmp_path, monkeypatch):
    monkeypatch.setenv("GEMINI_API_KEY", KEY)
    questions = [{"id": f"g{i}", "question": f"What helps with condition {i} ?"} for i in range(4)]
    with GeminiTestServer() as server:
        server.script = {questions[1]["question"]: ["blocked"], questions[2]["question"]: ["503"] * 3}
        block = gemini_block(server, concurrency=4, max_attempts=3)
        result = answer_shard(block, questions, Request("x"), JobContext(tmp_path, "t"))
    check_shape(result)
    assert [row["id"] for row in result.answers] == ["g0", "g3"]
    assert [(row["id"], row["kind"]) for row in result.left_out] == [("g1", "refused"), ("g2", "failed")]
    assert [row["id"] for row in result.refusals] == ["g1"]
    assert [row["id"] for row in result.failures] == ["g2"]
    assert result.problem.startswith("1 of 4 questions failed")  # more than max_failed_fraction


def test_an_unknown_engine_is_refused_before_anything_runs():
    with pytest.raises(
        ValueError, match="unknown engine or backend 'fast'; use one of padded, continuous, vllm"
    ):
        answer_questions(None, [], "", None, 1, engine="fast")
    with pytest.raises(ValueError, match="'gemini' is not a local engine"):
        answer_questions(None, [], "", None, 1, engine="gemini")


def test_every_registered_backend_implements_the_interface():
    assert sorted(REGISTRY) == ["continuous", "gemini", "padded", "vllm"]
    for name in REGISTRY:
        assert isinstance(backends.backend(name), ShardBackend), name
    assert [name for name, entry in REGISTRY.items() if not entry.local] == ["gemini"]
    assert [name for name, entry in REGISTRY.items() if entry.server] == ["vllm"]


def test_a_config_block_names_its_backend():
    local = {"model": "m", "engine": "continuous"}
    assert backends.backend_of(local) == ("continuous", local)
    teacher = {"backend": "local", "local": {"model": "m", "engine": "vllm"}, "gemini": {"model": "g"}}
    assert backends.backend_of(teacher) == ("vllm", {"model": "m", "engine": "vllm"})
    assert backends.backend_of({**teacher, "backend": "gemini"}) == ("gemini", {"model": "g"})
    assert backends.teacher_rule({"teacher": teacher}) == "chosen_local"


# A backend a user adds: this module is all of it (written to a file, as a new module would be).
ECHO_BACKEND = """
from meddpo.backends import ShardResult
from meddpo.generation.resume import ResumableJob


class EchoBackend:
    # answers each question with a fixed opening and the question itself; keeps them in the store

    def store_key(self, settings, request):
        return {"backend": "echo", "opening": settings["opening"], "system_prompt": request.system_prompt}

    def answer_shard(self, questions, settings, request, job):
        resumable = ResumableJob(
            questions, self.store_key(settings, request), store_root=job.store_root, store_part=job.store_part
        )
        try:
            resumable.record(
                [{"id": q["id"], "text": settings["opening"] + q["question"], "finish_reason": "stop",
                  "model": "echo"} for q in resumable.todo]
            )
        finally:
            resumable.close()
        return ShardResult(answers=resumable.rows(), usage={"answers": len(questions)})


ECHO = EchoBackend()
"""


def test_a_new_teacher_backend_is_one_module_and_one_registry_entry(tmp_path, monkeypatch):
    (tmp_path / "echo_backend.py").write_text(ECHO_BACKEND)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(REGISTRY, "echo", Backend("echo_backend:ECHO", local=False))
    teacher = {"backend": "echo", "echo": {"opening": "You asked: "}}
    job = JobContext(store_root=tmp_path / "store", store_part="shard-000")
    result = answer_shard(teacher, QUESTIONS[:2], Request("Be careful."), job)
    assert [row["text"] for row in result.answers] == [
        "You asked: Is remedy 0 safe for children ?",
        "You asked: Is remedy 1 safe for children ?",
    ]
    assert result.left_out == [] and result.problem is None
    # the answers are kept: a second job of the same shard finds them in the store
    again = answer_shard(teacher, QUESTIONS, Request("Be careful."), job)
    assert [row["created"] for row in again.answers[:2]] == [row["created"] for row in result.answers]
    assert backends.store_key(teacher, Request("Be careful.")) == {
        "backend": "echo",
        "opening": "You asked: ",
        "system_prompt": "Be careful.",
    }
    assert backends.teacher_rule({"teacher": teacher}) == "chosen_echo"
    assert not backends.runs_locally(teacher)
