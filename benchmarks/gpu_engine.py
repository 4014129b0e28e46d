"""Decode throughput of the local-model engines for a Mistral-7B-architecture model on one GPU.

    python benchmarks/gpu_engine.py                    # padded engine, batch sizes 1-128: 3-5 min on an H100
    python benchmarks/gpu_engine.py --engines          # padded vs vllm, realistic lengths, 2,000 prompts
    python benchmarks/gpu_engine.py --engines --prompts 256   # the same within ~10 minutes of an H100
    python benchmarks/gpu_engine.py --tiny --device cpu --batch-sizes 1 4 --new-tokens 8   # smoke test
    python benchmarks/gpu_engine.py --engines --tiny --device cpu --prompts 16             # smoke test

With --engines, both engines answer the same prompts whose answer lengths are
drawn like the reference pairs' (rejected: median ~160 tokens, cap 512; chosen:
median ~900, cap 1,536; geometric, seeded). Each answer is forced to its drawn
length (min = max new tokens, end-of-answer ignored), so both engines produce the
same useful tokens; the padded engine decodes each batch until its longest
answer is done, as it does in a real job, and vLLM refills finished slots. vLLM
runs as the jobs run it (meddpo.generation.vllm.server), from --vllm-python (default
.venv-vllm), with random weights (its "dummy" load format, nothing downloaded).
Without a vLLM environment the transformers half still runs and the vLLM half is
reported as not run. Prints useful new tokens/s, start-up, the fraction of the
bandwidth bound, and the projected GPU-hours of the 10,000-question job
(both models, start-ups included) for 20 shards and for 2.

Nothing is downloaded: the model is MistralForCausalLM built from Mistral-7B's
shape (32 layers, hidden 4096, 32 heads / 8 KV heads, vocab 32000) with random
bf16 weights, and the prompts are random token ids of 60-120 tokens, left
padded, as the engine sends them. Every answer is forced to --new-tokens
(min = max), so each batch does the same work. For each batch size it prints
new tokens/s and the fraction of the memory-bandwidth bound: a decode step must
read all weights plus the KV cache of the batch once, so at the measured
device-to-device copy bandwidth B the bound is
    batch / ((weight bytes + KV bytes at the mean context) / B)  tokens/s.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# (median, cap) of new tokens per answer, as in the reference pairs
WORKLOADS = {"rejected": (160, 512), "chosen": (900, 1536)}
REAL_RUN_QUESTIONS = 10_000
ASSUMED_LOAD_S = 120.0  # the padded engine's model load per job (config estimate.model_start_up_minutes)


def measure_bandwidth(torch, device: str, gib: float = 2.0) -> float:
    """Bytes/s of a large device-to-device copy (read + write)."""
    n = int(gib * 2**30) // 2
    src = torch.empty(n, dtype=torch.bfloat16, device=device)
    dst = torch.empty_like(src)
    for _ in range(2):
        dst.copy_(src)
    sync(torch, device)
    started = time.perf_counter()
    repeats = 10
    for _ in range(repeats):
        dst.copy_(src)
    sync(torch, device)
    return 2 * src.numel() * src.element_size() * repeats / (time.perf_counter() - started)


def sync(torch, device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def model_config(tiny: bool):
    from transformers import MistralConfig

    # tiny: 2 heads of 32, the narrowest vLLM's CPU attention accepts
    shape = (
        dict(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=1,
        )
        if tiny
        else {}
    )
    return MistralConfig(sliding_window=None, **shape)  # defaults are Mistral-7B's shape


def build_model(torch, args):
    """Random weights in Mistral-7B's shape (or the tiny one); its weight and KV bytes per token."""
    from transformers import MistralForCausalLM

    config = model_config(args.tiny)
    dtype = torch.bfloat16 if args.device.startswith("cuda") else torch.float32
    torch.manual_seed(0)
    with torch.device(args.device):
        model = MistralForCausalLM._from_config(config, dtype=dtype, attn_implementation="sdpa").eval()
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    head_dim = config.hidden_size // config.num_attention_heads
    element = 2 if dtype == torch.bfloat16 else 4
    kv_bytes_per_token = 2 * config.num_hidden_layers * config.num_key_value_heads * head_dim * element
    return config, model, weight_bytes, kv_bytes_per_token


