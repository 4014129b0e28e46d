"""Chosen answers from Gemini through the google-genai SDK: concurrent, rate-limited, retrying, resumable.

One async client per job, kept for the job's length. Every question is one
``client.aio.models.generate_content`` call with the teacher system prompt as
``system_instruction``; at most ``concurrency`` calls are in flight and calls
start no faster than ``requests_per_minute`` allows (retries count too).

Errors:

* 429, 5xx, time-outs and connection errors are retried by tenacity with
  exponential back-off and jitter, up to ``max_attempts`` tries; a 429 that
  carries a RetryInfo delay waits at least that long. A question whose tries
  run out is a per-question failure.
* 400 / 401 / 403 / 404 (bad key, no permission, unknown model) mean no question
  can succeed: the job stops at once with one line (HardGeminiError) and writes
  no output.
* A blocked prompt, a candidate stopped for SAFETY / PROHIBITED_CONTENT /
  RECITATION / ..., or an empty answer is a per-question failure with that
  reason. MAX_TOKENS keeps the (cut) answer with finish_reason "length".

Every answer is appended to the answer store as it arrives, so a rerun asks
only for the questions that are missing or failed.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from .resume import ResumableJob
from .settings import defaults

log = logging.getLogger(__name__)

HARD_ERROR_CODES = {400, 401, 403, 404}
RETRY_CODES = {408, 429, 500, 502, 503, 504}
KEY_VARIABLES = ("GEMINI_API_KEY", "GOOGLE_API_KEY")


class HardGeminiError(Exception):
    """An error no retry can fix (bad key, permission, unknown model)."""


class MissingKeyError(Exception):
    """No API key in the environment or the secrets file."""


_DEFAULTS = defaults("teacher.gemini")


@dataclass(frozen=True)
class GeminiSettings:
    """The ``teacher.gemini`` block of the config; defaults from the config schema."""

    model: str = _DEFAULTS["model"]
    temperature: float = _DEFAULTS["temperature"]
    max_output_tokens: int = _DEFAULTS["max_output_tokens"]
    thinking_budget: int | None = _DEFAULTS["thinking_budget"]
    # throughput, retries, key and cost (they do not change the text)
    concurrency: int = _DEFAULTS["concurrency"]
    requests_per_minute: float = _DEFAULTS["requests_per_minute"]
    max_attempts: int = _DEFAULTS["max_attempts"]
    initial_backoff_s: float = _DEFAULTS["initial_backoff_s"]
    max_backoff_s: float = _DEFAULTS["max_backoff_s"]
    timeout_s: float = _DEFAULTS["timeout_s"]
    base_url: str | None = _DEFAULTS["base_url"]
    secrets_file: str | None = _DEFAULTS["secrets_file"]
    price_input_per_million: float = _DEFAULTS["price_input_per_million"]
    price_output_per_million: float = _DEFAULTS["price_output_per_million"]
    max_failed_fraction: float = _DEFAULTS["max_failed_fraction"]

    # The settings that change the answer text (the rest only change speed and cost).
    TEXT_KEYS: ClassVar[tuple[str, ...]] = ("model", "temperature", "max_output_tokens", "thinking_budget")

    def text_settings(self, system_prompt: str) -> dict[str, Any]:
        """What changes the answer text: the answer store's key."""
        return {
            "backend": "gemini",
            "system_prompt": system_prompt,
            **{key: getattr(self, key) for key in self.TEXT_KEYS},
        }


def load_api_key(secrets_file: str | os.PathLike | None) -> str:
    """The key from GEMINI_API_KEY / GOOGLE_API_KEY, else from the secrets file.

    The file holds one ``GEMINI_API_KEY=...`` line (or just the key); keep it out of git.
    """
    for name in KEY_VARIABLES:
        if os.environ.get(name, "").strip():
            return os.environ[name].strip()
    if secrets_file and Path(secrets_file).is_file():
        for line in Path(secrets_file).read_text(encoding="utf-8").splitlines():
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            name, sep, value = line.partition("=")
            if not sep:
                return line
            if name.strip().removeprefix("export ").strip() in KEY_VARIABLES and value.strip():
                return value.strip().strip("'\"")
    where = f" or in {secrets_file} (a line GEMINI_API_KEY=...)" if secrets_file else ""
    raise MissingKeyError(
        f"no Gemini API key: set GEMINI_API_KEY (or GOOGLE_API_KEY) in the environment{where}"
    )


