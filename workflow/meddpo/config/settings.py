"""The config schema (``config.schema.yaml``, shipped in this package) and its defaults.

The schema is the one place where a setting's default is written. Snakemake
validates the config against it at parse time (which fills the defaults in),
and the command line, the dataclasses and the quality policy read their
defaults from it here, so a step run by hand (``meddpo <step>``) behaves like the
same step in the workflow.

Settings are named by their dotted config path: ``teacher.gemini.concurrency``,
``questions.selection``. The local-model block shared by ``rejected`` and
``teacher.local`` is ``local_model`` (its ``$defs`` entry).
"""

from __future__ import annotations

import functools
import math
import re
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from meddpo.errors import UserError

SCHEMA_FILE = "config.schema.yaml"
_NO_DEFAULT = object()


@functools.cache
def schema() -> dict[str, Any]:
    """The config schema as a mapping."""
    text = resources.files(__package__).joinpath(SCHEMA_FILE).read_text(encoding="utf-8")
    return yaml.safe_load(text)


def _resolve(node: dict[str, Any]) -> dict[str, Any]:
    ref = node.get("$ref")
    if ref is None:
        return node
    target: Any = schema()
    for part in ref.removeprefix("#/").split("/"):
        target = target[part]
    # a $ref beside its own default (policy actions): the local default wins
    return {**target, **{k: v for k, v in node.items() if k != "$ref"}}


def resolved(node: dict[str, Any]) -> dict[str, Any]:
    """A schema node with its ``$ref`` followed (a default beside the ``$ref`` kept)."""
    return _resolve(node)


def section(path: str) -> dict[str, Any]:
    """The schema node of a config path (``teacher.gemini``, or ``local_model``); a key with dots in
    it (``gemini_prices.gemini-2.5-flash``) is found whole."""
    if path == "local_model":
        return schema()["$defs"]["local_model"]
    node, parts = schema(), path.split(".")
    while parts:
        properties = node["properties"]
        take = next((n for n in range(1, len(parts) + 1) if ".".join(parts[:n]) in properties), None)
        if take is None:
            raise KeyError(f"no config key {path} in {SCHEMA_FILE}")
        node, parts = _resolve(properties[".".join(parts[:take])]), parts[take:]
    return node


def _split(path: str) -> tuple[str, str]:
    """``(parent, key)`` of a setting's path, a key with dots in it kept whole."""
    parts = path.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        parent, key = ".".join(parts[:cut]), ".".join(parts[cut:])
        try:
            if key in section(parent).get("properties", {}):
                return parent, key
        except KeyError:
            continue
    return path.rpartition(".")[::2]


def default(path: str, fallback: Any = _NO_DEFAULT) -> Any:
    """The schema default of one setting, e.g. ``default("teacher.gemini.concurrency")``.

    A setting without a default (one the config must give) raises KeyError
    unless ``fallback`` is given.
    """
    parent, key = _split(path)
    node = _resolve(section(parent)["properties"][key])
    if "default" in node:
        return node["default"]
    if fallback is _NO_DEFAULT:
        raise KeyError(f"config key {path} has no default in {SCHEMA_FILE}")
    return fallback


def defaults(path: str) -> dict[str, Any]:
    """Every default of a section, by key (keys without a default are left out)."""
    out = {}
    for key, node in section(path)["properties"].items():
        node = _resolve(node)
        if "default" in node:
            out[key] = node["default"]
    return out


def choices(path: str) -> tuple[Any, ...]:
    """The allowed values of an enum setting."""
    parent, _, key = path.rpartition(".")
    return tuple(_resolve(section(parent)["properties"][key])["enum"])


def local_model_keys() -> list[str]:
    """The dotted keys of every local-model block (``rejected``, ``teacher.local``, ...), from the schema."""
    found: list[str] = []

    def walk(node: dict[str, Any], prefix: str) -> None:
        for key, sub in node.get("properties", {}).items():
            if sub.get("$ref") == "#/$defs/local_model":
                found.append(prefix + key)
            else:
                walk(_resolve(sub), f"{prefix}{key}.")

    walk(schema(), "")
    return found


