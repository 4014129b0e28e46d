"""The preflight and its one-line errors in real Snakemake runs: a missing model stops the run
before any job, a config mistake is a few lines, the venv's snakemake runs the demo one GPU job
at a time and `meddpo status` reports it."""

import subprocess

import pytest

from conftest import DEMO_FILES, SNAKEMAKE, copy_workflow, few_lines, meddpo, snakemake_env

pytestmark = pytest.mark.slow


def test_the_workflow_stops_before_any_job_when_a_model_is_missing(tmp_path):
    workdir = copy_workflow(tmp_path / "wf")
    overlay = tmp_path / "missing.yaml"
    overlay.write_text(
        "rejected:\n  model: /nowhere/tiny-mistral\nteacher:\n  local:\n    model: /nowhere/tiny-qwen2\n"
    )
    run = subprocess.run(
        [*SNAKEMAKE, "--cores", "2", "--configfile", *DEMO_FILES, str(overlay)],
        cwd=workdir,
        env=snakemake_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 2
    errors = [line for line in run.stderr.splitlines() if "error:" in line]
    # the judges' model (demo:tiny-mistral) is one the run would build: it is checked once it is there
    assert errors == [
        "meddpo preflight: error: rejected.model /nowhere/tiny-mistral: no such folder; point rejected.model "
        "at a checkpoint folder or a hub id",
        "meddpo preflight: error: teacher.local.model /nowhere/tiny-qwen2: no such folder; point "
        "teacher.local.model at a checkpoint folder or a hub id",
    ]
    assert not (workdir / "results").exists(), "a job ran before the preflight stopped the run"


@pytest.mark.parametrize(
    "override, expected",
    [
        (
            ["--config", "n_shard=3"],
            "config key n_shard: unknown key (given on the command line with --config)",
        ),
        # was blamed on config.yaml, which sets n_shards too: "(set in config.yaml)"
        (
            ["--config", "n_shards=abc"],
            "meddpo: config key n_shards: 'abc' is not allowed: 'abc' is not of type 'integer' "
            "(given on the command line with --config)",
        ),
        (["--configfile", "BAD"], "config key questions.selection: 'newest' is not allowed"),
    ],
)
def test_a_config_mistake_in_snakemake_is_a_few_lines(tmp_path, override, expected):
    workdir = copy_workflow(tmp_path / "wf")
    bad = tmp_path / "bad.yaml"
    bad.write_text("questions:\n  selection: newest\n")
    override = [str(bad) if word == "BAD" else word for word in override]
    result = subprocess.run(
        [*SNAKEMAKE, "-n", *override],
        cwd=workdir,
        env=snakemake_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    lines = few_lines(result)
    assert any(expected in line for line in lines), lines
    if "BAD" not in override:
        return
    assert any(f"(set in {bad})" in line for line in lines)


def test_a_pilot_smaller_than_the_shard_count_plans_no_job(tmp_path):
    # 2 questions in the demo's 3 shards: Snakemake used to plan an empty shard and its jobs
    workdir = copy_workflow(tmp_path / "wf")
    pilot = tmp_path / "pilot.yaml"
    pilot.write_text("questions:\n  n: 2\n")
    result = subprocess.run(
        [*SNAKEMAKE, "-n", "--configfile", *DEMO_FILES, str(pilot)],
        cwd=workdir,
        env=snakemake_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert few_lines(result)[-1] == (
        "meddpo: config key questions.n: 2 questions in 3 shards (n_shards) would leave 1 shard empty, each "
        f"still a job of every model: set n_shards to 2 or fewer (questions.n set in {pilot}, n_shards set "
        f"in {workdir / 'demo' / 'tiny.yaml'})"
    )
    assert "Job stats" not in result.stdout + result.stderr


def most_generation_jobs_at_once(log: str) -> int:
    """From Snakemake's own log: the most rejected / chosen_local jobs running together."""
    running, most, starting = set(), 0, False
    for line in log.splitlines():
        line = line.strip()
        if line in ("rule rejected:", "localrule rejected:", "rule chosen_local:", "localrule chosen_local:"):
            starting = True
        elif starting and line.startswith("jobid: "):
            running.add(line.split()[1])
            most, starting = max(most, len(running)), False
        elif line.startswith("Finished jobid: "):
            running.discard(line.split()[2])
    return most


def test_the_venvs_snakemake_runs_the_demo_one_gpu_job_at_a_time_and_status_reports_it(demo_run):
    # conftest's session run: the venv's snakemake, no venv activated (no VIRTUAL_ENV or
    # PYTHONPATH, PATH=/usr/local/bin:/usr/bin:/bin), --cores 2, the demo config; it passed
    workdir, log = demo_run.workdir, demo_run.log
    assert "meddpo preflight: " in log  # the preflight ran first
    # the default profile's gpu=1: with 2 cores, the 6 generation jobs still ran one at a time
    assert most_generation_jobs_at_once(log) == 1

    status = meddpo("status", "--configfile", *DEMO_FILES, cwd=workdir)
    assert status.returncode == 0, status.stderr
    assert status.stdout.splitlines()[-2:] == [
        "rejected: 63/63 answered; 3 of 3 shard files written",
        "chosen: 63/63 answered; 3 of 3 shard files written",
    ]
    assert "rejected  shard-001  21/21 answered  done" in status.stdout
    card = (workdir / "results" / "demo" / "dataset" / "README.md").read_text()
    assert "Demo data: the answers are noise." in card
