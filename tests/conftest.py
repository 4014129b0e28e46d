"""Shared fixtures and helpers. Tests never reach the network: the Hugging Face libraries
are put in offline mode and their endpoint points at a closed local port.

Each distinct Snakemake DAG runs once per session: ``demo_run`` is the demo built once, which the
tests that only read its outputs, log or file modes share; a test that changes files works on
``demo_copy``, a copy of that run's folder. The helpers to run Snakemake and the benchmark scripts
live here too, so no test module imports another. Test modules import from here and from the
package; this module imports only the package (inside the fixtures)."""

import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

os.environ.update(
    HF_HUB_OFFLINE="1",
    HF_DATASETS_OFFLINE="1",
    TRANSFORMERS_OFFLINE="1",
    HF_ENDPOINT="http://127.0.0.1:9",
    HF_HUB_DISABLE_TELEMETRY="1",
)

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "workflow"))
SHARED_DATA = REPO.parent / "shared" / "data"
MEDQUAD = SHARED_DATA / "medquad" / "train-00000-of-00001.parquet"
DEMO_QUESTIONS = REPO / "demo" / "medquad_demo.jsonl"
# The DPO row layout TRL's DPOTrainer and the training code read, in this order (written out
# here, not taken from the package, so a change to the package's layout fails the tests).
# The jobs Snakemake runs to redo one rejected shard of the demo: that shard, its pairs, and the
# steps after them (written out, so that a change to the DAG shows in the tests).
ONE_REJECTED_SHARD_REDONE = {
    "rejected": 1,
    "pairs": 1,
    "judge_classifier": 1,  # the demo runs both judges: the shard's pairs are judged again
    "judge_rubric_local": 1,
    "merge_pairs": 1,
    "finalize": 1,
    "validate": 1,
    "all": 1,
    "total": 8,
}
DPO_ROW_FIELDS = "id source category question_type question prompt chosen rejected meta".split()


def require_medquad() -> Path:
    if not MEDQUAD.exists():
        pytest.skip(
            f"SKIPPED LOUDLY: reference MedQuAD file {MEDQUAD} is absent; CI requires this test to run"
        )
    return MEDQUAD


@pytest.fixture(scope="session")
def demo_texts() -> list[str]:
    from meddpo.jsonl import read_jsonl

    return [row["question"] for row in read_jsonl(DEMO_QUESTIONS)]


@pytest.fixture(scope="session")
def tiny_mistral(tmp_path_factory, demo_texts) -> Path:
    from meddpo.demo.tiny_models import build_tiny_mistral

    return build_tiny_mistral(demo_texts, tmp_path_factory.mktemp("models") / "tiny-mistral", eos_rate=0.0)


@pytest.fixture(scope="session")
def tiny_qwen(tmp_path_factory, demo_texts) -> Path:
    from meddpo.demo.tiny_models import build_tiny_qwen2

    return build_tiny_qwen2(demo_texts, tmp_path_factory.mktemp("models") / "tiny-qwen2", eos_rate=0.0)


# --------------------------------------------------------------------------- a DPO row

GOOD_CHOSEN = (
    "Gout is a form of arthritis caused by uric acid crystals in a joint. A doctor can confirm it "
    "with a blood test or by examining fluid from the joint, and treatment eases the pain."
)
GOOD_REJECTED = "Gout is just joint pain. Take some painkillers and it will go away."


def pair(
    i=1, chosen=GOOD_CHOSEN, rejected=GOOD_REJECTED, chosen_reason="stop", rejected_reason="stop", **meta
):
    """A DPO row as the pairs step writes it (``meta`` keys given are added or replace the defaults)."""
    return {
        "id": f"mq-{i:04d}",
        "source": "s",
        "category": "information",
        "question_type": "information",
        "question": "What is gout ?",
        "prompt": "Be careful.\n\nUser question:\nWhat is gout ?",
        "chosen": chosen,
        "rejected": rejected,
        "meta": {
            "teacher_model": "t",
            "rejected_model": "m",
            "chosen_finish_reason": chosen_reason,
            "rejected_finish_reason": rejected_reason,
            "chosen_new_tokens": 40,
            "rejected_new_tokens": 15,
            **meta,
        },
    }


