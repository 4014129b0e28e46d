"""Chosen answers from Gemini through the google-genai SDK: concurrent, rate-limited, retrying, resumable.

One async client per job, kept for the job's length. Every question is one
``client.aio.models.generate_content`` call with the teacher system prompt as
``system_instruction``; at most ``concurrency`` calls are in flight and calls
start no faster than ``requests_per_minute`` allows (retries count too).

Outcomes of a question:

* **answer**: STOP, or MAX_TOKENS (the cut answer is kept with finish_reason
  "length").
* **refusal**, final for the settings that produced it: a blocked prompt, a
  candidate stopped for SAFETY / PROHIBITED_CONTENT / RECITATION / ..., no
  candidate, or an empty answer. It is stored with its reason and never asked
  again (on a rerun, a Snakemake retry or ``--forcerun``) unless
  ``ask_refused_again`` is set; the question is left out of the pairs.
* **failure**, not final: 429, 5xx, time-outs and dropped connections are
  retried by tenacity with exponential back-off and jitter, up to
  ``max_attempts`` tries (a 429 with a RetryInfo delay waits at least that
  long); a question whose tries run out, or one whose own request the API turns
  down (a 400 on one question while others succeed), is a failure: kept in the
  store's failures log and asked again on every later run. The job fails when
  more than ``max_failed_fraction`` of its questions fail.

Errors no request can escape stop the job at once with one line
(HardGeminiError) and no output: 401 / 403 (key, permission), 404 (unknown
model), a 400 that names the API key, or the same 400 on the first requests
with no success yet.

An endpoint that cannot be reached stops the job too (EndpointUnreachable):
when ``UNREACHED_TO_STOP`` attempts in a row fail before reaching the server
(connection refused, unknown host, a TLS handshake that fails, a connect
time-out), with no reply from the server between them, the job ends with one
line naming the host and port, once the requests already at the server are
answered and stored. Such attempts cost nothing and are not counted
as requests; a reply of any kind (a 503 or a 429 too) resets the count, so a
server that answers, even with errors, keeps its normal retries. A connect
time-out is at most ``CONNECT_TIMEOUT_S`` (``timeout_s`` still bounds the whole
request), so a host that drops every packet is found out in well under a minute.

Every answer and refusal is appended to the answer store as it arrives, and
every request sent (with its tokens) to the store's request log, so a rerun asks
only for what is missing or failed and the usage adds up every request ever sent.
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

from .answer_store import AnswerStore
from .errors import UserError
from .resume import ResumableJob
from .settings import defaults

log = logging.getLogger(__name__)

HARD_ERROR_CODES = {401, 403, 404}
RETRY_CODES = {408, 429, 500, 502, 503, 504}
# the same 400 on this many requests before any success: it is not about one question
ALIKE_CLIENT_ERRORS_TO_STOP = 3
# this many attempts in a row that never reached the server: the endpoint is unreachable
UNREACHED_TO_STOP = 3
# the longest wait for a connection to open (the whole request may take timeout_s)
CONNECT_TIMEOUT_S = 10.0
KEY_VARIABLES = ("GEMINI_API_KEY", "GOOGLE_API_KEY")


class HardGeminiError(UserError):
    """An error no retry can fix (bad key, permission, unknown model)."""


class MissingKeyError(UserError):
    """No API key in the environment or the secrets file."""


class EndpointUnreachable(UserError):
    """Requests that never reach the server, several in a row: retrying each question cannot help."""


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
    ask_refused_again: bool = _DEFAULTS["ask_refused_again"]
    max_refused_fraction: float = _DEFAULTS["max_refused_fraction"]
    too_many_refusals: str = _DEFAULTS["too_many_refusals"]

    # The settings that change the answer text (the rest only change speed and cost).
    TEXT_KEYS: ClassVar[tuple[str, ...]] = ("model", "temperature", "max_output_tokens", "thinking_budget")

    def prices(self) -> dict[str, float]:
        return {
            "input_per_million": self.price_input_per_million,
            "output_per_million": self.price_output_per_million,
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


def _connect_errors() -> tuple[type[BaseException], ...]:
    """The errors of an attempt that never reached the server, in every HTTP stack the SDK may use.

    httpx (and its fork httpx2, which the SDK prefers) raise ConnectError for a refused
    connection, an unknown host and a failed TLS handshake, and ConnectTimeout when the
    connection does not open in time; aiohttp, when installed, raises ClientConnectorError.
    """
    found: list[type[BaseException]] = []
    for name in ("httpx2", "httpx"):
        try:
            module = __import__(name)
        except ImportError:
            continue
        found += [getattr(module, cls) for cls in ("ConnectError", "ConnectTimeout") if hasattr(module, cls)]
    try:
        import aiohttp
    except ImportError:
        pass
    else:
        found.append(aiohttp.ClientConnectorError)
    return tuple(found)


def never_reached(error: BaseException) -> bool:
    """Whether a failed attempt ended before the server got the request (nothing to pay for)."""
    return isinstance(error, _connect_errors())


def _host_port(url: str) -> str:
    from urllib.parse import urlsplit

    parts = urlsplit(url if "//" in url else f"//{url}")
    port = parts.port or {"http": 80, "https": 443}.get(parts.scheme)
    host = parts.hostname or url
    return f"{host}:{port}" if port else host


def _attempted_endpoint(error: BaseException) -> str | None:
    """host:port of the connection a failed attempt tried to open, when the error tells."""
    try:
        url = error.request.url  # httpx / httpx2 errors carry their request
    except (AttributeError, RuntimeError):
        host, port = getattr(error, "host", None), getattr(error, "port", None)  # aiohttp
        return f"{host}:{port}" if host and port else None
    return _host_port(str(url))


def _why_unreached(error: BaseException) -> str:
    """What stopped an attempt on its way, in words: from the deepest cause in the error's chain."""
    import socket
    import ssl

    chain, cause = [], error
    while cause is not None and cause not in chain:
        chain.append(cause)
        cause = cause.__cause__ or cause.__context__
    for cause in reversed(chain):
        if isinstance(cause, ConnectionRefusedError):
            return "connection refused"
        if isinstance(cause, socket.gaierror):
            return f"unknown host: {cause.strerror or cause}"
        if isinstance(cause, ssl.SSLError):
            return f"TLS handshake failed: {getattr(cause, 'reason', None) or cause}"
        if isinstance(cause, (TimeoutError, asyncio.TimeoutError)) or "Timeout" in type(cause).__name__:
            return "the connection did not open in time"
        if isinstance(cause, OSError) and cause.strerror:
            return cause.strerror
    return f"{type(error).__name__}: {str(error) or 'no detail'}"


