"""``meddpo``: one sub-command per workflow step, so every rule can be run by hand.

    meddpo questions    build the Stage 2A question set
    meddpo shard        write one shard of it
    meddpo generate     answer a shard with a local model (transformers or vLLM)
    meddpo gemini       answer a shard with Gemini
    meddpo pairs        join a shard's questions and answers into DPO rows
    meddpo merge        concatenate the pair shards
    meddpo finalize     flag and filter the pairs; write the dataset, stats, report and card
    meddpo report       stats, plots and a report of any pairs file
    meddpo validate     check a pairs file
    meddpo judge        grade both answers of every pair for medical safety (any pairs file)
    meddpo tiny-models  build the two tiny checkpoints of the offline demo

Options that are config settings carry the config key's name (``--batch-size``
for ``batch_size``, ``--timeout-s`` for ``timeout_s``) and its default from the
config schema, so a step run by hand does what the same step does in the
workflow; ``none`` stands for a null value. Errors in the user's input end the
command with one line on stderr and exit status 2; outputs are only ever
written complete (temp file + rename).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
from pathlib import Path

from . import settings as schema
from .jsonl import DataError, read_jsonl, write_json, write_jsonl
from .resume import PROGRESS_EVERY_S

log = logging.getLogger("meddpo")


# --------------------------------------------------------------------------- steps


def _questions(args: argparse.Namespace) -> None:
    from .questions import build_questions, summary_line

    rows, stats = build_questions(
        args.dataset,
        n=args.n,
        selection=args.selection,
        seed=args.seed,
        min_chars=args.min_chars,
        max_chars=args.max_chars,
        stratify=args.stratify,
        split=args.split,
        revision=args.revision,
        source_name=args.name,
    )
    write_jsonl(args.out, rows)
    write_json(args.stats, stats)
    log.info("%s -> %s", summary_line(stats), args.out)


def _shard(args: argparse.Namespace) -> None:
    from .shards import read_shard, shard_rows

    rows = shard_rows(read_shard(args.questions), args.n_shards, args.index)
    write_jsonl(args.out, rows)
    log.info("shard %d of %d: %d questions -> %s", args.index, args.n_shards, len(rows), args.out)


def _stop_on_errors(findings) -> None:
    """Log a preflight's warnings; its errors end the step in one line."""
    from .errors import UserError

    for finding in findings:
        if finding.level == "warning":
            log.warning("%s", finding.text)
    errors = [finding.text for finding in findings if finding.level == "error"]
    if errors:
        raise UserError("; ".join(errors))


def _generate(args: argparse.Namespace) -> None:
    from .engines import answer_shard
    from .preflight import generate_preflight
    from .shards import read_shard

    model = {key: getattr(args, key) for key in schema.section("local_model")["properties"]}
    tokens = schema.token_range_problem(model, prefix="--")
    if tokens:
        from .errors import UserError

        raise UserError(tokens.replace("_", "-"))
    questions = read_shard(args.shard)  # the shard's own errors first: they cost nothing to find
    # the checkpoint's weight headers and tokenizer, before the model loads
    _stop_on_errors(generate_preflight(model))
    rows = answer_shard(
        questions,
        model,
        system_prompt=args.system_prompt,
        device=args.device,
        store_root=args.store,
        store_part=args.out.stem,
        progress_every_s=args.progress_every,
        vllm=args.vllm,
        server_log=args.server_log,
    ).answers
    write_jsonl(args.out, rows)
    stops = sum(row["finish_reason"] == "stop" for row in rows)
    log.info("wrote %d answers (%d stop, %d length) -> %s", len(rows), stops, len(rows) - stops, args.out)


def _gemini(args: argparse.Namespace) -> int | None:
    import dataclasses

    from .engines import answer_gemini_shard
    from .gemini_client import GeminiSettings
    from .shards import read_shard

    settings = GeminiSettings(**{f.name: getattr(args, f.name) for f in dataclasses.fields(GeminiSettings)})
    result = answer_gemini_shard(
        read_shard(args.shard),
        args.system_prompt,
        settings,
        store_root=args.store,
        store_part=args.out.stem,
        progress_every_s=args.progress_every,
    )
    if result.problem:
        print(f"meddpo gemini: error: {result.problem}", file=sys.stderr)
        return 3
    write_jsonl(args.failures, result.left_out)
    write_json(args.usage, result.usage)
    write_jsonl(args.out, result.answers)
    return None


