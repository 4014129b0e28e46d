"""``meddpo``: one sub-command per workflow step, so every rule can be run by hand.

    meddpo questions   build the Stage 2A question set
    meddpo shard       write one shard of it
    meddpo generate    answer a shard with a local transformers model
    meddpo pairs       join a shard's questions and answers into DPO rows
    meddpo merge       concatenate the pair shards into the final dataset
    meddpo tiny-models build the two tiny checkpoints of the offline demo

Errors in the user's input end the command with one line on stderr and exit
status 2; outputs are only ever written complete (temp file + rename).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from .jsonl import DataError, read_jsonl, write_json, write_jsonl

log = logging.getLogger("meddpo")


def _questions(args: argparse.Namespace) -> None:
    from .questions import build_questions

    started = time.perf_counter()
    rows, stats = build_questions(
        args.source,
        n=args.n,
        selection=args.selection,
        seed=args.seed,
        min_chars=args.min_chars,
        stratify=args.stratify,
        split=args.split,
        revision=args.revision,
        source_name=args.source_name,
    )
    write_jsonl(args.out, rows)
    stats["seconds"] = round(time.perf_counter() - started, 2)
    write_json(args.stats, stats)
    log.info(
        "read %d rows: %d empty, %d short, %d duplicates (%d exact) dropped; picked %d (%s) in %.1fs -> %s",
        stats["read"],
        stats["dropped_empty"],
        stats["dropped_short"],
        stats["dropped_duplicate"],
        stats["dropped_duplicate_exact"],
        stats["picked"],
        args.selection,
        stats["seconds"],
        args.out,
    )


def _shard(args: argparse.Namespace) -> None:
    from .shards import shard_rows

    rows = shard_rows(read_jsonl(args.questions, required=("id", "question")), args.n_shards, args.index)
    write_jsonl(args.out, rows)
    log.info("shard %d of %d: %d questions -> %s", args.index, args.n_shards, len(rows), args.out)


def _generate(args: argparse.Namespace) -> None:
    from .local_generation import LocalGenerator, ModelSpec, Sampling, answer_questions

    questions = read_jsonl(args.shard, required=("id", "question"))
    sampling = Sampling(
        max_new_tokens=args.max_new_tokens,
        min_new_tokens=args.min_new_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        seed=args.seed,
    )
    if not questions:
        write_jsonl(args.out, [])
        log.info("%s: empty shard, nothing to generate", args.shard)
        return
    _quiet_transformers()
    spec = ModelSpec(
        name=args.model,
        revision=args.revision,
        dtype=args.dtype,
        device=args.device,
        trust_remote_code=args.trust_remote_code,
    )
    generator = LocalGenerator(spec)
    rows = answer_questions(
        generator,
        questions,
        args.system_prompt,
        sampling,
        args.batch_size,
        max_batch_tokens=args.max_batch_tokens,
        engine=args.engine,
        store_root=args.store,
        store_part=args.out.stem,
        progress_every_s=args.progress_every,
    )
    write_jsonl(args.out, rows)
    stops = sum(row["finish_reason"] == "stop" for row in rows)
    log.info("wrote %d answers (%d stop, %d length) -> %s", len(rows), stops, len(rows) - stops, args.out)


def _gemini(args: argparse.Namespace) -> int | None:
    import asyncio

    from .gemini_teacher import (
        GeminiSettings,
        answer_with_gemini,
        estimate_cost,
        load_api_key,
        summarise_failures,
    )

    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("google_genai").setLevel(logging.WARNING)
    api_key = load_api_key(args.secrets_file)
    questions = read_jsonl(args.shard, required=("id", "question"))
    settings = GeminiSettings(
        model=args.model,
        temperature=args.temperature,
        max_output_tokens=args.max_output_tokens,
        thinking_budget=args.thinking_budget,
        concurrency=args.concurrency,
        requests_per_minute=args.requests_per_minute,
        max_attempts=args.max_attempts,
        initial_backoff_s=args.initial_backoff,
        max_backoff_s=args.max_backoff,
        timeout_s=args.timeout,
        base_url=args.base_url,
    )
    rows, failures, usage = asyncio.run(
        answer_with_gemini(
            questions,
            args.system_prompt,
            settings,
            api_key,
            store_root=args.store,
            store_part=args.out.stem,
            progress_every_s=args.progress_every,
        )
    )
    usage["estimated_cost_usd"] = estimate_cost(
        usage, {"input_per_million": args.input_price, "output_per_million": args.output_price}
    )
    usage.update(
        questions=len(questions),
        answered=len(rows),
        failed=len(failures),
        failure_reasons=summarise_failures(failures),
        model=args.model,
    )
    write_jsonl(args.failures, failures)
    write_json(args.usage, usage)
    log.info(
        "%d answered, %d failed %s; %d requests, tokens in/out/thinking %d/%d/%d, estimated $%.4f",
        len(rows),
        len(failures),
        usage["failure_reasons"],
        usage.get("requests", 0),
        usage.get("input_tokens", 0),
        usage.get("output_tokens", 0),
        usage.get("thinking_tokens", 0),
        usage["estimated_cost_usd"],
    )
    if questions and len(failures) / len(questions) > args.max_failed_fraction:
        print(
            f"meddpo gemini: error: {len(failures)} of {len(questions)} questions failed "
            f"({usage['failure_reasons']}), more than --max-failed-fraction {args.max_failed_fraction}; "
            f"see {args.failures}. Rerun to ask again for the failed ones only.",
            file=sys.stderr,
        )
        return 3
    write_jsonl(args.out, rows)
    return None


def _pairs(args: argparse.Namespace) -> None:
    from .pairs import ANSWER_FIELDS, build_pairs

    questions = read_jsonl(args.questions, required=("id", "question", "source", "category", "question_type"))
    rejected = read_jsonl(args.rejected, required=ANSWER_FIELDS)
    chosen = read_jsonl(args.chosen, required=ANSWER_FIELDS)
    failures = [row for path in args.chosen_failures for row in read_jsonl(path, required=("id", "reason"))]
    pairs, stats = build_pairs(questions, rejected, chosen, args.system_prompt, chosen_failures=failures)
    write_jsonl(args.out, pairs)
    write_json(args.stats, stats)
    log.info("%d questions -> %d pairs (%s) -> %s", stats["questions"], stats["pairs"], stats, args.out)


def _load_json(path: Path | None) -> dict | None:
    import json

    if path is None:
        return None
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def _merge(args: argparse.Namespace) -> None:

    from .pairs import PAIR_FIELDS, merge_pair_shards

    if len(args.pairs) != len(args.shard_stats):
        raise DataError("merge: give one --shard-stats file per --pairs file")
    shards = [
        (read_jsonl(pairs_path, required=PAIR_FIELDS), _load_json(stats_path))
        for pairs_path, stats_path in zip(args.pairs, args.shard_stats, strict=True)
    ]
    usage = [_load_json(path) for path in args.usage]
    rows, stats = merge_pair_shards(shards, teacher_usage=usage)
    write_jsonl(args.out, rows)
    write_json(args.stats, stats)
    log.info(
        "merged %d shards: %d pairs, %d questions left out -> %s",
        stats["shards"],
        stats["pairs"],
        stats["questions"] - stats["pairs"],
        args.out,
    )


def _write_report(kept, dropped, stats: dict, out_dir: Path, stats_name: str, **render) -> None:
    """The plots, the stats JSON and report.md of a pairs file into ``out_dir``."""
    from .jsonl import atomic_open
    from .report import render_report, write_plots

    write_plots(kept, dropped, stats, out_dir / "plots")
    write_json(out_dir / stats_name, stats)
    with atomic_open(out_dir / "report.md") as handle:
        handle.write(render_report(stats, **render))


def _finalize(args: argparse.Namespace) -> None:
    import hashlib
    import json

    from .dataset_card import render_card
    from .jsonl import atomic_open
    from .quality import apply_policy
    from .report import build_stats, throughput_per_shard

    rows = read_jsonl(args.pairs)
    kept, dropped, quality_counts = apply_policy(
        rows,
        json.loads(args.policy),
        near_identical_threshold=args.near_identical_threshold,
        min_plain_share=args.min_plain_share,
    )
    question_stats, pair_stats = _load_json(args.question_stats), _load_json(args.pair_stats)
    settings = json.loads(args.settings)
    throughput = throughput_per_shard(
        {"rejected": args.rejected_benchmarks, "chosen": args.chosen_benchmarks},
        {"rejected": args.rejected_answers, "chosen": args.chosen_answers},
    )
    every = kept + dropped
    first_meta = every[0]["meta"] if every else {}
    provenance = {
        "workflow_commit": args.workflow_commit,
        "config_sha256": args.config_hash,
        "source": (question_stats or {}).get("source_location"),
        "source_fingerprint": (question_stats or {}).get("source_fingerprint"),
        "teacher_model": first_meta.get("teacher_model"),
        "teacher_revision": first_meta.get("teacher_revision"),
        "mmt_revision": first_meta.get("mmt_revision"),
        "mmt_ckpt": first_meta.get("mmt_ckpt"),
    }
    stats = build_stats(
        kept,
        dropped,
        question_stats=question_stats,
        pair_stats=pair_stats,
        quality_counts=quality_counts,
        throughput=throughput,
        provenance=provenance,
    )
    out = args.out_dir
    write_jsonl(out / "stage2_med_pairs.jsonl", kept)
    write_jsonl(out / "stage2_med_pairs.dropped.jsonl", dropped)
    data_files = {"train": "stage2_med_pairs.jsonl"}
    if args.test_fraction > 0:

        def in_test(row):
            digest = hashlib.sha256(row["id"].encode("utf-8")).digest()
            return int.from_bytes(digest[:8], "big") / 2**64 < args.test_fraction

        write_jsonl(out / "splits" / "train.jsonl", [r for r in kept if not in_test(r)])
        write_jsonl(out / "splits" / "test.jsonl", [r for r in kept if in_test(r)])
        data_files = {"train": "splits/train.jsonl", "test": "splits/test.jsonl"}
    extra_configs = []
    if args.conversational:
        write_jsonl(
            out / "stage2_med_pairs.conversational.jsonl",
            [
                {
                    "id": r["id"],
                    "prompt": [
                        {"role": "system", "content": settings["prompts"]["training"]},
                        {"role": "user", "content": r["question"]},
                    ],
                    "chosen": [{"role": "assistant", "content": r["chosen"]}],
                    "rejected": [{"role": "assistant", "content": r["rejected"]}],
                }
                for r in kept
            ],
        )
        extra_configs.append(
            {
                "config_name": "conversational",
                "data_files": [{"split": "train", "path": "stage2_med_pairs.conversational.jsonl"}],
            }
        )
    if args.parquet:
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.Table.from_pylist([{**r, "meta": json.dumps(r["meta"], ensure_ascii=False)} for r in kept])
        with atomic_open(out / "stage2_med_pairs.parquet", "wb") as handle:
            pq.write_table(table, handle)
    stats["quality_settings"] = {
        "near_identical_threshold": args.near_identical_threshold,
        "min_plain_share": args.min_plain_share,
    }
    _write_report(kept, dropped, stats, out, "stage2_med_pairs.stats.json")
    with atomic_open(out / "README.md") as handle:
        handle.write(
            render_card(
                n_rows=len(kept),
                data_files=data_files,
                stats=stats,
                settings=settings,
                provenance=provenance,
                extra_configs=extra_configs,
            )
        )
    log.info(
        "%d pairs: %d kept, %d dropped %s -> %s",
        len(every),
        len(kept),
        len(dropped),
        stats["dropped_by_reason"],
        out,
    )


def _report(args: argparse.Namespace) -> None:
    import json

    from .quality import FLAGS, apply_policy
    from .report import build_stats

    rows = read_jsonl(args.pairs)
    kept, dropped, quality_counts = apply_policy(rows, {flag: "flag" for flag in FLAGS})
    stats = build_stats(kept, dropped, quality_counts=quality_counts, provenance={"file": str(args.pairs)})
    _write_report(kept, dropped, stats, args.out_dir, "stats.json", title=args.pairs.name)
    print(
        json.dumps(
            {
                "pairs": len(rows),
                "truncated": stats["truncation"],
                "length_ratio_chosen_to_rejected": stats["lengths"]["ratio_of_medians_chars"],
                "report": str(args.out_dir / "report.md"),
            }
        )
    )


def _validate(args: argparse.Namespace) -> int | None:
    from .jsonl import atomic_open
    from .validate import validate_pairs

    rows, problems = validate_pairs(args.pairs, legacy=args.legacy)
    if problems:
        print(f"{args.pairs}: {len(problems)} problem(s) in {rows} rows:", file=sys.stderr)
        for text in problems:
            print(f"  {text}", file=sys.stderr)
        return 1
    message = f"{args.pairs}: OK, {rows} rows"
    print(message)
    if args.out:
        with atomic_open(args.out) as handle:
            handle.write(message + "\n")
    return None


def _tiny_models(args: argparse.Namespace) -> None:
    from .tiny_models import build_tiny_mistral, build_tiny_qwen2

    _quiet_transformers()
    rows = read_jsonl(args.texts, required=("question",))
    texts = [row["question"] for row in rows] + [row.get("answer") or "" for row in rows]
    texts = [text for text in texts if text.strip()]
    build_tiny_mistral(texts, args.mistral_out, seed=args.seed, eos_rate=args.mistral_eos_rate)
    build_tiny_qwen2(texts, args.qwen_out, seed=args.seed, eos_rate=args.qwen_eos_rate)
    log.info("built tiny checkpoints %s and %s", args.mistral_out, args.qwen_out)


def _quiet_transformers() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def _nullable_int(text: str) -> int | None:
    return None if text.lower() in {"all", "none", "null"} else int(text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="meddpo", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("questions", help="build the Stage 2A question set")
    p.add_argument("--source", required=True, help="hub id (lavita/MedQuAD) or local .parquet/.jsonl/.csv")
    p.add_argument("--source-name", help="value of the 'source' column (default: --source)")
    p.add_argument("--split", default="train")
    p.add_argument("--revision", default=None, help="hub revision of the dataset")
    p.add_argument("--n", type=_nullable_int, required=True, help="number of questions, or 'all'")
    p.add_argument("--selection", choices=("first", "random", "stratified"), default="first")
    p.add_argument("--stratify", choices=("proportional", "equal"), default="proportional")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--min-chars", type=int, default=10)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--stats", required=True, type=Path)
    p.set_defaults(func=_questions)

    p = sub.add_parser("shard", help="write shard INDEX of N-SHARDS")
    p.add_argument("--questions", required=True, type=Path)
    p.add_argument("--n-shards", required=True, type=int)
    p.add_argument("--index", required=True, type=int)
    p.add_argument("--out", required=True, type=Path)
    p.set_defaults(func=_shard)

    p = sub.add_parser("generate", help="answer a shard with a local transformers model")
    p.add_argument("--shard", required=True, type=Path)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--model", required=True, help="hub id or local checkpoint directory")
    p.add_argument("--revision", default=None)
    p.add_argument("--dtype", default="auto", choices=("auto", "bfloat16", "float16", "float32"))
    p.add_argument("--device", default="auto")
    p.add_argument("--trust-remote-code", action="store_true")
    p.add_argument("--system-prompt", required=True)
    p.add_argument("--max-new-tokens", type=int, required=True)
    p.add_argument("--min-new-tokens", type=int, default=0)
    p.add_argument("--temperature", type=float, required=True)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=16, help="prompts per generate() call at most")
    p.add_argument(
        "--max-batch-tokens",
        type=int,
        default=None,
        help="padded tokens (prompts x (longest prompt + max new tokens)) per batch at most",
    )
    p.add_argument("--engine", choices=("padded", "continuous"), default="padded")
    p.add_argument(
        "--store",
        type=Path,
        default=None,
        help="answer store folder: reuse answers made before, keep new ones as they are made",
    )
    p.add_argument("--progress-every", type=float, default=30.0, help="seconds between progress lines")
    p.set_defaults(func=_generate)

    p = sub.add_parser(
        "gemini", help="answer a shard with Gemini (key from GEMINI_API_KEY or --secrets-file)"
    )
    p.add_argument("--shard", required=True, type=Path)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument(
        "--failures", required=True, type=Path, help="JSONL of {id, reason, attempts} per failed question"
    )
    p.add_argument("--usage", required=True, type=Path, help="JSON with requests, tokens and estimated cost")
    p.add_argument("--model", default="gemini-2.5-flash")
    p.add_argument("--system-prompt", required=True)
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--max-output-tokens", type=int, default=4096)
    p.add_argument("--thinking-budget", type=int, default=None)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--requests-per-minute", type=float, default=900.0)
    p.add_argument("--max-attempts", type=int, default=6)
    p.add_argument("--initial-backoff", type=float, default=2.0)
    p.add_argument("--max-backoff", type=float, default=60.0)
    p.add_argument("--timeout", type=float, default=120.0, help="seconds per request")
    p.add_argument(
        "--base-url", default=None, help="API endpoint (default: the SDK's, or GOOGLE_GEMINI_BASE_URL)"
    )
    p.add_argument("--secrets-file", type=Path, default=None)
    p.add_argument("--input-price", type=float, default=0.0, help="USD per million input tokens")
    p.add_argument("--output-price", type=float, default=0.0, help="USD per million output + thinking tokens")
    p.add_argument("--max-failed-fraction", type=float, default=0.02)
    p.add_argument("--store", type=Path, default=None)
    p.add_argument("--progress-every", type=float, default=30.0)
    p.set_defaults(func=_gemini)

    p = sub.add_parser("pairs", help="join one shard's questions and answers into DPO rows")
    p.add_argument("--questions", required=True, type=Path)
    p.add_argument("--rejected", required=True, type=Path)
    p.add_argument("--chosen", required=True, type=Path)
    p.add_argument(
        "--chosen-failures",
        nargs="*",
        default=[],
        type=Path,
        help="the teacher's failures files: their reasons are counted in the stats",
    )
    p.add_argument("--system-prompt", required=True, help="the training system prompt of the 'prompt' column")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--stats", required=True, type=Path)
    p.set_defaults(func=_pairs)

    p = sub.add_parser("merge", help="merge pair shards into the final dataset")
    p.add_argument("--pairs", nargs="+", required=True, type=Path)
    p.add_argument("--shard-stats", nargs="+", required=True, type=Path)
    p.add_argument("--usage", nargs="*", default=[], type=Path, help="Gemini usage files to add up")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--stats", required=True, type=Path)
    p.set_defaults(func=_merge)

    p = sub.add_parser(
        "finalize", help="flag and filter the pairs; write the dataset, stats, report and card"
    )
    p.add_argument("--pairs", required=True, type=Path, help="all pairs of the run (merge output)")
    p.add_argument("--pair-stats", type=Path)
    p.add_argument("--question-stats", type=Path)
    p.add_argument("--rejected-answers", nargs="*", default=[], type=Path)
    p.add_argument("--chosen-answers", nargs="*", default=[], type=Path)
    p.add_argument("--rejected-benchmarks", nargs="*", default=[], type=Path)
    p.add_argument("--chosen-benchmarks", nargs="*", default=[], type=Path)
    p.add_argument(
        "--policy", default="{}", help="JSON {flag: keep|flag|drop}; unnamed flags take the defaults"
    )
    p.add_argument("--near-identical-threshold", type=float, default=0.9)
    p.add_argument("--min-plain-share", type=float, default=0.9)
    p.add_argument(
        "--settings",
        default="{}",
        help="JSON: prompts, source_name, selection, seed, sampling (for the card)",
    )
    p.add_argument("--workflow-commit", default="unknown")
    p.add_argument("--config-hash", default="unknown")
    p.add_argument("--conversational", action="store_true", help="also write TRL's conversational layout")
    p.add_argument("--parquet", action="store_true", help="also write Parquet (meta as a JSON string)")
    p.add_argument(
        "--test-fraction", type=float, default=0.0, help="also write a deterministic train/test split"
    )
    p.add_argument("--out-dir", required=True, type=Path)
    p.set_defaults(func=_finalize)

    p = sub.add_parser("report", help="stats, plots and a report of any pairs file (older layouts too)")
    p.add_argument("--pairs", required=True, type=Path)
    p.add_argument("--out-dir", required=True, type=Path)
    p.set_defaults(func=_report)

    p = sub.add_parser("validate", help="check a pairs file; exit 1 with a list of problems")
    p.add_argument("pairs", type=Path)
    p.add_argument(
        "--legacy", action="store_true", help="the older layout: meta with only the two model names"
    )
    p.add_argument("--out", type=Path, help="write the OK line here when the file passes")
    p.set_defaults(func=_validate)

    p = sub.add_parser("tiny-models", help="build the demo's tiny Mistral and Qwen2 checkpoints")
    p.add_argument(
        "--texts",
        required=True,
        type=Path,
        help="JSONL with 'question' (and 'answer') to train tokenizers on",
    )
    p.add_argument("--mistral-out", required=True, type=Path)
    p.add_argument("--qwen-out", required=True, type=Path)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--mistral-eos-rate", type=float, default=0.03)
    p.add_argument("--qwen-eos-rate", type=float, default=0.02)
    p.set_defaults(func=_tiny_models)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%Y-%m-%d %H:%M:%S",
        stream=sys.stderr,
    )
    from .chat_format import ChatTemplateError
    from .gemini_teacher import HardGeminiError, MissingKeyError

    try:
        return args.func(args) or 0
    except (DataError, ChatTemplateError, HardGeminiError, MissingKeyError) as err:
        print(f"meddpo {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
