"""Is a checkpoint folder whole? Checked from file headers, without loading a single weight.

A GPU job that meets a broken checkpoint finds out only after its queue wait,
with a library traceback (``SafetensorError``, ``None: no such file``). The
preflight and ``meddpo judge`` ask ``checkpoint_problems`` first. It reads

* the header of a ``*.safetensors`` file: an 8-byte little-endian length,
  then that many bytes of JSON naming each tensor's byte range, every range
  inside the file;
* a shard index (``model.safetensors.index.json``, ``pytorch_model.bin.index.json``):
  valid JSON whose ``weight_map`` names shards that all exist and parse, each
  holding the tensors the index puts there (safetensors);
* a ``.bin`` weight file: a readable zip archive (torch's format since 1.6),
  through its central directory at the end, which a cut-off copy lacks, or an
  older torch pickle.

Only the weights a loader will read are checked (``weights_to_load``).

Each problem is one line that names the file. Standard library only.
"""

from __future__ import annotations

import json
import struct
import zipfile
from pathlib import Path

# What transformers' from_pretrained reads from a folder, first found first
LOAD_ORDER = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
# safetensors refuses headers over 100 MB; a larger length means a file that is not safetensors
MAX_HEADER_BYTES = 100_000_000
RECOPY = "copy or download the checkpoint again"


def safetensors_header(path: Path) -> tuple[dict | None, str | None]:
    """``(header, None)`` when ``path`` is a whole safetensors file, else ``(None, problem)``."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as handle:
            prefix = handle.read(8)
            if size == 0:
                return None, f"{path}: empty file (0 bytes); {RECOPY}"
            if len(prefix) < 8:
                return None, f"{path}: {size} bytes, too short for a safetensors header; {RECOPY}"
            (length,) = struct.unpack("<Q", prefix)
            if length > MAX_HEADER_BYTES or 8 + length > size:
                return None, (
                    f"{path}: not a safetensors file or cut short (its header claims {length} bytes, "
                    f"the file has {size}); {RECOPY}"
                )
            raw = handle.read(length)
    except OSError as err:
        return None, f"{path}: cannot be read ({err.strerror}); check its permissions"
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None, f"{path}: the safetensors header is not valid JSON (corrupt file); {RECOPY}"
    if not isinstance(header, dict):
        return None, f"{path}: the safetensors header is not a JSON object (corrupt file); {RECOPY}"
    data_size = size - 8 - length
    for name, tensor in header.items():
        if name == "__metadata__":
            continue
        offsets = tensor.get("data_offsets") if isinstance(tensor, dict) else None
        if not (
            isinstance(offsets, list)
            and len(offsets) == 2
            and all(isinstance(o, int) for o in offsets)
            and 0 <= offsets[0] <= offsets[1]
        ):
            return None, f"{path}: tensor {name!r} has no valid data_offsets (corrupt header); {RECOPY}"
        if offsets[1] > data_size:
            return None, (
                f"{path}: tensor {name!r} ends at byte {offsets[1]} of the data, which has only "
                f"{data_size} bytes: the file is cut short; {RECOPY}"
            )
    return header, None


def bin_problem(path: Path) -> str | None:
    """A torch ``.bin`` weight file that is not a readable zip archive."""
    try:
        if path.stat().st_size == 0:
            return f"{path}: empty file (0 bytes); {RECOPY}"
        with open(path, "rb") as handle:
            if handle.read(2)[:1] == b"\x80":
                return None  # torch's format before 1.6: a pickle (protocol byte after 0x80), no zip
        with zipfile.ZipFile(path) as archive:
            archive.namelist()
    except OSError as err:
        return f"{path}: cannot be read ({err.strerror}); check its permissions"
    except zipfile.BadZipFile:
        return (
            f"{path}: not a readable zip archive (torch's weight format), so cut short or corrupt; "
            f"{RECOPY} (or convert an old torch file to safetensors)"
        )
    return None


def _index_problems(index: Path, checked: dict[Path, dict | None]) -> list[str]:
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8")).get("weight_map")
    except (OSError, UnicodeDecodeError, ValueError, AttributeError):
        return [f"{index}: not a readable JSON shard index; {RECOPY}"]
    if not isinstance(weight_map, dict) or not weight_map:
        return [f"{index}: has no weight_map naming the shards; {RECOPY}"]
    problems = []
    by_shard: dict[str, list[str]] = {}
    for tensor, shard in weight_map.items():
        by_shard.setdefault(str(shard), []).append(tensor)
    for shard, tensors in sorted(by_shard.items()):
        path = index.parent / shard
        if not path.is_file():
            problems.append(
                f"{path}: missing; the shard index {index.name} lists it for {len(tensors)} tensor(s); "
                + RECOPY
            )
            continue
        if path.suffix == ".bin":
            if path not in checked:
                checked[path] = None
                problem = bin_problem(path)
                if problem:
                    problems.append(problem)
            continue
        if path not in checked:
            header, problem = safetensors_header(path)
            checked[path] = header
            if problem:
                problems.append(problem)
        header = checked[path]
        if header is not None:
            absent = [name for name in tensors if name not in header]
            if absent:
                problems.append(
                    f"{path}: lacks {len(absent)} tensor(s) that {index.name} puts there "
                    f"(first {absent[0]!r}); {RECOPY}"
                )
    return problems


def weights_to_load(folder: str | Path) -> Path | None:
    """The weight file (or shard index) a loader reads from ``folder``, in transformers' order.

    A download may carry more than one format (model repos often ship both shard
    indexes while only the safetensors shards were fetched): only the one that is
    read is checked, as loading would.
    """
    for name in LOAD_ORDER:
        if (Path(folder) / name).is_file():
            return Path(folder) / name
    return None


def checkpoint_problems(folder: str | Path) -> list[str]:
    """One line per problem with the weight files of the checkpoint in ``folder`` (none: it is whole)."""
    weights = weights_to_load(folder)
    if weights is None:
        return [f"{folder}: no weight file ({', '.join(LOAD_ORDER)}); is it a full checkpoint?"]
    if weights.name.endswith(".index.json"):
        return _index_problems(weights, {})
    if weights.suffix == ".safetensors":
        problem = safetensors_header(weights)[1]
    else:
        problem = bin_problem(weights)
    return [problem] if problem else []
