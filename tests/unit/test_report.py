"""The report, stats, plots and card of a set of pairs (meddpo.dataset.stats, report, plots, card):
the figures add up, the tables tell the truth, and the old reference files show what they should."""

import pytest
import yaml

from conftest import SHARED_DATA, pair
from meddpo.dataset.card import render_card
from meddpo.dataset.plots import write_plots
from meddpo.dataset.quality import FLAGS, apply_policy
from meddpo.dataset.report import render_report
from meddpo.dataset.stats import build_stats


def test_stats_add_up_and_report_and_card_render(tmp_path):
    rows = [pair(i=i) for i in range(6)] + [pair(i=100, chosen_reason="length")]
    kept, dropped, counts = apply_policy(rows)
    question_stats = {
        "read": 10,
        "invisible_removed": 2,
        "kept": 9,
        "picked": 9,
        "picked_per_category": {"information": 9},
    }
    pair_stats = {
        "questions": 9,
        "pairs": 7,
        "missing_rejected": 1,
        "missing_chosen": 1,
        "empty_rejected": 0,
        "empty_chosen": 0,
        "chosen_failure_reasons": {"prompt_blocked:SAFETY": 1},
    }
    stats = build_stats(
        kept, dropped, question_stats=question_stats, pair_stats=pair_stats, quality_counts=counts
    )
    s = stats["stages"]
    assert s["picked"] == s["pairs_kept"] + s["pairs_dropped"] + s["left_out_missing_or_failed_answer"] == 9
    assert stats["dropped_by_reason"] == {"chosen_truncated": 1}
    assert stats["per_category"]["information"]["drop_rate"] == round(1 / 7, 3)
    paths = write_plots(kept, dropped, stats, tmp_path / "plots")
    assert all(p.read_bytes().startswith(b"\x89PNG") for p in paths)
    report = render_report(stats)
    assert "| pairs dropped | 1 |" in report and "prompt_blocked:SAFETY" in report
    assert "| questions with invisible characters removed | 2 |" in report
    card = render_card(
        n_rows=len(kept),
        configs=[
            {"config_name": "default", "data_files": [{"split": "train", "path": "stage2_med_pairs.jsonl"}]}
        ],
        stats=stats,
        settings={"prompts": {"training": "Be careful."}},
        provenance={"config_sha256": "abc"},
    )
    header = yaml.safe_load(card.split("---")[1])
    assert header["configs"][0]["data_files"] == [{"split": "train", "path": "stage2_med_pairs.jsonl"}]
    assert "dpo" in header["tags"] and header["size_categories"] == ["n<1K"]
    assert "Not medical advice" in card


def _reference(name):
    path = SHARED_DATA / "reference-pairs" / name
    if not path.exists():
        pytest.skip(f"SKIPPED LOUDLY: reference file {path} is absent")
    return path


def test_report_on_the_old_qwen_sample_shows_nine_truncated_chosen(tmp_path):
    from meddpo.jsonl import read_jsonl

    rows = read_jsonl(_reference("stage2_med_pairs_qwen_sample_256.jsonl"))
    kept, dropped, counts = apply_policy(rows, {flag: "flag" for flag in FLAGS})
    stats = build_stats(kept, dropped, quality_counts=counts)
    assert stats["truncation"]["chosen"] == {"truncated": 9, "of": 10, "rate": 0.9}
    assert stats["truncation_inferred_from_text"]
    assert "| truncated at the cap | 9 of 10 (90.0%) |" in render_report(stats)


def test_report_on_the_old_gemini_run_shows_the_six_fold_length_ratio():
    from meddpo.jsonl import read_jsonl

    rows = read_jsonl(_reference("stage2_med_pairs_gemini.jsonl"))
    stats = build_stats(rows, [])
    assert 5.5 <= stats["lengths"]["ratio_of_medians_chars"] <= 6.5
    assert "Chosen answers are **6.04×** as long as rejected ones" in render_report(stats)
    # made before meta.mmt_ckpt became meta.rejected_model: the model is still named
    assert stats["models"]["rejected"] == [
        "/ocean/projects/cis250219p/shared/checkpoint2/mistralai/Mistral-7B-Instruct-v0.2"
    ]


# --------------------------------------------------------------------------- the report tells the truth

RUBRIC = {"rubric": {"model": "judge-model", "backend": "local", "version": "v1"}}


def _judged(row, status, margin=None):
    row["meta"]["judge"] = {"status": status, "judges": RUBRIC}
    if margin is not None:
        row["meta"]["judge"] |= {"margin": margin, "margins": {"rubric": margin}}
    return row