def _pairs(args: argparse.Namespace) -> None:
    from .pairs import ANSWER_FIELDS, QUESTION_FIELDS, build_pairs, check_complete
    from .shards import read_shard

    questions = read_shard(args.questions, required=QUESTION_FIELDS)
    rejected = read_jsonl(args.rejected, required=ANSWER_FIELDS)
    chosen = read_jsonl(args.chosen, required=ANSWER_FIELDS)
    failures = [row for path in args.chosen_failures for row in read_jsonl(path, required=("id", "reason"))]
    check_complete(questions, rejected, args.rejected)
    check_complete(questions, chosen, args.chosen, accounted=failures)
    pairs, stats = build_pairs(questions, rejected, chosen, args.system_prompt, chosen_failures=failures)
    write_jsonl(args.out, pairs)
    write_json(args.stats, stats)
    log.info("%d questions -> %d pairs (%s) -> %s", stats["questions"], stats["pairs"], stats, args.out)


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


def _merge(args: argparse.Namespace) -> None:
    from .pairs import PAIR_FIELDS, merge_pair_shards
    from .verdicts import VERDICT_FIELDS

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


def _finalize(args: argparse.Namespace) -> None:
    import dataclasses

    from .dataset import DatasetPaths, build_dataset
    from .stats import throughput_per_shard

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
    )


def _report(args: argparse.Namespace) -> None:
    from .quality import FLAGS, apply_policy
    from .report import write_report
    from .stats import build_stats
    from .validate import require_pairs_file

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


def _validate(args: argparse.Namespace) -> int | None:
    from .jsonl import atomic_open
    from .validate import check_against_questions, require_pairs_file, validate_pairs

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


def _judge(args: argparse.Namespace) -> int | None:
    from .judge import check_greedy, run_judge
    from .preflight import judge_preflight
    from .verdicts import attach, judge_summary, read_pairs

    config = _judge_config(args)
    check_greedy(args.kind, config)
    # the checks of the preflight, before a pair is read or a request is sent
    _stop_on_errors(judge_preflight(args.kind, config, pairs=args.pairs, store=args.store))
    pairs = read_pairs(args.pairs)  # every row checked before anything is sent
    verdicts, usage, problem = run_judge(
        pairs,
        args.kind,
        config,
        store_root=args.store,
        store_part=args.out.stem,
        device=args.device,
        vllm=args.vllm,
        server_log=args.server_log,
        progress_every_s=args.progress_every,
    )
    if problem:
        print(f"meddpo judge: error: {problem}", file=sys.stderr)
        return 3
    judged = attach(pairs, {str(args.out): verdicts})
    if args.judged_pairs:
        write_jsonl(args.judged_pairs, judged)
    if args.usage:
        write_json(args.usage, usage)
    write_jsonl(args.out, verdicts)
    summary = judge_summary(judged, config["min_margin"])
    if not pairs:  # a shard whose questions all went unanswered: its job has nothing to do
        log.info("no pairs in %s: nothing to judge", args.pairs)
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
    return None


def _judge_config(args: argparse.Namespace) -> dict:
    """The judge block: the config files' (schema defaults without them), then the options given.

    ``--local`` and ``--classifier`` replace their block; ``--gemini`` is laid over its block.
    """
    from .settings import fill_defaults, load_config

    default_missing = args.base_config == Path("config.yaml") and not args.base_config.exists()
    if args.base_config is None or (default_missing and not args.configfile):
        if args.base_config is not None:
            log.info("no config.yaml here: the judge settings are the schema's defaults and the options")
        judge = fill_defaults({"judge": {}})["judge"]
    else:
        judge = load_config(args.configfile, base=args.base_config)["judge"]
    for key in ("backend", "classifier_format", "max_usd", "min_margin", "local", "classifier"):
        if hasattr(args, key):
            judge[key] = getattr(args, key)
    if hasattr(args, "gemini"):
        judge["gemini"] = {**(judge.get("gemini") or {}), **args.gemini}
    return judge


