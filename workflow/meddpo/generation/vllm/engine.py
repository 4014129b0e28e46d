"""Engine ``vllm``: a shard answered through a vLLM server that the job starts and stops.

Same prompts, same facts, same store as the transformers engines:

* the prompt of each question is rendered and tokenized here, exactly as the
  transformers engine does it (our chat rendering, the system text folded into
  the user turn where the template refuses a system role, no second BOS), and
  sent as token ids: the server never applies a template or adds special tokens.
  Each reply carries the ids the server actually used (``return_token_ids``),
  and a reply whose ids differ from the ones sent stops the job;
* the generated ids are cut at the first end-of-answer id and decoded with our
  tokenizer (types.decode_answer), so finish reasons and token counts
  mean what they mean for the transformers engines;
* each question is one request with a seed of its own (from the configured seed
  and its id), so its answer does not depend on what else was in flight;
* many requests are kept in flight (``vllm.requests_in_flight``) so the server's
  continuous batching always has work, and each answer is appended to the answer
  store as it returns: a killed job loses only the requests in flight.

``VLLM`` is this engine as a backend (meddpo.backends.REGISTRY).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import logging
import os
import threading
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any

from meddpo.config.settings import defaults
from meddpo.generation.local_shard import LocalModelBackend
from meddpo.generation.types import (
    Answer,
    ModelSpec,
    Prompts,
    Sampling,
    batch_seed,
    decode_answer,
    eos_token_ids,
    load_tokenizer,
    render_question,
)
from meddpo.generation.vllm.server import ServerError, VllmServer, server_arguments

log = logging.getLogger(__name__)


def vllm_settings(settings: Mapping[str, Any] | None) -> dict[str, Any]:
    """The config's ``vllm`` block with the schema's defaults filled in."""
    return {**defaults("vllm"), **(settings or {})}


def server_dtype(dtype: str) -> str:
    """Our dtype setting as vLLM's: auto is bfloat16 with a GPU and float32 without, as for transformers."""
    if dtype != "auto":
        return dtype
    import torch

    return "bfloat16" if torch.cuda.is_available() else "float32"


class VllmGenerator:
    """The tokenizer of a model, and a running vLLM server of the same model to generate with."""

    def __init__(self, spec: ModelSpec, server: VllmServer, settings: Mapping[str, Any]):
        from transformers import AutoConfig, GenerationConfig

        self.spec = spec
        self.server = server
        self.requests_in_flight = int(settings["requests_in_flight"])
        self.request_timeout_s = float(settings["request_timeout_s"])
        self.tokenizer = load_tokenizer(spec)
        options = dict(
            revision=spec.revision,
            trust_remote_code=spec.trust_remote_code,
            token=os.environ.get("HF_TOKEN") or None,
        )
        try:
            generation_config = GenerationConfig.from_pretrained(spec.name, **options)
        except OSError:  # a checkpoint without generation_config.json
            generation_config = None
        self.eos_ids = eos_token_ids(spec.name, self.tokenizer, generation_config)
        config = AutoConfig.from_pretrained(spec.name, **options)
        self.resolved_revision = getattr(config, "_commit_hash", None) or spec.revision
        self._local = threading.local()

    render = render_question  # the same prompts as the transformers engines (tokenizer, spec)

    def request_body(self, prompt_ids: list[int], seed: int, sampling: Sampling) -> dict[str, Any]:
        """One completion request: token ids in, token ids out, the job's own sampling."""
        body: dict[str, Any] = {
            "model": "model",
            "prompt": list(prompt_ids),
            "max_tokens": sampling.max_new_tokens,
            "min_tokens": sampling.min_new_tokens,
            "seed": seed,
            "stop_token_ids": sorted(self.eos_ids),
            "return_token_ids": True,
        }
        if sampling.do_sample:
            # top_k 0 = off, as the transformers engine sets it (a model's generation config may say 20)
            body.update(temperature=sampling.temperature, top_p=sampling.top_p, top_k=0)
        else:
            body.update(temperature=0.0)
        return body

    def _connection(self) -> tuple[http.client.HTTPConnection, bool]:
        """This thread's connection to the server, and whether it has carried a request before."""
        connection = getattr(self._local, "connection", None)
        if connection is None:
            connection = http.client.HTTPConnection(
                "127.0.0.1", self.server.port, timeout=self.request_timeout_s
            )
            self._local.connection = connection
            return connection, False
        return connection, True

    def _post(self, payload: str, headers: dict[str, str]) -> tuple[int, str]:
        """POST one completion; a kept-alive connection the server has closed is reopened once."""
        while True:
            connection, reused = self._connection()
            try:
                connection.request("POST", "/v1/completions", body=payload, headers=headers)
                response = connection.getresponse()
                return response.status, response.read().decode("utf-8", "replace")
            except (OSError, http.client.HTTPException) as err:
                connection.close()
                self._local.connection = None
                if not reused or isinstance(err, TimeoutError):  # a slow answer is not asked twice
                    raise

    def complete(self, question_id: str, prompt_ids: list[int], seed: int, sampling: Sampling) -> Answer:
        """Send one question to the server; its answer, or a one-line ServerError."""
        payload = json.dumps(self.request_body(prompt_ids, seed, sampling))
        headers = {"Content-Type": "application/json", "Authorization": f"Bearer {self.server.api_key}"}
        try:
            status, text = self._post(payload, headers)
        except (OSError, http.client.HTTPException) as err:
            state = "is running" if self.server.running() else "has stopped"
            raise ServerError(
                f"question {question_id}: no answer from the vLLM server ({type(err).__name__}); "
                f"the server {state}; see {self.server.log_path}"
            ) from None
        if status != 200:
            raise ServerError(
                f"question {question_id}: the vLLM server answered HTTP {status}: {_message(text)} "
                f"(see {self.server.log_path})"
            )
        try:
            reply = json.loads(text)
            choice = reply["choices"][0]
            generated, prompt_tokens = choice["token_ids"], reply["usage"]["prompt_tokens"]
        except (ValueError, KeyError, IndexError, TypeError):
            raise ServerError(
                f"question {question_id}: the vLLM server's reply has no token ids (a vLLM without "
                f"return_token_ids?): {_message(text)}"
            ) from None
        if choice.get("prompt_token_ids") != list(prompt_ids):
            raise ServerError(
                f"question {question_id}: the vLLM server used other prompt token ids than the ones sent "
                f"({len(choice.get('prompt_token_ids') or [])} instead of {len(prompt_ids)})"
            )
        return decode_answer(self.tokenizer, self.eos_ids, generated, prompt_tokens)

    def generate_stream(
        self,
        prompt_ids: Mapping[int, list[int]],
        seeds: Mapping[int, int],
        sampling: Sampling,
        names: Mapping[int, str],
    ) -> Iterator[tuple[int, Answer]]:
        """(key, answer) pairs as the server returns them, ``requests_in_flight`` at a time.

        ``names`` are the question ids that errors name.
        """
        if not prompt_ids:
            return
        pool = ThreadPoolExecutor(
            max_workers=min(self.requests_in_flight, len(prompt_ids)), thread_name_prefix="vllm-request"
        )
        futures = {
            pool.submit(self.complete, names[key], ids_, seeds[key], sampling): key
            for key, ids_ in prompt_ids.items()
        }
        try:
            for future in as_completed(futures):
                yield futures[future], future.result()
        finally:
            pool.shutdown(wait=False, cancel_futures=True)


