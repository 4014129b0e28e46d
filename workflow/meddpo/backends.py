"""What a config block runs on: the two questions the planning code asks of a model block.

A local model block names an engine (padded, continuous, vllm); a teacher or judge block
names a backend (local, gemini). The plan, the rule helpers (targets), the preflight and
the engines ask here instead of comparing those names themselves. This module imports
nothing from the package, so settings, plan and the engines can all stand above it;
engines.py turns an engine's name into the code that runs it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def serves_vllm(model: Mapping[str, Any] | None) -> bool:
    """Whether a local model block runs on a vLLM server that its job starts (engine vllm)."""
    return model is not None and model["engine"] == "vllm"


def asks_gemini(block: Mapping[str, Any]) -> bool:
    """Whether a teacher or judge block is answered through Gemini (backend gemini), not a local model."""
    return block["backend"] == "gemini"
