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
