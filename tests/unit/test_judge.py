"""The judge: parsers on the documented formats, the Gemini rubric judge against the local
wire-format server (margins, flags, policy, report, resume after kill -9, the cost cap), the
tiny local models as judges (their noise is recorded as unparseable), and the old pairs file."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import REPO, SHARED_DATA
from meddpo.backends import JobContext
from meddpo.dataset.build import DatasetPaths, build_dataset
from meddpo.dataset.pairs import merge_pair_shards
from meddpo.dataset.verdicts import (
    attach,
    combine,
    item_key,
    judge_summary,
    model_family,
    pair_side,
    self_judging,
)
from meddpo.errors import UserError
from meddpo.jsonl import DataError, read_jsonl, read_jsonl_tolerant, write_jsonl
from meddpo.judge.grading import parse_classifier, parse_rubric
from meddpo.judge.run import judge_items, run_judge
from meddpo.testing.gemini_server import GeminiTestServer

KEY = "judge-test-key-0f3c"
CRITERIA = ("escalation", "no_unsupervised_treatment", "uncertainty", "accuracy", "answers_the_question")

# --------------------------------------------------------------------------- parsers


@pytest.mark.parametrize(
    "text, label, categories",
    [
        ("safe", "safe", []),
        ("\n\nsafe", "safe", []),
        ("unsafe\nS6", "unsafe", ["Specialized Advice"]),
        ("unsafe\nS1,S11", "unsafe", ["Violent Crimes", "Suicide & Self-Harm"]),
    ],
)
def test_llama_guard_3_output_is_read(text, label, categories):
    assert parse_classifier(text, "llama_guard_3") == {
        "label": label,
        "categories": categories,
        "score": {"safe": 1.0, "unsafe": 0.0}[label],
    }


@pytest.mark.parametrize(
    "text, expected",
    [
        (
            "Safety: Safe\nCategories: None\nRefusal: No",
            {"label": "safe", "categories": [], "refusal": False, "score": 1.0},
        ),
        (
            "Safety: Unsafe\nCategories: Violent, PII\nRefusal: No",
            {"label": "unsafe", "categories": ["Violent", "PII"], "refusal": False, "score": 0.0},
        ),
        (
            "Safety: Controversial\nCategories: Unethical Acts",
            {"label": "controversial", "categories": ["Unethical Acts"], "score": 0.5},
        ),
    ],
)
def test_qwen3guard_output_is_read(text, expected):
    assert parse_classifier(text, "qwen3guard") == expected


@pytest.mark.parametrize(
    "fmt, text",
    [
        ("llama_guard_3", "unsafe"),  # no category line
        ("llama_guard_3", "unsafe\nS99"),
        ("llama_guard_3", "The answer looks safe to me."),
        ("llama_guard_3", ""),
        ("qwen3guard", "Safety: Maybe\nCategories: None"),
        ("qwen3guard", "Safety: Unsafe\nCategories: Bad Things"),
        ("qwen3guard", "auIs migraines dos"),
    ],
)
def test_classifier_output_in_no_known_shape_is_unparseable(fmt, text):
    assert parse_classifier(text, fmt) is None


def test_rubric_reply_is_read_with_or_without_a_code_fence():
    reply = {
        "escalation": 2,
        "no_unsupervised_treatment": 2,
        "uncertainty": 1,
        "accuracy": 2,
        "answers_the_question": 1,
        "reason": "no dose given",
    }
    for text in (
        json.dumps(reply),
        "```json\n" + json.dumps(reply) + "\n```",
        "Verdict: " + json.dumps(reply),
    ):
        parsed = parse_rubric(text)
        assert parsed["total"] == 8 and parsed["score"] == 0.8 and parsed["reason"] == "no dose given"
        assert parsed["scores"]["uncertainty"] == 1


@pytest.mark.parametrize(
    "text",
    [
        '{"escalation": 2, "no_unsupervised_treatment": 2, "uncertainty": 1, "accuracy": 2}',  # one missing
        '{"escalation": 3, "no_unsupervised_treatment": 2, "uncertainty": 1, "accuracy": 2, '
        '"answers_the_question": 1}',  # out of range
        '{"escalation": true, "no_unsupervised_treatment": 2, "uncertainty": 1, "accuracy": 2, '
        '"answers_the_question": 1}',
        '{"escalation": "2", "no_unsupervised_treatment": 2, "uncertainty": 1, "accuracy": 2, '
        '"answers_the_question": 1}',
        "escalation 2, accuracy 2",
        "[1, 2, 3]",
        "{not json}",
    ],
)
def test_a_rubric_reply_that_is_not_complete_json_is_unparseable(text):
    assert parse_rubric(text) is None


# --------------------------------------------------------------------------- the scripted Gemini judge

GOOD = (
    "Gout is a form of arthritis caused by uric acid crystals in a joint. A doctor can confirm it with a "
    "blood test, and treatment eases the pain. Case {i}."
)
RISKY = "Gout is just joint pain. Take 800 mg of ibuprofen three times a day and skip the doctor. Case {i}."


def _pairs(n=30):
    return [
        {
            "id": f"mq-{i:04d}",
            "source": "s",
            "category": ["information", "treatment", "symptoms"][i % 3],
            "question_type": ["information", "treatment", "symptoms"][i % 3],
            "question": f"What is gout, case {i} ?",
            "prompt": f"Be careful.\n\nUser question:\nWhat is gout, case {i} ?",
            "chosen": GOOD.format(i=i),
            "rejected": RISKY.format(i=i),
            "meta": {
                "teacher_model": "gemini-2.5-flash",
                "rejected_model": "mistral",
                "chosen_finish_reason": "stop",
                "rejected_finish_reason": "stop",
            },
        }
        for i in range(n)
    ]


INVERTED = {f"mq-{i:04d}" for i in range(3, 30, 10)}  # 1 pair in 10
TIED = {"mq-0005"}


def _scripted_reply(pairs):
    """Rubric JSON per answer text: careful answers 9/10, risky ones 2/10; inverted pairs swapped."""
    high = {
        "escalation": 2,
        "no_unsupervised_treatment": 2,
        "uncertainty": 1,
        "accuracy": 2,
        "answers_the_question": 2,
    }
    low = {
        "escalation": 0,
        "no_unsupervised_treatment": 0,
        "uncertainty": 0,
        "accuracy": 1,
        "answers_the_question": 1,
    }
    by_answer = {}
    for pair in pairs:
        chosen, rejected = (low, high) if pair["id"] in INVERTED else (high, low)
        if pair["id"] in TIED:
            rejected = high
        by_answer[pair["chosen"]] = chosen
        by_answer[pair["rejected"]] = rejected

    def reply(text):
        answer = text.split("Answer to grade:\n<<<\n", 1)[1].rsplit("\n>>>", 1)[0]
        return json.dumps({**by_answer[answer], "reason": "scripted"})

    return reply


def _gemini_judge(server, **extra):
    return {
        "backend": "gemini",
        "gemini": {
            "base_url": server.base_url,
            "initial_backoff_s": 0.001,
            "max_backoff_s": 0.01,
            "requests_per_minute": 1e6,
            "concurrency": 4,
            "secrets_file": None,
            **extra.pop("gemini", {}),
        },
        "max_usd": None,
        **extra,
    }


@pytest.fixture
def gemini_key(monkeypatch):
    monkeypatch.setenv("GEMINI_API_KEY", KEY)


def test_scripted_judge_drops_exactly_the_inverted_pairs_and_the_stats_add_up(tmp_path, gemini_key):
    pairs = _pairs(30)
    with GeminiTestServer(reply=_scripted_reply(pairs)) as server:
        verdicts, usage, problem = run_judge(
            pairs,
            "rubric",
            _gemini_judge(server),
            JobContext(store_root=tmp_path / "store", store_part="shard-000"),
        )
        body = server.bodies[0]
    assert problem is None
    # graded one answer at a time, at temperature 0, asking for JSON in the rubric's shape
    assert body["contents"][-1]["parts"][0]["text"].count("Answer to grade") == 1
    assert body["generationConfig"]["temperature"] == 0
    assert body["generationConfig"]["responseMimeType"] == "application/json"
    assert set(body["generationConfig"]["responseJsonSchema"]["required"]) == {*CRITERIA, "reason"}
    assert usage["requests"] == 60 and usage["verdicts"] == {"judged": 60}

    # two shards of 15 pairs each; 2 more questions were picked but got no pair
    shards = [(pairs[:15], {"questions": 16, "pairs": 15}), (pairs[15:], {"questions": 16, "pairs": 15})]
    rows, pair_stats = merge_pair_shards(
        shards,
        judge_verdicts={"a.jsonl": verdicts[:15], "b.jsonl": verdicts[15:]},
        judge_usage=[usage],
    )
    by_id = {row["id"]: row["meta"]["judge"] for row in rows}
    # careful answers score 9 of 10, risky ones 2 of 10
    assert by_id["mq-0000"]["status"] == "judged" and by_id["mq-0000"]["margin"] == 0.7
    assert by_id["mq-0003"]["margin"] == -0.7 and by_id["mq-0005"]["margin"] == 0.0
    assert by_id["mq-0000"]["chosen"]["rubric"]["scores"]["escalation"] == 2

    paths = DatasetPaths(
        pairs=tmp_path / "d" / "pairs.jsonl",
        dropped=tmp_path / "d" / "dropped.jsonl",
        stats=tmp_path / "d" / "stats.json",
        report=tmp_path / "d" / "report.md",
        card=tmp_path / "d" / "README.md",
        plots=tmp_path / "d" / "plots",
    )
    stats = build_dataset(
        rows,
        paths,
        policy={},
        near_identical_threshold=0.9,
        min_plain_share=0.9,
        test_fraction=0.0,
        settings={"prompts": {"training": "Be careful."}},
        question_stats={"picked": 32},
        pair_stats=pair_stats,
    )
    dropped = read_jsonl(paths.dropped)
    kept = read_jsonl(paths.pairs)
    assert {row["id"] for row in dropped} == INVERTED
    assert all(row["meta"]["drop_reasons"] == ["judge_inverted"] for row in dropped)
    assert [row["id"] for row in kept if "judge_tie" in row["meta"]["flags"]] == ["mq-0005"]
    stages = stats["stages"]
    assert (stages["picked"], stages["pairs_kept"], stages["pairs_dropped"]) == (32, 27, 3)
    assert stages["left_out_missing_or_failed_answer"] == 2
    assert stats["judge"]["summary"] == {
        "pairs": 30,
        "with_verdict": 30,
        "chosen_safer": 26,
        "equal": 1,
        "chosen_less_safe": 3,
        "status": {"judged": 30, "unparseable": 0, "failed": 0, "off": 0},
    }
    assert stats["judge"]["per_category"]["treatment"]["chosen_less_safe"] == 1  # mq-0013 (13 % 3 == 1)
    report = paths.report.read_text()
    assert "- **chosen judged safer: 26 of 30 (86.7%)**" in report
    assert "- chosen judged less safe: 3 of 30 (10.0%)" in report
    assert "- chosen judged equal: 1 of 30 (3.3%)" in report
    assert "Pairs without a margin: 0 of 30 (0.0%): 0 unparseable, 0 failed" in report
    assert "![Judge margins](plots/judge_margins.png)" in report
    assert (paths.plots / "judge_margins.png").read_bytes().startswith(b"\x89PNG")
    assert "Judge usage (rubric)" in report
    # the teacher is Gemini and so is the judge: the report and the card say so
    assert "The teacher (gemini-2.5-flash) is the rubric judge itself" in report
    card = paths.card.read_text()
    assert "graded each answer on its own" in card and "sees only the question and one answer" in card


def test_the_gemini_judge_in_batch_mode_gives_the_online_verdicts_from_one_batch(tmp_path, gemini_key):
    from meddpo.testing.gemini_batches import BatchPlan

    pairs = _pairs(30)
    with GeminiTestServer(reply=_scripted_reply(pairs)) as server:
        # results listed in reverse order: each verdict must still land on its own answer
        server.batch_plans = [BatchPlan(reverse=True, pending_polls=1)]
        batch_judge = _gemini_judge(server, gemini={"mode": "batch", "batch_poll_s": 0.01})
        verdicts, usage, problem = run_judge(
            pairs, "rubric", batch_judge, JobContext(store_root=tmp_path / "batch", store_part="shard-000")
        )
        online, online_usage, _ = run_judge(
            pairs,
            "rubric",
            _gemini_judge(server),
            JobContext(store_root=tmp_path / "online", store_part="shard-000"),
        )
        assert server.batch_stats()["created"] == 1 and len(server.batches[0].keys) == 60
        requests = server.stats()["requests"]
        again, _, _ = run_judge(
            pairs, "rubric", batch_judge, JobContext(store_root=tmp_path / "batch", store_part="shard-000")
        )
        assert server.batch_stats()["created"] == 1 and server.stats()["requests"] == requests
    assert problem is None and usage["verdicts"] == {"judged": 60}
    assert verdicts == online and again == verdicts
    # the same tokens at half the price
    assert usage["input_tokens"] == online_usage["input_tokens"]
    assert usage["estimated_cost_usd"] == round(online_usage["estimated_cost_usd"] / 2, 6)


def test_unreadable_and_refused_verdicts_are_counted_not_guessed(tmp_path, gemini_key):
    pairs = _pairs(4)
    replies = _scripted_reply(pairs)

    def reply(text):
        return "I think this answer is fine." if "Case 1." in text else replies(text)

    with GeminiTestServer(reply=reply) as server:
        blocked = judge_items(pairs[2:3], "rubric")[1]["question"]  # pair 2's rejected answer
        server.script = {blocked: ["safety"]}
        verdicts, usage, _ = run_judge(
            pairs, "rubric", _gemini_judge(server), JobContext(store_root=None, store_part="x")
        )
    rows = attach(pairs, {"v.jsonl": verdicts})
    judge = {row["id"]: row["meta"]["judge"] for row in rows}
    assert judge["mq-0001"]["status"] == "unparseable" and judge["mq-0001"]["margin"] is None
    assert judge["mq-0001"]["chosen"]["rubric"]["output"] == "I think this answer is fine."
    assert judge["mq-0002"]["status"] == "failed"
    assert judge["mq-0002"]["rejected"]["rubric"] == {
        "status": "failed",
        "reason": "refused:finish_reason:SAFETY",
    }
    assert judge_summary(rows, 0.1)["status"] == {"judged": 2, "unparseable": 1, "failed": 1, "off": 0}


def test_a_cut_verdict_file_stops_the_merge_naming_the_pair(tmp_path, gemini_key):
    pairs = _pairs(3)
    with GeminiTestServer(reply=_scripted_reply(pairs)) as server:
        verdicts, _, _ = run_judge(
            pairs, "rubric", _gemini_judge(server), JobContext(store_root=None, store_part="x")
        )
    with pytest.raises(DataError, match="pair id mq-0002: no rubric verdict"):
        attach(pairs, {"v.jsonl": verdicts[:2]})
    assert attach(pairs, {})[0]["meta"]["judge"] == {"status": "off"}


def _judge_command(pairs_file, tmp_path, server, *extra):
    return [
        sys.executable,
        "-m",
        "meddpo",
        "judge",
        "--pairs",
        str(pairs_file),
        "--kind",
        "rubric",
        "--backend",
        "gemini",
        "--gemini",
        json.dumps(
            {"base_url": server.base_url, "concurrency": 2, "requests_per_minute": 1e6, "secrets_file": None}
        ),
        "--store",
        str(tmp_path / "store"),
        "--out",
        str(tmp_path / "verdicts.jsonl"),
        "--usage",
        str(tmp_path / "usage.json"),
        "--progress-every",
        "0",
        "--base-config",
        "none",
        *extra,
    ]


def _run(command, env):
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)


def _requests_logged(store):
    return [row for path in store.rglob("requests/*.jsonl") for row in read_jsonl_tolerant(path)]


def test_kill_9_mid_run_then_rerun_judges_each_answer_once(tmp_path):
    pairs = _pairs(20)
    pairs_file = tmp_path / "pairs.jsonl"
    write_jsonl(pairs_file, pairs)
    env = {**os.environ, "GEMINI_API_KEY": KEY, "PYTHONPATH": str(REPO / "workflow")}
    with GeminiTestServer(reply=_scripted_reply(pairs), latency_s=0.1) as server:
        job = subprocess.Popen(_judge_command(pairs_file, tmp_path, server), env=env, stderr=subprocess.PIPE)
        try:
            deadline = time.monotonic() + 120
            while len(_requests_logged(tmp_path / "store")) < 10 and time.monotonic() < deadline:
                time.sleep(0.05)
            os.kill(job.pid, signal.SIGKILL)
            job.wait(30)
        finally:
            if job.poll() is None:
                job.kill()
        assert not (tmp_path / "verdicts.jsonl").exists()
        before = {
            row["id"]
            for path in (tmp_path / "store").glob("*/*/verdicts.jsonl")
            for row in read_jsonl_tolerant(path)
        }
        # a request is logged as its reply arrives and its verdict stored just after: a kill between
        # the two leaves it logged and not stored (at most the 2 in flight), which the rerun asks again
        assert 10 - 2 <= len(before) < 40
        rerun = _run(_judge_command(pairs_file, tmp_path, server), env)
        assert rerun.returncode == 0, rerun.stderr[-2000:]
        asked = dict(server.requests)
    # every answer stored before the kill was asked once in all; at most the 2 in flight were asked twice
    keys = {item["id"]: item["question"] for item in judge_items(pairs, "rubric")}
    assert all(asked[keys[key]] == 1 for key in before)
    assert sum(asked.values()) <= 40 + 2 and set(asked) == set(keys.values())
    summary = json.loads(rerun.stdout)
    assert summary["chosen_safer"] == 17 and summary["chosen_less_safe"] == 2 and summary["equal"] == 1
    # the usage adds up the killed job's requests too (those in flight at the kill were never logged)
    assert sum(asked.values()) - 2 <= summary["usage"]["requests"] <= sum(asked.values())
    assert len(read_jsonl(tmp_path / "verdicts.jsonl")) == 20


def test_the_cost_cap_stops_the_judge_and_a_higher_cap_goes_on_without_paying_twice(tmp_path):
    pairs = _pairs(10)
    pairs_file = tmp_path / "pairs.jsonl"
    write_jsonl(pairs_file, pairs)
    env = {**os.environ, "GEMINI_API_KEY": KEY, "PYTHONPATH": str(REPO / "workflow")}
    with GeminiTestServer(reply=_scripted_reply(pairs)) as server:
        # each request costs about $0.00005 (~60 input "tokens" at $0.30/M, ~12 output at $2.50/M)
        capped = _run(_judge_command(pairs_file, tmp_path, server, "--max-usd", "0.0005"), env)
        assert capped.returncode == 2
        last = capped.stderr.strip().splitlines()[-1]
        assert (
            last.startswith("meddpo judge: error: the cost cap is reached") and "max_usd is $0.0005" in last
        )
        assert not (tmp_path / "verdicts.jsonl").exists()
        paid = len(_requests_logged(tmp_path / "store"))
        assert 1 <= paid < 20
        done = _run(_judge_command(pairs_file, tmp_path, server, "--max-usd", "none"), env)
        assert done.returncode == 0, done.stderr[-2000:]
        assert sum(server.requests.values()) == 20 == len(_requests_logged(tmp_path / "store"))


# --------------------------------------------------------------------------- the tiny local models as judges


@pytest.mark.parametrize("kind", ["rubric", "classifier"])
def test_tiny_local_judge_noise_is_recorded_as_unparseable_and_never_judged_twice(
    tmp_path, tiny_mistral, kind
):
    pairs = _pairs(4)
    block = {"model": str(tiny_mistral), "max_new_tokens": 6, "temperature": 0, "batch_size": 8}
    config = {"backend": "local", "local": block, "classifier": block, "classifier_format": "llama_guard_3"}
    verdicts, usage, problem = run_judge(
        pairs, kind, config, JobContext(store_root=tmp_path, store_part="shard-000")
    )
    assert problem is None and usage["answers"] == 8 and usage["new_tokens"] == 8 * 6
    for row in verdicts:
        for role in ("chosen", "rejected"):
            assert row[role]["status"] == "unparseable"
            assert row[role]["output"].strip()  # the text is kept, for a person to look at
    assert judge_summary(attach(pairs, {"v": verdicts}), 0.1)["status"]["unparseable"] == 4

    def stored():
        return [row for path in tmp_path.glob("*/*/shard-000.jsonl") for row in read_jsonl_tolerant(path)]

    assert len(stored()) == 8
    # a regenerated answer is judged again; the unchanged ones never are
    changed = [dict(pair) for pair in pairs]
    changed[0]["chosen"] = "A new careful answer about gout, written again."
    run_judge(changed, kind, config, JobContext(store_root=tmp_path, store_part="shard-000"))
    assert len(stored()) == 9
    assert item_key(changed[0]["question"], changed[0]["chosen"]) in {row["id"] for row in stored()}


def test_a_judge_at_a_temperature_above_0_is_refused(tiny_mistral):
    block = {"model": str(tiny_mistral), "max_new_tokens": 6, "temperature": 0.7}
    with pytest.raises(UserError, match="judge.local.temperature is 0.7: judges decode at temperature 0"):
        run_judge(
            _pairs(1),
            "rubric",
            {"backend": "local", "local": block},
            JobContext(store_root=None, store_part="x"),
        )


# --------------------------------------------------------------------------- the old pairs file


def test_judge_runs_on_the_old_gemini_pairs_file_with_the_local_gemini_server(tmp_path):
    old = SHARED_DATA / "reference-pairs" / "stage2_med_pairs_gemini.jsonl"
    if not old.exists():
        pytest.skip(f"SKIPPED LOUDLY: reference pairs {old} are absent; CI requires this test to run")
    server = subprocess.Popen(
        [sys.executable, "-m", "meddpo.testing.gemini_server", "--rubric", "--lifetime", "300"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO / "workflow")},
    )
    try:
        base_url = json.loads(server.stdout.readline())["base_url"]
        run = subprocess.run(
            [
                sys.executable,
                "-m",
                "meddpo",
                "judge",
                "--pairs",
                str(old),
                "--kind",
                "rubric",
                "--backend",
                "gemini",
                "--gemini",
                json.dumps({"base_url": base_url, "secrets_file": None, "requests_per_minute": 1e6}),
                "--out",
                str(tmp_path / "verdicts.jsonl"),
                "--judged-pairs",
                str(tmp_path / "judged.jsonl"),
                "--store",
                str(tmp_path / "store"),
                "--base-config",
                str(REPO / "config.yaml"),
            ],
            env={**os.environ, "GEMINI_API_KEY": KEY, "PYTHONPATH": str(REPO / "workflow")},
            capture_output=True,
            text=True,
            timeout=600,
        )
    finally:
        server.stdin.close()
        server.wait(30)
    assert run.returncode == 0, run.stderr[-2000:]
    summary = json.loads(run.stdout)
    assert summary["pairs"] == 244 and summary["status"]["judged"] == 244
    assert summary["chosen_safer"] + summary["equal"] + summary["chosen_less_safe"] == 244
    assert summary["usage"]["requests"] == 488
    judged = read_jsonl(tmp_path / "judged.jsonl")
    assert all(row["meta"]["judge"]["status"] == "judged" for row in judged)
    assert judged[0]["meta"]["teacher_model"] == read_jsonl(old)[0]["meta"]["teacher_model"]
    # the report of the judged file has the judge's section
    report = subprocess.run(
        [
            sys.executable,
            "-m",
            "meddpo",
            "report",
            "--pairs",
            str(tmp_path / "judged.jsonl"),
            "--out-dir",
            str(tmp_path / "report"),
        ],
        env={**os.environ, "PYTHONPATH": str(REPO / "workflow")},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert report.returncode == 0, report.stderr[-2000:]
    assert (
        f"**chosen judged safer: {summary['chosen_safer']} of 244 ("
        in (tmp_path / "report" / "report.md").read_text()
    )


# --------------------------------------------------------------------------- cluster profile and estimate


def test_bridges2_profile_gives_local_judges_an_h100_and_the_gemini_judge_none():
    import yaml

    profile = yaml.safe_load((REPO / "profiles" / "bridges2" / "config.yaml").read_text())
    for rule in ("judge_classifier", "judge_rubric_local"):
        resources = profile["set-resources"][rule]
        assert resources["slurm_partition"] == "'GPU-shared'"
        assert resources["slurm_extra"] == "'--gpus-per-node=h100-80:1'"
    # the Gemini judge online takes the defaults: RM-shared, one core, and the key's one-job resource
    assert "judge_rubric_gemini" not in profile["set-resources"]
    assert profile["default-resources"]["slurm_partition"] == "'RM-shared'"
    from meddpo.planning.plan import batch_rules

    rules = (REPO / "workflow" / "rules" / "judge.smk").read_text()
    # one online Gemini job at a time (the key's per-minute quota); in batch mode one job for every
    # shard, run where Snakemake runs (no Slurm job), with no such limit
    online, batch = rules.split('if "judge_rubric_gemini" in BATCH_RULES:')
    assert online.count("gemini_jobs=1,") == 1 and "gemini_jobs" not in batch
    judged = {"teacher": {"backend": "local"}, "judge": {"kinds": ["rubric"], "backend": "gemini"}}
    for mode, expected in (("online", {}), ("batch", {"judge_rubric_gemini": 20})):
        judged["judge"]["gemini"] = {"mode": mode, "batch_wait_h": 20}
        judged["teacher"]["gemini"] = {"mode": "online"}
        assert batch_rules(judged) == expected


def test_preflight_estimate_counts_the_judges_jobs_hours_and_dollars(tmp_path):
    from meddpo.planning.checks import load_config
    from meddpo.planning.plan import estimate, render_estimate

    overlay = tmp_path / "judged.yaml"
    overlay.write_text("judge:\n  kinds: [classifier, rubric]\n  backend: gemini\n")
    plan = estimate(load_config([overlay], base=REPO / "config.yaml"))
    assert plan["jobs"]["judge_classifier"] == 20 and plan["jobs"]["judge_rubric_gemini"] == 20
    # 20,000 answers x 32 new tokens at 1,500 tokens/s, plus 20 start-ups of 2 minutes
    assert plan["gpu_hours_at_most"]["judge_classifier"] == 0.79
    # input: 10,000 x (2 x (450 + 30) + 512 + 1,536) tokens at $0.30/M; output: 20,000 x 512 at $2.50/M
    assert plan["judge_usd_at_most"] == 34.62
    # the same tokens at batch prices ($0.15/M in, $1.25/M out): half
    assert plan["judge_batch_usd_at_most"] == 17.31
    assert plan["time_limit_minutes"]["judge_rubric_gemini"] == 25
    lines = render_estimate(plan)
    assert any(
        line.startswith("Gemini rubric judge at most $34.62 online, $17.31 in batch mode") for line in lines
    )


# --------------------------------------------------------------------------- margins, keys and edges


def _row(kind, chosen, rejected):
    def one(score):
        return {"status": "judged", "score": score} if isinstance(score, float) else {"status": score}

    return {"kind": kind, "judge": {"kind": kind}, "chosen": one(chosen), "rejected": one(rejected)}


def test_with_two_judges_one_inversion_is_not_averaged_away():
    # the rubric finds chosen a point worse; the classifier finds both safe (margin 0)
    judge = combine({"rubric": _row("rubric", 0.7, 0.8), "classifier": _row("classifier", 1.0, 1.0)})
    assert judge["margins"] == {"classifier": 0.0, "rubric": -0.1} and judge["margin"] == -0.05
    assert pair_side(judge, 0.1) == "inverted"
    both_safer = combine({"rubric": _row("rubric", 0.9, 0.2), "classifier": _row("classifier", 1.0, 1.0)})
    assert both_safer["margin"] == 0.35 and pair_side(both_safer, 0.1) == "safer"
    # one judge unreadable: the other's margin stands alone
    half = combine({"rubric": _row("rubric", 0.9, 0.2), "classifier": _row("classifier", "unparseable", 1.0)})
    assert (half["status"], half["margin"], half["margins"]) == ("judged", 0.7, {"rubric": 0.7})
    none = combine(
        {"rubric": _row("rubric", "failed", 0.2), "classifier": _row("classifier", "unparseable", 1.0)}
    )
    assert (none["status"], none["margin"], pair_side(none, 0.1)) == ("unparseable", None, None)


def test_identical_answers_share_one_request_and_tie(tmp_path, gemini_key):
    pairs = _pairs(2)
    pairs[1]["rejected"] = pairs[1]["chosen"]
    with GeminiTestServer() as server:
        server.reply = lambda text: json.dumps(
            {
                "escalation": 2,
                "no_unsupervised_treatment": 2,
                "uncertainty": 2,
                "accuracy": 2,
                "answers_the_question": 2,
                "reason": "none",
            }
        )
        verdicts, usage, _ = run_judge(
            pairs, "rubric", _gemini_judge(server), JobContext(store_root=None, store_part="x")
        )
    assert usage["requests"] == 3  # pair 0: two answers; pair 1: one text, asked once
    assert attach(pairs, {"v": verdicts})[1]["meta"]["judge"]["margin"] == 0.0


def test_zero_pairs_and_duplicate_ids(tmp_path, tiny_mistral):
    block = {"model": str(tiny_mistral), "max_new_tokens": 4, "temperature": 0}
    config = {"backend": "local", "local": block}
    assert run_judge([], "rubric", config, JobContext(store_root=tmp_path, store_part="s"))[0] == []
    twice = _pairs(2)
    twice[1]["id"] = twice[0]["id"]
    with pytest.raises(
        DataError, match=r"pairs, row 2 \(id mq-0000\): field 'id': appears twice \(first on row 1\)"
    ):
        run_judge(twice, "rubric", config, JobContext(store_root=tmp_path, store_part="s"))
    junk = _pairs(2)
    junk[1]["meta"] = "x"
    with pytest.raises(
        DataError, match=r"pairs, row 2 \(id mq-0001\): field 'meta': a string where a JSON object"
    ):
        run_judge(junk, "rubric", config, JobContext(store_root=tmp_path, store_part="s"))
    assert not list(tmp_path.glob("*/*/s.jsonl"))  # nothing was generated before the check


# --------------------------------------------------------------------------- pairs a judge must not pay for


def _junk(field, value):
    def spoil(rows):
        rows[2][field] = value

    return spoil


def _duplicate(rows):
    rows[3]["id"] = rows[1]["id"]


@pytest.mark.parametrize(
    "spoil, message",
    [
        (
            _junk("chosen", None),
            "line 3 (id mq-0002): field 'chosen': null where the chosen text should be; fix or remove this "
            "pair, then rerun (nothing was sent)",
        ),
        (
            _junk("chosen", 7),
            "line 3 (id mq-0002): field 'chosen': a number (7) where the chosen text should be",
        ),
        (
            _junk("rejected", "  "),
            "line 3 (id mq-0002): field 'rejected': only whitespace where the rejected",
        ),
        (_junk("question", ""), "line 3 (id mq-0002): field 'question': an empty string where the question"),
        (
            _junk("meta", "x"),
            "line 3 (id mq-0002): field 'meta': a string where a JSON object should be; fix or remove",
        ),
        (_junk("id", ["a"]), "line 3: field 'id': a list; every pair needs an id (a non-empty string)"),
        (
            _junk("id", 7),
            "line 3: field 'id': a number (7); every pair needs an id (a non-empty string: \"7\"",
        ),
        (
            _duplicate,
            "line 4 (id mq-0001): field 'id': appears twice (first on line 2); one verdict row per pair id: "
            "remove or rename one of them, then rerun (nothing was sent)",
        ),
    ],
    ids=[
        "null-chosen",
        "number-chosen",
        "blank-rejected",
        "empty-question",
        "string-meta",
        "list-id",
        "number-id",
        "dup-id",
    ],
)
def test_meddpo_judge_refuses_a_pairs_file_with_junk_before_sending_anything(
    tmp_path, monkeypatch, capsys, spoil, message
):
    from meddpo.cli.parser import main

    rows = _pairs(5)
    spoil(rows)
    pairs_file = tmp_path / "pairs.jsonl"
    write_jsonl(pairs_file, rows)
    before = pairs_file.read_bytes()
    monkeypatch.setenv("GEMINI_API_KEY", KEY)
    with GeminiTestServer(reply=_scripted_reply(_pairs(5))) as server:
        code = main(_judge_command(pairs_file, tmp_path, server)[3:])
        assert server.stats()["requests"] == 0
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and "Traceback" not in err
    assert len(lines) == 1, err
    assert f"{pairs_file}, {message}" in lines[0]
    assert pairs_file.read_bytes() == before
    assert not (tmp_path / "verdicts.jsonl").exists() and not (tmp_path / "store").exists()


def test_meddpo_judge_on_a_shard_with_no_pairs_says_so_and_writes_empty_outputs(
    tmp_path, monkeypatch, capsys, caplog
):
    from meddpo.cli.parser import main

    pairs_file = tmp_path / "pairs.jsonl"
    pairs_file.write_text("")
    monkeypatch.setenv("GEMINI_API_KEY", KEY)
    with caplog.at_level("INFO", logger="meddpo"), GeminiTestServer() as server:
        code = main(_judge_command(pairs_file, tmp_path, server)[3:])
        assert server.stats()["requests"] == 0
    assert code == 0  # the workflow's job for such a shard succeeds
    assert f"no pairs in {pairs_file}: nothing to judge" in caplog.messages
    assert not any("judged safer" in message for message in caplog.messages)
    assert (tmp_path / "verdicts.jsonl").read_text() == ""


def _closed_port() -> int:
    """A port of 127.0.0.1 that nothing listens on: bound to find a free one, then closed."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class _Closed:
    """Stands in for a server in _judge_command: its base URL is a closed port."""

    def __init__(self, port):
        self.base_url = f"http://127.0.0.1:{port}"


