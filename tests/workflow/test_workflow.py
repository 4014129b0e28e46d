"""The Snakemake workflow itself: config validation, lint, dry runs, the demo DAG end to end."""

import json
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import PurePosixPath

import pytest
import yaml

from conftest import (
    DEMO,
    DEMO_FILES,
    DPO_ROW_FIELDS,
    REPO,
    SNAKEMAKE,
    copy_workflow,
    job_counts,
    meddpo,
    snakemake,
    snakemake_env,
)
from meddpo.jsonl import read_jsonl, read_jsonl_tolerant
from meddpo.planning.checks import load_config

pytestmark = pytest.mark.slow  # real Snakemake runs: seconds to minutes each


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return copy_workflow(tmp_path_factory.mktemp("workflow"))


def test_dry_run_of_the_real_config_lists_every_stage(workdir):
    result = snakemake(workdir, "-n")
    assert result.returncode == 0, result.stderr
    n_shards = yaml.safe_load((REPO / "config.yaml").read_text())["n_shards"]
    assert job_counts(result.stdout) == {
        "questions": 1,
        "shard": n_shards,
        "rejected": n_shards,
        "chosen_local": n_shards,
        "pairs": n_shards,
        "merge_pairs": 1,
        "finalize": 1,
        "validate": 1,
        "all": 1,
        "total": 4 * n_shards + 5,
    }


def _command(dry_run: str, out: str) -> str:
    """The command a dry run (``-p``) prints for the job whose ``--out`` is ``out``."""
    [line] = [
        line
        for line in dry_run.splitlines()
        if line.startswith("Shell command: ") and f" --out {out} " in line
    ]
    return line.removeprefix("Shell command: ")


def test_a_dry_run_prints_the_generation_and_judge_commands_in_full(workdir, tmp_path):
    # the rules write these commands out; the options come from the config (params.options)
    plain = snakemake(workdir, "-n", "-p", *DEMO)
    assert plain.returncode == 0, plain.stderr
    rejected = (
        "python -m meddpo generate --shard results/demo/shards/shard-000.jsonl"
        " --model results/demo/models/tiny-mistral --batch-size 16 --max-new-tokens 48 --min-new-tokens 4"
        " --revision none --no-trust-remote-code --dtype auto --engine padded --max-batch-tokens none"
        " --temperature 0.9 --top-p 0.95 --seed 1 --system-prompt 'You are a blunt medical chatbot. Answer"
        " every question directly and with total confidence, as if nothing about it were uncertain. Keep it"
        " short, leave out disclaimers and caveats, and do not suggest seeing a doctor.'"
        " --store results/demo/answer_store"
    )
    assert _command(plain.stdout, "results/demo/rejected/shard-000.jsonl") == (
        f"{rejected} --out results/demo/rejected/shard-000.jsonl 2> results/demo/logs/rejected/shard-000.log"
    )
    classifier = (
        '{"batch_size": 32, "dtype": "auto", "engine": "padded", "max_batch_tokens": null, '
        '"max_new_tokens": 12, "min_new_tokens": 4, "model": "results/demo/models/tiny-mistral", '
        '"revision": null, "seed": 0, "temperature": 0, "top_p": 1.0, "trust_remote_code": false}'
    )
    assert _command(plain.stdout, "results/demo/judge/classifier/shard-002.jsonl") == (
        "python -m meddpo judge --pairs results/demo/pairs/shard-002.jsonl"
        f" --kind classifier --classifier '{classifier}' --classifier-format llama_guard_3"
        " --store results/demo/judge_store --base-config none"
        " --out results/demo/judge/classifier/shard-002.jsonl"
        " --usage results/demo/judge/classifier/shard-002.usage.json"
        " 2> results/demo/logs/judge/classifier/shard-002.log"
    )
    # engine vllm: the server's log is one more option, its shard filled in by Snakemake
    served = tmp_path / "vllm.yaml"
    served.write_text("rejected:\n  engine: vllm\n")
    vllm = snakemake(workdir, "-n", "-p", *DEMO, str(served))
    assert vllm.returncode == 0, vllm.stderr
    command = _command(vllm.stdout, "results/demo/rejected/shard-001.jsonl")
    assert command.endswith(
        " --store results/demo/answer_store --server-log results/demo/logs/rejected/shard-001.vllm.log"
        " --out results/demo/rejected/shard-001.jsonl 2> results/demo/logs/rejected/shard-001.log"
    )