class EndpointWatch:
    """Counts attempts in a row that never reached the server, across every request in flight.

    ``UNREACHED_TO_STOP`` of them with no reply between them stop the job: from then on
    no new attempt starts (``check`` raises EndpointUnreachable at once, rather than each
    request going through its own back-off), while the requests already at the server
    finish and are kept, as with the cost cap. A reply of any kind before that resets
    the count.
    """

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint  # host:port of the configured endpoint
        self.in_a_row = 0
        self.attempts = 0  # every attempt of this job that never reached the server
        self.stopped: str | None = None  # why the job stops, once it does

    def reached(self) -> None:
        self.in_a_row = 0

    def unreached(self, error: BaseException) -> None:
        self.in_a_row += 1
        self.attempts += 1
        if self.in_a_row >= UNREACHED_TO_STOP and self.stopped is None:
            endpoint = _attempted_endpoint(error) or self.endpoint
            self.stopped = (
                f"cannot reach the Gemini endpoint {endpoint}: {self.in_a_row} attempts in a row never "
                f"got there ({_why_unreached(error)}); nothing was sent for them and none is counted as "
                "paid. Check base_url (or GOOGLE_GEMINI_BASE_URL), the network and any proxy, then "
                "rerun: what was answered is kept"
            )
        self.check()

    def check(self) -> None:
        """Raise EndpointUnreachable once the job stops (before another attempt too)."""
        if self.stopped is not None:
            raise EndpointUnreachable(self.stopped)


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
    row: dict | None = None  # an answer
    refusal: dict | None = None  # {id, refused: reason}: final for these settings
    failure: dict | None = None  # {id, reason}: asked again on a later run
    client_error: BaseException | None = None  # a 4xx that may concern this question alone
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
    """Turn one generateContent response into an answer row or a refusal."""
    usage = _usage(response)

    def refused(reason: str) -> Outcome:
        return Outcome(refusal={"id": question_id, "refused": reason, "model": settings.model}, usage=usage)

    feedback = getattr(response, "prompt_feedback", None)
    if feedback is not None and feedback.block_reason:
        return refused(f"prompt_blocked:{_enum_name(feedback.block_reason)}")
    candidates = response.candidates or []
    if not candidates:
        return refused("no_candidates")
    candidate = candidates[0]
    reason = _enum_name(candidate.finish_reason) if candidate.finish_reason else "STOP"
    parts = candidate.content.parts if candidate.content and candidate.content.parts else []
    text = "".join(part.text or "" for part in parts if not getattr(part, "thought", False)).strip()
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
        "sampling": {
            "temperature": settings.temperature,
            "max_output_tokens": settings.max_output_tokens,
            "thinking_budget": settings.thinking_budget,
        },
    }
    return Outcome(row=row, usage=usage)


