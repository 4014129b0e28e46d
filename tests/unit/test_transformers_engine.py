from collections import Counter

import pytest

from meddpo.backends import JobContext
from meddpo.demo.tiny_models import build_tiny_mistral
from meddpo.generation.local_shard import answer_questions
from meddpo.generation.transformers_engine import LocalGenerator
from meddpo.generation.types import ModelSpec, Sampling

QUESTIONS = [
    {"id": f"q{i}", "question": text}
    for i, text in enumerate(
        [
            "What is asthma ?",
            "What are the treatments for chronic kidney disease and how do they work ?",
            "Is cystic fibrosis inherited ?",
            "What should I do if I forget a dose of ibuprofen ?",
            "How many people are affected by Marfan syndrome ?",
        ]
    )
]


@pytest.fixture(scope="module")
def never_stops(tiny_mistral):
    return LocalGenerator(ModelSpec(str(tiny_mistral)))


@pytest.fixture(scope="module")
def eager_to_stop(tmp_path_factory, demo_texts):
    path = build_tiny_mistral(demo_texts, tmp_path_factory.mktemp("m") / "stops", eos_rate=0.5)
    return LocalGenerator(ModelSpec(str(path)))


def test_length_when_the_cap_is_hit_even_with_eos_padding_in_the_prompt(never_stops):
    # pad = EOS for this tokenizer: left-padded prompts hold EOS ids, which must not count
    assert never_stops.tokenizer.pad_token_id in never_stops.eos_ids
    rows = answer_questions(
        never_stops,
        QUESTIONS,
        "Be careful.",
        Sampling(max_new_tokens=12, temperature=0.7, seed=1),
        batch_size=5,
    )
    assert [r["finish_reason"] for r in rows] == ["length"] * 5
    assert [r["new_tokens"] for r in rows] == [12] * 5
    assert all(r["text"] for r in rows)


def test_stop_when_the_model_ends(eager_to_stop):
    rows = answer_questions(
        eager_to_stop,
        QUESTIONS * 4,
        "Be careful.",
        Sampling(max_new_tokens=40, temperature=1.0, seed=3),
        batch_size=8,
    )
    reasons = Counter(r["finish_reason"] for r in rows)
    assert reasons["stop"] >= 15
    for row in rows:
        if row["finish_reason"] == "stop":
            assert row["new_tokens"] <= 40
            assert "</s>" not in row["text"]


def test_rows_follow_input_order_whatever_the_batching(never_stops):
    tok = never_stops.tokenizer
    expected_prompt_tokens = [
        len(tok(never_stops.render("Be careful.", q["question"])[0], add_special_tokens=False)["input_ids"])
        for q in QUESTIONS
    ]
    for batch_size in (1, 2, 5):
        rows = answer_questions(
            never_stops, QUESTIONS, "Be careful.", Sampling(max_new_tokens=4, temperature=0.7), batch_size
        )
        assert [r["id"] for r in rows] == [q["id"] for q in QUESTIONS]
        assert [r["prompt_tokens"] for r in rows] == expected_prompt_tokens


def test_same_seed_same_text(never_stops):
    sampling = Sampling(max_new_tokens=10, temperature=0.9, top_p=0.95, seed=11)
    first = answer_questions(never_stops, QUESTIONS, "Be careful.", sampling, batch_size=2)
    again = answer_questions(never_stops, QUESTIONS, "Be careful.", sampling, batch_size=2)
    assert [r["text"] for r in first] == [r["text"] for r in again]


def test_rows_carry_model_and_sampling(never_stops, tiny_mistral):
    row = answer_questions(
        never_stops, QUESTIONS[:1], "Be careful.", Sampling(max_new_tokens=3, temperature=0.7, seed=5), 1
    )[0]
    assert row["model"] == str(tiny_mistral)
    assert row["sampling"] == {
        "max_new_tokens": 3,
        "temperature": 0.7,
        "top_p": 1.0,
        "seed": 5,
        "min_new_tokens": 0,
    }
    assert row["system_in_user_turn"] is True


