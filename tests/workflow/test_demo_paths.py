"""The demo builds its models only in its own output folder, never over a user's checkpoint.

Snakemake deletes a job's old outputs before it runs the job, so a model path that the demo
builder wrote to would cost the user their checkpoint. The demo's model keys name its models
as demo:<name>, which always means a folder under output.dir (so they follow it); a key that
names a checkpoint of the user's is read as it is, never built. Each case here names a
real-looking checkpoint (outside the project) in an overlay on the demo config and checks that
no job writes it and that every byte of the folder is kept.
"""

import hashlib
import os
import subprocess

import pytest
import yaml

from conftest import DEMO, DEMO_FILES, REPO, SNAKEMAKE, copy_workflow, snakemake_env
from meddpo.config.settings import ConfigError
from meddpo.planning.checks import load_config

pytestmark = pytest.mark.slow  # real Snakemake runs, servers or clusters: seconds to minutes each

OLD = 1_500_000_000  # 2017: older than the demo texts, as a downloaded checkpoint would be


@pytest.fixture
def checkpoint(tmp_path):
    """A folder shaped like a downloaded 7B checkpoint (the bytes are made up)."""
    folder = tmp_path / "models" / "Mistral-7B-Instruct"
    folder.mkdir(parents=True)
    files = {
        "config.json": b'{"architectures": ["MistralForCausalLM"], "model_type": "mistral"}\n',
        "model.safetensors": b"\x08\x00\x00\x00\x00\x00\x00\x00{}      " + bytes(range(256)) * 64,
        "tokenizer.json": b'{"version": "1.0", "model": {"type": "BPE"}}\n',
        "tokenizer_config.json": b'{"bos_token": "<s>", "eos_token": "</s>"}\n',
        "special_tokens_map.json": b'{"bos_token": "<s>"}\n',
    }
    for name, data in files.items():
        (folder / name).write_bytes(data)
        os.utime(folder / name, (OLD, OLD))
    os.utime(folder, (OLD, OLD))
    return folder


def snapshot(folder):
    """Every entry under the folder's parent: path -> (sha256 of the bytes, mtime), folders too."""
    entries = {}
    for root, dirs, files in os.walk(folder.parent):
        for name in dirs + files:
            path = os.path.join(root, name)
            digest = None if os.path.isdir(path) else hashlib.sha256(open(path, "rb").read()).hexdigest()
            entries[os.path.relpath(path, folder.parent)] = (digest, os.stat(path).st_mtime)
    return entries


@pytest.fixture
def project(tmp_path):
    return copy_workflow(tmp_path / "project")


def overlay(tmp_path, settings):
    path = tmp_path / "overlay.yaml"
    path.write_text(yaml.safe_dump(settings))
    return path


def run(project, *args):
    return subprocess.run(
        [*SNAKEMAKE, *args], cwd=project, env=snakemake_env(), capture_output=True, text=True, timeout=300
    )


def meddpo_lines(result):
    return [line for line in result.stderr.splitlines() if line.startswith("meddpo")]


@pytest.mark.parametrize(
    "key, settings",
    [
        ("rejected.model", lambda path: {"rejected": {"model": path}}),
        ("teacher.local.model", lambda path: {"teacher": {"local": {"model": path}}}),
        ("judge.local.model", lambda path: {"judge": {"local": {"model": path}}}),
        ("judge.classifier.model", lambda path: {"judge": {"classifier": {"model": path}}}),
    ],
)
def test_a_checkpoint_named_in_a_demo_overlay_is_read_never_built(
    project, checkpoint, tmp_path, key, settings
):
    settings_file = overlay(tmp_path, settings(str(checkpoint)))
    before = snapshot(checkpoint)

    result = run(project, "-n", "-p", *DEMO, str(settings_file))

    assert result.returncode == 0, result.stdout + result.stderr
    assert str(checkpoint) in result.stdout  # the jobs read it
    outputs = [line for line in result.stdout.splitlines() if line.strip().startswith("output:")]
    assert not any(str(checkpoint) in line for line in outputs)  # no job writes it
    assert snapshot(checkpoint) == before


