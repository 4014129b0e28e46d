import pytest

from conftest import DPO_ROW_FIELDS
from meddpo.dataset.pairs import build_pairs, check_complete, merge_pair_shards
from meddpo.dataset.rows import META
from meddpo.jsonl import DataError

SYSTEM = "Be careful."


def _question(i):
    return {
        "id": f"mq-{i}",
        "source": "lavita/MedQuAD",
        "category": "symptoms",
        "question_type": "symptoms",
        "question": f"What are the symptoms of disease {i} ?",
    }


def _answer(i, text, model, reason="stop"):
    return {
        "id": f"mq-{i}",
        "text": text,
        "finish_reason": reason,
        "new_tokens": 5,
        "model": model,
        "revision": "abc",
        "sampling": {"temperature": 0.5},
    }


def test_pairs_join_by_id_and_count_what_is_left_out():
    questions = [_question(i) for i in (3, 1, 2, 4, 5)]
    rejected = [_answer(i, f"bad {i}", "loose", "length") for i in (1, 2, 3, 5)]  # 4 missing
    chosen = [_answer(i, f"good {i}", "teacher") for i in (1, 3, 4)] + [
        _answer(2, "  \n", "teacher")
    ]  # 5 missing, 2 empty
    failures = [{"id": "mq-5", "reason": "prompt_blocked:SAFETY", "kind": "refused"}]
    pairs, stats = build_pairs(questions, rejected, chosen, SYSTEM, chosen_failures=failures)
    assert [p["id"] for p in pairs] == ["mq-1", "mq-3"]
    assert stats == {
        "questions": 5,
        "missing_rejected": 1,
        "missing_chosen": 1,
        "empty_rejected": 0,
        "empty_chosen": 1,
        "pairs": 2,
        "chosen_failure_reasons": {"prompt_blocked:SAFETY": 1},
        "chosen_left_out": {"refused": 1},
    }
    row = pairs[0]
    assert list(row) == DPO_ROW_FIELDS
    assert row["prompt"] == "Be careful.\n\nUser question:\nWhat are the symptoms of disease 1 ?"
    assert (row["chosen"], row["rejected"]) == ("good 1", "bad 1")
    meta = row["meta"]
    assert meta["teacher_model"] == "teacher" and meta["rejected_model"] == "loose"
    assert list(meta) == [
        "teacher_model",
        "teacher_revision",
        "rejected_model",
        "rejected_revision",
        "chosen_finish_reason",
        "rejected_finish_reason",
        "chosen_new_tokens",
        "rejected_new_tokens",
        "chosen_prompt_tokens",
        "rejected_prompt_tokens",
        "chosen_sampling",
        "rejected_sampling",
    ]
    assert list(meta) == list(META)  # the card and docs/outputs.md describe these keys, in this order
    assert (meta["chosen_finish_reason"], meta["rejected_finish_reason"]) == ("stop", "length")
    assert meta["chosen_sampling"] == {"temperature": 0.5}


def test_an_answer_listed_twice_is_an_error():
    with pytest.raises(DataError, match="appears twice"):
        build_pairs([_question(1)], [_answer(1, "a", "m"), _answer(1, "b", "m")], [], SYSTEM)


def test_merge_sorts_checks_ids_and_adds_up_stats():
    a, sa = build_pairs(
        [_question(2), _question(9)], [_answer(i, "r", "m") for i in (2, 9)], [_answer(2, "c", "t")], SYSTEM
    )
    b, sb = build_pairs([_question(5)], [_answer(5, "r", "m")], [_answer(5, "c", "t")], SYSTEM)
    rows, stats = merge_pair_shards([(a, sa), (b, sb)])
    assert [r["id"] for r in rows] == ["mq-2", "mq-5"]
    assert stats["questions"] == 3 and stats["pairs"] == 2 and stats["missing_chosen"] == 1
    assert stats["shards"] == 2
    with pytest.raises(DataError, match="two shards"):
        merge_pair_shards([(a, sa), (a, sa)])


def test_an_answer_file_that_misses_ids_is_named_with_how_to_redo_the_shard():
    questions = [_question(i) for i in range(1, 22)]
    chosen = [_answer(i, "good", "teacher") for i in range(1, 11)]
    with pytest.raises(DataError) as caught:
        check_complete(questions, chosen, "results/chosen/shard-001.jsonl")
    assert str(caught.value) == (
        "results/chosen/shard-001.jsonl: 11 of 21 ids missing (the file was cut or is stale, or a "
        "teacher's failures file was not given); redo this shard with: "
        "snakemake --forcerun results/chosen/shard-001.jsonl"
    )
    refused = [{"id": f"mq-{i}", "reason": "prompt_blocked:SAFETY", "kind": "refused"} for i in range(11, 22)]
    check_complete(questions, chosen, "chosen.jsonl", accounted=refused)  # refusals account for the rest
    with pytest.raises(DataError, match="1 ids that are not in this shard"):
        check_complete(questions[:9], chosen, "chosen.jsonl")
