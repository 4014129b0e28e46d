"""engines.py: every backend returns the same ShardResult; the engines import only the shared types."""

import ast
import dataclasses
from pathlib import Path

import pytest

from conftest import fast_gemini_settings
from meddpo.generation import engines
from meddpo.generation.engines import ShardResult, answer_gemini_shard, answer_shard
from meddpo.testing.gemini_server import GeminiTestServer

PACKAGE = Path(__file__).resolve().parents[2] / "workflow" / "meddpo"
KEY = "test-key-not-a-secret-7f3a"
QUESTIONS = [{"id": f"e{i}", "question": f"Is remedy {i} safe for children ?"} for i in range(3)]
FIELDS = ["answers", "left_out", "usage", "problem"]


def check_shape(result) -> None:
    assert type(result) is ShardResult
    assert [f.name for f in dataclasses.fields(result)] == FIELDS


def test_a_local_engine_returns_a_shard_result(tmp_path, tiny_mistral):
    model = {"model": str(tiny_mistral), "max_new_tokens": 4, "temperature": 0.7, "batch_size": 2}
    result = answer_shard(QUESTIONS, model, system_prompt="Be brief.", store_root=tmp_path, store_part="t")
    check_shape(result)
    assert [row["id"] for row in result.answers] == ["e0", "e1", "e2"]
    assert {row["engine"] for row in result.answers} == {"padded"}
    assert (len(result.answers), len(result.refusals), len(result.failures)) == (3, 0, 0)
    assert result.left_out == [] and result.problem is None
    assert result.usage["answers"] == 3
    assert result.usage["new_tokens"] == sum(row["new_tokens"] for row in result.answers) == 12  # no EOS
    # a second job finds every answer in the store: the same result
    assert (
        answer_shard(QUESTIONS, model, system_prompt="Be brief.", store_root=tmp_path, store_part="t")
        == result
    )


def test_an_empty_shard_is_an_empty_result():
    result = answer_shard(
        [], {"model": "not-loaded", "max_new_tokens": 4, "temperature": 0.0}, system_prompt=""
    )
    check_shape(result)
    assert result == ShardResult(answers=[], usage={"answers": 0, "new_tokens": 0, "prompt_tokens": 0})


def test_the_gemini_backend_returns_a_shard_result(tmp_path, monkeypatch):
    monkeypatch.setenv("GEMINI_API_KEY", KEY)
    with GeminiTestServer() as server:
        result = answer_gemini_shard(
            QUESTIONS,
            "Be careful.",
            fast_gemini_settings(server, concurrency=4, max_attempts=3),
            store_root=tmp_path,
            store_part="t",
        )
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
        result = answer_gemini_shard(
            questions,
            "x",
            fast_gemini_settings(server, concurrency=4, max_attempts=3),
            store_root=tmp_path,
            store_part="t",
        )
    check_shape(result)
    assert [row["id"] for row in result.answers] == ["g0", "g3"]
    assert [(row["id"], row["kind"]) for row in result.left_out] == [("g1", "refused"), ("g2", "failed")]
    assert [row["id"] for row in result.refusals] == ["g1"]
    assert [row["id"] for row in result.failures] == ["g2"]
    assert result.problem.startswith("1 of 4 questions failed")  # more than max_failed_fraction


def test_an_unknown_engine_is_refused_before_anything_runs():
    with pytest.raises(ValueError, match="unknown engine 'fast'; use one of padded, continuous, vllm"):
        engines.answer_questions(None, [], "", None, 1, engine="fast")


def package_imports(name: str) -> set[str]:
    """The package modules that ``name`` imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse((PACKAGE / f"{name}.py").read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            found.update([node.module] if node.module else [alias.name for alias in node.names])
    return found


def test_the_engines_import_only_the_shared_types_and_leaf_modules():
    assert package_imports("engine_types") <= {"errors", "settings", "chat_format"}
    for engine in ("local_generation", "vllm_engine"):
        assert "engine_types" in package_imports(engine)
        assert not package_imports(engine) & {"local_generation", "vllm_engine", "engines", "judge"}, engine
    assert not package_imports("engines") & {"judge", "pairs", "quality", "validate", "report"}