def test_a_real_run_on_a_broken_checkpoint_stops_before_any_job_and_keeps_every_byte(
    project, checkpoint, tmp_path
):
    settings = overlay(tmp_path, {"rejected": {"model": str(checkpoint)}})
    before = snapshot(checkpoint)

    result = run(project, "--cores", "1", *DEMO, str(settings))

    assert result.returncode == 2, result.stdout + result.stderr
    assert any(line.startswith(f"meddpo preflight: error: rejected.model {checkpoint}") for line in
               result.stderr.splitlines()), result.stderr  # fmt: skip
    assert snapshot(checkpoint) == before
    assert not (project / "results").exists()


def test_a_link_in_the_output_folder_to_a_checkpoint_stops_the_run(project, checkpoint):
    models = project / "results" / "demo" / "models"
    models.mkdir(parents=True)
    (models / "tiny-mistral").symlink_to(checkpoint, target_is_directory=True)
    before = snapshot(checkpoint)

    result = run(project, "--cores", "1", *DEMO)

    real = project.resolve()
    assert result.returncode == 2, result.stdout + result.stderr
    assert meddpo_lines(result) == [
        f"meddpo: rule tiny_models writes results/demo/models/tiny-mistral (which resolves to "
        f"{checkpoint.resolve()}): outside the project folder {real} and output.dir {real}/results/demo; "
        "the workflow writes only under these two, so point output.dir at a folder of its own "
        "(and remove any link that leads out of it)"
    ]
    assert snapshot(checkpoint) == before
    assert sorted(p.name for p in models.iterdir()) == ["tiny-mistral"]


def test_a_demo_model_name_the_demo_does_not_build_is_one_line(project, tmp_path):
    settings = overlay(tmp_path, {"teacher": {"local": {"model": "demo:smollm3"}}})
    expected = (
        f"config key teacher.local.model: 'demo:smollm3' is not a model the demo builds (set in {settings}); "
        "it builds demo:tiny-mistral, demo:tiny-qwen2, demo:smollm2-135m-instruct"
    )
    with pytest.raises(ConfigError) as caught:
        load_config([*(REPO / name for name in DEMO_FILES), settings], base=REPO / "config.yaml")
    assert str(caught.value) == expected
    result = run(project, "-n", *DEMO, str(settings))
    assert result.returncode == 2 and meddpo_lines(result) == [f"meddpo: {expected}"]


def test_moving_the_demos_output_folder_moves_its_models_too(project, tmp_path):
    settings = overlay(tmp_path, {"output": {"dir": "results/demo2"}})
    config = load_config([*(REPO / name for name in DEMO_FILES), settings], base=REPO / "config.yaml")
    models = [
        config["rejected"]["model"],
        config["teacher"]["local"]["model"],
        config["judge"]["local"]["model"],
    ]
    assert models == ["results/demo2/models/tiny-mistral", "results/demo2/models/tiny-qwen2",
                      "results/demo2/models/tiny-mistral"]  # fmt: skip
    real = load_config([REPO / "demo" / "config.yaml", settings], base=REPO / "config.yaml")
    assert real["rejected"]["model"] == "results/demo2/models/smollm2-135m-instruct"
    result = run(project, "-n", "-p", *DEMO, str(settings))
    assert result.returncode == 0, result.stderr
    assert "--mistral-out results/demo2/models/tiny-mistral --qwen-out results/demo2/models/tiny-qwen2" in (
        result.stdout
    )


def test_the_vllm_server_log_is_declared_only_for_jobs_of_engine_vllm(project, tmp_path):
    plain = run(project, "-n", "-p", *DEMO)
    assert plain.returncode == 0, plain.stderr
    assert ".vllm.log" not in plain.stdout and "--server-log" not in plain.stdout
    # the demo builds its models under its own output folder
    assert "--mistral-out results/demo/models/tiny-mistral --qwen-out results/demo/models/tiny-qwen2" in (
        plain.stdout
    )

    served = overlay(tmp_path, {"judge": {"classifier": {"engine": "vllm"}}})
    one = run(project, "-n", "-p", *DEMO, str(served))
    assert one.returncode == 0, one.stderr
    assert "--server-log results/demo/logs/judge/classifier/shard-000.vllm.log" in one.stdout
    assert "log: results/demo/logs/judge/classifier/shard-000.log, " in one.stdout
    # the other jobs, still on transformers, have no server log
    assert one.stdout.count(".vllm.log") == 2 * 3  # log line and command, 3 shards