class RateLimiter:
    """Spaces request starts at least 60 / requests_per_minute seconds apart.

    ``clock`` and ``sleep`` can be replaced (tests use a fake clock, so pacing is
    checked by counts, not wall time).
    """

    def __init__(
        self,
        requests_per_minute: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ):
        self.interval = 60.0 / requests_per_minute if requests_per_minute > 0 else 0.0
        self.clock, self.sleep = clock, sleep
        self._next = 0.0
        self._lock = asyncio.Lock()

    async def acquire(self) -> None:
        async with self._lock:
            now = self.clock()
            start = max(now, self._next)
            self._next = start + self.interval
        if start > now:
            await self.sleep(start - now)


def suggested_delay_s(error: BaseException) -> float | None:
    """The RetryInfo delay a Gemini error carries ("retryDelay": "37s"), if any."""
    details = getattr(error, "details", None)
    if not isinstance(details, dict):
        return None
    for item in (details.get("error") or {}).get("details") or []:
        if isinstance(item, dict) and str(item.get("@type", "")).endswith("RetryInfo"):
            match = re.fullmatch(r"([0-9.]+)s", str(item.get("retryDelay", "")))
            if match:
                return float(match.group(1))
    return None


def _transport_errors() -> tuple[type[BaseException], ...]:
    """Time-outs and connection errors of whichever httpx the SDK uses (httpx2 or httpx)."""
    found: list[type[BaseException]] = [asyncio.TimeoutError]
    for name in ("httpx2", "httpx"):
        try:
            module = __import__(name)
        except ImportError:
            continue
        found += [
            getattr(module, cls) for cls in ("TimeoutException", "TransportError") if hasattr(module, cls)
        ]
    return tuple(found)


def _is_transient(error: BaseException) -> bool:
    from google.genai import errors

    if isinstance(error, errors.APIError):
        return error.code in RETRY_CODES
    return isinstance(error, _transport_errors())


def _error_reason(error: BaseException) -> str:
    code, status = getattr(error, "code", None), getattr(error, "status", None)
    if code:
        return f"{code} {status or ''}".strip()
    return type(error).__name__


class _RetryWait:
    """tenacity wait: exponential back-off with jitter, at least the server's suggested delay."""

    def __init__(self, initial: float, maximum: float):
        import tenacity

        self._exponential = tenacity.wait_exponential_jitter(initial=initial, max=maximum, jitter=initial)
        self.maximum = maximum

    def __call__(self, retry_state) -> float:
        wait = self._exponential(retry_state)
        outcome = retry_state.outcome
        if outcome is not None and outcome.failed:
            suggested = suggested_delay_s(outcome.exception())
            if suggested is not None:
                wait = max(wait, min(suggested, self.maximum))
        return wait


@dataclass
class Outcome:
    row: dict | None = None
    failure: dict | None = None
    usage: Counter | None = None
    attempts: int = 0


_FINISH_REASONS = {"STOP": "stop", "MAX_TOKENS": "length"}


def _usage(response) -> Counter:
    meta = getattr(response, "usage_metadata", None)
    counts = Counter()
    if meta is not None:
        counts["input_tokens"] = meta.prompt_token_count or 0
        counts["output_tokens"] = meta.candidates_token_count or 0
        counts["thinking_tokens"] = meta.thoughts_token_count or 0
    return counts


