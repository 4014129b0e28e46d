"""What a run will do and ask for: jobs per rule, time limits, GPU-hours and API dollars.

The workflow's rules take their portable time limits from ``runtime_minutes``
(so the limits the preflight prints are the ones Slurm is asked for), and the
preflight prints ``estimate`` before any job is submitted. With ``questions.n``
null and a local source, the run's size is counted from the source itself (rows,
and questions that survive cleaning), so limits, GPU-hours and disk follow it.
Counting a source loads the datasets library when it is first needed.
"""

from __future__ import annotations

import math
import os
from functools import lru_cache
from typing import Any

from meddpo.backends import asks_gemini, in_batch_mode, runs_locally, serves_vllm, teacher_rule
from meddpo.config.settings import gemini_price
from meddpo.planning.paths import DEMO_MODEL_RULES, demo_model_name

# Minutes per 100 questions of a shard job (before the start-up allowance), by rule.
# Guesses until a GPU benchmark and a real cluster run replace them (benchmarks/README.md).
MINUTES_PER_100_QUESTIONS = {
    "rejected": 4,
    "chosen_local": 10,
    "chosen_gemini": 2,
    # the judges read two answers per question and write a short verdict for each
    "judge_classifier": 2,
    "judge_rubric_local": 4,
    "judge_rubric_gemini": 2,
}
START_UP_MINUTES = 15
MAX_RUNTIME_MINUTES = 480
QUESTIONS_WHEN_ALL = 50_000  # questions.n null and a hub source: about MedQuAD's size after cleaning


@lru_cache(maxsize=8)
def _count(
    dataset: str, stamp: tuple[int, int], split: str, min_chars: int, max_chars: int | None
) -> tuple[int, int]:
    from meddpo.questions.cleaning import clean_and_dedupe
    from meddpo.questions.sources import load_source_rows

    rows, _ = load_source_rows(dataset, split=split)
    _, counts = clean_and_dedupe(rows, source=dataset, min_chars=min_chars, max_chars=max_chars)
    return counts["read"], counts["kept"]


def count_source(config: dict[str, Any]) -> tuple[int, int] | None:
    """``(rows, questions that survive cleaning)`` of a local source; None for a hub id.

    It loads and cleans the source as the questions step does (meddpo.questions.build),
    once per file version in a process. A source that cannot be read raises the
    questions step's DataError.
    """
    from meddpo.questions.sources import is_local_source

    source, questions = config["source"], config["questions"]
    dataset = source["dataset"]
    if not is_local_source(dataset):
        return None
    try:
        info = os.stat(dataset)
        stamp = (info.st_mtime_ns, info.st_size)
    except OSError:
        stamp = (0, 0)  # load_source_rows says what is wrong
    return _count(dataset, stamp, source["split"], questions["min_chars"], questions["max_chars"])


def question_count(config: dict[str, Any]) -> tuple[int, tuple[int, int] | None]:
    """The questions a run will answer, and ``(rows, kept)`` when they were counted in the source.

    ``questions.n`` when set. When null: the local source counted, else (a hub id,
    or a source that cannot be read, which the questions step and the preflight
    report) QUESTIONS_WHEN_ALL.
    """
    n = config["questions"]["n"]
    if n is not None:
        return n, None
    from meddpo.errors import UserError

    try:
        counted = count_source(config)
    except (UserError, ImportError, OSError):  # the questions step and the preflight say what is wrong
        counted = None
    return (counted[1], counted) if counted else (QUESTIONS_WHEN_ALL, None)


def questions_per_shard(config: dict[str, Any], n: int | None = None) -> int:
    if n is None:
        n, _ = question_count(config)
    return math.ceil(n / config["n_shards"])


def runtime_minutes(rule: str, per_shard: int, attempt: int = 1) -> int:
    """The time limit of one shard job of ``rule``; it grows with each retry."""
    estimate = START_UP_MINUTES + MINUTES_PER_100_QUESTIONS[rule] * per_shard / 100
    return min(MAX_RUNTIME_MINUTES, math.ceil(estimate * attempt))


