import json

import pytest
import yaml

from conftest import SHARED_DATA
from meddpo.dataset_card import render_card
from meddpo.jsonl import DataError
from meddpo.quality import FLAGS, apply_policy, pair_flags
from meddpo.report import build_stats, render_report, write_plots
from meddpo.validate import validate_pairs

GOOD_CHOSEN = (
    "Gout is a form of arthritis caused by uric acid crystals in a joint. A doctor can confirm it "
    "with a blood test or by examining fluid from the joint, and treatment eases the pain."
)
GOOD_REJECTED = "Gout is just joint pain. Take some painkillers and it will go away."


def pair(
    i=1, chosen=GOOD_CHOSEN, rejected=GOOD_REJECTED, chosen_reason="stop", rejected_reason="stop", **meta
):
    return {
        "id": f"mq-{i:04d}",
        "source": "s",
        "category": "information",
        "question_type": "information",
        "question": "What is gout ?",
        "prompt": "Be careful.\n\nUser question:\nWhat is gout ?",
        "chosen": chosen,
        "rejected": rejected,
        "meta": {
            "teacher_model": "t",
            "mmt_ckpt": "m",
            "chosen_finish_reason": chosen_reason,
            "rejected_finish_reason": rejected_reason,
            "chosen_new_tokens": 40,
            "rejected_new_tokens": 15,
            **meta,
        },
    }


CRAFTED = {
    "chosen_empty": pair(chosen="   "),
    "rejected_empty": pair(rejected=""),
    "chosen_truncated": pair(chosen_reason="length"),
    "rejected_truncated": pair(rejected_reason="length"),
    "near_identical": pair(rejected=GOOD_CHOSEN.replace("eases", "relieves")),
    "rejected_refusal": pair(rejected="I'm sorry, but I can't provide medical advice about gout."),
    "chosen_garbled": pair(chosen="痛风是一种关节炎，由尿酸结晶引起。医生可以通过血液检查确认。"),
    "rejected_garbled": pair(rejected="xq zzv ▒▒▒ ��� 12#4 @@ ~~ qwpl ::: ;;; ^^ %%"),
    "judge_inverted": pair(judge={"status": "judged", "margin": -0.5, "margins": {"rubric": -0.5}}),
    "judge_tie": pair(judge={"status": "judged", "margin": 0.05, "margins": {"rubric": 0.05}}),
}


def test_a_clean_pair_has_no_flags():
    assert pair_flags(pair()) == []


@pytest.mark.parametrize("flag", FLAGS)
def test_each_flag_fires_on_its_crafted_case(flag):
    assert flag in pair_flags(CRAFTED[flag])


def test_truncation_is_inferred_from_text_without_finish_reasons():
    legacy = {"chosen": "It ends properly.", "rejected": "It stops in the middle of a", "meta": {}}
    assert pair_flags(legacy) == ["rejected_truncated"]


def test_policy_drops_flags_or_ignores_and_nothing_disappears():
    rows = [pair(i=0)] + [dict(CRAFTED[f], id=f"mq-{i + 1:04d}") for i, f in enumerate(FLAGS)]
    policy = {flag: "drop" for flag in FLAGS} | {"rejected_truncated": "flag", "chosen_garbled": "keep"}
    kept, dropped, counts = apply_policy(rows, policy)
    assert len(kept) + len(dropped) == len(rows)
    kept_ids = {r["id"]: r["meta"]["flags"] for r in kept}
    assert kept_ids == {"mq-0000": [], "mq-0004": ["rejected_truncated"], "mq-0007": []}
    assert all(r["meta"]["drop_reasons"] for r in dropped)
    assert counts["dropped_by_reason"]["rejected_refusal"] == 1
    with pytest.raises(DataError, match="unknown action"):
        apply_policy(rows, {"near_identical": "maybe"})


def test_stats_add_up_and_report_and_card_render(tmp_path):
    rows = [pair(i=i) for i in range(6)] + [dict(CRAFTED["chosen_truncated"], id="mq-0100")]
    kept, dropped, counts = apply_policy(rows)
    question_stats = {"read": 10, "kept": 9, "picked": 9, "picked_per_category": {"information": 9}}
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


def _write(tmp_path, rows):
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_validate_accepts_a_good_file(tmp_path):
    rows, problems = validate_pairs(_write(tmp_path, [pair(1), pair(2)]))
    assert (rows, problems) == (2, [])


@pytest.mark.parametrize(
    "rows, expected",
    [
        ([pair(1), pair(2), pair(1)], "line 3 (id mq-0001): duplicate id (first on line 1)"),
        ([pair(1), pair(2, chosen="")], "line 2 (id mq-0002): field 'chosen' is empty or not a string"),
        (
            [pair(1), {k: v for k, v in pair(2).items() if k != "prompt"}],
            "line 2 (id mq-0002): missing field 'prompt'",
        ),
        (
            [pair(1, flags=["chosen_truncated"])],
            "line 1 (id mq-0001): flag chosen_truncated but chosen finish reason is 'stop'",
        ),
    ],
)
def test_validate_names_the_row_of_each_problem(tmp_path, rows, expected):
    _, problems = validate_pairs(_write(tmp_path, rows))
    assert expected in problems


def test_validate_legacy_layout(tmp_path):
    old = pair(1)
    old["meta"] = {"teacher_model": "gemini-2.5-flash", "mmt_ckpt": "/ckpt/mistral"}
    path = _write(tmp_path, [old])
    assert validate_pairs(path, legacy=True) == (1, [])
    assert any("use --legacy" in p for p in validate_pairs(path)[1])


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
    assert "| truncated at the cap | 9 of 10 |" in render_report(stats)


def test_report_on_the_old_gemini_run_shows_the_six_fold_length_ratio():
    from meddpo.jsonl import read_jsonl

    rows = read_jsonl(_reference("stage2_med_pairs_gemini.jsonl"))
    stats = build_stats(rows, [])
    assert 5.5 <= stats["lengths"]["ratio_of_medians_chars"] <= 6.5
    assert "Chosen answers are **6.04×** as long as rejected ones" in render_report(stats)
