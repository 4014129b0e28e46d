"""What the workflow's rules ask for, computed from the config: options, inputs and outputs.

Plain functions of the config dict (after defaults) that return strings, lists and
dicts, so the rules in workflow/rules/*.smk stay thin and this logic is unit-tested
(tests/unit/test_rule_options.py). Paths come from meddpo.planning.paths, which judge rules run
from meddpo.planning.plan.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import subprocess
from pathlib import Path
from typing import Any

from meddpo.backends import asks_gemini, judge_block, serves_vllm
from meddpo.config.settings import gemini_price
from meddpo.planning.checks import demo_model_path
from meddpo.planning.paths import run_paths, shard_number
from meddpo.planning.plan import batch_rules, demo_models_used, judge_rule, judge_rules, teacher_rule

# a wildcard of a path pattern, e.g. {shard}
WILDCARD = re.compile(r"(\{\w+\})")
# Set in every job's environment (shell_prefix): the job's command line gives every setting ...
WORKFLOW_JOB = "MEDDPO_WORKFLOW_JOB"
# ... and the Snakemake program and the options of the run that a command the job prints repeats
SNAKEMAKE, RERUN_OPTIONS = "MEDDPO_SNAKEMAKE", "MEDDPO_RERUN_OPTIONS"


def cli_options(**settings: Any) -> str:
    """`--key value` options for a meddpo sub-command, shell-quoted.

    A config key `batch_size` becomes `--batch-size`: the sub-commands name their
    options after the config keys, so a config block passes through unchanged.
    None becomes `none`, True a bare flag, False `--no-<key>`, a mapping JSON.
    Rules put the result in `params`, so a change to any of these settings makes
    Snakemake rerun the jobs that used them.
    """
    words = []
    for key, value in settings.items():
        flag = f"--{key.replace('_', '-')}"
        if value is True:
            words.append(flag)
        elif value is False:
            words.append(f"--no-{key.replace('_', '-')}")
        else:
            if value is None:
                value = "none"
            elif isinstance(value, (dict, list)):
                value = json.dumps(value, sort_keys=True)
            words.append(f"{flag} {shlex.quote(str(value))}")
    return " ".join(words)


def shard_numbers(config: dict[str, Any]) -> list[str]:
    """The shards of a run, fixed by the config: 000 .. n_shards-1."""
    return [shard_number(index) for index in range(config["n_shards"])]


def local_source(source: dict[str, Any]) -> list[str]:
    """The source file as an input when it is a local copy (so edits rerun the rule)."""
    dataset = source["dataset"]
    return [dataset] if os.path.exists(dataset) else []


def demo_model_input(config: dict[str, Any], model_settings: dict[str, Any]) -> list[str]:
    """A model the demo builds is an input of the jobs that load it; any other model is read from
    disk or the hub."""
    path = demo_model_path(config, model_settings["model"])
    return [path] if path else []


# ------------------------------------------------------------------ local-model generation


def vllm_server_log(model_settings: dict[str, Any] | None, log_path: str) -> list[str]:
    """The vLLM server's log, a rule's `log: server=` entry: ``[log_path]`` for a job of engine vllm.

    Other engines start no server and write no such file: for them the entry is empty
    (declaring the file anyway makes Snakemake warn that the log was not found).
    """
    return [log_path] if serves_vllm(model_settings) else []


def server_log_option(model_settings: dict[str, Any] | None, log_path: str) -> str:
    """` --server-log <log_path>` for a job of engine vllm (to go with vllm_server_log), else "".

    Part of the job's `params.options`, never of its command: the command stays one literal
    line for every engine, and a transformers job's params and command stay as they were.
    Snakemake fills in the wildcards of a params string ({shard}); the rest of the path is
    shell-quoted.
    """
    if not serves_vllm(model_settings):
        return ""
    parts = WILDCARD.split(log_path)
    return " --server-log " + "".join(p if WILDCARD.fullmatch(p) else shlex.quote(p) for p in parts if p)


def generation_options(
    config: dict[str, Any], side: str, model_settings: dict[str, Any], system_prompt: str
) -> str:
    """`meddpo generate` options: a local-model block of the config and the system prompt.

    The vllm block and the server's log (``side``'s) go only to jobs of engine vllm, so a
    change to them reruns no transformers job.
    """
    vllm = {"vllm": config["vllm"]} if serves_vllm(model_settings) else {}
    paths = run_paths(config)
    options = cli_options(**model_settings, **vllm, system_prompt=system_prompt, store=paths.answer_store)
    return options + server_log_option(model_settings, paths.shard_log(side, "vllm.log"))


def shard_benchmarks(config: dict[str, Any], side: str) -> list[str]:
    """Every shard job's benchmark of one side (``rejected``, ``chosen``), for the throughput table;
    none when the side's rule is one job for every shard (a Gemini teacher in batch mode)."""
    if side == "chosen" and teacher_rule(config) in batch_rules(config):
        return []
    paths = run_paths(config)
    return [paths.benchmark(side).replace("{shard}", shard) for shard in shard_numbers(config)]