# the schema keywords that bound one setting's value (the config check applies the same ones)
RANGE_KEYWORDS = ("minimum", "exclusiveMinimum", "maximum", "exclusiveMaximum", "minLength")


def bounds(path: str) -> dict[str, Any]:
    """The range keywords of one setting (``bounds("local_model.max_new_tokens") == {"minimum": 1}``).

    ``path`` may be a top-level key (``n_shards``). The command line checks an
    option against these, so a step run by hand refuses what the config check refuses.
    """
    parent, _, key = path.rpartition(".")
    properties = section(parent)["properties"] if parent else schema()["properties"]
    node = _resolve(properties[key])
    return {word: node[word] for word in RANGE_KEYWORDS if word in node}


# --------------------------------------------------------------------------- config files


class ConfigError(UserError):
    """A config file that cannot be read or a value the schema refuses (one line, with the key)."""


def read_config_file(path: str | Path) -> dict[str, Any]:
    """One YAML config file; a syntax error names the file and line."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError(f"{path}: cannot read the config file ({err.strerror})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f", line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or "not valid YAML"
        raise ConfigError(f"{path}{where}: not valid YAML ({problem})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config file must be a mapping of keys, not {type(data).__name__}")
    return data


def merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """Layer ``update`` over ``base`` as Snakemake layers config files.

    Mappings merge key by key; anything else is replaced.
    """
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


# The name under which the command line's ``--config`` values join the config files (last, as they win)
COMMAND_LINE = "--config"


def where_set(files: dict[str, dict], path: list) -> str:
    """The last config file that sets ``path`` (the one whose value counts), or the command line's
    ``--config`` (the entry named COMMAND_LINE)."""
    found = None
    for name, data in files.items():
        node: Any = data
        for part in path:
            if not isinstance(node, dict) or part not in node:
                break
            node = node[part]
        else:
            found = name
    if found == COMMAND_LINE:
        return " (given on the command line with --config)"
    return f" (set in {found})" if found else ""


# Gemini price keys of a block before prices moved to gemini_prices (2026-12-06): old key -> new key
OLD_PRICE_KEYS = {
    "price_input_per_million": "input_per_million",
    "price_output_per_million": "output_per_million",
    "batch_price_input_per_million": "batch_input_per_million",
    "batch_price_output_per_million": "batch_output_per_million",
}
PRICE_KEYS = (*OLD_PRICE_KEYS.values(), "written")


def gemini_price(config: dict[str, Any], block: dict[str, Any]) -> dict[str, Any] | None:
    """The ``gemini_prices`` entry a Gemini block is billed by (its ``accept_served_model``, else its
    ``model``), from the config's table or, without one, the schema's; None when it has none."""
    table = config.get("gemini_prices")
    if table is None:
        table = fill_defaults({"gemini_prices": {}})["gemini_prices"]
    model = block.get("accept_served_model") or block.get("model") or default("teacher.gemini.model")
    return table.get(model)


def _moved_prices(config: dict[str, Any], files: dict[str, dict]) -> None:
    """One line for a config that still sets prices in a Gemini block: where they live now."""
    for section in ("teacher", "judge"):
        block = (config.get(section) or {}).get("gemini") or {}
        for old, new in OLD_PRICE_KEYS.items():
            if isinstance(block, dict) and old in block:
                model = block.get("model") or default("teacher.gemini.model")
                raise ConfigError(
                    f"config key {section}.gemini.{old}{where_set(files, [section, 'gemini', old])}: prices "
                    f"now live per model: move it to gemini_prices.{model}.{new}, beside "
                    f"{', '.join(k for k in PRICE_KEYS if k != new)} (written: the day you looked them up)"
                )


def check_schema(config: dict[str, Any], files: dict[str, dict] | None = None) -> None:
    """Raise ConfigError with the key, the bad value and the file, for the first problem the schema finds."""
    import jsonschema

    _moved_prices(config, files or {})
    for path, value in _numbers(config):
        if not math.isfinite(value):  # YAML's .nan / .inf: no range check can catch them
            raise ConfigError(
                f"config key {'.'.join(map(str, path))}: {value!r} is not allowed: "
                f"a finite number is needed{where_set(files or {}, path)}"
            )
    validator = jsonschema.Draft202012Validator(schema())
    errors = sorted(
        validator.iter_errors(config), key=lambda e: (len(e.absolute_path), list(e.absolute_path))
    )
    if not errors:
        return
    error = errors[0]
    path = list(error.absolute_path)
    if error.validator == "additionalProperties":
        extra = sorted(set(error.instance) - set(error.schema.get("properties", {})))
        key = ".".join(str(p) for p in [*path, extra[0]]) if extra else ".".join(map(str, path))
        known = ", ".join(sorted(error.schema.get("properties", {})))
        message = (
            f"config key {key}: unknown key{where_set(files or {}, [*path, extra[0]] if extra else path)}; "
        )
        message += f"the keys here are: {known}"
        raise ConfigError(message)
    if error.validator == "required":
        missing = re.search(r"'([^']+)' is a required property", error.message)
        name = ".".join(str(p) for p in [*path, missing.group(1) if missing else "?"])
        raise ConfigError(
            f"config key {name}: missing, and these settings need it{where_set(files or {}, path)}"
        )
    key = ".".join(str(p) for p in path) or "(top level)"
    value = error.instance if not isinstance(error.instance, dict) else "{...}"
    raise ConfigError(
        f"config key {key}: {value!r} is not allowed: {error.message}{where_set(files or {}, path)}"
    )


def _numbers(node: Any, path: tuple = ()):
    """Every float in a config, with its key path."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _numbers(value, (*path, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _numbers(value, (*path, index))
    elif isinstance(node, float):
        yield path, node


