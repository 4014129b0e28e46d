"""The workflow's only reads of Snakemake internals (workflow.*, the DAG, the executor).

Kept apart on purpose: these attributes are not Snakemake's public rule syntax and
change between Snakemake versions, so they live in this one file and nowhere else
(rule files and the meddpo package never touch them). Included first by the
Snakefile: it puts the package on sys.path and checks the config files before
common.smk validates the config.
"""

import os
import signal
import sys

from snakemake.settings.types import DeploymentMethod

# The package's own modules that need only the standard library and PyYAML (which
# Snakemake has) are imported by the rule files (the config check, the preflight,
# the job plan, the paths and the rules' targets), from here on.
WORKFLOW_DIR = workflow.basedir
sys.path.insert(0, os.path.join(WORKFLOW_DIR, "workflow"))
from meddpo.config.settings import COMMAND_LINE, ConfigError, read_config_file
from meddpo.planning.checks import check_config, outside_output
from meddpo.planning.rule_options import interrupted_line, rerun_options

# Jobs run `python` from the interpreter that runs Snakemake, unless a conda environment is in use.
USE_CONDA = DeploymentMethod.CONDA in workflow.deployment_settings.deployment_method
# The config of the command line (--configfile files, --config): Snakemake puts its keys first,
# and common.smk keeps that order (meddpo.config.settings.in_schema_order).
COMMAND_LINE_CONFIG = workflow.config_settings.overwrite_config


def _check_config():
    """A bad config stops the parse with the key, the value and the file, in one line."""
    cli_files = list(workflow.overwrite_configfiles or [])
    ordered = [f for f in workflow.configfiles if f not in cli_files] + cli_files
    files = {str(f): read_config_file(f) for f in ordered}
    # --config values win over every file: named as the command line's, never as config.yaml's
    files[COMMAND_LINE] = dict(workflow.config_settings.config or {})
    try:
        check_config(config, files)
    except ConfigError as err:
        print(f"meddpo: {err}", file=sys.stderr)
        sys.exit(2)


_check_config()

# The Snakemake program and the options of this run that a `snakemake` command printed by a job
# repeats (the cut-shard hint of meddpo pairs): cores or jobs, profile, config files, --config values.
RERUN_OPTIONS = rerun_options(
    sys.argv,
    [str(path) for path in workflow.overwrite_configfiles or []],
    dict(workflow.config_settings.config or {}),
    os.getcwd(),
    sys.executable,
)


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
    problem = outside_output(paths, OUT, WORKFLOW_DIR)
    if problem:
        print(f"meddpo: {problem}", file=sys.stderr)
        sys.exit(2)


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
    from meddpo.preflight.run import estimate_run, preflight, record_estimate, report

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
    plan = estimate_run(config, cluster)
    if not report(config, findings, plan=plan):
        sys.exit(2)
    record_estimate(config, plan)  # the report sets it beside what the run took


# Before the first job of a real run (dry runs skip it): models, source, key, output
# folder, Slurm account and GPU are checked, and the cost is printed (meddpo.preflight.run).
onstart:
    run_preflight()


# Ctrl-C: one line. Snakemake still stops the running jobs and removes their half-made outputs,
# but each job's error report (its whole command, prompts included, and its log) goes to
# Snakemake's log file only, and the run ends with exit status 130.
INTERRUPTED = []


def on_ctrl_c(signum, frame):
    import logging

    if INTERRUPTED:
        return  # a second Ctrl-C: the jobs are stopping already
    INTERRUPTED.append(True)
    log = logging.getLogger("snakemake.logging")
    logfiles = [
        h.baseFilename for h in log.handlers if isinstance(h, logging.FileHandler)
    ]
    for handler in log.handlers:
        if not isinstance(handler, logging.FileHandler):
            handler.addFilter(lambda record: False)
    print(interrupted_line(logfiles, os.getcwd()), file=sys.stderr, flush=True)
    raise KeyboardInterrupt


signal.signal(signal.SIGINT, on_ctrl_c)


onerror:
    if INTERRUPTED:
        raise SystemExit(130)