def test_a_gemini_judge_at_a_closed_port_stops_within_a_minute_naming_it_and_pays_nothing(tmp_path):
    pairs_file = tmp_path / "pairs.jsonl"
    write_jsonl(pairs_file, _pairs(30))
    port = _closed_port()
    env = {**os.environ, "GEMINI_API_KEY": KEY, "PYTHONPATH": str(REPO / "workflow")}
    started = time.monotonic()
    command = _judge_command(pairs_file, tmp_path, _Closed(port))
    # the schema's settings: 32 requests in flight, 2 s back-off; all stop together, none backs off alone
    command[command.index("--gemini") + 1] = json.dumps(
        {"base_url": f"http://127.0.0.1:{port}", "secrets_file": None}
    )
    result = _run(command, env)
    elapsed = time.monotonic() - started
    assert result.returncode == 2, result.stderr[-2000:]
    assert elapsed < 60 and "Traceback" not in result.stderr  # about 3 s here, imports included
    errors = [line for line in result.stderr.splitlines() if ": error: " in line]
    assert len(errors) == 1 and errors[0] == result.stderr.strip().splitlines()[-1]
    # the preflight could not ask whether the model exists either: a warning, and the job tried
    [warning] = [line for line in result.stderr.splitlines() if "WARNING" in line]
    assert "judge.gemini.model: could not ask Gemini whether gemini-2.5-flash exists" in warning
    assert errors[0].startswith(
        f"meddpo judge: error: cannot reach the Gemini endpoint 127.0.0.1:{port}: 3 attempts in a row "
        "never got there (connection refused); nothing was sent for them and none is counted as paid"
    )
    assert _requests_logged(tmp_path / "store") == []
    assert not (tmp_path / "verdicts.jsonl").exists() and not (tmp_path / "usage.json").exists()


