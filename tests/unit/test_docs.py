"""The configuration reference in docs/configuration.md is the schema's, rendered
(meddpo.config.schema_docs); the row fields in docs/outputs.md are rows.py's."""

import copy

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
