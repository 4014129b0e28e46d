"""Reruns a user can trust, on the real demo DAG: the umask is honoured, provenance never forces a
rerun, one shard can be redone, and a cut shard file stops the run naming it."""

import json
import os
import re
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import (
    DEMO,
    DEMO_FILES,
    ONE_REJECTED_SHARD_REDONE,
    REPO,
    SNAKEMAKE,
    git,
    job_counts,
    snakemake,
    snakemake_env,
)

pytestmark = pytest.mark.slow

# The demo these tests read is conftest's session run `demo_run`: built once under umask 027 in a
# copy that is its own git repository. A test that changes files or reruns jobs takes `demo_copy`.


def test_every_output_honours_the_umask(demo_run):
    out = demo_run.workdir / "results" / "demo"
    modes = {}
    for path in out.rglob("*"):
        modes.setdefault(stat.S_IMODE(path.stat().st_mode) if path.is_file() else "dir", []).append(path)
    files = {mode: len(paths) for mode, paths in modes.items() if mode != "dir"}
    assert files == {0o640: len([p for p in out.rglob("*") if p.is_file()])}, {
        oct(m): [str(p.relative_to(out)) for p in paths[:3]] for m, paths in modes.items() if m != "dir"
    }
    folders = {stat.S_IMODE(p.stat().st_mode) for p in out.rglob("*") if p.is_dir()}
    assert folders == {0o750}


def test_provenance_is_recorded_but_never_forces_a_rerun(demo_copy):
    built = demo_copy
    stats = json.loads((built / "results" / "demo" / "dataset" / "stage2_med_pairs.stats.json").read_text())
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=built, capture_output=True, text=True
    ).stdout.strip()
    assert stats["provenance"]["workflow_commit"] == head

    # an edit of the workflow's files (the tree is dirty), then a commit: nothing to do either way
    snakefile = built / "Snakefile"
    snakefile.write_text(snakefile.read_text() + "\n# a comment that changes nothing\n")
    dry = snakemake(built, "-n", *DEMO)
    assert dry.returncode == 0 and "Nothing to be done" in dry.stdout + dry.stderr, dry.stdout[-2000:]
    git(built, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qam", "edit")
    dry = snakemake(built, "-n", *DEMO)
    assert "Nothing to be done" in dry.stdout + dry.stderr, dry.stdout[-2000:]

    # the README's advice: --summary shows every output as it stands ...
    summary = snakemake(built, "--summary", *DEMO)
    assert summary.returncode == 0 and "stage2_med_pairs.jsonl" in summary.stdout
    # ... and a changed setting makes -n list exactly the jobs it affects, with the reason
    overlay = built / "warmer.yaml"
    overlay.write_text("teacher:\n  local:\n    temperature: 0.95\n")
    dry = snakemake(built, "-n", "--configfile", *DEMO_FILES, str(overlay))
    counts = job_counts(dry.stdout)  # (test_workflow checks the whole list)
    assert counts["chosen_local"] == 3 and "rejected" not in counts
    assert "Params have changed since last execution" in dry.stdout


def test_redo_one_shard_reuses_the_store(demo_copy):
    built = demo_copy
    target = "results/demo/rejected/shard-001.jsonl"
    run = snakemake(built, "--cores", "2", *DEMO, "--forcerun", target)
    assert run.returncode == 0, run.stderr[-3000:]
    assert job_counts(run.stdout + run.stderr) == ONE_REJECTED_SHARD_REDONE
    log = (built / "results" / "demo" / "logs" / "rejected" / "shard-001.log").read_text()
    assert "21 of 21 answers already there, 0 to generate" in log


def test_the_hint_for_a_cut_shard_file_runs_as_printed(demo_copy):
    built = demo_copy
    # the run's own overlay (the demo's tiny models under another name) and a --config value
    (built / "my-tiny.yaml").write_text((built / "demo" / "tiny.yaml").read_text())
    run_options = ["--configfile", "demo/config.yaml", "my-tiny.yaml", "--config", "n_shards=3"]
    cut = built / "results" / "demo" / "chosen" / "shard-001.jsonl"
    lines = cut.read_text().splitlines(keepends=True)
    assert len(lines) == 21
    cut.write_text("".join(lines[:10]))  # cut at a line boundary: every line left is valid
    run = snakemake(built, "--cores", "2", *run_options)
    assert run.returncode != 0
    log = (built / "results" / "demo" / "logs" / "pairs" / "shard-001.log").read_text()
    errors = [line for line in log.splitlines() if "error" in line]
    # the hint used to be `snakemake --forcerun results/demo/chosen/shard-001.jsonl`: pasted, it ran
    # without --cores and on config.yaml alone, and stopped at once. The program is the Snakemake
    # that ran (here `python -m snakemake`; `.venv/bin/snakemake` when run so)
    assert errors == [
        "meddpo pairs: error: results/demo/chosen/shard-001.jsonl: 11 of 21 ids missing (the file was cut "
        "or is stale, or a teacher's failures file was not given); redo this shard with: "
        f"{sys.executable} -m snakemake --forcerun results/demo/chosen/shard-001.jsonl --cores 2 "
        "--configfile demo/config.yaml my-tiny.yaml --config n_shards=3"
    ]
    assert not (built / "results" / "demo" / "pairs" / "shard-001.jsonl").exists()
    hint = errors[0].partition("redo this shard with: ")[2]
    assert hint in run.stderr  # Snakemake shows the failed job's log
    pasted = subprocess.run(
        hint, shell=True, cwd=built, env=snakemake_env(), capture_output=True, text=True, timeout=600
    )
    assert pasted.returncode == 0, pasted.stderr[-3000:]
    assert len(cut.read_text().splitlines()) == 21
    assert (built / "results" / "demo" / "pairs" / "shard-001.jsonl").exists()
    done = snakemake(built, "-n", *run_options)
    assert "Nothing to be done" in done.stdout + done.stderr


def _running(group: int, words: str) -> bool:
    """Whether a process of process group ``group`` runs a command line holding ``words``."""
    for proc in Path("/proc").iterdir():
        try:
            stat = (proc / "stat").read_text()
            command = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, ValueError):
            continue
        if int(stat.rpartition(")")[2].split()[2]) == group and words in command:
            return True
    return False