def _tiny_models(args: argparse.Namespace) -> None:
    from .engine_types import quiet_transformers
    from .tiny_models import build_tiny_mistral, build_tiny_qwen2

    quiet_transformers()
    rows = read_jsonl(args.texts, required=("question",))
    texts = [row["question"] for row in rows] + [row.get("answer") or "" for row in rows]
    texts = [text for text in texts if text.strip()]
    build_tiny_mistral(texts, args.mistral_out, seed=args.seed, eos_rate=args.mistral_eos_rate)
    build_tiny_qwen2(texts, args.qwen_out, seed=args.seed, eos_rate=args.qwen_eos_rate)
    log.info("built tiny checkpoints %s and %s", args.mistral_out, args.qwen_out)


def _preflight(args: argparse.Namespace) -> int | None:
    from .preflight import preflight, report, slurm_account_from_profile
    from .settings import load_config

    config = load_config(args.configfile, base=args.base_config)
    executor = _profile_executor(args.profile) if args.profile is not None else None
    cluster = executor not in (None, "local")
    account = slurm_account_from_profile(args.profile) if executor == "slurm" else "not-needed"
    ok = report(config, preflight(config, cluster=cluster, slurm_account=account), stream=sys.stdout)
    return None if ok else 2


def _profile_executor(profile: Path) -> str | None:
    import yaml

    try:
        settings = yaml.safe_load((profile / "config.yaml").read_text(encoding="utf-8")) or {}
    except OSError as err:
        raise DataError(f"{profile}: not a Snakemake profile folder ({err.strerror})") from None
    return settings.get("executor")


def _status(args: argparse.Namespace) -> None:
    from .settings import load_config
    from .status import render, shard_status

    for line in render(shard_status(load_config(args.configfile, base=args.base_config))):
        print(line)


# --------------------------------------------------------------------------- options


def _integer(text: str) -> int:
    """An integer option; a whole number written as a float (YAML's ``1000.0``) is accepted too."""
    try:
        return int(text)
    except ValueError:
        try:
            number = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if not number.is_integer():
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        return int(number)


def _nullable(kind, words=("none", "null")):
    """An option type where ``none`` (or ``null``; for a count, ``all`` too) stands for None."""

    def parse(text: str):
        return None if text.lower() in words else kind(text)

    parse.__name__ = kind.__name__
    return parse


def _json_object(example: str = "{...}"):
    """An option type: a JSON object (``example`` shows one in the error)."""

    def parse(text: str) -> dict:
        try:
            value = json.loads(text)
        except json.JSONDecodeError as err:
            raise argparse.ArgumentTypeError(f"not JSON: {err.msg} at character {err.pos + 1}") from None
        if not isinstance(value, dict):
            raise argparse.ArgumentTypeError(f"expected a JSON object such as {example}")
        return value

    parse.__name__ = "JSON object"
    return parse


def _block(path: str):
    """An option type: the config block at ``path`` as JSON, checked against the schema."""

    def parse(text: str) -> dict:
        import jsonschema

        try:
            value = json.loads(text)
        except json.JSONDecodeError as err:
            raise argparse.ArgumentTypeError(f"not JSON: {err.msg}") from None
        node = schema.section(path)
        try:
            jsonschema.validate(value, {**node, "$defs": schema.schema()["$defs"]})
        except jsonschema.ValidationError as err:
            where = ".".join(str(part) for part in err.absolute_path) or "the block"
            raise argparse.ArgumentTypeError(f"{path} {where}: {err.message}") from None
        return value

    parse.__name__ = f"{path} block"
    return parse


_vllm_block = _block("vllm")


def _out_of_range(value, limits: dict) -> str | None:
    """What is wrong with ``value`` under the schema's range keywords ``limits``, or None."""
    if isinstance(value, float) and not math.isfinite(value):
        return "must be a finite number"  # nan and inf, which the config check refuses too
    rules = (
        ("minimum", lambda bound: value < bound, "must be at least"),
        ("exclusiveMinimum", lambda bound: value <= bound, "must be more than"),
        ("maximum", lambda bound: value > bound, "must be at most"),
        ("exclusiveMaximum", lambda bound: value >= bound, "must be less than"),
    )
    for word, broken, text in rules:
        if word in limits and isinstance(value, int | float) and broken(limits[word]):
            return f"{text} {limits[word]}"
    if "minLength" in limits and isinstance(value, str) and len(value) < limits["minLength"]:
        return "must not be empty" if limits["minLength"] == 1 else f"needs {limits['minLength']} characters"
    return None