def test_a_verdict_for_other_answer_texts_is_refused(tmp_path, gemini_key):
    pairs = _pairs(2)
    with GeminiTestServer(reply=_scripted_reply(pairs)) as server:
        verdicts, _, _ = run_judge(
            pairs, "rubric", _gemini_judge(server), JobContext(store_root=None, store_part="x")
        )
    regenerated = [dict(pair) for pair in pairs]
    regenerated[1]["chosen"] = "A regenerated careful answer."
    with pytest.raises(DataError, match="v.jsonl: id mq-0001: the rubric verdict graded other answer texts"):
        attach(regenerated, {"v.jsonl": verdicts})


def test_a_judge_of_the_teachers_or_the_rejected_models_family_is_noted():
    judges = {"classifier": {"model": "Qwen/Qwen3Guard-Gen-4B"}, "rubric": {"model": "mistral-judge"}}
    notes = self_judging(["Qwen/Qwen2.5-7B-Instruct"], ["mistralai/Mistral-7B-Instruct-v0.2"], judges)
    assert notes == [
        "The classifier judge (Qwen/Qwen3Guard-Gen-4B) is of the teacher's family (qwen): judges tend to "
        "favour answers written like their own, so 'chosen judged safer' may be an upper bound.",
        "The rubric judge (mistral-judge) is of the rejected model's family (mistral): judges tend to "
        "favour answers written like their own, so 'chosen judged safer' may be a lower bound.",
    ]
    assert model_family("cognitivecomputations/dolphin-2.9-llama3-8b") == "llama"
    assert model_family("meta-llama/Llama-Guard-3-8B") == "llama" and model_family("some/model") is None


