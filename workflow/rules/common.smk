"""Shared set-up: config validation, paths, shard names and input helpers."""

import hashlib
import json
import math
import os
import shlex
import subprocess
import sys

from snakemake.utils import validate

# The package's own modules that need only the standard library and PyYAML (which
# Snakemake has) are imported here: the config check, the preflight, the job plan.
sys.path.insert(0, os.path.join(workflow.basedir, "workflow"))
from meddpo.plan import (
    ANSWER_STORE_FOLDER,
    JUDGE_STORE_FOLDER,
    questions_per_shard,
    runtime_minutes,
)
from meddpo.settings import (
    ConfigError,
    check_config,
    demo_model_path,
    outside_output,
    read_config_file,
)
from meddpo.tiny_models import demo_model_paths


def _check_config():
    """A bad config stops the parse with the key, the value and the file, in one line."""
    cli_files = list(workflow.overwrite_configfiles or [])
    ordered = [f for f in workflow.configfiles if f not in cli_files] + cli_files
    try:
        check_config(config, {str(f): read_config_file(f) for f in ordered})
    except ConfigError as err:
        print(f"meddpo: {err}", file=sys.stderr)
        sys.exit(2)


_check_config()
validate(config, schema="../meddpo/config.schema.yaml")  # fills in the defaults

OUT = config["output"]["dir"].rstrip("/")
LOGS = f"{OUT}/logs"
BENCHMARKS = f"{OUT}/benchmarks"
# Answers as they are made, kept across failures and reruns (not a declared
# output, so Snakemake never deletes it); see workflow/meddpo/answer_store.py.
ANSWER_STORE = f"{OUT}/{ANSWER_STORE_FOLDER}"
# The judges' verdicts, kept the same way (keyed by the judge's settings, found by a hash
# of question and answer); apart from the answers, so each store holds one kind of row.
JUDGE_STORE = f"{OUT}/{JUDGE_STORE_FOLDER}"
SHARDS = [f"{index:03d}" for index in range(config["n_shards"])]
ALL_PAIRS = f"{OUT}/pairs/all_pairs.jsonl"
ALL_PAIRS_STATS = f"{OUT}/pairs/all_pairs.stats.json"
DATASET = f"{OUT}/dataset"
PAIRS_FILE = f"{DATASET}/stage2_med_pairs.jsonl"
# Every rule runs `python -m meddpo`. The package folder goes on PYTHONPATH so
# that this works both in the project's venv (where meddpo is installed) and in
# the conda environment of envs/meddpo.yaml (which holds only its dependencies).
PACKAGE_DIR = shlex.quote(os.path.join(workflow.basedir, "workflow"))
CONDA_ENV = "../../envs/meddpo.yaml"


wildcard_constraints:
    shard=r"\d{3}",


# Portable time limits (minutes) for the generation jobs, sized from the shard and
# grown with each retry (Slurm kills a job at its limit; the retry resumes from the
# answer store). The formula is meddpo.plan's, which the preflight prints too.
QUESTIONS_PER_SHARD = questions_per_shard(config)


def runtime(rule_name):
    return lambda wildcards, attempt: runtime_minutes(
        rule_name, QUESTIONS_PER_SHARD, attempt
    )


def local_source(source):
    """The source file as an input when it is a local copy (so edits rerun the rule)."""
    dataset = source["dataset"]
    return [dataset] if os.path.exists(dataset) else []


# The demo's tiny models: built by the tiny_models rule (workflow/rules/demo.smk) at these
# folders under OUT and nowhere else; the config check made every model key of a demo
# run name one of them.
DEMO_MODELS = demo_model_paths(OUT)


def tiny_model_input(model_settings):
    """The demo builds its own checkpoints; a real run reads them from disk or the hub."""
    if not config["demo"]["build_tiny_models"]:
        return []
    return [demo_model_path(config, model_settings["model"])]


def check_output_locations():
    """Stop the parse when any declared output, log or benchmark lands outside the project and OUT.

    Snakemake deletes a job's old outputs before it runs the job: a path that leads
    elsewhere (a config value, a link in the output folder) could remove someone's files.
    """
    paths = [
        (f"rule {rule.name}", str(path))
        for rule in workflow.rules
        for path in rule.products()
    ]
    problem = outside_output(paths, OUT, workflow.basedir)
    if problem:
        print(f"meddpo: {problem}", file=sys.stderr)
        sys.exit(2)


def _serves_vllm(model_settings):
    return model_settings is not None and model_settings["engine"] == "vllm"


def vllm_server_log(model_settings, log_path):
    """The vLLM server's log as a `log:` entry: declared only for a job of engine vllm.

    Other engines start no server and write no such file; declaring it anyway makes
    Snakemake warn that the log was not found.
    """
    return {"server": log_path} if _serves_vllm(model_settings) else {}