def teacher_gemini_options(config: dict[str, Any]) -> str:
    """`meddpo gemini` options: the teacher.gemini block as it is (never the key itself: it stays out of
    command lines), the teacher's prompt, the store, and the gemini_prices entry it is billed by."""
    block = config["teacher"]["gemini"]
    return cli_options(
        **block,
        system_prompt=config["prompts"]["teacher"],
        store=run_paths(config).answer_store,
        price=gemini_price(config, block),
    )


def chosen_extras(config: dict[str, Any], kind: str) -> list[str]:
    """Per-shard side files of the Gemini teacher (failures, usage), none for a local teacher."""
    if not asks_gemini(config["teacher"]):
        return []
    return [run_paths(config).per_shard("chosen", kind)]


# ------------------------------------------------------------------ judges


def judge_local_model(config: dict[str, Any], kind: str) -> dict[str, Any] | None:
    """The local model block of one judge kind, or None for the Gemini rubric judge."""
    block = judge_block(config["judge"], kind)
    return None if block is None else config["judge"][block]


def judge_options(config: dict[str, Any], kind: str) -> str:
    """`meddpo judge` options of one judge kind: its config block (never the key), the store.

    The vllm block and the server's log go only to a judge of engine vllm; max_usd only to
    the API judge.
    """
    judge = config["judge"]
    model = judge_local_model(config, kind)
    options = {"kind": kind}
    if kind == "classifier":
        options.update(classifier=model, classifier_format=judge["classifier_format"])
    elif model is not None:
        options.update(backend="local", local=model)
    else:
        price = gemini_price(config, judge["gemini"])
        options.update(backend="gemini", gemini=judge["gemini"], max_usd=judge["max_usd"], price=price)
    if serves_vllm(model):
        options["vllm"] = config["vllm"]
    paths = run_paths(config)
    # the job reads no config file: every setting it uses is in these options
    options = cli_options(**options, store=paths.judge_store, base_config=None)
    return options + server_log_option(model, paths.shard_log(f"judge/{kind}", "vllm.log"))


def judged_kinds(config: dict[str, Any]) -> list[str]:
    """The judge kinds whose rules run (meddpo.planning.plan.judge_rules), in the config's order."""
    rules = judge_rules(config)
    return [kind for kind in config["judge"]["kinds"] if judge_rule(config, kind) in rules]


def judge_files(config: dict[str, Any], suffix: str) -> list[str]:
    """Every shard's file of every judge that runs (`jsonl` verdicts, `usage.json`); none without a judge."""
    paths = run_paths(config)
    return [
        paths.judge(kind, suffix, shard) for kind in judged_kinds(config) for shard in shard_numbers(config)
    ]


def judge_benchmarks(config: dict[str, Any]) -> list[str]:
    """Every shard job's benchmark file of every local-model judge (the dataset step adds up their hours)."""
    paths = run_paths(config)
    return [
        paths.benchmark(f"judge/{kind}").replace("{shard}", shard)
        for kind in judged_kinds(config)
        if judge_local_model(config, kind) is not None
        for shard in shard_numbers(config)
    ]


# ------------------------------------------------------------------ the dataset


def dataset_outputs(config: dict[str, Any]) -> dict[str, str]:
    """What the finalize rule writes, by the output options (each name written only here).

    ``plots`` is a folder (the rule declares it as one).
    """
    paths = run_paths(config)
    output = config["output"]
    names = ["pairs", "dropped", "stats", "report", "card", "plots"]
    names += [fmt for fmt in ("conversational", "parquet") if output[fmt]]
    outputs = {name: paths.dataset_file(name) for name in names}
    if output["test_fraction"] > 0:
        # one train/test assignment, in every format that is written
        outputs["train"] = paths.dataset_split("pairs", "train")
        outputs["test"] = paths.dataset_split("pairs", "test")
        for fmt in ("conversational", "parquet"):
            if output[fmt]:
                for split in ("train", "test"):
                    outputs[f"{fmt}_{split}"] = paths.dataset_split(fmt, split)
    return outputs


SAMPLING_KEYS = (
    "temperature",
    "top_p",
    "max_new_tokens",
    "min_new_tokens",
    "max_output_tokens",
    "thinking_budget",
    "seed",
)


def card_settings(config: dict[str, Any]) -> str:
    """What the dataset card says about how the data was made (all from the config)."""
    teacher = config["teacher"][config["teacher"]["backend"]]
    return json.dumps(
        {
            "prompts": config["prompts"],
            "source_name": config["source"]["name"],
            "source_dataset": config["source"]["dataset"],
            "demo": demo_models_used(config),
            "selection": config["questions"]["selection"],
            "seed": config["questions"]["seed"],
            "chosen_sampling": {k: teacher[k] for k in SAMPLING_KEYS if k in teacher},
            "rejected_sampling": {k: config["rejected"][k] for k in SAMPLING_KEYS if k in config["rejected"]},
        },
        sort_keys=True,
    )


def finalize_options(config: dict[str, Any]) -> str:
    """`meddpo finalize` settings: the quality filter, the judge margin, the split, the card."""
    return cli_options(
        **config["quality"],
        min_margin=config["judge"]["min_margin"],
        test_fraction=config["output"]["test_fraction"],
        settings=card_settings(config),
    )


