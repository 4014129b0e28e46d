"""The configuration reference of docs/configuration.md, rendered from the config schema.

Every key's meaning, allowed values and default are written once, in
``config.schema.yaml``; this module turns them into Markdown tables and puts them
between two marker comments of the docs page, so the page cannot drift from the
schema (tests/unit/test_docs.py renders it and compares)::

    python -m meddpo.config.schema_docs                                    # print the reference
    python -m meddpo.config.schema_docs --write docs/configuration.md      # put it into the page
    python -m meddpo.config.schema_docs --check docs/configuration.md      # exit 1 when the page differs

"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from meddpo.config import settings

BEGIN = (
    "<!-- BEGIN config reference: rendered from the config schema by meddpo.config.schema_docs;"
    " do not edit -->"
)
END = "<!-- END config reference -->"
REGENERATE = "python -m meddpo.config.schema_docs --write docs/configuration.md"

# shared blocks ($defs with settings of their own), each documented once in a table: $defs name -> title
SHARED_BLOCKS = {
    "local_model": "local model block",
    "gemini": "Gemini block",
    "gemini_price": "Gemini price entry",
}
_RANGES = (("minimum", "≥"), ("exclusiveMinimum", ">"), ("maximum", "≤"), ("exclusiveMaximum", "<"))


def _ref_name(node: dict[str, Any]) -> str | None:
    ref = node.get("$ref", "")
    name = ref.rpartition("/")[2]
    return name if name in SHARED_BLOCKS else None


def _value(value: Any) -> str:
    """A default as it is written in a config file."""
    if isinstance(value, str):
        return f"`{value}`"
    return f"`{json.dumps(value)}`"


def _types(node: dict[str, Any]) -> list[str]:
    kinds = node.get("type", [])
    words = [kind for kind in ([kinds] if isinstance(kinds, str) else kinds) if kind != "null"]
    items = node.get("items", {})
    if "array" in words:
        words = [
            "list of " + (" / ".join(_value(v) for v in items["enum"]) if "enum" in items else "strings")
        ]
    elif "object" in words and "additionalProperties" in node:
        words = ["mapping of " + node["additionalProperties"].get("type", "value") + "s"]
    return words


def _allowed(node: dict[str, Any]) -> str:
    """The values a setting takes: its choices, or its type and range (and null where allowed)."""
    if "enum" in node:
        return " / ".join(_value(v) for v in node["enum"])
    text = " or ".join(_types(node))
    ranges = [f"{sign} {node[word]}" for word, sign in _RANGES if word in node]
    if ranges:
        text += " " + ", ".join(ranges)
    if node.get("minLength") == 1:
        text += ", not empty"
    kinds = node.get("type", [])
    if "null" in kinds and not isinstance(kinds, str):
        text += " or `null`"
    return text


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def _row(key: str, node: dict[str, Any], required: bool) -> str:
    if "default" in node:
        default = _value(node["default"])
    else:
        default = "required" if required else "unset"
    return f"| `{key}` | {default} | {_cell(_allowed(node))} | {_cell(node.get('description', ''))} |"


def _block_row(path: str, default: str, what: str, node: dict[str, Any]) -> str:
    """The row of a key that holds a shared block (or a table of them), pointing to its table."""
    default = f" {_cell(default)}" if default else ""
    return f"| `{path}` |{default} | {what} | {_cell(node.get('description', ''))} |"


def _rows(node: dict[str, Any], prefix: str = "", shared_block: bool = False) -> list[str]:
    """One row per setting below ``node``; a shared block is one row that points to its table.

    Below the top, a setting's node comes from ``settings.section`` (its ``$ref`` followed);
    the settings of a shared block (``*.key``) hold no ``$ref``.
    """
    rows = []
    required = set(node.get("required", ()))
    for key, raw in node.get("properties", {}).items():
        path = f"{prefix}{key}"
        shared = _ref_name(raw)
        if shared:
            default = _value(raw["default"]) if raw.get("default") else ""  # an entry's own values
            rows.append(_block_row(path, default, f"a {SHARED_BLOCKS[shared]}", raw))
            continue
        sub = raw if shared_block or not prefix else settings.resolved(raw)
        table = sub.get("additionalProperties")
        if "properties" in sub and isinstance(table, dict):  # a table by name (gemini_prices)
            what = SHARED_BLOCKS.get(_ref_name(table) or "", "value")
            rows.append(_block_row(path, "", f"a {what} per name", sub))
            rows.extend(_rows(sub, f"{path}."))
        elif "properties" in sub:
            rows.extend(_rows(sub, f"{path}."))
        else:
            rows.append(_row(path, sub, key in required))
    return rows


def _users(name: str, node: dict[str, Any] | None = None, prefix: str = "") -> list[str]:
    """The config keys whose block is the shared block ``name`` (``rejected``, ``teacher.local``, ...)."""
    found = []
    for key, sub in (node if node is not None else settings.schema()).get("properties", {}).items():
        if _ref_name(sub) == name:
            found.append(f"{prefix}{key}")
            continue
        table = sub.get("additionalProperties")
        if isinstance(table, dict) and _ref_name(table) == name:  # a table by name: any entry
            found.append(f"{prefix}{key}.<name>")
        if "properties" in sub:
            found.extend(_users(name, sub, f"{prefix}{key}."))
    return found


_HEADER = ["| key | default | values | meaning |", "|---|---|---|---|"]


def render() -> str:
    """The reference: a table of the settings in schema order, then one of each shared block."""
    schema = settings.schema()
    lines = [*_HEADER, *_rows(schema)]
    for name, title in SHARED_BLOCKS.items():
        block = schema["$defs"][name]
        lines += ["", f"### The {title}: " + ", ".join(f"`{user}`" for user in _users(name)), ""]
        lines += [_cell(block.get("description", "")), "", *_HEADER, *_rows(block, "*.", shared_block=True)]
    return "\n".join(lines) + "\n"


def with_reference(page: str, reference: str) -> str:
    """``page`` with the text between its two marker lines replaced by ``reference``."""
    before, begin, rest = page.partition(BEGIN + "\n")
    _, end, after = rest.partition(END)
    if not begin or not end:
        raise ValueError(f"the page needs the two marker lines {BEGIN!r} and {END!r}")
    return f"{before}{BEGIN}\n\n{reference}\n{END}{after}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m meddpo.config.schema_docs", description=__doc__.split("\n")[0]
    )
    what = parser.add_mutually_exclusive_group()
    what.add_argument("--write", type=Path, metavar="PAGE", help="put the reference into PAGE")
    what.add_argument("--check", type=Path, metavar="PAGE", help="exit 1 when PAGE's reference differs")
    args = parser.parse_args(argv)
    reference = render()
    if args.write is None and args.check is None:
        sys.stdout.write(reference)
        return 0
    page_path = args.write or args.check
    page = page_path.read_text(encoding="utf-8")
    try:
        wanted = with_reference(page, reference)
    except ValueError as err:
        print(f"{page_path}: {err}", file=sys.stderr)
        return 2
    if args.write is not None:
        if wanted != page:
            page_path.write_text(wanted, encoding="utf-8")
        return 0
    if wanted != page:
        print(f"{page_path}: the configuration reference differs from the schema; run: {REGENERATE}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
