"""Which code answers a shard: from a model block's engine or backend to the engine's code.

A local model runs on engine "padded" or "continuous" (transformers, in
local_generation) or "vllm" (a vLLM server the job starts, in vllm_engine); the
backend "gemini" is the Gemini shard job (gemini_teacher.answer_shard). Every
shard job here returns a ShardResult, whatever the backend: the answers in
question order, the questions left out (refused or failed), the usage, and the
one-line problem that fails the job. The CLI steps, the judge stage, ``meddpo
status`` and the benchmarks pick an engine through this module and nowhere else;
the names themselves are compared only in backends.py.

It imports the engines (local_generation, vllm_engine, and gemini_teacher inside
the functions that need it), engine_types, resume and settings; never a stage
(judge, pairs, quality, validate, report), so the stages can import it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from meddpo.backends import asks_gemini, batches_continuously, judge_block, runs_on_vllm, serves_vllm
from meddpo.config.settings import choices
from meddpo.generation import transformers_engine as local_generation
from meddpo.generation.resume import PROGRESS_EVERY_S, ResumableJob
from meddpo.generation.transformers_engine import LocalGenerator
from meddpo.generation.types import (
    LOCAL_DEFAULTS,
    Answer,
    Prompts,
    Sampling,
    model_and_sampling,
    quiet_transformers,
    render_item,
    text_settings,
)
from meddpo.generation.vllm import engine as vllm_engine

log = logging.getLogger(__name__)

ENGINES = choices("local_model.engine")  # the schema's local-model engines


@dataclass
class ShardResult:
    """What every shard job returns, whatever its backend.

    ``answers``: the answer rows, in question order (what the shard's output file
    holds); ``left_out``: the questions without an answer (rows with ``kind``
    "refused" or "failed", in question order; a local model
    leaves none out); ``usage``: requests, tokens and cost (Gemini) or answers
    and tokens (a local model); ``problem``: the one-line reason the job must
    fail, else None.
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


# --------------------------------------------------------------------------- local models


def _recorder(
    job: ResumableJob,
    generator,
    questions: Sequence[dict],
    seeds: Mapping[str, int],
    rendered: Mapping[int, tuple[str, bool]],
    sampling: Sampling,
    engine: str,
):
    """``record(indices, answers)``: the answer rows of those questions, handed to the job as they come."""
    spec = generator.spec

    def record(indices: Sequence[int], answers: Sequence[Answer]) -> None:
        job.record(
            [
                {
                    "id": questions[i]["id"],
                    "text": a.text,
                    "finish_reason": a.finish_reason,
                    "new_tokens": a.new_tokens,
                    "prompt_tokens": a.prompt_tokens,
                    "model": spec.name,
                    "revision": generator.resolved_revision,
                    "sampling": asdict(sampling),
                    "engine": engine,
                    "seed": seeds[questions[i]["id"]],
                    "system_in_user_turn": rendered[i][1],
                }
                for i, a in zip(indices, answers, strict=True)
            ]
        )

    return record


def _prompts(job: ResumableJob, generator, system_prompt: str, sampling: Sampling, engine: str) -> Prompts:
    """The job's questions left, rendered and tokenized, with the record of their answers."""
    todo = list(range(len(job.todo)))
    questions = job.todo
    rendered = {i: render_item(generator, system_prompt, questions[i]) for i in todo}
    prompt_ids = {i: generator.tokenizer(rendered[i][0], add_special_tokens=False)["input_ids"] for i in todo}
    seeds: dict[str, int] = {}
    record = _recorder(job, generator, questions, seeds, rendered, sampling, engine)
    return Prompts(todo, questions, prompt_ids, seeds, record)


def answer_questions(
    generator,
    questions: Sequence[dict],
    system_prompt: str,
    sampling: Sampling,
    batch_size: int,
    *,
    max_batch_tokens: int | None = None,
    engine: str = LOCAL_DEFAULTS["engine"],
    store_root: str | os.PathLike | None = None,
    store_part: str = "answers",
    progress_every_s: float = PROGRESS_EVERY_S,
    job: ResumableJob | None = None,
) -> list[dict]:
    """Answer every question; rows come back in the order of ``questions``.

    ``generator`` is a LocalGenerator (engines padded and continuous) or a
    vllm_engine.VllmGenerator (engine vllm). Answers already in the store are
    reused (see resume.ResumableJob; pass ``job`` when the caller opened it
    already); new ones are stored as each batch finishes, or with vLLM as each
    request returns.
    """
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}; use one of {', '.join(ENGINES)}")
    job = job or ResumableJob(
        questions,
        text_settings(generator.spec, system_prompt, sampling),
        store_root=store_root,
        store_part=store_part,
        progress_every_s=progress_every_s,
    )
    prompts = _prompts(job, generator, system_prompt, sampling, engine)
    try:
        if runs_on_vllm(engine):
            vllm_engine.answer_streamed(generator, prompts, sampling)
        elif batches_continuously(engine):
            local_generation.answer_continuous(generator, prompts, sampling)
        else:  # padded
            local_generation.answer_padded(generator, prompts, sampling, batch_size, max_batch_tokens)
    finally:
        job.close()
    return job.rows()


def _local_result(questions: Sequence[dict], rows: list[dict]) -> ShardResult:
    """A local model's shard: its answer rows, the questions counted and the tokens added up."""
    return ShardResult(
        answers=rows,
        usage={
            "answers": len(questions),
            "new_tokens": sum(int(row.get("new_tokens") or 0) for row in rows),
            "prompt_tokens": sum(int(row.get("prompt_tokens") or 0) for row in rows),
        },
    )