def test_an_endpoint_other_than_googles_is_in_the_store_key_and_the_verdicts(monkeypatch, tmp_path):
    from meddpo.gemini.client import GeminiSettings

    monkeypatch.delenv("GOOGLE_GEMINI_BASE_URL", raising=False)
    assert "endpoint_host" not in GeminiSettings().text_settings("p")
    assert GeminiSettings(base_url="http://127.0.0.1:4321").text_settings("p")["endpoint_host"] == "127.0.0.1"
    monkeypatch.setenv("GEMINI_API_KEY", KEY)
    pairs = _pairs(1)
    with GeminiTestServer(reply=_scripted_reply(pairs)) as server:
        verdicts, _, _ = run_judge(
            pairs, "rubric", _gemini_judge(server), JobContext(store_root=tmp_path, store_part="x")
        )
        assert verdicts[0]["judge"]["endpoint"] == server.base_url
    (settings,) = [json.loads(p.read_text()) for p in tmp_path.glob("*/*/settings.json")]
    assert settings["endpoint_host"] == "127.0.0.1" and settings["temperature"] == 0.0


def test_meddpo_judge_reads_the_config_files_judge_block_and_options_replace_it(tmp_path):
    from meddpo.cli.commands import judge_config
    from meddpo.cli.parser import build_parser

    overlay = tmp_path / "overlay.yaml"
    overlay.write_text("judge:\n  gemini:\n    concurrency: 3\n")
    args = build_parser().parse_args(
        [
            "judge",
            "--pairs",
            "p",
            "--kind",
            "rubric",
            "--out",
            "o",
            "--configfile",
            str(overlay),
            "--base-config",
            str(REPO / "config.yaml"),
            "--gemini",
            '{"model": "gemini-x"}',
            "--max-usd",
            "none",
        ]
    )
    config = judge_config(args)
    # config.yaml's judge block, the overlay, then the options
    assert (config["gemini"]["max_output_tokens"], config["gemini"]["concurrency"]) == (512, 3)
    assert config["gemini"]["model"] == "gemini-x" and config["max_usd"] is None
    assert config["local"]["model"] == "meta-llama/Llama-3.1-8B-Instruct"
    bare = judge_config(
        build_parser().parse_args(
            ["judge", "--pairs", "p", "--kind", "rubric", "--out", "o", "--base-config", "none"]
        )
    )
    assert (
        bare["gemini"]["max_output_tokens"] == 4096
        and bare["max_usd"] == 25
        and bare["classifier_format"] == "llama_guard_3"
    )


def test_validate_names_a_pair_whose_judge_meta_does_not_add_up(tmp_path):
    from meddpo.dataset.validate import validate_pairs

    rows = attach(_pairs(3), {})  # status off
    rows[1]["meta"]["judge"] = {"status": "judged", "margin": None}
    rows[2]["meta"]["judge"] = {"status": "maybe"}
    write_jsonl(tmp_path / "p.jsonl", rows)
    assert validate_pairs(tmp_path / "p.jsonl")[1] == [
        "line 2 (id mq-0001): meta.judge: status 'judged' with margin None",
        "line 3 (id mq-0002): meta.judge.status is 'maybe', not one of judged, unparseable, failed, off",
    ]
