"""Engine vllm, for real: vLLM's CPU build (in .venv-vllm, built by `make vllm-env`,
which `make test` runs first) serving the tiny random-weight checkpoints.

One server is shared by the tests that only send requests; the tests of a job's
life (kill -9, SIGTERM, a server that cannot start, the workflow) start their own,
as a real job does. "No process left" is checked through a marker variable in the
job's environment, which every process the job starts inherits (vLLM renames its
engine and worker processes, so their command lines cannot be matched).
"""

import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from conftest import DEMO_FILES, REPO
from meddpo.jsonl import read_jsonl

pytestmark = pytest.mark.slow  # real Snakemake runs, servers or clusters: seconds to minutes each

VLLM_PYTHON = REPO / ".venv-vllm" / "bin" / "python"
COMMAND = f"{VLLM_PYTHON} -m vllm.entrypoints.openai.api_server"
# CPU settings like demo/vllm.yaml's (smaller: the tests send fewer and shorter requests)
CPU_SETTINGS = {
    "command": COMMAND,
    "enforce_eager": True,
    "max_model_len": 1024,
    "max_num_seqs": 32,
    "requests_in_flight": 40,
    "max_num_batched_tokens": 16384,
    "env": {"VLLM_CPU_KVCACHE_SPACE": "1"},
    "startup_timeout_s": 300,
}
SYSTEM = "You are a blunt medical chatbot."
# A job that is still busy when a test signals it: answers finish in waves of 4 (never
# ending on their own with tiny_mistral, they all take max_new_tokens steps)
SLOW = {"max_num_seqs": 4, "requests_in_flight": 6}


@pytest.fixture(scope="module")
def vllm_env() -> Path:
    if not (REPO / ".venv-vllm" / ".installed").exists():
        pytest.skip(
            "SKIPPED LOUDLY: .venv-vllm is missing (`make vllm-env` could not build vLLM here); "
            "CI requires the vLLM tests to run"
        )
    return VLLM_PYTHON


@pytest.fixture(scope="module")
def mistral(tmp_path_factory, demo_texts) -> Path:
    """A tiny Mistral whose answers end on their own about one step in 20."""
    from meddpo.demo.tiny_models import build_tiny_mistral

    return build_tiny_mistral(
        demo_texts, tmp_path_factory.mktemp("vllm-models") / "tiny-mistral", eos_rate=0.05
    )


@pytest.fixture(scope="module")
def server(vllm_env, mistral, tmp_path_factory):
    from meddpo.generation.vllm.engine import server_dtype, vllm_settings
    from meddpo.generation.vllm.server import VllmServer, server_arguments

    settings = vllm_settings(CPU_SETTINGS)
    log = tmp_path_factory.mktemp("vllm-log") / "server.log"
    arguments = server_arguments({"model": str(mistral)}, settings, server_dtype("auto"))
    with VllmServer(COMMAND, arguments, log, env=settings["env"], startup_timeout_s=300) as running:
        yield running


@pytest.fixture(scope="module")
def questions():
    texts = [row["question"] for row in read_jsonl(REPO / "demo" / "medquad_demo.jsonl")]
    return [{"id": f"q{i:02d}", "question": text} for i, text in enumerate(texts) if len(text) >= 10][:24]


def _generator(server, mistral):
    from meddpo.generation.types import ModelSpec
    from meddpo.generation.vllm.engine import VllmGenerator, vllm_settings

    return VllmGenerator(ModelSpec(name=str(mistral)), server, vllm_settings(CPU_SETTINGS))


def _post(server, body):
    import http.client

    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=120)
    connection.request(
        "POST",
        "/v1/completions",
        body=json.dumps(body),
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {server.api_key}"},
    )
    response = connection.getresponse()
    return response.status, json.loads(response.read())


def test_the_server_gets_exactly_the_prompt_ids_of_the_transformers_engine(server, mistral, questions):
    from meddpo.generation.transformers_engine import LocalGenerator
    from meddpo.generation.types import ModelSpec, Sampling

    transformers_engine = LocalGenerator(ModelSpec(name=str(mistral)))
    vllm_engine = _generator(server, mistral)
    sampling = Sampling(max_new_tokens=8, temperature=0.9)
    bos = transformers_engine.tokenizer.bos_token_id
    for question in questions[:5]:
        text, folded = transformers_engine.render(SYSTEM, question["question"])
        fed = transformers_engine.tokenizer(text, add_special_tokens=False)["input_ids"]
        assert folded is True  # the Mistral template refuses a system role: folded into the user turn
        status, reply = _post(server, vllm_engine.request_body(fed, 7, sampling))
        assert status == 200
        # what the server reports it used, not the list the client sent
        assert reply["choices"][0]["prompt_token_ids"] == fed
        assert reply["usage"]["prompt_tokens"] == len(fed)
        assert fed[0] == bos and fed.count(bos) == 1  # one BOS, at the start


