"""Option types and shared option groups of the ``meddpo`` parser (cli.py).

A setting's option carries the config key's name and its default and limits from the
config schema; ``none`` stands for a null value.
"""

from __future__ import annotations

import argparse
import json
import math
import os
from pathlib import Path

from meddpo.config import settings as schema


def integer(text: str) -> int:
    """An integer option; a whole number written as a float (YAML's ``1000.0``) is accepted too."""
    try:
        return int(text)
    except ValueError:
        try:
            number = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if not number.is_integer():
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        return int(number)


def nullable(kind, words=("none", "null")):
    """An option type where ``none`` (or ``null``; for a count, ``all`` too) stands for None."""

    def parse(text: str):
        return None if text.lower() in words else kind(text)

    parse.__name__ = kind.__name__
    return parse


def _json_object(example: str = "{...}"):
    """An option type: a JSON object (``example`` shows one in the error)."""

    def parse(text: str) -> dict:
        try:
            value = json.loads(text)
        except json.JSONDecodeError as err:
            raise argparse.ArgumentTypeError(f"not JSON: {err.msg} at character {err.pos + 1}") from None
        if not isinstance(value, dict):
            raise argparse.ArgumentTypeError(f"expected a JSON object such as {example}")
        return value

    parse.__name__ = "JSON object"
    return parse


def config_block(path: str):
    """An option type: the config block at ``path`` as JSON, checked against the schema."""

    def parse(text: str) -> dict:
        import jsonschema

        try:
            value = json.loads(text)
        except json.JSONDecodeError as err:
            raise argparse.ArgumentTypeError(f"not JSON: {err.msg}") from None
        node = schema.section(path)
        try:
            jsonschema.validate(value, {**node, "$defs": schema.schema()["$defs"]})
        except jsonschema.ValidationError as err:
            where = ".".join(str(part) for part in err.absolute_path) or "the block"
            raise argparse.ArgumentTypeError(f"{path} {where}: {err.message}") from None
        return value

    parse.__name__ = f"{path} block"
    return parse


vllm_block = config_block("vllm")


def _out_of_range(value, limits: dict) -> str | None:
    """What is wrong with ``value`` under the schema's range keywords ``limits``, or None."""
    if isinstance(value, float) and not math.isfinite(value):
        return "must be a finite number"  # nan and inf, which the config check refuses too
    rules = (
        ("minimum", lambda bound: value < bound, "must be at least"),
        ("exclusiveMinimum", lambda bound: value <= bound, "must be more than"),
        ("maximum", lambda bound: value > bound, "must be at most"),
        ("exclusiveMaximum", lambda bound: value >= bound, "must be less than"),
    )
    for word, broken, text in rules:
        if word in limits and isinstance(value, int | float) and broken(limits[word]):
            return f"{text} {limits[word]}"
    if "minLength" in limits and isinstance(value, str) and len(value) < limits["minLength"]:
        return "must not be empty" if limits["minLength"] == 1 else f"needs {limits['minLength']} characters"
    return None


def within(kind, limits: dict):
    """An option type: ``kind``, then the schema's range for the setting (None, a null, passes)."""

    def parse(text: str):
        value = kind(text)
        problem = None if value is None else _out_of_range(value, limits)
        if problem:
            raise argparse.ArgumentTypeError(f"{problem}, got {text}" if text else problem)
        return value

    parse.__name__ = getattr(kind, "__name__", "value")
    return parse


# options that are not config settings: seconds between progress lines (0: every step)
SECONDS = within(float, {"minimum": 0})


def given(namespace: argparse.Namespace) -> set[str]:
    """The settings given on the command line (by dest): the config files fill in the others."""
    return namespace.__dict__.setdefault("given_settings", set())


class StoreGiven(argparse._StoreAction):
    """Store the value and remember that the option was given (``given``)."""

    def __call__(self, parser, namespace, values, option_string=None):
        super().__call__(parser, namespace, values, option_string)
        given(namespace).add(self.dest)


class _Switch(argparse.BooleanOptionalAction):
    def __call__(self, parser, namespace, values, option_string=None):
        super().__call__(parser, namespace, values, option_string)
        given(namespace).add(self.dest)


