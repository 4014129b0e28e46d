"""Preflight: everything a GPU job would find out late, checked in seconds before any job starts.

``meddpo preflight`` runs it by hand; the workflow runs it in Snakemake's
``onstart`` handler (real runs only: dry runs skip it) and stops before
submitting anything when it finds an error. It checks that

* each local model resolves: a checkpoint folder with a config, a tokenizer with
  a chat template and weights, or a hub id already in the Hugging Face cache
  (when offline; online, a missing one is only a warning: every job would
  download it);
* the question source is readable (a local file, or a hub id when online);
* the Gemini key is there when the Gemini teacher is on;
* the output folder is writable and has room for the run;
* the Slurm account is set when a cluster executor is used;
* a GPU is visible when a model is to run on CUDA on this machine (a warning on
  a CPU-only machine, so the demo runs).

Each problem is one line that says what to do. It also prints what the run will
cost (meddpo.plan). Standard library only (and PyYAML): the Snakefile imports it.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .plan import estimate, judge_rules, local_models, render_estimate

WEIGHT_PATTERNS = ("*.safetensors", "pytorch_model*.bin", "model*.bin")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")
# bytes a question needs on disk, all copies included (store, shards, pairs, dataset), at the caps
BYTES_PER_ANSWER_TOKEN = 4 * 4


@dataclass(frozen=True)
class Finding:
    level: str  # "error" | "warning"
    text: str

    def __str__(self) -> str:
        return f"{self.level}: {self.text}"


def hub_cache() -> Path:
    """Where huggingface_hub keeps models (HF_HUB_CACHE, else HF_HOME/hub, else ~/.cache)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    home = Path(os.environ.get("HF_HOME") or Path.home() / ".cache" / "huggingface")
    return home / "hub"


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in {"1", "true", "yes", "on"}


def is_local_path(name: str) -> bool:
    """A folder, not a hub id (``org/name``)."""
    return os.path.exists(name) or name.startswith(("/", ".", "~")) or name.count("/") > 1


def cached_snapshot(repo_id: str, revision: str | None) -> Path | None:
    """The cached snapshot folder of a hub model, or None."""
    folder = hub_cache() / f"models--{repo_id.replace('/', '--')}"
    revision = revision or "main"
    ref = folder / "refs" / revision
    commit = ref.read_text().strip() if ref.is_file() else revision
    snapshot = folder / "snapshots" / commit
    return snapshot if snapshot.is_dir() else None


def _missing_parts(folder: Path) -> list[str]:
    missing = []
    if not (folder / "config.json").is_file():
        missing.append("config.json")
    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        missing.append("a tokenizer (tokenizer.json or tokenizer.model)")
    template = (folder / "chat_template.jinja").is_file()
    config_file = folder / "tokenizer_config.json"
    if not template and config_file.is_file():
        try:
            template = bool(json.loads(config_file.read_text(encoding="utf-8")).get("chat_template"))
        except (OSError, ValueError):
            template = False
    if not template:
        missing.append("a chat template")
    if not any(any(folder.glob(pattern)) for pattern in WEIGHT_PATTERNS):
        missing.append("weights (*.safetensors)")
    return missing


def check_model(key: str, settings: dict[str, Any], built_by_run: bool = False) -> list[Finding]:
    """One local model of the config (``key`` names it, e.g. ``rejected.model``)."""
    name = settings["model"]
    if built_by_run:
        return []
    if is_local_path(name):
        folder = Path(name).expanduser()
        if not folder.is_dir():
            return [
                Finding(
                    "error", f"{key} {name}: no such folder; point {key} at a checkpoint folder or a hub id"
                )
            ]
        missing = _missing_parts(folder)
        if missing:
            return [
                Finding(
                    "error", f"{key} {name}: the folder has no {', '.join(missing)}; is it a full checkpoint?"
                )
            ]
        return []
    snapshot = cached_snapshot(name, settings.get("revision"))
    if snapshot is not None:
        missing = _missing_parts(snapshot)
        if missing:
            return [
                Finding(
                    "error",
                    f"{key} {name}: the cached copy in {hub_cache()} has no {', '.join(missing)}; "
                    "download it "
                    f"again on a login node: hf download {name}",
                )
            ]
        return []
    advice = f"download it on a login node into HF_HOME first (hf download {name})"
    advice += f" or point {key} at a checkpoint folder"
    if offline():
        return [
            Finding(
                "error",
                f"{key} {name}: not in the Hugging Face cache {hub_cache()} and HF_HUB_OFFLINE is set; "
                + advice,
            )
        ]
    return [
        Finding(
            "warning",
            f"{key} {name}: not in the Hugging Face cache {hub_cache()}: every job would download it; "
            + advice,
        )
    ]


def check_source(source: dict[str, Any]) -> list[Finding]:
    dataset = source["dataset"]
    if os.path.exists(dataset):
        if not os.access(dataset, os.R_OK):
            return [Finding("error", f"source.dataset {dataset}: not readable")]
        return []
    if is_local_path(dataset) or Path(dataset).suffix.lower() in {".parquet", ".jsonl", ".json", ".csv"}:
        return [
            Finding("error", f"source.dataset {dataset}: no such file; point source.dataset at a local copy")
        ]
    if offline():
        return [
            Finding(
                "error",
                f"source.dataset {dataset}: a hub id, and HF_HUB_OFFLINE is set; "
                "copy the dataset to this machine "
                "and point source.dataset at the .parquet/.jsonl/.csv file",
            )
        ]
    return []


