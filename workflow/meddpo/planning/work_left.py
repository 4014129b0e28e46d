"""The work a run has left and what it will take, priced with what earlier jobs measured.

``work_left`` takes the run's estimate (meddpo.planning.plan) and, per rule, what its
stores measured (meddpo.preflight.measured): answers already made, their mean length,
the speed and load time of the same model, engine and device, the dollars per Gemini
answer. Each figure says where it comes from; where nothing was measured it falls back
to the config's assumptions and says so: the token cap for lengths,
``estimate.*`` for speed and start-up, the price of an answer at max_output_tokens.
"""

from __future__ import annotations

import math
from typing import Any

from meddpo.planning.plan import engine_speed, local_models


def _counts(rule: str, answers: int, left: int, m: dict) -> dict:
    """What every rule's row starts with: the answers the run needs, made already and left."""
    return {
        "rule": rule,
        "answers": answers,
        "done": answers - left,
        "left": left,
        "counted_by_id": m["done_counted_by_id"],
    }


def _local(config: dict[str, Any], rule: str, model: dict[str, Any], answers: int, m: dict) -> dict:
    """One local model's work left: answers, tokens, speed, load and hours, each with its source."""
    left = max(0, answers - m["answers_done"])
    assumed_speed, assumed_start_up = engine_speed(config, model)
    device = m.get("device") or "this machine"
    if m.get("mean_new_tokens") is not None:
        tokens, length_from = m["mean_new_tokens"], f"measured on {m['lengths_from']} answers"
    else:
        tokens = model["max_new_tokens"]
        length_from = "assumed: every answer at its token cap (none made under these settings yet)"
    if m.get("tokens_per_second"):
        speed, load = m["tokens_per_second"], m["load_s"] / 60
        measured_jobs = f"{m['jobs']} job" + "s" * (m["jobs"] != 1)
        speed_from = f"measured on {m['answers_measured']} answers, {measured_jobs}, {device}"
    else:
        speed, load = assumed_speed, assumed_start_up
        speed_from = f"assumed (estimate.*): no job of engine {model['engine']} on {device} yet"
    jobs = min(config["n_shards"], left)  # a shard whose answers are all stored loads no model
    hours = (left * tokens / speed + jobs * load * 60) / 3600
    return {
        **_counts(rule, answers, left, m),
        "new_tokens_per_answer": tokens,
        "length_source": length_from,
        "tokens_per_second": speed,
        "load_minutes": round(load, 2),
        "speed_source": speed_from,
        "device": device,
        "hours": round(hours, 3),
    }


def _gemini(rule: str, answers: int, m: dict, at_most: float | None) -> dict:
    """The Gemini teacher's work left in dollars, at the measured price per answer where there is one."""
    left = max(0, answers - m["answers_done"])
    if m.get("usd_per_answer") is not None:
        per_answer, source = m["usd_per_answer"], f"measured on {m['answers_measured']} answers"
    elif at_most is None:  # no price for the model (the preflight says so in its own line)
        per_answer, source = None, "no price for the model in gemini_prices"
    else:
        per_answer = at_most / answers if answers else 0.0
        source = "assumed: every answer at max_output_tokens (none made under these settings yet)"
    return {
        **_counts(rule, answers, left, m),
        "usd_per_answer": per_answer,
        "usd_source": source,
        "usd": round(left * per_answer, 4) if per_answer is not None else None,
        "usd_spent_before": m.get("usd_spent", 0.0),  # on these questions, before this run
    }


def work_left(config: dict[str, Any], plan: dict[str, Any], measured: dict[str, dict]) -> list[dict]:
    """Per rule of the run, the answers left and what they will take (see the module's docstring)."""
    n = plan["questions"]
    out = []
    for rule, (_, model) in local_models(config).items():
        answers = 2 * n if rule.startswith("judge_") else n  # a judge grades both answers of a pair
        out.append(_local(config, rule, model, answers, measured[rule]))
    for rule, m in measured.items():
        if "usd_per_answer" in m:
            at_most = plan.get("gemini_batch_usd_at_most" if _batch(config) else "gemini_usd_at_most")
            out.append(_gemini(rule, n, m, at_most))
    return out


def _batch(config: dict[str, Any]) -> bool:
    from meddpo.backends import in_batch_mode

    return in_batch_mode(config["teacher"]["gemini"])


def _amount(row: dict) -> str:
    if "usd" in row and row["usd"] is None:
        return f"dollars unknown ({row['usd_source']})"
    if "usd" in row:
        return f"${row['usd']:.4f} at ${row['usd_per_answer']:.6f} per answer ({row['usd_source']})"
    return (
        f"{row['hours']:.3f} hours on {row['device']}: {row['new_tokens_per_answer']:g} new tokens per "
        f"answer ({row['length_source']}), {row['tokens_per_second']:g} new tokens/s and "
        f"{row['load_minutes']:g} min loading per job ({row['speed_source']})"
    )


def render_work_left(rows: list[dict]) -> list[str]:
    """The work left as lines a person reads, one per rule, then the totals."""
    lines = []
    for row in rows:
        counted = "" if row["counted_by_id"] else ", counted from the store, not by question"
        lines.append(
            f"work left: {row['rule']} {row['left']} of {row['answers']} answers "
            f"({row['done']} already made{counted}), {_amount(row)}"
        )
    hours = sum(row.get("hours", 0.0) for row in rows)
    usd = sum(row.get("usd") or 0.0 for row in rows)
    total = f"work left in all: {math.ceil(hours * 1000) / 1000:.3f} GPU-hours"
    lines.append(total + (f" and ${usd:.4f} of Gemini" if any("usd" in row for row in rows) else ""))
    return lines
