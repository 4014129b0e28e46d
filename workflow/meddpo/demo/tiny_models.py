"""Tiny stand-ins for the real models, built on the spot for the offline demo and the tests.

* ``tiny-mistral``: a MistralForCausalLM with random weights and a SentencePiece
  BPE tokenizer trained on the given texts; its chat template is shaped like
  Mistral-7B-Instruct's ``[INST] ... [/INST]`` and, like some revisions of it,
  refuses a ``system`` message.
* ``tiny-qwen2``: a Qwen2ForCausalLM with random weights and a byte-level BPE
  tokenizer (``tokenizers``); its ChatML template (``<|im_start|>role ...
  <|im_end|>``) takes a system message.

Both load with ``AutoTokenizer`` / ``AutoModelForCausalLM.from_pretrained`` like
the real checkpoints, so the demo runs the same code as a real run.

Random weights almost never produce the end-of-sequence token, so every answer
would stop at the token cap. ``eos_rate`` builds a real preference for EOS into
the weights: hidden dimension 0 is held at a constant in the residual stream
(every token embedding carries it and no layer writes to it) and the EOS row of
the output projection reads it, so EOS gets a fixed logit at every step while
the other tokens stay near-uniform. ``eos_rate`` is then roughly the per-step
chance of stopping at temperature 1. ``eos_rate=0`` means never: left alone, a
random EOS row would still be sampled now and then (about one step in the
vocabulary size), and how often depends on the tokenizer trained on the spot.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

from meddpo.jsonl import current_umask

# Our own templates, written to behave like the real models' ones.
MISTRAL_STYLE_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}"
    "{{ raise_exception('This template has no system role; put the instructions in the first user turn.') }}"
    "{% endif %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Turns must alternate: user, assistant, user, ...') }}"
    "{% endif %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% else %}{{ message['content'] + eos_token }}{% endif %}"
    "{% endfor %}"
)

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou answer questions.<|im_end|>\\n' }}"
    "{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

# EOS logit for eos_rate=0: e**-40 per step, against near-uniform logits around 0
NEVER_LOGIT = -40.0

# Two heads of 32: vLLM's CPU attention kernels refuse head sizes under 32.
TINY_SHAPE = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=2,
    num_key_value_heads=1,
    max_position_embeddings=4096,
    tie_word_embeddings=False,
)


def _train_sentencepiece(texts: Sequence[str], workdir: Path, vocab_size: int) -> Path:
    import sentencepiece as spm

    corpus = workdir / "corpus.txt"
    corpus.write_text("\n".join(texts), encoding="utf-8")
    spm.SentencePieceTrainer.train(
        input=str(corpus),
        model_prefix=str(workdir / "sp"),
        vocab_size=vocab_size,
        hard_vocab_limit=False,
        model_type="bpe",
        byte_fallback=True,
        character_coverage=1.0,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        num_threads=1,
        minloglevel=2,
    )
    return workdir / "sp.model"


def build_mistral_tokenizer(texts: Sequence[str], vocab_size: int = 800):
    """A LlamaTokenizer (Mistral's tokenizer class) from a freshly trained SentencePiece model."""
    from transformers import AutoTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        sp_model = _train_sentencepiece(texts, workdir, vocab_size)
        folder = workdir / "tok"
        folder.mkdir()
        os.replace(sp_model, folder / "tokenizer.model")
        (folder / "tokenizer_config.json").write_text(
            json.dumps(
                {
                    "tokenizer_class": "LlamaTokenizer",
                    "bos_token": "<s>",
                    "eos_token": "</s>",
                    "unk_token": "<unk>",
                    "add_bos_token": True,
                    "add_eos_token": False,
                }
            )
        )
        tokenizer = AutoTokenizer.from_pretrained(folder)  # converts the SentencePiece model (needs protobuf)
    tokenizer.chat_template = MISTRAL_STYLE_TEMPLATE
    return tokenizer


def build_qwen2_tokenizer(texts: Sequence[str], vocab_size: int = 800):
    """A byte-level BPE tokenizer with Qwen2's ChatML special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(texts, trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=["<|im_start|>"],
    )
    tokenizer.chat_template = CHATML_TEMPLATE
    return tokenizer


def _bias_towards_eos(model, eos_ids: Sequence[int], eos_rate: float, probe_ids) -> None:
    """Give EOS a constant logit so that it is sampled with about ``eos_rate`` per step."""
    import torch

    inner = model.model
    with torch.no_grad():
        inner.embed_tokens.weight[:, 0] = 1.0
        for layer in inner.layers:
            layer.self_attn.o_proj.weight[0, :] = 0.0
            layer.mlp.down_proj.weight[0, :] = 0.0
        model.lm_head.weight[:, 0] = 0.0
        anchor = inner(input_ids=probe_ids).last_hidden_state[..., 0].mean().item()
        if eos_rate <= 0:
            # never: EOS reads dimension 0 only, at a logit no sampler ever picks
            for eos in eos_ids:
                model.lm_head.weight[eos, :] = 0.0
                model.lm_head.weight[eos, 0] = NEVER_LOGIT / anchor
            return
        vocab = model.lm_head.weight.shape[0]
        logit = math.log(eos_rate / len(eos_ids) * (vocab - 1) / (1.0 - eos_rate))
        for eos in eos_ids:
            model.lm_head.weight[eos, 0] = logit / anchor


def save_checkpoint(model, tokenizer, eos_ids: Sequence[int], out_dir: Path) -> Path:
    """``model`` and ``tokenizer`` saved at ``out_dir`` with a generation config that ends answers at
    ``eos_ids``: written in a folder beside it, then renamed over it, with the modes the umask asks for."""
    from transformers import GenerationConfig

    model.generation_config = GenerationConfig(
        bos_token_id=model.config.bos_token_id,
        eos_token_id=list(eos_ids) if len(eos_ids) > 1 else eos_ids[0],
        pad_token_id=tokenizer.pad_token_id,
    )
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    # mkdtemp (and the weights writer) make private files: give them what the umask asks for
    mask = current_umask()
    os.chmod(tmp, 0o777 & ~mask)
    for path in tmp.rglob("*"):
        os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~mask)
    if out_dir.exists():
        import shutil

        shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)
    return out_dir


def _build(config_class, model_class, tokenizer, eos_ids, texts, out_dir, seed, eos_rate, **config_kwargs):
    """A random-weight model of the given class around ``tokenizer``, biased towards EOS, saved."""
    import torch

    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    config = config_class(vocab_size=len(tokenizer), **config_kwargs, **TINY_SHAPE)
    model = model_class(config).eval()
    probe_ids = torch.tensor([tokenizer(texts[0])["input_ids"][:32]])
    _bias_towards_eos(model, eos_ids, eos_rate, probe_ids)
    return save_checkpoint(model, tokenizer, eos_ids, out_dir)


def build_tiny_mistral(
    texts: Sequence[str], out_dir: str | os.PathLike, *, seed: int = 0, eos_rate: float = 0.03
):
    from transformers import MistralConfig, MistralForCausalLM

    tokenizer = build_mistral_tokenizer(texts)
    eos = tokenizer.eos_token_id
    return _build(
        MistralConfig,
        MistralForCausalLM,
        tokenizer,
        [eos],
        texts,
        out_dir,
        seed,
        eos_rate,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=eos,
        sliding_window=None,
    )


def build_tiny_qwen2(
    texts: Sequence[str], out_dir: str | os.PathLike, *, seed: int = 0, eos_rate: float = 0.03
):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    tokenizer = build_qwen2_tokenizer(texts)
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    endoftext = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    return _build(
        Qwen2Config,
        Qwen2ForCausalLM,
        tokenizer,
        [im_end, endoftext],
        texts,
        out_dir,
        seed,
        eos_rate,
        bos_token_id=endoftext,
        eos_token_id=im_end,
        use_sliding_window=False,
    )
