"""One place for each default: the config schema. A step run by hand (`meddpo <step>`) gets the
defaults the workflow gets, and the dataclasses and the quality policy agree with them."""

import argparse
import copy
import dataclasses
import re

import pytest
import yaml

from conftest import REPO
from meddpo.cli.parser import build_parser
from meddpo.config import settings
from meddpo.errors import UserError

# sub-command -> the config sections whose keys are its options
SECTIONS = {
    "questions": ("source", "questions"),
    "generate": ("local_model",),
    "gemini": ("teacher.gemini",),
    "finalize": ("quality",),
    "tiny-models": ("demo",),
}
# config keys that are not options of the step (paths the rule gives, switches of the workflow itself)
NOT_OPTIONS = {"demo": {"texts"}}


def _sub(name: str) -> argparse.ArgumentParser:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices[name]


def _options(name: str) -> dict[str, argparse.Action]:
    return {a.dest: a for a in _sub(name)._actions if a.option_strings}


def _from_config(name: str) -> dict[str, tuple[str, bool]]:
    """The options of a sub-command that take a config value when not given: dest -> (path, needed)."""
    return {dest: (path, needed) for dest, path, needed in _sub(name).get_default("config_settings") or []}


@pytest.mark.parametrize("command", sorted(SECTIONS))
def test_every_config_key_is_an_option_with_the_schema_default(command):
    options = _options(command)
    for section in SECTIONS[command]:
        for key, node in settings.section(section)["properties"].items():
            if key in NOT_OPTIONS.get(section, set()):
                continue
            assert key in options, f"{section}.{key} has no option in `meddpo {command}`"
            assert options[key].option_strings[0] == "--" + key.replace("_", "-")
            # not given, the option takes the setting from the config files the step reads
            assert _from_config(command)[key] == (f"{section}.{key}", "default" not in node), key
            if "default" in node:
                assert options[key].default == node["default"], f"{command} --{key}"


def test_the_options_that_must_be_set_are_the_ones_the_schema_leaves_without_default():
    required = {dest for dest, action in _options("generate").items() if action.required}
    assert required == {"shard", "out"}
    # these the options or the config files (with --side) must give
    needed = {dest for dest, (_, needed) in _from_config("generate").items() if needed}
    assert needed == {"model", "max_new_tokens", "temperature", "system_prompt"}


def _documented_defaults() -> dict[str, object]:
    """The default column of the configuration reference in docs/configuration.md, by key.

    A key of a shared block (``*.batch_size``) is named by its first user (``local_model``,
    ``teacher.gemini``); keys without a default ("required", "unset") are left out.
    """
    blocks = {"The local model block": "local_model.", "The Gemini block": "teacher.gemini."}
    found, prefix = {}, ""
    for line in (REPO / "docs" / "configuration.md").read_text(encoding="utf-8").splitlines():
        prefix = next((p for title, p in blocks.items() if line.startswith(f"### {title}")), prefix)
        row = re.match(r"^\| `([^`]+)` \| `([^|]*)` \|", line)
        if row:
            key = prefix + row.group(1).removeprefix("*.") if row.group(1).startswith("*.") else row.group(1)
            found[key] = yaml.safe_load(row.group(2))
    return found


