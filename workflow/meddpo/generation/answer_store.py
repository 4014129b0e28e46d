"""Answers kept as they are made, so that no answer is ever generated (or paid for) twice.

Layout under the store root (``{output.dir}/answer_store`` in the workflow)::

    <model slug>/<fingerprint>/settings.json          what the fingerprint stands for
    <model slug>/<fingerprint>/<part>.jsonl           outcomes appended by one job, one row per line
    <model slug>/<fingerprint>/failures/<part>.jsonl  questions that got no answer (may be asked again)
    <model slug>/<fingerprint>/requests/<part>.jsonl  one line per request sent to a paid API

An outcome row is an answer (it has ``text``) or a refusal (it has ``refused``,
the reason): a teacher that declined the question for good under these settings
(a blocked prompt, a SAFETY stop, an empty answer). A refusal is final for the
fingerprint: it is not asked again unless the user says so, and an answer for
the same question always wins over it. Failures (retries run out, a request the
API turned down) are kept for the record and asked again on every later run.
The request log lets the usage of a shard add up every request ever sent for it,
killed and failed jobs included.

The fingerprint hashes everything that changes the text: model and revision, dtype,
system prompt and the sampling settings (token caps and seed included). The shard
is not part of the key: a job reads every part of its fingerprint folder, so a
question answered under another shard layout or question count is reused. Each
job appends only to its own part (named after its output file), so concurrent
jobs never write the same file. A job killed mid-write leaves at most one torn
last line, which readers skip and the next append of that part cuts off.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from meddpo.errors import UserError
from meddpo.jsonl import DataError, dumps, read_jsonl_tolerant, write_json


def make_folder(folder: Path) -> None:
    """Make a store folder (and its parents); one line naming it when that cannot be done."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        reason = err.strerror or type(err).__name__
        raise UserError(
            f"{folder}: cannot make this store folder ({reason}); make the store's parent folder "
            "writable, or point the store (output.dir in the workflow) at a writable place"
        ) from None


def fingerprint(settings: Mapping[str, Any]) -> str:
    """16 hex digits identifying the settings (order of keys does not matter)."""
    canonical = json.dumps(settings, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]


def model_slug(model: str) -> str:
    """A folder name for a hub id or a checkpoint path."""
    return re.sub(r"[^A-Za-z0-9._-]+", "--", model.strip("/")).strip("-.") or "model"


class AnswerStore:
    def __init__(self, root: str | os.PathLike, settings: Mapping[str, Any], part: str):
        self.settings = dict(settings)
        self.key = fingerprint(self.settings)
        self.folder = Path(root) / model_slug(str(self.settings.get("model", "model"))) / self.key
        self.part = self.folder / f"{part}.jsonl"

    def _rows(self) -> Iterable[dict]:
        if not self.folder.is_dir():
            return
        for path in sorted(self.folder.glob("*.jsonl")):
            yield from read_jsonl_tolerant(path)

    def load(self) -> dict[str, dict]:
        """Every answer already made under these settings, by question id (first one wins)."""
        done: dict[str, dict] = {}
        for row in self._rows():
            if "refused" not in row:
                done.setdefault(row["id"], row)
        return done

    def load_refusals(self) -> dict[str, dict]:
        """Every refusal under these settings, by question id, for questions with no answer."""
        refused: dict[str, dict] = {}
        answered: set[str] = set()
        for row in self._rows():
            if "refused" in row:
                refused.setdefault(row["id"], row)
            else:
                answered.add(row["id"])
        return {key: row for key, row in refused.items() if key not in answered}

    def log_path(self, kind: str) -> Path:
        """This job's side log of ``kind`` (``failures`` or ``requests``)."""
        return self.folder / kind / self.part.name

    def read_log(self, kind: str) -> list[dict]:
        """The side log of ``kind`` of every job under these settings."""
        folder = self.folder / kind
        if not folder.is_dir():
            return []
        return [row for path in sorted(folder.glob("*.jsonl")) for row in read_jsonl_tolerant(path)]

    def append(self, rows: Iterable[Mapping[str, Any]]) -> None:
        """Append outcome rows and force them to disk before returning."""
        self._write_settings()
        append_rows(self.part, rows)

    def append_log(self, kind: str, rows: Iterable[Mapping[str, Any]]) -> None:
        """Append rows to this job's side log of ``kind``, on disk before returning."""
        self._write_settings()
        append_rows(self.log_path(kind), rows)

    def lock(self) -> None:
        """Hold this part for the job's life: a second job on the same shard stops at once.

        Two jobs answering one shard (an orphaned cluster job and a rerun, say)
        would pay twice and could tear each other's lines. The lock is an
        ``flock`` on ``<part>.lock``, released by ``unlock`` or when the process
        ends; on a file system without ``flock`` it is skipped.
        """
        import fcntl

        make_folder(self.folder)
        lock_file = self.part.with_suffix(".lock")
        try:
            handle = open(lock_file, "a")  # held until unlock()
        except OSError as err:
            raise UserError(
                f"{lock_file}: cannot write in this store folder ({err.strerror}); make it writable"
            ) from None
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            raise DataError(
                f"{self.part}: another job is answering this shard right now; wait for it to end, or "
                "cancel it (squeue / scancel on a cluster) before running this one"
            ) from None
        except OSError:  # no flock on this file system
            handle.close()
            return
        self._lock_handle = handle

    def unlock(self) -> None:
        handle = getattr(self, "_lock_handle", None)
        if handle is not None:
            handle.close()
            self._lock_handle = None

    def _write_settings(self) -> None:
        settings_file = self.folder / "settings.json"
        if not settings_file.exists():
            make_folder(self.folder)
            write_json(settings_file, self.settings)


def append_rows(path: Path, rows: Iterable[Mapping[str, Any]]) -> None:
    """Append JSONL rows to an append-only file and fsync them.

    A torn last line left by a killed writer is cut off first.
    """
    payload = "".join(dumps(row) + "\n" for row in rows).encode("utf-8")
    if not payload:
        return
    make_folder(path.parent)
    with open(path, "a+b") as handle:
        size = handle.seek(0, os.SEEK_END)
        if size:
            handle.seek(max(0, size - 1))
            if handle.read(1) != b"\n":
                handle.seek(0)
                data = handle.read()
                handle.truncate(data.rfind(b"\n") + 1)
        handle.seek(0, os.SEEK_END)
        handle.write(payload)
        handle.flush()
        os.fsync(handle.fileno())
