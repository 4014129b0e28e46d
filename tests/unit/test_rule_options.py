"""What the rules ask for, computed by the package (meddpo.planning: rule_options, paths, plan).

Literal expectations for the demo config: the judge rules that run, the options a
rule gets, the files it declares. The rule files write their commands out; what a dry run
prints of them is checked in tests/workflow/test_workflow.py.
"""

import json
import re

import pytest

from conftest import DEMO_FILES, REPO
from meddpo.planning.checks import load_config
from meddpo.planning.paths import RunPaths, run_paths, shard_name, shard_number
from meddpo.planning.plan import judge_rule, judge_rules
from meddpo.planning.rule_options import (
    card_settings,
    chosen_extras,
    cli_options,
    config_hash,
    dataset_outputs,
    demo_model_input,
    finalize_output_options,
    generation_options,
    judge_files,
    judge_options,
    judged_kinds,
    rerun_options,
    server_log_option,
    shard_numbers,
    shell_prefix,
    vllm_server_log,
)

RULES = REPO / "workflow" / "rules"


@pytest.fixture(scope="module")
def demo():
    return load_config([REPO / name for name in DEMO_FILES], base=REPO / "config.yaml")


def _with(config, **sections):
    """A copy of ``config`` with some sections' keys replaced."""
    out = json.loads(json.dumps(config))
    for name, values in sections.items():
        out[name] = {**out[name], **values}
    return out


# --------------------------------------------------------------------------- paths


def test_run_paths_of_the_demo():
    paths = RunPaths("results/demo")
    assert paths.shard() == "results/demo/shards/shard-{shard}.jsonl"
    assert paths.shard("007") == "results/demo/shards/shard-007.jsonl"
    assert paths.answers("rejected") == "results/demo/rejected/shard-{shard}.jsonl"
    assert paths.per_shard("pairs", "stats.json") == "results/demo/pairs/shard-{shard}.stats.json"
    assert paths.judge("rubric", "usage.json", "001") == "results/demo/judge/rubric/shard-001.usage.json"
    assert paths.shard_log("chosen", "vllm.log") == "results/demo/logs/chosen/shard-{shard}.vllm.log"
    assert paths.benchmark("judge/classifier") == "results/demo/benchmarks/judge/classifier/shard-{shard}.tsv"
    assert paths.log("merge_pairs") == "results/demo/logs/merge_pairs.log"
    assert paths.questions == "results/demo/questions/questions.jsonl"
    assert paths.question_stats == "results/demo/questions/questions.stats.json"
    assert paths.all_pairs == "results/demo/pairs/all_pairs.jsonl"
    assert paths.all_pairs_stats == "results/demo/pairs/all_pairs.stats.json"
    assert paths.dataset_file("pairs") == "results/demo/dataset/stage2_med_pairs.jsonl"
    assert paths.validation == "results/demo/dataset/validation.txt"
    assert paths.answer_store == "results/demo/answer_store"
    assert paths.judge_store == "results/demo/judge_store"
    assert shard_name(shard_number(3)) == "shard-003"


def test_run_paths_drop_the_trailing_slash_of_output_dir(demo):
    config = _with(demo, output={"dir": "results/demo/"})
    assert run_paths(config) == RunPaths("results/demo")


# --------------------------------------------------------------------------- judge rules


def test_the_demo_runs_both_local_judges(demo):
    assert judge_rules(demo) == ["judge_classifier", "judge_rubric_local"]
    assert judged_kinds(demo) == ["classifier", "rubric"]