def test_documented_defaults():
    # what a user reads in the docs is the schema's default: the docs cannot drift from the schema
    documented = _documented_defaults()
    sections = ("source", "questions", "teacher", "output", "quality", "quality.policy", "judge", "vllm")
    sections += ("estimate", "demo", "local_model", "teacher.gemini", "gemini_prices")

    def block(section: str, key: str) -> bool:  # a mapping of settings (its keys have rows of their own)
        # (a price entry's default is its row: the entry of gemini-2.5-flash)
        in_rows = ("local_model", "gemini_prices")
        return section not in in_rows and "properties" in settings.section(f"{section}.{key}")

    with_default = {f"{s}.{k}" for s in sections for k in settings.defaults(s) if not block(s, k)}
    assert set(documented) == with_default, "every setting with a default has its row in the docs"
    for key, value in documented.items():
        default = settings.default(key)
        assert value == default and type(value) is type(default), key
    # the defaults the other pages state in words
    quality = (REPO / "docs" / "quality.md").read_text(encoding="utf-8")
    policy = {}
    for flags, action in re.findall(
        r"^\| (`[a-z_]+`(?:, `[a-z_]+`)*) \| [^|]+ \| (keep|flag|drop) \|", quality, re.M
    ):
        policy.update((flag, action) for flag in re.findall(r"`([a-z_]+)`", flags))
    assert policy == settings.defaults("quality.policy")
    assert f"(difflib ratio ≥ {settings.default('quality.near_identical_threshold')})" in quality
    assert f"under {settings.default('quality.min_plain_share'):.0%} plain-English" in quality
    assert f"`-judge.min_margin` ({settings.default('judge.min_margin')})" in quality
    gemini = (REPO / "docs" / "gemini.md").read_text(encoding="utf-8")
    concurrency, per_minute = (
        settings.default(f"teacher.gemini.{k}") for k in ("concurrency", "requests_per_minute")
    )
    assert f"the defaults: `concurrency: {concurrency}`, `requests_per_minute: {per_minute}`" in gemini
    assert f"`thinking_budget: {settings.default('teacher.gemini.thinking_budget')}` (the default)" in gemini
    judge = (REPO / "docs" / "judge.md").read_text(encoding="utf-8")
    margin = settings.default("judge.min_margin")
    assert (
        f"`-judge.min_margin` ({margin})" in judge and f"`min_margin: {margin}` is one rubric point" in judge
    )
    assert f"`judge.max_usd` ({settings.default('judge.max_usd'):g} by default)" in judge


def test_dataclass_defaults_are_the_schema_defaults():
    from meddpo.dataset.quality import DEFAULT_POLICY
    from meddpo.gemini.client import GeminiSettings
    from meddpo.generation.types import ModelSpec, Sampling

    gemini = settings.defaults("teacher.gemini")
    # price: the model's gemini_prices entry, not a key of the block
    assert {f.name for f in dataclasses.fields(GeminiSettings)} - {"price"} == set(
        settings.section("teacher.gemini")["properties"]
    )
    assert {k: v for k, v in dataclasses.asdict(GeminiSettings()).items() if k != "price"} == gemini
    local = settings.defaults("local_model")
    sampling = Sampling(max_new_tokens=7, temperature=0.5)
    assert (sampling.top_p, sampling.seed, sampling.min_new_tokens) == (
        local["top_p"],
        local["seed"],
        local["min_new_tokens"],
    )
    spec = ModelSpec(name="m")
    assert (spec.revision, spec.dtype, spec.trust_remote_code) == (
        local["revision"],
        local["dtype"],
        local["trust_remote_code"],
    )
    assert DEFAULT_POLICY == settings.defaults("quality.policy")


def test_a_default_changed_in_the_schema_reaches_the_command_line(monkeypatch):
    changed = copy.deepcopy(settings.schema())
    changed["$defs"]["gemini"]["properties"]["concurrency"]["default"] = 7
    changed["$defs"]["local_model"]["properties"]["batch_size"]["default"] = 3
    monkeypatch.setattr(settings, "schema", lambda: changed)
    assert _options("gemini")["concurrency"].default == 7
    assert _options("generate")["batch_size"].default == 3


def test_old_flag_names_still_work():
    args = build_parser().parse_args(
        ["gemini", "--shard", "s", "--out", "o", "--failures", "f", "--usage", "u", "--system-prompt", "p"]
        + ["--initial-backoff", "0.5", "--max-backoff", "9", "--timeout", "30", "--thinking-budget", "none"]
    )
    assert (args.initial_backoff_s, args.max_backoff_s, args.timeout_s) == (0.5, 9.0, 30.0)
    assert args.thinking_budget is None and args.price is None
    args = build_parser().parse_args(
        ["questions", "--source", "x.jsonl", "--n", "all", "--out", "o", "--stats", "s"]
    )
    assert (args.dataset, args.n, args.selection) == ("x.jsonl", None, "stratified")


def test_the_real_config_sets_on_purpose_what_differs_from_the_defaults():
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    assert config["rejected"]["batch_size"] == 64 and config["questions"]["seed"] == 2025
    # the quality policy of the real run is the schema's, not a copy of it
    assert "policy" not in config.get("quality", {})


