"""Fail fast: the preflight, one-line errors, one GPU job at a time, jobs without an activated venv,
no model load for a shard that is already answered, and `meddpo status`."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import REPO
from meddpo import preflight as pf
from meddpo.jsonl import write_jsonl
from meddpo.settings import load_config
from test_workflow import DEMO, SNAKEMAKE, _copy_workflow, _env


def _meddpo(*args, cwd=REPO, env=None, timeout=300):
    return subprocess.run(
        [sys.executable, "-m", "meddpo", *args],
        cwd=cwd,
        env=env or {**os.environ, "PYTHONPATH": str(REPO / "workflow")},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


# --------------------------------------------------------------------------- the checks


def test_a_model_folder_must_hold_a_full_checkpoint(tmp_path, tiny_mistral):
    assert pf.check_model("rejected.model", {"model": str(tiny_mistral)}) == []
    missing = tmp_path / "nope"
    assert [str(f) for f in pf.check_model("rejected.model", {"model": str(missing)})] == [
        f"error: rejected.model {missing}: no such folder; point rejected.model at a checkpoint folder "
        "or a hub id"
    ]
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / "config.json").write_text("{}")
    (partial / "tokenizer.json").write_text("{}")
    (partial / "tokenizer_config.json").write_text('{"bos_token": "<s>"}')
    [finding] = pf.check_model("teacher.local.model", {"model": str(partial)})
    assert finding.level == "error"
    assert "has no a chat template, weights (*.safetensors)" in finding.text
    # the demo builds its models during the run: nothing to check beforehand
    assert pf.check_model("rejected.model", {"model": str(missing)}, built_by_run=True) == []


def test_a_hub_model_must_be_in_the_cache_when_offline(tmp_path, tiny_qwen, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    [finding] = pf.check_model("teacher.local.model", {"model": "Qwen/Qwen2.5-7B-Instruct", "revision": None})
    assert finding.level == "error"
    assert (
        "not in the Hugging Face cache" in finding.text
        and "hf download Qwen/Qwen2.5-7B-Instruct" in finding.text
    )
    # the layout huggingface_hub writes: refs/main names the snapshot
    repo = tmp_path / "hub" / "models--Qwen--Qwen2.5-7B-Instruct"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("abc123")
    snapshot = repo / "snapshots" / "abc123"
    snapshot.parent.mkdir()
    os.symlink(tiny_qwen, snapshot)
    assert (
        pf.check_model("teacher.local.model", {"model": "Qwen/Qwen2.5-7B-Instruct", "revision": None}) == []
    )
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    [online] = pf.check_model(
        "rejected.model", {"model": "mistralai/Mistral-7B-Instruct-v0.2", "revision": None}
    )
    assert online.level == "warning"


def test_source_key_output_and_account_checks(tmp_path, monkeypatch):
    assert pf.check_source({"dataset": str(REPO / "demo" / "medquad_demo.jsonl")}) == []
    [missing] = pf.check_source({"dataset": str(tmp_path / "medquad.parquet")})
    assert "no such file" in missing.text
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    [hub] = pf.check_source({"dataset": "lavita/MedQuAD"})
    assert "HF_HUB_OFFLINE is set" in hub.text

    config = load_config(["demo/config.yaml"], base=REPO / "config.yaml")
    config["teacher"]["backend"] = "gemini"
    config["teacher"]["gemini"]["secrets_file"] = str(tmp_path / "secrets.env")
    for name in ("GEMINI_API_KEY", "GOOGLE_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    [key] = pf.check_gemini(config)
    assert "no Gemini API key" in key.text and "secrets.env" in key.text

    assert pf.check_output(str(tmp_path / "out" / "deeper"), need=1000) == []
    [room] = pf.check_output(str(tmp_path), need=10**18)
    assert "GB free, the run may need 1000000000.0 GB" in room.text

    assert pf.check_slurm("meddpo-test") == []
    assert "export SBATCH_ACCOUNT" in pf.check_slurm("$SBATCH_ACCOUNT")[0].text
    assert "export SBATCH_ACCOUNT" in pf.check_slurm(None)[0].text


def test_preflight_of_the_real_config_prints_jobs_and_cost(tmp_path):
    run = _meddpo("preflight")
    lines = run.stdout.splitlines()
    assert lines[0] == (
        "meddpo preflight: 10000 questions, 500 per shard; jobs: questions 1, shard 20, rejected 20, "
        "chosen_local 20, pairs 20, merge_pairs 1, finalize 1, validate 1"
    )
    assert lines[1] == (
        "meddpo preflight: time limit per shard job (first try; each retry asks for more): "
        "rejected 35 min, chosen_local 65 min"
    )
    # 10,000 x (512 + 1536) tokens at 1,500 tokens/s, plus 40 model loads of 2 minutes
    assert lines[2].startswith("meddpo preflight: GPU-hours at most 5.1 (rejected 1.61, chosen_local 3.51)")
    gemini = tmp_path / "gemini.yaml"
    gemini.write_text("teacher:\n  backend: gemini\n")
    run = _meddpo("preflight", "--configfile", str(gemini), env={**os.environ, "GEMINI_API_KEY": "k"})
    # 10,000 x (~134 prompt tokens x $0.30 + 4,096 output tokens x $2.50) per million
    assert "meddpo preflight: Gemini at most $102.80 (every answer at max_output_tokens)" in run.stdout
    assert "GPU-hours at most 1.6 (rejected 1.61)" in run.stdout


def test_preflight_with_a_bad_profile_account_fails(tmp_path):
    profile = tmp_path / "profile"
    profile.mkdir()
    (profile / "config.yaml").write_text(
        yaml.safe_dump({"executor": "slurm", "default-resources": {"slurm_account": "'$SBATCH_ACCOUNT'"}})
    )
    env = {k: v for k, v in os.environ.items() if k != "SBATCH_ACCOUNT"}
    env["PYTHONPATH"] = str(REPO / "workflow")
    run = _meddpo("preflight", "--configfile", "demo/config.yaml", "--profile", str(profile), env=env)
    assert run.returncode == 2
    assert "meddpo preflight: error: no Slurm account: export SBATCH_ACCOUNT=" in run.stdout
    run = _meddpo(
        "preflight",
        "--configfile",
        "demo/config.yaml",
        "--profile",
        str(profile),
        env={**env, "SBATCH_ACCOUNT": "x"},
    )
    assert run.returncode == 0, run.stdout


@pytest.mark.slow
def test_the_workflow_stops_before_any_job_when_a_model_is_missing(tmp_path):
    workdir = _copy_workflow(tmp_path / "wf")
    overlay = tmp_path / "missing.yaml"
    overlay.write_text(
        "demo:\n  build_tiny_models: false\nrejected:\n  model: /nowhere/tiny-mistral\n"
        "teacher:\n  local:\n    model: /nowhere/tiny-qwen2\n"
    )
    run = subprocess.run(
        [*SNAKEMAKE, "--cores", "2", "--configfile", "demo/config.yaml", str(overlay)],
        cwd=workdir,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 2
    errors = [line for line in run.stderr.splitlines() if "error:" in line]
    assert errors == [
        "meddpo preflight: error: rejected.model /nowhere/tiny-mistral: no such folder; point rejected.model "
        "at a checkpoint folder or a hub id",
        "meddpo preflight: error: teacher.local.model /nowhere/tiny-qwen2: no such folder; point "
        "teacher.local.model at a checkpoint folder or a hub id",
        # the demo's judges use the tiny models too, which this run does not build
        "meddpo preflight: error: judge.classifier.model results/demo/models/tiny-mistral: no such folder; "
        "point judge.classifier.model at a checkpoint folder or a hub id",
        "meddpo preflight: error: judge.local.model results/demo/models/tiny-mistral: no such folder; "
        "point judge.local.model at a checkpoint folder or a hub id",
    ]
    assert not (workdir / "results").exists(), "a job ran before the preflight stopped the run"


# --------------------------------------------------------------------------- one-line errors


def _few_lines(result, limit=3):
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) <= limit, result.stderr
    assert "Traceback" not in result.stderr
    return lines


@pytest.mark.parametrize(
    "args, expected",
    [
        (
            ["shard", "--questions", "QUESTIONS", "--n-shards", "20", "--index", "20", "--out", "/tmp/x"],
            "index 20",
        ),
        (["validate", "missing.jsonl"], "missing.jsonl: no such file"),
        (["validate", "demo/medquad_demo.jsonl"], "not a pairs file"),
        (["report", "--pairs", "demo/medquad_demo.jsonl", "--out-dir", "/tmp/never"], "not a pairs file"),
        (["preflight", "--configfile", "tests/does-not-exist.yaml"], "cannot read the config file"),
    ],
)
def test_errors_a_user_can_fix_end_in_one_line(args, expected, tmp_path):
    questions = tmp_path / "questions.jsonl"
    write_jsonl(questions, [{"id": f"q{i}", "question": f"Question {i} here?"} for i in range(40)])
    result = _meddpo(*[str(questions) if word == "QUESTIONS" else word for word in args])
    assert result.returncode == 2
    [line] = _few_lines(result, limit=1)
    assert line.startswith(f"meddpo {args[0]}: error: ") and expected in line


def test_a_broken_config_file_names_the_file_and_line(tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text("questions:\n  n: [1, 2\n  seed: 3\n")
    result = _meddpo("preflight", "--configfile", str(broken))
    assert result.returncode == 2
    [line] = _few_lines(result, limit=1)
    assert f"{broken}, line 3: not valid YAML" in line


@pytest.mark.parametrize(
    "override, expected",
    [
        (["--config", "n_shard=3"], "config key n_shard: unknown key"),
        (["--configfile", "BAD"], "config key questions.selection: 'newest' is not allowed"),
    ],
)
def test_a_config_mistake_in_snakemake_is_a_few_lines(tmp_path, override, expected):
    workdir = _copy_workflow(tmp_path / "wf")
    bad = tmp_path / "bad.yaml"
    bad.write_text("questions:\n  selection: newest\n")
    override = [str(bad) if word == "BAD" else word for word in override]
    result = subprocess.run(
        [*SNAKEMAKE, "-n", *override], cwd=workdir, env=_env(), capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 2
    lines = _few_lines(result)
    assert any(expected in line for line in lines), lines
    if "BAD" not in override:
        return
    assert any(f"(set in {bad})" in line for line in lines)


def test_ctrl_c_ends_a_step_quietly(tmp_path, tiny_mistral):
    shard = tmp_path / "shard.jsonl"
    write_jsonl(shard, [{"id": f"q{i}", "question": f"What causes condition {i} ?"} for i in range(400)])
    store = tmp_path / "store"
    job = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "meddpo",
            "generate",
            "--shard",
            str(shard),
            "--out",
            str(tmp_path / "out.jsonl"),
        ]
        + [
            "--model",
            str(tiny_mistral),
            "--max-new-tokens",
            "32",
            "--temperature",
            "0.7",
            "--batch-size",
            "2",
        ]
        + ["--system-prompt", "Be brief.", "--store", str(store)],
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not any(store.glob("*/*/out.jsonl")):
        time.sleep(0.05)
    job.send_signal(signal.SIGINT)
    _, stderr = job.communicate(timeout=60)
    assert job.returncode == 130
    assert "Traceback" not in stderr
    assert stderr.strip().splitlines()[-1] == (
        "meddpo generate: interrupted; what was finished is kept (rerun to go on)"
    )


# --------------------------------------------------------------------------- model loads, GPUs, venv


def test_a_shard_fully_in_the_store_is_finished_without_loading_its_model(
    tmp_path, tiny_mistral, monkeypatch, caplog
):
    from meddpo import local_generation

    questions = [{"id": f"s{i}", "question": f"Is remedy {i} safe ?"} for i in range(5)]
    settings = {"model": str(tiny_mistral), "max_new_tokens": 4, "temperature": 0.7, "batch_size": 2}
    first = local_generation.answer_shard(questions, settings, system_prompt="Be brief.", store_root=tmp_path)

    def no_loading(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(local_generation, "LocalGenerator", no_loading)
    caplog.set_level("INFO", logger="meddpo")
    again = local_generation.answer_shard(questions, settings, system_prompt="Be brief.", store_root=tmp_path)
    assert again == first
    assert "every answer of the shard is in the answer store: the model is not loaded" in caplog.text


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


@pytest.mark.slow
def test_the_venvs_snakemake_runs_the_demo_one_gpu_job_at_a_time_and_status_reports_it(tmp_path):
    workdir = _copy_workflow(tmp_path / "wf")
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    env["PATH"] = "/usr/local/bin:/usr/bin:/bin"  # the venv is not activated
    snakemake = Path(sys.executable).parent / "snakemake"
    run = subprocess.run(
        [str(snakemake), "--cores", "2", *DEMO],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    log = run.stdout + run.stderr
    assert "meddpo preflight: " in log  # the preflight ran first
    # the default profile's gpu=1: with 2 cores, the 6 generation jobs still ran one at a time
    assert most_generation_jobs_at_once(log) == 1

    status = _meddpo("status", "--configfile", "demo/config.yaml", cwd=workdir)
    assert status.returncode == 0, status.stderr
    assert status.stdout.splitlines()[-2:] == [
        "rejected: 63/63 answered; 3 of 3 shard files written",
        "chosen: 63/63 answered; 3 of 3 shard files written",
    ]
    assert "rejected  shard-001  21/21 answered  done" in status.stdout
    card = (workdir / "results" / "demo" / "dataset" / "README.md").read_text()
    assert "Demo data: the answers are noise." in card


def test_a_rerun_of_the_dataset_step_alone_needs_no_model_or_key(tmp_path, monkeypatch):
    config = load_config([], base=REPO / "config.yaml")
    config["rejected"]["model"] = str(tmp_path / "gone")
    config["output"]["dir"] = str(tmp_path / "results")
    assert any("rejected.model" in f.text for f in pf.preflight(config))
    assert not any("model" in f.text for f in pf.preflight(config, pending={"finalize", "validate", "all"}))
