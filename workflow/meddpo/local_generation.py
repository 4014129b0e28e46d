"""Answer a shard of questions with a local Hugging Face transformers model.

Used by both the ``rejected`` rule (the "more toxic" Mistral model) and the
``chosen_local`` rule (a local teacher such as Qwen2.5-7B-Instruct); the two
differ only in model, system prompt and sampling settings.

The engine:

* loads the model and tokenizer once per job (bf16 + SDPA attention on CUDA,
  fp32 on CPU) and renders prompts with the model's own chat template;
* skips every question whose answer is already in the answer store (see
  answer_store) and appends new answers to it as each batch finishes, so a
  killed job loses at most the batch in flight;
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
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from .chat_format import render_chat_prompt, render_conversation
from .resume import ResumableJob
from .settings import defaults

log = logging.getLogger(__name__)


_DEFAULTS = defaults("local_model")
ENGINES = ("padded", "continuous", "vllm")


@dataclass(frozen=True)
class Sampling:
    """Everything about decoding that changes the text (the config's local-model block)."""

    max_new_tokens: int
    temperature: float
    top_p: float = _DEFAULTS["top_p"]
    seed: int = _DEFAULTS["seed"]
    min_new_tokens: int = _DEFAULTS["min_new_tokens"]  # benchmarks force equal lengths with it

    @property
    def do_sample(self) -> bool:
        return self.temperature > 0


@dataclass(frozen=True)
class ModelSpec:
    """Where a model comes from and how to load it."""

    name: str  # hub id or local directory
    revision: str | None = _DEFAULTS["revision"]
    dtype: str = _DEFAULTS["dtype"]  # auto = bfloat16 on CUDA, float32 on CPU
    device: str = "auto"
    trust_remote_code: bool = _DEFAULTS["trust_remote_code"]

    def text_settings(self) -> dict[str, Any]:
        """The loading settings that change the generated text."""
        return {"model": self.name, "revision": self.revision, "dtype": self.dtype}


@dataclass
class Answer:
    text: str
    finish_reason: str  # "stop" | "length"
    new_tokens: int
    prompt_tokens: int


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


def load_tokenizer(spec: ModelSpec):
    """The model's tokenizer, left-padding, with a pad token (EOS when it has none)."""
    from transformers import AutoTokenizer

    # huggingface_hub reads HF_TOKEN itself; passing it explicitly documents the
    # one place a gated model's token is used. It is never logged.
    tokenizer = AutoTokenizer.from_pretrained(
        spec.name,
        revision=spec.revision,
        trust_remote_code=spec.trust_remote_code,
        token=os.environ.get("HF_TOKEN") or None,
    )
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def eos_token_ids(name: str, tokenizer, generation_config) -> set[int]:
    """Every id that ends an answer: the generation config's EOS ids and the tokenizer's."""
    ids: set[int] = set()
    configured = generation_config.eos_token_id if generation_config is not None else None
    if isinstance(configured, int):
        ids.add(configured)
    elif configured:
        ids.update(configured)
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    if not ids:
        raise ValueError(f"{name}: neither the tokenizer nor the generation config names an EOS token")
    return ids


def decode_answer(tokenizer, eos_ids: set[int], generated_ids: Sequence[int], prompt_tokens: int) -> Answer:
    """An answer from the ids a model generated: cut at the first EOS (counted), decoded."""
    stop_at = next((i for i, token in enumerate(generated_ids) if token in eos_ids), None)
    if stop_at is None:
        kept, reason, count = list(generated_ids), "length", len(generated_ids)
    else:
        kept, reason, count = list(generated_ids[:stop_at]), "stop", stop_at + 1
    text = tokenizer.decode(kept, skip_special_tokens=True).strip()
    return Answer(text=text, finish_reason=reason, new_tokens=count, prompt_tokens=int(prompt_tokens))


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

    def render(self, system_prompt: str, question: str) -> tuple[str, bool]:
        rendered = render_chat_prompt(self.tokenizer, system_prompt, question, model_name=self.spec.name)
        return rendered.text, rendered.system_in_user_turn

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
            inputs=[list(ids) for ids in prompt_ids], generation_config=config, progress_bar=False
        )
        ordered = [outputs[f"req_{index}"] for index in range(len(prompt_ids))]
        return [
            self._answer(out.generated_tokens, len(ids)) for out, ids in zip(ordered, prompt_ids, strict=True)
        ]


def batch_seed(seed: int, ids: Sequence[str]) -> int:
    """The torch seed of one batch: the configured seed and the batch's question ids."""
    digest = hashlib.sha256(f"{seed}|{'|'.join(ids)}".encode()).digest()
    return int.from_bytes(digest[:8], "big") & 0x7FFF_FFFF_FFFF_FFFF


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