def interpret_response(question_id: str, response, settings: GeminiSettings) -> Outcome:
    """Turn one generateContent response into an answer row or a failure."""
    usage = _usage(response)
    feedback = getattr(response, "prompt_feedback", None)
    if feedback is not None and feedback.block_reason:
        return Outcome(
            failure={"id": question_id, "reason": f"prompt_blocked:{_enum_name(feedback.block_reason)}"},
            usage=usage,
        )
    candidates = response.candidates or []
    if not candidates:
        return Outcome(failure={"id": question_id, "reason": "no_candidates"}, usage=usage)
    candidate = candidates[0]
    reason = _enum_name(candidate.finish_reason) if candidate.finish_reason else "STOP"
    parts = candidate.content.parts if candidate.content and candidate.content.parts else []
    text = "".join(part.text or "" for part in parts if not getattr(part, "thought", False)).strip()
    if reason not in _FINISH_REASONS:
        return Outcome(failure={"id": question_id, "reason": f"finish_reason:{reason}"}, usage=usage)
    if not text:
        return Outcome(failure={"id": question_id, "reason": "empty_text"}, usage=usage)
    row = {
        "id": question_id,
        "text": text,
        "finish_reason": _FINISH_REASONS[reason],
        "gemini_finish_reason": reason,
        "new_tokens": usage["output_tokens"],
        "prompt_tokens": usage["input_tokens"],
        "thinking_tokens": usage["thinking_tokens"],
        "model": settings.model,
        "revision": getattr(response, "model_version", None),
        "sampling": {
            "temperature": settings.temperature,
            "max_output_tokens": settings.max_output_tokens,
            "thinking_budget": settings.thinking_budget,
        },
    }
    return Outcome(row=row, usage=usage)


def _enum_name(value) -> str:
    return getattr(value, "name", None) or str(value)


async def _ask(client, limiter: RateLimiter, settings: GeminiSettings, config, question: dict) -> Outcome:
    import tenacity

    attempts = 0

    async def call():
        nonlocal attempts
        attempts += 1
        await limiter.acquire()
        return await client.aio.models.generate_content(
            model=settings.model, contents=question["question"], config=config
        )

    retrying = tenacity.AsyncRetrying(
        stop=tenacity.stop_after_attempt(settings.max_attempts),
        wait=_RetryWait(settings.initial_backoff_s, settings.max_backoff_s),
        retry=tenacity.retry_if_exception(_is_transient),
        reraise=True,
    )
    try:
        response = await retrying(call)
    except Exception as error:  # noqa: BLE001 - sorted into hard, exhausted and unexpected below
        code = getattr(error, "code", None)
        if code in HARD_ERROR_CODES:
            message = getattr(error, "message", None) or str(error)
            raise HardGeminiError(
                f"Gemini refused the request ({code} {getattr(error, 'status', '')}): {message}".replace(
                    "\n", " "
                )
            ) from None
        if not _is_transient(error):
            raise
        return Outcome(
            failure={
                "id": question["id"],
                "reason": f"retries_exhausted:{_error_reason(error)}",
                "attempts": attempts,
            },
            attempts=attempts,
        )
    outcome = interpret_response(question["id"], response, settings)
    outcome.attempts = attempts
    if outcome.failure is not None:
        outcome.failure["attempts"] = attempts
    return outcome


def make_client(api_key: str, settings: GeminiSettings):
    from google import genai
    from google.genai import types

    options = types.HttpOptions(
        timeout=int(settings.timeout_s * 1000),
        # retries are ours (tenacity, honouring the server's RetryInfo): the SDK's are off
        retry_options=types.HttpRetryOptions(attempts=1),
    )
    if settings.base_url:
        options.base_url = settings.base_url
    return genai.Client(api_key=api_key, http_options=options)


def generation_config(settings: GeminiSettings, system_prompt: str):
    from google.genai import types

    kwargs: dict[str, Any] = dict(
        system_instruction=system_prompt,
        temperature=settings.temperature,
        max_output_tokens=settings.max_output_tokens,
    )
    if settings.thinking_budget is not None:
        kwargs["thinking_config"] = types.ThinkingConfig(thinking_budget=settings.thinking_budget)
    return types.GenerateContentConfig(**kwargs)