def test_ctrl_c_under_snakemake_is_one_line(demo_copy):
    built = demo_copy
    # another seed: the rejected shards are answered afresh, so a generation job is running when
    # Ctrl-C comes (the terminal sends it to Snakemake and its jobs: the whole process group)
    (built / "seed.yaml").write_text("rejected:\n  seed: 5\n")
    command = [*SNAKEMAKE, "--cores", "2", "--configfile", *DEMO_FILES, "seed.yaml"]
    run = subprocess.Popen(
        command,
        cwd=built,
        env=snakemake_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        for _ in range(1200):
            if _running(run.pid, "meddpo generate") or run.poll() is not None:
                break
            time.sleep(0.1)
        os.killpg(run.pid, signal.SIGINT)
        out, err = run.communicate(timeout=300)
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
    assert run.returncode == 130, err[-3000:]
    lines = [line for line in err.splitlines() if line.strip()]
    # was: a 23-line RuleException and "Error in rule" with the whole shell command, prompt included
    assert re.fullmatch(
        r"meddpo: interrupted \(Ctrl-C\): the running jobs were stopped, and the answers and verdicts they "
        r"finished are kept in the stores; run the same command again to go on \(Snakemake's full report: "
        r"\.snakemake/log/[^ ]+\.snakemake\.log\)",
        lines[-1],
    ), lines[-5:]
    after = err[err.index("meddpo: interrupted") :]
    assert after.strip() == lines[-1]
    # (the prompt shows once, in the reason Snakemake gives for rerunning the jobs: their params changed)
    for noise in ("RuleException", "Error in rule", "python -m meddpo", "Traceback", "Terminating"):
        assert noise not in err, noise
    # Snakemake's own report is kept in its log file, and no lock is left behind
    report = (built / lines[-1].rpartition("report: ")[2].rstrip(")")).read_text()
    assert "Error in rule rejected" in report
    dry = snakemake(built, "-n", "--configfile", *DEMO_FILES, "seed.yaml")
    assert dry.returncode == 0 and "locked" not in dry.stderr.lower()


def test_the_readme_gives_the_commands_these_tests_use():
    readme = (REPO / "README.md").read_text()
    assert "snakemake --cores all --forcerun results/rejected/shard-001.jsonl" in readme
    assert "`snakemake --summary`" in readme and "--list-changes params" not in readme.replace(
        "(Skip `--list-changes params`", ""
    )


def test_refusals_and_transient_errors_through_snakemake_with_the_cluster_retry_setting(demo_copy, tmp_path):
    """~6% permanent refusals, ~30% transient errors: exit 0, every other question answered, each
    refusal asked once and recorded once, and a --forcerun of the teacher sends nothing.

    On a copy of the session's demo run: its rejected answers stand, the Gemini teacher's chosen
    answers and the pairs, dataset and report after them are made here (the judges are off: they
    read only pairs, and refused questions make none)."""
    import yaml

    from meddpo.questions.cleaning import clean_and_dedupe
    from meddpo.testing.gemini_server import GeminiTestServer

    workdir = demo_copy
    overlay = tmp_path / "gemini.yaml"
    overlay.write_text(
        "teacher:\n  backend: gemini\n  gemini:\n    concurrency: 8\n    requests_per_minute: 1000000\n"
        "    initial_backoff_s: 0.001\n    max_backoff_s: 0.01\n"
        "judge:\n  kinds: []\n"
    )
    retries = yaml.safe_load((REPO / "profiles" / "bridges2" / "config.yaml").read_text())["retries"]
    rows = [json.loads(line) for line in (REPO / "demo" / "medquad_demo.jsonl").open()]
    questions = [q["question"] for q in clean_and_dedupe(rows, source="demo", min_chars=10)[0]]
    assert len(questions) == 63
    refusals = {
        questions[3]: "blocked",
        questions[10]: "safety",
        questions[20]: "empty",
        questions[40]: "blocked",
    }
    transient = [
        ["429", "ok"],
        ["503", "503", "ok"],
        ["500", "ok"],
        ["drop", "ok"],
        ["429", "drop", "503", "ok"],
    ]
    script = {q: [step] for q, step in refusals.items()}
    others = [q for q in questions if q not in refusals]
    for index, question in enumerate(others[::3]):  # 20 of 63: about 30%
        script[question] = transient[index % len(transient)]
    key = "test-key-for-the-refusal-run"
    command = ["--cores", "2", "--retries", str(retries), "--configfile", *DEMO_FILES, str(overlay)]
    with GeminiTestServer(expected_key=key) as server:
        server.script = script
        env = {**snakemake_env(), "GEMINI_API_KEY": key, "GOOGLE_GEMINI_BASE_URL": server.base_url}
        run = subprocess.run(
            [*SNAKEMAKE, *command], cwd=workdir, env=env, capture_output=True, text=True, timeout=600
        )
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
        sent = sum(server.requests.values())
        assert all(server.requests[q] == 1 for q in refusals), "a refused question was asked again"
        assert all(server.requests[q] == len(steps) for q, steps in script.items() if q not in refusals)

        forced = subprocess.run(
            [*SNAKEMAKE, *command, "--forcerun", "chosen_gemini"],
            cwd=workdir,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert forced.returncode == 0, forced.stderr[-3000:]
        assert sum(server.requests.values()) == sent, "--forcerun of the teacher paid for something"

    out = workdir / "results" / "demo"
    stats = json.loads((out / "pairs" / "all_pairs.stats.json").read_text())
    assert stats["pairs"] == 59 and stats["chosen_left_out"] == {"refused": 4}
    assert stats["chosen_failure_reasons"] == {
        "empty_text": 1,
        "finish_reason:SAFETY": 1,
        "prompt_blocked:SAFETY": 2,
    }
    assert stats["teacher_usage"]["requests"] == sent and stats["teacher_usage"]["refused"] == 4
    stored = [
        json.loads(line)
        for part in (out / "answer_store").glob("gemini-2.5-flash/*/shard-*.jsonl")
        for line in part.read_text().splitlines()
    ]
    assert sorted(r["refused"] for r in stored if "refused" in r) == sorted(
        ["prompt_blocked:SAFETY", "finish_reason:SAFETY", "empty_text", "prompt_blocked:SAFETY"]
    )
    assert len([r for r in stored if "text" in r]) == 59
    report = (out / "dataset" / "report.md").read_text()
    assert "Left out: 4 refused." in report
