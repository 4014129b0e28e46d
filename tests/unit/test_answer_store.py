import pytest

from meddpo.generation.answer_store import AnswerStore, fingerprint, model_slug
from meddpo.jsonl import read_jsonl_tolerant

SETTINGS = {"model": "org/model", "revision": None, "system_prompt": "Be careful.", "temperature": 0.7}


def test_fingerprint_ignores_key_order_and_sees_every_value():
    assert fingerprint(SETTINGS) == fingerprint(dict(reversed(list(SETTINGS.items()))))
    for key, value in (("system_prompt", "Be brief."), ("temperature", 0.8), ("revision", "abc")):
        assert fingerprint({**SETTINGS, key: value}) != fingerprint(SETTINGS)


def test_parts_of_one_fingerprint_are_read_together(tmp_path):
    AnswerStore(tmp_path, SETTINGS, "shard-000").append([{"id": "a", "text": "1"}, {"id": "b", "text": "2"}])
    AnswerStore(tmp_path, SETTINGS, "shard-001").append([{"id": "c", "text": "3"}])
    AnswerStore(tmp_path, {**SETTINGS, "temperature": 0.1}, "shard-000").append([{"id": "d", "text": "4"}])
    assert sorted(AnswerStore(tmp_path, SETTINGS, "shard-007").load()) == ["a", "b", "c"]
    assert model_slug("/ocean/shared/mistralai/Mistral-7B") == "ocean--shared--mistralai--Mistral-7B"


def test_append_after_a_torn_line_cuts_it_off(tmp_path):
    store = AnswerStore(tmp_path, SETTINGS, "shard-000")
    store.append([{"id": "a", "text": "1"}])
    with open(store.part, "ab") as handle:  # a job killed in the middle of a line
        handle.write(b'{"id": "b", "te')
    assert list(store.load()) == ["a"]
    store.append([{"id": "c", "text": "3"}])
    assert [row["id"] for row in read_jsonl_tolerant(store.part)] == ["a", "c"]
    assert store.part.read_bytes().endswith(b"\n")


def test_a_second_job_on_the_same_shard_stops_with_one_line(tmp_path):
    from meddpo.jsonl import DataError

    first = AnswerStore(tmp_path, {"model": "m", "seed": 1}, "shard-001")
    first.lock()
    second = AnswerStore(tmp_path, {"model": "m", "seed": 1}, "shard-001")
    with pytest.raises(DataError, match="another job is answering this shard right now") as caught:
        second.lock()
    assert "\n" not in str(caught.value)
    AnswerStore(tmp_path, {"model": "m", "seed": 1}, "shard-002").lock()  # other shards go on
    first.unlock()
    second.lock()  # free again once the first job is over
    second.unlock()
