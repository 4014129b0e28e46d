"""Decode throughput of the padded engine for a Mistral-7B-architecture model on one GPU.

    python benchmarks/gpu_engine.py                    # H100: about 3-5 minutes
    python benchmarks/gpu_engine.py --tiny --device cpu --batch-sizes 1 4 --new-tokens 8   # smoke test

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
import time


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
    args = parser.parse_args()

    import torch
    from transformers import MistralConfig, MistralForCausalLM

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit(
            "no CUDA device: run this on a GPU node, or use --tiny --device cpu to check it runs"
        )
    shape = (
        dict(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
        )
        if args.tiny
        else {}
    )
    config = MistralConfig(sliding_window=None, **shape)  # defaults are Mistral-7B's shape
    dtype = torch.bfloat16 if args.device.startswith("cuda") else torch.float32
    torch.manual_seed(0)
    with torch.device(args.device):
        model = MistralForCausalLM._from_config(config, dtype=dtype, attn_implementation="sdpa").eval()
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    head_dim = config.hidden_size // config.num_attention_heads
    kv_bytes_per_token = 2 * config.num_hidden_layers * config.num_key_value_heads * head_dim * 2
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
