"""A step run by hand makes what the same step makes in the workflow: the real config's 10,000
questions, by hand and through Snakemake, from the same local MedQuAD copy."""

import json

import pytest

from conftest import copy_workflow, meddpo, require_medquad, snakemake

pytestmark = pytest.mark.slow


def test_the_real_configs_questions_by_hand_and_through_snakemake_are_identical(tmp_path):
    medquad = require_medquad()
    workdir = copy_workflow(tmp_path / "wf")
    # the real config, with the question source pointed at the local copy (no network here)
    local = tmp_path / "local-medquad.yaml"
    local.write_text(f"source:\n  dataset: {medquad}\n")
    run = snakemake(workdir, "--cores", "1", "results/questions/questions.jsonl", "--configfile", str(local))
    assert run.returncode == 0, run.stderr[-3000:]
    job_log = (workdir / "results" / "logs" / "questions.log").read_text()
    assert "settings: the options given (a job of the workflow: its rule gives every setting)" in job_log

    # by hand, in the project folder, naming only the source and the outputs: config.yaml does the rest
    out, stats = tmp_path / "questions.jsonl", tmp_path / "questions.stats.json"
    by_hand = meddpo(
        "questions", "--source", str(medquad), "--out", str(out), "--stats", str(stats), cwd=workdir
    )
    assert by_hand.returncode == 0, by_hand.stderr
    assert by_hand.stderr.splitlines()[-1].endswith(
        " INFO meddpo: settings: config.yaml, under the options given"
    )

    made = workdir / "results" / "questions"
    assert out.read_bytes() == (made / "questions.jsonl").read_bytes()
    assert len(out.read_text().splitlines()) == 10000
    ours, theirs = (json.loads(path.read_text()) for path in (stats, made / "questions.stats.json"))
    assert (ours["selection"], ours["seed"]) == ("stratified", 2025)
    ours.pop("seconds"), theirs.pop("seconds")  # how long each took
    assert ours == theirs
