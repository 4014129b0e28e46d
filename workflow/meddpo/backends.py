"""The backends that answer a shard, by their config names: one interface, one registry.

A backend is anything that answers a shard's questions: the transformers engines
(``padded``, ``continuous``), the vLLM engine (``vllm``) and the Gemini job
(``gemini``). Each implements ``ShardBackend``: ``answer_shard`` returns one
``ShardResult`` whatever the backend, and ``store_key`` says under which key of the
answer store its answers are kept. ``REGISTRY`` maps every config name to the
module and object that implement it, and to what the plan needs to know of it
(a local model on the job's GPU or an API; a server per job). Adding a teacher
backend is one module, one line here, one schema block and one rule.

Config blocks name their backend in two ways: a local-model block (``rejected``,
``teacher.local``, ``judge.classifier``) by its ``engine``; a teacher or judge block
by its ``backend`` (``local``: the ``local`` block's engine). ``backend_of`` reads
both. Every comparison of a backend, engine or Gemini mode name is made here.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

PROGRESS_EVERY_S = 30.0  # seconds between a shard job's progress lines
LOCAL = "local"  # a teacher or judge block's backend that runs its `local` block's engine


@dataclass
class ShardResult:
    """What every shard job returns, whatever its backend.

    ``answers``: the answer rows, in question order (what the shard's output file
    holds); ``left_out``: the questions without an answer (rows with ``kind``
    "refused" or "failed", in question order; a local model leaves none out);
    ``usage``: requests, tokens and cost (Gemini) or answers and tokens (a local
    model); ``problem``: the one-line reason the job must fail, else None.
    """

    answers: list[dict]
    left_out: list[dict] = field(default_factory=list)
    usage: dict[str, Any] = field(default_factory=dict)
    problem: str | None = None

    @property
    def refusals(self) -> list[dict]:
        return [row for row in self.left_out if row["kind"] == "refused"]

    @property
    def failures(self) -> list[dict]:
        return [row for row in self.left_out if row["kind"] == "failed"]


@dataclass(frozen=True)
class Request:
    """What a shard's questions are asked with: the system prompt and, for a judge, its extras.

    ``key_extra`` joins the answer store's key (a judge's own settings);
    ``response_schema`` asks an API for JSON output; ``max_usd`` caps an API job's spend.
    """

    system_prompt: str
    key_extra: Mapping[str, Any] | None = None
    response_schema: Mapping[str, Any] | None = None
    max_usd: float | None = None


@dataclass(frozen=True)
class JobContext:
    """Where and how one shard job runs: its answer store and part, progress lines, device and logs.

    ``store_root`` None keeps nothing (tests, benchmarks); ``vllm`` is the config's vllm
    block and ``server_log`` the server's log file (engine vllm only).
    """

    store_root: str | os.PathLike | None = None
    store_part: str = "answers"
    progress_every_s: float = PROGRESS_EVERY_S
    device: str = "auto"
    vllm: Mapping[str, Any] = field(default_factory=dict)
    server_log: str | os.PathLike | None = None


@runtime_checkable
class ShardBackend(Protocol):
    """The interface of a backend; ``settings`` is its config block (a local-model block, teacher.gemini)."""

    def answer_shard(
        self, questions: Sequence[dict], settings: Mapping[str, Any], request: Request, job: JobContext
    ) -> ShardResult: ...

    def store_key(self, settings: Mapping[str, Any], request: Request) -> dict[str, Any]: ...


@dataclass(frozen=True)
class Backend:
    """One registry entry: where the code lives (``module:object``) and what the plan needs to know."""

    code: str
    local: bool  # a local model on the job's GPU; else an API (no GPU, a failures and a usage file)
    server: bool = False  # the job starts a server (its log is declared)


REGISTRY: dict[str, Backend] = {
    "padded": Backend("meddpo.generation.transformers_engine:PADDED", local=True),
    "continuous": Backend("meddpo.generation.transformers_engine:CONTINUOUS", local=True),
    "vllm": Backend("meddpo.generation.vllm.engine:VLLM", local=True, server=True),
    "gemini": Backend("meddpo.gemini.job:GEMINI", local=False),
}


def backend(name: str) -> ShardBackend:
    """The object that implements backend ``name`` (its module is imported when first asked for)."""
    if name not in REGISTRY:
        raise ValueError(f"unknown engine or backend {name!r}; use one of {', '.join(REGISTRY)}")
    module, _, attribute = REGISTRY[name].code.partition(":")
    return getattr(importlib.import_module(module), attribute)


def backend_of(block: Mapping[str, Any]) -> tuple[str, Mapping[str, Any]]:
    """The backend name of a config block and the settings it runs with.

    A local-model block runs on its ``engine`` with itself as settings (the schema fills the
    engine in; a block built by hand must name it); a teacher or judge block on its
    ``backend`` with that backend's block (``local``: the local block's engine).
    """
    if "backend" not in block:
        return block["engine"], block
    name = block["backend"]
    settings = block[name]
    return (settings["engine"], settings) if name == LOCAL else (name, settings)


def answer_shard(
    block: Mapping[str, Any], questions: Sequence[dict], request: Request, job: JobContext | None = None
) -> ShardResult:
    """One shard job of a config block, by its backend: answers from the store, the rest asked."""
    name, settings = backend_of(block)
    return backend(name).answer_shard(questions, settings, request, job or JobContext())


def answer_shards(
    block: Mapping[str, Any], shards: Sequence[tuple[Sequence[dict], JobContext]], request: Request
) -> list[ShardResult]:
    """Several shards in one job: together when the backend can (``answer_shards``: a Gemini block in
    batch mode creates every shard's batch at once and waits for them together), else one by one."""
    name, settings = backend_of(block)
    implementation = backend(name)
    if len(shards) > 1 and hasattr(implementation, "answer_shards"):
        return implementation.answer_shards(shards, settings, request)
    return [implementation.answer_shard(questions, settings, request, job) for questions, job in shards]


def store_key(block: Mapping[str, Any], request: Request) -> dict[str, Any]:
    """The answer store key of a config block's shard jobs, exactly as they compute it."""
    name, settings = backend_of(block)
    return backend(name).store_key(settings, request)


# --------------------------------------------------------------------------- what the plan asks


def runs_on_vllm(engine: str) -> bool:
    """Whether a local engine is a vLLM server that its job starts."""
    return REGISTRY[engine].server if engine in REGISTRY else False


def serves_vllm(model: Mapping[str, Any] | None) -> bool:
    """Whether a local model block runs on a vLLM server that its job starts (engine vllm)."""
    return model is not None and runs_on_vllm(model["engine"])


def batches_continuously(engine: str) -> bool:
    """Whether a transformers engine refills its batch as answers finish (else: padded batches)."""
    return engine == "continuous"


def asks_gemini(block: Mapping[str, Any]) -> bool:
    """Whether a teacher or judge block is answered through Gemini (backend gemini), not a local model."""
    return block["backend"] == "gemini"


def runs_locally(block: Mapping[str, Any]) -> bool:
    """Whether a teacher or judge block's backend is a local model (a GPU job), not an API."""
    return REGISTRY[backend_of(block)[0]].local


def teacher_rule(config: Mapping[str, Any]) -> str:
    """The rule that writes the chosen answers: ``chosen_`` and the teacher's backend."""
    return f"chosen_{config['teacher']['backend']}"


def in_batch_mode(gemini: Any) -> bool:
    """Whether a Gemini block (a mapping, or GeminiSettings) sends its questions as Batch API jobs
    (mode batch), not one request each (online)."""
    mode = gemini.get("mode") if isinstance(gemini, Mapping) else getattr(gemini, "mode", None)
    return mode == "batch"


def sent_in_batch(record: Mapping[str, Any]) -> bool:
    """Whether a request-log record was sent in batch mode (records without a mode were sent online)."""
    return record.get("mode") == "batch"


def judge_block(judge: Mapping[str, Any], kind: str) -> str | None:
    """The key of the judge block's local model that runs the judge of ``kind`` (``classifier``,
    or ``local`` for a local rubric judge); None for a rubric judge answered through Gemini."""
    if kind == "classifier":
        return "classifier"
    return None if asks_gemini(judge) else LOCAL