def _within(kind, limits: dict):
    """An option type: ``kind``, then the schema's range for the setting (None, a null, passes)."""

    def parse(text: str):
        value = kind(text)
        problem = None if value is None else _out_of_range(value, limits)
        if problem:
            raise argparse.ArgumentTypeError(f"{problem}, got {text}" if text else problem)
        return value

    parse.__name__ = getattr(kind, "__name__", "value")
    return parse


# options that are not config settings: seconds between progress lines (0: every step)
_SECONDS = _within(float, {"minimum": 0})


def _setting(parser: argparse.ArgumentParser, path: str, *aliases: str, **kwargs) -> None:
    """An option for the config setting ``path``, named after its key.

    Its default, choices and range (minimum, maximum, ...) come from the schema,
    so a value the config check would refuse is refused here too, in one line.
    """
    key = path.rpartition(".")[2]
    node = schema.section(path.rpartition(".")[0])["properties"][key] if "." in path else {}
    if "enum" in node:
        kwargs.setdefault("choices", schema.choices(path))
    if not kwargs.get("required"):
        kwargs.setdefault("default", schema.default(path, None))
    limits = schema.bounds(path)
    if limits:
        kwargs["type"] = _within(kwargs.get("type", str), limits)
    if node.get("type") == "boolean":
        kwargs["action"] = argparse.BooleanOptionalAction
    parser.add_argument(f"--{key.replace('_', '-')}", *aliases, dest=key, **kwargs)


def _local_model_options(p: argparse.ArgumentParser) -> None:
    """The ``rejected`` / ``teacher.local`` block (``local_model`` in the schema)."""
    _setting(p, "local_model.model", required=True, help="hub id or local checkpoint directory")
    _setting(p, "local_model.revision", type=_nullable(str))
    _setting(p, "local_model.trust_remote_code")
    _setting(p, "local_model.dtype")
    _setting(p, "local_model.engine")
    _setting(p, "local_model.batch_size", type=_integer, help="prompts per generate() call at most")
    _setting(
        p,
        "local_model.max_batch_tokens",
        type=_nullable(_integer),
        help="padded tokens (prompts x (longest prompt + max new tokens)) per batch at most",
    )
    _setting(p, "local_model.max_new_tokens", type=_integer, required=True)
    _setting(p, "local_model.min_new_tokens", type=_integer)
    _setting(p, "local_model.temperature", type=float, required=True)
    _setting(p, "local_model.top_p", type=float)
    _setting(p, "local_model.seed", type=_integer)


def _gemini_options(p: argparse.ArgumentParser) -> None:
    """The ``teacher.gemini`` block; earlier flag names stay as aliases."""
    g = "teacher.gemini."
    _setting(p, g + "model")
    _setting(p, g + "temperature", type=float)
    _setting(p, g + "max_output_tokens", type=_integer)
    _setting(p, g + "thinking_budget", type=_nullable(_integer), help="none = the model's default")
    _setting(p, g + "concurrency", type=_integer)
    _setting(p, g + "requests_per_minute", type=float)
    _setting(p, g + "max_attempts", type=_integer)
    _setting(p, g + "initial_backoff_s", "--initial-backoff", type=float)
    _setting(p, g + "max_backoff_s", "--max-backoff", type=float)
    _setting(p, g + "timeout_s", "--timeout", type=float, help="seconds per request")
    _setting(p, g + "base_url", type=_nullable(str), help="API endpoint (none: the SDK's)")
    _setting(p, g + "secrets_file", type=_nullable(str), help="file with a GEMINI_API_KEY=... line")
    _setting(
        p, g + "price_input_per_million", "--input-price", type=float, help="USD per million input tokens"
    )
    _setting(
        p, g + "price_output_per_million", "--output-price", type=float, help="USD per million output tokens"
    )
    _setting(p, g + "max_failed_fraction", type=float)
    _setting(p, g + "ask_refused_again")
    _setting(p, g + "max_refused_fraction", type=float)
    _setting(p, g + "too_many_refusals")