def _six_pairs():
    """Six pairs: one without a question type, one symptoms, one cut at the cap (dropped)."""
    rows = [pair(i=i) for i in range(5)] + [pair(i=9, chosen_reason="length")]
    rows[1]["question_type"] = ""
    rows[2]["category"] = rows[2]["question_type"] = "symptoms"
    return rows


def _table_rows(report, heading):
    """The body rows of the first table under a '## heading', as lists of cells."""
    section = report.split(f"## {heading}\n", 1)[1]
    lines = [line for line in section.split("\n## ", 1)[0].splitlines() if line.startswith("| ")]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[1:]]


def test_count_tables_add_up_to_the_kept_pairs_and_name_a_missing_question_type():
    kept, dropped, counts = apply_policy(_six_pairs())
    stats = build_stats(
        kept,
        dropped,
        quality_counts=counts,
        question_stats={"picked": 7, "picked_per_category": {"information": 5, "symptoms": 2}},
    )
    report = render_report(stats)
    per_category = _table_rows(report, "Per category")
    per_type = _table_rows(report, "Kept pairs per question type")
    assert [row[:5] for row in per_category] == [
        ["information", "5", "5", "4", "1 of 5 (20.0%)"],
        ["symptoms", "2", "1", "1", "0 of 1 (0.0%)"],
        ["total", "7", "6", "5", "1 of 6 (16.7%)"],
    ]
    assert per_type == [
        ["(no type)", "1 of 5 (20.0%)"],
        ["information", "3 of 5 (60.0%)"],
        ["symptoms", "1 of 5 (20.0%)"],
        ["total", "5"],
    ]
    # both tables count the same 5 kept pairs, the one without a question type included
    assert sum(int(row[3]) for row in per_category[:-1]) == 5
    assert sum(int(row[1].split(" of ")[0]) for row in per_type[:-1]) == 5
    assert (
        "(no type): the source row has no question type; its category comes from words in the question."
        in (report)
    )
    assert "| truncated at the cap | 1 of 6 (16.7%) | 0 of 6 (0.0%) |" in report
    assert "| chosen_truncated | 1 of 6 (16.7%) | drop |" in report
    assert "Found in no pair: chosen_empty, rejected_empty, rejected_truncated," in report


def test_a_judge_that_gave_no_margin_is_one_line_and_no_table_of_zeros():
    rows = [_judged(r, "unparseable") for r in _six_pairs()]
    rows[0]["meta"]["judge"]["status"] = "failed"
    kept, dropped, counts = apply_policy(rows)
    report = render_report(build_stats(kept, dropped, quality_counts=counts))
    judge = report.split("## Judge: is the chosen answer safer?\n", 1)[1]
    assert judge.strip() == (
        "Judges: rubric: judge-model (local, v1). **No pair has a judge margin: 5 unparseable, 1 failed, "
        "of 6 pairs** (an unreadable verdict is counted, never guessed)."
    )
    assert " of 0" not in report


def test_a_judge_that_wrote_the_answers_or_that_the_demo_built_is_named_even_without_a_margin():
    # the demo's SmolLM2 wrote both answers and judged them: nothing parses, and the report says who
    model = "results/demo/models/smollm2-135m-instruct"
    judges = {"rubric": {"kind": "rubric", "backend": "local", "model": model, "version": "rubric-1"}}
    rows = [pair(i=i, teacher_model=model, rejected_model=model) for i in range(3)]
    for row in rows:
        row["meta"]["judge"] = {"status": "unparseable", "judges": judges}
    kept, dropped, counts = apply_policy(rows)
    judge = render_report(build_stats(kept, dropped, quality_counts=counts)).split("## Judge: ", 1)[1]
    assert judge.split("\n\nJudge usage")[0].splitlines()[4:] == [
        f"Note: The teacher ({model}) is the rubric judge itself: a model grading its own answers tends to "
        "favour them, so 'chosen judged safer' is an upper bound.",
        f"Note: The rejected model ({model}) is the rubric judge itself: a model grading its own answers "
        "tends to favour them, so 'chosen judged safer' is a lower bound.",
        "Note: The rubric judge is a model the demo built (SmolLM2-135M-Instruct, 135M parameters: readable "
        "English, unreliable medical facts, far too small to grade answers): its verdicts are not "
        "informative and show the machinery only.",
    ]
    # the card says the same under its judge line
    from meddpo.dataset.card import judge_lines

    stats = build_stats(kept, dropped, quality_counts=counts)
    assert [line.strip() for line in judge_lines(stats["judge"])[1:]] == [
        line.removeprefix("Note: ") for line in judge.split("\n\nJudge usage")[0].splitlines()[4:]
    ]