def test_lint_passes(workdir):
    result = snakemake(workdir, "--lint")
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    "override, key",
    [
        (["--config", "n_shard=3"], "n_shard"),
        (["--config", "n_shards=0"], "n_shards"),
    ],
)
def test_bad_config_fails_at_parse_time_naming_the_key(workdir, override, key):
    result = snakemake(workdir, "-n", *override)
    assert result.returncode != 0
    assert key in result.stdout + result.stderr and "Job stats" not in result.stdout


def test_bad_nested_config_value_is_named(workdir, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("questions:\n  selection: newest\n")
    result = snakemake(workdir, "-n", "--configfile", str(bad))
    assert result.returncode != 0
    message = result.stdout + result.stderr
    assert "'newest' is not one of ['first', 'random', 'stratified']" in message and "selection" in message


def test_dag_picture(workdir):
    if shutil.which("dot") is None:
        pytest.skip(
            "SKIPPED LOUDLY: graphviz 'dot' is not installed (make system-deps); CI requires this test"
        )
    dag = snakemake(workdir, "--dag", *DEMO)
    assert dag.returncode == 0, dag.stderr
    svg = subprocess.run(
        ["dot", "-Tsvg"], input=dag.stdout, capture_output=True, text=True, check=True
    ).stdout
    for rule in (
        "questions",
        "shard",
        "rejected",
        "chosen_local",
        "pairs",
        "merge_pairs",
        "finalize",
        "validate",
        "tiny_models",
    ):
        assert f">{rule}" in svg


def test_demo_end_to_end(demo_run, tmp_path):
    workdir = demo_run.workdir  # the session's demo run (conftest.py): read, never changed here
    out = workdir / "results" / "demo"
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    # the demo the tests run: demo/config.yaml and demo/tiny.yaml, as the run layered them
    demo = load_config([REPO / name for name in DEMO_FILES], base=REPO / "config.yaml")

    questions = [
        json.loads(line) for line in (out / "questions" / "questions.jsonl").read_text().splitlines()
    ]
    question_stats = json.loads((out / "questions" / "questions.stats.json").read_text())
    assert question_stats["read"] == 66 and question_stats["picked"] == len(questions) == 63

    dataset = out / "dataset"
    # the package's reader: lines end at b"\n" only (the noise in the answers may hold U+2028 or
    # U+0085, which str.splitlines() also breaks at)
    pairs = read_jsonl(dataset / "stage2_med_pairs.jsonl")
    assert [p["id"] for p in pairs] == sorted(q["id"] for q in questions)
    by_id = {q["id"]: q for q in questions}
    caps = {
        "rejected": demo["rejected"]["max_new_tokens"],
        "chosen": demo["teacher"]["local"]["max_new_tokens"],
    }
    for row in pairs:
        question = by_id[row["id"]]
        assert list(row) == DPO_ROW_FIELDS
        for field in ("source", "category", "question_type", "question"):
            assert row[field] == question[field]
        assert row["prompt"] == f"{config['prompts']['training']}\n\nUser question:\n{question['question']}"
        assert row["chosen"].strip() and row["rejected"].strip()
        meta = row["meta"]
        assert meta["rejected_model"] == demo["rejected"]["model"]
        assert meta["teacher_model"] == demo["teacher"]["local"]["model"]
        for role in ("chosen", "rejected"):
            reason, new_tokens = meta[f"{role}_finish_reason"], meta[f"{role}_new_tokens"]
            assert reason in {"stop", "length"}
            assert (new_tokens == caps[role]) if reason == "length" else (new_tokens <= caps[role])
        assert meta["rejected_sampling"]["temperature"] == config["rejected"]["temperature"]
        # both judges ran on both answers; random weights write no readable verdict
        judge = meta["judge"]
        assert judge["status"] == "unparseable" and judge["margin"] is None
        assert set(judge["judges"]) == {"classifier", "rubric"}
        assert judge["judges"]["rubric"]["model"] == demo["judge"]["local"]["model"]
        assert judge["judges"]["classifier"]["model"] == demo["judge"]["classifier"]["model"]
        for role in ("chosen", "rejected"):
            assert {v["status"] for v in judge[role].values()} == {"unparseable"}

    stats = json.loads((out / "pairs" / "all_pairs.stats.json").read_text())
    assert stats["pairs"] == 63 and stats["questions"] == 63 and stats["shards"] == demo["n_shards"]

    import datasets

    loaded = datasets.load_dataset("json", data_files=str(dataset / "stage2_med_pairs.jsonl"), split="train")
    assert loaded.num_rows == 63 and {"prompt", "chosen", "rejected"} <= set(loaded.column_names)
    # the folder loads as it is, through its dataset card's configs: train/test split by id
    by_card = datasets.load_dataset(str(dataset))
    assert by_card["train"].num_rows + by_card["test"].num_rows == 63 and by_card["test"].num_rows > 0
    conversational = datasets.load_dataset(str(dataset), "conversational", split="train")
    assert conversational[0]["chosen"][0]["role"] == "assistant"
    assert "OK, 63 rows" in (dataset / "validation.txt").read_text()
    final = json.loads((dataset / "stage2_med_pairs.stats.json").read_text())
    stages = final["stages"]
    assert (
        stages["picked"]
        == stages["pairs_kept"] + stages["pairs_dropped"] + stages["left_out_missing_or_failed_answer"]
    )
    # the plot of drops only when the filter dropped a pair (test_what_outputs_say.py)
    plots = ["lengths.png", "truncation_by_category.png"] + ["drops_by_category.png"] * bool(
        stages["pairs_dropped"]
    )
    for plot in plots:
        assert (dataset / "plots" / plot).read_bytes().startswith(b"\x89PNG")
    report = (dataset / "report.md").read_text()
    assert "![Answer lengths](plots/lengths.png)" in report
    # nothing judged: one line says why, and no table of zeros follows
    assert "**No pair has a judge margin: 63 unparseable, 0 failed, of 63 pairs**" in report
    assert "chosen judged safer:" not in report and "| with a margin |" not in report
    # ... and who the judges are: the rejected model itself, and a model the demo built
    assert (
        "Note: The rejected model (results/demo/models/tiny-mistral) is the rubric judge itself: a model "
        "grading its own answers tends to favour them, so 'chosen judged safer' is a lower bound."
    ) in report
    assert not (dataset / "plots" / "judge_margins.png").exists()
    # the demo card credits its own questions, not MedQuAD, and loads the split files
    card = (dataset / "README.md").read_text()
    assert (
        "- **Questions**: `meddpo-demo` (read from `demo/medquad_demo.jsonl`): questions written for this "
        "project in MedQuAD's column layout, none of them taken from MedQuAD." in card
    )
    assert "Ben Abacha" not in card and yaml.safe_load(card.split("---")[1])["license"] == "apache-2.0"
    assert 'data_files={"train": "splits/train.jsonl", "test": "splits/test.jsonl"}' in card

    # Nothing left to do on a second run ...
    again = snakemake(workdir, "-n", *DEMO)
    assert "Nothing to be done" in again.stdout + again.stderr
    # ... and a new teacher setting reruns only the teacher's jobs and what follows them.
    changed = tmp_path / "hotter_teacher.yaml"
    changed.write_text("teacher:\n  local:\n    temperature: 0.3\n")
    rerun = snakemake(workdir, "-n", "--configfile", *DEMO_FILES, str(changed))
    assert job_counts(rerun.stdout) == {
        "chosen_local": 3,
        "pairs": 3,
        "judge_classifier": 3,
        "judge_rubric_local": 3,
        "merge_pairs": 1,
        "finalize": 1,
        "validate": 1,
        "all": 1,
        "total": 16,
    }


def test_snakemake_report_holds_the_plots_and_stats(demo_copy, tmp_path):
    # --report writes only the zip, but Snakemake may touch .snakemake: a copy of the demo run
    report = tmp_path / "report.zip"
    result = snakemake(demo_copy, "--report", str(report), *DEMO)
    assert result.returncode == 0, result.stderr
    with zipfile.ZipFile(report) as archive:
        names = sorted(PurePosixPath(name).name for name in archive.namelist())
        html = archive.read("report/report.html").decode()
    # the demo's plots (no judge margin: no judge_margins.png; no pair dropped: no drops_by_category.png),
    # the stats, the page
    assert names == [
        "lengths.png",
        "report.html",
        "stage2_med_pairs.stats.json",
        "truncation_by_category.png",
    ]
    # the workflow's description and one plot's own caption (workflow/report/)
    assert "The stage 2 medical-safety DPO dataset" in html and "cut at the token cap" in html


def test_growing_n_and_changing_n_shards_generates_only_new_questions(demo_copy, tmp_path):
    # the session's demo run, copied, with every output but its tiny models removed: a first run
    # with checkpoints in place and an empty answer store
    workdir = demo_copy
    for path in (workdir / "results" / "demo").iterdir():
        if path.name != "models":
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    # the judges do not take part in answer reuse (test_judge.py); off here to save their jobs
    no_judge = tmp_path / "no-judge.yaml"
    no_judge.write_text("judge:\n  kinds: []\n")
    pilot = tmp_path / "pilot.yaml"
    pilot.write_text("questions:\n  n: 30\nn_shards: 1\n")
    first = snakemake(workdir, "--cores", "2", "--configfile", *DEMO_FILES, str(no_judge), str(pilot))
    assert first.returncode == 0, first.stderr[-3000:]
    store = workdir / "results" / "demo" / "answer_store"

    def generations():
        counts = {}
        for model_folder in store.iterdir():
            # the answers (each settings folder's shard files), not its logs
            ids = [row["id"] for part in model_folder.glob("*/*.jsonl") for row in read_jsonl_tolerant(part)]
            counts[model_folder.name] = ids
        return counts

    assert {name: len(ids) for name, ids in generations().items()} == {
        "results--demo--models--tiny-mistral": 30,
        "results--demo--models--tiny-qwen2": 30,
    }

    two_shards = tmp_path / "two-shards.yaml"
    two_shards.write_text("n_shards: 2\n")
    # the preflight of the grown run prices the work left with what the pilot's jobs measured
    grown = ["--configfile", *DEMO_FILES, str(no_judge), str(two_shards)]
    lines = meddpo("preflight", *grown, cwd=workdir).stdout.splitlines()
    rejected = next(line for line in lines if line.startswith("meddpo preflight: work left: rejected "))
    assert rejected.startswith("meddpo preflight: work left: rejected 33 of 63 answers (30 already made), ")
    assert "new tokens per answer (measured on 30 answers)" in rejected
    assert rejected.endswith("min loading per job (measured on 30 answers, 1 job, cpu)")
    # on another kind of device nothing measured here counts
    h100 = tmp_path / "h100.yaml"
    h100.write_text("estimate:\n  device: NVIDIA H100 80GB HBM3\n")
    lines = meddpo("preflight", *grown, str(h100), cwd=workdir).stdout.splitlines()
    assert any(
        line.startswith("meddpo preflight: work left: rejected 33 of 63 answers (30 already made), ")
        and line.endswith("(assumed (estimate.*): no job of engine padded on NVIDIA H100 80GB HBM3 yet)")
        for line in lines
    ), lines
    full = snakemake(workdir, "--cores", "2", *DEMO, str(no_judge), str(two_shards))  # all 63 questions
    assert full.returncode == 0, full.stderr[-3000:]
    # its report sets the estimate made at its start beside what its jobs took
    out = workdir / "results" / "demo"
    made = json.loads((out / "logs" / "estimate.json").read_text())
    estimated = next(row for row in made["work_left"] if row["rule"] == "rejected")
    assert (estimated["answers"], estimated["left"]) == (63, 33)
    benchmarks = sorted((out / "benchmarks" / "rejected").glob("shard-*.tsv"))
    assert [b.name for b in benchmarks] == ["shard-000.tsv", "shard-001.tsv"]  # both jobs of the grown run
    took = sum(float(b.read_text().splitlines()[1].split("\t")[0]) for b in benchmarks) / 3600
    report = (out / "dataset" / "report.md").read_text()
    assert f"| rejected | 63 | 33 | {estimated['hours']:.4f} h on cpu | {took:.4f} h (2 jobs) |" in report, (
        report.split("## Estimated and actual cost")[1][:1500]
    )
    for name, ids in generations().items():
        assert len(ids) == len(set(ids)) == 63, f"{name}: an answer was generated twice"
    logs = workdir / "results" / "demo" / "logs"
    reused = sum(
        int(re.search(r"(\d+) of \d+ answers already there", path.read_text()).group(1))
        for path in (logs / "rejected").glob("shard-???.log")  # the jobs' logs, not vLLM's
    )
    assert reused == 30


def test_demo_with_the_gemini_teacher_keeps_the_key_out_of_every_file(demo_copy, tmp_path):
    from meddpo.testing.gemini_server import GeminiTestServer

    # the session's demo run, copied: its rejected answers stand, the Gemini teacher's chosen
    # answers and everything after them are made here
    workdir = demo_copy
    overlay = tmp_path / "gemini.yaml"
    overlay.write_text(
        "teacher:\n  backend: gemini\n  gemini:\n    concurrency: 8\n    initial_backoff_s: 0.001\n"
        "    max_backoff_s: 0.01\n    max_failed_fraction: 0.1\n"
        "judge:\n  kinds: []\n"  # the judges have their own tests; their jobs would only add time
    )
    key = "AIza-test-key-that-must-never-be-written-0123456789"
    questions = [json.loads(line)["question"] for line in (REPO / "demo" / "medquad_demo.jsonl").open()]
    with GeminiTestServer(expected_key=key) as server:
        server.script = {questions[0]: ["blocked"], questions[7]: ["429", "ok"]}
        env = snakemake_env()
        env.update(GEMINI_API_KEY=key, GOOGLE_GEMINI_BASE_URL=server.base_url)
        run = subprocess.run(
            [*SNAKEMAKE, "--cores", "2", "--configfile", *DEMO_FILES, str(overlay)],
            cwd=workdir,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    out = workdir / "results" / "demo"
    stats = json.loads((out / "pairs" / "all_pairs.stats.json").read_text())
    assert stats["pairs"] == 62 and stats["missing_chosen"] == 1
    assert stats["chosen_failure_reasons"] == {"prompt_blocked:SAFETY": 1}
    assert stats["teacher_usage"]["requests"] == 63 + 1
    pairs = [json.loads(line) for line in (out / "dataset" / "stage2_med_pairs.jsonl").open()]
    assert all(p["meta"]["teacher_model"] == "gemini-2.5-flash" for p in pairs)
    final = json.loads((out / "dataset" / "stage2_med_pairs.stats.json").read_text())
    assert final["chosen_failure_reasons"] == {"prompt_blocked:SAFETY": 1}
    assert final["stages"]["left_out_missing_or_failed_answer"] == 1
    assert questions[0] not in {p["question"] for p in pairs}
    # the report sets the dollars estimated at the run's start (every answer at max_output_tokens: none
    # was made under these settings) beside what its requests cost
    made = json.loads((out / "logs" / "estimate.json").read_text())
    estimated = next(row for row in made["work_left"] if row["rule"] == "chosen_gemini")
    assert (estimated["left"], estimated["usd"]) == (63, made["gemini_usd_at_most"])
    spent = final["teacher_usage"]["estimated_cost_usd"]
    report = (out / "dataset" / "report.md").read_text()
    assert f"| chosen_gemini | 63 | 63 | ${estimated['usd']:.4f} | ${spent:.4f} |" in report
    leaks = [str(path) for path in workdir.rglob("*") if path.is_file() and key.encode() in path.read_bytes()]
    assert leaks == []
    assert key not in run.stdout + run.stderr


def test_the_demo_with_batch_mode_teacher_and_judge_sends_one_batch_per_shard_and_a_rerun_none(
    demo_copy, tmp_path
):
    from meddpo.testing.gemini_server import GeminiTestServer, rubric_reply

    # the session's demo run, copied: its rejected answers stand, the Gemini teacher's chosen
    # answers and everything after them are made here
    overlay = tmp_path / "batch.yaml"
    fast = "mode: batch, batch_poll_s: 0.01, initial_backoff_s: 0.001, max_backoff_s: 0.01"
    overlay.write_text(
        f"teacher:\n  backend: gemini\n  gemini: {{{fast}, max_failed_fraction: 0.1}}\n"
        f"judge:\n  kinds: [rubric]\n  backend: gemini\n  gemini: {{{fast}, secrets_file: null}}\n"
    )
    key = "AIza-batch-test-key-never-written-0123456789"
    questions = [json.loads(line)["question"] for line in (REPO / "demo" / "medquad_demo.jsonl").open()]
    command = [*SNAKEMAKE, "--cores", "2", "--configfile", *DEMO_FILES, str(overlay)]

    def reply(text):  # the teacher's canned answer; rubric JSON for the judge's requests
        return (
            rubric_reply(text) if "Answer to grade:" in text else f"A careful answer to: {text} See a doctor."
        )

    with GeminiTestServer(expected_key=key, reply=reply) as server:
        server.script = {questions[0]: ["blocked"]}
        env = snakemake_env()
        env.update(GEMINI_API_KEY=key, GOOGLE_GEMINI_BASE_URL=server.base_url)
        run = subprocess.run(command, cwd=demo_copy, env=env, capture_output=True, text=True, timeout=600)
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
        # one batch per shard for the teacher, then one per shard for the judge (both answers of a pair)
        assert sorted(len(batch.keys) for batch in server.batches) == [21, 21, 21, 40, 42, 42]
        assert server.stats()["requests"] == 63 + 124
        # the jobs forced to run again find every answer, refusal and verdict in the store
        again = subprocess.run(
            [*command, "--forcerun", "chosen_gemini", "judge_rubric_gemini"],
            cwd=demo_copy,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
        assert "chosen_gemini" in again.stderr and "judge_rubric_gemini" in again.stderr
        assert len(server.batches) == 6 and server.stats()["requests"] == 63 + 124
    out = demo_copy / "results" / "demo"
    stats = json.loads((out / "pairs" / "all_pairs.stats.json").read_text())
    assert stats["pairs"] == 62 and stats["missing_chosen"] == 1  # 62 pairs + 1 refusal = 63
    assert stats["chosen_failure_reasons"] == {"prompt_blocked:SAFETY": 1}
    usage = stats["teacher_usage"]
    assert usage["requests"] == usage["batch_requests"] == 63
    # every token at batch prices: $0.15 per million in, $1.25 out (half the online $0.30 and $2.50)
    expected = (
        usage["input_tokens"] * 0.15 + (usage["output_tokens"] + usage["thinking_tokens"]) * 1.25
    ) / 1e6
    assert usage["estimated_cost_usd"] == pytest.approx(expected, abs=3e-6)
    report = (out / "dataset" / "report.md").read_text()
    assert "| batch_requests | 63 |" in report
    # the models that served the answers and the verdicts, as the replies named them
    assert "| chosen | gemini-2.5-flash | 62 |\n| judge_rubric | gemini-2.5-flash | 124 |" in report
    final = json.loads((out / "dataset" / "stage2_med_pairs.stats.json").read_text())
    judged = final["judge"]["usage"]["rubric"]
    assert judged["batch_requests"] == judged["requests"] == 124 and judged["verdicts"] == {"judged": 124}
    assert final["judge"]["summary"]["with_verdict"] == 62
    # meddpo status lists every batch, the teacher's under its shards and the judge's apart, from the stores
    status = subprocess.run(
        [sys.executable, "-m", "meddpo", "status", "--configfile", *DEMO_FILES, str(overlay)],
        cwd=demo_copy,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert status.returncode == 0, status.stderr
    batches = re.findall(r"batch batches/test-\d{4}: (\w+), (\d+) questions, [\d.]+ h old", status.stdout)
    assert sorted(batches) == [("SUCCEEDED", "21")] * 3 + [("SUCCEEDED", "40")] + [("SUCCEEDED", "42")] * 2
    assert "judge     shard-002  Gemini judge batches" in status.stdout
    leaks = [
        str(path) for path in demo_copy.rglob("*") if path.is_file() and key.encode() in path.read_bytes()
    ]
    assert leaks == []