def test_batches_respect_count_and_token_budget():
    from meddpo.generation.transformers_engine import plan_batches

    lengths = [10, 50, 20, 40, 30, 5]
    batches = plan_batches(lengths, batch_size=4, max_new_tokens=10, max_batch_tokens=130)
    assert sorted(i for b in batches for i in b) == list(range(6))
    for batch in batches:
        assert len(batch) <= 4
        widest = max(lengths[i] for i in batch) + 10
        assert len(batch) == 1 or len(batch) * widest <= 130
    assert [lengths[i] for i in batches[0]] == [50, 40]  # longest first
    assert plan_batches(lengths, batch_size=4, max_new_tokens=10) == [[1, 3, 4, 2], [0, 5]]


def test_cuda_oom_halves_the_batch_and_goes_on(never_stops, caplog, monkeypatch):
    import torch

    real_generate = never_stops.model.generate
    sizes = []

    def generate_with_little_memory(*args, **kwargs):
        sizes.append(kwargs["input_ids"].shape[0])
        if kwargs["input_ids"].shape[0] > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (injected)")
        return real_generate(*args, **kwargs)

    monkeypatch.setattr(never_stops.model, "generate", generate_with_little_memory)
    with caplog.at_level("WARNING"):
        rows = answer_questions(
            never_stops, QUESTIONS, "Be careful.", Sampling(max_new_tokens=3, temperature=0.7), batch_size=5
        )
    assert [r["id"] for r in rows] == [q["id"] for q in QUESTIONS]
    assert all(r["new_tokens"] == 3 for r in rows)
    assert sizes == [5, 2, 3, 1, 2]  # 5 fails -> 2 + 3; 3 fails -> 1 + 2
    assert "splitting it into 2 + 3" in caplog.text


def test_continuous_engine_gives_the_same_kind_of_rows(never_stops, eager_to_stop):
    rows = answer_questions(
        never_stops,
        QUESTIONS,
        "Be careful.",
        Sampling(max_new_tokens=6, temperature=0.7),
        2,
        engine="continuous",
    )
    assert [r["id"] for r in rows] == [q["id"] for q in QUESTIONS]
    assert [(r["finish_reason"], r["new_tokens"]) for r in rows] == [("length", 6)] * 5
    stopped = answer_questions(
        eager_to_stop,
        QUESTIONS * 3,
        "Be careful.",
        Sampling(max_new_tokens=40, temperature=1.0),
        4,
        engine="continuous",
    )
    assert sum(r["finish_reason"] == "stop" for r in stopped) >= 10


def test_store_answers_are_reused_not_regenerated(never_stops, tmp_path, monkeypatch):
    sampling = Sampling(max_new_tokens=4, temperature=0.7, seed=2)
    first = answer_questions(
        never_stops, QUESTIONS[:3], "Be careful.", sampling, 2, context=JobContext(store_root=tmp_path)
    )
    calls = []
    real_generate = never_stops.model.generate
    monkeypatch.setattr(
        never_stops.model,
        "generate",
        lambda *a, **k: calls.append(k["input_ids"].shape[0]) or real_generate(*a, **k),
    )
    rows = answer_questions(
        never_stops,
        QUESTIONS,
        "Be careful.",
        sampling,
        8,
        context=JobContext(store_root=tmp_path, store_part="b"),
    )
    assert calls == [2]  # only the two new questions
    assert [r["text"] for r in rows[:3]] == [r["text"] for r in first]
    # another system prompt is another fingerprint: nothing reused
    answer_questions(
        never_stops, QUESTIONS, "Be brief.", sampling, 8, context=JobContext(store_root=tmp_path)
    )
    assert calls == [2, 5]


def test_continuous_engine_on_a_cpu_sizes_its_cache_to_the_prompts(never_stops):
    # transformers would size the cache from free memory: most of the machine's RAM on a CPU,
    # zeroed on every call; 256-token pages for every prompt plus its new tokens are enough
    config = never_stops._cpu_cache_config(
        [[1] * 10, [1] * 300, [1] * 472], Sampling(max_new_tokens=40, temperature=0.7)
    )
    assert config.num_blocks == 1 + 2 + 2
    assert config.max_batch_tokens is None  # the scheduler's own choice, as on a GPU