def test_whole_numbers_and_null_words_reach_the_step_as_the_config_meant():
    args = build_parser().parse_args(
        ["generate", "--shard", "s", "--out", "o", "--model", "m", "--max-new-tokens", "1000.0"]
        + ["--temperature", "1", "--system-prompt", "p", "--revision", "all", "--max-batch-tokens", "none"]
    )
    assert (args.max_new_tokens, args.revision, args.max_batch_tokens) == (1000, "all", None)
    with pytest.raises(SystemExit):
        build_parser().parse_args(
            ["generate", "--shard", "s", "--out", "o", "--model", "m"] + ["--max-new-tokens", "7.5"]
        )


def test_the_store_key_does_not_depend_on_how_yaml_wrote_a_number():
    from meddpo.gemini.client import GeminiSettings
    from meddpo.generation.answer_store import fingerprint
    from meddpo.generation.types import model_and_sampling, text_settings

    def local_key(**numbers):
        spec, sampling = model_and_sampling({"model": "m", "max_new_tokens": 8, **numbers})
        return fingerprint(text_settings(spec, "p", sampling))

    assert local_key(temperature=1, top_p=1) == local_key(temperature=1.0, top_p=1.0)
    assert fingerprint(GeminiSettings(temperature=1).text_settings("p")) == fingerprint(
        GeminiSettings(temperature=1.0).text_settings("p")
    )


@pytest.mark.parametrize(
    "flag, named, new",
    [
        ("--input-price", "--price-input-per-million/--input-price", "input_per_million"),
        ("--price-output-per-million", "--price-output-per-million/--output-price", "output_per_million"),
        ("--batch-price-input-per-million", "--batch-price-input-per-million", "batch_input_per_million"),
    ],
)
def test_a_price_option_of_earlier_versions_says_where_prices_live_now(flag, named, new, capsys):
    base = ["gemini", "--shard", "s", "--out", "o", "--failures", "f", "--usage", "u", "--system-prompt", "p"]
    with pytest.raises(SystemExit) as stopped:
        build_parser().parse_args([*base, flag, "1.5"])
    assert stopped.value.code == 2
    assert capsys.readouterr().err == (
        f"meddpo gemini: error: argument {named}: prices now live per model: give --price with the model's "
        f"gemini_prices entry as JSON ({new} among input_per_million, output_per_million, "
        "batch_input_per_million, batch_output_per_million, written)\n"
    )


# --------------------------------------------------------------------------- a step by hand reads the config


def _by_hand(argv: list[str], monkeypatch, cwd=REPO) -> dict:
    """The settings a step run by hand ends up with (parsed, then laid over its config files)."""
    from meddpo.cli.step_config import WORKFLOW_JOB, apply_config

    monkeypatch.chdir(cwd)
    monkeypatch.delenv(WORKFLOW_JOB, raising=False)
    args = build_parser().parse_args(argv)
    apply_config(args)
    drop = {"given_settings", "settings_from", "config_settings", "configfile", "base_config", "func", "side"}
    return {k: v for k, v in vars(args).items() if k not in drop | {"store", "server_log"}}


def _demo_config() -> dict:
    from meddpo.planning.checks import load_config

    return load_config(
        [REPO / "demo" / "config.yaml", REPO / "demo" / "tiny.yaml"], base=REPO / "config.yaml"
    )