def from_config(parser: argparse.ArgumentParser, dest: str, path: str, needed: bool = False) -> None:
    """Option ``dest`` takes the value of config ``path`` when it is not given (meddpo.cli.step_config);
    ``needed``: one of them must give it."""
    known = parser.get_default("config_settings") or []
    parser.set_defaults(config_settings=[*known, (dest, path, needed)])


def setting(parser: argparse.ArgumentParser, path: str, *aliases: str, **kwargs) -> None:
    """An option for the config setting ``path``, named after its key.

    Its default, choices and range (minimum, maximum, ...) come from the schema,
    so a value the config check would refuse is refused here too, in one line.
    Unless the option is given, the step takes the setting from the config files it reads, as
    the workflow does (meddpo.cli.step_config); ``required`` means one of the two must give it.
    """
    key = path.rpartition(".")[2]
    node = schema.section(path.rpartition(".")[0])["properties"][key] if "." in path else {}
    if "enum" in node:
        kwargs.setdefault("choices", schema.choices(path))
    needed = kwargs.pop("required", False)
    if not needed:
        kwargs.setdefault("default", schema.default(path, None))
    if kwargs.get("default") is not argparse.SUPPRESS:  # SUPPRESS: the step layers its config itself
        from_config(parser, key, path, needed)
    limits = schema.bounds(path)
    if limits:
        kwargs["type"] = within(kwargs.get("type", str), limits)
    kwargs["action"] = _Switch if node.get("type") == "boolean" else StoreGiven
    parser.add_argument(f"--{key.replace('_', '-')}", *aliases, dest=key, **kwargs)


def local_model_options(p: argparse.ArgumentParser) -> None:
    """The ``rejected`` / ``teacher.local`` block (``local_model`` in the schema)."""
    setting(p, "local_model.model", required=True, help="hub id or local checkpoint directory")
    setting(p, "local_model.revision", type=nullable(str))
    setting(p, "local_model.trust_remote_code")
    setting(p, "local_model.dtype")
    setting(p, "local_model.engine")
    setting(p, "local_model.batch_size", type=integer, help="prompts per generate() call at most")
    setting(
        p,
        "local_model.max_batch_tokens",
        type=nullable(integer),
        help="padded tokens (prompts x (longest prompt + max new tokens)) per batch at most",
    )
    setting(p, "local_model.max_new_tokens", type=integer, required=True)
    setting(p, "local_model.min_new_tokens", type=integer)
    setting(p, "local_model.temperature", type=float, required=True)
    setting(p, "local_model.top_p", type=float)
    setting(p, "local_model.seed", type=integer)


def gemini_options(p: argparse.ArgumentParser) -> None:
    """The ``teacher.gemini`` block; earlier flag names stay as aliases."""
    g = "teacher.gemini."
    setting(p, g + "model")
    setting(p, g + "temperature", type=float)
    setting(p, g + "max_output_tokens", type=integer)
    setting(p, g + "thinking_budget", type=nullable(integer), help="none = the model's default")
    setting(p, g + "concurrency", type=integer)
    setting(p, g + "requests_per_minute", type=float)
    setting(p, g + "max_attempts", type=integer)
    setting(p, g + "initial_backoff_s", "--initial-backoff", type=float)
    setting(p, g + "max_backoff_s", "--max-backoff", type=float)
    setting(p, g + "timeout_s", "--timeout", type=float, help="seconds per request")
    setting(p, g + "base_url", type=nullable(str), help="API endpoint (none: the SDK's)")
    setting(p, g + "secrets_file", type=nullable(str), help="file with a GEMINI_API_KEY=... line")
    price_option(p)
    setting(p, g + "mode")
    setting(p, g + "batch_poll_s", type=float)
    setting(p, g + "batch_wait_h", type=float)
    setting(p, g + "batch_max_age_h", type=float)
    setting(p, g + "batch_too_old")
    setting(p, g + "batch_inline_limit_mb", type=float)
    setting(p, g + "batch_max_attempts", type=integer)
    setting(p, g + "max_failed_fraction", type=float)
    setting(p, g + "ask_refused_again")
    setting(p, g + "max_refused_fraction", type=float)
    setting(p, g + "too_many_refusals")
    setting(p, g + "accept_served_model", type=nullable(str), help="a model taken on purpose when it serves")
    from_config(p, "price", "price")  # after model and accept_served_model, which name the entry