def draw_lengths(n: int, median: int, cap: int, seed: int) -> list[int]:
    """Answer lengths, geometric with the given median, capped (the tiny models' end-of-answer rate)."""
    import random

    rate = math.log(2) / median
    rng = random.Random(seed)
    return [min(cap, 1 + int(math.log(1 - rng.random()) / math.log(1 - rate))) for _ in range(n)]


def draw_prompts(n: int, vocab: int, seed: int, low: int = 60, high: int = 120) -> list[list[int]]:
    """Prompt token ids: one shared system part (prefix caching sees it) and a question of its own."""
    import random

    rng = random.Random(seed)
    system = [1] + [rng.randrange(3, vocab) for _ in range(low - 20)]
    return [
        system + [rng.randrange(3, vocab) for _ in range(rng.randint(20, high - low + 20))] for _ in range(n)
    ]


def padded_run(torch, model, prompts, lengths, batch_size: int, device: str, eos: int) -> dict:
    """The padded engine's cost: each batch (longest prompts first) decodes until its longest answer ends."""
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    started = time.perf_counter()
    steps = 0
    for first in range(0, len(order), batch_size):
        batch = order[first : first + batch_size]
        width = max(len(prompts[i]) for i in batch)
        longest = max(lengths[i] for i in batch)
        ids = torch.tensor([[eos] * (width - len(prompts[i])) + prompts[i] for i in batch], device=device)
        mask = torch.tensor(
            [[0] * (width - len(prompts[i])) + [1] * len(prompts[i]) for i in batch], device=device
        )
        with torch.inference_mode():
            model.generate(
                input_ids=ids,
                attention_mask=mask,
                max_new_tokens=longest,
                min_new_tokens=longest,
                do_sample=True,
                temperature=0.8,
                top_k=0,
                pad_token_id=eos,
                eos_token_id=eos,
            )
        steps += longest
    sync(torch, device)
    seconds = time.perf_counter() - started
    return {"useful_tokens": sum(lengths), "decode_steps": steps, "seconds": round(seconds, 2)}


def vllm_run(args, config, prompts_by_side, lengths_by_side) -> dict:
    """Both workloads through one vLLM server with random weights, as a job streams a shard."""
    import http.client
    import threading
    from concurrent.futures import ThreadPoolExecutor

    sys.path.insert(0, str(REPO / "workflow"))
    from meddpo.generation.vllm.engine import vllm_settings
    from meddpo.generation.vllm.server import VllmServer, server_arguments

    if not Path(args.vllm_python).exists():
        return {"not_run": f"no vLLM environment at {args.vllm_python} (make vllm-env)"}
    cpu = not args.device.startswith("cuda")
    if not cpu:
        probe = [args.vllm_python, "-c", "import sys, torch; sys.exit(not torch.cuda.is_available())"]
        if subprocess.run(probe, capture_output=True).returncode != 0:
            return {"not_run": f"the vLLM environment {args.vllm_python} sees no GPU (a CPU build?)"}
    settings = vllm_settings(
        {
            "command": f"{args.vllm_python} -m vllm.entrypoints.openai.api_server",
            "enforce_eager": cpu,
            "max_num_batched_tokens": 32768 if cpu else None,
            "env": {"VLLM_CPU_KVCACHE_SPACE": "1"} if cpu else {},
            "max_num_seqs": 64 if cpu else 256,
            "requests_in_flight": 72 if cpu else 288,
        }
    )
    out: dict = {}
    with tempfile.TemporaryDirectory() as folder:
        config.architectures = ["MistralForCausalLM"]
        config.save_pretrained(folder)  # a config and no weights: vLLM draws them (load format dummy)
        arguments = server_arguments({"model": folder}, settings, "float32" if cpu else "bfloat16")
        arguments += ["--load-format", "dummy", "--skip-tokenizer-init", "--seed", "0"]  # no tokenizer here
        with VllmServer(
            settings["command"], arguments, Path(folder) / "server.log", env=settings["env"]
        ) as server:
            out["start_up_s"] = round(server.startup_s, 1)
            local = threading.local()

            def complete(item) -> int:
                number, (ids, length) = item
                if getattr(local, "connection", None) is None:
                    local.connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=3600)
                # sampled as a job samples: a seed of its own per request (vLLM samples seeded
                # requests one by one, which costs), temperature, top-p, top-k off
                body = {
                    "model": "model",
                    "prompt": ids,
                    "max_tokens": length,
                    "min_tokens": length,
                    "ignore_eos": True,
                    "seed": number,
                    "temperature": 0.8,
                    "top_p": 0.95,
                    "top_k": 0,
                    "return_token_ids": True,
                }
                headers = {"Content-Type": "application/json", "Authorization": f"Bearer {server.api_key}"}
                local.connection.request("POST", "/v1/completions", body=json.dumps(body), headers=headers)
                response = local.connection.getresponse()
                text = response.read().decode("utf-8", "replace")
                if response.status != 200:
                    raise SystemExit(f"vLLM answered HTTP {response.status}: {' '.join(text.split())[:300]}")
                return len(json.loads(text)["choices"][0]["token_ids"])

            for side, prompts in prompts_by_side.items():
                started = time.perf_counter()
                with ThreadPoolExecutor(settings["requests_in_flight"]) as pool:
                    items = enumerate(zip(prompts, lengths_by_side[side], strict=True))
                    tokens = sum(pool.map(complete, items))
                out[side] = {"useful_tokens": tokens, "seconds": round(time.perf_counter() - started, 2)}
    return out