# --------------------------------------------------------------------------- running Snakemake

# Snakemake imports every installed executor plugin when it starts, and the Slurm plugin runs
# `scontrol show config` as it is imported. Where Slurm is installed but no controller answers
# (this machine once the Slurm tests have stopped their cluster), that waits 9-10 s at every
# Snakemake start. Tests that use no Slurm cluster find this `scontrol` first on PATH: it fails at
# once, as on a machine without Slurm. The Slurm tests take it off PATH (``real_scontrol``).
NO_SLURM_BIN = Path(__file__).resolve().parent / "no-slurm-bin"


@pytest.fixture(scope="session", autouse=True)
def no_slurm_controller():
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PATH", f"{NO_SLURM_BIN}{os.pathsep}{os.environ['PATH']}")
        yield


@pytest.fixture(scope="module")
def real_scontrol():
    """PATH without the failing ``scontrol``, for the tests that run a real Slurm cluster."""
    with pytest.MonkeyPatch.context() as patch:
        paths = os.environ["PATH"].split(os.pathsep)
        patch.setenv("PATH", os.pathsep.join(p for p in paths if Path(p) != NO_SLURM_BIN))
        yield


SNAKEMAKE = [sys.executable, "-m", "snakemake"]
# The tests run the demo on its tiny random-weight models (demo/tiny.yaml): the same DAG in a minute.
# The demo on its real model (what `make demo` runs) has a test of its own (test_demo_real_model.py).
DEMO_FILES = ["demo/config.yaml", "demo/tiny.yaml"]
DEMO = ["--configfile", *DEMO_FILES]
# What a copy of the project needs for the Snakefile to run in it.
COPIED = ("Snakefile", "config.yaml", "workflow", "demo", "profiles", "envs")


def snakemake_env() -> dict[str, str]:
    env = dict(os.environ)
    # `python -m meddpo` in the rules must find this interpreter's packages
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    return env


def copy_workflow(dest: Path) -> Path:
    """A copy of the workflow in ``dest`` (created), to run Snakemake in."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in COPIED:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, dest / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy(source, dest / name)
    return dest


def snakemake(workdir: Path, *args, env=None, umask=None, timeout=600):
    """``python -m snakemake *args`` in ``workdir`` (with this interpreter on PATH unless ``env``
    is given), under ``umask`` if one is given."""
    return subprocess.run(
        [*SNAKEMAKE, *args],
        cwd=workdir,
        env=snakemake_env() if env is None else env,
        capture_output=True,
        text=True,
        timeout=timeout,
        preexec_fn=(lambda: os.umask(umask)) if umask is not None else None,
    )


def job_counts(output: str) -> dict[str, int]:
    """The 'Job stats' table of a (dry) run as {rule: count}."""
    table = output.split("Job stats:", 1)[1]
    counts = {}
    for line in table.splitlines()[3:]:
        match = re.fullmatch(r"(\w+)\s+(\d+)", line.strip())
        if not match:
            break
        counts[match.group(1)] = int(match.group(2))
    return counts


def meddpo(*args, cwd=REPO, env=None, timeout=300):
    """``python -m meddpo *args`` with this repository's package, as a user runs a step by hand."""
    return subprocess.run(
        [sys.executable, "-m", "meddpo", *args],
        cwd=cwd,
        env=env or {**os.environ, "PYTHONPATH": str(REPO / "workflow")},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def few_lines(result, limit=3) -> list[str]:
    """The non-empty lines of a command's stderr, checked to be at most ``limit`` and no traceback."""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) <= limit, result.stderr
    assert "Traceback" not in result.stderr
    return lines


def git(workdir: Path, *args):
    subprocess.run(["git", *args], cwd=workdir, check=True, capture_output=True)


