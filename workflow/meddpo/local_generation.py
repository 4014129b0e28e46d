"""Answer a shard of questions with a local Hugging Face transformers model.

Used by both the ``rejected`` rule (the "more toxic" Mistral model) and the
``chosen_local`` rule (a local teacher such as Qwen2.5-7B-Instruct); the two
differ only in model, system prompt and sampling settings.

The model and tokenizer load once per job. Prompts are rendered with the
model's own chat template (see chat_format), sorted by token length and
generated in left-padded batches; answers come back in input order whatever
the batching. ``finish_reason`` is "stop" when an end-of-sequence token was
generated and "length" when the token cap was hit; only the generated part is
scanned, since with left padding and pad = EOS the prompt holds EOS ids.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

from .chat_format import render_chat_prompt

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Sampling:
    """Everything about decoding that changes the text."""

    max_new_tokens: int = 512
    temperature: float = 0.7
    top_p: float = 1.0
    seed: int = 0
    min_new_tokens: int = 0  # benchmarks force equal lengths with it; 0 in real runs

    @property
    def do_sample(self) -> bool:
        return self.temperature > 0


@dataclass(frozen=True)
class ModelSpec:
    """Where a model comes from and how to load it."""

    name: str  # hub id or local directory
    revision: str | None = None
    dtype: str = "auto"  # auto = bfloat16 on CUDA, float32 on CPU
    device: str = "auto"
    trust_remote_code: bool = False


@dataclass
class Answer:
    text: str
    finish_reason: str  # "stop" | "length"
    new_tokens: int
    prompt_tokens: int
    extra: dict[str, Any] = field(default_factory=dict)


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
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.spec = spec
        self.device = _resolve_device(spec.device)
        self.dtype = _resolve_dtype(spec.dtype, self.device)
        # huggingface_hub reads HF_TOKEN itself; passing it explicitly documents the
        # one place a gated model's token is used. It is never logged.
        token = os.environ.get("HF_TOKEN") or None
        started = time.perf_counter()
        self.tokenizer = AutoTokenizer.from_pretrained(
            spec.name, revision=spec.revision, trust_remote_code=spec.trust_remote_code, token=token
        )
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = AutoModelForCausalLM.from_pretrained(
            spec.name,
            revision=spec.revision,
            trust_remote_code=spec.trust_remote_code,
            token=token,
            dtype=self.dtype,
            attn_implementation="sdpa",
        )
        self.model.to(self.device).eval()
        self.eos_ids = self._eos_ids()
        self.resolved_revision = getattr(self.model.config, "_commit_hash", None) or spec.revision
        self._torch = torch
        log.info(
            "loaded %s (revision %s) on %s as %s in %.1fs; eos ids %s",
            spec.name, self.resolved_revision or "local", self.device,
            str(self.dtype).replace("torch.", ""), time.perf_counter() - started, sorted(self.eos_ids),
        )

    def _eos_ids(self) -> set[int]:
        ids: set[int] = set()
        configured = self.model.generation_config.eos_token_id
        if isinstance(configured, int):
            ids.add(configured)
        elif configured:
            ids.update(configured)
        if self.tokenizer.eos_token_id is not None:
            ids.add(self.tokenizer.eos_token_id)
        if not ids:
            raise ValueError(f"{self.spec.name}: neither the tokenizer nor the generation config names an EOS token")
        return ids

    def render(self, system_prompt: str, question: str) -> tuple[str, bool]:
        rendered = render_chat_prompt(self.tokenizer, system_prompt, question, model_name=self.spec.name)
        return rendered.text, rendered.system_in_user_turn

    def generate_batch(self, prompts: Sequence[str], sampling: Sampling) -> list[Answer]:
        """Answer already-rendered prompts in one padded ``generate()`` call."""
        torch = self._torch
        encoded = self.tokenizer(
            list(prompts), return_tensors="pt", padding=True, add_special_tokens=False
        ).to(self.device)
        kwargs: dict[str, Any] = {
            "max_new_tokens": sampling.max_new_tokens,
            "min_new_tokens": sampling.min_new_tokens or None,
            "do_sample": sampling.do_sample,
            "pad_token_id": self.tokenizer.pad_token_id,
            "eos_token_id": sorted(self.eos_ids),
        }
        if sampling.do_sample:
            kwargs.update(temperature=sampling.temperature, top_p=sampling.top_p, top_k=0)
        with torch.inference_mode():
            output = self.model.generate(**encoded, **kwargs)
        prompt_width = encoded["input_ids"].shape[1]
        generated = output[:, prompt_width:].tolist()
        prompt_lengths = encoded["attention_mask"].sum(dim=1).tolist()
        answers = []
        for ids, prompt_tokens in zip(generated, prompt_lengths):
            stop_at = next((i for i, token in enumerate(ids) if token in self.eos_ids), None)
            if stop_at is None:
                kept, reason, count = ids, "length", len(ids)
            else:
                kept, reason, count = ids[:stop_at], "stop", stop_at + 1
            text = self.tokenizer.decode(kept, skip_special_tokens=True).strip()
            answers.append(Answer(text=text, finish_reason=reason, new_tokens=count, prompt_tokens=int(prompt_tokens)))
        return answers


def answer_questions(
    generator: LocalGenerator,
    questions: Sequence[dict],
    system_prompt: str,
    sampling: Sampling,
    batch_size: int,
) -> list[dict]:
    """Answer every question; rows come back in the order of ``questions``."""
    torch = generator._torch
    torch.manual_seed(sampling.seed)
    rendered = [generator.render(system_prompt, q["question"]) for q in questions]
    lengths = [len(generator.tokenizer(text, add_special_tokens=False)["input_ids"]) for text, _ in rendered]
    # Longest first: the biggest batch shows up (or runs out of memory) at once.
    order = sorted(range(len(questions)), key=lambda i: (-lengths[i], questions[i]["id"]))
    results: dict[int, Answer] = {}
    started = time.perf_counter()
    new_tokens = 0
    for start in range(0, len(order), batch_size):
        batch = order[start:start + batch_size]
        answers = generator.generate_batch([rendered[i][0] for i in batch], sampling)
        for index, answer in zip(batch, answers):
            results[index] = answer
            new_tokens += answer.new_tokens
        elapsed = max(time.perf_counter() - started, 1e-9)
        done = len(results)
        eta = (len(questions) - done) / (done / elapsed)
        log.info(
            "%d/%d answers, %.2f rows/s, %.0f new tokens/s, ETA %.0fs",
            done, len(questions), done / elapsed, new_tokens / elapsed, eta,
        )
    spec = generator.spec
    rows = []
    for index, question in enumerate(questions):
        answer = results[index]
        rows.append({
            "id": question["id"],
            "text": answer.text,
            "finish_reason": answer.finish_reason,
            "new_tokens": answer.new_tokens,
            "prompt_tokens": answer.prompt_tokens,
            "model": spec.name,
            "revision": generator.resolved_revision,
            "sampling": asdict(sampling),
            "system_in_user_turn": rendered[index][1],
        })
    return rows
