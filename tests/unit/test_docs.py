"""The configuration reference in docs/configuration.md is the schema's, rendered
(meddpo.config.schema_docs); the row fields in docs/outputs.md are rows.py's."""

import copy
import re

import pytest

from conftest import REPO
from meddpo.config import schema_docs, settings
from meddpo.dataset.card import columns_table
from meddpo.dataset.rows import META

PAGE = REPO / "docs" / "configuration.md"
OUTPUTS = REPO / "docs" / "outputs.md"


def test_the_configuration_reference_is_rendered_from_the_schema():
    page = PAGE.read_text(encoding="utf-8")
    assert schema_docs.BEGIN in page and schema_docs.END in page
    wanted = schema_docs.with_reference(page, schema_docs.render())
    assert page == wanted, (
        f"docs/configuration.md differs from the config schema; run: {schema_docs.REGENERATE}"
    )


def test_the_check_command_passes_on_the_page_and_fails_on_a_stale_one(tmp_path, capsys):
    assert schema_docs.main(["--check", str(PAGE)]) == 0
    stale = tmp_path / "configuration.md"
    stale.write_text(PAGE.read_text(encoding="utf-8").replace("| `n_shards` |", "| `n_shard` |"))
    assert schema_docs.main(["--check", str(stale)]) == 1
    assert schema_docs.REGENERATE in capsys.readouterr().out
    assert schema_docs.main(["--write", str(stale)]) == 0
    assert stale.read_text(encoding="utf-8") == PAGE.read_text(encoding="utf-8")


def test_a_page_without_the_markers_is_refused(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("# no markers\n")
    assert schema_docs.main(["--check", str(page)]) == 2
    with pytest.raises(ValueError, match="marker"):
        schema_docs.with_reference("# no markers\n", "table")


def test_text_around_the_markers_stays():
    page = f"above\n{schema_docs.BEGIN}\nold\n{schema_docs.END}\nbelow\n"
    assert schema_docs.with_reference(page, "new\n") == (
        f"above\n{schema_docs.BEGIN}\n\nnew\n\n{schema_docs.END}\nbelow\n"
    )


def _leaves(node, prefix=""):
    node = settings.section(prefix.rstrip(".")) if prefix else node
    for key, sub in node.get("properties", {}).items():
        path = f"{prefix}{key}"
        if "$ref" in sub and sub["$ref"].rpartition("/")[2] in schema_docs.SHARED_BLOCKS:
            yield path, sub
            continue
        resolved = settings.section(path)
        if "properties" in resolved:
            yield from _leaves(resolved, f"{path}.")
        else:
            yield path, resolved


def test_every_setting_has_a_description_and_a_row():
    reference = schema_docs.render()
    blocks = [(name, settings.schema()["$defs"][name]) for name in schema_docs.SHARED_BLOCKS]
    rows = list(_leaves(settings.schema()))
    rows += [(f"*.{key}", node) for _, block in blocks for key, node in block["properties"].items()]
    for path, node in rows:
        assert node.get("description", "").strip(), f"{path} has no description in the schema"
        assert f"| `{path}` |" in reference, path


def test_a_changed_default_or_description_changes_the_reference(monkeypatch):
    before, batch_size = schema_docs.render(), settings.default("local_model.batch_size")
    changed = copy.deepcopy(settings.schema())
    changed["$defs"]["local_model"]["properties"]["batch_size"]["default"] = 3
    changed["properties"]["questions"]["properties"]["seed"]["description"] = "another text"
    monkeypatch.setattr(settings, "schema", lambda: changed)
    after = schema_docs.render()
    assert "| `*.batch_size` | `3` |" in after and f"| `*.batch_size` | `{batch_size}` |" in before
    assert "another text" in after and "another text" not in before


def _row_tables(page: str) -> list[str]:
    """The table lines of the section on one row of the dataset."""
    section = page.split("## One row of the dataset\n", 1)[1].split("\n## ", 1)[0]
    return [line for line in section.splitlines() if line.startswith("|")]


def test_the_row_fields_in_outputs_md_are_those_of_rows_py():
    # the same tables as the dataset card's: fields and meta keys, in order, with their meanings
    wanted = [line for line in columns_table() if line]
    assert _row_tables(OUTPUTS.read_text(encoding="utf-8")) == wanted, (
        "docs/outputs.md's fields of a row differ from workflow/meddpo/dataset/rows.py; copy the table "
        "that meddpo.dataset.card.columns_table() renders"
    )


def test_a_new_meta_key_shows_in_the_card_table_and_fails_the_docs_check(monkeypatch):
    monkeypatch.setitem(META, "seen_by", "who read the pair")
    assert "| `seen_by` | who read the pair |" in columns_table()
    assert _row_tables(OUTPUTS.read_text(encoding="utf-8")) != [line for line in columns_table() if line]


# --------------------------------------------------------------------------- the pages say what is so

DEVELOPMENT = REPO / "docs" / "development.md"
README = REPO / "README.md"
PACKAGE = REPO / "workflow" / "meddpo"


def _module_map() -> dict[str, str]:
    """docs/development.md's map of the package: the text of each folder's entry (``errors.py jsonl.py``
    and the like for the package's own files, under "")."""
    block = DEVELOPMENT.read_text(encoding="utf-8").split("```\n", 2)[1]
    entries, folder = {"": ""}, None
    for line in block.splitlines():
        match = re.match(r"^  (\w+)/ ", line)
        if match and (PACKAGE / match.group(1)).is_dir():
            folder = match.group(1)
            entries[folder] = line
        elif line.startswith("  ") and not line.startswith("   ") and folder is not None:
            folder = None  # the package's own files, or another top-level entry
            entries[""] += line
        elif folder is not None and line.startswith("      "):
            entries[folder] += line
        elif line.startswith("  "):
            entries[""] += line
    return entries


def test_the_module_map_names_every_module_of_the_package():
    entries = _module_map()
    missing = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE)
        if path.name in ("__init__.py", "__main__.py"):
            continue
        folder = relative.parts[0] if len(relative.parts) > 1 else ""
        name = path.stem.lstrip("_")
        if re.search(rf"(?<![\w-]){re.escape(name)}(\.py)?\b", entries.get(folder, "")) is None:
            missing.append(str(relative))
    # it missed demo/smollm2.py, planning/work_left.py, preflight/measured.py, dataset/costs.py, ...
    assert missing == []