def _price_entry(text: str) -> dict:
    """A gemini_prices entry as JSON (``$defs/gemini_price`` of the schema)."""
    import jsonschema

    value = _json_object('{"input_per_million": 0.3, ...}')(text)
    try:
        jsonschema.validate(value, schema.schema()["$defs"]["gemini_price"])
    except jsonschema.ValidationError as err:
        where = ".".join(str(part) for part in err.absolute_path) or "the entry"
        raise argparse.ArgumentTypeError(f"gemini_prices entry, {where}: {err.message}") from None
    return value


_price_entry.__name__ = "gemini_prices entry"
# the price options of earlier versions, by the key each became in a gemini_prices entry
_OLD_PRICE_FLAGS = {
    ("--price-input-per-million", "--input-price"): "input_per_million",
    ("--price-output-per-million", "--output-price"): "output_per_million",
    ("--batch-price-input-per-million",): "batch_input_per_million",
    ("--batch-price-output-per-million",): "batch_output_per_million",
}


def price_option(p: argparse.ArgumentParser) -> None:
    """``--price``: the model's gemini_prices entry as JSON (none: the schema's entry for the model). The
    price options of earlier versions stop with one line saying where prices live now."""
    p.add_argument(
        "--price",
        type=nullable(_price_entry),
        default=None,
        action=StoreGiven,
        help="the model's gemini_prices entry, JSON (default: the schema's, when it lists the model)",
    )
    for flags, new in _OLD_PRICE_FLAGS.items():
        p.add_argument(*flags, type=_moved(new), dest=f"moved_{new}", help=argparse.SUPPRESS)


def _moved(new: str):
    def parse(text: str):
        raise argparse.ArgumentTypeError(
            f"prices now live per model: give --price with the model's gemini_prices entry as JSON "
            f"({new} among {', '.join(schema.PRICE_KEYS)})"
        )

    parse.__name__ = "price"
    return parse


def finalize_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--pairs", required=True, type=Path, help="all pairs of the run (merge output)")
    p.add_argument("--pair-stats", type=Path)
    p.add_argument("--question-stats", type=Path)
    for role in ("rejected", "chosen"):
        p.add_argument(f"--{role}-answers", nargs="*", default=[], type=Path)
        p.add_argument(f"--{role}-benchmarks", nargs="*", default=[], type=Path)
    p.add_argument("--judge-benchmarks", nargs="*", default=[], type=Path)
    p.add_argument(
        "--estimate", type=Path, help="what the preflight estimated at the start of the run (read if there)"
    )
    setting(
        p,
        "quality.policy",
        type=_json_object('{"chosen_truncated": "flag"}'),
        help="JSON {flag: keep|flag|drop}; unnamed flags: the defaults",
    )
    setting(p, "quality.near_identical_threshold", type=float)
    setting(p, "quality.min_plain_share", type=float)
    setting(p, "judge.min_margin", type=float, help="|judge margin| under this is a tie (judge_tie)")
    setting(p, "output.test_fraction", type=float, help="> 0: also write a deterministic train/test split")
    p.add_argument(
        "--settings",
        type=_json_object(),
        default={},
        action=StoreGiven,
        help="JSON: prompts, source, selection, sampling (for the card; default: from the config files)",
    )
    from_config(p, "settings", "card")
    # provenance comes through the environment in the workflow (never a rule's params)
    p.add_argument("--workflow-commit", default=os.environ.get("MEDDPO_WORKFLOW_COMMIT", "unknown"))
    p.add_argument("--config-hash", default=os.environ.get("MEDDPO_CONFIG_SHA256", "unknown"))
    for name in ("pairs", "dropped", "stats", "report", "card"):
        p.add_argument(f"--out-{name}", required=True, type=Path)
    p.add_argument("--out-plots", required=True, type=Path, help="folder for the report's plots")
    for fmt in ("", "conversational-", "parquet-"):
        for split in ("train", "test"):
            p.add_argument(
                f"--out-{fmt}{split}", type=Path, help="this split of this format (test_fraction > 0)"
            )
    for fmt in ("conversational", "parquet"):
        p.add_argument(
            f"--out-{fmt}", type=Path, help="every kept pair in this format; written only when given"
        )