def rule_runtime_minutes(config: dict[str, Any], rule: str, per_shard: int, attempt: int = 1) -> int:
    """The time limit of one shard job of ``rule`` (runtime_minutes; a batch rule has none: batch_rules)."""
    return runtime_minutes(rule, per_shard, attempt)


def batch_rules(config: dict[str, Any]) -> dict[str, float]:
    """The Gemini rules in batch mode, each with its block's ``batch_wait_h``.

    Such a rule is one job for every shard (``localrule``: it runs where Snakemake runs, on a
    cluster's login node, and claims no core): it creates every shard's batch at once and
    waits for them together, for up to ``batch_wait_h`` hours, while the other jobs go on.
    """
    blocks = {"chosen_gemini": config["teacher"]["gemini"], "judge_rubric_gemini": config["judge"]["gemini"]}
    rules = {teacher_rule(config), *judge_rules(config)}
    waits = {rule: block["batch_wait_h"] for rule, block in blocks.items() if in_batch_mode(block)}
    return {rule: hours for rule, hours in waits.items() if rule in rules}


def judge_rule(config: dict[str, Any], kind: str) -> str:
    """The rule that runs one judge kind: judge_classifier, judge_rubric_local or judge_rubric_gemini."""
    return "judge_classifier" if kind == "classifier" else f"judge_rubric_{config['judge']['backend']}"


def judge_rules(config: dict[str, Any]) -> list[str]:
    """The judge rules a run has (none when judge.kinds is empty), the classifier's first.

    The one place that decides which judge rules run: the rule files, the job plan and
    the preflight all ask here.
    """
    kinds = config["judge"]["kinds"]
    return [judge_rule(config, kind) for kind in ("classifier", "rubric") if kind in kinds]


def local_models(config: dict[str, Any]) -> dict[str, tuple[str, dict[str, Any]]]:
    """Every local model of the run by rule: (its config key, its block)."""
    models = {"rejected": ("rejected", config["rejected"])}
    if runs_locally(config["teacher"]):
        models["chosen_local"] = ("teacher.local", config["teacher"]["local"])
    rules = judge_rules(config)
    if "judge_classifier" in rules:
        models["judge_classifier"] = ("judge.classifier", config["judge"]["classifier"])
    if "judge_rubric_local" in rules:
        models["judge_rubric_local"] = ("judge.local", config["judge"]["local"])
    return models


def demo_models_used(config: dict[str, Any]) -> list[str]:
    """The names of the demo models the run's local models name (the demo's rules build them)."""
    out = config["output"]["dir"]
    used = {demo_model_name(out, block["model"]) for _, block in local_models(config).values()}
    return [name for name in DEMO_MODEL_RULES if name in used]


def demo_rules(config: dict[str, Any]) -> list[str]:
    """The demo's rules that build the models the run names (none in a real run)."""
    return list(dict.fromkeys(DEMO_MODEL_RULES[name] for name in demo_models_used(config)))


def job_counts(config: dict[str, Any]) -> dict[str, int]:
    """Jobs per rule of a full run from nothing (a batch rule is one job for every shard)."""
    shards = config["n_shards"]
    counts = {"questions": 1, "shard": shards, "rejected": shards, teacher_rule(config): shards}
    counts.update(pairs=shards)
    counts.update({rule: shards for rule in judge_rules(config)})
    counts.update({rule: 1 for rule in batch_rules(config)})
    counts.update(merge_pairs=1, finalize=1, validate=1)
    return {**{rule: 1 for rule in demo_rules(config)}, **counts}


def _approx_tokens(text: str) -> int:
    return math.ceil(len(text) / 4)  # about four characters a token in English


def engine_speed(config: dict[str, Any], model: dict[str, Any]) -> tuple[float, float]:
    """Assumed new tokens/s per GPU and start-up minutes per job of a local model's engine."""
    assumed = config["estimate"]
    if serves_vllm(model):
        return assumed["vllm_tokens_per_second_per_gpu"], assumed["vllm_start_up_minutes"]
    return assumed["tokens_per_second_per_gpu"], assumed["model_start_up_minutes"]


