"""The Bridges-2 profile against a real one-node Slurm cluster (with accounting and a fake H100).

Needs root and Debian's Slurm packages (tests/slurm/cluster.sh installs them); skips
loudly elsewhere, and .ci/run fails if it skipped in CI. The test profile is the
bridges2 profile with only what cannot exist on a 2-core CI box changed.
"""

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from conftest import (
    DEMO_FILES,
    ONE_REJECTED_SHARD_REDONE,
    REPO,
    SNAKEMAKE,
    copy_workflow,
    job_counts,
    snakemake_env,
)
from meddpo.jsonl import read_jsonl_tolerant

pytestmark = pytest.mark.slow  # real Snakemake runs, servers or clusters: seconds to minutes each

CLUSTER = REPO / "tests" / "slurm" / "cluster.sh"
ACCOUNT = "meddpo-test"
KEY = "AIza-slurm-test-key-never-written-9876543210"
QUESTIONS_PER_SHARD = 6


def _sh(*command, timeout=120, check=True):
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=check)


@pytest.fixture(scope="module")
def slurm_cluster(real_scontrol):
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        pytest.skip("SKIPPED LOUDLY: a real Slurm cluster needs root and apt-get; CI requires this test")
    _sh("bash", str(CLUSTER), "install", timeout=600)
    started = _sh("bash", str(CLUSTER), "start", timeout=300, check=False)
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        yield
    finally:
        _sh("bash", str(CLUSTER), "stop", timeout=120, check=False)


def _test_profile(folder: Path) -> Path:
    """profiles/bridges2 with only what a 2-core CI box needs changed."""
    profile = yaml.safe_load((REPO / "profiles" / "bridges2" / "config.yaml").read_text())
    profile.update(
        {
            "retries": 0,  # a shard made to fail must stay failed until the rerun
            "slurm-init-seconds-before-status-checks": 2,
            "latency-wait": 5,
            "jobs": 6,
        }
    )
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(yaml.safe_dump(profile))
    return folder


def _sacct(*job_ids):
    fields = "JobID,JobName%40,Partition,Account,State,AllocTRES%80,Comment%80"
    out = _sh("sacct", "-X", "-n", "-P", "-o", fields, "-j", ",".join(job_ids)).stdout
    rows = [
        dict(zip(fields.replace("%40", "").replace("%80", "").split(","), line.split("|"), strict=False))
        for line in out.splitlines()
        if line.strip()
    ]
    return rows


def _all_jobs():
    out = _sh("sacct", "-X", "-n", "-P", "-a", "-S", "now-2hours", "-o", "JobID").stdout
    return {line.strip() for line in out.splitlines() if line.strip()}


def _store_rows(store: Path, part: str):
    rows = []
    for path in store.glob(f"*/*/{part}.jsonl"):  # the answers (each settings folder's part), not its logs
        if "tiny-mistral" in str(path):
            # the store's own reader: lines end at b"\n" only (a model's noise may hold U+2028 or
            # U+0085, which str.splitlines() also breaks at), and a torn last line is skipped
            rows += read_jsonl_tolerant(path)
    return rows