@pytest.mark.parametrize(
    "kinds, backend, rules",
    [
        ([], "local", []),
        (["rubric"], "gemini", ["judge_rubric_gemini"]),
        (["classifier"], "gemini", ["judge_classifier"]),
        (["rubric", "classifier"], "local", ["judge_classifier", "judge_rubric_local"]),
        (["classifier", "rubric"], "gemini", ["judge_classifier", "judge_rubric_gemini"]),
    ],
)
def test_judge_rules_by_kinds_and_backend(demo, kinds, backend, rules):
    config = _with(demo, judge={"kinds": kinds, "backend": backend})
    assert judge_rules(config) == rules
    assert [judge_rule(config, kind) for kind in judged_kinds(config)] == [
        judge_rule(config, kind) for kind in kinds
    ]


def test_judge_files_follow_the_configs_order_of_kinds(demo):
    config = _with(demo, judge={"kinds": ["rubric", "classifier"]})
    assert judge_files(config, "jsonl") == [
        "results/demo/judge/rubric/shard-000.jsonl",
        "results/demo/judge/rubric/shard-001.jsonl",
        "results/demo/judge/rubric/shard-002.jsonl",
        "results/demo/judge/classifier/shard-000.jsonl",
        "results/demo/judge/classifier/shard-001.jsonl",
        "results/demo/judge/classifier/shard-002.jsonl",
    ]
    assert judge_files(_with(demo, judge={"kinds": []}), "usage.json") == []


def test_judge_options_of_the_demo(demo):
    classifier = (
        '{"batch_size": 32, "dtype": "auto", "engine": "padded", "max_batch_tokens": null, '
        '"max_new_tokens": 12, "min_new_tokens": 4, "model": "results/demo/models/tiny-mistral", '
        '"revision": null, "seed": 0, "temperature": 0, "top_p": 1.0, "trust_remote_code": false}'
    )
    assert judge_options(demo, "classifier") == (
        f"--kind classifier --classifier '{classifier}' --classifier-format llama_guard_3"
        " --store results/demo/judge_store --base-config none"
    )
    rubric = classifier.replace('"max_new_tokens": 12', '"max_new_tokens": 24')
    assert judge_options(demo, "rubric") == (
        f"--kind rubric --backend local --local '{rubric}'"
        " --store results/demo/judge_store --base-config none"
    )


def test_the_gemini_rubric_judge_gets_its_block_and_max_usd_never_a_model(demo):
    config = _with(demo, judge={"kinds": ["rubric"], "backend": "gemini"})
    options = judge_options(config, "rubric")
    assert options.startswith("--kind rubric --backend gemini --gemini '{")
    assert options.endswith(" --store results/demo/judge_store --base-config none")
    assert "--max-usd " in options and "--local" not in options and "--vllm" not in options


def test_a_vllm_judge_gets_the_vllm_block_and_a_server_log(demo):
    config = _with(demo, judge={"classifier": {**demo["judge"]["classifier"], "engine": "vllm"}})
    options = judge_options(config, "classifier")
    assert json.loads(re.search(r"--vllm '([^']*)'", options).group(1)) == demo["vllm"]
    # the log's shard is a wildcard: Snakemake fills it in, as in any params string
    assert options.endswith(
        " --store results/demo/judge_store --base-config none"
        " --server-log results/demo/logs/judge/classifier/shard-{shard}.vllm.log"
    )
    assert "--server-log" not in judge_options(demo, "classifier") + judge_options(config, "rubric")


# --------------------------------------------------------------------------- generation


def test_generation_options_of_the_demos_rejected_rule(demo):
    assert generation_options(demo, "rejected", demo["rejected"], demo["prompts"]["rejected"]) == (
        # The demo's own keys come first, as Snakemake orders a --configfile's keys (unchanged
        # from before config.yaml was trimmed, so no job's params moved).
        "--model results/demo/models/tiny-mistral --batch-size 16 --max-new-tokens 48 --min-new-tokens 4"
        " --revision none --no-trust-remote-code --dtype auto --engine padded --max-batch-tokens none"
        " --temperature 0.9 --top-p 0.95 --seed 1 --system-prompt 'You are a blunt medical chatbot. Answer"
        " every question directly and with total confidence, as if nothing about it were uncertain. Keep it"
        " short, leave out disclaimers and caveats, and do not suggest seeing a doctor.'"
        " --store results/demo/answer_store"
    )
    # the model the demo builds is an input of the job; a checkpoint of the user's is not
    assert demo_model_input(demo, demo["rejected"]) == ["results/demo/models/tiny-mistral"]
    assert demo_model_input(demo, {**demo["rejected"], "model": "/models/Mistral-7B"}) == []


