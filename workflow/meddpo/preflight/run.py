"""Preflight: everything a GPU job would find out late, checked in seconds before any job starts.

``meddpo preflight`` runs it by hand; the workflow runs it in Snakemake's
``onstart`` handler (real runs only: dry runs skip it) and stops before
submitting anything when it finds an error; ``meddpo judge`` runs the checks of
its own model, key, store and pairs file before it reads a pair. It checks what
the jobs will really read:

* each local model: a checkpoint folder with a config, a tokenizer with a chat
  template and weights whose headers parse (meddpo.generation.checkpoints: no weight is
  loaded), and a tokenizer that loads; a hub id is checked the same way in the
  Hugging Face cache, else it must be reachable on the hub (HF_ENDPOINT; a HEAD
  request with a short timeout). Offline (HF_HUB_OFFLINE, TRANSFORMERS_OFFLINE)
  an id not in the cache is an error that names the variable;
* the question source: a local file is read and cleaned as the questions step
  does (the plan counts it); a hub id must be cached when HF_DATASETS_OFFLINE or
  HF_HUB_OFFLINE is set, else reachable;
* the Gemini key is there when the Gemini teacher or judge is on, the API knows its model
  (``models.get``, free: a 404 is an error, an API that cannot be asked only a warning), and
  ``gemini_prices`` has the model's prices;
* the output folder, the answer store and the judge store are writable (a probe
  file written and removed; a missing folder is made) and there is room for the run;
* the Slurm account is set when a cluster executor is used;
* a GPU is visible when a model is to run on CUDA on this machine (a warning on
  a CPU-only machine, so the demo runs).

Each problem is one line that says what to do. It also prints what the run will
cost (meddpo.planning.plan). transformers (for the tokenizer) is loaded only when
a check needs it.

The checks themselves are in meddpo.preflight.machine (key, disk, folders,
Slurm, GPU, vLLM) and meddpo.preflight.hub (models and the question source); this
module decides which ones a run needs, and prints the estimate and the findings.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from meddpo.backends import judge_block
from meddpo.planning.checks import demo_model_path
from meddpo.planning.paths import ANSWER_STORE_FOLDER, JUDGE_STORE_FOLDER
from meddpo.planning.plan import (
    estimate,
    judge_rules,
    local_models,
    render_estimate,
)
from meddpo.preflight.hub import check_model, check_source
from meddpo.preflight.machine import (
    Finding,
    check_gemini,
    check_gpu,
    check_output,
    check_prices,
    check_readable,
    check_slurm,
    check_start_up,
    check_vllm,
    check_writable,
    needed_bytes,
    vllm_rules,
)

STORE_FOLDERS = {"answer store": ANSWER_STORE_FOLDER, "judge store": JUDGE_STORE_FOLDER}


def preflight(
    config: dict[str, Any],
    *,
    cluster: bool = False,
    slurm_account: str | None = None,
    pending: set[str] | None = None,
) -> list[Finding]:
    """Every problem found with this (validated, defaults filled) config.

    ``pending``: the rules of the jobs the run will start (None: all). A rerun
    that only redoes the dataset step needs no model, key or GPU, so those
    checks are skipped for it.
    """

    def needed(*rules: str) -> bool:
        return pending is None or any(rule in pending for rule in rules)

    findings: list[Finding] = []
    models = local_models(config)
    for rule, (key, model) in models.items():
        if needed(rule):  # a model the demo builds is checked once it is there
            findings += check_model(
                f"{key}.model", model, demo_model_path(config, model["model"]) is not None
            )
    if needed("questions"):
        findings += check_source(config["source"], config["questions"])
    if needed("chosen_gemini"):
        findings += check_gemini(config)
    if needed("judge_rubric_gemini") and "judge_rubric_gemini" in judge_rules(config):
        findings += check_gemini(config, "judge.gemini")
    if needed("chosen_gemini", "judge_rubric_gemini"):
        findings += check_prices(config)
    plan = estimate(config)
    if needed("shard"):
        findings += _empty_shards(plan, config["n_shards"])
    served = [rule for rule in vllm_rules(config) if needed(rule)]
    if served:
        findings += check_vllm(config)
    findings += check_start_up(plan, served, config["n_shards"])
    output = config["output"]["dir"]
    findings += check_output(output, needed_bytes(config, plan["questions"]))
    if not any(f.text.startswith("output.dir") for f in findings):
        stores = {"answer store": needed("rejected", "chosen_local", "chosen_gemini")}
        stores["judge store"] = bool(judge_rules(config)) and needed(*judge_rules(config))
        for what, wanted in stores.items():
            if wanted:
                findings += check_writable(what, Path(output) / STORE_FOLDERS[what])
    if cluster:
        findings += check_slurm(slurm_account)
    elif needed(*models):
        findings += check_gpu(config)
    return findings


def _empty_shards(plan: dict[str, Any], shards: int) -> list[Finding]:
    """questions.n null and a source with fewer questions than shards: some shards would be empty."""
    counted = plan.get("questions_counted")
    if not counted or plan["questions"] >= shards:
        return []
    n = plan["questions"]
    return [
        Finding(
            "error",
            f"n_shards {shards}: {counted['source']} has only {n} questions that survive cleaning "
            f"(questions.n is null: all), so {shards - n} shards would be empty, each still a job of every "
            f"model; set n_shards to {n} or fewer",
        )
    ]


def judge_preflight(
    kind: str, judge: dict[str, Any], *, pairs: str | Path, store: str | Path | None
) -> list[Finding]:
    """What ``meddpo judge`` checks before it reads a pair or sends a request.

    ``judge`` is the config's judge block; the model of ``kind`` (``judge.classifier``,
    or ``judge.local`` / the Gemini key for the rubric judge), the store and the pairs file.
    """
    findings = check_readable("pairs file", pairs)
    if store is not None:
        findings += check_writable("judge store", store)
    block = judge_block(judge, kind)
    if block is not None:
        findings += check_model(f"judge.{block}.model", judge[block])
    else:
        findings += check_gemini({"judge": judge}, "judge.gemini")
    return findings


def generate_preflight(model: dict[str, Any]) -> list[Finding]:
    """What ``meddpo generate`` checks before it loads its model: the checkpoint.

    The workflow's preflight has checked it before the run; a step run by hand, or a
    checkpoint changed since, gets the same one-line findings instead of a loader's
    traceback. (The answer store says itself, in one line, when it cannot be made.)
    """
    return check_model("--model", model)


def estimate_run(config: dict[str, Any], cluster: bool = False) -> dict[str, Any]:
    """The run's estimate (meddpo.planning.plan) with its work left, priced with what its stores measured."""
    from meddpo.planning.work_left import work_left
    from meddpo.preflight.measured import measure

    plan = estimate(config)
    plan["work_left"] = work_left(config, plan, measure(config, cluster))
    return plan


