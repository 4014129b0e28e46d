"""The preflight's checks of what the jobs will load: models and the question source.

A local model is a checkpoint folder whose parts, weight headers and tokenizer
are checked; a hub id is checked the same way in the Hugging Face cache, else it
must be reachable on the hub (a HEAD request with a short timeout), unless an
offline variable is set. A local question source is loaded and cleaned as the
questions step does; a hub dataset must be cached or reachable.

Imports: the standard library, meddpo.generation.checkpoints, meddpo.planning.plan and the Finding
of meddpo.preflight.machine at import time; transformers, huggingface_hub,
meddpo.errors and meddpo.questions.sources only inside the check that needs them.
"""

from __future__ import annotations

import json
import os
from functools import lru_cache
from pathlib import Path
from typing import Any

from meddpo.generation.checkpoints import checkpoint_problems, weights_to_load
from meddpo.planning.plan import count_source
from meddpo.preflight.machine import Finding
from meddpo.questions.hub_probe import (
    DATASET_OFFLINE_VARIABLES,
    hub_endpoint,
    hub_status,
    offline,
)

TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")


def hub_cache() -> Path:
    """Where huggingface_hub keeps models (HF_HUB_CACHE, else HF_HOME/hub, else ~/.cache)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    home = Path(os.environ.get("HF_HOME") or Path.home() / ".cache" / "huggingface")
    return home / "hub"


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
        from meddpo.errors import UserError

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
    from meddpo.questions.sources import is_local_source

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
