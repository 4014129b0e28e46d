import pytest

from meddpo.jsonl import DataError, atomic_open, read_jsonl, read_jsonl_tolerant, write_jsonl


def test_malformed_line_names_file_and_line(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text('{"id": "a", "question": "ok"}\n{"id": "b", "question": \n')
    with pytest.raises(DataError, match=r"rows\.jsonl, line 2: not valid JSON"):
        read_jsonl(path)


def test_missing_field_names_line_and_field(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text('{"id": "a", "question": "ok"}\n\n{"id": "b"}\n')
    with pytest.raises(DataError, match=r"line 3, field 'question': missing"):
        read_jsonl(path, required=("id", "question"))


def test_non_utf8_names_line(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_bytes(b'{"question": "fine"}\n{"question": "caf\xe9"}\n')
    with pytest.raises(DataError, match=r"line 2: not UTF-8"):
        read_jsonl(path)


def test_non_object_line_is_refused(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text('["a list"]\n')
    with pytest.raises(DataError, match="expected a JSON object"):
        read_jsonl(path)


def test_interrupted_write_leaves_no_file(tmp_path):
    target = tmp_path / "out.jsonl"

    def rows():
        yield {"id": 1}
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_jsonl(target, rows())
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []


def test_interrupted_rewrite_keeps_previous_file(tmp_path):
    target = tmp_path / "out.jsonl"
    write_jsonl(target, [{"id": 1}])
    with pytest.raises(RuntimeError):
        with atomic_open(target) as handle:
            handle.write("partial")
            raise RuntimeError("killed")
    assert read_jsonl(target) == [{"id": 1}]


def test_tolerant_reader_skips_only_a_torn_last_line(tmp_path):
    path = tmp_path / "store.jsonl"
    path.write_text('{"id": 1}\n{"id": 2}\n{"id": 3, "te')
    assert [row["id"] for row in read_jsonl_tolerant(path)] == [1, 2]
    path.write_text('{"id": 1}\n{"id": 2, "te\n{"id": 3}\n')
    with pytest.raises(DataError, match="line 2"):
        read_jsonl_tolerant(path)