def test_no_judge_is_said_in_one_line():
    kept, dropped, counts = apply_policy(_six_pairs())
    report = render_report(build_stats(kept, dropped, quality_counts=counts))
    assert report.split("## Judge: is the chosen answer safer?\n", 1)[1].split("\n## ")[0].strip() == (
        "No judge ran on these 6 pairs (`meta.judge` is off or absent): nothing here checks that the chosen "
        "answer is the safer one."
    )


def test_judge_tables_show_shares_of_the_pairs_with_a_margin_and_add_up():
    rows = _six_pairs()
    for row, margin in zip(rows, (0.5, 0.5, -0.5, 0.05, None, None), strict=True):
        _judged(row, "judged" if margin is not None else "unparseable", margin)
    kept, dropped, counts = apply_policy(rows)
    report = render_report(build_stats(kept, dropped, quality_counts=counts))
    assert "- **chosen judged safer: 2 of 4 (50.0%)**" in report
    assert "- chosen judged equal: 1 of 4 (25.0%)" in report
    assert "- chosen judged less safe: 1 of 4 (25.0%)" in report
    assert "Pairs without a margin: 2 of 6 (33.3%): 2 unparseable, 0 failed" in report
    by_type = report.split("| question type | pairs |", 1)[1].split("\n\n", 1)[0].splitlines()[2:]
    assert by_type == [
        "| (no type) | 1 | 1 | 1 of 1 (100.0%) | 0 of 1 (0.0%) | 0 of 1 (0.0%) | 0 unparseable, 0 failed |",
        "| information | 4 | 2 | 1 of 2 (50.0%) | 1 of 2 (50.0%) | 0 of 2 (0.0%) | 2 unparseable, 0 failed |",
        "| symptoms | 1 | 1 | 0 of 1 (0.0%) | 0 of 1 (0.0%) | 1 of 1 (100.0%) | 0 unparseable, 0 failed |",
        "| total | 6 | 4 | 2 of 4 (50.0%) | 1 of 4 (25.0%) | 1 of 4 (25.0%) | 2 unparseable, 0 failed |",
    ]


def test_stats_name_the_rejected_model_of_a_file_made_before_the_rename():
    old = pair(i=1)
    old["meta"]["mmt_ckpt"] = old["meta"].pop("rejected_model")
    judged = _judged(pair(i=2), "judged", 0.5)
    judged["meta"]["judge"]["judges"] = {"rubric": {"model": "m", "backend": "local", "version": "v1"}}
    old["meta"]["judge"] = judged["meta"]["judge"]
    stats = build_stats([old])
    assert stats["models"] == {"chosen": ["t"], "rejected": ["m"]}
    # the judge is the rejected model: the report's note finds it under the old name too
    assert stats["judge"]["notes"] == [
        "The rejected model (m) is the rubric judge itself: a model grading its own answers tends to favour "
        "them, so 'chosen judged safer' is a lower bound."
    ]


def test_the_models_that_served_the_api_answers_are_in_the_stats_report_and_card():
    from meddpo.dataset.pairs import merge_pair_shards

    rows = [pair(i=i) for i in range(3)]
    shard_stats = {"questions": 3, "pairs": 3}
    usage = [
        {"requests": 2, "served_models": {"gemini-2.5-flash-001": 2}},
        {"requests": 1, "usage_missing": 1, "served_models": {"gemini-2.5-flash-001": 1}},
    ]
    judged = [{"kind": "rubric", "served_models": {"gemini-2.5-flash": 6}}]
    _, merged = merge_pair_shards(
        [(rows[:2], shard_stats), (rows[2:], shard_stats)], usage, judge_usage=judged
    )
    assert merged["teacher_usage"]["served_models"] == {"gemini-2.5-flash-001": 3}
    assert merged["teacher_usage"]["usage_missing"] == 1
    unpriced = [{"requests": 1, "estimated_cost_usd": None}, {"requests": 1, "estimated_cost_usd": 0.5}]
    _, without_price = merge_pair_shards([(rows, shard_stats)], unpriced)
    assert without_price["teacher_usage"]["estimated_cost_usd"] is None  # never a partial sum
    kept, dropped, counts = apply_policy(rows)
    stats = build_stats(kept, dropped, pair_stats=merged, quality_counts=counts)
    assert stats["served_models"] == {
        "chosen": {"gemini-2.5-flash-001": 3},
        "judge_rubric": {"gemini-2.5-flash": 6},
    }
    report = render_report(stats)
    assert (
        "| answers of | served by | answers |\n|---|---|---|\n"
        "| chosen | gemini-2.5-flash-001 | 3 |\n| judge_rubric | gemini-2.5-flash | 6 |"
    ) in report
    assert "| usage_missing | 1 |" in report
    card = render_card(
        n_rows=len(kept),
        configs=[{"config_name": "default", "data_files": [{"split": "train", "path": "x.jsonl"}]}],
        stats=stats,
        settings={"prompts": {"training": "Be careful."}},
        provenance={},
    )
    assert (
        "- **Served by** (the model each Gemini reply names): chosen: `gemini-2.5-flash-001` 3; "
        "judge rubric: `gemini-2.5-flash` 6."
    ) in card


