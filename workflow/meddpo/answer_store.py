"""Answers kept as they are made, so that no answer is ever generated (or paid for) twice.

Layout under the store root (``{output.dir}/answer_store`` in the workflow)::

    <model slug>/<fingerprint>/settings.json      what the fingerprint stands for
    <model slug>/<fingerprint>/<part>.jsonl       answers appended by one job, one row per line

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

from .jsonl import dumps, read_jsonl_tolerant, write_json


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

    def load(self) -> dict[str, dict]:
        """Every answer already made under these settings, by question id (first one wins)."""
        done: dict[str, dict] = {}
        if not self.folder.is_dir():
            return done
        for path in sorted(self.folder.glob("*.jsonl")):
            for row in read_jsonl_tolerant(path):
                done.setdefault(row["id"], row)
        return done

    def _open_for_append(self):
        self.folder.mkdir(parents=True, exist_ok=True)
        settings_file = self.folder / "settings.json"
        if not settings_file.exists():
            write_json(settings_file, self.settings)
        handle = open(self.part, "a+b")
        # Cut off a torn last line left by a killed job before appending after it.
        size = handle.seek(0, os.SEEK_END)
        if size:
            handle.seek(max(0, size - 1))
            if handle.read(1) != b"\n":
                handle.seek(0)
                data = handle.read()
                handle.truncate(data.rfind(b"\n") + 1)
        handle.seek(0, os.SEEK_END)
        return handle

    def append(self, rows: Iterable[Mapping[str, Any]]) -> None:
        """Append rows and force them to disk before returning."""
        payload = "".join(dumps(row) + "\n" for row in rows).encode("utf-8")
        if not payload:
            return
        with self._open_for_append() as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