def test_bridges2_profile_on_a_real_slurm(slurm_cluster, tmp_path):
    from meddpo.testing.gemini_server import GeminiTestServer

    workdir = copy_workflow(tmp_path / "wf")
    profile = _test_profile(tmp_path / "profile")
    overlay = tmp_path / "slurm-test.yaml"
    overlay.write_text(
        yaml.safe_dump(
            {
                "questions": {"n": 3 * QUESTIONS_PER_SHARD},
                "n_shards": 3,
                # slow enough that a shard job can be cancelled half-way
                "rejected": {"batch_size": 1, "max_new_tokens": 600, "min_new_tokens": 600},
                "teacher": {
                    "backend": "gemini",
                    "gemini": {"concurrency": 4, "initial_backoff_s": 0.001, "max_backoff_s": 0.01},
                },
                # the judges' jobs would only add Slurm jobs of the same shape (test_judge.py
                # checks their resources in the profile)
                "judge": {"kinds": []},
            }
        )
    )
    command = [*SNAKEMAKE, "--profile", str(profile), "--configfile", *DEMO_FILES, str(overlay)]
    env = snakemake_env()
    store = workdir / "results" / "demo" / "answer_store"
    before = _all_jobs()

    with GeminiTestServer(expected_key=KEY) as server:
        env.update(GEMINI_API_KEY=KEY, GOOGLE_GEMINI_BASE_URL=server.base_url, SBATCH_ACCOUNT=ACCOUNT)
        # --- run 1: kill shard 001's generation process once it has made some answers -------
        # (kill -9 of the job's process: the Slurm job ends FAILED, as after an out-of-memory
        # kill or a crash. `scancel` would be the other way, but plugin 2.8.0 reads sacct's
        # "CANCELLED by <uid>" as still running and waits forever; a time limit takes 90 s.)
        first = subprocess.Popen(
            command, cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        killed, deadline = None, time.monotonic() + 420
        while first.poll() is None and time.monotonic() < deadline and killed is None:
            if _store_rows(store, "shard-001"):
                found = _sh(
                    "pgrep", "-f", "meddpo generate --shard .*shard-001.jsonl", check=False
                ).stdout.split()
                if found:
                    _sh("kill", "-9", *found, check=False)
                    killed = found
            time.sleep(0.05)
        try:
            output_1, _ = first.communicate(timeout=max(10, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            first.kill()
            raise
        assert killed, "shard 001's rejected job finished before it could be killed:\n" + output_1[-3000:]
        assert first.returncode != 0, "the run with a killed shard must fail"
        done_before_rerun = {row["id"] for row in _store_rows(store, "shard-001")}
        assert 1 <= len(done_before_rerun) < QUESTIONS_PER_SHARD
        run_1_jobs = _all_jobs() - before

        # --- run 2: the same command resubmits only what failed ----------------------------
        second = subprocess.run(command, cwd=workdir, env=env, capture_output=True, text=True, timeout=420)
        assert second.returncode == 0, second.stdout[-4000:] + second.stderr[-4000:]
        run_2_jobs = _all_jobs() - before - run_1_jobs

    # Run 1: every GPU job on GPU-shared with one h100-80, 60 GB and the account;
    # the Gemini teacher on RM-shared without a GPU.
    rows_1 = _sacct(*run_1_jobs)
    gpu_jobs = [row for row in rows_1 if "rule_rejected" in row["Comment"]]
    cpu_jobs = [row for row in rows_1 if "rule_chosen_gemini" in row["Comment"]]
    assert len(gpu_jobs) == 3 and len(cpu_jobs) == 3, rows_1
    assert len(rows_1) == 6, "question building, sharding and pairs must not be Slurm jobs"
    for row in gpu_jobs:
        assert row["Partition"] == "GPU-shared" and row["Account"] == ACCOUNT
        assert "gres/gpu:h100-80=1" in row["AllocTRES"] and "mem=60G" in row["AllocTRES"]
    for row in cpu_jobs:
        assert row["Partition"] == "RM-shared" and row["Account"] == ACCOUNT
        assert "gpu" not in row["AllocTRES"]
        assert row["State"] == "COMPLETED"
    assert sorted(r["State"] for r in gpu_jobs) == ["COMPLETED", "COMPLETED", "FAILED"]
    assert [r for r in gpu_jobs if r["State"] == "FAILED"][0]["Comment"].endswith("001")

    # Run 2: only the cancelled shard's generation job was submitted again ...
    rows_2 = _sacct(*run_2_jobs)
    assert len(rows_2) == 1 and "rule_rejected" in rows_2[0]["Comment"] and "001" in rows_2[0]["Comment"]
    assert rows_2[0]["State"] == "COMPLETED" and "gres/gpu:h100-80=1" in rows_2[0]["AllocTRES"]
    without_judges = {
        rule: n for rule, n in ONE_REJECTED_SHARD_REDONE.items() if not rule.startswith("judge_")
    }
    assert job_counts(second.stdout + second.stderr) == {**without_judges, "total": 6}
    # ... and it resumed from the answer store: nothing generated twice
    log = (workdir / "results" / "demo" / "logs" / "rejected" / "shard-001.log").read_text()
    assert f"{len(done_before_rerun)} of {QUESTIONS_PER_SHARD} answers already there" in log
    ids = [row["id"] for row in _store_rows(store, "shard-001")]
    assert len(ids) == len(set(ids)) == QUESTIONS_PER_SHARD

    stats = json.loads((workdir / "results" / "demo" / "pairs" / "all_pairs.stats.json").read_text())
    assert stats["pairs"] == 3 * QUESTIONS_PER_SHARD
    # Slurm logs are where the README says, and the key is nowhere
    assert list((workdir / "results" / "logs" / "slurm").rglob("*.log"))
    leaks = [str(p) for p in workdir.rglob("*") if p.is_file() and KEY.encode() in p.read_bytes()]
    assert leaks == []
    submit_lines = _sh(
        "sacct", "-X", "-n", "-P", "-o", "SubmitLine%500", "-j", ",".join(run_1_jobs | run_2_jobs)
    ).stdout
    assert KEY not in submit_lines and "GPU-shared" in submit_lines


def test_bridges2_profile_with_a_missing_model_submits_nothing(slurm_cluster, tmp_path):
    workdir = copy_workflow(tmp_path / "wf")
    profile = _test_profile(tmp_path / "profile")
    overlay = tmp_path / "missing-model.yaml"
    overlay.write_text(yaml.safe_dump({"rejected": {"model": "/project/models/no-such-mistral"}}))
    # the account written in the profile itself (no SBATCH_ACCOUNT): the preflight must read it
    settings = yaml.safe_load((profile / "config.yaml").read_text())
    settings["default-resources"]["slurm_account"] = f"'{ACCOUNT}'"
    (profile / "config.yaml").write_text(yaml.safe_dump(settings))
    env = {k: v for k, v in snakemake_env().items() if k != "SBATCH_ACCOUNT"}
    before = _all_jobs()
    run = subprocess.run(
        [*SNAKEMAKE, "--profile", str(profile), "--configfile", *DEMO_FILES, str(overlay)],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 2, run.stdout[-3000:] + run.stderr[-3000:]
    errors = [line for line in run.stderr.splitlines() if "error:" in line]
    assert errors[0] == (
        "meddpo preflight: error: rejected.model /project/models/no-such-mistral: no such folder; "
        "point rejected.model at a checkpoint folder or a hub id"
    )
    assert not any("Slurm account" in line for line in errors), errors
    assert _all_jobs() == before, "a Slurm job was submitted"
    assert not (workdir / "results" / "demo" / "questions").exists()


SLURM_COMMANDS = ("sbatch", "srun", "squeue", "sacct", "scancel", "sinfo", "scontrol")


def test_bridges2_dry_run_needs_no_slurm_daemons(tmp_path):
    workdir = copy_workflow(tmp_path / "wf")
    env = snakemake_env()
    env["SBATCH_ACCOUNT"] = ACCOUNT
    # every Slurm command first on PATH fails as with no daemon, and notes that it was called
    fake_bin, calls = tmp_path / "fake-slurm", tmp_path / "slurm-calls.log"
    fake_bin.mkdir()
    for name in SLURM_COMMANDS:
        (fake_bin / name).write_text(f'#!/bin/sh\necho "{name} $*" >> {calls}\nexit 1\n')
        (fake_bin / name).chmod(0o755)
    env["PATH"] = os.pathsep.join([str(fake_bin), env["PATH"]])
    result = subprocess.run(
        [*SNAKEMAKE, "--profile", "profiles/bridges2", "-n"],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    n_shards = yaml.safe_load((REPO / "config.yaml").read_text())["n_shards"]
    assert job_counts(result.stdout)["rejected"] == n_shards
    assert (
        "slurm_partition=GPU-shared" in result.stdout
        and "slurm_extra=--gpus-per-node=h100-80:1" in result.stdout
    )
    assert f"slurm_account={ACCOUNT}" in result.stdout
    # nothing was submitted or asked of a daemon: at most the plugin's own look at the config
    called = calls.read_text().splitlines() if calls.exists() else []
    assert set(called) <= {"scontrol show config"}, called


def test_bridges2_dry_run_in_batch_mode_has_one_gemini_job_for_every_shard_run_by_snakemake(tmp_path):
    workdir = copy_workflow(tmp_path / "wf")
    overlay = tmp_path / "batch.yaml"
    overlay.write_text(
        "teacher: {backend: gemini, gemini: {mode: batch}}\n"
        "judge: {kinds: [rubric], backend: gemini, gemini: {mode: batch}}\n"
    )
    env = snakemake_env()
    env["SBATCH_ACCOUNT"] = ACCOUNT
    result = subprocess.run(
        [*SNAKEMAKE, "--profile", "profiles/bridges2", "-n", "--configfile", str(overlay)],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    n_shards = yaml.safe_load((REPO / "config.yaml").read_text())["n_shards"]
    counts = job_counts(result.stdout)
    assert (counts["rejected"], counts["chosen_gemini"], counts["judge_rubric_gemini"]) == (n_shards, 1, 1)
    # each takes every shard and claims no core; a dry run does not print which jobs are local,
    # so the rules are read for that: both say localrule (the login node, where Snakemake runs)
    for rule in ("chosen_gemini", "judge_rubric_gemini"):
        block = result.stdout.split(f"rule {rule}:", 1)[1].split("\n[", 1)[0]
        assert "shard-000.jsonl" in block and f"shard-{n_shards - 1:03d}.jsonl" in block
        assert "    threads: 0\n" in block
    for name, rule in (("chosen.smk", "chosen_gemini"), ("judge.smk", "judge_rubric_gemini")):
        text = (REPO / "workflow" / "rules" / name).read_text()
        batch_rule = text.split(f'if "{rule}" in BATCH_RULES:', 1)[1]
        assert "localrule: True" in batch_rule and "threads: 0" in batch_rule


def test_bridges2_gpu_block_is_written_once_and_each_gpu_rule_gets_its_own_copy():
    text = (REPO / "profiles" / "bridges2" / "config.yaml").read_text()
    assert text.count("--gpus-per-node=h100-80:1") == 1 and text.count("<<: *h100") == 3
    gpu_rules = yaml.safe_load(text)["set-resources"]
    assert set(gpu_rules) == {"rejected", "chosen_local", "judge_classifier", "judge_rubric_local"}
    h100 = gpu_rules["rejected"]
    assert h100 == {
        "slurm_partition": "'GPU-shared'",
        "slurm_extra": "'--gpus-per-node=h100-80:1'",
        "gpu": 0,
        "mem_mb": 61440,
        "cpus_per_task": 1,
    }
    assert all(block == h100 for block in gpu_rules.values())
    # merged (<<), not aliased: changing one rule's resources (as the time-limit test does) leaves the others
    assert len({id(block) for block in gpu_rules.values()}) == len(gpu_rules)


def test_a_shard_killed_by_its_slurm_time_limit_resumes_on_the_rerun(slurm_cluster, tmp_path):
    workdir = copy_workflow(tmp_path / "wf")
    short = _test_profile(tmp_path / "short-profile")
    profile = yaml.safe_load((short / "config.yaml").read_text())
    profile["set-resources"]["rejected"]["runtime"] = 1  # minutes: Slurm kills the job half-way
    (short / "config.yaml").write_text(yaml.safe_dump(profile))
    normal = _test_profile(tmp_path / "normal-profile")
    overlay = tmp_path / "slow.yaml"
    # 63 answers of 2,000 tokens, one at a time: minutes of work, far past a 1-minute limit
    overlay.write_text(
        yaml.safe_dump(
            {"n_shards": 1, "rejected": {"batch_size": 1, "max_new_tokens": 2000, "min_new_tokens": 2000}}
        )
    )
    # the rerun batches what is left: batch_size only sets the speed, so the store's answers still count
    faster = tmp_path / "faster.yaml"
    faster.write_text(
        yaml.safe_dump(
            {"n_shards": 1, "rejected": {"batch_size": 64, "max_new_tokens": 2000, "min_new_tokens": 2000}}
        )
    )
    target = "results/demo/rejected/shard-000.jsonl"
    env = snakemake_env()
    env["SBATCH_ACCOUNT"] = ACCOUNT
    store = workdir / "results" / "demo" / "answer_store"

    # (the target goes first: --configfile takes every word after it)
    first = subprocess.run(
        [*SNAKEMAKE, target, "--profile", str(short), "--configfile", *DEMO_FILES, str(overlay)],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=420,
    )
    assert first.returncode != 0, "the job should have hit its time limit"
    assert "TIMEOUT" in first.stdout + first.stderr
    assert not (workdir / target).exists()
    done = {row["id"] for row in _store_rows(store, "shard-000")}
    assert 0 < len(done) < 63, len(done)

    second = subprocess.run(
        [*SNAKEMAKE, target, "--profile", str(normal), "--configfile", *DEMO_FILES, str(faster)],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    log = (workdir / "results" / "demo" / "logs" / "rejected" / "shard-000.log").read_text()
    assert f"{len(done)} of 63 answers already there, {63 - len(done)} to generate" in log
    ids = [row["id"] for row in _store_rows(store, "shard-000")]
    assert len(ids) == len(set(ids)) == 63