def answer_streamed(generator: VllmGenerator, prompts: Prompts, sampling: Sampling) -> None:
    """Engine vllm: one request per question, each seeded by its own id; each answer kept as it returns."""
    todo, questions, seeds = prompts.todo, prompts.questions, prompts.seeds
    for i in todo:
        seeds[questions[i]["id"]] = batch_seed(sampling.seed, [questions[i]["id"]])
    stream = generator.generate_stream(
        {i: prompts.prompt_ids[i] for i in todo},
        {i: seeds[questions[i]["id"]] for i in todo},
        sampling,
        {i: questions[i]["id"] for i in todo},
    )
    with contextlib.closing(stream):  # a failed record stops the requests still queued
        for i, answer in stream:
            prompts.record([i], [answer])


def _message(text: str) -> str:
    """The server's error message, on one line."""
    try:
        error = json.loads(text)
        message = str(error.get("error", {}).get("message") or error.get("message") or text)
    except (ValueError, AttributeError):
        message = text
    return " ".join(message.split())[:300]


def serve_and_answer(
    spec: ModelSpec,
    model_settings: Mapping[str, Any],
    settings: Mapping[str, Any],
    server_log: str | os.PathLike,
    answer: Any,
) -> list[dict]:
    """Start the server of ``spec``, hand ``answer(generator)`` a VllmGenerator; the server always stops."""
    settings = vllm_settings(settings)
    arguments = server_arguments(model_settings, settings, server_dtype(spec.dtype))
    with VllmServer(
        settings["command"],
        arguments,
        Path(server_log),
        env=settings["env"],
        startup_timeout_s=float(settings["startup_timeout_s"]),
    ) as server:
        return answer(VllmGenerator(spec, server, settings))


class VllmBackend(LocalModelBackend):
    """A shard answered through a vLLM server that the job starts and always stops."""

    name = "vllm"

    def generate(self, generator, prompts: Prompts, sampling: Sampling, settings: Mapping[str, Any]) -> None:
        answer_streamed(generator, prompts, sampling)

    def with_generator(self, spec: ModelSpec, settings: Mapping[str, Any], job, answer) -> list[dict]:
        server_log = job.server_log or f"vllm-{job.store_part}.log"
        return serve_and_answer(spec, settings, job.vllm, server_log, answer)


VLLM = VllmBackend()
