"""config.yaml sets only what the real run chooses on purpose.

Every other key takes its default from the schema (workflow/meddpo/config/config.schema.yaml), so a
default is written once. Each key config.yaml may set is listed here with the reason it is
there; a key set to the schema's default must be listed among the ones shown on purpose.
"""

from typing import Any

import pytest
import yaml

from conftest import REPO
from meddpo.config import settings
from meddpo.planning.checks import load_config

# Keys whose value is the real run's own choice: the schema has no default for them, or
# config.yaml sets another value than the default.
CHOSEN = {
    "questions.n": "the real run picks 10,000 questions",
    "questions.seed": "the real run's sample is seeded with 2025",
    "n_shards": "20 shards of 500 questions: short jobs, a model load a small part of each",
    "prompts.training": "the system text of every DPO prompt (no default)",
    "prompts.rejected": "the rejected model's loose, over-confident system prompt (no default)",
    "prompts.teacher": "the teacher's careful system prompt (no default)",
    "rejected.model": "the 'more toxic' model of the real run (no default)",
    "rejected.batch_size": "64 prompts per call on an H100",
    "rejected.max_new_tokens": "the cap sized from the old run's rejected answers (no default)",
    "rejected.temperature": "loose sampling for the rejected answers (no default)",
    "rejected.top_p": "nucleus sampling for the rejected answers",
    "rejected.seed": "a sampling seed apart from the teacher's",
    "teacher.local.model": "the local teacher of the real run (no default)",
    "teacher.local.batch_size": "64 prompts per call on an H100",
    "teacher.local.max_new_tokens": "the cap sized from the old run's Gemini answers (no default)",
    "teacher.local.temperature": "the teacher's sampling temperature (no default)",
    "teacher.local.top_p": "nucleus sampling for the chosen answers",
    "teacher.local.seed": "a sampling seed apart from the rejected model's",
    "judge.local.model": "the suggested local rubric judge, of another family than the teacher (no default)",
    "judge.local.batch_size": "64 prompts per call on an H100",
    "judge.local.max_new_tokens": "a verdict is a short JSON object (no default)",
    "judge.local.temperature": "judges decode greedily (no default; the schema wants 0)",
    "judge.gemini.max_output_tokens": "a verdict is a short JSON object, not a 4,096-token answer",
    "judge.classifier.model": "the suggested safety classifier (no default)",
    "judge.classifier.batch_size": "64 prompts per call on an H100",
    "judge.classifier.max_new_tokens": "'safe', or 'unsafe' and a line of codes (no default)",
    "judge.classifier.temperature": "judges decode greedily (no default; the schema wants 0)",
}

# Keys set to the schema's default on purpose: a user must see them to run or change the run.
SHOWN_AT_DEFAULT = {
    "source.dataset": "the source a user must see (and may point at a local copy)",
    "questions.selection": "the stratified sample is a choice of the real run, explained next to it",
    "teacher.backend": "local or gemini: the main choice of a run, where a user looks for it",
    "judge.kinds": "the judge is off in the real run until a user picks one: shown so it can be",
    "output.dir": "where everything is written: a user must see it",
}

_MISSING = object()


def _set_keys(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Every setting a config file sets, by dotted key.

    A mapping the schema splits into keys is walked; an empty one is a setting of its own.
    """
    found = {}
    for key, value in config.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value and "properties" in settings.section(path):
            found.update(_set_keys(value, f"{path}."))
        else:
            found[path] = value
    return found


def _default(path: str) -> Any:
    if "." in path:
        return settings.default(path, _MISSING)
    return settings.schema()["properties"][path].get("default", _MISSING)  # a top-level key


def _is_default(path: str, value: Any) -> bool:
    default = _default(path)
    return (
        default is not _MISSING and value == default and isinstance(value, bool) == isinstance(default, bool)
    )


def problems(config: dict[str, Any]) -> list[str]:
    """What is wrong with a config.yaml by the rule above, one line per key."""
    found = []
    for path, value in _set_keys(config).items():
        if _is_default(path, value) and path not in SHOWN_AT_DEFAULT:
            found.append(
                f"{path}: {value!r} is the schema's default; leave it out of config.yaml, or list it in "
                "SHOWN_AT_DEFAULT with the reason it is shown"
            )
        elif not _is_default(path, value) and path in SHOWN_AT_DEFAULT:
            found.append(f"{path}: {value!r} is not the schema's default any more: move it to CHOSEN")
        elif path not in CHOSEN and path not in SHOWN_AT_DEFAULT:
            found.append(f"{path}: set in config.yaml but not listed in CHOSEN with the reason it is set")
    return found


def _real_config() -> dict[str, Any]:
    return yaml.safe_load((REPO / "config.yaml").read_text())


def test_config_yaml_sets_only_listed_keys_and_no_default_without_a_reason():
    assert problems(_real_config()) == []


def test_every_listed_key_is_set_in_config_yaml():
    stale = (set(CHOSEN) | set(SHOWN_AT_DEFAULT)) - set(_set_keys(_real_config()))
    assert not stale, f"listed here but not set in config.yaml (take them off the lists): {sorted(stale)}"


def test_every_listed_key_has_a_reason_and_is_a_config_key():
    assert not set(CHOSEN) & set(SHOWN_AT_DEFAULT)
    for path, reason in {**CHOSEN, **SHOWN_AT_DEFAULT}.items():
        assert isinstance(reason, str) and reason.strip(), path
        parent, _, key = path.rpartition(".")
        properties = settings.section(parent)["properties"] if parent else settings.schema()["properties"]
        assert key in properties, f"{path} is not a key of the schema"


@pytest.mark.parametrize(
    ("config", "word"),
    [
        ({"teacher": {"gemini": {"concurrency": 32}}}, "teacher.gemini.concurrency: 32 is the schema"),
        ({"rejected": {"dtype": "auto"}}, "rejected.dtype: 'auto' is the schema's default"),
        ({"quality": {"policy": {}}}, "quality.policy: {} is the schema's default"),
        ({"output": {"parquet": True}}, "output.parquet: set in config.yaml but not listed"),
        ({"output": {"dir": "elsewhere"}}, "output.dir: 'elsewhere' is not the schema's default any more"),
        ({"rejected": {"trust_remote_code": 0}}, "rejected.trust_remote_code: set in config.yaml"),
    ],
)
def test_a_restated_default_or_an_unlisted_key_is_caught(config, word):
    assert any(line.startswith(word) for line in problems(config)), problems(config)


def test_config_yaml_is_a_valid_config():
    config = load_config([], base=REPO / "config.yaml")
    assert config["teacher"]["gemini"] == settings.defaults("teacher.gemini")
