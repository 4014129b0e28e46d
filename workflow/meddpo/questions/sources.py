"""Reading question sources: the hub dataset or a local JSONL / CSV / Parquet file or folder.

Before the datasets library loads a local source, each file is read-checked
here so that a bad row is one line naming the file, the line or row and the
column (not UTF-8, not valid JSON, a lone surrogate), and a source without rows
is "no questions in <file>". ``load_source_rows`` returns the rows as dicts with
the columns the question rows need, and a fingerprint of the source.

Imports: the standard library, meddpo.jsonl and meddpo.questions.hub_probe at import time; datasets and
pyarrow only when a source is read. Nothing of the later stages.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sys
from pathlib import Path
from typing import Any

from meddpo.jsonl import DataError, iter_jsonl
from meddpo.questions.hub_probe import DATASET_OFFLINE_VARIABLES, hub_endpoint, hub_status, offline

REQUIRED_COLUMNS = ("question", "question_type")
# MedQuAD columns carried into the question rows (when the source has them).
KEPT_COLUMNS = (
    "question_focus",
    "question_id",
    "document_id",
    "document_source",
    "document_url",
    "umls_semantic_group",
)
# seconds the questions step waits for the hub's answer before it reads the cache only
HUB_ASK_S = 2
LOCAL_FORMATS = {".parquet": "parquet", ".jsonl": "json", ".json": "json", ".csv": "csv"}


def is_local_source(dataset: str) -> bool:
    """A file or folder on this machine, not a hub id (the preflight and the plan ask this too)."""
    return (
        os.path.exists(dataset)
        or Path(dataset).suffix.lower() in LOCAL_FORMATS
        or dataset.startswith((".", "/"))
    )


LOADED_COLUMNS = (*REQUIRED_COLUMNS, "category", *KEPT_COLUMNS)


def no_questions(where: str, why: str) -> DataError:
    """The one line for a source without questions (the questions step says it too)."""
    return DataError(f"no questions in {where}: {why}; point source.dataset at a source with questions")


def _not_utf8(where: str, raw: bytes, err: UnicodeDecodeError) -> DataError:
    bad = raw[err.start : err.start + 1]
    return DataError(
        f"{where}: not UTF-8 text (byte {err.start + 1} of the value: {bad!r}); save the source as UTF-8"
    )


def _check_jsonl(path: Path) -> int:
    """Rows of a JSONL source; our reader names the line (and field, column) of a bad row."""
    try:
        rows = 0
        for number, row in iter_jsonl(path, required=REQUIRED_COLUMNS):
            rows += 1
            for column in LOADED_COLUMNS:
                value = row.get(column)
                if isinstance(value, str) and any("\ud800" <= char <= "\udfff" for char in value):
                    raise DataError(
                        f"{path}, line {number}, field {column!r}: a lone surrogate escape (\\ud800 to "
                        "\\udfff without its pair) is not text; remove it"
                    )
        return rows
    except DataError as err:
        if path.suffix.lower() == ".json" and "not valid JSON" in str(err):
            raise DataError(
                f"{err}; a .json source must hold one JSON object per line (JSON Lines)"
            ) from None
        raise


def _check_csv(path: Path) -> int:
    """Data rows of a CSV source (blank lines aside); bytes that are not UTF-8 name line, row and column."""
    import csv
    import io

    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    reader = csv.reader(
        io.StringIO((text or data.decode("utf-8", "surrogateescape")).lstrip("\ufeff"), newline="")
    )
    header = next(reader, None) or []
    rows = 0
    while True:
        line = reader.line_num + 1  # where the record starts (a quoted field may hold line breaks)
        record = next(reader, None)
        if record is None:
            break
        if not any(field.strip() for field in record):
            continue
        rows += 1
        if text is not None:
            continue
        for index, field in enumerate(record):
            try:
                field.encode("utf-8")
            except UnicodeEncodeError:
                name = header[index] if index < len(header) else f"#{index + 1}"
                raw = field.encode("utf-8", "surrogateescape")
                err = _first_decode_error(raw)
                raise _not_utf8(f"{path}, line {line} (row {rows}), column {name!r}", raw, err) from None
    if text is None:  # the bad bytes are in the header
        raw = data.split(b"\n", 1)[0]
        raise _not_utf8(f"{path}, line 1 (the header)", raw, _first_decode_error(raw))
    return rows


def _first_decode_error(raw: bytes) -> UnicodeDecodeError:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as err:
        return err
    raise AssertionError("the bytes decode")  # pragma: no cover - called only on bytes that do not


def _check_arrow_text(batches, where: str) -> None:
    """Raise DataError naming the row and column of the first string that is not UTF-8.

    Arrow does not check the bytes of a string column when it reads a Parquet
    file; they fail only once turned into Python text.
    """
    import pyarrow as pa

    first_row = 0
    for batch in batches:
        for name, column in zip(batch.schema.names, batch.columns, strict=True):
            if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
                continue
            try:
                column.validate(full=True)
                continue
            except pa.ArrowInvalid:
                pass
            binary = pa.large_binary() if pa.types.is_large_string(column.type) else pa.binary()
            for offset, raw in enumerate(column.view(binary).to_pylist()):
                if raw is None:
                    continue
                try:
                    raw.decode("utf-8")
                except UnicodeDecodeError as err:
                    raise _not_utf8(
                        f"{where}, row {first_row + offset + 1}, column {name!r}", raw, err
                    ) from None
        first_row += batch.num_rows


def _check_parquet(path: Path) -> int:
    """Rows of a Parquet source; a file that is not Parquet, or text that is not UTF-8, is one line."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
        columns = [name for name in LOADED_COLUMNS if name in parquet.schema_arrow.names]
        if parquet.metadata.num_rows:
            _check_arrow_text(parquet.iter_batches(columns=columns), str(path))
    except (pa.ArrowException, OSError) as err:
        raise DataError(f"{path}: could not be read as Parquet: {_first_line(err)}") from None
    return parquet.metadata.num_rows


