import pytest

from meddpo.shards import shard_rows


def _questions(n):
    return [{"id": f"mq-{i:04x}", "question": f"q{i}"} for i in range(n)]


@pytest.mark.parametrize("n, n_shards", [(10, 3), (10000, 20), (5, 8), (1, 1)])
def test_every_question_in_exactly_one_shard_and_balanced(n, n_shards):
    questions = _questions(n)
    shards = [shard_rows(questions, n_shards, i) for i in range(n_shards)]
    ids = [row["id"] for shard in shards for row in shard]
    assert sorted(ids) == sorted(q["id"] for q in questions)
    sizes = [len(shard) for shard in shards]
    assert max(sizes) - min(sizes) <= 1


def test_sharding_ignores_input_order():
    questions = _questions(100)
    assert shard_rows(questions, 4, 2) == shard_rows(list(reversed(questions)), 4, 2)
