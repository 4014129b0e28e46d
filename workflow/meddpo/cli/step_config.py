"""The configuration a step run by hand reads: the workflow's, under the options given.

``meddpo <step>`` reads ``config.yaml`` (``--base-config``) and any ``--configfile`` files,
layered and checked exactly as Snakemake layers them (meddpo.planning.checks.load_config),
and every setting option it is not given takes its value from them: a step by hand with
the same inputs makes what the same step makes in the workflow. Without a config file
(none in the folder, or ``--base-config none``) the options and the schema's defaults are
all there is. A job of the workflow reads no config file (``WORKFLOW_JOB``): its rule gives
every setting on its command line, and a config file edited during a run cannot change or
break it. ``settings_line`` says which files a step read.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from meddpo.backends import serves_vllm
from meddpo.cli.arguments import given, nullable
from meddpo.errors import UserError
from meddpo.planning.rule_options import WORKFLOW_JOB

# generate --side: the config block of its model and the prompt it answers under
SIDES = {"rejected": ("rejected", "prompts.rejected"), "chosen": ("teacher.local", "prompts.teacher")}
# the config's vllm block (the key's name, not an engine's)
VLLM_BLOCK = "vllm"
_MISSING = object()


def config_file_options(p: argparse.ArgumentParser) -> None:
    """``--configfile`` and ``--base-config``: the config files a step reads, as the workflow reads them."""
    p.add_argument(
        "--configfile",
        nargs="*",
        default=[],
        type=Path,
        help="config files layered over --base-config, in order (as snakemake --configfile)",
    )
    p.add_argument(
        "--base-config",
        type=nullable(Path),
        default=Path("config.yaml"),
        help="the workflow's own config (none: the schema's defaults only)",
    )


def read_config(args: argparse.Namespace) -> tuple[dict[str, Any] | None, str]:
    """The layered, checked config of a step by hand (None: no file to read), and where it came from."""
    from meddpo.planning.checks import load_config

    files = [*([args.base_config] if args.base_config else []), *args.configfile]
    if os.environ.get(WORKFLOW_JOB):
        return None, "the options given (a job of the workflow: its rule gives every setting)"
    if args.base_config == Path("config.yaml") and not args.base_config.exists() and not args.configfile:
        return None, "the options given and the schema's defaults (no config.yaml in this folder)"
    if not files:
        return None, "the options given and the schema's defaults (--base-config none)"
    names = " + ".join(str(path) for path in files)
    return load_config(args.configfile, base=args.base_config), f"{names}, under the options given"


def apply_config(args: argparse.Namespace) -> None:
    """Every setting option not given takes its config value; one still missing is one line."""
    config, args.settings_from = read_config(args)
    side = getattr(args, "side", None)
    for dest, path, needed in args.config_settings:
        if dest in given(args):
            continue
        value = _config_value(config, _path(path, side), args)
        if value is not _MISSING:
            setattr(args, dest, value)
        elif needed and getattr(args, dest, None) is None:
            raise UserError(_missing(dest, path, config is not None))


def _path(path: str, side: str | None) -> str | None:
    """A config path; a local model's key or ``prompt`` by ``--side`` (None: no side given)."""
    if path.startswith("local_model.") or path == "prompt":
        if side is None:
            return None
        block, prompt = SIDES[side]
        return prompt if path == "prompt" else block + path.removeprefix("local_model")
    return path


def _config_value(config: dict[str, Any] | None, path: str | None, args: argparse.Namespace) -> Any:
    if config is None or path is None:
        return _MISSING
    if path == VLLM_BLOCK and not serves_vllm({"engine": args.engine}):  # as the rules: engine vllm only
        return _MISSING
    if path == "card":  # what the dataset card says about how the data was made
        from meddpo.planning.rule_options import card_settings

        return _json(card_settings(config))
    if path == "price":  # the gemini_prices entry of the model the step asks
        from meddpo.config.settings import gemini_price

        return gemini_price(config, {"model": args.model, "accept_served_model": args.accept_served_model})
    node: Any = config
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return _MISSING
        node = node[part]
    return node


def _json(text: str) -> Any:
    import json

    return json.loads(text)


def _missing(dest: str, path: str, read_config_files: bool) -> str:
    flag = "--" + dest.replace("_", "-")
    if path.startswith("local_model.") or path == "prompt":
        return f"{flag} is needed: give it, or --side rejected|chosen to take it from the config files"
    if read_config_files:
        return f"{flag} is needed: give it (the config files read set no {path})"
    return (
        f"{flag} is needed: give it, or a config file that sets {path} (--configfile; config.yaml is read "
        "when it is in this folder)"
    )


def settings_line(args: argparse.Namespace) -> str | None:
    """The line that says where a step's settings came from (None: a step without settings)."""
    found = getattr(args, "settings_from", None)
    return f"settings: {found}" if found else None