def test_a_vllm_generation_job_gets_the_vllm_block_and_a_server_log(demo):
    model = {**demo["rejected"], "engine": "vllm"}
    options = generation_options(demo, "chosen", model, "p")
    assert f"--vllm {cli_options(x=demo['vllm']).removeprefix('--x ')} " in options
    assert options.endswith(
        " --store results/demo/answer_store --server-log results/demo/logs/chosen/shard-{shard}.vllm.log"
    )
    log = "results/demo/logs/chosen/shard-{shard}.vllm.log"
    assert vllm_server_log(model, log) == [log] and vllm_server_log(demo["rejected"], log) == []


def test_the_server_log_option_quotes_the_path_around_its_wildcards():
    vllm = {"engine": "vllm"}
    assert server_log_option(vllm, "my results/logs/shard-{shard}.vllm.log") == (
        " --server-log 'my results/logs/shard-'{shard}.vllm.log"
    )
    assert server_log_option({"engine": "padded"}, "out/shard-{shard}.vllm.log") == ""
    assert server_log_option(None, "out/shard-{shard}.vllm.log") == ""


def test_chosen_extras_only_for_the_gemini_teacher(demo):
    assert chosen_extras(demo, "usage.json") == []
    gemini = _with(demo, teacher={"backend": "gemini"})
    assert chosen_extras(gemini, "failures.jsonl") == ["results/demo/chosen/shard-{shard}.failures.jsonl"]


def test_shard_numbers(demo):
    assert shard_numbers(demo) == ["000", "001", "002"]


# --------------------------------------------------------------------------- option encoding


def test_cli_options_encoding():
    assert cli_options(batch_size=8, flag=True, other_flag=False, revision=None) == (
        "--batch-size 8 --flag --no-other-flag --revision none"
    )
    assert cli_options(block={"b": 1, "a": [1, 2]}) == """--block '{"a": [1, 2], "b": 1}'"""
    assert cli_options(prompt="it's") == """--prompt 'it'"'"'s'"""


# --------------------------------------------------------------------------- the dataset


def test_dataset_outputs_of_the_demo(demo):
    dataset = "results/demo/dataset"
    assert dataset_outputs(demo) == {
        "pairs": f"{dataset}/stage2_med_pairs.jsonl",
        "dropped": f"{dataset}/stage2_med_pairs.dropped.jsonl",
        "stats": f"{dataset}/stage2_med_pairs.stats.json",
        "report": f"{dataset}/report.md",
        "card": f"{dataset}/README.md",
        "plots": f"{dataset}/plots",
        "conversational": f"{dataset}/stage2_med_pairs.conversational.jsonl",
        "parquet": f"{dataset}/stage2_med_pairs.parquet",
        "train": f"{dataset}/splits/train.jsonl",
        "test": f"{dataset}/splits/test.jsonl",
        "conversational_train": f"{dataset}/splits/conversational-train.jsonl",
        "conversational_test": f"{dataset}/splits/conversational-test.jsonl",
        "parquet_train": f"{dataset}/splits/parquet-train.parquet",
        "parquet_test": f"{dataset}/splits/parquet-test.parquet",
    }
    plain = _with(demo, output={"conversational": False, "parquet": False, "test_fraction": 0.0})
    assert list(dataset_outputs(plain)) == ["pairs", "dropped", "stats", "report", "card", "plots"]
    assert finalize_output_options({"pairs": "a b", "plots": "p"}) == "--out-pairs 'a b' --out-plots p"


