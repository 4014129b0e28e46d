"""``meddpo status``: how far each shard job has got, read from the answer store.

Meant for the login node while a cluster run goes on: per model and shard, the
answers already in the store (they are appended as they are made) against the
shard's questions, the refusals a teacher gave, and whether the shard's output
file is written. Only shards 000 .. n_shards-1 of the config count; files left by
an earlier, larger ``n_shards`` are ignored, as the workflow ignores them.

Gemini batch mode: each shard's batches come from the store's batches log. With
``--live`` every batch still open is also looked up at the API (``batches.get``,
free; a batch whose create reply was lost, by its display name in the list), and
its state and counts there are printed beside it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from meddpo.generation.answer_store import AnswerStore
from meddpo.jsonl import read_jsonl_tolerant
from meddpo.planning.paths import RunPaths, shard_name, shard_number

ROLES = {"rejected": "rejected", "chosen": "chosen"}  # role -> output folder


def store_settings(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The answer store key of each role, exactly as its jobs compute it."""
    from meddpo.backends import Request, store_key

    prompts = config["prompts"]
    return {
        "rejected": store_key(config["rejected"], Request(prompts["rejected"])),
        "chosen": store_key(config["teacher"], Request(prompts["teacher"])),  # whatever the teacher's backend
    }


def shard_status(config: dict[str, Any]) -> list[dict[str, Any]]:
    paths = RunPaths(str(Path(config["output"]["dir"])))
    rows = []
    for role, settings in store_settings(config).items():
        store = AnswerStore(Path(paths.answer_store), settings, "status")
        answers, refused = store.load(), store.load_refusals()
        batches = batches_by_part(store.read_log("batches"))
        for index in range(config["n_shards"]):
            name = shard_name(shard_number(index))
            shard = Path(paths.shard(shard_number(index)))
            row: dict[str, Any] = {"role": role, "shard": name, "questions": None}
            if shard.is_file():
                ids = [q["id"] for q in read_jsonl_tolerant(shard)]
                row.update(
                    questions=len(ids),
                    answered=sum(i in answers for i in ids),
                    refused=sum(i in refused for i in ids),
                    done=Path(paths.answers(ROLES[role], shard_number(index))).is_file(),
                    batches=batches.get(f"{name}.jsonl", []),
                )
            rows.append(row)
    return rows


def judge_batches(config: dict[str, Any]) -> dict[str, list[dict]]:
    """The Gemini judge's batches (batch mode) by store part, from every batches log in the judge store."""
    paths = RunPaths(str(Path(config["output"]["dir"])))
    logs = sorted(Path(paths.judge_store).glob("*/*/batches/*.jsonl"))
    return batches_by_part([record for log in logs for record in read_jsonl_tolerant(log)])


def batches_by_part(records: list[dict[str, Any]], now: float | None = None) -> dict[str, list[dict]]:
    """Gemini batch mode: each batch of each store part, from the store's batches log (no API call).

    ``state`` is ``waiting`` until the batch's results are stored, then its final state;
    ``age_h`` counts from the batch's intent record.
    """
    import time

    from meddpo.gemini.batch import batch_history

    now = time.time() if now is None else now
    parts: dict[str, list[dict]] = {}
    for batch in batch_history(records):
        row = {"name": batch.name, "state": "waiting", "questions": len(batch.keys)}
        row["display_name"] = batch.display_name
        if batch.state is not None:
            row.update(state=batch.state.removeprefix("JOB_STATE_"), results=batch.results)
        row["age_h"] = round((now - batch.since) / 3600, 2)
        parts.setdefault(batch.part, []).append(row)
    return parts


BATCH_COUNTS = {  # our words for the counts of a batch's batchStats
    "requests": "requestCount",
    "succeeded": "successfulRequestCount",
    "failed": "failedRequestCount",
    "pending": "pendingRequestCount",
}


def ask_live(config: dict[str, Any], rows: list[dict[str, Any]], judge: dict[str, list[dict]]) -> None:
    """``--live``: put each open batch's state and counts at the API on it (``live``), teacher's and judge's.

    The key is read as the jobs read it (the environment, else the block's secrets_file).
    """
    teacher = [batch for row in rows if row["role"] == "chosen" for batch in row.get("batches", [])]
    judged = [batch for batches in judge.values() for batch in batches]
    for block, batches in ((config["teacher"]["gemini"], teacher), (config["judge"]["gemini"], judged)):
        waiting = [batch for batch in batches if batch["state"] == "waiting"]
        if waiting:
            _ask(block, waiting)