def most_shards_for_start_up(generation_minutes: float, start_up_minutes: float, share: float = 0.1) -> int:
    """The most shards that keep start-up at or under ``share`` of the GPU time of a model's jobs."""
    if start_up_minutes <= 0:
        return 999
    return max(1, math.floor(generation_minutes * share / (1 - share) / start_up_minutes))


def estimate(config: dict[str, Any]) -> dict[str, Any]:
    """Jobs, time limits, GPU-hours and Gemini dollars of a full run, with the assumptions used."""
    n, counted = question_count(config)
    per_shard = questions_per_shard(config, n)
    gpu_hours, start_up_share, assumed = {}, {}, {}
    for rule, (_, model) in local_models(config).items():
        speed, start_up = engine_speed(config, model)
        answers = 2 * n if rule.startswith("judge_") else n  # a judge grades both answers of a pair
        generation_minutes = answers * model["max_new_tokens"] / speed / 60
        start_ups = config["n_shards"] * start_up
        gpu_hours[rule] = round((generation_minutes + start_ups) / 60, 2)
        start_up_share[rule] = {
            "share": round(start_ups / (generation_minutes + start_ups), 3) if start_ups else 0.0,
            "most_shards_for_10_percent": most_shards_for_start_up(generation_minutes, start_up),
        }
        assumed[rule] = {"engine": model["engine"], "tokens_per_second": speed, "start_up_minutes": start_up}
    out: dict[str, Any] = {
        "questions": n,
        "questions_assumed": config["questions"]["n"] is None and counted is None,
        "questions_counted": (
            {"source": config["source"]["dataset"], "rows": counted[0]} if counted is not None else None
        ),
        "questions_per_shard": per_shard,
        "jobs": job_counts(config),
        "time_limit_minutes": {
            rule: rule_runtime_minutes(config, rule, per_shard)
            for rule in ("rejected", teacher_rule(config), *judge_rules(config))
            if rule not in batch_rules(config)
        },
        "batch_wait_hours": batch_rules(config),
        "gpu_hours_at_most": gpu_hours,
        "start_up": start_up_share,
        "assumed_per_rule": assumed,
    }
    if asks_gemini(config["teacher"]):
        gemini = config["teacher"]["gemini"]
        prompt = _approx_tokens(config["prompts"]["teacher"]) + 30  # a MedQuAD question: ~30 tokens
        out["gemini_usd_at_most"] = _usd(config, gemini, n * prompt, n * gemini["max_output_tokens"], "")
        out["gemini_batch_usd_at_most"] = _usd(
            config, gemini, n * prompt, n * gemini["max_output_tokens"], "batch_"
        )
    if "judge_rubric_gemini" in judge_rules(config):
        out["judge_usd_at_most"] = judge_gemini_usd(config, n)
        out["judge_batch_usd_at_most"] = judge_gemini_usd(config, n, "batch_")
    return out


def _usd(
    config: dict[str, Any], gemini: dict[str, Any], input_tokens: int, output_tokens: int, prices: str
) -> float | None:
    """Dollars at the online (``prices`` "") or batch ("batch_") prices of the gemini_prices entry the
    block is billed by; None when the table has none (the preflight then stops: missing_prices)."""
    price = gemini_price(config, gemini)
    if price is None:
        return None
    dollars = (
        input_tokens * price[prices + "input_per_million"]
        + output_tokens * price[prices + "output_per_million"]
    )
    return round(dollars / 1e6, 2)


def missing_prices(config: dict[str, Any]) -> dict[str, str]:
    """The Gemini blocks the run uses whose model gemini_prices does not list: block -> model."""
    blocks = {}
    if asks_gemini(config["teacher"]):
        blocks["teacher.gemini"] = config["teacher"]["gemini"]
    if "judge_rubric_gemini" in judge_rules(config):
        blocks["judge.gemini"] = config["judge"]["gemini"]
    return {
        name: block.get("accept_served_model") or block["model"]
        for name, block in blocks.items()
        if gemini_price(config, block) is None
    }


