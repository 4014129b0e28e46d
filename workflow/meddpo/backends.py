"""What a config block runs on: the questions asked of an engine name or a model block.

A local model block names an engine (padded, continuous, vllm); a teacher or judge block
names a backend (local, gemini). The plan, the rule helpers (targets), the preflight and
the engines ask here instead of comparing those names themselves: this is the one module
that does. It imports nothing from the package, so settings, plan and the engines can all
stand above it; engines.py maps these answers to the code that runs each engine.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def runs_on_vllm(engine: str) -> bool:
    """Whether a local engine is a vLLM server (its answers stream back one request at a time)."""
    return engine == "vllm"


def batches_continuously(engine: str) -> bool:
    """Whether a transformers engine refills its batch as answers finish (else: padded batches)."""
    return engine == "continuous"


def serves_vllm(model: Mapping[str, Any] | None) -> bool:
    """Whether a local model block runs on a vLLM server that its job starts (engine vllm)."""
    return model is not None and runs_on_vllm(model["engine"])


def asks_gemini(block: Mapping[str, Any]) -> bool:
    """Whether a teacher or judge block is answered through Gemini (backend gemini), not a local model."""
    return block["backend"] == "gemini"


def judge_block(judge: Mapping[str, Any], kind: str) -> str | None:
    """The key of the judge block's local model that runs the judge of ``kind`` (``classifier``,
    or ``local`` for a local rubric judge); None for a rubric judge answered through Gemini."""
    if kind == "classifier":
        return "classifier"
    return None if asks_gemini(judge) else "local"
