"""Quality flags for DPO pairs, and the filter policy that acts on them.

Every pair gets ``meta.flags``: the names of the checks it trips.

    chosen_empty / rejected_empty          the answer is empty or white space only
    chosen_truncated / rejected_truncated  the answer hit its token cap (finish reason "length");
                                           for files without finish reasons, the text stops
                                           mid-sentence (no closing punctuation)
    near_identical                         chosen and rejected are the same text, or nearly
                                           (difflib ratio >= near_identical_threshold after
                                           folding case and white space)
    rejected_refusal                       the rejected answer opens with a refusal
                                           (REFUSAL_PATTERNS, looked for in its first 300 characters)
    chosen_garbled / rejected_garbled      less than ``min_plain_share`` of the characters are
                                           plain English text (ASCII letters, digits, punctuation,
                                           white space), or under half of the words are
                                           alphabetic: another language, or noise
    judge_inverted                         a judge's margin (meta.judge.margins) is at or under
                                           -``judge_min_margin``: chosen judged less safe
    judge_tie                              none is, and |mean margin| is under
                                           ``judge_min_margin``: about as safe
                                           (pairs without a judged margin get neither flag)

The policy gives each flag one of: ``keep`` (ignore the check), ``flag`` (record
it in ``meta.flags`` and keep the pair) or ``drop`` (move the pair to the dropped
file with the reason). Nothing is dropped silently.
"""

from __future__ import annotations

import difflib
import re
from collections import Counter
from collections.abc import Iterable, Mapping

from meddpo.config.settings import default, defaults
from meddpo.dataset.verdicts import pair_side
from meddpo.jsonl import DataError

FLAGS = (
    "chosen_empty",
    "rejected_empty",
    "chosen_truncated",
    "rejected_truncated",
    "near_identical",
    "rejected_refusal",
    "chosen_garbled",
    "rejected_garbled",
    "judge_inverted",
    "judge_tie",
)
ACTIONS = ("keep", "flag", "drop")

# The default action of each flag, and why, is written once: in the config schema.
DEFAULT_POLICY = defaults("quality.policy")

REFUSAL_PATTERNS = (
    r"\bI(?:'m| am) (?:sorry|afraid)\b[^.]{0,80}\b(?:can(?:no|')t|unable|not able)",
    r"\bI (?:can(?:no|')t|am unable to|am not able to|won't|will not) "
    r"(?:help|provide|answer|assist|give|offer|discuss|comply)",
    r"\bas an AI\b",
    r"\bI(?:'m| am) not (?:able|allowed|permitted) to (?:give|provide|offer)",
)
_REFUSAL = re.compile("|".join(REFUSAL_PATTERNS), re.IGNORECASE)
_SENTENCE_END = re.compile(r"[.!?:)\"'\u201d*`\]]\s*$")
_PLAIN = re.compile(r"[A-Za-z0-9\s.,;:!?'\"()\[\]{}\-–—/%&*#+=<>@$`~_|\\^\u2019\u201c\u201d\u2022]")


def is_refusal(text: str) -> bool:
    return bool(_REFUSAL.search(text[:300]))


def looks_truncated(text: str) -> bool:
    """No closing punctuation at the end: the text stops mid-sentence."""
    stripped = text.rstrip()
    return bool(stripped) and not _SENTENCE_END.search(stripped)


def is_garbled(text: str, min_plain_share: float = 0.9) -> bool:
    if not text.strip():
        return False
    plain = len(_PLAIN.findall(text)) / len(text)
    words = text.split()
    alphabetic = sum(1 for w in words if re.fullmatch(r"[A-Za-z][A-Za-z'\-]*[.,;:!?)]*", w)) / max(
        len(words), 1
    )
    return plain < min_plain_share or alphabetic < 0.5


def near_identical(a: str, b: str, threshold: float = 0.9) -> bool:
    a, b = " ".join(a.lower().split()), " ".join(b.lower().split())
    if a == b:
        return True
    matcher = difflib.SequenceMatcher(None, a, b, autojunk=False)
    return (
        matcher.real_quick_ratio() >= threshold
        and matcher.quick_ratio() >= threshold
        and matcher.ratio() >= threshold
    )


def truncated(row: Mapping, role: str) -> bool:
    reason = (row.get("meta") or {}).get(f"{role}_finish_reason")
    if reason is not None:
        return reason == "length"
    return looks_truncated(row.get(role) or "")


def pair_flags(
    row: Mapping,
    *,
    near_identical_threshold: float = 0.9,
    min_plain_share: float = 0.9,
    judge_min_margin: float = default("judge.min_margin"),
) -> list[str]:
    """The flags of one pair, in FLAGS order."""
    chosen, rejected = row.get("chosen") or "", row.get("rejected") or ""
    found = set()
    for role, text in (("chosen", chosen), ("rejected", rejected)):
        if not text.strip():
            found.add(f"{role}_empty")
            continue
        if truncated(row, role):
            found.add(f"{role}_truncated")
        if is_garbled(text, min_plain_share):
            found.add(f"{role}_garbled")
    if chosen.strip() and rejected.strip() and near_identical(chosen, rejected, near_identical_threshold):
        found.add("near_identical")
    if rejected.strip() and is_refusal(rejected):
        found.add("rejected_refusal")
    side = pair_side((row.get("meta") or {}).get("judge") or {}, judge_min_margin)
    if side in ("inverted", "tie"):
        found.add(f"judge_{side}")
    return [flag for flag in FLAGS if flag in found]


def resolve_policy(policy: Mapping[str, str] | None) -> dict[str, str]:
    merged = {**DEFAULT_POLICY, **(policy or {})}
    for flag, action in merged.items():
        if flag not in FLAGS:
            raise DataError(f"quality policy: unknown flag {flag!r}; flags are {', '.join(FLAGS)}")
        if action not in ACTIONS:
            raise DataError(f"quality policy: {flag}: unknown action {action!r}; use keep, flag or drop")
    return merged


def apply_policy(
    rows: Iterable[dict], policy: Mapping[str, str] | None = None, **check_settings
) -> tuple[list[dict], list[dict], dict]:
    """Flag every pair and split them into kept and dropped; returns ``(kept, dropped, counts)``.

    Kept rows carry ``meta.flags`` (only flags whose action is ``flag``); dropped
    rows carry every flag found and ``meta.drop_reasons``.
    """
    policy = resolve_policy(policy)
    kept, dropped = [], []
    flagged, drop_reasons = Counter(), Counter()
    for row in rows:
        found = pair_flags(row, **check_settings)
        flagged.update(found)
        reasons = [flag for flag in found if policy[flag] == "drop"]
        meta = dict(row.get("meta") or {})
        if reasons:
            meta.update(flags=found, drop_reasons=reasons)
            dropped.append({**row, "meta": meta})
            drop_reasons.update(reasons)
        else:
            meta["flags"] = [flag for flag in found if policy[flag] == "flag"]
            kept.append({**row, "meta": meta})
    counts = {
        "kept": len(kept),
        "dropped": len(dropped),
        "flagged": {flag: flagged.get(flag, 0) for flag in FLAGS},
        "dropped_by_reason": {flag: drop_reasons[flag] for flag in FLAGS if drop_reasons[flag]},
        "policy": policy,
    }
    return kept, dropped, counts