def _finalize_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--pairs", required=True, type=Path, help="all pairs of the run (merge output)")
    p.add_argument("--pair-stats", type=Path)
    p.add_argument("--question-stats", type=Path)
    for role in ("rejected", "chosen"):
        p.add_argument(f"--{role}-answers", nargs="*", default=[], type=Path)
        p.add_argument(f"--{role}-benchmarks", nargs="*", default=[], type=Path)
    _setting(
        p,
        "quality.policy",
        type=_json_object('{"chosen_truncated": "flag"}'),
        help="JSON {flag: keep|flag|drop}; unnamed flags: the defaults",
    )
    _setting(p, "quality.near_identical_threshold", type=float)
    _setting(p, "quality.min_plain_share", type=float)
    _setting(p, "judge.min_margin", type=float, help="|judge margin| under this is a tie (judge_tie)")
    _setting(p, "output.test_fraction", type=float, help="> 0: also write a deterministic train/test split")
    p.add_argument(
        "--settings",
        type=_json_object(),
        default={},
        help="JSON: prompts, source, selection, sampling (for the card)",
    )
    # provenance comes through the environment in the workflow (never a rule's params)
    p.add_argument("--workflow-commit", default=os.environ.get("MEDDPO_WORKFLOW_COMMIT", "unknown"))
    p.add_argument("--config-hash", default=os.environ.get("MEDDPO_CONFIG_SHA256", "unknown"))
    for name in ("pairs", "dropped", "stats", "report", "card"):
        p.add_argument(f"--out-{name}", required=True, type=Path)
    p.add_argument("--out-plots", required=True, type=Path, help="folder for the report's plots")
    for fmt in ("", "conversational-", "parquet-"):
        for split in ("train", "test"):
            p.add_argument(
                f"--out-{fmt}{split}", type=Path, help="this split of this format (test_fraction > 0)"
            )
    for fmt in ("conversational", "parquet"):
        p.add_argument(
            f"--out-{fmt}", type=Path, help="every kept pair in this format; written only when given"
        )


def _add_questions(sub) -> None:
    p = sub.add_parser("questions", help="build the Stage 2A question set")
    _setting(p, "source.dataset", "--source", help="hub id (lavita/MedQuAD) or local .parquet/.jsonl/.csv")
    _setting(p, "source.name", "--source-name", help="value of the 'source' column")
    _setting(p, "source.split")
    _setting(p, "source.revision", type=_nullable(str), help="hub revision of the dataset")
    _setting(
        p,
        "questions.n",
        type=_nullable(_integer, ("none", "null", "all")),
        required=True,
        help="number of questions, or 'all'",
    )
    _setting(p, "questions.selection")
    _setting(p, "questions.stratify")
    _setting(p, "questions.seed", type=_integer)
    _setting(p, "questions.min_chars", type=_integer)
    _setting(
        p,
        "questions.max_chars",
        type=_nullable(_integer),
        help="longer questions are dropped (none: no limit)",
    )
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--stats", required=True, type=Path)
    p.set_defaults(func=_questions)


def _add_shard(sub) -> None:
    p = sub.add_parser("shard", help="write shard INDEX of N-SHARDS")
    p.add_argument("--questions", required=True, type=Path)
    _setting(p, "n_shards", required=True, type=_integer)
    p.add_argument("--index", required=True, type=_within(_integer, {"minimum": 0}), help="0 .. N-SHARDS - 1")
    p.add_argument("--out", required=True, type=Path)
    p.set_defaults(func=_shard)


def _add_generate(sub) -> None:
    p = sub.add_parser("generate", help="answer a shard with a local model (transformers, or a vLLM server)")
    p.add_argument("--shard", required=True, type=Path)
    p.add_argument("--out", required=True, type=Path)
    _local_model_options(p)
    p.add_argument("--device", default="auto", help="auto = cuda when available, else cpu")
    p.add_argument("--vllm", type=_vllm_block, default={}, help="engine vllm: the config's vllm block, JSON")
    p.add_argument("--server-log", type=Path, help="engine vllm: the server's log file")
    p.add_argument("--system-prompt", required=True)
    p.add_argument("--store", type=Path, help="answer store folder: reuse earlier answers, keep new ones")
    p.add_argument(
        "--progress-every", type=_SECONDS, default=PROGRESS_EVERY_S, help="seconds between progress lines"
    )
    p.set_defaults(func=_generate)