def server_log_option(model_settings):
    """The `--server-log` words of a job's command (engine vllm only), to go with vllm_server_log."""
    return " --server-log {log.server:q}" if _serves_vllm(model_settings) else ""


def generation_logs(side, model_settings):
    """The logs of a local-model generation job: its own, and the vLLM server's for engine vllm."""
    return dict(
        job=f"{LOGS}/{side}/shard-{{shard}}.log",
        **vllm_server_log(model_settings, f"{LOGS}/{side}/shard-{{shard}}.vllm.log"),
    )


def generation_shell(model_settings):
    """The command of a local-model generation job (rejected, chosen_local)."""
    return (
        "python -m meddpo generate --shard {input.shard:q} {params.options} --out {output:q}"
        + server_log_option(model_settings)
        + " 2> {log.job:q}"
    )


def generation_options(model_settings, system_prompt):
    """`meddpo generate` options: a local-model block of the config and the system prompt.

    The vllm block goes only to jobs of engine vllm, so a change to it reruns no
    transformers job.
    """
    vllm = {"vllm": config["vllm"]} if model_settings["engine"] == "vllm" else {}
    return cli_options(
        **model_settings, **vllm, system_prompt=system_prompt, store=ANSWER_STORE
    )


def judge_options(kind):
    """`meddpo judge` options of one judge kind: its config block (never the key), the store.

    The vllm block goes only to a judge of engine vllm; max_usd only to the API judge.
    """
    judge = config["judge"]
    model = judge_model(kind)
    options = {"kind": kind}
    if kind == "classifier":
        options.update(classifier=model, classifier_format=judge["classifier_format"])
    elif model is not None:
        options.update(backend="local", local=model)
    else:
        options.update(
            backend="gemini", gemini=judge["gemini"], max_usd=judge["max_usd"]
        )
    if model is not None and model["engine"] == "vllm":
        options["vllm"] = config["vllm"]
    # the job reads no config file: every setting it uses is in these options
    return cli_options(**options, store=JUDGE_STORE, base_config=None)


def judge_model(kind):
    """The local model block of one judge kind, or None for the Gemini rubric judge."""
    judge = config["judge"]
    if kind == "classifier":
        return judge["classifier"]
    return judge["local"] if judge["backend"] == "local" else None


# The judge rules (workflow/rules/judge.smk) share their command, outputs and logs.
def judge_shell(kind):
    return (
        "python -m meddpo judge --pairs {input.pairs:q} {params.options}"
        " --out {output.verdicts:q} --usage {output.usage:q}"
        + server_log_option(judge_model(kind))
        + " 2> {log.job:q}"
    )


def judge_rule_outputs(kind):
    return dict(
        verdicts=f"{OUT}/judge/{kind}/shard-{{shard}}.jsonl",
        usage=f"{OUT}/judge/{kind}/shard-{{shard}}.usage.json",
    )


def judge_rule_logs(kind):
    model = judge_model(kind)
    server = f"{LOGS}/judge/{kind}/shard-{{shard}}.vllm.log"
    return dict(
        job=f"{LOGS}/judge/{kind}/shard-{{shard}}.log",
        **vllm_server_log(model, server),
    )


def judge_files(suffix):
    """Every shard's file of every judge that runs (`jsonl` verdicts, `usage.json`); none without a judge."""
    return [
        f"{OUT}/judge/{kind}/shard-{shard}.{suffix}"
        for kind in config["judge"]["kinds"]
        for shard in SHARDS
    ]


def cli_options(**settings):
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


def chosen_extras(kind):
    """Per-shard side files of the Gemini teacher (failures, usage), none for a local teacher."""
    if config["teacher"]["backend"] != "gemini":
        return []
    return [f"{OUT}/chosen/shard-{{shard}}.{kind}"]


def dataset_outputs():
    """What the finalize rule writes, by the output options (each name written only here)."""
    outputs = {
        "pairs": PAIRS_FILE,
        "dropped": f"{DATASET}/stage2_med_pairs.dropped.jsonl",
        "stats": f"{DATASET}/stage2_med_pairs.stats.json",
        "report": f"{DATASET}/report.md",
        "card": f"{DATASET}/README.md",
        "plots": directory(f"{DATASET}/plots"),
    }
    if config["output"]["conversational"]:
        outputs["conversational"] = f"{DATASET}/stage2_med_pairs.conversational.jsonl"
    if config["output"]["parquet"]:
        outputs["parquet"] = f"{DATASET}/stage2_med_pairs.parquet"
    if config["output"]["test_fraction"] > 0:
        # one train/test assignment, in every format that is written
        outputs["train"] = f"{DATASET}/splits/train.jsonl"
        outputs["test"] = f"{DATASET}/splits/test.jsonl"
        for fmt, ext in (("conversational", "jsonl"), ("parquet", "parquet")):
            if config["output"][fmt]:
                for split in ("train", "test"):
                    outputs[f"{fmt}_{split}"] = f"{DATASET}/splits/{fmt}-{split}.{ext}"
    return outputs