def _enum_name(value) -> str:
    return getattr(value, "name", None) or str(value)


async def _ask(
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
    import tenacity

    watch = watch or EndpointWatch("?")
    attempts = 0

    async def call():
        nonlocal attempts
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
            log_request({"id": question["id"], "attempt": attempts, "error": _error_reason(error)})
            raise
        watch.reached()
        log_request({"id": question["id"], "attempt": attempts, **_usage(response)})
        return response

    retrying = tenacity.AsyncRetrying(
        stop=tenacity.stop_after_attempt(settings.max_attempts),
        wait=_RetryWait(settings.initial_backoff_s, settings.max_backoff_s),
        retry=tenacity.retry_if_exception(_is_transient),
        reraise=True,
    )
    try:
        response = await retrying(call)
    except Exception as error:  # noqa: BLE001 - sorted into hard, per-question and exhausted below
        code = getattr(error, "code", None)
        if code in HARD_ERROR_CODES:
            raise HardGeminiError(_describe(error)) from None
        if isinstance(code, int) and 400 <= code < 500 and not _is_transient(error):
            failure = {"id": question["id"], "reason": f"client_error:{_error_reason(error)}"}
            return Outcome(failure=failure, client_error=error, attempts=attempts)
        if not _is_transient(error):
            raise
        failure = {"id": question["id"], "reason": f"retries_exhausted:{_error_reason(error)}"}
        return Outcome(failure=failure, attempts=attempts)
    outcome = interpret_response(question["id"], response, settings)
    outcome.attempts = attempts
    return outcome


def _describe(error: BaseException) -> str:
    message = getattr(error, "message", None) or str(error)
    code, status = getattr(error, "code", ""), getattr(error, "status", "")
    return f"Gemini refused the request ({code} {status}): {message}".replace("\n", " ")


class ClientErrorWatch:
    """Tells a 4xx about one question from one that no request can escape.

    A 400 that names the API key, or the same 400 on the first
    ``ALIKE_CLIENT_ERRORS_TO_STOP`` requests while none has succeeded yet, stops
    the job; any other 4xx is that question's failure.
    """

    def __init__(self) -> None:
        self.successes = 0
        self.alike: Counter = Counter()

    def success(self) -> None:
        self.successes += 1

    def is_fatal(self, error: BaseException) -> bool:
        message = str(getattr(error, "message", None) or error)
        if "api key" in message.lower():
            return True
        if self.successes:
            return False
        self.alike[(getattr(error, "code", None), message)] += 1
        return max(self.alike.values()) >= ALIKE_CLIENT_ERRORS_TO_STOP


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
    response_schema: dict | None = None,
    key_extra: dict | None = None,
    max_usd: float | None = None,
) -> tuple[list[dict], list[dict], dict]:
    """Answer every question not yet answered or refused. Returns ``(rows, left_out, usage)``.

    ``rows`` are the answers in question order; ``left_out`` lists each question
    without one as ``{id, reason, kind}``, kind ``refused`` (final, this job's or
    an earlier one's) or ``failed`` (asked again next time); ``usage`` counts the
    requests and tokens of this job. ``response_schema`` asks for JSON output;
    ``key_extra`` joins the answer store's key (a judge's own settings);
    ``max_usd`` stops the job, with what it has kept, once every request logged
    under these settings (this job's and earlier ones') has cost that much.
    """
    job = ResumableJob(
        questions,
        settings.text_settings(system_prompt, key_extra),
        store_root=store_root,
        store_part=store_part,
        progress_every_s=progress_every_s,
        ask_refused_again=settings.ask_refused_again,
    )
    log.info(
        "Gemini %s: %d questions to request, %d in flight at most, %.0f requests/min",
        settings.model,
        len(job.todo),
        settings.concurrency,
        settings.requests_per_minute,
    )
    limiter = limiter or RateLimiter(settings.requests_per_minute)
    config = generation_config(settings, system_prompt, response_schema)
    client = make_client(api_key, settings)
    semaphore = asyncio.Semaphore(settings.concurrency)
    usage: Counter = Counter()
    failures: list[dict] = []
    watch = ClientErrorWatch()
    # named in the stop's message when the error itself does not say where it tried to connect
    endpoint = settings.endpoint()
    reach = EndpointWatch(_host_port(endpoint) if endpoint else "the SDK's default endpoint")
    prices = settings.prices()
    spent_before = 0.0
    if max_usd is not None and job.store:
        spent_before = estimate_cost(_add_up(job.store.read_log("requests")), prices)

    def log_request(record: dict) -> None:
        usage["requests"] += 1
        usage.update({k: v for k, v in record.items() if k.endswith("_tokens")})
        if job.store:
            job.store.append_log("requests", [record])

    capped: list[float] = []  # the spend when the cap stopped new requests (those in flight finish)

    async def one(question: dict) -> None:
        async with semaphore:
            if max_usd is not None:
                spent = spent_before + estimate_cost(usage, prices)
                if capped or spent >= max_usd:
                    capped.append(spent)
                    return
            if reach.stopped is not None:
                return  # the endpoint cannot be reached: left for the rerun
            try:
                outcome = await _ask(client, limiter, settings, config, question, log_request, reach)
            except EndpointUnreachable:
                return  # raised once the requests already at the server are in
        if outcome.client_error is not None and watch.is_fatal(outcome.client_error):
            raise HardGeminiError(_describe(outcome.client_error))
        if outcome.row is not None:
            watch.success()
            job.record([outcome.row])
        elif outcome.refusal is not None:
            watch.success()
            job.record_refusal({**outcome.refusal, "attempts": outcome.attempts})
        else:
            failure = {**outcome.failure, "attempts": outcome.attempts}
            if outcome.client_error is not None:
                log.warning("question %s: %s", question["id"], _describe(outcome.client_error))
            failures.append(failure)
            job.record_failed([failure])

    tasks = [asyncio.create_task(one(q)) for q in job.todo]
    try:
        if tasks:
            # the first hard error cancels everything else at once
            for future in asyncio.as_completed(tasks):
                await future
        if reach.stopped is not None:
            raise EndpointUnreachable(reach.stopped)
        if capped:
            raise HardGeminiError(
                f"the cost cap is reached: about ${max(capped):.4f} spent under these settings, max_usd is "
                f"${max_usd:g}; what was answered is kept: raise max_usd and rerun to go on"
            )
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await client.aio.aclose()
        job.close()
    rows = job.rows()
    failed = {f["id"]: f for f in failures}
    refused = {r["id"]: r for r in job.refusals()}
    left_out = []
    for question in questions:
        if question["id"] in refused:
            row = refused[question["id"]]
            left_out.append(
                {
                    "id": row["id"],
                    "reason": row["refused"],
                    "kind": "refused",
                    "attempts": row.get("attempts"),
                }
            )
        elif question["id"] in failed:
            left_out.append({**failed[question["id"]], "kind": "failed"})
    usage["reused_from_store"] = len(questions) - len(job.todo)
    usage["unreached"] = reach.attempts
    usage["log"] = str(job.store.log_path("failures")) if job.store else None
    return rows, left_out, dict(usage)


