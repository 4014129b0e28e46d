"""The wording the report, its plots and the dataset card share: a count as a share of a whole,
why pairs have no judge margin, and a Markdown table.

Pure formatting of numbers already computed.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence


def share(part: int, whole: int) -> str:
    """A count and its share of a whole, the one format of the report and the card: ``12 of 63 (19.0%)``."""
    if not whole:
        return f"{part} of {whole}"
    return f"{part} of {whole} ({100 * part / whole:.1f}%)"


def no_margin_line(summary: Mapping) -> str:
    """Why pairs have no judge margin, in counts: ``63 unparseable, 0 failed``."""
    status = summary["status"]
    line = f"{status['unparseable']} unparseable, {status['failed']} failed"
    return line + (f", {status['off']} not judged" if status.get("off") else "")


def table(header: Sequence[str], rows: Iterable[Sequence]) -> str:
    """A Markdown table; a missing value is shown as a dash."""

    def cell(value):
        return "—" if value is None else str(value)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


# A provenance value that is None: what that means (a model read from a folder, or answered by an
# API, has no hub commit; anything else was not recorded, e.g. by an older run)
NO_REVISION = "none: a local checkpoint folder or an API model has no hub commit"
_MISSING_PROVENANCE = {"teacher_revision": NO_REVISION, "rejected_revision": NO_REVISION}


def provenance_text(key: str, value) -> str | None:
    """What a provenance value that is not there means; None when it is there."""
    if value is None:
        return _MISSING_PROVENANCE.get(key, "not recorded")
    if key == "workflow_commit" and value == "unknown":
        return "unknown: the workflow did not run from a git checkout"
    return None


def provenance_rows(provenance: Mapping) -> list[tuple[str, str]]:
    """The report's provenance table rows: each value, or what its absence means (never "None" or a dash)."""
    return [(key, provenance_text(key, value) or str(value)) for key, value in provenance.items()]


def revision_text(revision) -> str:
    """A model's revision as the card and report name it."""
    return f"revision {revision}" if revision is not None else f"revision {NO_REVISION}"


def sampling_text(sampling: Mapping | None) -> str:
    """A model's sampling settings in words (``temperature 0.7, top-p 0.9, 96 new tokens at most, 4 at
    least, seed 2``), never a Python dict; settings this list does not know are named as they are."""
    if not sampling:
        return "not recorded"
    words = {
        "temperature": lambda v: f"temperature {v}",
        "top_p": lambda v: f"top-p {v}",
        "max_new_tokens": lambda v: f"{v} new tokens at most",
        "min_new_tokens": lambda v: f"{v} at least" if v else None,
        "max_output_tokens": lambda v: f"{v} output tokens at most",
        "thinking_budget": lambda v: (
            "the model's own thinking budget" if v is None else f"thinking budget {v}"
        ),
        "seed": lambda v: f"seed {v}",
    }
    parts = [words[key](sampling[key]) for key in words if key in sampling]
    parts += [f"{key} {value}" for key, value in sampling.items() if key not in words]
    return ", ".join(part for part in parts if part)