def finalize_output_options(outputs: dict[str, Any]) -> str:
    """`meddpo finalize` --out-<name> options of the dataset's files."""
    return cli_options(**{f"out_{k}": v for k, v in outputs.items()})


# ------------------------------------------------------------------ provenance


def workflow_commit(folder: str) -> str:
    """The git commit of the workflow (with +dirty when the tree has changes), or 'unknown'."""
    try:
        commit = subprocess.run(
            ["git", "-C", folder, "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", folder, "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        return f"{commit}+dirty" if dirty else commit
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def config_hash(config: dict[str, Any]) -> str:
    """A hash of the effective config (after layering and defaults), for provenance."""
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]


def shell_prefix(
    python_dir: str, package_dir: str, commit: str, config_sha: str, rerun: tuple[str, str] = ("", "")
) -> str:
    """What every job's command starts with: strict bash, the interpreter, the package, provenance.

    Provenance goes into the outputs, never into `params` or a rule's command: a commit,
    a README edit or another config file layout must not rerun the dataset. Every job
    gets it through the environment (the shell prefix, which Snakemake does not compare
    between runs); `meddpo finalize` reads MEDDPO_WORKFLOW_COMMIT and MEDDPO_CONFIG_SHA256.
    WORKFLOW_JOB tells a `meddpo` step that its command line gives every setting, so it
    reads no config file (meddpo.cli.step_config); ``rerun`` is the Snakemake program and the
    options of this run that a command the job prints repeats (``rerun_options``: SNAKEMAKE and
    RERUN_OPTIONS).
    ``python_dir`` is the folder of the interpreter that runs Snakemake ("" when a conda
    environment is in use), put first on PATH. shell.prefix is formatted like a shell
    command, hence the doubled braces.
    """
    python_path = shlex.quote(python_dir) + ":" if python_dir else ""
    path, package, commit, sha, program, options = (
        word.replace("{", "{{").replace("}", "}}")
        for word in (
            python_path,
            shlex.quote(package_dir),
            shlex.quote(commit),
            config_sha,
            *map(shlex.quote, rerun),
        )
    )
    return (
        f"set -euo pipefail; export PATH={path}$PATH PYTHONPATH={package}${{{{PYTHONPATH:+:$PYTHONPATH}}}}; "
        f"export {WORKFLOW_JOB}=1 MEDDPO_WORKFLOW_COMMIT={commit} MEDDPO_CONFIG_SHA256={sha} "
        f"{SNAKEMAKE}={program} {RERUN_OPTIONS}={options}; "
    )


# the options of `snakemake` that a printed command repeats as the run was given them
_RUN_OPTIONS = ("--cores", "-c", "--jobs", "-j", "--profile", "--workflow-profile")


def rerun_options(
    argv: list[str], configfiles: list[str], command_config: dict[str, Any], workdir: str, executable: str
) -> tuple[str, str]:
    """What a `snakemake` command printed by a job repeats of the run that printed it: the program
    (``argv[0]``, the Snakemake that runs, so a venv need not be active; ``executable -m snakemake``
    when it ran as a module) and the options: the cores or jobs and the profile as ``argv`` gave
    them, the config files (relative to ``workdir`` when they are inside it) and the ``--config``
    values. Without them, a pasted command would read another config (another output folder, other
    models) or refuse to start (no --cores).
    """
    if Path(argv[0]).name == "snakemake":
        program = _inside(os.path.abspath(argv[0]), workdir)
        program = program if "/" in program else "./" + program
    else:
        program = f"{_inside(executable, workdir)} -m snakemake"
    words: list[str] = []
    for index, word in enumerate(argv[1:], start=1):
        name, equals, value = word.partition("=")
        if name in _RUN_OPTIONS and (equals or index + 1 < len(argv)):
            words += [name, value if equals else argv[index + 1]]
        elif word[:2] in ("-c", "-j") and word[2:].isdigit():  # -c4
            words.append(word)
    if configfiles:
        words += ["--configfile", *(_inside(str(path), workdir) for path in configfiles)]
    if command_config:
        words += ["--config", *(f"{key}={_config_text(value)}" for key, value in command_config.items())]
    return program, shlex.join(words)


def _inside(path: str, workdir: str) -> str:
    relative = os.path.relpath(path, workdir)
    return path if relative.startswith("..") else relative


def _config_text(value: Any) -> str:
    """A --config value as Snakemake reads it back (True, 3, 0.5, text; a mapping or list as YAML flow)."""
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    return str(value)


def interrupted_line(logfiles: list[str], workdir: str) -> str:
    """What Ctrl-C under Snakemake prints, instead of every running job's error report (its whole
    command with its prompts, and its log): Snakemake's report still goes to its own log file."""
    where = ", ".join(_inside(path, workdir) for path in logfiles)
    return (
        "meddpo: interrupted (Ctrl-C): the running jobs were stopped, and the answers and verdicts they "
        "finished are kept in the stores; run the same command again to go on"
        + (f" (Snakemake's full report: {where})" if where else "")
    )