def _add_gemini(sub) -> None:
    p = sub.add_parser(
        "gemini", help="answer a shard with Gemini (key from GEMINI_API_KEY or --secrets-file)"
    )
    p.add_argument("--shard", required=True, type=Path)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--failures", required=True, type=Path, help="JSONL of {id, reason, attempts} per failure")
    p.add_argument("--usage", required=True, type=Path, help="JSON with requests, tokens and estimated cost")
    p.add_argument("--system-prompt", required=True)
    _gemini_options(p)
    p.add_argument("--store", type=Path)
    p.add_argument("--progress-every", type=_SECONDS, default=PROGRESS_EVERY_S)
    p.set_defaults(func=_gemini)


def _add_pairs(sub) -> None:
    p = sub.add_parser("pairs", help="join one shard's questions and answers into DPO rows")
    p.add_argument("--questions", required=True, type=Path)
    p.add_argument("--rejected", required=True, type=Path)
    p.add_argument("--chosen", required=True, type=Path)
    p.add_argument("--chosen-failures", nargs="*", default=[], type=Path, help="the teacher's failures files")
    p.add_argument("--system-prompt", required=True, help="the training system prompt of the 'prompt' column")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--stats", required=True, type=Path)
    p.set_defaults(func=_pairs)


def _add_merge(sub) -> None:
    p = sub.add_parser("merge", help="merge pair shards")
    p.add_argument("--pairs", nargs="+", required=True, type=Path)
    p.add_argument("--shard-stats", nargs="+", required=True, type=Path)
    p.add_argument("--usage", nargs="*", default=[], type=Path, help="Gemini usage files to add up")
    p.add_argument(
        "--verdicts", nargs="*", default=[], type=Path, help="the judges' verdict files (meddpo judge)"
    )
    p.add_argument("--judge-usage", nargs="*", default=[], type=Path, help="the judges' usage files")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--stats", required=True, type=Path)
    p.set_defaults(func=_merge)


def _add_finalize(sub) -> None:
    p = sub.add_parser(
        "finalize", help="flag and filter the pairs; write the dataset, stats, report and card"
    )
    _finalize_options(p)
    p.set_defaults(func=_finalize)


def _add_report(sub) -> None:
    p = sub.add_parser("report", help="stats, plots and a report of any pairs file (older layouts too)")
    p.add_argument("--pairs", required=True, type=Path)
    p.add_argument("--out-dir", required=True, type=Path)
    _setting(p, "judge.min_margin", type=float, help="with meta.judge: |margin| under this is a tie")
    p.set_defaults(func=_report)


def _add_validate(sub) -> None:
    p = sub.add_parser("validate", help="check a pairs file; exit 1 with a list of problems")
    p.add_argument("pairs", type=Path)
    p.add_argument(
        "--legacy", action="store_true", help="the older layout: meta with only the two model names"
    )
    p.add_argument("--out", type=Path, help="write the OK line here when the file passes")
    p.add_argument("--questions", type=Path, help="the question set: every question must be accounted for")
    p.add_argument("--dropped", type=Path, help="with --questions: the dropped pairs of the same run")
    p.add_argument(
        "--pair-stats", type=Path, help="with --questions: all_pairs.stats.json (questions left out)"
    )
    p.set_defaults(func=_validate)


