"""What earlier jobs of a run measured, read from its stores, for the preflight's estimate.

Every local-model job that generates something records what it measured in the
store's ``jobs`` log (engine, model, device, load and generation seconds, answers and
tokens; meddpo.generation.local_shard), and every answer keeps its token count. From
these, for each local model of a run:

* the answers already made under the run's own settings (the same store key: model,
  prompt and sampling), so the work left is known;
* their mean new tokens per answer, which carries only within those same settings;
* new tokens per second and load seconds per job, from the jobs of the same model
  (any prompt or sampling), the same engine and the same kind of device, and never
  across models or devices.

For the Gemini teacher: the answers made and the dollars per answer from the store's
request log. Where nothing fits, the figure is None and the estimate uses the config's
assumptions (meddpo.planning.plan), saying so.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

from meddpo.backends import Request, asks_gemini, backend_of, store_key
from meddpo.generation.answer_store import AnswerStore
from meddpo.generation.local_shard import JOBS_LOG
from meddpo.jsonl import read_jsonl_tolerant
from meddpo.planning.paths import run_paths
from meddpo.planning.plan import local_models, teacher_rule


def this_device() -> str:
    """The kind of device this machine's jobs would run on: its first GPU's model (nvidia-smi), or cpu."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) == "" or shutil.which("nvidia-smi") is None:
        return "cpu"
    try:
        names = subprocess.run(
            ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
        ).stdout.splitlines()
    except (OSError, subprocess.SubprocessError):
        return "cpu"
    return names[0].strip() if names and names[0].strip() else "cpu"


def _request(config: dict[str, Any], rule: str) -> tuple[dict[str, Any], Request, str]:
    """The config block, the request and the store folder of one rule's jobs."""
    paths = run_paths(config)
    if rule == "rejected":
        return config["rejected"], Request(config["prompts"]["rejected"]), paths.answer_store
    if rule.startswith("chosen_"):
        return config["teacher"], Request(config["prompts"]["teacher"]), paths.answer_store
    from meddpo.judge.run import judge_backend_block, judge_request

    kind = "classifier" if rule == "judge_classifier" else "rubric"
    block = judge_backend_block(kind, config["judge"])
    return block, judge_request(kind, config["judge"]), paths.judge_store


def _store(config: dict[str, Any], rule: str) -> AnswerStore:
    block, request, root = _request(config, rule)
    return AnswerStore(root, store_key(block, request), "preflight")


def _answers(store: AnswerStore) -> dict[str, dict]:
    """The answers under the store's settings, by id (refusals left out)."""
    return {key: row for key, row in store.load().items() if "text" in row}


def _jobs(store: AnswerStore, engine: str, device: str | None) -> list[dict]:
    """The job records of the store's model (every settings folder of it), of ``engine``, on ``device``
    (None: the device of the model's most recent job of that engine)."""
    records = [
        record
        for path in sorted(store.folder.parent.glob(f"*/{JOBS_LOG}/*.jsonl"))
        for record in read_jsonl_tolerant(path)
        if record.get("engine") == engine and record.get("generate_s")
    ]
    if device is None and records:
        device = max(records, key=lambda record: record.get("time", 0)).get("device")
    return [record for record in records if record.get("device") == device]


def _start_up(job: dict) -> float:
    """A job's start-up: its process's own start (Python, imports) and the model's load."""
    return float(job.get("start_s") or 0.0) + float(job["load_s"])


def local_measurement(config: dict[str, Any], rule: str, device: str | None, ids: set[str] | None) -> dict:
    """What the stores hold for one local model's rule: answers made, lengths, speed and load."""
    store = _store(config, rule)
    block, _, _ = _request(config, rule)
    engine, _ = backend_of(block)
    answers = _answers(store)
    done = len(answers if ids is None else ids & set(answers))
    lengths = [int(row.get("new_tokens") or 0) for row in answers.values()]
    jobs = _jobs(store, engine, device)
    seconds = sum(float(job["generate_s"]) for job in jobs)
    tokens = sum(int(job.get("new_tokens") or 0) for job in jobs)
    return {
        "answers_done": done,
        "done_counted_by_id": ids is not None,
        "lengths_from": len(lengths),
        "mean_new_tokens": round(sum(lengths) / len(lengths), 1) if lengths else None,
        "jobs": len(jobs),
        "device": jobs[0]["device"] if jobs else device,
        "tokens_per_second": round(tokens / seconds, 1) if jobs and seconds else None,
        "load_s": round(sum(_start_up(job) for job in jobs) / len(jobs), 1) if jobs else None,
        "answers_measured": sum(int(job.get("answers") or 0) for job in jobs),
    }


def gemini_measurement(config: dict[str, Any], ids: set[str] | None) -> dict:
    """What the answer store holds for the Gemini teacher: answers made and dollars per answer."""
    from meddpo.gemini.client import GeminiSettings
    from meddpo.gemini.usage import records_cost

    store = _store(config, teacher_rule(config))
    settings = GeminiSettings(**config["teacher"]["gemini"])
    answers = _answers(store)
    log = store.read_log("requests")
    records = [record for record in log if record["id"] in answers]
    usd = records_cost(records, settings) if records else None
    spent = [record for record in log if ids is None or record["id"] in ids]
    return {
        "answers_done": len(answers if ids is None else ids & set(answers)),
        "done_counted_by_id": ids is not None,
        "usd_per_answer": round(usd / len(answers), 6) if usd is not None and answers else None,
        "answers_measured": len(answers),
        "usd_spent": (records_cost(spent, settings) or 0.0)
        if spent
        else 0.0,  # on the run's questions so far
    }


def planned_ids(config: dict[str, Any]) -> set[str] | None:
    """The ids of the questions the run will pick, when its source is a local file (else None)."""
    from meddpo.questions.sources import is_local_source

    source, questions = config["source"], config["questions"]
    if not is_local_source(source["dataset"]) or not Path(source["dataset"]).exists():
        return None
    from meddpo.errors import UserError
    from meddpo.questions.build import build_from_settings

    try:
        rows, _ = build_from_settings({**source, **questions})
    except (UserError, OSError):
        return None  # the preflight's source check says what is wrong
    return {row["id"] for row in rows}


def measure(config: dict[str, Any], cluster: bool = False) -> dict[str, dict]:
    """Per rule of the run: what its stores measured (see the module's docstring).

    The jobs' device is ``estimate.device``; ``auto`` is this machine's, or on a cluster the
    device the model's most recent job of the same engine ran on.
    """
    device = config["estimate"]["device"]
    if device == "auto":
        device = None if cluster else this_device()
    ids = planned_ids(config)
    out = {  # a judge's store keys each verdict by its answer's text, not by a question id
        rule: local_measurement(config, rule, device, None if rule.startswith("judge_") else ids)
        for rule in local_models(config)
    }
    if asks_gemini(config["teacher"]):
        out[teacher_rule(config)] = gemini_measurement(config, ids)
    return out