def test_every_repository_path_the_pages_name_exists():
    pattern = re.compile(r"(?<![\w/.-])((?:workflow|tests|benchmarks|profiles|envs|docs)/[\w./-]*\w)")
    missing = set()
    for page in [README, *sorted((REPO / "docs").glob("*.md"))]:
        for path in pattern.findall(page.read_text(encoding="utf-8")):
            if not (REPO / path).exists():
                missing.add(f"{page.name}: {path}")
    # the schema is workflow/meddpo/config/config.schema.yaml (four pages named a path without config/)
    assert missing == set()


def test_the_readme_counts_the_jobs_of_the_real_run_as_the_preflight_and_bridges2_md_do():
    from meddpo.planning.checks import load_config
    from meddpo.planning.plan import estimate

    jobs = sum(estimate(load_config([], base=REPO / "config.yaml"))["jobs"].values())
    readme = README.read_text(encoding="utf-8")
    # it said 84 jobs where docs/bridges2.md shows Snakemake's table of 85 (its `all` target counted)
    assert (
        f"- {jobs} jobs in the whole run (`snakemake -n` lists {jobs + 1}: it counts its `all` target"
        in readme
    )
    table = (REPO / "docs" / "bridges2.md").read_text(encoding="utf-8")
    assert re.search(r"^all\s+1$", table, re.M) and re.search(rf"^total\s+{jobs + 1}$", table, re.M)


def test_the_readmes_bridges2_commands_run_without_an_active_venv():
    # the README says the venv never needs activating: its commands name the venv's programs
    block = README.read_text(encoding="utf-8").split("## Bridges-2\n", 1)[1].split("```bash\n", 1)[1]
    commands = [line.split("#")[0].strip() for line in block.split("```", 1)[0].splitlines()]
    programs = {line.split()[0] for line in commands if line and not line.startswith("export ")}
    assert programs == {".venv/bin/meddpo", ".venv/bin/snakemake"}