def fill_defaults(config: dict[str, Any], node: dict[str, Any] | None = None) -> dict[str, Any]:
    """A copy of ``config`` with the schema's defaults filled in, as Snakemake's validate does."""
    node = _resolve(node if node is not None else schema())
    out = dict(config)
    for key, sub in node.get("properties", {}).items():
        sub = _resolve(sub)
        if key not in out and "default" in sub:
            out[key] = sub["default"]
        if isinstance(out.get(key), dict) and "properties" in sub:
            out[key] = fill_defaults(out[key], sub)
    return out


def in_schema_order(
    config: dict[str, Any], first: dict[str, Any] | None = None, node: dict[str, Any] | None = None
) -> dict[str, Any]:
    """``config`` with the keys of every block in the schema's order, those ``first`` sets first.

    The rules turn config blocks into command-line options in dict order. Snakemake puts the
    keys of the command line's config files (``first``) first, in their order; the rest came
    in the order config.yaml listed them, which was the schema's. Restoring that order here
    keeps the options, and so Snakemake's params, unchanged when config.yaml leaves a default
    out: otherwise every generation job would rerun.
    """
    node = _resolve(node if node is not None else schema())
    first = first or {}
    properties = node.get("properties", {})
    out = {key: value for key, value in config.items() if key in first}
    out.update((key, config[key]) for key in properties if key in config and key not in out)
    out.update((key, value) for key, value in config.items() if key not in out)
    for key, sub in properties.items():
        if isinstance(out.get(key), dict) and "properties" in _resolve(sub):
            inner = first.get(key) if isinstance(first.get(key), dict) else {}
            out[key] = in_schema_order(out[key], inner, sub)
    return out


def token_range_problem(model: dict[str, Any], prefix: str = "") -> str | None:
    """A local model block whose min_new_tokens is above its max_new_tokens (every answer would
    run to the cap), as one message that starts with the key; None when the range is sound."""
    low, high = model.get("min_new_tokens") or 0, model.get("max_new_tokens")
    if high is None or low <= high:
        return None
    return (
        f"{prefix}min_new_tokens {low} is more than {prefix}max_new_tokens {high}: every answer "
        "would be cut at the cap; lower min_new_tokens (0 lets a model stop when it is done)"
    )