def record_estimate(config: dict[str, Any], plan: dict[str, Any]) -> None:
    """Keep the estimate made at the start of a run in its output folder: the report sets it beside
    what the run really took. Provenance: no job reads it as an input."""
    import time

    from meddpo.jsonl import write_json
    from meddpo.planning.paths import run_paths

    path = Path(run_paths(config).estimate)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(
        path, {**plan, "made": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "made_unix": round(time.time(), 3)}
    )


def report(
    config: dict[str, Any], findings: list[Finding], stream=sys.stderr, plan: dict[str, Any] | None = None
) -> bool:
    """Print the estimate and the findings; True when nothing stops the run."""
    from meddpo.planning.work_left import render_work_left

    plan = plan or estimate_run(config)
    for line in [*render_estimate(plan), *render_work_left(plan["work_left"])]:
        print(f"meddpo preflight: {line}", file=stream)
    for finding in findings:
        print(f"meddpo preflight: {finding}", file=stream)
    errors = sum(f.level == "error" for f in findings)
    if errors:
        print(f"meddpo preflight: {errors} problem(s): nothing was started", file=stream)
    else:  # the verdict comes last
        warnings = sum(f.level == "warning" for f in findings)
        print(f"meddpo preflight: {verdict(config, plan, warnings)}", file=stream)
    return not errors


def verdict(config: dict[str, Any], plan: dict[str, Any], warnings: int) -> str:
    """The preflight's last line when nothing stops the run: the run's size and cost at most."""
    from meddpo.backends import in_batch_mode

    cost = [f"{sum(plan['jobs'].values())} jobs in the whole run"]
    if plan["gpu_hours_at_most"]:
        cost.append(f"at most {sum(plan['gpu_hours_at_most'].values()):.1f} GPU-hours")
    dollars = []
    for key, block in (("gemini", config["teacher"]["gemini"]), ("judge", config["judge"]["gemini"])):
        if f"{key}_usd_at_most" in plan:
            dollars.append(plan[f"{key}_batch_usd_at_most" if in_batch_mode(block) else f"{key}_usd_at_most"])
    if dollars:
        known = None not in dollars
        cost.append(
            f"at most ${sum(dollars):.2f} of Gemini" if known else "Gemini dollars unknown (no price)"
        )
    said = f" ({warnings} warning{'s' if warnings > 1 else ''} above)" if warnings else ""
    return f"all checks passed{said}: " + ", ".join(cost)


def slurm_account_from_profile(profile: str | Path | None) -> str | None:
    """The account a profile asks for (its default-resources), with environment variables expanded."""
    if profile is None:
        return None
    import yaml

    settings = yaml.safe_load((Path(profile) / "config.yaml").read_text(encoding="utf-8")) or {}
    resources = settings.get("default-resources") or []
    if isinstance(resources, dict):
        resources = [f"{k}={v}" for k, v in resources.items()]
    for item in resources:
        key, _, value = str(item).partition("=")
        if key.strip() == "slurm_account":
            return os.path.expandvars(value.strip().strip("'\""))
    return None
