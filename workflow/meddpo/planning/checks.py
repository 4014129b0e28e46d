"""The whole check of a run's config: the schema's, then what needs the run's plan (the local
models it loads, the demo's model folders), and where its outputs may go; config files layered as
Snakemake layers them (``load_config``)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from meddpo.config.settings import (
    ConfigError,
    check_schema,
    fill_defaults,
    in_schema_order,
    merge,
    read_config_file,
    token_range_problem,
    where_set,
)
from meddpo.planning.paths import demo_model_paths
from meddpo.planning.plan import local_models


def check_config(config: dict[str, Any], files: dict[str, dict] | None = None) -> None:
    """Raise ConfigError with the key, the bad value and the file, for the first problem found."""
    check_schema(config, files)
    filled = fill_defaults(config)
    for key, model in local_models(filled).values():
        problem = token_range_problem(model)
        if problem:
            path = [*key.split("."), "min_new_tokens"]
            raise ConfigError(f"config key {key}.{problem}{where_set(files or {}, path)}")
    check_demo_models(filled, files)


def load_config(configfiles: list[str | Path], base: str | Path = "config.yaml") -> dict[str, Any]:
    """``base`` then each of ``configfiles``, layered, checked and with the defaults filled in."""
    files = {str(path): read_config_file(path) for path in [base, *configfiles]}
    config: dict[str, Any] = {}
    for data in files.values():
        config = merge(config, data)
    check_config(config, files)
    command_line: dict[str, Any] = {}
    for path in configfiles:
        command_line = merge(command_line, files[str(path)])
    return in_schema_order(fill_defaults(config), command_line)


def _absolute(path: str) -> str:
    return os.path.abspath(os.path.expanduser(path))


def demo_model_path(config: dict[str, Any], name: str) -> str | None:
    """The demo model folder (under ``output.dir``) that a model setting names, or None."""
    for path in demo_model_paths(config["output"]["dir"]).values():
        if _absolute(name) == _absolute(path):
            return path
    return None


def check_demo_models(config: dict[str, Any], files: dict[str, dict] | None = None) -> None:
    """With the demo builder on, every local model the run reads is one the demo builds.

    The builder writes its models only at fixed folders under ``output.dir``. A model key
    that names anything else (a real checkpoint, a hub id) would be read instead of the
    demo's model, or, before this check, built over: stop and say so.
    """
    if not config["demo"]["build_tiny_models"]:
        return
    built = list(demo_model_paths(config["output"]["dir"]).values())
    wrong = [
        (f"{key}.model", model["model"])
        for key, model in local_models(config).values()
        if demo_model_path(config, model["model"]) is None
    ]
    if not wrong:
        return
    named = ", ".join(f"{key}: {name!r}{where_set(files or {}, key.split('.'))}" for key, name in wrong)
    if len(wrong) == 1:
        what, run = f"config key {named} is not a model", wrong[0][1]
    else:  # all at once, e.g. output.dir moved under a demo config that names the old folders
        what, run = f"config keys {named} are not models", "real models"
    raise ConfigError(
        f"{what} the demo builds; with demo.build_tiny_models: true the tiny models are built "
        f"only at {' and '.join(built)} (under output.dir): name one of these, or set "
        f"demo.build_tiny_models: false to run {run}"
    )


def outside_output(paths: list[tuple[str, str]], output_dir: str, project_dir: str) -> str | None:
    """The first (owner, path) whose real location is in neither the project nor ``output_dir``.

    Symbolic links are followed, so a link in the output folder that points at a checkpoint
    elsewhere counts as elsewhere. Returns a one-line message, or None when all stay in.
    """
    roots = [os.path.realpath(_absolute(root)) for root in (project_dir, output_dir)]
    for owner, path in paths:
        real = os.path.realpath(_absolute(path))
        if not any(real == root or real.startswith(root.rstrip(os.sep) + os.sep) for root in roots):
            shown = path if real == _absolute(path) else f"{path} (which resolves to {real})"
            return (
                f"{owner} writes {shown}: outside the project folder {roots[0]} "
                f"and output.dir {roots[1]}; the workflow writes only under these two, "
                "so point output.dir at a folder of its own (and remove any link that leads out of it)"
            )
    return None