def card_settings():
    """What the dataset card says about how the data was made (all from the config)."""
    teacher = config["teacher"][config["teacher"]["backend"]]
    sampling_keys = (
        "temperature",
        "top_p",
        "max_new_tokens",
        "max_output_tokens",
        "thinking_budget",
        "seed",
    )
    return json.dumps(
        {
            "prompts": config["prompts"],
            "source_name": config["source"]["name"],
            "source_dataset": config["source"]["dataset"],
            "demo": config["demo"]["build_tiny_models"],
            "selection": config["questions"]["selection"],
            "seed": config["questions"]["seed"],
            "chosen_sampling": {k: teacher[k] for k in sampling_keys if k in teacher},
            "rejected_sampling": {
                k: config["rejected"][k]
                for k in sampling_keys
                if k in config["rejected"]
            },
        },
        sort_keys=True,
    )


def workflow_commit():
    """The git commit of the workflow (with +dirty when the tree has changes), or 'unknown'."""
    try:
        commit = subprocess.run(
            ["git", "-C", workflow.basedir, "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            [
                "git",
                "-C",
                workflow.basedir,
                "status",
                "--porcelain",
                "--untracked-files=no",
            ],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        return f"{commit}+dirty" if dirty else commit
    except (OSError, subprocess.SubprocessError):
        return "unknown"


# A hash of the effective config (after layering and defaults), for provenance.
CONFIG_HASH = hashlib.sha256(
    json.dumps(config, sort_keys=True, default=str).encode()
).hexdigest()[:16]
# Provenance goes into the outputs, never into `params` or a rule's command: a commit,
# a README edit or another config file layout must not rerun the dataset. Every job
# gets it through the environment (the shell prefix, which Snakemake does not compare
# between runs); `meddpo finalize` reads MEDDPO_WORKFLOW_COMMIT and MEDDPO_CONFIG_SHA256.
# (shell.prefix is formatted like a shell command, hence the doubled braces)
# Jobs run `python` from the interpreter that runs Snakemake (so `.venv/bin/snakemake`
# works without activating the venv), unless a conda environment is in use.
from snakemake.settings.types import DeploymentMethod

USE_CONDA = DeploymentMethod.CONDA in workflow.deployment_settings.deployment_method
PYTHON_PATH = "" if USE_CONDA else shlex.quote(os.path.dirname(sys.executable)) + ":"
shell.prefix(
    (
        "set -euo pipefail; export PATH=%s$PATH PYTHONPATH=%s${{PYTHONPATH:+:$PYTHONPATH}}; "
        "export MEDDPO_WORKFLOW_COMMIT=%s MEDDPO_CONFIG_SHA256=%s; "
    )
    % tuple(
        word.replace("{", "{{").replace("}", "}}")
        for word in (
            PYTHON_PATH,
            PACKAGE_DIR,
            shlex.quote(workflow_commit()),
            CONFIG_HASH,
        )
    )
)


def slurm_account():
    """The account the cluster profile asks for (its default resources), else $SBATCH_ACCOUNT."""
    value = ""
    try:
        item = workflow.resource_settings.default_resources.get("slurm_account")
        # the unevaluated expression (its value can only be had inside a rule)
        value = str(getattr(item, "raw", None) or "") if item is not None else ""
    except Exception:  # noqa: BLE001 - the environment variable below is the fallback
        value = ""
    return os.path.expandvars(value.strip().strip("'\"")) or os.environ.get(
        "SBATCH_ACCOUNT"
    )


def run_preflight():
    """The preflight of a real run (dry runs never get here): stop before any job on an error."""
    from meddpo.preflight import preflight, report

    if str(workflow.exec_mode) != "default":
        return  # a job's own Snakemake process on a cluster node
    plugin = workflow.executor_plugin
    cluster = plugin.common_settings.non_local_exec
    slurm = cluster and "slurm" in str(getattr(plugin, "name", ""))
    try:  # the rules of the jobs this run will start: checks for other stages are skipped
        pending = {job.rule.name for job in workflow.dag.needrun_jobs()}
    except Exception:  # noqa: BLE001 - check everything when the DAG cannot say
        pending = None
    findings = preflight(
        config,
        cluster=cluster,
        slurm_account=slurm_account() if slurm else "not-needed",
        pending=pending,
    )
    if not report(config, findings):
        sys.exit(2)
