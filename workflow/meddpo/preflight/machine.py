"""The preflight's checks of the machine and the run: Gemini key, model and prices, disk, writable
folders, Slurm, GPU, vLLM.

Each check returns a list of ``Finding`` (empty: nothing wrong), one line each
that says what to do. The checks of models and of the question source (local
folders, the Hugging Face cache, the hub) are in meddpo.preflight.hub; meddpo.preflight.run
runs them all.

Imports: the standard library and meddpo.planning.plan at import time; meddpo.generation.vllm.server
and the Gemini client only inside the check that needs them. Never a later stage.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from meddpo.backends import asks_gemini, serves_vllm
from meddpo.planning.checks import demo_model_path
from meddpo.planning.plan import local_models, missing_prices

# bytes a question needs on disk, all copies included (store, shards, pairs, dataset), at the caps
BYTES_PER_ANSWER_TOKEN = 4 * 4
# the longest the preflight waits for Gemini to say whether a model exists
MODEL_CHECK_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class Finding:
    level: str  # "error" | "warning"
    text: str

    def __str__(self) -> str:
        return f"{self.level}: {self.text}"


def check_gemini(config: dict[str, Any], block: str = "teacher.gemini") -> list[Finding]:
    """The Gemini key of the teacher's (or the judge's) block is there, and Gemini knows its model."""
    section, _, _ = block.partition(".")
    if not asks_gemini(config[section]):
        return []
    from meddpo.gemini.client import MissingKeyError, load_api_key

    try:
        key = load_api_key(config[section]["gemini"]["secrets_file"])
    except MissingKeyError as err:
        return [Finding("error", f"{block}: {err}")]
    return check_gemini_model(config[section]["gemini"], block, key)


def check_gemini_model(gemini: dict[str, Any], block: str, key: str) -> list[Finding]:
    """Ask the API whether the block's model exists (``models.get``, free; one try, 10 s at most): an
    error for a 404 (a model retired, or never one), a warning when Gemini cannot be asked."""
    import dataclasses

    from meddpo.gemini.client import GeminiSettings, make_client
    from meddpo.gemini.errors import describe_error

    settings = GeminiSettings(**{k: v for k, v in gemini.items() if k in GeminiSettings.__dataclass_fields__})
    settings = dataclasses.replace(settings, timeout_s=MODEL_CHECK_TIMEOUT_S)
    try:
        client = make_client(key, settings)
        client.models.get(model=settings.model)
    except Exception as error:  # noqa: BLE001 - a 404 is the answer looked for; anything else only warns
        if getattr(error, "code", None) == 404:
            return [
                Finding(
                    "error",
                    f"{block}.model: Gemini has no model {settings.model} (models.get answered 404: retired, "
                    f"or not a model name): choose another {block}.model",
                )
            ]
        return [
            Finding(
                "warning",
                f"{block}.model: could not ask Gemini whether {settings.model} exists "
                f"({describe_error(error)}); the run goes on",
            )
        ]
    return []


def check_prices(config: dict[str, Any]) -> list[Finding]:
    """Every Gemini model the run is billed by has its gemini_prices entry (else no estimate, no cap)."""
    from meddpo.config.settings import PRICE_KEYS

    return [
        Finding(
            "error",
            f"{block}.model: gemini_prices has no price for {model}: add gemini_prices.{model} with "
            f"{', '.join(PRICE_KEYS)} (USD per million tokens, and the day you looked them up)",
        )
        for block, model in missing_prices(config).items()
    ]


def needed_bytes(config: dict[str, Any], questions: int) -> int:
    caps = config["rejected"]["max_new_tokens"]
    teacher = config["teacher"]
    caps += (
        teacher["local"]["max_new_tokens"]
        if not asks_gemini(teacher)
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
    if all(demo_model_path(config, block["model"]) for _, block in local_models(config).values()):
        return []  # the demo's own models are meant for the CPU
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
    return [rule for rule, (_, model) in local_models(config).items() if serves_vllm(model)]


def check_vllm(config: dict[str, Any]) -> list[Finding]:
    """engine vllm: the server command exists and can import vllm."""
    command = config["vllm"]["command"]
    executable = shlex.split(command)[0]
    from meddpo.generation.vllm.server import BUILD_IT, missing_command

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
