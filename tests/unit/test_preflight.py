"""Fail fast: the preflight, one-line errors, one GPU job at a time, jobs without an activated venv,
no model load for a shard that is already answered, and `meddpo status`."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import DEMO_FILES, REPO, few_lines, meddpo
from meddpo.jsonl import write_jsonl
from meddpo.planning.checks import load_config
from meddpo.preflight import run as pf
from meddpo.preflight.hub import check_model, check_source
from meddpo.preflight.machine import Finding, check_gemini, check_output, check_slurm

# --------------------------------------------------------------------------- the checks


def test_a_model_folder_must_hold_a_full_checkpoint(tmp_path, tiny_mistral):
    assert check_model("rejected.model", {"model": str(tiny_mistral)}) == []
    missing = tmp_path / "nope"
    assert [str(f) for f in check_model("rejected.model", {"model": str(missing)})] == [
        f"error: rejected.model {missing}: no such folder; point rejected.model at a checkpoint folder "
        "or a hub id"
    ]
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / "config.json").write_text("{}")
    (partial / "tokenizer.json").write_text("{}")
    (partial / "tokenizer_config.json").write_text('{"bos_token": "<s>"}')
    [finding] = check_model("teacher.local.model", {"model": str(partial)})
    assert finding.level == "error"
    assert (
        "has no a chat template, weights (model.safetensors, a shard index or pytorch_model.bin)"
        in finding.text
    )
    # the demo builds its models during the run: nothing to check beforehand
    assert check_model("rejected.model", {"model": str(missing)}, built_by_run=True) == []


@pytest.fixture
def empty_hf_cache(tmp_path, monkeypatch):
    """An empty Hugging Face home: nothing is cached."""
    for name in ("HF_HUB_CACHE", "HF_DATASETS_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    return tmp_path / "hf-home" / "hub"


@pytest.fixture
def fake_hub(monkeypatch):
    """A local HTTP server as HF_ENDPOINT that answers every HEAD with ``fake_hub.status``."""
    import http.server
    import threading

    class Hub(http.server.BaseHTTPRequestHandler):
        status = 200
        paths: list[str] = []

        def do_HEAD(self):
            Hub.paths.append(self.path)
            self.send_response(Hub.status)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.server_address[1]}")
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.setenv(name, "0")
    yield Hub
    server.shutdown()


def test_a_hub_model_must_be_in_the_cache_when_offline(tmp_path, tiny_qwen, monkeypatch, empty_hf_cache):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    settings = {"model": "Qwen/Qwen2.5-7B-Instruct", "revision": None}
    assert [str(f) for f in check_model("teacher.local.model", settings)] == [
        "error: teacher.local.model Qwen/Qwen2.5-7B-Instruct: not in the Hugging Face cache "
        f"{empty_hf_cache} and HF_HUB_OFFLINE is set; download it on a login node into HF_HOME first "
        "(hf download Qwen/Qwen2.5-7B-Instruct) or point teacher.local.model at a checkpoint folder"
    ]
    # transformers' own variable counts too, and is named
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    [finding] = check_model("teacher.local.model", settings)
    assert "and TRANSFORMERS_OFFLINE is set;" in finding.text
    # the layout huggingface_hub writes: refs/main names the snapshot
    repo = empty_hf_cache / "models--Qwen--Qwen2.5-7B-Instruct"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("abc123")
    snapshot = repo / "snapshots" / "abc123"
    snapshot.parent.mkdir()
    os.symlink(tiny_qwen, snapshot)
    assert check_model("teacher.local.model", settings) == []


def test_a_hub_id_not_cached_must_be_reachable_online(empty_hf_cache, fake_hub, monkeypatch):
    settings = {"model": "mistralai/Mistral-7B-Instruct-v0.2", "revision": None}
    [online] = check_model("rejected.model", settings)
    assert online.level == "warning" and "every job would download it" in online.text
    assert fake_hub.paths == ["/mistralai/Mistral-7B-Instruct-v0.2/resolve/main/config.json"]
    fake_hub.status = 401
    [gated] = check_model("rejected.model", settings)
    assert gated.level == "error" and "answers 401 (gated or private)" in gated.text
    fake_hub.status = 404
    assert check_source({"dataset": "someone/no-such-set", "revision": None}) == [
        Finding(
            "error",
            f"source.dataset someone/no-such-set: {os.environ['HF_ENDPOINT']} has no such dataset (404) "
            "at revision main; check the id and revision",
        )
    ]
    fake_hub.status = 200
    assert check_source({"dataset": "lavita/MedQuAD", "revision": None}) == []
    # no network: a closed port
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    [unreachable] = check_model("rejected.model", settings)
    assert unreachable.level == "error"
    assert (
        f"not in the Hugging Face cache {empty_hf_cache} and http://127.0.0.1:9 cannot be reached "
        "(Connection refused); download it on a login node" in unreachable.text
    )


def test_a_hub_dataset_offline_names_the_variable(empty_hf_cache, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    assert [str(f) for f in check_source({"dataset": "lavita/MedQuAD", "revision": None})] == [
        "error: source.dataset lavita/MedQuAD: a hub id not in the Hugging Face cache, and "
        "HF_DATASETS_OFFLINE is set; copy the dataset to this machine and point source.dataset at the "
        ".parquet/.jsonl/.csv file"
    ]
    # a copy in the datasets library's cache is enough
    (empty_hf_cache.parent / "datasets" / "lavita___MedQuAD").mkdir(parents=True)
    assert check_source({"dataset": "lavita/MedQuAD", "revision": None}) == []


# --------------------------------------------------------------------------- what the jobs will read


def _copy_model(source: Path, target: Path) -> Path:
    import shutil

    shutil.copytree(source, target)
    return target


def test_broken_weights_are_found_from_their_headers(tmp_path, tiny_mistral):
    weights = "model.safetensors"
    assert (tiny_mistral / weights).is_file()
    empty = _copy_model(tiny_mistral, tmp_path / "empty")
    (empty / weights).write_bytes(b"")
    assert [str(f) for f in check_model("rejected.model", {"model": str(empty)})] == [
        f"error: rejected.model {empty}: {empty}/{weights}: empty file (0 bytes); "
        "copy or download the checkpoint again"
    ]
    data = (tiny_mistral / weights).read_bytes()
    header_length = int.from_bytes(data[:8], "little")
    garbled = _copy_model(tiny_mistral, tmp_path / "garbled")
    (garbled / weights).write_bytes(data[:8] + b"#" * header_length + data[8 + header_length :])
    [finding] = check_model("rejected.model", {"model": str(garbled)})
    assert finding.text.endswith(
        f"{garbled}/{weights}: the safetensors header is not valid JSON (corrupt file); "
        "copy or download the checkpoint again"
    )
    cut = _copy_model(tiny_mistral, tmp_path / "cut")
    (cut / weights).write_bytes(data[: len(data) - 1000])
    [finding] = check_model("rejected.model", {"model": str(cut)})
    assert f"{cut}/{weights}: tensor " in finding.text and "the file is cut short" in finding.text
    short = _copy_model(tiny_mistral, tmp_path / "short")
    (short / weights).write_bytes(data[:100])
    [finding] = check_model("rejected.model", {"model": str(short)})
    assert f"its header claims {header_length} bytes, the file has 100" in finding.text
    # the unharmed checkpoint, tokenizer loaded, passes
    assert check_model("rejected.model", {"model": str(tiny_mistral)}) == []


def test_a_sharded_checkpoint_missing_a_shard_is_found(tmp_path, tiny_mistral):
    import json

    from safetensors.torch import load_file, save_file

    sharded = _copy_model(tiny_mistral, tmp_path / "sharded")
    tensors = load_file(sharded / "model.safetensors")
    (sharded / "model.safetensors").unlink()
    names = sorted(tensors)
    half = len(names) // 2
    weight_map = {}
    for number, part in enumerate((names[:half], names[half:]), 1):
        shard = f"model-0000{number}-of-00002.safetensors"
        save_file(
            {name: tensors[name].contiguous() for name in part}, sharded / shard, metadata={"format": "pt"}
        )
        weight_map.update(dict.fromkeys(part, shard))
    (sharded / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": weight_map})
    )
    assert check_model("rejected.model", {"model": str(sharded)}) == []
    # a .bin shard index beside them (model repos ship both) is not what the loader reads
    (sharded / "pytorch_model.bin.index.json").write_text(
        json.dumps(
            {"metadata": {}, "weight_map": {name: "pytorch_model-00001-of-00001.bin" for name in names}}
        )
    )
    assert check_model("rejected.model", {"model": str(sharded)}) == []
    (sharded / "model-00002-of-00002.safetensors").unlink()
    assert [str(f) for f in check_model("rejected.model", {"model": str(sharded)})] == [
        f"error: rejected.model {sharded}: {sharded}/model-00002-of-00002.safetensors: missing; "
        f"the shard index model.safetensors.index.json lists it for {len(names) - half} tensor(s); "
        "copy or download the checkpoint again"
    ]


def test_torch_bin_weights_old_and_new_formats_pass_and_a_cut_one_is_found(tmp_path):
    import torch

    from meddpo.generation.checkpoints import checkpoint_problems

    tensors = {"w": torch.zeros(64, 64)}
    new, old = tmp_path / "new", tmp_path / "old"
    for folder, zipped in ((new, True), (old, False)):
        folder.mkdir()
        torch.save(tensors, folder / "pytorch_model.bin", _use_new_zipfile_serialization=zipped)
        assert checkpoint_problems(folder) == []
    data = (new / "pytorch_model.bin").read_bytes()
    (new / "pytorch_model.bin").write_bytes(data[: len(data) // 2])
    assert checkpoint_problems(new) == [
        f"{new}/pytorch_model.bin: not a readable zip archive (torch's weight format), so cut short or "
        "corrupt; copy or download the checkpoint again (or convert an old torch file to safetensors)"
    ]


def test_a_broken_tokenizer_is_found(tmp_path, tiny_mistral):
    broken = _copy_model(tiny_mistral, tmp_path / "tokenizer")
    (broken / "tokenizer.json").write_text("{not json")
    [finding] = check_model("judge.local.model", {"model": str(broken)})
    assert finding.text.startswith(f"judge.local.model {broken}: the tokenizer does not load (")


def _unwritable(folder: Path) -> Path:
    """A store path no job can write to, for root too (whom a mode does not stop): under a file."""
    if os.geteuid() == 0:
        folder.parent.mkdir(parents=True, exist_ok=True)
        folder.write_text("a file where the folder should be\n")
        return folder
    folder.mkdir(parents=True)
    folder.chmod(0o555)
    return folder


def test_a_store_that_cannot_be_written_stops_the_preflight(tmp_path):
    out = tmp_path / "results"
    overlay = tmp_path / "out.yaml"
    overlay.write_text(yaml.safe_dump({"output": {"dir": str(out)}}))  # the demo's models follow it
    config = load_config([*DEMO_FILES, overlay], base=REPO / "config.yaml")
    assert not [f for f in pf.preflight(config) if "store" in f.text or "output.dir" in f.text]
    assert not out.exists(), "the probe left folders behind"
    store = _unwritable(out / "answer_store")
    reason = "File exists" if os.geteuid() == 0 else "Permission denied"
    errors = [str(f) for f in pf.preflight(config) if f.level == "error"]
    assert errors == [
        f"error: answer store {store}: cannot write there ({reason}); make it writable or point output.dir "
        "at a writable folder"
    ]


def test_the_answer_store_on_a_read_only_parent_is_one_line(tmp_path, tiny_mistral):
    from meddpo.errors import UserError
    from meddpo.generation.answer_store import AnswerStore

    parent = tmp_path / "parent"
    parent.write_text("not a folder\n")
    store = AnswerStore(parent / "answer_store", {"model": "m", "max_new_tokens": 4}, "shard-000")
    reason = "Not a directory"
    with pytest.raises(UserError) as caught:
        store.lock()
    assert str(caught.value) == (
        f"{store.folder}: cannot make this store folder ({reason}); make the store's parent folder writable, "
        "or point the store (output.dir in the workflow) at a writable place"
    )

    shard = tmp_path / "shard.jsonl"
    write_jsonl(shard, [{"id": "q1", "question": "Is it safe to take two aspirin at once?"}])
    out = tmp_path / "answers.jsonl"
    run = meddpo(
        "generate",
        "--shard",
        str(shard),
        "--out",
        str(out),
        "--model",
        str(tiny_mistral),
        "--system-prompt",
        "Be brief.",
        "--max-new-tokens",
        "4",
        "--temperature",
        "0.7",
        "--store",
        str(parent / "answer_store"),
    )
    assert run.returncode == 2
    [line] = few_lines(run, limit=1)
    assert line.startswith(f"meddpo generate: error: {parent}/answer_store/")
    assert line.endswith(
        f": cannot make this store folder ({reason}); make the store's parent folder "
        "writable, or point the store (output.dir in the workflow) at a writable place"
    )
    assert not out.exists()


def test_meddpo_generate_by_hand_checks_its_checkpoint_before_loading_it(tmp_path, tiny_mistral):
    shard = tmp_path / "shard.jsonl"
    write_jsonl(shard, [{"id": "q1", "question": "Is it safe to take two aspirin at once?"}])
    empty = _copy_model(tiny_mistral, tmp_path / "empty")
    (empty / "model.safetensors").write_bytes(b"")
    cases = {
        str(empty): f"--model {empty}: {empty}/model.safetensors: empty file (0 bytes); "
        "copy or download the checkpoint again",
        str(tmp_path / "nowhere"): f"--model {tmp_path}/nowhere: no such folder; "
        "point --model at a checkpoint folder or a hub id",
    }
    for model, says in cases.items():
        out = tmp_path / "answers.jsonl"
        run = meddpo(
            "generate",
            *("--shard", str(shard), "--out", str(out), "--model", model),
            *("--system-prompt", "Be brief.", "--max-new-tokens", "4", "--temperature", "0.7"),
            *("--store", str(tmp_path / "store")),
        )
        assert run.returncode == 2
        assert few_lines(run, limit=1) == [f"meddpo generate: error: {says}"]
        assert not out.exists()


def test_a_local_source_with_no_usable_question_stops_the_preflight(tmp_path):
    numbers = tmp_path / "numbers.jsonl"
    write_jsonl(numbers, [{"question": 1000 + i, "question_type": "dosage"} for i in range(5)])
    questions = {"min_chars": 10, "max_chars": 2000}
    assert [str(f) for f in check_source({"dataset": str(numbers), "split": "train"}, questions)] == [
        f"error: source.dataset {numbers}: no questions in it (5 rows, none survives cleaning); point "
        "source.dataset at a file with a 'question' column of text"
    ]


def test_the_demo_plan_counts_its_63_questions():
    run = meddpo("preflight", "--configfile", *DEMO_FILES)
    assert run.returncode == 0, run.stdout + run.stderr
    lines = run.stdout.splitlines()
    assert lines[0].startswith(
        "meddpo preflight: 63 questions (questions.n is null: all that survive cleaning of the 66 rows "
        "of demo/medquad_demo.jsonl), 21 per shard; jobs: "
    )
    # 15 minutes of start-up plus 21 questions at the per-rule rates
    assert lines[1] == (
        "meddpo preflight: time limit per shard job (first try; each retry asks for more): "
        "rejected 16 min, chosen_local 18 min, judge_classifier 16 min, judge_rubric_local 16 min"
    )
    assert lines[2].startswith("meddpo preflight: GPU-hours at most 0.4 (")
    # the verdict comes last (it used to end on the cost lines, without one)
    assert lines[-1] == "meddpo preflight: all checks passed: 23 jobs in the whole run, at most 0.4 GPU-hours"


def test_the_preflight_ends_with_a_verdict(tmp_path):
    gemini = tmp_path / "gemini.yaml"
    gemini.write_text(
        "teacher:\n  backend: gemini\n  gemini:\n    mode: batch\nrejected:\n  model: demo:tiny-mistral\n"
        "judge:\n  kinds: []\n"
    )
    # Gemini cannot be asked whether the model exists (a closed port): a warning, counted in the verdict
    closed = {"GEMINI_API_KEY": "k", "GOOGLE_GEMINI_BASE_URL": "http://127.0.0.1:9"}
    run = meddpo("preflight", "--configfile", *DEMO_FILES, str(gemini), env={**os.environ, **closed})
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.splitlines()[-1] == (
        "meddpo preflight: all checks passed (1 warning above): 15 jobs in the whole run, at most 0.1 "
        "GPU-hours, at most $0.32 of Gemini"
    )
    # and with a problem, the count of problems
    missing = tmp_path / "missing.yaml"
    missing.write_text("rejected:\n  model: /nowhere/model\n")
    run = meddpo("preflight", "--configfile", *DEMO_FILES, str(missing))
    assert run.returncode == 2
    assert run.stdout.splitlines()[-1] == "meddpo preflight: 1 problem(s): nothing was started"


def test_the_judge_checks_its_model_and_pairs_before_reading_a_pair(tmp_path, empty_hf_cache):
    pairs = tmp_path / "pairs.jsonl"
    write_jsonl(pairs, [{"id": "p1", "question": "Q?", "chosen": "a", "rejected": "b", "meta": {}}])
    classifier = json.dumps({"model": "meta-llama/Llama-Guard-3-1B", "max_new_tokens": 8, "temperature": 0})
    common = ["--kind", "classifier", "--classifier", classifier, "--base-config", "none"]
    env = {**os.environ, "PYTHONPATH": str(REPO / "workflow")}
    out = tmp_path / "verdicts.jsonl"
    run = meddpo("judge", "--pairs", str(pairs), *common, "--out", str(out), env=env)
    assert run.returncode == 2
    [line] = few_lines(run, limit=1)
    assert line == (
        f"meddpo judge: error: judge.classifier.model meta-llama/Llama-Guard-3-1B: not in the Hugging Face "
        f"cache {empty_hf_cache} and HF_HUB_OFFLINE is set; download it on a login node into HF_HOME first "
        "(hf download meta-llama/Llama-Guard-3-1B) or point judge.classifier.model at a checkpoint folder"
    )
    missing = tmp_path / "missing.jsonl"
    run = meddpo("judge", "--pairs", str(missing), *common, "--out", str(out), env=env)
    assert run.returncode == 2
    [line] = few_lines(run, limit=1)
    assert line.startswith(
        f"meddpo judge: error: pairs file {missing}: no such file; judge.classifier.model "
    )
    assert not out.exists()


def test_source_key_output_and_account_checks(tmp_path, monkeypatch):
    assert check_source({"dataset": str(REPO / "demo" / "medquad_demo.jsonl")}) == []
    [missing] = check_source({"dataset": str(tmp_path / "medquad.parquet")})
    assert "no such file" in missing.text
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    [hub] = check_source({"dataset": "lavita/MedQuAD"})
    assert "and HF_HUB_OFFLINE is set" in hub.text

    config = load_config(DEMO_FILES, base=REPO / "config.yaml")
    config["teacher"]["backend"] = "gemini"
    config["teacher"]["gemini"]["secrets_file"] = str(tmp_path / "secrets.env")
    for name in ("GEMINI_API_KEY", "GOOGLE_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    [key] = check_gemini(config)
    assert "no Gemini API key" in key.text and "secrets.env" in key.text

    assert check_output(str(tmp_path / "out" / "deeper"), need=1000) == []
    [room] = check_output(str(tmp_path), need=10**18)
    assert "GB free, the run may need 1000000000.0 GB" in room.text

    assert check_slurm("meddpo-test") == []
    assert "export SBATCH_ACCOUNT" in check_slurm("$SBATCH_ACCOUNT")[0].text
    assert "export SBATCH_ACCOUNT" in check_slurm(None)[0].text


def test_preflight_of_the_real_config_prints_jobs_and_cost(tmp_path):
    run = meddpo("preflight")
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
    # Gemini cannot be asked whether the model exists (a closed port here): a warning, not a stop
    closed = {"GEMINI_API_KEY": "k", "GOOGLE_GEMINI_BASE_URL": "http://127.0.0.1:9"}
    run = meddpo("preflight", "--configfile", str(gemini), env={**os.environ, **closed})
    [warning] = [line for line in run.stdout.splitlines() if "warning" in line and "Gemini" in line]
    assert warning.startswith(
        "meddpo preflight: warning: teacher.gemini.model: could not ask Gemini whether gemini-2.5-flash "
        "exists (the request to Gemini failed on its way: ConnectError:"
    ) and warning.endswith("); the run goes on")
    # 10,000 x (~134 prompt tokens x $0.30 + 4,096 output tokens x $2.50) per million
    assert (
        "meddpo preflight: Gemini at most $102.80 online, $51.40 in batch mode "
        "(every answer at max_output_tokens)" in run.stdout
    )
    assert "GPU-hours at most 1.6 (rejected 1.61)" in run.stdout


def test_preflight_with_a_bad_profile_account_fails(tmp_path):
    profile = tmp_path / "profile"
    profile.mkdir()
    (profile / "config.yaml").write_text(
        yaml.safe_dump({"executor": "slurm", "default-resources": {"slurm_account": "'$SBATCH_ACCOUNT'"}})
    )
    env = {k: v for k, v in os.environ.items() if k != "SBATCH_ACCOUNT"}
    env["PYTHONPATH"] = str(REPO / "workflow")
    run = meddpo("preflight", "--configfile", *DEMO_FILES, "--profile", str(profile), env=env)
    assert run.returncode == 2
    assert "meddpo preflight: error: no Slurm account: export SBATCH_ACCOUNT=" in run.stdout
    run = meddpo(
        "preflight",
        "--configfile",
        *DEMO_FILES,
        "--profile",
        str(profile),
        env={**env, "SBATCH_ACCOUNT": "x"},
    )
    assert run.returncode == 0, run.stdout


# --------------------------------------------------------------------------- one-line errors


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
    result = meddpo(*[str(questions) if word == "QUESTIONS" else word for word in args])
    assert result.returncode == 2
    [line] = few_lines(result, limit=1)
    assert line.startswith(f"meddpo {args[0]}: error: ") and expected in line


def test_a_broken_config_file_names_the_file_and_line(tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text("questions:\n  n: [1, 2\n  seed: 3\n")
    result = meddpo("preflight", "--configfile", str(broken))
    assert result.returncode == 2
    [line] = few_lines(result, limit=1)
    assert line == (
        f"meddpo preflight: error: {broken}, line 3, column 7: not valid YAML "
        "(expected ',' or ']', but got ':')"
    )


@pytest.mark.slow
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
    from meddpo.backends import JobContext, Request, answer_shard
    from meddpo.generation import transformers_engine

    questions = [{"id": f"s{i}", "question": f"Is remedy {i} safe ?"} for i in range(5)]
    settings = {"model": str(tiny_mistral), "engine": "padded", "max_new_tokens": 4, "temperature": 0.7}
    first = answer_shard(settings, questions, Request("Be brief."), JobContext(store_root=tmp_path))

    def no_loading(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(transformers_engine, "LocalGenerator", no_loading)
    caplog.set_level("INFO", logger="meddpo")
    again = answer_shard(settings, questions, Request("Be brief."), JobContext(store_root=tmp_path))
    assert again == first
    assert "every answer of the shard is in the answer store: the model is not loaded" in caplog.text


def test_a_rerun_of_the_dataset_step_alone_needs_no_model_or_key(tmp_path, monkeypatch):
    config = load_config([], base=REPO / "config.yaml")
    config["rejected"]["model"] = str(tmp_path / "gone")
    config["output"]["dir"] = str(tmp_path / "results")
    assert any("rejected.model" in f.text for f in pf.preflight(config))
    assert not any("model" in f.text for f in pf.preflight(config, pending={"finalize", "validate", "all"}))


def test_a_gemini_model_without_a_price_stops_the_preflight_in_one_line(tmp_path):
    from meddpo.planning.plan import estimate, render_estimate
    from meddpo.preflight.machine import check_prices

    overlay = tmp_path / "new-model.yaml"
    overlay.write_text("teacher:\n  backend: gemini\n  gemini: {model: gemini-3-flash}\n")
    config = load_config([overlay], base=REPO / "config.yaml")
    assert [str(finding) for finding in check_prices(config)] == [
        "error: teacher.gemini.model: gemini_prices has no price for gemini-3-flash: add "
        "gemini_prices.gemini-3-flash with input_per_million, output_per_million, batch_input_per_million, "
        "batch_output_per_million, written (USD per million tokens, and the day you looked them up)"
    ]
    plan = estimate(config)
    assert plan["gemini_usd_at_most"] is None
    assert (
        "Gemini: no dollar estimate, gemini_prices has no price for the teacher's model"
        in render_estimate(plan)
    )
    # its price written down: the estimate is back, at those prices
    overlay.write_text(
        overlay.read_text()
        + "gemini_prices:\n  gemini-3-flash: {input_per_million: 0.5, output_per_million: 3.0,"
        " batch_input_per_million: 0.25, batch_output_per_million: 1.5, written: '2026-12-06'}\n"
    )
    config = load_config([overlay], base=REPO / "config.yaml")
    assert check_prices(config) == []
    assert sorted(config["gemini_prices"]) == ["gemini-2.5-flash", "gemini-3-flash"]  # the default stays
    # 10,000 x (~134 prompt tokens x $0.50 + 4,096 output tokens x $3.00) per million
    plan = estimate(config)
    assert (plan["gemini_usd_at_most"], plan["gemini_batch_usd_at_most"]) == (123.55, 61.77)


def test_a_config_that_still_sets_a_price_in_a_gemini_block_says_where_it_moved_in_one_line(tmp_path):
    from meddpo.config.settings import ConfigError

    overlay = tmp_path / "old.yaml"
    overlay.write_text("judge:\n  gemini:\n    batch_price_output_per_million: 1.25\n")
    with pytest.raises(ConfigError) as stopped:
        load_config([overlay], base=REPO / "config.yaml")
    assert str(stopped.value) == (
        f"config key judge.gemini.batch_price_output_per_million (set in {overlay}): prices now live per "
        "model: move it to gemini_prices.gemini-2.5-flash.batch_output_per_million, beside "
        "input_per_million, output_per_million, batch_input_per_million, written (written: the day you "
        "looked them up)"
    )


def test_the_preflight_asks_gemini_whether_the_models_exist_and_names_a_retired_one_in_one_line(tmp_path):
    from meddpo.testing.gemini_server import GeminiTestServer

    overlay = tmp_path / "retired.yaml"
    overlay.write_text(
        "teacher:\n  backend: gemini\n  gemini: {model: gemini-1.5-flash}\n"
        "judge:\n  kinds: [rubric]\n  backend: gemini\n"
        "gemini_prices:\n  gemini-1.5-flash: {input_per_million: 0.075, output_per_million: 0.3,"
        " batch_input_per_million: 0.0375, batch_output_per_million: 0.15, written: '2026-12-06'}\n"
    )
    with GeminiTestServer(expected_key="k", known_models={"gemini-2.5-flash"}) as server:
        env = {**os.environ, "GEMINI_API_KEY": "k", "GOOGLE_GEMINI_BASE_URL": server.base_url}
        run = meddpo("preflight", "--configfile", "demo/config.yaml", str(overlay), env=env)
        asked = server.stats()["requests"]
    assert run.returncode == 2
    problems = [line for line in run.stdout.splitlines() if "error:" in line or "warning:" in line]
    assert problems == [
        "meddpo preflight: error: teacher.gemini.model: Gemini has no model gemini-1.5-flash (models.get "
        "answered 404: retired, or not a model name): choose another teacher.gemini.model",
    ]
    assert run.stdout.splitlines()[-1] == "meddpo preflight: 1 problem(s): nothing was started"
    assert asked == 0  # models.get asks nothing that is paid for
