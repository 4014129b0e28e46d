"""The preflight's work left: answers already made, lengths, speed and load from what earlier jobs
measured (each figure with its source), assumptions where nothing fits, and the figures the report
sets beside what a run took."""

import json

import yaml

from conftest import DEMO_FILES, REPO
from meddpo.backends import Request, store_key
from meddpo.generation.answer_store import AnswerStore
from meddpo.planning.checks import load_config
from meddpo.planning.plan import estimate
from meddpo.planning.work_left import render_work_left, work_left
from meddpo.preflight.measured import measure, planned_ids

NEVER = {"answers_done": 0, "done_counted_by_id": True, "lengths_from": 0, "mean_new_tokens": None, "jobs": 0}


def _config(tmp_path, **overlay):
    path = tmp_path / "overlay.yaml"
    path.write_text(
        yaml.safe_dump({"output": {"dir": str(tmp_path / "out")}, "judge": {"kinds": []}, **overlay})
    )
    return load_config([*(REPO / name for name in DEMO_FILES), path], base=REPO / "config.yaml")


def test_nothing_measured_prices_every_answer_at_its_cap_with_the_assumed_speed(tmp_path):
    config = _config(tmp_path)
    plan = estimate(config)
    measured = {rule: {**NEVER, "device": "cpu"} for rule in ("rejected", "chosen_local")}
    assert render_work_left(work_left(config, plan, measured)) == [
        # 63 x 48 tokens at 1,500/s, and 3 shard jobs loading for 2 minutes each
        "work left: rejected 63 of 63 answers (0 already made), 0.101 hours on cpu: 48 new tokens per answer "
        "(assumed: every answer at its token cap (none made under these settings yet)), 1500 new tokens/s "
        "and 2 min loading per job (assumed (estimate.*): no job of engine padded on cpu yet)",
        "work left: chosen_local 63 of 63 answers (0 already made), 0.101 hours on cpu: 96 new tokens per "
        "answer (assumed: every answer at its token cap (none made under these settings yet)), 1500 new "
        "tokens/s and 2 min loading per job (assumed (estimate.*): no job of engine padded on cpu yet)",
        "work left in all: 0.202 GPU-hours",
    ]


def _store_answers(config, rule_block, prompt, ids, new_tokens):
    root = config["output"]["dir"] + "/answer_store"
    store = AnswerStore(root, store_key(rule_block, Request(prompt)), "shard-000")
    store.append(
        [{"id": i, "text": "An answer.", "new_tokens": new_tokens, "finish_reason": "stop"} for i in ids]
    )
    return store


def test_a_pilot_in_the_store_prices_the_rest_with_what_its_jobs_measured(tmp_path):
    config = _config(tmp_path)
    # a pilot answered 10 of the run's questions (and one question the run does not pick)
    pilot = sorted(planned_ids(config))[:10] + ["mq-not-in-this-run"]
    store = _store_answers(config, config["rejected"], config["prompts"]["rejected"], pilot, 40)
    job = {"time": 1.0, "part": "shard-000", "engine": "padded", "model": config["rejected"]["model"],
           "device": "cpu", "start_s": 6.0, "load_s": 3.0, "generate_s": 20.0, "answers": 10,
           "new_tokens": 400, "prompt_tokens": 900}  # fmt: skip
    store.append_log("jobs", [job])
    measured = measure(config)  # this machine has no GPU: its device is cpu
    assert measured["rejected"] == {
        "answers_done": 10,  # counted by question id
        "done_counted_by_id": True,
        "lengths_from": 11,
        "mean_new_tokens": 40.0,
        "jobs": 1,
        "device": "cpu",
        "tokens_per_second": 20.0,
        "load_s": 9.0,
        "answers_measured": 10,
    }
    rows = work_left(config, estimate(config), measured)
    assert render_work_left(rows)[0] == (
        # 53 x 40 tokens at 20/s, and 3 shard jobs of 6 + 3 s start-up
        "work left: rejected 53 of 63 answers (10 already made), 0.037 hours on cpu: 40 new tokens per "
        "answer "
        "(measured on 11 answers), 20 new tokens/s and 0.15 min loading per job (measured on 10 answers, "
        "1 job, cpu)"
    )
    # the same model on another kind of device: its speed is not carried over
    other = measure(_config(tmp_path, estimate={"device": "NVIDIA H100 80GB HBM3"}))
    assert other["rejected"]["tokens_per_second"] is None and other["rejected"]["mean_new_tokens"] == 40.0
    # other sampling settings: the lengths are not carried over, the model's speed is
    capped = measure(_config(tmp_path, rejected={"max_new_tokens": 32}))
    assert capped["rejected"]["mean_new_tokens"] is None and capped["rejected"]["tokens_per_second"] == 20.0
    json.dumps(rows)  # the estimate is recorded as JSON at the start of a run