async def answer_with_gemini(
    questions: Sequence[dict],
    system_prompt: str,
    settings: GeminiSettings,
    api_key: str,
    *,
    store_root: str | os.PathLike | None = None,
    store_part: str = "answers",
    limiter: RateLimiter | None = None,
    progress_every_s: float = 30.0,
) -> tuple[list[dict], list[dict], dict]:
    """Answer every question not yet in the store. Returns ``(rows, failures, usage)``.

    ``rows`` follow the order of ``questions`` (answered ones only); ``usage``
    counts requests and tokens of this job (answers reused from the store cost nothing).
    """
    job = ResumableJob(
        questions,
        settings.text_settings(system_prompt),
        store_root=store_root,
        store_part=store_part,
        progress_every_s=progress_every_s,
    )
    log.info(
        "Gemini %s: %d questions to request, %d in flight at most, %.0f requests/min",
        settings.model,
        len(job.todo),
        settings.concurrency,
        settings.requests_per_minute,
    )
    limiter = limiter or RateLimiter(settings.requests_per_minute)
    config = generation_config(settings, system_prompt)
    client = make_client(api_key, settings)
    semaphore = asyncio.Semaphore(settings.concurrency)
    usage: Counter = Counter()
    failures: list[dict] = []

    async def one(question: dict) -> None:
        async with semaphore:
            outcome = await _ask(client, limiter, settings, config, question)
        usage["requests"] += outcome.attempts
        usage.update(outcome.usage or Counter())
        if outcome.row is not None:
            job.record([outcome.row])
        else:
            failures.append(outcome.failure)
            job.record_failed()

    tasks = [asyncio.create_task(one(q)) for q in job.todo]
    try:
        if tasks:
            # the first hard error cancels everything else at once
            for future in asyncio.as_completed(tasks):
                await future
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await client.aio.aclose()
    order = {q["id"]: i for i, q in enumerate(questions)}
    failures.sort(key=lambda f: order[f["id"]])
    usage["reused_from_store"] = len(questions) - len(job.todo)
    return job.rows(), failures, dict(usage)


def answer_shard(
    questions: Sequence[dict],
    system_prompt: str,
    settings: GeminiSettings,
    *,
    store_root: str | os.PathLike | None,
    store_part: str,
    progress_every_s: float = 30.0,
) -> tuple[list[dict], list[dict], dict]:
    """One shard job: the key, the answers, the failures and a usage summary with the estimated cost."""
    import asyncio

    for name in ("httpx", "google_genai"):
        logging.getLogger(name).setLevel(logging.WARNING)
    api_key = load_api_key(settings.secrets_file)
    rows, failures, usage = asyncio.run(
        answer_with_gemini(
            questions,
            system_prompt,
            settings,
            api_key,
            store_root=store_root,
            store_part=store_part,
            progress_every_s=progress_every_s,
        )
    )
    usage["estimated_cost_usd"] = estimate_cost(
        usage,
        {
            "input_per_million": settings.price_input_per_million,
            "output_per_million": settings.price_output_per_million,
        },
    )
    usage.update(
        questions=len(questions),
        answered=len(rows),
        failed=len(failures),
        failure_reasons=summarise_failures(failures),
        model=settings.model,
    )
    log.info(
        "%d answered, %d failed %s; %d requests, tokens in/out/thinking %d/%d/%d, estimated $%.4f",
        len(rows),
        len(failures),
        usage["failure_reasons"],
        usage.get("requests", 0),
        usage.get("input_tokens", 0),
        usage.get("output_tokens", 0),
        usage.get("thinking_tokens", 0),
        usage["estimated_cost_usd"],
    )
    return rows, failures, usage


def too_many_failures(questions: int, usage: dict, settings: GeminiSettings) -> str | None:
    """The error line when more than ``max_failed_fraction`` of a shard's questions failed."""
    failed = usage.get("failed", 0)
    if not questions or failed / questions <= settings.max_failed_fraction:
        return None
    return (
        f"{failed} of {questions} questions failed ({usage['failure_reasons']}), more than "
        f"max_failed_fraction {settings.max_failed_fraction}"
    )


def estimate_cost(usage: dict, prices: dict) -> float:
    """US dollars from token counts and per-million-token prices (thinking is billed as output)."""
    return round(
        usage.get("input_tokens", 0) / 1e6 * prices.get("input_per_million", 0.0)
        + (usage.get("output_tokens", 0) + usage.get("thinking_tokens", 0))
        / 1e6
        * prices.get("output_per_million", 0.0),
        6,
    )


def summarise_failures(failures: Sequence[dict]) -> dict[str, int]:
    return dict(sorted(Counter(f["reason"] for f in failures).items()))
