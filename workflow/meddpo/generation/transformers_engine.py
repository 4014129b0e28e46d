"""The transformers engines ("padded" and "continuous"): a local Hugging Face model answers prompts.

Used by both the ``rejected`` rule (the "more toxic" Mistral model) and the
``chosen_local`` rule (a local teacher such as Qwen2.5-7B-Instruct); the two
differ only in model, system prompt and sampling settings.

The engine:

* loads the model and tokenizer once per job (bf16 + SDPA attention on CUDA,
  fp32 on CPU) and renders prompts with the model's own chat template;
* answers only the questions not yet in the answer store (local_shard skips the
  others) and hands each batch's answers on as it finishes, so a killed job loses
  at most the batch in flight;
* sorts the remaining prompts by token length (longest first) and cuts them into
  batches of at most ``batch_size`` prompts and, if set, ``max_batch_tokens``
  padded tokens (prompt + new tokens), generating each batch in one left-padded
  ``generate()`` call under ``torch.inference_mode`` (engine "padded"), or hands
  them all to transformers' continuous batching ``generate_batch`` (engine
  "continuous");
* on CUDA out-of-memory splits the failing batch in two and goes on;
* seeds each batch from the configured seed and the batch's question ids, so the
  same batch gives the same text whatever ran before it;
* returns answers in input order whatever the batching.

``finish_reason`` is "stop" when an end-of-sequence token was generated and
"length" when the token cap was hit. Only the generated part is scanned: with
left padding and pad = EOS the prompt holds EOS ids.

``PADDED`` and ``CONTINUOUS`` are the two engines as backends (meddpo.backends.REGISTRY).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

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

log = logging.getLogger(__name__)


def _resolve_device(device: str) -> str:
    import torch

    if device != "auto":
        return device
    return "cuda" if torch.cuda.is_available() else "cpu"


def _resolve_dtype(dtype: str, device: str):
    import torch

    if dtype == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    try:
        return {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}[dtype]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r}; use auto, bfloat16, float16 or float32") from None


class LocalGenerator:
    """A causal LM and its tokenizer, loaded once, answering batches of questions."""

    def __init__(self, spec: ModelSpec):
        import torch
        from transformers import AutoModelForCausalLM

        self.spec = spec
        self.device = _resolve_device(spec.device)
        self.dtype = _resolve_dtype(spec.dtype, self.device)
        started = time.perf_counter()
        self.tokenizer = load_tokenizer(spec)
        self.model = AutoModelForCausalLM.from_pretrained(
            spec.name,
            revision=spec.revision,
            trust_remote_code=spec.trust_remote_code,
            token=os.environ.get("HF_TOKEN") or None,
            dtype=self.dtype,
            attn_implementation="sdpa",
        )
        self.model.to(self.device).eval()
        self.eos_ids = eos_token_ids(spec.name, self.tokenizer, self.model.generation_config)
        self.resolved_revision = getattr(self.model.config, "_commit_hash", None) or spec.revision
        self._torch = torch
        log.info(
            "loaded %s (revision %s) on %s as %s in %.1fs; eos ids %s",
            spec.name,
            self.resolved_revision or "local",
            self.device,
            str(self.dtype).replace("torch.", ""),
            time.perf_counter() - started,
            sorted(self.eos_ids),
        )

    render = render_question  # the same prompts in every engine

    def _sampling_kwargs(self, sampling: Sampling) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "max_new_tokens": sampling.max_new_tokens,
            "do_sample": sampling.do_sample,
            "pad_token_id": self.tokenizer.pad_token_id,
            "eos_token_id": sorted(self.eos_ids),
        }
        if sampling.min_new_tokens:
            kwargs["min_new_tokens"] = sampling.min_new_tokens
        if sampling.do_sample:
            kwargs.update(temperature=sampling.temperature, top_p=sampling.top_p, top_k=0)
        return kwargs

    def _answer(self, generated_ids: Sequence[int], prompt_tokens: int) -> Answer:
        return decode_answer(self.tokenizer, self.eos_ids, generated_ids, prompt_tokens)

    def generate_padded(self, prompt_ids: Sequence[Sequence[int]], sampling: Sampling) -> list[Answer]:
        """Answer tokenized prompts in one left-padded ``generate()`` call."""
        torch = self._torch
        width = max(len(ids) for ids in prompt_ids)
        pad = self.tokenizer.pad_token_id
        input_ids = torch.tensor(
            [[pad] * (width - len(ids)) + list(ids) for ids in prompt_ids], device=self.device
        )
        attention_mask = torch.tensor(
            [[0] * (width - len(ids)) + [1] * len(ids) for ids in prompt_ids], device=self.device
        )
        with torch.inference_mode():
            output = self.model.generate(
                input_ids=input_ids, attention_mask=attention_mask, **self._sampling_kwargs(sampling)
            )
        generated = output[:, width:].tolist()
        return [self._answer(ids, len(prompt)) for ids, prompt in zip(generated, prompt_ids, strict=True)]

    def generate_continuous(self, prompt_ids: Sequence[Sequence[int]], sampling: Sampling) -> list[Answer]:
        """Answer tokenized prompts with transformers' continuous batching (``generate_batch``)."""
        from transformers import GenerationConfig

        if sampling.min_new_tokens:
            raise ValueError("engine 'continuous' does not support min_new_tokens; use engine 'padded'")
        config = GenerationConfig(**self._sampling_kwargs(sampling))
        # generate_batch decodes in a worker thread of its own and manages grad mode
        # there; wrapping it in inference_mode here breaks its cache tensors.
        outputs = self.model.generate_batch(
            inputs=[list(ids) for ids in prompt_ids],
            generation_config=config,
            continuous_batching_config=self._cpu_cache_config(prompt_ids, sampling),
            progress_bar=False,
        )
        ordered = [outputs[f"req_{index}"] for index in range(len(prompt_ids))]
        return [
            self._answer(out.generated_tokens, len(ids)) for out, ids in zip(ordered, prompt_ids, strict=True)
        ]

    def _cpu_cache_config(self, prompt_ids: Sequence[Sequence[int]], sampling: Sampling):
        """On a CPU, a paged cache just big enough for every prompt at once; elsewhere None.

        Left to itself, generate_batch sizes its cache (and an attention mask over all of
        it) from the device's free memory: on a CPU that is most of the machine's RAM,
        filled with zeros on every call (~15-30 s for a tiny model, and the answers are
        the same either way). A GPU keeps transformers' own sizing."""
        if self.device != "cpu":
            return None
        from transformers.generation.configuration_utils import ContinuousBatchingConfig

        page = ContinuousBatchingConfig.page_size
        blocks = sum(-(-(len(ids) + sampling.max_new_tokens) // page) for ids in prompt_ids)
        return ContinuousBatchingConfig(num_blocks=blocks)


def plan_batches(
    lengths: Sequence[int], batch_size: int, max_new_tokens: int, max_batch_tokens: int | None = None
) -> list[list[int]]:
    """Indices grouped into batches, longest prompts first.

    A batch holds at most ``batch_size`` prompts and, when ``max_batch_tokens``
    is set, at most that many padded tokens (prompts x (longest prompt + new
    tokens)); a single prompt over the budget still gets a batch of its own.
    """
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    current: list[int] = []
    for index in order:
        width = (lengths[current[0]] if current else lengths[index]) + max_new_tokens
        full = len(current) >= batch_size or (
            max_batch_tokens is not None and current and (len(current) + 1) * width > max_batch_tokens
        )
        if full:
            batches.append(current)
            current = []
        current.append(index)
    if current:
        batches.append(current)
    return batches


def _is_cuda_oom(error: BaseException) -> bool:
    import torch

    return isinstance(error, torch.cuda.OutOfMemoryError)


def generate_with_oom_split(
    generate: Callable[[list[list[int]], Sampling], list[Answer]],
    prompt_ids: list[list[int]],
    ids: list[str],
    sampling: Sampling,
    seed_batch: Callable[[list[str]], None],
) -> list[Answer]:
    """Run one batch; on CUDA out-of-memory halve it (recursively) and go on."""
    seed_batch(ids)
    try:
        return generate(prompt_ids, sampling)
    except Exception as error:  # noqa: BLE001 - only CUDA OOM is handled, the rest re-raised
        if not _is_cuda_oom(error) or len(prompt_ids) == 1:
            raise
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    half = len(prompt_ids) // 2
    log.warning(
        "CUDA out of memory on a batch of %d prompts; splitting it into %d + %d",
        len(prompt_ids),
        half,
        len(prompt_ids) - half,
    )
    return generate_with_oom_split(
        generate, prompt_ids[:half], ids[:half], sampling, seed_batch
    ) + generate_with_oom_split(generate, prompt_ids[half:], ids[half:], sampling, seed_batch)


def batch_seeder(generator, sampling: Sampling, seeds: dict[str, int]) -> Callable[[list[str]], None]:
    """Seeds torch for one batch from its question ids, and notes each question's seed in ``seeds``."""

    def seed_batch(ids: list[str]) -> None:
        seed = batch_seed(sampling.seed, ids)
        seeds.update(dict.fromkeys(ids, seed))
        generator._torch.manual_seed(seed)

    return seed_batch


def answer_padded(
    generator: LocalGenerator,
    prompts: Prompts,
    sampling: Sampling,
    batch_size: int,
    max_batch_tokens: int | None,
) -> None:
    """Engine padded: the prompts in batches, longest first, each in one left-padded ``generate()``."""
    todo, questions, prompt_ids = prompts.todo, prompts.questions, prompts.prompt_ids
    seed_batch = batch_seeder(generator, sampling, prompts.seeds)
    lengths = [len(prompt_ids[i]) for i in todo]
    for batch in plan_batches(lengths, batch_size, sampling.max_new_tokens, max_batch_tokens):
        indices = [todo[b] for b in batch]
        prompts.record(
            indices,
            generate_with_oom_split(
                generator.generate_padded,
                [prompt_ids[i] for i in indices],
                [questions[i]["id"] for i in indices],
                sampling,
                seed_batch,
            ),
        )


def answer_continuous(generator: LocalGenerator, prompts: Prompts, sampling: Sampling) -> None:
    """Engine continuous: every prompt left in one ``generate_batch`` call, seeded as one batch."""
    todo, questions, prompt_ids = prompts.todo, prompts.questions, prompts.prompt_ids
    if not todo:
        return
    batch_seeder(generator, sampling, prompts.seeds)([questions[i]["id"] for i in todo])
    prompts.record(todo, generator.generate_continuous([prompt_ids[i] for i in todo], sampling))


class TransformersBackend(LocalModelBackend):
    """A shard answered by a transformers model in this process, in padded batches or continuously."""

    def __init__(self, name: str, continuous: bool):
        self.name, self.continuous = name, continuous

    def load(self, spec: ModelSpec) -> LocalGenerator:
        return LocalGenerator(spec)

    def generate(self, generator, prompts: Prompts, sampling: Sampling, settings: Mapping[str, Any]) -> None:
        if self.continuous:
            answer_continuous(generator, prompts, sampling)
        else:
            answer_padded(generator, prompts, sampling, settings["batch_size"], settings["max_batch_tokens"])


PADDED = TransformersBackend("padded", continuous=False)
CONTINUOUS = TransformersBackend("continuous", continuous=True)
