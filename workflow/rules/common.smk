"""Shared set-up: config validation, the run's paths and shards, the helpers the rules call.

The logic lives in the meddpo package, where it is unit-tested (tests/unit/test_rule_options.py):
meddpo.planning.paths (every output path pattern), meddpo.planning.rule_options (options, inputs and
outputs computed from the config), meddpo.planning.plan (which judge rules run, time limits).
Snakemake internals are read in internals.smk only.
"""

import os
import sys

from snakemake.utils import validate

from meddpo.planning.paths import run_paths
from meddpo.planning.checks import resolve_demo_models
from meddpo.planning.plan import (
    demo_rules,
    batch_rules,
    judge_rules,
    questions_per_shard,
    rule_runtime_minutes,
    teacher_rule,
)
from meddpo.config.settings import in_schema_order
from meddpo.planning.rule_options import (
    chosen_extras,
    demo_model_input,
    cli_options,
    config_hash,
    finalize_options,
    finalize_output_options,
    generation_options,
    judge_benchmarks,
    judge_files,
    judge_local_model,
    judge_options,
    local_source,
    shard_benchmarks,
    shard_numbers,
    shell_prefix,
    teacher_gemini_options,
    vllm_server_log,
    workflow_commit,
)
from meddpo.planning.rule_options import dataset_outputs as _dataset_outputs
from meddpo.planning.paths import demo_model_paths

validate(config, schema="../meddpo/config/config.schema.yaml")  # fills in the defaults
config.update(in_schema_order(config, COMMAND_LINE_CONFIG))  # options keep their order
# demo:<name> model keys -> that model's folder under output.dir
config.update(resolve_demo_models(config))

# Every file of the run (meddpo.planning.paths), under OUT (output.dir). The answer store and the
# judge store (PATHS.answer_store, PATHS.judge_store) keep answers and verdicts across
# failures and reruns: not declared outputs, so Snakemake never deletes them.
PATHS = run_paths(config)
OUT = PATHS.out
SHARDS = shard_numbers(config)
# The judge rules this config runs (workflow/rules/judge.smk defines only these).
JUDGE_RULES = judge_rules(config)
# The Gemini rules in batch mode: one job for every shard, waiting where Snakemake runs.
BATCH_RULES = batch_rules(config)
# Every rule runs `python -m meddpo`, from the environment of envs/meddpo.yaml when
# conda is in use (it holds only the package's dependencies: the shell prefix below
# puts the package folder on PYTHONPATH).
CONDA_ENV = "../../envs/meddpo.yaml"
# The models the demo builds (workflow/rules/demo.smk), by name: at these folders under OUT
# and nowhere else.
DEMO_MODELS = demo_model_paths(OUT)


wildcard_constraints:
    shard=r"\d{3}",


# Portable time limits (minutes) for the generation jobs, sized from the shard and
# grown with each retry (Slurm kills a job at its limit; the retry resumes from the
# answer store). The formula is meddpo.planning.plan's, which the preflight prints too.
QUESTIONS_PER_SHARD = questions_per_shard(config)


def runtime(rule_name):
    return lambda wildcards, attempt: rule_runtime_minutes(
        config, rule_name, QUESTIONS_PER_SHARD, attempt
    )


def dataset_outputs(**declared):
    """What the finalize rule writes (meddpo.planning.rule_options.dataset_outputs), in its order,
    with the entries the rule declares itself (report flags) in place of the plain paths.
    """
    outputs = _dataset_outputs(config)
    assert all(str(declared[name]) == outputs[name] for name in declared), declared
    return {**outputs, **declared}


# Provenance (commit, config hash) reaches the jobs through the environment, never
# their commands or params (meddpo.planning.rule_options.shell_prefix says why). Jobs run `python`
# from the interpreter that runs Snakemake (so `.venv/bin/snakemake` works without
# activating the venv), unless a conda environment is in use (USE_CONDA, internals.smk).
shell.prefix(
    shell_prefix(
        "" if USE_CONDA else os.path.dirname(sys.executable),
        os.path.join(WORKFLOW_DIR, "workflow"),
        workflow_commit(WORKFLOW_DIR),
        config_hash(config),
        RERUN_OPTIONS,
    )
)
