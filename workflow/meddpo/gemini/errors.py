"""What Gemini's errors mean: which are retried, which stop the job, which never reached the server.

Holds the error classes of a Gemini job that no retry can fix (HardGeminiError,
EndpointUnreachable), the classification of an attempt's error (transient, a 4xx
about one question, never reached the server), the RetryInfo delay a 429 carries,
and the two watches that stop a job across every request in flight
(``EndpointWatch``, ``ClientErrorWatch``). The SDK and its HTTP stacks are
imported where they are needed; the Gemini client builds on this module.

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
server that answers, even with errors, keeps its normal retries.
"""

from __future__ import annotations

import asyncio
import re
from collections import Counter

from meddpo.errors import UserError

HARD_ERROR_CODES = {401, 403, 404}
RETRY_CODES = {408, 429, 500, 502, 503, 504}
# the same 400 on this many requests before any success: it is not about one question
ALIKE_CLIENT_ERRORS_TO_STOP = 3
# this many attempts in a row that never reached the server: the endpoint is unreachable
UNREACHED_TO_STOP = 3


class HardGeminiError(UserError):
    """An error no retry can fix (bad key, permission, unknown model)."""


class EndpointUnreachable(UserError):
    """Requests that never reach the server, several in a row: retrying each question cannot help."""


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


def host_port(url: str) -> str:
    """host:port of a URL (the scheme's port when the URL names none)."""
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
    return host_port(str(url))


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


def is_transient(error: BaseException) -> bool:
    """Whether an attempt's error is worth another try (429, 5xx, a time-out, a dropped connection)."""
    from google.genai import errors

    if isinstance(error, errors.APIError):
        return error.code in RETRY_CODES
    return isinstance(error, _transport_errors())


def error_reason(error: BaseException) -> str:
    """An error in a few words for the logs: its HTTP code and status, else its type."""
    code, status = getattr(error, "code", None), getattr(error, "status", None)
    if code:
        return f"{code} {status or ''}".strip()
    return type(error).__name__


def describe_error(error: BaseException) -> str:
    """The one line that reports a failed call: an error Gemini answered with, a request that failed
    on its way, or a failure of the SDK itself (named as the SDK's, never as a refusal by Gemini)."""
    if getattr(error, "code", None) is not None:
        message = getattr(error, "message", None) or str(error)
        text = f"Gemini refused the request ({error.code} {getattr(error, 'status', '') or ''}): {message}"
    elif isinstance(error, _transport_errors()):
        text = f"the request to Gemini failed on its way: {type(error).__name__}: {error or 'no detail'}"
    else:
        text = (
            f"the google-genai SDK ({sdk_version()}) failed: {type(error).__name__}: {error or 'no detail'}"
        )
    return text.replace("\n", " ")


def sdk_version() -> str:
    """``google-genai <version>``, as installed."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"google-genai {version('google-genai')}"
    except PackageNotFoundError:
        return "google-genai"


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
