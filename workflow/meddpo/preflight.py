"""Preflight: everything a GPU job would find out late, checked in seconds before any job starts.

``meddpo preflight`` runs it by hand; the workflow runs it in Snakemake's
``onstart`` handler (real runs only: dry runs skip it) and stops before
submitting anything when it finds an error; ``meddpo judge`` runs the checks of
its own model, key, store and pairs file before it reads a pair. It checks what
the jobs will really read:

* each local model: a checkpoint folder with a config, a tokenizer with a chat
  template and weights whose headers parse (meddpo.checkpoints: no weight is
  loaded), and a tokenizer that loads; a hub id is checked the same way in the
  Hugging Face cache, else it must be reachable on the hub (HF_ENDPOINT; a HEAD
  request with a short timeout). Offline (HF_HUB_OFFLINE, TRANSFORMERS_OFFLINE)
  an id not in the cache is an error that names the variable;
* the question source: a local file is read and cleaned as the questions step
  does (the plan counts it); a hub id must be cached when HF_DATASETS_OFFLINE or
  HF_HUB_OFFLINE is set, else reachable;
* the Gemini key is there when the Gemini teacher or judge is on;
* the output folder, the answer store and the judge store are writable (a probe
  file written and removed; a missing folder is made) and there is room for the run;
* the Slurm account is set when a cluster executor is used;
* a GPU is visible when a model is to run on CUDA on this machine (a warning on
  a CPU-only machine, so the demo runs).

Each problem is one line that says what to do. It also prints what the run will
cost (meddpo.plan). The Snakefile imports it: the standard library and PyYAML
at import time; transformers (for the tokenizer) only when a check needs it.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from .checkpoints import checkpoint_problems, weights_to_load
from .paths import ANSWER_STORE_FOLDER, JUDGE_STORE_FOLDER
from .plan import (
    count_source,
    estimate,
    judge_rules,
    local_models,
    render_estimate,
)

TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")
# bytes a question needs on disk, all copies included (store, shards, pairs, dataset), at the caps
BYTES_PER_ANSWER_TOKEN = 4 * 4
# The variables that keep each library off the network, in the order they are named
MODEL_OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
DATASET_OFFLINE_VARIABLES = ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE")
HUB_TIMEOUT_S = 5
STORE_FOLDERS = {"answer store": ANSWER_STORE_FOLDER, "judge store": JUDGE_STORE_FOLDER}


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


def offline(variables: tuple[str, ...] = MODEL_OFFLINE_VARIABLES) -> str | None:
    """The first of ``variables`` that is set to a true value (the library will not go online), or None."""
    for name in variables:
        if os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}:
            return name
    return None


def hub_endpoint() -> str:
    return (os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")


def _hub_token() -> str | None:
    token = os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN")
    if token:
        return token
    try:
        from huggingface_hub import get_token

        return get_token()
    except Exception:  # noqa: BLE001 - no huggingface_hub, or no token: ask without one
        return None


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):  # a redirect to the file store is an answer
        return None


def hub_status(repo_id: str, kind: str = "model", revision: str | None = None) -> int | str:
    """The HTTP status the hub answers for a repo (a HEAD request), or why it could not be asked."""
    revision = revision or "main"
    if kind == "model":
        url = f"{hub_endpoint()}/{repo_id}/resolve/{revision}/config.json"
    else:
        url = f"{hub_endpoint()}/api/datasets/{repo_id}/revision/{revision}"
    request = urllib.request.Request(url, method="HEAD")
    token = _hub_token()
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.build_opener(_NoRedirect).open(request, timeout=HUB_TIMEOUT_S) as answer:
            return answer.status
    except urllib.error.HTTPError as err:
        return err.code
    except urllib.error.URLError as err:
        reason = err.reason
        return getattr(reason, "strerror", None) or str(reason)
    except (OSError, ValueError) as err:  # a timeout, a malformed HF_ENDPOINT
        return getattr(err, "strerror", None) or str(err) or type(err).__name__


def check_hub(key: str, repo_id: str, kind: str, revision: str | None, advice: str) -> list[Finding]:
    """A hub id not in the cache, on a machine that may go online: is it there to download?"""
    status = hub_status(repo_id, kind, revision)
    where = hub_endpoint()
    if isinstance(status, str):
        return [
            Finding(
                "error",
                f"{key} {repo_id}: not in the Hugging Face cache {hub_cache()} and {where} cannot be "
                f"reached ({status}); {advice}",
            )
        ]
    if status in (401, 403):
        return [
            Finding(
                "error",
                f"{key} {repo_id}: {where} answers {status} (gated or private): accept its terms on the "
                "hub and log in (hf auth login, or set HF_TOKEN), or " + advice,
            )
        ]
    if status == 404:
        return [
            Finding(
                "error",
                f"{key} {repo_id}: {where} has no such {kind} (404) at revision {revision or 'main'}; "
                "check the id and revision",
            )
        ]
    if status >= 400:
        return [
            Finding("warning", f"{key} {repo_id}: {where} answers {status}; the jobs may fail to download it")
        ]
    return []


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
    if weights_to_load(folder) is None:
        missing.append("weights (model.safetensors, a shard index or pytorch_model.bin)")
    return missing


@lru_cache(maxsize=16)
def tokenizer_problem(folder: str, trust_remote_code: bool = False) -> str | None:
    """Why the tokenizer of a checkpoint folder does not load (None: it loads); once per folder."""
    try:
        import transformers
    except ImportError:
        return None  # an environment without transformers (a bare Snakemake): the jobs will tell
    transformers.logging.set_verbosity_error()
    try:
        transformers.AutoTokenizer.from_pretrained(folder, trust_remote_code=trust_remote_code)
    except Exception as err:  # noqa: BLE001 - any failure is the one line the job would die on
        text = (str(err).strip() or type(err).__name__).splitlines()[0][:300]
        return f"the tokenizer does not load ({type(err).__name__}: {text})"
    return None


def check_folder(key: str, name: str, folder: Path, settings: dict[str, Any]) -> list[Finding]:
    """A checkpoint folder (local or a cached snapshot): its parts, its weight headers, its tokenizer."""
    missing = _missing_parts(folder)
    if missing:
        parts = ", ".join(missing)
        return [Finding("error", f"{key} {name}: the folder has no {parts}; is it a full checkpoint?")]
    findings = [Finding("error", f"{key} {name}: {problem}") for problem in checkpoint_problems(folder)]
    problem = tokenizer_problem(str(folder), bool(settings.get("trust_remote_code")))
    if problem:
        findings.append(Finding("error", f"{key} {name}: {problem}; is it a full checkpoint?"))
    return findings


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
        return check_folder(key, name, folder, settings)
    snapshot = cached_snapshot(name, settings.get("revision"))
    if snapshot is not None:
        findings = check_folder(key, name, snapshot, settings)
        if findings:
            where = f"(the cached copy in {hub_cache()})"
            return [
                Finding(f.level, f"{f.text} {where}; download it again on a login node: hf download {name}")
                for f in findings
            ]
        return []
    advice = f"download it on a login node into HF_HOME first (hf download {name})"
    advice += f" or point {key} at a checkpoint folder"
    variable = offline()
    if variable:
        return [
            Finding(
                "error",
                f"{key} {name}: not in the Hugging Face cache {hub_cache()} and {variable} is set; " + advice,
            )
        ]
    problems = check_hub(key, name, "model", settings.get("revision"), advice)
    if problems:
        return problems
    return [
        Finding(
            "warning",
            f"{key} {name}: not in the Hugging Face cache {hub_cache()}: every job would download it; "
            + advice,
        )
    ]


def dataset_cached(repo_id: str) -> bool:
    """The hub's file cache or the datasets library's cache holds something of this dataset."""
    snapshots = hub_cache() / f"datasets--{repo_id.replace('/', '--')}" / "snapshots"
    if snapshots.is_dir() and any(snapshots.iterdir()):
        return True
    home = Path(os.environ.get("HF_HOME") or Path.home() / ".cache" / "huggingface")
    datasets_cache = Path(os.environ.get("HF_DATASETS_CACHE") or home / "datasets")
    return (datasets_cache / repo_id.replace("/", "___")).is_dir()


def check_source(source: dict[str, Any], questions: dict[str, Any] | None = None) -> list[Finding]:
    """The question source can be read; with ``questions`` (the config block), a local one is also
    loaded and cleaned as the questions step will (the same DataError, or no question left)."""
    dataset = source["dataset"]
    if os.path.exists(dataset):
        if not os.access(dataset, os.R_OK):
            return [Finding("error", f"source.dataset {dataset}: not readable")]
        if questions is None:
            return []
        from .errors import UserError

        try:
            counted = count_source({"source": source, "questions": questions})
        except UserError as err:
            return [Finding("error", f"source.dataset: {err}")]
        if counted is not None and counted[1] == 0:
            return [
                Finding(
                    "error",
                    f"source.dataset {dataset}: no questions in it ({counted[0]} rows, none survives "
                    "cleaning); point source.dataset at a file with a 'question' column of text",
                )
            ]
        return []
    from .questions import is_local_source

    if is_local_source(dataset):
        return [
            Finding("error", f"source.dataset {dataset}: no such file; point source.dataset at a local copy")
        ]
    if dataset_cached(dataset):
        return []
    advice = "copy the dataset to this machine and point source.dataset at the .parquet/.jsonl/.csv file"
    variable = offline(DATASET_OFFLINE_VARIABLES)
    if variable:
        return [
            Finding(
                "error",
                f"source.dataset {dataset}: a hub id not in the Hugging Face cache, and {variable} is set; "
                + advice,
            )
        ]
    return check_hub("source.dataset", dataset, "dataset", source.get("revision"), advice)


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


def check_writable(what: str, folder: str | Path) -> list[Finding]:
    """``folder`` can be made (when missing) and takes a file: a probe file is written and removed.

    Folders made for the probe are removed again, so a preflight that stops the
    run leaves nothing behind.
    """
    path = Path(folder)
    made = [parent for parent in (path, *path.parents) if not parent.exists()]
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".meddpo-preflight-"):
            pass
    except OSError as err:
        reason = err.strerror or type(err).__name__
        return [
            Finding(
                "error",
                f"{what} {path}: cannot write there ({reason}); make it writable or point output.dir "
                "at a writable folder",
            )
        ]
    finally:
        for parent in made:  # deepest first
            try:
                parent.rmdir()
            except OSError:
                break
    return []


def check_output(folder: str, need: int) -> list[Finding]:
    problems = check_writable("output.dir", folder)
    if problems:
        return problems
    probe_dir = Path(folder)
    while not probe_dir.exists() and probe_dir != probe_dir.parent:
        probe_dir = probe_dir.parent
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
        findings += check_source(config["source"], config["questions"])
    if needed("chosen_gemini"):
        findings += check_gemini(config)
    if needed("judge_rubric_gemini") and "judge_rubric_gemini" in judge_rules(config):
        findings += check_gemini(config, "judge.gemini")
    plan = estimate(config)
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


def check_readable(what: str, path: str | Path) -> list[Finding]:
    """A file a job reads: there, a file, and readable."""
    path = Path(path)
    if not path.exists():
        return [Finding("error", f"{what} {path}: no such file")]
    if not path.is_file():
        return [Finding("error", f"{what} {path}: not a file")]
    try:
        with open(path, "rb") as handle:
            handle.read(1)
    except OSError as err:
        return [Finding("error", f"{what} {path}: cannot be read ({err.strerror}); check its permissions")]
    return []


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
    if kind == "classifier":
        findings += check_model("judge.classifier.model", judge["classifier"])
    elif judge["backend"] == "local":
        findings += check_model("judge.local.model", judge["local"])
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
