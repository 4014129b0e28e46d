"""Shared set-up: config validation, paths, shard names and input helpers."""

import hashlib
import json
import math
import os
import shlex
import subprocess

from snakemake.utils import validate

validate(config, schema="../meddpo/config.schema.yaml")

OUT = config["output"]["dir"].rstrip("/")
LOGS = f"{OUT}/logs"
BENCHMARKS = f"{OUT}/benchmarks"
# Answers as they are made, kept across failures and reruns (not a declared
# output, so Snakemake never deletes it); see workflow/meddpo/answer_store.py.
ANSWER_STORE = f"{OUT}/answer_store"
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
# answer store). Cluster names stay in profiles/.
QUESTIONS_PER_SHARD = math.ceil(
    (config["questions"]["n"] or 50000) / config["n_shards"]
)


def runtime_minutes(minutes_per_100_questions, start_up=15, cap=480):
    def runtime(wildcards, attempt):
        estimate = start_up + minutes_per_100_questions * QUESTIONS_PER_SHARD / 100
        return min(cap, math.ceil(estimate * attempt))

    return runtime


def local_source(source):
    """The source file as an input when it is a local copy (so edits rerun the rule)."""
    dataset = source["dataset"]
    return [dataset] if os.path.exists(dataset) else []


def tiny_model_input(model_settings):
    """The demo builds its own checkpoints; a real run reads them from disk or the hub."""
    return [model_settings["model"]] if config["demo"]["build_tiny_models"] else []


def generation_options(model_settings, system_prompt):
    """`meddpo generate` options: a local-model block of the config and the system prompt."""
    return cli_options(
        **model_settings, system_prompt=system_prompt, store=ANSWER_STORE
    )


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
shell.prefix(
    (
        "set -euo pipefail; export PYTHONPATH=%s${{PYTHONPATH:+:$PYTHONPATH}}; "
        "export MEDDPO_WORKFLOW_COMMIT=%s MEDDPO_CONFIG_SHA256=%s; "
    )
    % tuple(
        word.replace("{", "{{").replace("}", "}}")
        for word in (PACKAGE_DIR, shlex.quote(workflow_commit()), CONFIG_HASH)
    )
)