def compare_engines(args) -> None:
    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit(
            "no CUDA device: run this on a GPU node, or use --tiny --device cpu to check it runs"
        )
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    bandwidth = measure_bandwidth(torch, args.device, gib=0.25 if args.tiny else 2.0)
    if args.device.startswith("cuda"):
        torch.cuda.empty_cache()
    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    config = model_config(args.tiny)
    scale = 0.05 if args.tiny else 1.0  # the smoke test keeps answers short
    lengths, prompts = {}, {}
    for number, (side, (median, cap)) in enumerate(WORKLOADS.items()):
        lengths[side] = draw_lengths(
            args.prompts, max(1, round(median * scale)), max(2, round(cap * scale)), number
        )
        prompts[side] = draw_prompts(args.prompts, config.vocab_size, 100 + number)
    summary: dict = {
        "device": device_name,
        "bandwidth_gb_s": round(bandwidth / 1e9, 1),
        "prompts": args.prompts,
        "useful_tokens": {side: sum(lengths[side]) for side in WORKLOADS},
    }
    # vLLM first, with the GPU to itself: on a GPU with little time left, its half is the one
    # that matters (the padded half of 2,000 prompts takes about half an hour on an H100)
    summary["vllm"] = vllm_run(args, config, prompts, lengths)
    config, model, weight_bytes, kv_bytes_per_token = build_model(torch, args)
    with torch.inference_mode():  # warm-up, not timed
        model.generate(input_ids=torch.tensor([prompts["rejected"][0]], device=args.device), max_new_tokens=2)
    # the weights are drawn in memory here, so a job's load from disk is not measured: assumed
    summary["padded"] = {"start_up_s": None}
    for side in WORKLOADS:
        run = padded_run(
            torch, model, prompts[side], lengths[side], args.padded_batch, args.device, config.eos_token_id
        )
        summary["padded"][side] = run

    def bound(batch: int, side: str) -> float:
        context = sum(map(len, prompts[side])) / args.prompts + sum(lengths[side]) / args.prompts / 2
        return batch / ((weight_bytes + batch * context * kv_bytes_per_token) / bandwidth)

    for engine, batch in (("padded", args.padded_batch), ("vllm", 256 if not args.tiny else 64)):
        if "not_run" in summary[engine]:
            print(f"{engine}: not run: {summary[engine]['not_run']}")
            continue
        hours = {}
        for side in WORKLOADS:
            run = summary[engine][side]
            speed = run["useful_tokens"] / run["seconds"]
            run["tokens_per_s"] = round(speed, 1)
            run["fraction_of_bound"] = round(speed / bound(batch, side), 3)
            mean = sum(lengths[side]) / args.prompts
            hours[side] = REAL_RUN_QUESTIONS * mean / speed / 3600
            share = 100 * run["fraction_of_bound"]
            print(
                f"{engine} {side}: {speed:.1f} useful new tokens/s ({share:.1f}% of the bound at batch "
                f"{batch}), {run['useful_tokens']} tokens in {run['seconds']} s"
            )
        start_up_s = summary[engine]["start_up_s"]
        measured = start_up_s is not None
        start_up_h = (start_up_s if measured else ASSUMED_LOAD_S) / 3600
        summary[engine]["projected_gpu_hours"] = {
            f"{shards}_shards": round(sum(hours.values()) + 2 * shards * start_up_h, 2) for shards in (20, 2)
        }
        said = start_up_s if measured else f"{ASSUMED_LOAD_S:.0f} (assumed)"
        print(
            f"{engine}: start-up {said} s; projected "
            f"GPU-hours for {REAL_RUN_QUESTIONS} questions, both models: "
            f"{summary[engine]['projected_gpu_hours']['20_shards']} with 20 shards, "
            f"{summary[engine]['projected_gpu_hours']['2_shards']} with 2"
        )
    print(json.dumps(summary))
    if args.out:
        with open(args.out, "w") as handle:
            json.dump(summary, handle, indent=2)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 32, 64, 128])
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--prompt-tokens", type=int, nargs=2, default=[60, 120], metavar=("MIN", "MAX"))
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tiny", action="store_true", help="a 2-layer model, to check the script runs")
    parser.add_argument("--out", help="also write the results as JSON here")
    parser.add_argument("--engines", action="store_true", help="padded vs vllm at realistic lengths")
    parser.add_argument("--prompts", type=int, default=2000, help="--engines: prompts per workload")
    parser.add_argument("--padded-batch", type=int, default=64, help="--engines: the padded engine's batch")
    parser.add_argument("--vllm-python", default=str(REPO / ".venv-vllm" / "bin" / "python"))
    args = parser.parse_args()
    if args.engines:
        return compare_engines(args)

    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit(
            "no CUDA device: run this on a GPU node, or use --tiny --device cpu to check it runs"
        )
    config, model, weight_bytes, kv_bytes_per_token = build_model(torch, args)
    bandwidth = measure_bandwidth(torch, args.device, gib=0.25 if args.tiny else 2.0)
    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    print(f"{device_name}: {weight_bytes / 1e9:.2f} GB of weights, copy bandwidth {bandwidth / 1e9:.0f} GB/s")

    generator = torch.Generator().manual_seed(1)
    results = []
    eos = config.eos_token_id
    for batch in args.batch_sizes:
        lengths = torch.randint(
            args.prompt_tokens[0], args.prompt_tokens[1] + 1, (batch,), generator=generator
        )
        width = int(lengths.max())
        ids = torch.randint(3, config.vocab_size, (batch, width), generator=generator)
        mask = torch.zeros(batch, width, dtype=torch.long)
        for row, length in enumerate(lengths.tolist()):
            ids[row, : width - length] = eos
            mask[row, width - length :] = 1
        ids, mask = ids.to(args.device), mask.to(args.device)
        kwargs = dict(
            max_new_tokens=args.new_tokens,
            min_new_tokens=args.new_tokens,
            do_sample=True,
            temperature=0.8,
            top_p=0.95,
            top_k=0,
            pad_token_id=eos,
            eos_token_id=eos,
        )
        with torch.inference_mode():
            model.generate(
                input_ids=ids, attention_mask=mask, **{**kwargs, "max_new_tokens": 4, "min_new_tokens": 4}
            )
            sync(torch, args.device)
            started = time.perf_counter()
            out = model.generate(input_ids=ids, attention_mask=mask, **kwargs)
            sync(torch, args.device)
        seconds = time.perf_counter() - started
        new_tokens = batch * (out.shape[1] - width)
        mean_context = float(lengths.float().mean()) + args.new_tokens / 2
        step_bytes = weight_bytes + batch * mean_context * kv_bytes_per_token
        bound = batch / (step_bytes / bandwidth)
        tokens_per_s = new_tokens / seconds
        results.append(
            {
                "batch": batch,
                "new_tokens": new_tokens,
                "seconds": round(seconds, 2),
                "tokens_per_s": round(tokens_per_s, 1),
                "bound_tokens_per_s": round(bound, 1),
                "fraction_of_bound": round(tokens_per_s / bound, 3),
            }
        )
        print(
            f"batch {batch:4d}: {tokens_per_s:9.1f} new tokens/s  "
            f"(bound {bound:9.1f}, {100 * tokens_per_s / bound:5.1f}%)  {seconds:.1f}s"
        )
        del out
        if args.device.startswith("cuda"):
            torch.cuda.empty_cache()
    summary = {
        "device": device_name,
        "bandwidth_gb_s": round(bandwidth / 1e9, 1),
        "weight_gb": round(weight_bytes / 1e9, 2),
        "results": results,
    }
    print(json.dumps(summary))
    if args.out:
        with open(args.out, "w") as handle:
            json.dump(summary, handle, indent=2)


if __name__ == "__main__":
    main()
