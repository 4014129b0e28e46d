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
from importlib import resources
from typing import Any

import yaml

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


def section(path: str) -> dict[str, Any]:
    """The schema node of a config path (``teacher.gemini``, or ``local_model``)."""
    if path == "local_model":
        return schema()["$defs"]["local_model"]
    node = schema()
    for part in path.split("."):
        node = _resolve(node["properties"][part])
    return node


def default(path: str, fallback: Any = _NO_DEFAULT) -> Any:
    """The schema default of one setting, e.g. ``default("teacher.gemini.concurrency")``.

    A setting without a default (one the config must give) raises KeyError
    unless ``fallback`` is given.
    """
    parent, _, key = path.rpartition(".")
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
