"""The whole check of a run's config: the schema's, then what needs the run's plan (the local
models it loads, the demo's model folders), and where its outputs may go; config files layered as
Snakemake layers them (``load_config``)."""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

from meddpo.config.settings import (
    ConfigError,
    check_schema,
    fill_defaults,
    in_schema_order,
    local_model_keys,
    merge,
    read_config_file,
    token_range_problem,
    where_set,
)
from meddpo.planning.paths import DEMO_MODEL_FOLDERS, DEMO_PREFIX, demo_model_name, demo_model_paths
from meddpo.planning.plan import local_models


def check_config(config: dict[str, Any], files: dict[str, dict] | None = None) -> None:
    """Raise ConfigError with the key, the bad value and the file, for the first problem found."""
    check_schema(config, files)
    filled = fill_defaults(resolve_demo_models(config, files))
    for key, model in local_models(filled).values():
        problem = token_range_problem(model)
        if problem:
            path = [*key.split("."), "min_new_tokens"]
            raise ConfigError(f"config key {key}.{problem}{where_set(files or {}, path)}")
    _no_empty_shard(filled, files or {})


def _no_empty_shard(config: dict[str, Any], files: dict[str, dict]) -> None:
    """Fewer questions than shards would leave shards empty, each still a (GPU) job: refused."""
    n, shards = config["questions"]["n"], config["n_shards"]
    if n is None or n >= shards:
        return
    origins = [
        f"{key} {where_set(files, path).strip(' ()')}"
        for key, path in (("questions.n", ["questions", "n"]), ("n_shards", ["n_shards"]))
        if where_set(files, path)
    ]
    empty = shards - n
    raise ConfigError(
        f"config key questions.n: {n} questions in {shards} shards (n_shards) would leave {empty} "
        f"shard{'s' if empty > 1 else ''} empty, each still a job of every model: set n_shards to {n} or "
        f"fewer" + (f" ({', '.join(origins)})" if origins else "")
    )


def load_config(configfiles: list[str | Path], base: str | Path | None = "config.yaml") -> dict[str, Any]:
    """``base`` (None: none) then each of ``configfiles``, layered, checked, with the defaults filled
    in and the demo's model names resolved (as the workflow sees its config)."""
    files = {str(path): read_config_file(path) for path in [*([base] if base else []), *configfiles]}
    config: dict[str, Any] = {}
    for data in files.values():
        config = merge(config, data)
    check_config(config, files)
    command_line: dict[str, Any] = {}
    for path in configfiles:
        command_line = merge(command_line, files[str(path)])
    return resolve_demo_models(in_schema_order(fill_defaults(config), command_line))


def _absolute(path: str) -> str:
    return os.path.abspath(os.path.expanduser(path))


def demo_model_path(config: dict[str, Any], name: str) -> str | None:
    """The demo model folder (under ``output.dir``) that a model setting names, or None."""
    found = demo_model_name(config["output"]["dir"], name)
    return demo_model_paths(config["output"]["dir"])[found] if found else None


def resolve_demo_models(config: dict[str, Any], files: dict[str, dict] | None = None) -> dict[str, Any]:
    """A copy of ``config`` whose ``demo:<name>`` model keys name the demo's folders under output.dir.

    A name the demo does not build stops with one line; every other model key is kept as it is
    (a hub id, a checkpoint folder, or a demo folder named by its path).
    """
    paths = demo_model_paths(config["output"]["dir"]) if "output" in config else {}
    out = copy.deepcopy(config)
    for key in local_model_keys():
        parent, _, last = key.rpartition(".")
        holder = out
        for part in filter(None, parent.split(".")):
            holder = holder.get(part) if isinstance(holder, dict) else None
        block = holder.get(last) if isinstance(holder, dict) else None
        model = block.get("model") if isinstance(block, dict) else None
        if not isinstance(model, str) or not model.startswith(DEMO_PREFIX):
            continue
        name = model.removeprefix(DEMO_PREFIX)
        if name not in DEMO_MODEL_FOLDERS:
            known = ", ".join(DEMO_PREFIX + known for known in DEMO_MODEL_FOLDERS)
            raise ConfigError(
                f"config key {key}.model: {model!r} is not a model the demo builds"
                f"{where_set(files or {}, [*key.split('.'), 'model'])}; it builds {known}"
            )
        block["model"] = paths[name]
    return out


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