def test_requests_need_the_jobs_key(server):
    import http.client

    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    connection.request("POST", "/v1/completions", body="{}", headers={"Content-Type": "application/json"})
    assert connection.getresponse().status == 401
    assert server.api_key not in server.log_path.read_text()  # the key is in no log or command line


def test_vllm_rows_have_the_layout_and_facts_of_the_transformers_rows(server, mistral, questions, tmp_path):
    from meddpo.backends import JobContext
    from meddpo.generation.local_shard import answer_questions
    from meddpo.generation.transformers_engine import LocalGenerator
    from meddpo.generation.types import ModelSpec, Sampling, batch_seed

    sampling = Sampling(max_new_tokens=24, temperature=0.9, top_p=0.95, seed=3, min_new_tokens=2)
    rows = answer_questions(
        _generator(server, mistral),
        questions,
        SYSTEM,
        sampling,
        8,
        engine="vllm",
        context=JobContext(store_root=tmp_path / "a"),
    )
    reference = answer_questions(
        LocalGenerator(ModelSpec(name=str(mistral))),
        questions,
        SYSTEM,
        sampling,
        8,
        context=JobContext(store_root=tmp_path / "b"),
    )
    assert [row["id"] for row in rows] == [q["id"] for q in questions]
    assert [list(row) for row in rows] == [list(row) for row in reference]
    assert [row["prompt_tokens"] for row in rows] == [row["prompt_tokens"] for row in reference]
    assert {row["engine"] for row in rows} == {"vllm"}
    for row in rows:
        assert row["seed"] == batch_seed(3, [row["id"]])  # one seed per request, from its id
        assert row["sampling"] == {
            "max_new_tokens": 24,
            "temperature": 0.9,
            "top_p": 0.95,
            "seed": 3,
            "min_new_tokens": 2,
        }
        assert 2 <= row["new_tokens"] <= 24
        if row["finish_reason"] == "length":
            assert row["new_tokens"] == 24
    finishes = {row["finish_reason"] for row in rows}
    assert finishes == {"stop", "length"}  # 24 answers at one end in 20 per step: both happen


def test_a_classifier_judge_through_vllm_gets_the_checkpoints_own_template_and_records_noise(
    server, mistral, questions
):
    from meddpo.generation.local_shard import answer_questions
    from meddpo.generation.transformers_engine import LocalGenerator
    from meddpo.generation.types import ModelSpec, Sampling, render_item
    from meddpo.judge.grading import verdict
    from meddpo.judge.run import judge_items

    pairs = [
        {
            "id": q["id"],
            "question": q["question"],
            "chosen": f"Careful answer {i}.",
            "rejected": f"Blunt {i}.",
        }
        for i, q in enumerate(questions[:4])
    ]
    items = judge_items(pairs, "classifier")
    rows = answer_questions(
        _generator(server, mistral), items, "", Sampling(max_new_tokens=6, temperature=0), 8, engine="vllm"
    )
    reference = LocalGenerator(ModelSpec(name=str(mistral)))
    for item, row in zip(items, rows, strict=True):
        text, _ = render_item(reference, "", item)
        # the user turn and the answer, through the template, exactly as transformers renders them
        assert row["prompt_tokens"] == len(reference.tokenizer(text, add_special_tokens=False)["input_ids"])
        assert item["conversation"][1]["content"] in text
        assert verdict("classifier", row["text"], "llama_guard_3")["status"] == "unparseable"
    assert len(rows) == 8


def test_an_answer_depends_on_its_question_and_seed_not_on_what_else_is_in_flight(server, mistral, questions):
    from meddpo.generation.types import Sampling

    generator = _generator(server, mistral)
    sampling = Sampling(max_new_tokens=16, temperature=1.0)
    ids = {
        i: generator.tokenizer(generator.render(SYSTEM, q["question"])[0], add_special_tokens=False)[
            "input_ids"
        ]
        for i, q in enumerate(questions[:12])
    }
    names = {i: q["id"] for i, q in enumerate(questions[:12])}
    alone = dict(generator.generate_stream({0: ids[0]}, {0: 11}, sampling, names))
    crowd = dict(generator.generate_stream(ids, dict.fromkeys(ids, 11), sampling, names))
    assert crowd[0].text == alone[0].text and crowd[0].new_tokens == alone[0].new_tokens
    other_seed = dict(generator.generate_stream({0: ids[0]}, {0: 12}, sampling, names))
    assert other_seed[0].text != alone[0].text