def run_benchmark(script: str, *args: str) -> dict:
    """Run a benchmark script; returns the JSON summary it prints last."""
    result = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / script), *args],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------- the demo, built once


@dataclass(frozen=True)
class DemoRun:
    """The folder a finished demo run lies in, and what Snakemake printed while it ran."""

    workdir: Path
    log: str  # stdout and stderr of the run


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory) -> DemoRun:
    """The demo, built once per session, with the settings every test that reads it needs: in a
    copy of the workflow that is its own git repository (provenance), under umask 027, by the
    venv's own snakemake with no venv activated (no VIRTUAL_ENV, no PYTHONPATH, a bare PATH).
    Only read it: a test that changes a file takes ``demo_copy``."""
    workdir = copy_workflow(tmp_path_factory.mktemp("demo-run"))
    git(workdir, "init", "-q")
    git(workdir, "add", "-A")
    git(workdir, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "demo")
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    env["PATH"] = "/usr/local/bin:/usr/bin:/bin"  # the venv is not activated
    run = subprocess.run(
        [str(Path(sys.executable).parent / "snakemake"), "--cores", "2", *DEMO],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        preexec_fn=lambda: os.umask(0o027),
    )
    assert run.returncode == 0, run.stderr[-5000:]
    return DemoRun(workdir, run.stdout + run.stderr)


def copy_run(workdir: Path, dest: Path) -> Path:
    """A copy of a finished run's folder (workflow, outputs, Snakemake's records, git repository),
    times and modes kept, so that Snakemake sees the same state there."""
    shutil.copytree(workdir, dest, symlinks=True)
    return dest


@pytest.fixture
def demo_copy(demo_run, tmp_path) -> Path:
    """A copy of the shared demo run, for a test that changes files or reruns jobs."""
    return copy_run(demo_run.workdir, tmp_path / "demo")


# --------------------------------------------------------------------------- side by side (make test)


# The groups that take longest on 2 cores, longest first: with --no-loadscope-reorder (make test)
# xdist hands groups out in this order, so the short ones fill in around the long ones instead of
# one long group running alone at the end.
LONG_GROUPS = (
    "test_slurm_profile.py",
    "test_vllm_engine.py",
    "demo-run",
    "test_preflight.py",
    "test_gemini_job.py",
    "test_resume.py",
    "test_judge.py",
)


def _group(item) -> str:
    return "demo-run" if "demo_run" in item.fixturenames else item.path.name


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook, which reads the groups into the node ids
def pytest_collection_modifyitems(config, items):
    """Groups for pytest-xdist's ``--dist loadgroup`` (make test): each test file runs on one
    worker, so its module fixtures (a vLLM server, a Slurm cluster) start once; every test that
    reads the session's demo run, whatever its file, runs on one worker, so the demo runs once."""
    rank = {name: i for i, name in enumerate(LONG_GROUPS)}
    items.sort(key=lambda item: rank.get(_group(item), len(LONG_GROUPS)))  # stable: file order kept
    for item in items:
        item.add_marker(pytest.mark.xdist_group(_group(item)))


# --------------------------------------------------------------------------- Gemini against the local server


def gemini_env(server, key, **extra) -> dict[str, str]:
    """This environment with ``key`` as the only Gemini key and the SDK pointed at the local server."""
    env = {k: v for k, v in os.environ.items() if k not in ("GEMINI_API_KEY", "GOOGLE_API_KEY")}
    env.update(GEMINI_API_KEY=key, GOOGLE_GEMINI_BASE_URL=server.base_url, **extra)
    return env


def fast_gemini_settings(server, **overrides):
    """Gemini settings for the local wire-format server: no pacing, millisecond back-offs, short time-outs."""
    from meddpo.gemini.client import GeminiSettings

    base = dict(
        base_url=server.base_url,
        initial_backoff_s=0.001,
        max_backoff_s=0.01,
        timeout_s=2.0,
        requests_per_minute=1e6,
        concurrency=8,
        max_attempts=4,
    )
    return GeminiSettings(**{**base, **overrides})
