"""The Batch API calls of a batch-mode job, through google-genai, and the results they bring back.

``BatchApi`` wraps the few calls a job makes (create, get, cancel, list, upload, download):

* every call but ``create`` is tried again on a transient error (429, 5xx, a time-out), up to
  ``max_attempts`` tries, after the back-off or, when longer, the delay the error's RetryInfo
  asks for (at most 10 minutes); ``create`` is never simply repeated, since a create whose
  reply was lost may still have made a batch (meddpo.gemini.batch_run looks it up first);
* the list of batches is walked page by page here, with the pager's ``page`` and
  ``next_page``: google-genai 3.3.0's iterator indexes into an empty page that still
  carries a page token and raises IndexError, so an empty page is read as a page;
* ``get`` of a batch the API answers 404 for returns None (the caller ends it as not found);
* an error is described as what it is: Gemini's refusal, a request that failed on its way,
  or a failure of the SDK itself (meddpo.gemini.errors.describe_error).

``results`` reads an ended batch's entries, inline or from its results file, as
``(key, response, error code)``; ``request_json`` writes one request as a line of an
uploaded batch file.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from meddpo.gemini.client import GeminiSettings
from meddpo.gemini.errors import (
    HardGeminiError,
    describe_error,
    error_reason,
    is_transient,
    suggested_delay_s,
)

log = logging.getLogger(__name__)

FINAL_STATES = (
    "JOB_STATE_SUCCEEDED",
    "JOB_STATE_PARTIALLY_SUCCEEDED",
    "JOB_STATE_FAILED",
    "JOB_STATE_CANCELLED",
    "JOB_STATE_EXPIRED",
)
LONGEST_WAIT_S = 600.0  # the longest wait between two looks at a batch, or before a call is tried again
LIST_PAGE_SIZE = 100


class BatchApi:
    """One job's Batch API calls (``client``: a google-genai Client; ``sleep`` can be replaced in tests)."""

    def __init__(self, client, settings: GeminiSettings, sleep: Callable[[float], None] = time.sleep):
        self.client, self.settings, self.sleep = client, settings, sleep

    def create(self, src, display: str) -> str:
        """Create one batch (a single try: see the module's doc); its name."""
        from google.genai import types

        config = types.CreateBatchJobConfig(display_name=display)
        return self.client.batches.create(model=self.settings.model, src=src, config=config).name

    def get(self, name: str):
        """The batch, or None when the API answers 404 (deleted, or under another project's key)."""
        return self.call(f"get {name}", lambda: self.client.batches.get(name=name), missing_ok=True)

    def cancel(self, name: str) -> None:
        self.call(f"cancel {name}", lambda: self.client.batches.cancel(name=name))

    def names(self, displays: set[str]) -> dict[str, str]:
        """The name of each batch whose display name is one of ``displays``, over every page of the list."""
        found: dict[str, str] = {}
        pager = self.call("list", lambda: self.client.batches.list(config={"page_size": LIST_PAGE_SIZE}))
        while True:
            found.update(
                (item.display_name, item.name) for item in pager.page if item.display_name in displays
            )
            if not pager.config.get("page_token") or len(found) == len(displays):
                return found
            self.call("list", pager.next_page)  # an empty page with a token is a page like any other

    def upload(self, display: str, lines: list[dict]) -> str:
        """The requests as a JSONL file uploaded with the Files API (over the inline limit); its name."""
        from google.genai import types

        with tempfile.TemporaryDirectory(prefix="meddpo-batch-") as folder:
            path = Path(folder) / f"{display}.jsonl"
            path.write_text("".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines), "utf-8")
            config = types.UploadFileConfig(display_name=display, mime_type="jsonl")
            uploaded = self.call("upload", lambda: self.client.files.upload(file=str(path), config=config))
        log.info("batch %s: %d requests uploaded as %s", display, len(lines), uploaded.name)
        return uploaded.name

    def results(self, job) -> list[tuple[str | None, object, object]]:
        """``(key, response, error code)`` of every entry of an ended batch, inline or in its results file,
        in the order the API lists them (duplicates and keys nobody asked for included)."""
        dest = job.dest
        if dest is not None and dest.file_name:
            data = self.call("download", lambda: self.client.files.download(file=dest.file_name))
            return [
                _file_result(line) for line in data.decode("utf-8", "replace").splitlines() if line.strip()
            ]
        return [
            ((entry.metadata or {}).get("key"), entry.response, _code(entry.error) if entry.error else None)
            for entry in (dest.inlined_responses if dest is not None else None) or []
        ]

    def call(self, what: str, function: Callable[[], object], missing_ok: bool = False):
        """``function()``, tried again on transient errors (module doc); a 404 is None when ``missing_ok``."""
        delay = self.settings.initial_backoff_s
        for attempt in range(1, self.settings.max_attempts + 1):
            try:
                return function()
            except Exception as error:  # noqa: BLE001 - transient ones are tried again, the rest re-raised
                if missing_ok and getattr(error, "code", None) == 404:
                    return None
                if not is_transient(error) or attempt == self.settings.max_attempts:
                    raise HardGeminiError(f"the Batch API ({what}): {describe_error(error)}") from None
                wait = min(max(delay, suggested_delay_s(error) or 0.0), LONGEST_WAIT_S)
                log.warning("the Batch API (%s): %s; trying again in %.1f s", what, error_reason(error), wait)
                self.sleep(wait)
                delay = min(max(delay * 2, 0.001), self.settings.max_backoff_s)
        raise AssertionError("unreachable")