def _batch_lines(plan: dict[str, Any]) -> list[str]:
    """One line per Gemini rule in batch mode: one job for every shard, where it waits and how long."""
    return [
        f"{rule}: one job for every shard, run where Snakemake runs (no cluster job, no core): it creates "
        f"every shard's batch at once and waits for them together, up to {hours:g} h (batch_wait_h)"
        for rule, hours in plan.get("batch_wait_hours", {}).items()
    ]


# The rubric prompt and the request's framing, in tokens (about 1,750 characters of grading.RUBRIC_PROMPT)
RUBRIC_PROMPT_TOKENS = 450


def judge_gemini_usd(config: dict[str, Any], n: int, prices: str = "") -> float | None:
    """Dollars of a Gemini rubric judge at most: both answers at their caps, verdicts at max_output_tokens."""
    gemini = config["judge"]["gemini"]
    teacher = config["teacher"][config["teacher"]["backend"]]
    answer_caps = config["rejected"]["max_new_tokens"] + teacher.get(
        "max_new_tokens", teacher.get("max_output_tokens", 0)
    )
    input_tokens = n * (2 * (RUBRIC_PROMPT_TOKENS + 30) + answer_caps)
    return _usd(config, gemini, input_tokens, 2 * n * gemini["max_output_tokens"], prices)


def render_estimate(plan: dict[str, Any]) -> list[str]:
    """The estimate as lines a person reads."""
    assumed = " (questions.n is null: assumed, about MedQuAD's size)" if plan.get("questions_assumed") else ""
    counted = plan.get("questions_counted")
    if counted:
        assumed = (
            f" (questions.n is null: all that survive cleaning of the {counted['rows']} rows "
            f"of {counted['source']})"
        )
    lines = [
        f"{plan['questions']} questions{assumed}, {plan['questions_per_shard']} per shard; jobs: "
        + ", ".join(f"{rule} {count}" for rule, count in plan["jobs"].items()),
        "time limit per shard job (first try; each retry asks for more): "
        + ", ".join(f"{rule} {minutes} min" for rule, minutes in plan["time_limit_minutes"].items()),
    ]
    lines += _batch_lines(plan)
    if plan["gpu_hours_at_most"]:
        total = sum(plan["gpu_hours_at_most"].values())
        lines.append(
            f"GPU-hours at most {total:.1f} ("
            + ", ".join(f"{rule} {hours}" for rule, hours in plan["gpu_hours_at_most"].items())
            + "): every answer at its token cap; assumed (config estimate.*): "
            + ", ".join(
                f"{rule} {a['engine']} {a['tokens_per_second']:g} new tokens/s per GPU and "
                f"{a['start_up_minutes']:g} min start-up per job"
                for rule, a in plan["assumed_per_rule"].items()
            )
        )
    if "gemini_usd_at_most" in plan and plan["gemini_usd_at_most"] is None:
        lines.append("Gemini: no dollar estimate, gemini_prices has no price for the teacher's model")
    elif "gemini_usd_at_most" in plan:
        lines.append(
            f"Gemini at most ${plan['gemini_usd_at_most']:.2f} online, "
            f"${plan['gemini_batch_usd_at_most']:.2f} in batch mode (every answer at max_output_tokens)"
        )
    if "judge_usd_at_most" in plan and plan["judge_usd_at_most"] is None:
        lines.append("Gemini rubric judge: no dollar estimate, gemini_prices has no price for its model")
    elif "judge_usd_at_most" in plan:
        lines.append(
            f"Gemini rubric judge at most ${plan['judge_usd_at_most']:.2f} online, "
            f"${plan['judge_batch_usd_at_most']:.2f} in batch mode (both answers at their caps, every "
            "verdict at max_output_tokens; judge.max_usd stops it earlier, in batch mode before a batch)"
        )
    return lines
