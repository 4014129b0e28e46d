"""The wording the report, its plots and the dataset card share: a count as a share of a whole,
and why pairs have no judge margin.

Pure formatting of numbers already computed.
"""

from __future__ import annotations

from collections.abc import Mapping


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