def _file_result(line: str) -> tuple[str | None, object, object]:
    """One line of a batch's results file, read as the SDK reads an inline result (unknown fields
    dropped); a line that cannot be read is a failure of its key."""
    from google.genai import types
    from google.genai.batches import _InlinedResponse_from_mldev

    try:
        row = json.loads(line)
    except json.JSONDecodeError:
        return None, None, UNREADABLE  # no key to put it on: its question gets no outcome
    key = row.get("key") if isinstance(row, dict) else None
    if key is None or "response" not in row:
        return key, None, (row.get("error") or {}).get("code", "unknown") if key else UNREADABLE
    try:
        entry = _InlinedResponse_from_mldev({"response": row["response"]})
        return key, types.InlinedResponse.model_validate(entry).response, None
    except Exception:  # noqa: BLE001 - an unreadable result is that key's failure, never a traceback
        return key, None, UNREADABLE


UNREADABLE = "unreadable_result"


def request_json(question: str, config) -> dict:
    """One generateContent request as the REST API reads it (a line of an uploaded batch file)."""
    body: dict = {"contents": [{"role": "user", "parts": [{"text": question}]}]}
    if config.system_instruction:
        body["systemInstruction"] = {"parts": [{"text": config.system_instruction}]}
    generation = {"temperature": config.temperature, "maxOutputTokens": config.max_output_tokens}
    if config.response_mime_type:
        generation["responseMimeType"] = config.response_mime_type
    if config.response_json_schema is not None:
        generation["responseJsonSchema"] = config.response_json_schema
    if config.thinking_config is not None:
        generation["thinkingConfig"] = {"thinkingBudget": config.thinking_config.thinking_budget}
    body["generationConfig"] = generation
    return body


def _code(error) -> object:
    return error.get("code") if isinstance(error, dict) else getattr(error, "code", None)


def state_of(job) -> str:
    """A batch's state name (``JOB_STATE_...``)."""
    state = job.state
    return getattr(state, "name", None) or str(state)


def short(state: str) -> str:
    return state.removeprefix("JOB_STATE_")


def age_h(job) -> float | None:
    """Hours since the batch was created, by its createTime; None when it has none."""
    created = job.create_time
    if created is None:
        return None
    if isinstance(created, str):
        created = dt.datetime.fromisoformat(created.replace("Z", "+00:00"))
    if created.tzinfo is None:
        created = created.replace(tzinfo=dt.UTC)
    return (dt.datetime.now(dt.UTC) - created).total_seconds() / 3600