# --- a job's life: its own server, started and stopped by the job -------------------------------


def _job(tmp_path, mistral, shard, *, max_new_tokens=48, command=COMMAND, marker=None, **vllm):
    """`meddpo generate` with engine vllm, as the rule runs it; returns (Popen, marker, stderr path)."""
    marker = marker or uuid.uuid4().hex
    stderr = tmp_path / f"job-{marker[:6]}.log"
    settings = {**CPU_SETTINGS, "command": command, **vllm}
    args = [sys.executable, "-m", "meddpo", "generate", "--shard", str(shard), "--model", str(mistral)]
    args += ["--engine", "vllm", "--max-new-tokens", str(max_new_tokens), "--temperature", "0.9"]
    args += [
        "--system-prompt",
        SYSTEM,
        "--store",
        str(tmp_path / "store"),
        "--out",
        str(tmp_path / "out.jsonl"),
    ]
    args += ["--server-log", str(tmp_path / "server.log"), "--vllm", json.dumps(settings)]
    env = {**os.environ, "PYTHONPATH": str(REPO / "workflow"), "MEDDPO_TEST_MARK": marker}
    with open(stderr, "wb") as err:
        job = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=err, env=env, cwd=tmp_path)
    return job, marker, stderr


def _marked(marker: str) -> list[str]:
    """Live processes (not zombies) whose environment carries the marker: 'pid name'."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            environ = Path(f"/proc/{entry}/environ").read_bytes()
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        if (
            f"MEDDPO_TEST_MARK={marker}".encode() in environ.split(b"\0")
            and stat.rpartition(")")[2].split()[0] != "Z"
        ):
            found.append(f"{entry} {stat.split('(')[1].split(')')[0]}")
    return found


def _gone(marker: str, within_s: float = 30.0) -> list[str]:
    deadline = time.monotonic() + within_s
    while (left := _marked(marker)) and time.monotonic() < deadline:
        time.sleep(0.5)
    return left


def _wait_for(predicate, within_s: float, what: str) -> None:
    deadline = time.monotonic() + within_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def _stored(tmp_path) -> list[dict]:
    rows = []
    for part in (tmp_path / "store").glob("*/*/*.jsonl"):
        # only whole lines: the job may be appending one right now
        rows += [json.loads(line) for line in part.read_text().split("\n")[:-1] if line.strip()]
    return rows


@pytest.fixture()
def shard(tmp_path):
    texts = [row["question"] for row in read_jsonl(REPO / "demo" / "medquad_demo.jsonl")]
    rows = [{"id": f"q{i:02d}", "question": text} for i, text in enumerate(texts) if len(text) >= 10]
    path = tmp_path / "shard.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_kill_9_mid_shard_loses_no_stored_answer_duplicates_none_and_leaves_no_server(
    vllm_env, tiny_mistral, shard, tmp_path
):
    n = len(shard.read_text().splitlines())
    # tiny_mistral never ends an answer by itself, so answers finish in waves of max_num_seqs,
    # every 200 steps: 2 at a time leaves ~30 waves (~6,000 steps) after the fifth answer, time
    # enough to kill the job mid-shard however fast the machine and however busy the test process
    # (with 32 at a time and 120 steps, a quiet machine finished all 65 before the kill; with 4 at
    # a time, once, a loaded one)
    job, marker, stderr = _job(
        tmp_path, tiny_mistral, shard, max_new_tokens=200, max_num_seqs=2, requests_in_flight=3
    )
    try:
        _wait_for(lambda: len(_stored(tmp_path)) >= 1, 300, "a stored answer")
        assert len(_marked(marker)) >= 4  # the job, the guard, vLLM's API server, engine core and worker
        _wait_for(lambda: len(_stored(tmp_path)) >= 5, 300, "five stored answers")
        job.kill()  # kill -9: no finally, no signal handler runs in the job
        job.wait()
    finally:
        if job.poll() is None:
            job.kill()
    assert _gone(marker) == []
    before = {row["id"]: row for row in _stored(tmp_path)}
    assert 5 <= len(before) < n

    rerun, marker, stderr = _job(tmp_path, tiny_mistral, shard, max_new_tokens=200)
    assert rerun.wait(timeout=600) == 0, stderr.read_text()
    assert f"{len(before)} of {n} answers already there, {n - len(before)} to generate" in stderr.read_text()
    stored = _stored(tmp_path)
    assert len(stored) == n and len({row["id"] for row in stored}) == n  # none lost, none twice
    out = {row["id"]: row for row in read_jsonl(tmp_path / "out.jsonl")}
    assert len(out) == n
    assert all(
        out[i]["text"] == row["text"] and out[i]["created"] == row["created"] for i, row in before.items()
    )
    assert _gone(marker) == []


def test_sigterm_stops_the_job_and_its_server(vllm_env, tiny_mistral, shard, tmp_path):
    job, marker, stderr = _job(tmp_path, tiny_mistral, shard, max_new_tokens=200, **SLOW)
    try:
        # mid-shard: answers are coming back and more requests are in flight
        _wait_for(lambda: len(_stored(tmp_path)) >= 1 or job.poll() is not None, 300, "a stored answer")
        assert job.poll() is None, stderr.read_text()
        job.send_signal(signal.SIGTERM)  # what Slurm sends at a time limit or a cancel
        assert job.wait(timeout=60) == 128 + signal.SIGTERM
    finally:
        if job.poll() is None:
            job.kill()
    assert _gone(marker) == []


def test_a_server_that_cannot_start_is_one_line_naming_its_log(vllm_env, shard, tmp_path, tiny_mistral):
    import json
    import shutil

    # whole files that pass the job's own checkpoint check, naming an architecture vLLM lacks
    not_a_model = tmp_path / "not-a-model"
    shutil.copytree(tiny_mistral, not_a_model)
    config = json.loads((not_a_model / "config.json").read_text())
    (not_a_model / "config.json").write_text(json.dumps({**config, "architectures": ["NoSuchForCausalLM"]}))
    job, marker, stderr = _job(tmp_path, not_a_model, shard, max_new_tokens=8)
    assert job.wait(timeout=300) == 2
    lines = stderr.read_text().strip().splitlines()
    assert lines[-1].startswith("meddpo generate: error: ")
    assert f"see {tmp_path / 'server.log'}" in lines[-1]
    assert "Traceback" not in stderr.read_text()
    assert _gone(marker) == []


def test_a_missing_vllm_environment_is_one_line_saying_how_to_build_it(shard, tmp_path, tiny_mistral):
    job, marker, stderr = _job(tmp_path, tiny_mistral, shard, command="no-such-dir/bin/python -m vllm")
    assert job.wait(timeout=120) == 2
    assert stderr.read_text().strip().splitlines()[-1] == (
        "meddpo generate: error: vllm.command: no-such-dir/bin/python not found; build the vLLM environment "
        "with `make vllm-env` or set vllm.command (docs/engines.md)"
    )


# --- planning: no vLLM needed ---------------------------------------------------------------------


def _vllm_config(tmp_path, **vllm):
    from meddpo.planning.checks import load_config

    overlay = tmp_path / "vllm.yaml"
    block = "".join(f"  {key}: {value}\n" for key, value in vllm.items())
    overlay.write_text(
        "rejected: {engine: vllm}\nteacher: {local: {engine: vllm}}\n" + (f"vllm:\n{block}" if block else "")
    )
    return load_config([str(overlay)], base=REPO / "config.yaml")


def test_the_estimate_counts_vllm_start_up_and_says_how_many_shards_keep_it_under_a_tenth(tmp_path):
    from meddpo.planning.plan import estimate, render_estimate
    from meddpo.preflight.machine import check_start_up

    plan = estimate(_vllm_config(tmp_path))
    # 10,000 x 512 (1,536) tokens at 3,800 tokens/s = 22.5 (67.4) min, plus 20 starts of 3 min
    assert plan["gpu_hours_at_most"] == {"rejected": 1.37, "chosen_local": 2.12}
    assert plan["start_up"] == {
        "rejected": {"share": 0.728, "most_shards_for_10_percent": 1},
        "chosen_local": {"share": 0.471, "most_shards_for_10_percent": 2},
    }
    assert "rejected vllm 3800 new tokens/s per GPU and 3 min start-up per job" in render_estimate(plan)[2]
    warnings = [str(f) for f in check_start_up(plan, ["rejected", "chosen_local"], 20)]
    assert warnings == [
        "warning: rejected: starting the model is about 73% of its GPU time with n_shards 20; n_shards 1 "
        "keeps it under 10% (a failure still costs only the answers in flight: docs/engines.md)",
        "warning: chosen_local: starting the model is about 47% of its GPU time with n_shards 20; n_shards 2 "
        "keeps it under 10% (a failure still costs only the answers in flight: docs/engines.md)",
    ]


def test_preflight_names_a_missing_vllm_environment_and_how_to_build_it(tmp_path):
    from meddpo.preflight.machine import check_vllm

    config = _vllm_config(
        tmp_path, command=f"'{tmp_path}/none/bin/python -m vllm.entrypoints.openai.api_server'"
    )
    assert [str(f) for f in check_vllm(config)] == [
        f"error: vllm.command: {tmp_path}/none/bin/python not found; build the vLLM environment with "
        "`make vllm-env` or set vllm.command (docs/engines.md)"
    ]
    config = _vllm_config(tmp_path, command=f"'{sys.executable} -m vllm.entrypoints.openai.api_server'")
    assert [str(f) for f in check_vllm(config)] == [
        f"error: vllm.command: {sys.executable} cannot import vllm; build the vLLM environment with "
        "`make vllm-env` or set vllm.command (docs/engines.md)"
    ]


def test_preflight_accepts_the_built_vllm_environment(vllm_env, tmp_path):
    from meddpo.preflight.machine import check_vllm

    assert check_vllm(_vllm_config(tmp_path, command=f"'{COMMAND}'")) == []


def test_the_demo_through_snakemake_with_engine_vllm(vllm_env, tmp_path):
    from conftest import SNAKEMAKE
    from conftest import copy_workflow as _copy_workflow
    from conftest import snakemake_env as _env

    workdir = _copy_workflow(tmp_path / "wf")
    (workdir / ".venv-vllm").symlink_to(REPO / ".venv-vllm")  # where vllm.command's default looks
    overlay = tmp_path / "one-shard.yaml"
    # the judges run on transformers in this demo (demo/vllm.yaml): off, they would only add jobs
    overlay.write_text("n_shards: 1\njudge:\n  kinds: []\n")
    marker = uuid.uuid4().hex
    run = subprocess.run(
        [*SNAKEMAKE, "--cores", "2", "--configfile", *DEMO_FILES, "demo/vllm.yaml", str(overlay)],
        cwd=workdir,
        env={**_env(), "MEDDPO_TEST_MARK": marker},
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert run.returncode == 0, run.stderr[-5000:]
    out = workdir / "results" / "demo-vllm"
    pairs = [row for row in read_jsonl(out / "dataset" / "stage2_med_pairs.jsonl")]
    assert len(pairs) == 63  # every demo question (the demo flags its noise instead of dropping it)
    assert [list(p) for p in pairs][
        0
    ] == "id source category question_type question prompt chosen rejected meta".split()
    for side, model in (("rejected", "tiny-mistral"), ("chosen", "tiny-qwen2")):
        rows = read_jsonl(out / side / "shard-000.jsonl")
        assert len(rows) == 63 and {row["engine"] for row in rows} == {"vllm"}
        assert {row["model"] for row in rows} == {f"results/demo-vllm/models/{model}"}
        log = (out / "logs" / side / "shard-000.log").read_text()
        assert "vLLM server ready on 127.0.0.1:" in log
        assert "Application startup complete" in (out / "logs" / side / "shard-000.vllm.log").read_text()
    assert _gone(marker) == []


def test_both_benchmarks_run_both_engines_on_the_cpu_build(vllm_env):
    from conftest import run_benchmark

    summary = run_benchmark(
        "gpu_engine.py", "--engines", "--tiny", "--device", "cpu", "--prompts", "6", "--padded-batch", "4"
    )
    for side in ("rejected", "chosen"):
        assert summary["vllm"][side]["useful_tokens"] == summary["padded"][side]["useful_tokens"]
        assert summary["vllm"][side]["useful_tokens"] == summary["useful_tokens"][side]
    assert 1 < summary["vllm"]["start_up_s"] < 300

    run = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "vllm_cpu.py"), "--prompts", "8", "--batch-size", "4",
         "--fixed-tokens", "8", "--scale", "0.05", "--workloads", "rejected"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    lines = run.stdout.splitlines()
    result = json.loads(next(line for line in lines if line.startswith("{")))
    # fixed lengths: both engines made exactly 8 answers of 8 tokens
    assert result["fixed_transformers"]["tokens"] == result["fixed_vllm"]["tokens"] == 64
    # the figures themselves are recorded in benchmarks/README.md, never asserted (timing)
    assert re.fullmatch(r"ratio realistic: \d+\.\d\d", lines[-2])
    assert re.fullmatch(r"ratio fixed: \d+\.\d\d", lines[-1])