def _add_judge(sub) -> None:
    p = sub.add_parser(
        "judge", help="grade both answers of every pair of a pairs file for medical safety (docs/judge.md)"
    )
    p.add_argument(
        "--pairs", required=True, type=Path, help="a pairs file (this run's, or any of the same layout)"
    )
    p.add_argument("--kind", required=True, choices=("classifier", "rubric"), help="which judge")
    p.add_argument("--out", required=True, type=Path, help="JSONL of verdicts, one row per pair")
    p.add_argument(
        "--usage", type=Path, help="JSON: requests, tokens and cost (Gemini), or answers and tokens"
    )
    p.add_argument("--judged-pairs", type=Path, help="also write the pairs with meta.judge here")
    # the judge block comes from the config files (config.yaml and --configfile, as the
    # workflow layers them); each option given replaces its setting
    p.add_argument(
        "--configfile", nargs="*", default=[], type=Path, help="config files layered over --base-config"
    )
    p.add_argument(
        "--base-config",
        type=_nullable(Path),
        default=Path("config.yaml"),
        help="the workflow's own config; none = the schema's defaults only",
    )
    unset = argparse.SUPPRESS
    _setting(p, "judge.backend", default=unset, help="the rubric judge's backend")
    p.add_argument("--local", type=_block("local_model"), default=unset, help="the judge.local block, JSON")
    p.add_argument(
        "--gemini", type=_block("judge.gemini"), default=unset, help="keys laid over judge.gemini, JSON"
    )
    p.add_argument(
        "--classifier", type=_block("local_model"), default=unset, help="the judge.classifier block"
    )
    _setting(p, "judge.classifier_format", default=unset)
    _setting(p, "judge.min_margin", type=float, default=unset, help="for the summary: |margin| under it: tie")
    _setting(
        p, "judge.max_usd", type=_nullable(float), default=unset, help="an API judge's cap (none: no cap)"
    )
    p.add_argument("--vllm", type=_vllm_block, default={}, help="engine vllm: the config's vllm block, JSON")
    p.add_argument("--server-log", type=Path, help="engine vllm: the server's log file")
    p.add_argument("--device", default="auto", help="auto = cuda when available, else cpu")
    p.add_argument("--store", type=Path, help="answer store folder: reuse earlier verdicts, keep new ones")
    p.add_argument(
        "--progress-every", type=_SECONDS, default=PROGRESS_EVERY_S, help="seconds between progress lines"
    )
    p.set_defaults(func=_judge)


def _add_tiny_models(sub) -> None:
    p = sub.add_parser("tiny-models", help="build the demo's tiny Mistral and Qwen2 checkpoints")
    p.add_argument("--texts", required=True, type=Path, help="JSONL with 'question' (and 'answer')")
    p.add_argument("--mistral-out", required=True, type=Path)
    p.add_argument("--qwen-out", required=True, type=Path)
    _setting(p, "demo.seed", type=_integer)
    _setting(p, "demo.mistral_eos_rate", type=float)
    _setting(p, "demo.qwen_eos_rate", type=float)
    p.set_defaults(func=_tiny_models)


def _add_preflight(sub) -> None:
    p = sub.add_parser(
        "preflight", help="check models, data, key, output and cluster settings; print the cost"
    )
    _config_files(p)
    p.add_argument(
        "--profile", type=Path, help="the Snakemake profile the run will use (e.g. profiles/bridges2)"
    )
    p.set_defaults(func=_preflight)


def _add_status(sub) -> None:
    p = sub.add_parser("status", help="answers in the store per model and shard, against the questions")
    _config_files(p)
    p.set_defaults(func=_status)


def _config_files(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--configfile",
        nargs="*",
        default=[],
        type=Path,
        help="config files layered over config.yaml, in order",
    )
    p.add_argument("--base-config", type=Path, default=Path("config.yaml"), help="the workflow's own config")


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        """A bad option is one line and exit status 2, like every other user error (--help shows usage)."""
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        sys.exit(2)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="meddpo", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    # no abbreviations: Snakemake's `--config` must not pass for `--configfile`
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    _add_questions(sub)
    _add_shard(sub)
    _add_generate(sub)
    _add_gemini(sub)
    _add_pairs(sub)
    _add_merge(sub)
    _add_finalize(sub)
    _add_report(sub)
    _add_validate(sub)
    _add_judge(sub)
    _add_tiny_models(sub)
    _add_preflight(sub)
    _add_status(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%Y-%m-%d %H:%M:%S",
        stream=sys.stderr,
    )
    from .errors import UserError

    try:
        return args.func(args) or 0
    except UserError as err:
        print(f"meddpo {args.command}: error: {err}", file=sys.stderr)
        return 2
    except FileNotFoundError as err:
        print(f"meddpo {args.command}: error: {err.filename}: no such file", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            f"meddpo {args.command}: interrupted; what was finished is kept (rerun to go on)", file=sys.stderr
        )
        return 130


if __name__ == "__main__":
    sys.exit(main())