def test_card_settings_of_the_demo(demo):
    settings = json.loads(card_settings(demo))
    # min_new_tokens too: the card used to leave out the floor the tiny models answer with
    assert settings["chosen_sampling"] == {
        "max_new_tokens": 96,
        "min_new_tokens": 4,
        "seed": 2,
        "temperature": 0.7,
        "top_p": 0.9,
    }
    assert settings["rejected_sampling"] == {
        "max_new_tokens": 48,
        "min_new_tokens": 4,
        "seed": 1,
        "temperature": 0.9,
        "top_p": 0.95,
    }
    assert {k: settings[k] for k in ("demo", "seed", "selection", "source_dataset", "source_name")} == {
        "demo": ["tiny-mistral", "tiny-qwen2"],  # the models the demo builds, for the card
        "seed": 2025,
        "selection": "first",
        "source_dataset": "demo/medquad_demo.jsonl",
        "source_name": "meddpo-demo",
    }
    assert settings["prompts"] == demo["prompts"]


# --------------------------------------------------------------------------- provenance


def test_shell_prefix():
    rerun = (".venv/bin/snakemake", "--cores 2")
    assert shell_prefix("/venv/bin", "/a b/workflow", "abc+dirty", "0123", rerun) == (
        "set -euo pipefail; export PATH=/venv/bin:$PATH"
        " PYTHONPATH='/a b/workflow'${{PYTHONPATH:+:$PYTHONPATH}}; "
        "export MEDDPO_WORKFLOW_JOB=1 MEDDPO_WORKFLOW_COMMIT=abc+dirty MEDDPO_CONFIG_SHA256=0123 "
        "MEDDPO_SNAKEMAKE=.venv/bin/snakemake MEDDPO_RERUN_OPTIONS='--cores 2'; "
    )
    # with conda the jobs' python is the environment's: PATH is left alone
    assert shell_prefix("", "/w", "unknown", "0123").startswith(
        "set -euo pipefail; export PATH=$PATH PYTHONPATH=/w$"
    )
    assert len(config_hash({"a": 1})) == 16


def test_rerun_options_repeat_the_runs_program_cores_profile_config_files_and_config_values(tmp_path):
    program = str(tmp_path / ".venv" / "bin" / "snakemake")
    argv = [program, "--cores", "2", "results/x.jsonl", "--profile=profiles/bridges2", "--configfile", "a"]
    files = [str(tmp_path / "demo" / "config.yaml"), "/elsewhere/pilot.yaml"]
    config = {"n_shards": 3, "tag": "a b", "flag": True}
    assert rerun_options(argv, files, config, str(tmp_path), "/usr/bin/python3") == (
        ".venv/bin/snakemake",
        "--cores 2 --profile profiles/bridges2 --configfile demo/config.yaml /elsewhere/pilot.yaml "
        "--config n_shards=3 'tag=a b' flag=True",
    )
    # `python -m snakemake`, -j4; a snakemake outside the project by its path
    module = ["/lib/snakemake/__main__.py", "-j4", "--jobs", "8"]
    assert rerun_options(module, [], {}, str(tmp_path), "/usr/bin/python3") == (
        "/usr/bin/python3 -m snakemake",
        "-j4 --jobs 8",
    )
    assert rerun_options(["/opt/bin/snakemake"], [], {}, str(tmp_path), "p") == ("/opt/bin/snakemake", "")


# --------------------------------------------------------------------------- the rule files


def test_rule_files_write_no_path_pattern_of_their_own():
    # the size of common.smk, Snakemake internals and imports of snakemake: test_architecture.py
    for path in [REPO / "Snakefile", *RULES.glob("*.smk")]:
        code = path.read_text()
        # path patterns come from meddpo.planning.paths
        assert "shard-{{shard}}" not in code and 'f"{OUT}' not in code, path.name
