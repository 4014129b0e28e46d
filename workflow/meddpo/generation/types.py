"""What every local-model engine shares: model and sampling settings, answers, tokenizer and prompts.

The transformers engine, the vLLM engine and the local shard job build on this
module. It holds the settings a job is keyed by
(ModelSpec, Sampling, text_settings, model_and_sampling), the Answer an engine
returns and how one is cut and decoded (eos_token_ids, decode_answer), the
tokenizer and the rendered prompt of a question (load_tokenizer, render_question,
render_item) and the seed of a batch (batch_seed). torch and transformers are
imported inside the functions that need them.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from meddpo.config.settings import defaults
from meddpo.generation.chat_format import render_chat_prompt, render_conversation

LOCAL_DEFAULTS = defaults("local_model")  # the schema's local-model block


@dataclass(frozen=True)
class Sampling:
    """Everything about decoding that changes the text (the config's local-model block)."""

    max_new_tokens: int
    temperature: float
    top_p: float = LOCAL_DEFAULTS["top_p"]
    seed: int = LOCAL_DEFAULTS["seed"]
    min_new_tokens: int = LOCAL_DEFAULTS["min_new_tokens"]  # benchmarks force equal lengths with it

    @property
    def do_sample(self) -> bool:
        return self.temperature > 0


@dataclass(frozen=True)
class ModelSpec:
    """Where a model comes from and how to load it."""

    name: str  # hub id or local directory
    revision: str | None = LOCAL_DEFAULTS["revision"]
    dtype: str = LOCAL_DEFAULTS["dtype"]  # auto = bfloat16 on CUDA, float32 on CPU
    device: str = "auto"
    trust_remote_code: bool = LOCAL_DEFAULTS["trust_remote_code"]

    def text_settings(self) -> dict[str, Any]:
        """The loading settings that change the generated text."""
        return {"model": self.name, "revision": self.revision, "dtype": self.dtype}


@dataclass
class Answer:
    text: str
    finish_reason: str  # "stop" | "length"
    new_tokens: int
    prompt_tokens: int


@dataclass
class Prompts:
    """The questions a job has left, tokenized: what an engine answers, and where each answer goes.

    ``todo`` indexes ``questions`` (the job's questions left) and ``prompt_ids``;
    the engine notes the seed of each question id in ``seeds`` and hands each
    finished answer to ``record(indices, answers)``.
    """

    todo: list[int]
    questions: Sequence[dict]
    prompt_ids: dict[int, list[int]]
    seeds: dict[str, int]
    record: Callable[[Sequence[int], Sequence[Answer]], None]


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


def render_question(generator, system_prompt: str, question: str) -> tuple[str, bool]:
    """A question under the system prompt, in the model's chat template (the ``render`` of every engine)."""
    rendered = render_chat_prompt(
        generator.tokenizer, system_prompt, question, model_name=generator.spec.name
    )
    return rendered.text, rendered.system_in_user_turn


def batch_seed(seed: int, ids: Sequence[str]) -> int:
    """The torch seed of one batch: the configured seed and the batch's question ids."""
    digest = hashlib.sha256(f"{seed}|{'|'.join(ids)}".encode()).digest()
    return int.from_bytes(digest[:8], "big") & 0x7FFF_FFFF_FFFF_FFFF


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


def device_name(device: str) -> str:
    """The kind of device a job ran on, as its record names it: the GPU's model, or ``cpu``
    (``auto``: this machine's first GPU, else the CPU)."""
    if device != "auto" and not device.startswith("cuda"):
        return "cpu"
    import torch

    if not torch.cuda.is_available():
        return "cpu"
    return torch.cuda.get_device_name(int(device.partition(":")[2] or 0))


def process_age_s() -> float | None:
    """Seconds since this process started (Python's start-up, imports, reading inputs), from /proc."""
    try:
        with open("/proc/self/stat", encoding="ascii") as handle:
            started_ticks = int(handle.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime", encoding="ascii") as handle:
            uptime = float(handle.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return round(uptime - started_ticks / os.sysconf("SC_CLK_TCK"), 2)


def quiet_transformers() -> None:
    """No progress bars or advice from transformers in a job's log."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def model_and_sampling(model_settings: Mapping[str, Any], device: str = "auto") -> tuple[ModelSpec, Sampling]:
    """The loading and decoding settings of a config local-model block (``rejected``, ``teacher.local``)."""
    m = {**LOCAL_DEFAULTS, **model_settings}
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
