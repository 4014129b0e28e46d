"""The Gemini client: settings, key, request pacing, one question asked with retries, its reply read.

Holds what talks to Gemini through the google-genai SDK, for every caller that
asks Gemini something (the teacher's shard job, the judge, preflight, status).
The answer store and the resume loop belong to the shard job (meddpo.gemini.job).

A question is one ``client.aio.models.generate_content`` call with the system
prompt as ``system_instruction``; ``RateLimiter`` spaces request starts (retries
count too). What one question comes to (an ``Outcome``):

* **answer**: STOP, or MAX_TOKENS (the cut answer is kept with finish_reason
  "length").
* **refusal**, final for the settings that produced it: a blocked prompt, a
  candidate stopped for SAFETY / PROHIBITED_CONTENT / RECITATION / ..., no
  candidate, or an empty answer.
* **failure**, not final: 429, 5xx, time-outs and dropped connections are
  retried by tenacity with exponential back-off and jitter, up to
  ``max_attempts`` tries (a 429 with a RetryInfo delay waits at least that
  long); a question whose tries run out, or one whose own request the API turns
  down (a 4xx that is not a hard error), is a failure.

What the errors mean (hard errors, an unreachable endpoint) is in meddpo.gemini.errors.
A connect time-out is at most ``CONNECT_TIMEOUT_S`` (``timeout_s`` still bounds
the whole request), so a host that drops every packet is found out in well
under a minute.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from meddpo.backends import in_batch_mode
from meddpo.config.settings import defaults, gemini_price
from meddpo.errors import UserError
from meddpo.gemini.errors import (
    HARD_ERROR_CODES,
    EndpointWatch,
    HardGeminiError,
    describe_error,
    error_reason,
    is_transient,
    never_reached,
    suggested_delay_s,
)
from meddpo.gemini.served import served_model

# the longest wait for a connection to open (the whole request may take timeout_s)
CONNECT_TIMEOUT_S = 10.0
KEY_VARIABLES = ("GEMINI_API_KEY", "GOOGLE_API_KEY")


class MissingKeyError(UserError):
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
    mode: str = _DEFAULTS["mode"]
    batch_poll_s: float = _DEFAULTS["batch_poll_s"]
    batch_wait_h: float = _DEFAULTS["batch_wait_h"]
    batch_max_age_h: float = _DEFAULTS["batch_max_age_h"]
    batch_too_old: str = _DEFAULTS["batch_too_old"]
    batch_inline_limit_mb: float = _DEFAULTS["batch_inline_limit_mb"]
    batch_max_attempts: int = _DEFAULTS["batch_max_attempts"]
    max_failed_fraction: float = _DEFAULTS["max_failed_fraction"]
    ask_refused_again: bool = _DEFAULTS["ask_refused_again"]
    max_refused_fraction: float = _DEFAULTS["max_refused_fraction"]
    too_many_refusals: str = _DEFAULTS["too_many_refusals"]
    accept_served_model: str | None = _DEFAULTS["accept_served_model"]
    # the model's gemini_prices entry (None: the schema's, when it has one for the model)
    price: Mapping[str, Any] | None = None

    # The settings that change the answer text (the rest only change speed and cost).
    TEXT_KEYS: ClassVar[tuple[str, ...]] = ("model", "temperature", "max_output_tokens", "thinking_budget")

    def prices(self, batch: bool | None = None) -> dict[str, float] | None:
        """USD per million tokens online or in batch mode (``batch`` None: this block's mode), from
        ``price``, else the schema's gemini_prices entry of the model; None when neither has one."""
        price = self.price or gemini_price(
            {}, {"model": self.model, "accept_served_model": self.accept_served_model}
        )
        if price is None:
            return None
        prefix = "batch_" if (in_batch_mode(self) if batch is None else batch) else ""
        return {
            "input_per_million": price[prefix + "input_per_million"],
            "output_per_million": price[prefix + "output_per_million"],
        }

    def endpoint(self) -> str | None:
        """The endpoint when it is not Google's: ``base_url``, or the SDK's GOOGLE_GEMINI_BASE_URL."""
        return self.base_url or os.environ.get("GOOGLE_GEMINI_BASE_URL") or None

    def text_settings(self, system_prompt: str, key_extra: dict | None = None) -> dict[str, Any]:
        """What changes the answer text: the answer store's key (numbers typed as the CLI types them;
        ``key_extra``: a judge's own settings).

        The host of an endpoint other than Google's (``base_url``, or the SDK's
        GOOGLE_GEMINI_BASE_URL) is part of it, so answers from a test server or a proxy are
        never taken for Gemini's (the port is not: a local test server gets a new one each run).
        """
        budget = self.thinking_budget
        settings = {
            "backend": "gemini",
            "system_prompt": system_prompt,
            "model": self.model,
            "temperature": float(self.temperature),
            "max_output_tokens": int(self.max_output_tokens),
            "thinking_budget": None if budget is None else int(budget),
        }
        endpoint = self.endpoint()
        if endpoint:
            from urllib.parse import urlsplit

            settings["endpoint_host"] = urlsplit(endpoint).hostname or endpoint
        return {**settings, **(key_extra or {})}


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
    row: dict | None = None  # an answer
    refusal: dict | None = None  # {id, refused: reason}: final for these settings
    failure: dict | None = None  # {id, reason}: asked again on a later run
    client_error: BaseException | None = None  # a 4xx that may concern this question alone
    usage: Counter | None = None
    attempts: int = 0


_FINISH_REASONS = {"STOP": "stop", "MAX_TOKENS": "length"}
CHARACTERS_PER_TOKEN = 4  # about, in English: the estimate of a reply that came without its token counts


def _answer_text(response) -> str:
    """The text of a reply's first candidate, thoughts left out."""
    candidates = getattr(response, "candidates", None) or []
    content = candidates[0].content if candidates else None
    parts = content.parts if content is not None and content.parts else []
    return "".join(part.text or "" for part in parts if not getattr(part, "thought", False)).strip()


def response_usage(response, question: str, system_prompt: str | None = None) -> Counter:
    """The tokens a reply was billed for: its usageMetadata, or, when it came without one, an estimate
    (about four characters a token of the system prompt and question in, of the answer out), flagged
    ``usage_missing`` so that it is never counted as free."""
    meta = getattr(response, "usage_metadata", None)
    counts: Counter = Counter()
    if meta is not None:
        counts["input_tokens"] = meta.prompt_token_count or 0
        counts["output_tokens"] = meta.candidates_token_count or 0
        counts["thinking_tokens"] = meta.thoughts_token_count or 0
        return counts
    asked = len(system_prompt or "") + len(question)
    counts["input_tokens"] = -(-asked // CHARACTERS_PER_TOKEN)
    counts["output_tokens"] = -(-len(_answer_text(response)) // CHARACTERS_PER_TOKEN)
    counts["thinking_tokens"] = 0
    counts["usage_missing"] = 1
    return counts


def interpret_response(
    question_id: str, response, settings: GeminiSettings, usage: Counter | None = None
) -> Outcome:
    """Turn one generateContent response into an answer row or a refusal (``usage``: its tokens, as
    response_usage counts them; by default its usageMetadata)."""
    usage = usage if usage is not None else response_usage(response, "")
    served = served_model(response)

    def refused(reason: str) -> Outcome:
        refusal = {"id": question_id, "refused": reason, "model": settings.model, "served_model": served}
        return Outcome(refusal=refusal, usage=usage)

    feedback = getattr(response, "prompt_feedback", None)
    if feedback is not None and feedback.block_reason:
        return refused(f"prompt_blocked:{_enum_name(feedback.block_reason)}")
    candidates = response.candidates or []
    if not candidates:
        return refused("no_candidates")
    candidate = candidates[0]
    reason = _enum_name(candidate.finish_reason) if candidate.finish_reason else "STOP"
    text = _answer_text(response)
    if reason not in _FINISH_REASONS:
        return refused(f"finish_reason:{reason}")
    if not text:
        # an empty MAX_TOKENS answer ran out of budget (thinking can use it all): say so
        return refused("empty_text" if reason == "STOP" else f"empty_text:{reason}")
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
        "served_model": served,
        "sampling": {
            "temperature": settings.temperature,
            "max_output_tokens": settings.max_output_tokens,
            "thinking_budget": settings.thinking_budget,
        },
    }
    if usage.get("usage_missing"):
        row["tokens_estimated"] = True  # the reply had no token counts: these are estimates
    return Outcome(row=row, usage=usage)


def _enum_name(value) -> str:
    return getattr(value, "name", None) or str(value)


async def ask(
    client,
    limiter: RateLimiter,
    settings: GeminiSettings,
    config,
    question: dict,
    log_request: Callable[[dict], None],
    watch: EndpointWatch | None = None,
) -> Outcome:
    """One question, retried on transient errors; every request sent goes to ``log_request``.

    An attempt that never reached the server is not a request: it goes to ``watch``
    instead, which raises EndpointUnreachable once too many in a row did so.
    """
    watch = watch or EndpointWatch("?")
    attempts = 0
    usage: Counter = Counter()

    async def call():
        nonlocal attempts, usage
        await limiter.acquire()
        watch.check()  # another request found the endpoint unreachable while this one waited
        attempts += 1
        try:
            response = await client.aio.models.generate_content(
                model=settings.model, contents=question["question"], config=config
            )
        except Exception as error:  # noqa: BLE001 - logged as a request that cost no tokens, then re-raised
            if never_reached(error):
                watch.unreached(error)
                raise
            watch.reached()
            log_request({"id": question["id"], "attempt": attempts, "error": error_reason(error)})
            raise
        watch.reached()
        usage = response_usage(response, question["question"], config.system_instruction)
        log_request(
            {"id": question["id"], "attempt": attempts, **usage, "served_model": served_model(response)}
        )
        return response

    try:
        response = await _retrying(settings)(call)
    except Exception as error:  # noqa: BLE001 - sorted into hard, per-question and exhausted below
        outcome = _failed(question["id"], error, attempts)
        if outcome is None:
            raise
        return outcome
    outcome = interpret_response(question["id"], response, settings, usage)
    outcome.attempts = attempts
    return outcome


def _retrying(settings: GeminiSettings):
    """tenacity's retry loop for one question: transient errors only, up to ``max_attempts`` tries."""
    import tenacity

    return tenacity.AsyncRetrying(
        stop=tenacity.stop_after_attempt(settings.max_attempts),
        wait=_RetryWait(settings.initial_backoff_s, settings.max_backoff_s),
        retry=tenacity.retry_if_exception(is_transient),
        reraise=True,
    )


def _failed(question_id: str, error: BaseException, attempts: int) -> Outcome | None:
    """The failure a question's last error makes; HardGeminiError when no request can escape it.

    None when it is neither a 4xx nor a transient error (the caller raises it again).
    """
    code = getattr(error, "code", None)
    if code in HARD_ERROR_CODES:
        raise HardGeminiError(describe_error(error)) from None
    if isinstance(code, int) and 400 <= code < 500 and not is_transient(error):
        failure = {"id": question_id, "reason": f"client_error:{error_reason(error)}"}
        return Outcome(failure=failure, client_error=error, attempts=attempts)
    if not is_transient(error):
        return None
    failure = {"id": question_id, "reason": f"retries_exhausted:{error_reason(error)}"}
    return Outcome(failure=failure, attempts=attempts)


async def _cap_connect_timeout(request) -> None:
    """httpx request hook: open the connection within CONNECT_TIMEOUT_S, whatever timeout_s is.

    The SDK gives each request one time-out for everything; a host that drops every
    packet would then hold each attempt for the whole timeout_s before it counts as
    unreachable.
    """
    timeout = request.extensions.get("timeout")
    if isinstance(timeout, dict):
        connect = timeout.get("connect")
        request.extensions["timeout"] = {
            **timeout,
            "connect": CONNECT_TIMEOUT_S if connect is None else min(connect, CONNECT_TIMEOUT_S),
        }


def make_client(api_key: str, settings: GeminiSettings):
    from google import genai
    from google.genai import types

    options = types.HttpOptions(
        timeout=int(settings.timeout_s * 1000),
        # retries are ours (tenacity, honouring the server's RetryInfo): the SDK's are off
        retry_options=types.HttpRetryOptions(attempts=1),
        async_client_args={"event_hooks": {"request": [_cap_connect_timeout]}},
    )
    if settings.base_url:
        options.base_url = settings.base_url
    return genai.Client(api_key=api_key, http_options=options)


def generation_config(settings: GeminiSettings, system_prompt: str, response_schema: dict | None = None):
    """The request's config; ``response_schema`` (a JSON schema) asks for JSON output in that shape."""
    from google.genai import types

    kwargs: dict[str, Any] = dict(
        system_instruction=system_prompt,
        temperature=settings.temperature,
        max_output_tokens=settings.max_output_tokens,
    )
    if response_schema is not None:
        kwargs.update(response_mime_type="application/json", response_json_schema=response_schema)
    if settings.thinking_budget is not None:
        kwargs["thinking_config"] = types.ThinkingConfig(thinking_budget=settings.thinking_budget)
    return types.GenerateContentConfig(**kwargs)


def estimate_cost(usage: dict, prices: dict | None) -> float | None:
    """US dollars from token counts and per-million-token prices (thinking is billed as output);
    None without prices (a model gemini_prices does not list)."""
    if prices is None:
        return None
    return round(
        usage.get("input_tokens", 0) / 1e6 * prices.get("input_per_million", 0.0)
        + (usage.get("output_tokens", 0) + usage.get("thinking_tokens", 0))
        / 1e6
        * prices.get("output_per_million", 0.0),
        6,
    )