def _rule_commands(config: dict) -> dict[str, tuple[list[str], list[str]]]:
    """Per step: the paths both commands name, and the settings the workflow's rule passes
    (workflow/rules/*.smk, through meddpo.planning.rule_options)."""
    import shlex

    from meddpo.planning import rule_options as ro

    def words(text: str) -> list[str]:
        return shlex.split(text)

    local = config["teacher"]["local"]
    shard_paths = ["--shard", "s.jsonl", "--out", "o.jsonl"]
    finalize_paths = ["--pairs", "p.jsonl"] + [f"--out-{n}" for n in ("pairs", "dropped", "stats", "report")]
    finalize_paths = [
        word for name in finalize_paths for word in ([name, "x"] if name.startswith("--out") else [name])
    ]
    finalize_paths += ["--out-card", "c", "--out-plots", "d"]
    return {
        "questions": (
            ["--out", "q", "--stats", "s"],
            words(ro.cli_options(**config["source"], **config["questions"])),
        ),
        "shard": (
            ["--questions", "q", "--index", "1", "--out", "o"],
            ["--n-shards", str(config["n_shards"])],
        ),
        "generate-rejected": (
            shard_paths,
            words(
                ro.generation_options(config, "rejected", config["rejected"], config["prompts"]["rejected"])
            ),
        ),
        "generate-chosen": (
            shard_paths,
            words(ro.generation_options(config, "chosen", local, config["prompts"]["teacher"])),
        ),
        "gemini": (
            ["--shard", "s", "--out", "o", "--failures", "f", "--usage", "u"],
            words(ro.teacher_gemini_options(config)),
        ),
        "pairs": (
            ["--questions", "q", "--rejected", "r", "--chosen", "c", "--out", "o", "--stats", "s"],
            words(ro.cli_options(system_prompt=config["prompts"]["training"])),
        ),
        "finalize": (finalize_paths, words(ro.finalize_options(config))),
        "tiny-models": (
            ["--texts", "t", "--mistral-out", "m", "--qwen-out", "q"],
            words(
                ro.cli_options(
                    **{k: config["demo"][k] for k in ("seed", "mistral_eos_rate", "qwen_eos_rate")}
                )
            ),
        ),
    }


@pytest.mark.parametrize(
    "step",
    [
        "questions",
        "shard",
        "generate-rejected",
        "generate-chosen",
        "gemini",
        "pairs",
        "finalize",
        "tiny-models",
    ],
)
def test_a_step_by_hand_takes_the_settings_the_rule_gives(step, monkeypatch):
    # the demo's config files given to the step: it gets every setting its rule passes, without an option
    paths, rule_options = _rule_commands(_demo_config())[step]
    command = "generate" if step.startswith("generate") else step
    side = ["--side", step.removeprefix("generate-")] if step.startswith("generate") else []
    files = ["--configfile", "demo/config.yaml", "demo/tiny.yaml"]
    by_hand = _by_hand([command, *paths, *side, *files], monkeypatch)
    by_rule = _by_hand([command, *paths, *rule_options, "--base-config", "none"], monkeypatch)
    assert by_hand == by_rule
    assert by_hand  # the step has settings


def test_the_real_config_is_read_from_the_project_folder_and_said(tmp_path, monkeypatch):
    # a 10,000-question set made by hand took seed 0 (the schema's) where config.yaml says 2025
    argv = ["questions", "--source", "medquad.parquet", "--out", "q", "--stats", "s"]
    args = _by_hand(argv, monkeypatch)
    assert (args["n"], args["selection"], args["seed"]) == (10000, "stratified", 2025)
    # options given win; where the settings came from is said
    monkeypatch.chdir(REPO)
    parsed = build_parser().parse_args([*argv, "--seed", "7"])
    from meddpo.cli.step_config import apply_config, settings_line

    apply_config(parsed)
    assert parsed.seed == 7 and parsed.n == 10000
    assert settings_line(parsed) == "settings: config.yaml, under the options given"
    # elsewhere, without a config file, a setting without a default must be given
    with pytest.raises(UserError) as missing:
        _by_hand(argv, monkeypatch, cwd=tmp_path)
    assert str(missing.value) == (
        "--n is needed: give it, or a config file that sets questions.n (--configfile; config.yaml is read "
        "when it is in this folder)"
    )
    assert _by_hand([*argv, "--n", "5"], monkeypatch, cwd=tmp_path)["seed"] == 0


def test_a_workflow_job_reads_no_config_file(monkeypatch, tmp_path):
    from meddpo.cli.step_config import WORKFLOW_JOB, apply_config, settings_line

    monkeypatch.chdir(REPO)
    monkeypatch.setenv(WORKFLOW_JOB, "1")
    args = build_parser().parse_args(["questions", "--source", "x", "--n", "5", "--out", "q", "--stats", "s"])
    apply_config(args)
    assert args.seed == 0  # the rule passes every setting; the job never reads config.yaml
    assert (
        settings_line(args)
        == "settings: the options given (a job of the workflow: its rule gives every setting)"
    )