def answer_shard(
    questions: Sequence[dict],
    model_settings: Mapping[str, Any],
    *,
    system_prompt: str,
    device: str = "auto",
    store_root: str | os.PathLike | None = None,
    store_part: str = "answers",
    progress_every_s: float = PROGRESS_EVERY_S,
    vllm: Mapping[str, Any] | None = None,
    server_log: str | os.PathLike | None = None,
    key_extra: Mapping[str, Any] | None = None,
) -> ShardResult:
    """One shard job of a config local-model block: answers from the store, the rest generated.

    The model is loaded (or, with engine vllm, its server started) only when
    something is left to generate, so a shard that is already answered (after a
    re-shard, say) costs seconds, not a model load. ``vllm`` is the config's vllm
    block and ``server_log`` the server's log file (engine vllm only).
    """
    if not questions:
        log.info("empty shard, nothing to generate")
        return _local_result(questions, [])
    spec, sampling = model_and_sampling(model_settings, device)
    job = ResumableJob(
        questions,
        text_settings(spec, system_prompt, sampling, key_extra),
        store_root=store_root,
        store_part=store_part,
        progress_every_s=progress_every_s,
    )
    if not job.todo:
        log.info("every answer of the shard is in the answer store: the model is not loaded")
        return _local_result(questions, job.rows())
    quiet_transformers()
    m = {**LOCAL_DEFAULTS, **model_settings}

    def answer(generator) -> list[dict]:
        return answer_questions(
            generator,
            questions,
            system_prompt,
            sampling,
            m["batch_size"],
            max_batch_tokens=m["max_batch_tokens"],
            engine=m["engine"],
            job=job,
        )

    if not serves_vllm(m):
        return _local_result(questions, answer(LocalGenerator(spec)))
    try:
        rows = vllm_engine.serve_and_answer(spec, m, vllm, server_log or f"vllm-{store_part}.log", answer)
    finally:
        job.close()
    return _local_result(questions, rows)


def local_store_key(model_settings: Mapping[str, Any], system_prompt: str) -> dict[str, Any]:
    """The answer store key of a local-model block's shard jobs, exactly as they compute it."""
    spec, sampling = model_and_sampling(model_settings)
    return text_settings(spec, system_prompt, sampling)


# --------------------------------------------------------------------------- backends: local or gemini


def answer_gemini_shard(
    questions: Sequence[dict],
    system_prompt: str,
    settings,
    *,
    store_root: str | os.PathLike | None,
    store_part: str,
    progress_every_s: float = PROGRESS_EVERY_S,
    response_schema: dict | None = None,
    key_extra: dict | None = None,
    max_usd: float | None = None,
) -> ShardResult:
    """One Gemini shard job (gemini_teacher.answer_shard; ``settings``: GeminiSettings) as a ShardResult."""
    from meddpo.gemini.job import answer_shard as gemini_shard

    rows, left_out, usage, problem = gemini_shard(
        questions,
        system_prompt,
        settings,
        store_root=store_root,
        store_part=store_part,
        progress_every_s=progress_every_s,
        response_schema=response_schema,
        key_extra=key_extra,
        max_usd=max_usd,
    )
    return ShardResult(answers=rows, left_out=left_out, usage=usage, problem=problem)


def store_key(block: Mapping[str, Any], system_prompt: str) -> dict[str, Any]:
    """The answer store key of a backend block's shard jobs (``teacher``: backend, local, gemini)."""
    if not asks_gemini(block):
        return local_store_key(block["local"], system_prompt)
    from meddpo.gemini.client import GeminiSettings

    return GeminiSettings(**block["gemini"]).text_settings(system_prompt)


def judge_gemini_settings(config: Mapping[str, Any]):
    """judge.gemini as Gemini settings (the schema's defaults for what it leaves out), at temperature 0."""
    from meddpo.gemini.client import GeminiSettings

    return GeminiSettings(**{**(config.get("gemini") or {}), "temperature": 0.0})


def judge_model(config: Mapping[str, Any]) -> dict[str, Any]:
    """The model of the rubric judge of the judge block ``config`` (and a Gemini endpoint not Google's)."""
    out: dict[str, Any] = {}
    if asks_gemini(config):
        gemini = judge_gemini_settings(config)
        out["model"] = gemini.model
        endpoint = gemini.endpoint()
        if endpoint:
            out["endpoint"] = endpoint  # not Google's: say so in every verdict
    else:
        out["model"] = config["local"]["model"]
    return out


def answer_judge_items(
    kind: str,
    config: Mapping[str, Any],
    items: Sequence[dict],
    *,
    system_prompt: str,
    response_schema: dict | None,
    key_extra: dict,
    store_root: str | os.PathLike | None,
    store_part: str,
    device: str = "auto",
    vllm: Mapping[str, Any] | None = None,
    server_log: str | os.PathLike | None = None,
    progress_every_s: float = PROGRESS_EVERY_S,
) -> ShardResult:
    """The judge of ``kind`` answers ``items``: Gemini for a rubric judge of backend gemini, else the
    judge block's local model (``classifier`` or ``local``). ``response_schema`` is for Gemini only."""
    block = judge_block(config, kind)
    if block is None:
        return answer_gemini_shard(
            items,
            system_prompt,
            judge_gemini_settings(config),
            store_root=store_root,
            store_part=store_part,
            progress_every_s=progress_every_s,
            response_schema=response_schema,
            key_extra=key_extra,
            max_usd=config.get("max_usd"),
        )
    return answer_shard(
        items,
        config[block],
        system_prompt=system_prompt,
        device=device,
        store_root=store_root,
        store_part=store_part,
        progress_every_s=progress_every_s,
        vllm=vllm,
        server_log=server_log,
        key_extra=key_extra,
    )
