"""The quality checks (meddpo.dataset.quality): each flag on a crafted pair, and the policy that
keeps, flags or drops pairs by them."""

import pytest

from conftest import GOOD_CHOSEN, pair
from meddpo.dataset.quality import FLAGS, apply_policy, pair_flags
from meddpo.jsonl import DataError

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
