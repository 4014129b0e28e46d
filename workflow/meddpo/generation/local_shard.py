"""A local model's shard job, whatever its engine: the store's answers, the rest generated.

``LocalModelBackend`` is what the local engines share (meddpo.backends.ShardBackend):
it opens the shard's ResumableJob, loads the model (or starts its server) only when
something is left to generate, renders and tokenizes the questions left, and keeps
every answer row as the engine hands it back. An engine adds two things:
``generate`` (answer the prompts: padded batches, continuous batching, or requests to
a server) and, when it needs more than a transformers model in memory,
``with_generator`` (e.g. start a vLLM server for the job and always stop it).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict
from typing import Any

from meddpo.backends import JobContext, Request, ShardResult, backend
from meddpo.generation.resume import ResumableJob
from meddpo.generation.types import (
    LOCAL_DEFAULTS,
    Answer,
    Prompts,
    Sampling,
    device_name,
    model_and_sampling,
    process_age_s,
    quiet_transformers,
    render_item,
    text_settings,
)

log = logging.getLogger(__name__)

JOBS_LOG = "jobs"  # the store's log of what each job measured (one record per job that generated)


class LocalModelBackend:
    """A shard answered by a local model; subclasses are the engines (``name``: its config name)."""

    name = ""

    def generate(self, generator, prompts: Prompts, sampling: Sampling, settings: Mapping[str, Any]) -> None:
        """Answer ``prompts.todo``, handing each finished answer to ``prompts.record``."""
        raise NotImplementedError

    def load(self, spec):
        """The generator of ``spec`` for this engine, e.g. a transformers model in memory."""
        raise NotImplementedError

    def with_generator(self, spec, settings: Mapping[str, Any], job: JobContext, answer: Callable) -> list:
        """``answer(generator)`` with this engine's generator of ``spec`` (a server is started here)."""
        return answer(self.load(spec))

    def store_key(self, settings: Mapping[str, Any], request: Request) -> dict[str, Any]:
        spec, sampling = model_and_sampling(settings)
        return text_settings(spec, request.system_prompt, sampling, request.key_extra)

    def answer_shard(
        self, questions: Sequence[dict], settings: Mapping[str, Any], request: Request, job: JobContext
    ) -> ShardResult:
        """The model is loaded (or its server started) only when something is left to generate,
        so a shard that is already answered (after a re-shard, say) costs seconds, not a model load."""
        if not questions:
            log.info("empty shard, nothing to generate")
            return _local_result(questions, [])
        spec, sampling = model_and_sampling(settings, job.device)
        resumable = ResumableJob(
            questions,
            text_settings(spec, request.system_prompt, sampling, request.key_extra),
            store_root=job.store_root,
            store_part=job.store_part,
            progress_every_s=job.progress_every_s,
        )
        if not resumable.todo:
            log.info("every answer of the shard is in the answer store: the model is not loaded")
            return _local_result(questions, resumable.rows())
        quiet_transformers()
        m = {**LOCAL_DEFAULTS, **settings}
        clock = {"start": time.monotonic(), "process_s": process_age_s()}

        def answer(generator) -> list[dict]:
            clock["loaded"] = time.monotonic()  # the model is in memory (or its server is up)
            clock["device"] = getattr(generator, "device", None) or job.device
            return self.answer_questions(generator, resumable, request.system_prompt, sampling, m)

        try:
            rows = self.with_generator(spec, m, job, answer)
            self._record_job(resumable, spec.name, clock, rows)
        finally:
            resumable.close()
        return _local_result(questions, rows)

    def _record_job(self, job: ResumableJob, model: str, clock: dict, rows: list[dict]) -> None:
        """What this job measured, in the store's ``jobs`` log: the preflight prices later runs with it."""
        made = [row for row in rows if row["id"] in job.new]
        record = {
            "time": round(time.time(), 3),
            "part": job.store.part.stem if job.store else None,
            "engine": self.name,
            "model": model,
            "device": device_name(str(clock.get("device", "cpu"))),
            "start_s": clock["process_s"],  # the job's own start before loading: Python, imports, inputs
            "load_s": round(clock["loaded"] - clock["start"], 2),
            "generate_s": round(time.monotonic() - clock["loaded"], 2),
            "answers": len(made),
            "new_tokens": sum(int(row.get("new_tokens") or 0) for row in made),
            "prompt_tokens": sum(int(row.get("prompt_tokens") or 0) for row in made),
        }
        log.info(
            "measured: %(answers)d answers, %(new_tokens)d new tokens in %(generate_s).1f s on %(device)s "
            "after %(load_s).1f s of loading",
            record,
        )
        if job.store:
            job.store.append_log(JOBS_LOG, [record])

    def answer_questions(
        self,
        generator,
        job: ResumableJob,
        system_prompt: str,
        sampling: Sampling,
        settings: Mapping[str, Any],
    ) -> list[dict]:
        """Every question the job has left, answered; rows come back in the order of its questions."""
        prompts = _prompts(job, generator, system_prompt, sampling, self.name)
        try:
            self.generate(generator, prompts, sampling, settings)
        finally:
            job.close()
        return job.rows()


def answer_questions(
    generator,
    questions: Sequence[dict],
    system_prompt: str,
    sampling: Sampling,
    batch_size: int,
    *,
    max_batch_tokens: int | None = None,
    engine: str = LOCAL_DEFAULTS["engine"],
    context: JobContext | None = None,
    job: ResumableJob | None = None,
) -> list[dict]:
    """Answer every question with a generator already loaded (benchmarks, tests); rows in question order.

    ``generator`` is a transformers_engine.LocalGenerator (engines padded and continuous)
    or a vllm.engine.VllmGenerator (engine vllm). Answers already in the store of
    ``context`` are reused; new ones are stored as each batch (or, with vLLM, each
    request) finishes.
    """
    engine_code = backend(engine)
    if not isinstance(engine_code, LocalModelBackend):
        raise ValueError(f"{engine!r} is not a local engine")
    context = context or JobContext()
    job = job or ResumableJob(
        questions,
        text_settings(generator.spec, system_prompt, sampling),
        store_root=context.store_root,
        store_part=context.store_part,
        progress_every_s=context.progress_every_s,
    )
    settings = {"batch_size": batch_size, "max_batch_tokens": max_batch_tokens, "engine": engine}
    return engine_code.answer_questions(generator, job, system_prompt, sampling, settings)


def _recorder(job: ResumableJob, generator, seeds, rendered, sampling: Sampling, engine: str):
    """``record(indices, answers)``: the answer rows of those questions, handed to the job as they come."""
    spec, questions = generator.spec, job.todo

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
    questions = job.todo
    todo = list(range(len(questions)))
    rendered = {i: render_item(generator, system_prompt, questions[i]) for i in todo}
    prompt_ids = {i: generator.tokenizer(rendered[i][0], add_special_tokens=False)["input_ids"] for i in todo}
    seeds: dict[str, int] = {}
    record = _recorder(job, generator, seeds, rendered, sampling, engine)
    return Prompts(todo, questions, prompt_ids, seeds, record)


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