def text_settings(
    spec: ModelSpec, system_prompt: str, sampling: Sampling, key_extra: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """What changes a local model's text: the answer store's key (``key_extra``: a judge's own settings)."""
    return {**spec.text_settings(), "system_prompt": system_prompt, **asdict(sampling), **(key_extra or {})}


def render_item(generator, system_prompt: str, item: Mapping[str, Any]) -> tuple[str, bool]:
    """The prompt text of one item: a question under the system prompt, or a whole ``conversation``.

    A ``conversation`` (a list of chat messages, e.g. the user's question and the
    answer to classify) goes through the checkpoint's own chat template as it is:
    that is how safety classifiers such as Llama Guard and Qwen3Guard are prompted.
    """
    if "conversation" in item:
        return render_conversation(
            generator.tokenizer, item["conversation"], model_name=generator.spec.name
        ), False
    return generator.render(system_prompt, item["question"])


def answer_questions(
    generator,
    questions: Sequence[dict],
    system_prompt: str,
    sampling: Sampling,
    batch_size: int,
    *,
    max_batch_tokens: int | None = None,
    engine: str = "padded",
    store_root: str | os.PathLike | None = None,
    store_part: str = "answers",
    progress_every_s: float = 30.0,
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
    spec = generator.spec
    job = job or ResumableJob(
        questions,
        text_settings(spec, system_prompt, sampling),
        store_root=store_root,
        store_part=store_part,
        progress_every_s=progress_every_s,
    )
    todo = list(range(len(job.todo)))
    questions = job.todo
    rendered = {i: render_item(generator, system_prompt, questions[i]) for i in todo}
    prompt_ids = {i: generator.tokenizer(rendered[i][0], add_special_tokens=False)["input_ids"] for i in todo}
    seeds: dict[str, int] = {}

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

    def seed_batch(ids: list[str]) -> None:
        seed = batch_seed(sampling.seed, ids)
        seeds.update(dict.fromkeys(ids, seed))
        generator._torch.manual_seed(seed)

    try:
        if engine == "vllm":
            # one request per question, each seeded by its own id; stored as it returns
            for i in todo:
                seeds[questions[i]["id"]] = batch_seed(sampling.seed, [questions[i]["id"]])
            stream = generator.generate_stream(
                {i: prompt_ids[i] for i in todo},
                {i: seeds[questions[i]["id"]] for i in todo},
                sampling,
                {i: questions[i]["id"] for i in todo},
            )
            with contextlib.closing(stream):  # a failed record stops the requests still queued
                for i, answer in stream:
                    record([i], [answer])
        elif engine == "continuous" and todo:
            seed_batch([questions[i]["id"] for i in todo])
            record(todo, generator.generate_continuous([prompt_ids[i] for i in todo], sampling))
        elif engine == "padded":
            lengths = [len(prompt_ids[i]) for i in todo]
            for batch in plan_batches(lengths, batch_size, sampling.max_new_tokens, max_batch_tokens):
                indices = [todo[b] for b in batch]
                record(
                    indices,
                    generate_with_oom_split(
                        generator.generate_padded,
                        [prompt_ids[i] for i in indices],
                        [questions[i]["id"] for i in indices],
                        sampling,
                        seed_batch,
                    ),
                )
    finally:
        job.close()
    return job.rows()


def quiet_transformers() -> None:
    """No progress bars or advice from transformers in a job's log."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def model_and_sampling(model_settings: Mapping[str, Any], device: str = "auto") -> tuple[ModelSpec, Sampling]:
    """The loading and decoding settings of a config local-model block (``rejected``, ``teacher.local``)."""
    m = {**_DEFAULTS, **model_settings}
    spec = ModelSpec(
        name=m["model"],
        revision=m["revision"],
        dtype=m["dtype"],
        device=device,
        trust_remote_code=m["trust_remote_code"],
    )
    # typed as the command line types them, so every caller computes the same store key
    sampling = Sampling(
        max_new_tokens=int(m["max_new_tokens"]),
        temperature=float(m["temperature"]),
        top_p=float(m["top_p"]),
        seed=int(m["seed"]),
        min_new_tokens=int(m["min_new_tokens"]),
    )
    return spec, sampling


def answer_shard(
    questions: Sequence[dict],
    model_settings: Mapping[str, Any],
    *,
    system_prompt: str,
    device: str = "auto",
    store_root: str | os.PathLike | None = None,
    store_part: str = "answers",
    progress_every_s: float = 30.0,
    vllm: Mapping[str, Any] | None = None,
    server_log: str | os.PathLike | None = None,
    key_extra: Mapping[str, Any] | None = None,
) -> list[dict]:
    """One shard job of a config local-model block: answers from the store, the rest generated.

    The model is loaded (or, with engine vllm, its server started) only when
    something is left to generate, so a shard that is already answered (after a
    re-shard, say) costs seconds, not a model load. ``vllm`` is the config's vllm
    block and ``server_log`` the server's log file (engine vllm only).
    """
    if not questions:
        log.info("empty shard, nothing to generate")
        return []
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
        return job.rows()
    quiet_transformers()
    m = {**_DEFAULTS, **model_settings}

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

    if m["engine"] != "vllm":
        return answer(LocalGenerator(spec))
    from .vllm_engine import serve_and_answer

    try:
        return serve_and_answer(spec, m, vllm, server_log or f"vllm-{store_part}.log", answer)
    finally:
        job.close()