_CHECKS = {"json": _check_jsonl, "csv": _check_csv, "parquet": _check_parquet}


def _check_local_source(path: Path) -> str:
    """Read-check a local source (a file, or a folder of them) before datasets loads it.

    Returns the datasets builder of the file (the folder itself for a folder).
    """
    if path.is_dir():
        files = sorted(f for f in path.rglob("*") if f.is_file() and f.suffix.lower() in LOCAL_FORMATS)
        if not files:
            raise no_questions(str(path), f"the folder holds no {', '.join(LOCAL_FORMATS)} file")
        builder = str(path)
    else:
        files = [path]
        builder = LOCAL_FORMATS.get(path.suffix.lower())
        if builder is None:
            raise DataError(f"{path}: unknown format {path.suffix!r}; use .parquet, .jsonl or .csv")
    if sum(_CHECKS[LOCAL_FORMATS[f.suffix.lower()]](f) for f in files) == 0:
        raise no_questions(str(path), "the source has no rows")
    return builder


def _quiet_datasets():
    """datasets logs its own ERROR lines before it raises; the error here is one line of ours."""
    import datasets

    datasets.logging.set_verbosity(logging.CRITICAL)
    datasets.disable_progress_bars()
    return datasets


def _cache_only_when_unreachable(dataset: str, revision: str | None) -> str | None:
    """A hub dataset where the hub cannot be reached: the datasets library is put in offline mode,
    so it reads its cache or fails at once, instead of retrying for half a minute with a warning
    each time. Returns why the hub could not be asked, or None (asked, or offline already)."""
    if offline(DATASET_OFFLINE_VARIABLES) or "datasets" in sys.modules:  # too late to switch it
        return None
    status = hub_status(dataset, "dataset", revision, timeout_s=HUB_ASK_S)
    if not isinstance(status, str):  # the hub answered (even a 404: the library says what it is)
        return None
    os.environ.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    return status


def load_source_rows(
    dataset: str, split: str = "train", revision: str | None = None
) -> tuple[list[dict[str, Any]], str]:
    """Rows of the source as dicts, through ``datasets.load_dataset``, and a fingerprint of the source.

    ``dataset`` is a hub id (``lavita/MedQuAD``), a local parquet/jsonl/csv file
    or a local directory holding such files. Failures become one-line DataErrors
    naming the file, and where it applies the line or row and the column; a
    source without rows is "no questions in <file>".
    """
    unreachable = None if is_local_source(dataset) else _cache_only_when_unreachable(dataset, revision)
    datasets = _quiet_datasets()  # heavy import, kept out of module import time
    if is_local_source(dataset):
        path = Path(dataset)
        if not path.exists():
            raise DataError(f"{path}: source file not found (config key source.dataset)")
        builder = _check_local_source(path)
        files = None if path.is_dir() else str(path)
        try:
            ds = datasets.load_dataset(builder, data_files=files, split=split)
        except Exception as err:  # noqa: BLE001 - turned into one clear line
            kind = "a dataset folder" if path.is_dir() else builder
            raise DataError(f"{path}: could not be read as {kind}: {_first_line(err)}") from None
    else:
        try:
            ds = datasets.load_dataset(dataset, split=split, revision=revision)
        except Exception as err:  # noqa: BLE001 - no traceback wall for an offline machine
            if unreachable:
                raise DataError(
                    f"could not load {dataset!r}: the Hugging Face Hub ({hub_endpoint()}) cannot be reached "
                    f"({unreachable}) and the dataset is not in the Hugging Face cache. Without network "
                    "access, copy the dataset to this machine and set source.dataset in the config to the "
                    "local .parquet/.jsonl/.csv file."
                ) from None
            raise DataError(
                f"could not load {dataset!r} from the Hugging Face Hub "
                f"({type(err).__name__}: {_first_line(err)}). Without network access, copy the dataset to "
                "this machine and set source.dataset in the config to the local .parquet/.jsonl/.csv file."
            ) from None
    missing = [column for column in REQUIRED_COLUMNS if column not in ds.column_names]
    if missing:
        raise DataError(
            f"{dataset}: missing column(s) {', '.join(repr(m) for m in missing)}; found {ds.column_names}"
        )
    if len(ds) == 0:
        raise no_questions(dataset, f"split {split!r} has no rows")
    keep = [c for c in LOADED_COLUMNS if c in ds.column_names]
    ds = ds.select_columns(keep)
    if not Path(dataset).is_file():  # a hub dataset or a folder: not looked at row by row yet
        _check_arrow_text(ds.data.to_batches(), dataset)
    return ds.to_list(), source_fingerprint(dataset, ds)


def source_fingerprint(dataset: str, ds) -> str:
    """SHA-256 of a local source file, else the datasets library's fingerprint of what it loaded."""
    path = Path(dataset)
    if path.is_file():
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        return f"sha256:{digest.hexdigest()}"
    return f"datasets:{getattr(ds, '_fingerprint', 'unknown')}"


def _first_line(err: BaseException) -> str:
    text = str(err).strip() or type(err).__name__
    return text.splitlines()[0][:300]
