"""JSONL reading and atomic writing shared by every stage.

Reading names the file, line and field of anything malformed; writing goes to a
temporary file in the same directory that is renamed into place only once it is
complete, so an interrupted job never leaves a file that looks finished.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from meddpo.errors import UserError


class DataError(UserError):
    """Bad input that the user must fix; the message names file, line and field."""


def _where(path: str | os.PathLike, line: int | None = None, field: str | None = None) -> str:
    place = str(path)
    if line is not None:
        place += f", line {line}"
    if field is not None:
        place += f", field {field!r}"
    return place


def _bad_bytes_field(raw: bytes) -> str | None:
    """The first top-level field of a JSON line whose text holds bytes that are not UTF-8 (or None)."""
    try:
        row = json.loads(raw.decode("utf-8", "surrogateescape"))
    except json.JSONDecodeError:
        return None
    if not isinstance(row, dict):
        return None
    for key, value in row.items():
        text = json.dumps([key, value], ensure_ascii=False)
        if any("\udc80" <= char <= "\udcff" for char in text):
            return str(key)
    return None


def decode_json_line(path: str | os.PathLike, number: int, raw: bytes) -> Any:
    """One JSON line as a value; DataError naming the file, line, column or field when it is not.

    A UTF-8 byte order mark on the first line is skipped (editors on Windows write one).
    """
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        field = _bad_bytes_field(raw)
        where = f" in field {field!r}" if field is not None else ""
        bad = raw[err.start : err.start + 1]
        raise DataError(
            f"{_where(path, number)}: not UTF-8 text{where} (byte {err.start + 1} of the line: {bad!r}); "
            "save the file as UTF-8"
        ) from None
    if number == 1:
        text = text.removeprefix("\ufeff")
    # without its line break, an error at the end of the line is still on this line (json
    # would count the break as a line of its own and name column 1 of the next one)
    text = text.rstrip("\r\n")
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        place = "at the end of the line" if err.pos >= len(text) else f"at column {err.pos + 1}"
        raise DataError(f"{_where(path, number)}: not valid JSON ({err.msg} {place})") from None


def iter_jsonl(path: str | os.PathLike, required: Sequence[str] = ()) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line_number, row)`` for every non-blank line of a JSONL file.

    Raises DataError naming the file and line for bytes that are not UTF-8 (and
    the field that holds them), a line that is not a JSON object (and the column
    where the JSON breaks), or a row without one of ``required``.
    """
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            if not raw.strip() or (number == 1 and not raw.removeprefix(b"\xef\xbb\xbf").strip()):
                continue
            row = decode_json_line(path, number, raw)
            if not isinstance(row, dict):
                raise DataError(f"{_where(path, number)}: expected a JSON object, got {type(row).__name__}")
            for field in required:
                if field not in row:
                    raise DataError(f"{_where(path, number, field)}: missing")
            yield number, row


def read_jsonl(path: str | os.PathLike, required: Sequence[str] = ()) -> list[dict[str, Any]]:
    """All rows of a JSONL file (see iter_jsonl for the checks)."""
    return [row for _, row in iter_jsonl(path, required)]


def read_jsonl_tolerant(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Rows of an append-only JSONL file whose last line may be half-written.

    A line that does not parse is skipped only when it is the last one (a job
    killed mid-write); anywhere else it is an error.
    """
    if not os.path.exists(path):
        return []
    with open(path, "rb") as handle:
        lines = handle.read().split(b"\n")
    rows = []
    last = max((i for i, line in enumerate(lines) if line.strip()), default=-1)
    for index, raw in enumerate(lines):
        if not raw.strip():
            continue
        try:
            row = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            if index == last:
                break
            raise DataError(f"{_where(path, index + 1)}: not valid JSON in an append-only store") from None
        rows.append(row)
    return rows


def current_umask() -> int:
    """The process's umask: from /proc where Linux has it (no change even for a moment), else by
    setting it and putting it straight back."""
    try:
        with open("/proc/self/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w") -> Iterator[IO]:
    """Open a temporary sibling of ``path``; rename it over ``path`` on success.

    On any exception the temporary file is removed and ``path`` is untouched.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        # mkstemp makes the file private (0600); give it what a plain open() would under this
        # umask, so teammates on shared project storage can read the dataset
        os.fchmod(fd, 0o666 & ~current_umask())
        encoding = None if "b" in mode else "utf-8"
        with os.fdopen(fd, mode, encoding=encoding) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def dumps(row: Mapping[str, Any]) -> str:
    """One JSONL line (no trailing newline); non-ASCII text is kept readable."""
    return json.dumps(row, ensure_ascii=False)


def write_jsonl(path: str | os.PathLike, rows: Iterable[Mapping[str, Any]]) -> int:
    """Write rows atomically; returns how many were written."""
    count = 0
    with atomic_open(path) as handle:
        for row in rows:
            handle.write(dumps(row) + "\n")
            count += 1
    return count


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write a JSON document atomically, indented for people."""
    with atomic_open(path) as handle:
        json.dump(obj, handle, ensure_ascii=False, indent=2, sort_keys=False)
        handle.write("\n")