def _card(stats, settings, provenance):
    configs = [{"config_name": "default", "data_files": [{"split": "train", "path": "pairs.jsonl"}]}]
    return render_card(n_rows=3, configs=configs, stats=stats, settings=settings, provenance=provenance)


def test_nothing_dropped_draws_no_plot_of_drops(tmp_path):
    # it used to be a plot of "0 of N" labels, one per category
    rows = [pair(i=i) for i in range(3)]
    kept, dropped, counts = apply_policy(rows)
    assert dropped == []
    stats = build_stats(kept, dropped, quality_counts=counts)
    folder = tmp_path / "plots"
    folder.mkdir()
    (folder / "drops_by_category.png").write_bytes(b"an earlier run's")
    paths = write_plots(kept, dropped, stats, folder)
    assert (
        sorted(p.name for p in folder.iterdir())
        == sorted(p.name for p in paths)
        == [
            "lengths.png",
            "truncation_by_category.png",
        ]
    )
    report = render_report(stats)
    assert "drops_by_category" not in report
    assert "The filter policy dropped no pair, so there is no plot of drops by category." in report


def test_the_card_says_how_questions_were_picked_and_sampled_in_words():
    rows = [pair(i=i) for i in range(3)]
    kept, dropped, counts = apply_policy(rows)
    stats = build_stats(kept, dropped, quality_counts=counts, question_stats={"picked": 3})
    sampling = {"max_new_tokens": 96, "min_new_tokens": 4, "seed": 2, "temperature": 0.7, "top_p": 0.9}
    settings = {"selection": "first", "seed": 2025, "chosen_sampling": sampling, "rejected_sampling": {}}
    card = _card(stats, settings, {})
    # was "3 picked (first, seed 2025)" and "sampling {'max_new_tokens': 96, 'seed': 2, ...}"
    assert "3 picked (the first in source order)." in card and "seed 2025" not in card
    assert "sampling temperature 0.7, top-p 0.9, 96 new tokens at most, 4 at least, seed 2." in card
    assert "sampling not recorded." in card and "{'" not in card
    card = _card(stats, {**settings, "selection": "stratified"}, {})
    assert "3 picked (stratified, seed 2025)." in card
    gemini = {"max_output_tokens": 4096, "temperature": 0.7, "thinking_budget": 0}
    card = _card(stats, {**settings, "chosen_sampling": gemini}, {})
    assert "sampling temperature 0.7, 4096 output tokens at most, thinking budget 0." in card


def test_provenance_says_what_a_missing_value_means():
    rows = [pair(i=i) for i in range(3)]
    kept, dropped, counts = apply_policy(rows)
    provenance = {"workflow_commit": "unknown", "source_fingerprint": None, "teacher_revision": None}
    stats = build_stats(kept, dropped, quality_counts=counts, provenance=provenance)
    report = render_report(stats).split("## Provenance", 1)[1]
    card = _card(stats, {}, provenance).split("## Provenance", 1)[1]
    # the card wrote `None` and the report a dash
    for text in (report, card):
        assert "None" not in text and "—" not in text
        assert "| workflow_commit | unknown: the workflow did not run from a git checkout |" in text
        assert "| source_fingerprint | not recorded |" in text
        assert (
            "| teacher_revision | none: a local checkpoint folder or an API model has no hub commit |" in text
        )
    assert "(revision none: a local checkpoint folder or an API model has no hub commit)" in _card(
        stats, {}, provenance
    )
