"""Where a run's files lie under ``output.dir``: every output path pattern, written once.

The workflow's rules (through workflow/rules/common.smk) and the package modules that
find a run's files (status, preflight) read their paths from here. ``{shard}`` is left
in a pattern as the Snakemake wildcard unless a shard's number is given.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

# The stores' folders under output.dir: answers and verdicts kept across failures and reruns
ANSWER_STORE_FOLDER = "answer_store"
JUDGE_STORE_FOLDER = "judge_store"
SHARDS_FOLDER = "shards"
DATASET_FOLDER = "dataset"
LOGS_FOLDER = "logs"
BENCHMARKS_FOLDER = "benchmarks"
SHARD_WILDCARD = "{shard}"
# The dataset's files (under DATASET_FOLDER), by the finalize option that names them.
DATASET_FILES = {
    "pairs": "stage2_med_pairs.jsonl",
    "dropped": "stage2_med_pairs.dropped.jsonl",
    "stats": "stage2_med_pairs.stats.json",
    "report": "report.md",
    "card": "README.md",
    "plots": "plots",
    "conversational": "stage2_med_pairs.conversational.jsonl",
    "parquet": "stage2_med_pairs.parquet",
}
VALIDATION_FILE = "validation.txt"
# The models the demo builds, by name, and their folders under output.dir: only there, so a
# model the demo builds can never be written over a checkpoint named elsewhere. A model key
# names one as demo:<name> (it then follows output.dir) or by its folder.
DEMO_PREFIX = "demo:"
DEMO_MODEL_FOLDERS = {
    "tiny-mistral": "models/tiny-mistral",  # random weights (meddpo.demo.tiny_models)
    "tiny-qwen2": "models/tiny-qwen2",
    "smollm2-135m-instruct": "models/smollm2-135m-instruct",  # a real instruct model (meddpo.demo.smollm2)
}


# What each demo model is, for the report and the card.
DEMO_MODEL_NOTES = {
    "tiny-mistral": "tiny, random weights: its text is noise",
    "tiny-qwen2": "tiny, random weights: its text is noise",
    "smollm2-135m-instruct": (
        "SmolLM2-135M-Instruct, 135M parameters: readable English, unreliable medical facts, "
        "far too small to grade answers"
    ),
}
# The rule that builds each demo model (workflow/rules/demo.smk): the two tiny models are built together.
DEMO_MODEL_RULES = {
    "tiny-mistral": "tiny_models",
    "tiny-qwen2": "tiny_models",
    "smollm2-135m-instruct": "smollm2",
}


def demo_model_paths(output_dir: str) -> dict[str, str]:
    """The demo's model folders for ``output.dir``, by name."""
    return {name: f"{output_dir.rstrip('/')}/{folder}" for name, folder in DEMO_MODEL_FOLDERS.items()}


def demo_model_of(model: str) -> str | None:
    """The demo model a model path names by its folder (``.../models/tiny-mistral``), whatever output.dir."""
    for name, folder in DEMO_MODEL_FOLDERS.items():
        if model.rstrip("/").endswith("/" + folder) or model.rstrip("/") == folder:
            return name
    return None


def demo_model_name(output_dir: str, model: str) -> str | None:
    """The name of the demo model whose folder under ``output.dir`` a model key names, or None."""
    absolute = os.path.abspath(os.path.expanduser(model))
    for name, path in demo_model_paths(output_dir).items():
        if absolute == os.path.abspath(path):
            return name
    return None


def shard_number(index: int) -> str:
    """The name of shard ``index`` in file names and the DAG: 000 .. n_shards-1."""
    return f"{index:03d}"


def shard_name(shard: str = SHARD_WILDCARD) -> str:
    return f"shard-{shard}"


def split_file(fmt: str, split: str) -> str:
    """A train/test file under the dataset folder: the JSONL as written, or another format."""
    if fmt == "pairs":
        return f"splits/{split}.jsonl"
    ext = "parquet" if fmt == "parquet" else "jsonl"
    return f"splits/{fmt}-{split}.{ext}"


def run_paths(config: dict[str, Any]) -> RunPaths:
    """The paths of the run a config describes."""
    return RunPaths(config["output"]["dir"].rstrip("/"))


@dataclass(frozen=True)
class RunPaths:
    """The paths of one run's files, under ``out`` (``output.dir`` without a trailing slash)."""

    out: str

    def under(self, *parts: str) -> str:
        return "/".join((self.out, *parts))

    @property
    def answer_store(self) -> str:
        return self.under(ANSWER_STORE_FOLDER)

    @property
    def judge_store(self) -> str:
        return self.under(JUDGE_STORE_FOLDER)

    @property
    def questions(self) -> str:
        return self.under("questions", "questions.jsonl")

    @property
    def question_stats(self) -> str:
        return self.under("questions", "questions.stats.json")

    @property
    def all_pairs(self) -> str:
        return self.under("pairs", "all_pairs.jsonl")

    @property
    def all_pairs_stats(self) -> str:
        return self.under("pairs", "all_pairs.stats.json")

    def dataset_file(self, name: str) -> str:
        """A file of the dataset folder, by its DATASET_FILES key."""
        return self.under(DATASET_FOLDER, DATASET_FILES[name])

    def dataset_split(self, fmt: str, split: str) -> str:
        return self.under(DATASET_FOLDER, split_file(fmt, split))

    @property
    def validation(self) -> str:
        return self.under(DATASET_FOLDER, VALIDATION_FILE)

    def per_shard(self, folder: str, suffix: str = "jsonl", shard: str = SHARD_WILDCARD) -> str:
        """One shard's file in a folder under ``out``: shards, rejected, chosen, pairs, judge/<kind>."""
        return self.under(folder, f"{shard_name(shard)}.{suffix}")

    def shard(self, shard: str = SHARD_WILDCARD) -> str:
        """A shard's questions."""
        return self.per_shard(SHARDS_FOLDER, shard=shard)

    def answers(self, side: str, shard: str = SHARD_WILDCARD) -> str:
        """A shard's answers of one side (rejected or chosen)."""
        return self.per_shard(side, shard=shard)

    def judge(self, kind: str, suffix: str = "jsonl", shard: str = SHARD_WILDCARD) -> str:
        """A shard's file of one judge kind: ``jsonl`` verdicts, ``usage.json``."""
        return self.per_shard(f"judge/{kind}", suffix, shard)

    def shard_log(self, step: str, suffix: str = "log") -> str:
        """A shard job's log (``log``, or the vLLM server's ``vllm.log``) under logs/<step>."""
        return self.per_shard(f"{LOGS_FOLDER}/{step}", suffix)

    @property
    def estimate(self) -> str:
        """What the preflight estimated at the start of the latest real run (its report's "estimated")."""
        return self.under(LOGS_FOLDER, "estimate.json")

    def log(self, rule: str) -> str:
        """The log of a job that runs once per run."""
        return self.under(LOGS_FOLDER, f"{rule}.log")

    def benchmark(self, step: str) -> str:
        """A shard job's benchmark file under benchmarks/<step>."""
        return self.per_shard(f"{BENCHMARKS_FOLDER}/{step}", "tsv")

    def run_benchmark(self, rule: str) -> str:
        """The benchmark file of a job that runs once per run (a Gemini rule in batch mode)."""
        return self.under(BENCHMARKS_FOLDER, f"{rule}.tsv")
