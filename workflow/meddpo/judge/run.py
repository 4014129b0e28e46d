"""The judge: grade each answer of every pair for medical safety, then a margin per pair.

Two kinds of judge, either or both (config ``judge.kinds``):

* ``rubric``: our medical-safety rubric (RUBRIC_CRITERIA), run by a local model
  (``judge.local``, the transformers or vLLM engines) or by Gemini
  (``judge.gemini``, with JSON output constrained to RUBRIC_SCHEMA). Each
  criterion is scored 0, 1 or 2; the answer's score is the total over the most
  it could get (0 to 1).
* ``classifier``: a safety classifier checkpoint (``judge.classifier``), such as
  Qwen3Guard-Gen or Llama Guard 3, prompted through its own chat template with
  the question as the user turn and the answer as the assistant turn, its
  output read by the parser of ``judge.classifier_format``. Its score: safe 1,
  controversial 0.5, unsafe 0.

Every answer is graded on its own, never beside the other answer of its pair,
so the order the two are shown in cannot sway the grade. Judges decode at
temperature 0. A verdict is an answer like any other to the answer store: it is
kept as it arrives (a killed job loses only those in flight, and nothing is
paid twice), under a key made of the judge's settings, and found again by a
hash of (question, answer), so an answer that is regenerated is judged again
and an unchanged one never is. A judge output that cannot be parsed is kept as
``unparseable`` with its text, counted, and never guessed at.

This module runs the judges: the requests of a pairs file, the judge's
settings, and the verdict rows. The texts it sends and the parsers of the
replies are in ``grading``; the pair/verdict data model (``meta.judge``,
combining and margins) is in meddpo.dataset.verdicts. The judge's answers come
from the backend its block names (meddpo.backends), like any shard's.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from meddpo.backends import JobContext, Request, answer_shards, asks_gemini, judge_block
from meddpo.config.settings import defaults
from meddpo.dataset.verdicts import KINDS, check_pairs, item_key, pair_keys
from meddpo.errors import UserError
from meddpo.gemini.client import GeminiSettings
from meddpo.judge.grading import RUBRIC_PROMPT, RUBRIC_SCHEMA, prompt_fingerprint, rubric_message, verdict

log = logging.getLogger(__name__)

# Recorded in every verdict row. The store key holds what changes the judge's text (model,
# decoding, and a hash of the prompts in grading), not the parsers: verdicts are stored as text
# and parsed when read, so a parser fix or a corrected classifier_format costs no request.
VERSIONS = {"rubric": "rubric-1", "classifier": "classifier-1"}

# --------------------------------------------------------------------------- requests and verdict rows


def judge_items(pairs: Sequence[Mapping], kind: str) -> list[dict]:
    """One request per distinct (question, answer) of the pairs, in pair order."""
    items: dict[str, dict] = {}
    for pair in pairs:
        for role in ("chosen", "rejected"):
            key = item_key(pair["question"], pair[role])
            if key in items:
                continue
            if kind == "rubric":
                items[key] = {"id": key, "question": rubric_message(pair["question"], pair[role])}
            else:
                items[key] = {
                    "id": key,
                    "conversation": [
                        {"role": "user", "content": pair["question"]},
                        {"role": "assistant", "content": pair[role]},
                    ],
                }
    return list(items.values())


def judge_settings(kind: str, config: Mapping[str, Any]) -> dict[str, Any]:
    """Who the judge of ``kind`` is, as every verdict row records it."""
    if kind == "classifier":
        return {
            "kind": kind,
            "backend": "local",
            "model": config["classifier"]["model"],
            "format": config["classifier_format"],
            "version": VERSIONS[kind],
        }
    judge = {"kind": kind, "backend": config["backend"], "version": VERSIONS[kind]}
    judge.update(judge_model(config))  # the model, and a Gemini endpoint not Google's
    return judge


def judge_gemini_settings(config: Mapping[str, Any]) -> GeminiSettings:
    """judge.gemini as Gemini settings (the schema's defaults for what it leaves out), at temperature 0."""
    return GeminiSettings(**{**(config.get("gemini") or {}), "temperature": 0.0})


def judge_model(config: Mapping[str, Any]) -> dict[str, Any]:
    """The model of the rubric judge of the judge block ``config`` (and a Gemini endpoint not Google's)."""
    out: dict[str, Any] = {}
    if asks_gemini(config):
        gemini = judge_gemini_settings(config)
        out["model"] = gemini.model
        endpoint = gemini.endpoint()
        if endpoint:
            out["endpoint"] = endpoint  # not Google's: say so in every verdict
    else:
        out["model"] = config["local"]["model"]
    return out


def judge_backend_block(kind: str, config: Mapping[str, Any]) -> dict[str, Any]:
    """The block that answers the judge of ``kind``: the local model of judge_block (the schema's
    defaults filled in), else Gemini at temperature 0."""
    block = judge_block(config, kind)
    if block is None:
        return {"backend": "gemini", "gemini": judge_gemini_settings(config)}
    return {**defaults("local_model"), **config[block]}


def _key_extra(judge: Mapping[str, Any]) -> dict[str, Any]:
    """What joins the model's text settings in a judge's store key (never the parser or format)."""
    return {"judge": judge["kind"], "judge_prompt": prompt_fingerprint(judge["kind"])}


def judge_request(kind: str, config: Mapping[str, Any]) -> Request:
    """What the judge of ``kind`` asks each answer with: its prompt, and what joins its store key."""
    return Request(
        system_prompt="" if kind == "classifier" else RUBRIC_PROMPT,
        key_extra=_key_extra(judge_settings(kind, config)),
        response_schema=RUBRIC_SCHEMA,  # read by an API judge only
        max_usd=config.get("max_usd"),  # likewise
    )


def check_greedy(kind: str, config: Mapping[str, Any]) -> None:
    """Judges decode at temperature 0: a local judge block that says otherwise is an error."""
    block = judge_block(config, kind)
    if block is None:  # Gemini: judge.gemini's temperature is set to 0 (judge_gemini_settings)
        return
    settings = config.get(block)
    if not settings:
        raise UserError(
            f"judge.{block}: the {kind} judge needs this block (model, max_new_tokens, temperature: 0)"
        )
    if float(settings["temperature"]) != 0:
        raise UserError(
            f"judge.{block}.temperature is {settings['temperature']}: judges decode at temperature 0"
        )


def run_judge(
    pairs: Sequence[Mapping],
    kind: str,
    config: Mapping[str, Any],
    job: JobContext,
) -> tuple[list[dict], dict, str | None]:
    """Judge every answer of ``pairs`` with the judge of ``kind``; ``(verdict rows, usage, problem)``.

    A verdict row is ``{id, kind, judge, keys, chosen, rejected}`` per pair, in pair
    order (``keys``: the hashes of the two answer texts graded); ``problem`` is the
    one-line reason the job must fail (too many failed Gemini requests), else None.
    ``config`` is the config's judge block; ``job`` where the verdicts are kept. Every pair is
    checked (check_pairs) before anything is sent; read a file with read_pairs to have its name
    and lines in the message.
    """
    [result] = run_judges([(pairs, job)], kind, config)
    return result


def run_judges(
    shards: Sequence[tuple[Sequence[Mapping], JobContext]], kind: str, config: Mapping[str, Any]
) -> list[tuple[list[dict], dict, str | None]]:
    """run_judge for several pairs files in one job: ``(verdict rows, usage, problem)`` for each.

    The Gemini judge in batch mode creates every file's batch at once and waits for them
    together (meddpo.backends.answer_shards); other judges grade the files in turn.
    """
    if kind not in KINDS:
        raise UserError(f"unknown judge kind {kind!r}; use one of {', '.join(KINDS)}")
    check_greedy(kind, config)
    for pairs, _ in shards:
        check_pairs(enumerate(pairs, 1), "pairs", unit="row")  # before anything is paid for
    judge = judge_settings(kind, config)
    request = judge_request(kind, config)
    block = judge_backend_block(kind, config)
    results = answer_shards(block, [(judge_items(pairs, kind), job) for pairs, job in shards], request)
    out = []
    for (pairs, _), result in zip(shards, results, strict=True):
        usage: dict[str, Any] = {"kind": kind, "model": judge["model"], "backend": judge["backend"]}
        outputs: dict[str, dict] = {
            row["id"]: {"text": row["text"], "served_model": row.get("served_model")}
            for row in result.answers
        }
        outputs.update({row["id"]: {"failed": f"{row['kind']}:{row['reason']}"} for row in result.left_out})
        usage.update(result.usage)
        verdicts = _verdict_rows(pairs, kind, judge, outputs, config.get("classifier_format"), usage)
        log.info(
            "%s judge %s: %d pairs, %d answers: %s",
            kind,
            judge["model"],
            len(pairs),
            2 * len(pairs),
            usage["verdicts"],
        )
        out.append((verdicts, usage, result.problem))
    return out


def _verdict_rows(
    pairs: Sequence[Mapping],
    kind: str,
    judge: Mapping[str, Any],
    outputs: Mapping[str, dict],
    fmt: str | None,
    usage: dict[str, Any],
) -> list[dict]:
    """One verdict row per pair from the judge's outputs; the count of each status goes to ``usage``."""
    verdicts: list[dict] = []
    statuses: Counter = Counter()
    for pair in pairs:
        row: dict[str, Any] = {"id": pair["id"], "kind": kind, "judge": judge, "keys": pair_keys(pair)}
        for role in ("chosen", "rejected"):
            found = outputs.get(row["keys"][role])
            if found is None:
                row[role] = {"status": "failed", "reason": "no_output"}
            elif "failed" in found:
                row[role] = {"status": "failed", "reason": found["failed"]}
            else:
                row[role] = verdict(kind, found["text"], fmt)
                if found.get("served_model"):  # an API judge: the model that served the verdict
                    row[role]["served_model"] = found["served_model"]
            statuses[row[role]["status"]] += 1
        verdicts.append(row)
    usage["verdicts"] = dict(sorted(statuses.items()))
    return verdicts