USAGE_COUNTS = ("requests", "input_tokens", "output_tokens", "thinking_tokens")


def shard_usage(store: AnswerStore | None, question_ids: set[str], this_job: dict) -> dict:
    """Requests and tokens of every job that ever asked these questions under these settings.

    From the store's request log (killed and failed jobs included); without a
    store, this job's own counts.
    """
    if store is None:
        return {key: this_job.get(key, 0) for key in USAGE_COUNTS}
    return _add_up(record for record in store.read_log("requests") if record["id"] in question_ids)


def _add_up(records) -> dict:
    """Requests and tokens of request-log records."""
    totals: Counter = Counter()
    for record in records:
        totals["requests"] += 1
        totals.update({key: record.get(key, 0) for key in USAGE_COUNTS[1:]})
    return {key: totals.get(key, 0) for key in USAGE_COUNTS}


def answer_shard(
    questions: Sequence[dict],
    system_prompt: str,
    settings: GeminiSettings,
    *,
    store_root: str | os.PathLike | None,
    store_part: str,
    progress_every_s: float = 30.0,
    response_schema: dict | None = None,
    key_extra: dict | None = None,
    max_usd: float | None = None,
) -> tuple[list[dict], list[dict], dict, str | None]:
    """One shard job: ``(answers, left_out, usage, problem)``.

    ``usage`` adds up every request ever sent for the shard's questions (with the
    estimated cost); ``problem`` is the one-line reason the job must fail (too
    many failures, or too many refusals when that is set to fail), else None.
    """
    for name in ("httpx", "httpx2", "google_genai"):
        logging.getLogger(name).setLevel(logging.WARNING)
    api_key = load_api_key(settings.secrets_file)
    rows, left_out, this_job = asyncio.run(
        answer_with_gemini(
            questions,
            system_prompt,
            settings,
            api_key,
            store_root=store_root,
            store_part=store_part,
            progress_every_s=progress_every_s,
            response_schema=response_schema,
            key_extra=key_extra,
            max_usd=max_usd,
        )
    )
    store = (
        AnswerStore(store_root, settings.text_settings(system_prompt, key_extra), store_part)
        if store_root is not None
        else None
    )
    usage = shard_usage(store, {q["id"] for q in questions}, this_job)
    usage["estimated_cost_usd"] = estimate_cost(usage, settings.prices())
    refused = [r for r in left_out if r["kind"] == "refused"]
    failed = [r for r in left_out if r["kind"] == "failed"]
    usage.update(
        requests_this_job=this_job.get("requests", 0),
        unreached_this_job=this_job.get("unreached", 0),
        reused_from_store=this_job["reused_from_store"],
        questions=len(questions),
        answered=len(rows),
        refused=len(refused),
        failed=len(failed),
        refusal_reasons=summarise_failures(refused),
        failure_reasons=summarise_failures(failed),
        model=settings.model,
    )
    log.info(
        "%d answered, %d refused %s, %d failed %s; %d requests (%d by this job), tokens in/out/thinking "
        "%d/%d/%d, estimated $%.4f",
        len(rows),
        len(refused),
        usage["refusal_reasons"],
        len(failed),
        usage["failure_reasons"],
        usage["requests"],
        usage["requests_this_job"],
        usage["input_tokens"],
        usage["output_tokens"],
        usage["thinking_tokens"],
        usage["estimated_cost_usd"],
    )
    return rows, left_out, usage, shard_problem(usage, settings, this_job.get("log"))


def shard_problem(usage: dict, settings: GeminiSettings, failures_log: str | None) -> str | None:
    """Why the shard job must fail, in one line, or None.

    Failures (not final) above ``max_failed_fraction`` always fail it; refusals
    above ``max_refused_fraction`` only warn unless ``too_many_refusals`` is ``fail``.
    """
    questions = usage["questions"]
    if not questions:
        return None
    where = f"; the list is kept in {failures_log}" if failures_log else ""
    if usage["failed"] / questions > settings.max_failed_fraction:
        return (
            f"{usage['failed']} of {questions} questions failed ({usage['failure_reasons']}), more than "
            f"max_failed_fraction {settings.max_failed_fraction}{where}. "
            "Rerun to ask again for the failed ones only."
        )
    if usage["refused"] / questions > settings.max_refused_fraction:
        message = (
            f"{usage['refused']} of {questions} questions were refused ({usage['refusal_reasons']}), more "
            f"than max_refused_fraction {settings.max_refused_fraction}"
        )
        if settings.too_many_refusals == "fail":
            return message + "; refusals are final: see docs/gemini.md to ask again"
        log.warning("%s: they are left out of the pairs", message)
    return None


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