def _ask(block: dict[str, Any], batches: list[dict]) -> None:
    from meddpo.gemini.batch_api import BatchApi
    from meddpo.gemini.client import GeminiSettings, load_api_key, make_client

    settings = GeminiSettings(**{k: v for k, v in block.items() if k in GeminiSettings.__dataclass_fields__})
    client = make_client(load_api_key(settings.secrets_file), settings)
    api = BatchApi(client, settings)
    lost = {batch["display_name"] for batch in batches if not batch["name"]}
    found = api.names(lost) if lost else {}
    for batch in batches:
        batch["name"] = batch["name"] or found.get(batch["display_name"])
        batch["live"] = _live(client, api, batch["name"]) if batch["name"] else {"state": "NOT LISTED"}


def _live(client, api, name: str) -> dict[str, Any]:
    """One batch at the API: its state (or NOT FOUND) and, when the reply has them, its counts."""
    from meddpo.gemini.batch_api import short, state_of
    from meddpo.gemini.errors import HardGeminiError

    try:
        job = api.get(name)
    except HardGeminiError as error:
        return {"state": f"not asked: {error}"}
    if job is None:
        return {"state": "NOT FOUND (404)"}
    live: dict[str, Any] = {"state": short(state_of(job))}
    try:  # google-genai 3.3.0 drops a Developer API batch's batchStats: read them from the reply itself
        import json

        body = json.loads(client._api_client.request("get", name, {}).body or "{}")
        stats = (body.get("metadata") or {}).get("batchStats") or {}
        live.update({word: int(stats[key]) for word, key in BATCH_COUNTS.items() if key in stats})
    except Exception:  # noqa: BLE001 - the counts are extra: the state stands without them
        pass
    return live


def render(rows: list[dict[str, Any]], judge: dict[str, list[dict]] | None = None) -> list[str]:
    """Lines a person reads: a line per shard and role (with its batches), the judge's batches, totals."""
    lines = []
    for row in rows:
        if row["questions"] is None:
            lines.append(f"{row['role']:<9} {row['shard']}  not sharded yet")
            continue
        refused = f", {row['refused']} refused" if row["refused"] else ""
        state = "done" if row["done"] else "in the store so far"
        counts = f"{row['answered']}/{row['questions']} answered{refused}"
        lines.append(f"{row['role']:<9} {row['shard']}  {counts}  {state}")
        lines += _batch_lines(row.get("batches", []))
    for part, batches in sorted((judge or {}).items()):
        lines.append(f"{'judge':<9} {part.removesuffix('.jsonl')}  Gemini judge batches")
        lines += _batch_lines(batches)
    for role in dict.fromkeys(r["role"] for r in rows):
        mine = [r for r in rows if r["role"] == role and r["questions"] is not None]
        total = sum(r["questions"] for r in mine)
        answered = sum(r["answered"] for r in mine)
        done = sum(r["done"] for r in mine)
        shards = sum(1 for r in rows if r["role"] == role)
        lines.append(f"{role}: {answered}/{total} answered; {done} of {shards} shard files written")
    return lines


def _batch_lines(batches: list[dict]) -> list[str]:
    return [
        f"{'':<9} {'':<9}  batch {batch['name'] or '(not created)'}: {batch['state']}, "
        f"{batch['questions']} questions, {batch['age_h']:.2f} h old{_live_words(batch.get('live'))}"
        for batch in batches
    ]


def _live_words(live: dict[str, Any] | None) -> str:
    """`` (at Google: RUNNING, 21 requests: 0 succeeded, 0 failed, 21 pending)``, or "" without --live."""
    if live is None:
        return ""
    counts = [f"{live[word]} {word}" for word in ("succeeded", "failed", "pending") if word in live]
    requests = f", {live['requests']} requests" if "requests" in live else ""
    return f" (at Google: {live['state']}{requests}{': ' + ', '.join(counts) if counts else ''})"