def check_gemini(config: dict[str, Any], block: str = "teacher.gemini") -> list[Finding]:
    """The Gemini key of the teacher's (or the judge's) block is there."""
    section, _, _ = block.partition(".")
    if config[section]["backend"] != "gemini":
        return []
    from .gemini_teacher import MissingKeyError, load_api_key

    try:
        load_api_key(config[section]["gemini"]["secrets_file"])
    except MissingKeyError as err:
        return [Finding("error", f"{block}: {err}")]
    return []


def needed_bytes(config: dict[str, Any], questions: int) -> int:
    caps = config["rejected"]["max_new_tokens"]
    teacher = config["teacher"]
    caps += (
        teacher["local"]["max_new_tokens"]
        if teacher["backend"] == "local"
        else teacher["gemini"]["max_output_tokens"]
    )
    return questions * caps * BYTES_PER_ANSWER_TOKEN


def check_output(folder: str, need: int) -> list[Finding]:
    path = Path(folder)
    probe_dir = path
    while not probe_dir.exists() and probe_dir != probe_dir.parent:
        probe_dir = probe_dir.parent
    try:
        with tempfile.NamedTemporaryFile(dir=probe_dir, prefix=".meddpo-preflight-"):
            pass
    except OSError as err:
        return [
            Finding(
                "error", f"output.dir {folder}: cannot write there ({err.strerror}); pick a writable folder"
            )
        ]
    free = shutil.disk_usage(probe_dir).free
    if free < need:
        return [
            Finding(
                "error",
                f"output.dir {folder}: {free / 1e9:.1f} GB free, the run may need {need / 1e9:.1f} GB; "
                "free some room or point output.dir at project storage",
            )
        ]
    return []


def check_slurm(account: str | None) -> list[Finding]:
    if account and not account.strip("'\"").startswith("$"):
        return []
    return [
        Finding(
            "error",
            "no Slurm account: export SBATCH_ACCOUNT=<your allocation> (see `projects` on Bridges-2) "
            "before running with the cluster profile",
        )
    ]


def visible_gpus() -> int:
    """GPUs this machine shows (nvidia-smi -L), without importing torch."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) == "":
        return 0
    if shutil.which("nvidia-smi") is None:
        return 0
    try:
        listing = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return 0
    return sum(line.startswith("GPU ") for line in listing.splitlines())


def check_gpu(config: dict[str, Any]) -> list[Finding]:
    if visible_gpus():
        return []
    if config["demo"]["build_tiny_models"]:
        return []  # the demo's tiny models are meant for the CPU
    return [
        Finding(
            "warning",
            "no GPU visible on this machine: the local models would run on the CPU, "
            "far too slowly for 7B models; "
            "run on a GPU node or with the cluster profile",
        )
    ]


def vllm_rules(config: dict[str, Any]) -> list[str]:
    """The rules whose model runs with engine vllm."""
    return [rule for rule, (_, model) in local_models(config).items() if model["engine"] == "vllm"]


def check_vllm(config: dict[str, Any]) -> list[Finding]:
    """engine vllm: the server command exists and can import vllm."""
    command = config["vllm"]["command"]
    executable = shlex.split(command)[0]
    from .vllm_server import BUILD_IT, missing_command

    problem = missing_command(command)
    if problem:
        return [Finding("error", problem)]
    if "python" in Path(executable).name:
        probe = "import importlib.util, sys; sys.exit(importlib.util.find_spec('vllm') is None)"
        try:
            found = subprocess.run([executable, "-c", probe], capture_output=True, timeout=60).returncode == 0
        except (OSError, subprocess.SubprocessError):
            found = False
        if not found:
            return [Finding("error", f"vllm.command: {executable} cannot import vllm; {BUILD_IT}")]
    return []


def check_start_up(plan: dict[str, Any], rules: list[str], n_shards: int) -> list[Finding]:
    """A warning where loading the model costs more than a tenth of a model's GPU time."""
    findings = []
    for rule in rules:
        start_up = plan["start_up"][rule]
        if start_up["share"] > 0.1 and n_shards > start_up["most_shards_for_10_percent"]:
            findings.append(
                Finding(
                    "warning",
                    f"{rule}: starting the model is about {start_up['share']:.0%} of its GPU time with "
                    f"n_shards {n_shards}; n_shards {start_up['most_shards_for_10_percent']} keeps it "
                    "under 10% (a failure still costs only the answers in flight: docs/engines.md)",
                )
            )
    return findings


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

    built = config["demo"]["build_tiny_models"]
    findings: list[Finding] = []
    models = local_models(config)
    for rule, (key, model) in models.items():
        if needed(rule):
            findings += check_model(f"{key}.model", model, built)
    if needed("questions"):
        findings += check_source(config["source"])
    if needed("chosen_gemini"):
        findings += check_gemini(config)
    if needed("judge_rubric_gemini") and "judge_rubric_gemini" in judge_rules(config):
        findings += check_gemini(config, "judge.gemini")
    plan = estimate(config)
    served = [rule for rule in vllm_rules(config) if needed(rule)]
    if served:
        findings += check_vllm(config)
    findings += check_start_up(plan, served, config["n_shards"])
    findings += check_output(config["output"]["dir"], needed_bytes(config, plan["questions"]))
    if cluster:
        findings += check_slurm(slurm_account)
    elif needed(*models):
        findings += check_gpu(config)
    return findings


def report(config: dict[str, Any], findings: list[Finding], stream=sys.stderr) -> bool:
    """Print the estimate and the findings; True when nothing stops the run."""
    for line in render_estimate(estimate(config)):
        print(f"meddpo preflight: {line}", file=stream)
    for finding in findings:
        print(f"meddpo preflight: {finding}", file=stream)
    errors = sum(f.level == "error" for f in findings)
    if errors:
        print(f"meddpo preflight: {errors} problem(s): nothing was started", file=stream)
    return not errors


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
