"""A local HTTP server that speaks the Gemini ``generateContent`` wire format.

Tests and benchmarks point the real ``google-genai`` client at it (``HttpOptions
(base_url=...)`` or the SDK's ``GOOGLE_GEMINI_BASE_URL`` variable). It listens
on 127.0.0.1 only, on a free port, and shuts itself down after ``lifetime_s``
even if nobody stops it.

Served: ``POST /{version}/models/{model}:generateContent``. The request's
``contents``, ``systemInstruction`` and ``generationConfig`` are read; the reply
has ``candidates[].content.parts[].text``, ``finishReason``, ``usageMetadata``
and ``modelVersion``; errors come as ``{"error": {"code", "message", "status"}}``.
``GET /{version}/models/{model}`` (``models.get``) answers with the model.
``model_versions`` maps a model asked for to the ``modelVersion`` its replies
name (by default, the model asked for): a model retired and routed to another.
``known_models`` (None: every model) are the models that exist: any other gets
a 404, from ``models.get`` and from ``generateContent`` alike.

The Batch API (Developer API flavour) is served too, by ``gemini_test_batches``:
``POST models/{model}:batchGenerateContent`` with inlined requests or a JSONL
file's (``fileName``), ``GET batches/{id}``, ``GET batches`` (paged, newest
first) and ``POST batches/{id}:cancel``; and for the file route, by
``gemini_test_files``, the resumable upload (``POST /upload/{version}/files``),
``GET``/``DELETE {version}/files/{id}`` and ``GET files/{id}:download``. Each
request of a batch is answered when the batch is created, by the same steps,
``script``, ``reply`` and counters as an online request ("timeout" and "drop"
become a 500 in the batch's output); its body is kept in ``bodies`` as an
online body is. ``batch_plans[n]`` (a ``BatchPlan``) scripts the n-th batch
created: how long it stays PENDING, how it ends, what share of its results come
back and in which order, a lost or late create reply, its age.
``list_page_size`` caps the page size honoured, ``batches`` holds the batches
created, ``files`` the files (uploaded, and batches' responses files), and
``batch_stats()`` counts creates, GETs, list pages, cancels, uploads and
downloads; ``batch_events()`` is the log of batch calls with their times,
``batch_faults`` scripts errors of those calls and ``batch_store`` holds the
rest (empty list pages, forgetting a batch: gemini_test_batches). A wrong key
gets the 400 of ``generateContent`` (the bytes of an upload carry no key: their
URL is their credential), an unknown batch or file a 404; ``latency_s`` delays
online requests only.

Faults are scripted per question text: ``script[question] = ["429", "503",
"ok"]`` answers the first request for that question with a 429, the second
with a 503, the third normally, and any later one normally. Steps:

    ok        a normal answer (finishReason STOP)
    length    a truncated answer (finishReason MAX_TOKENS)
    429 500 503    an error with that status (429 carries a RetryInfo delay)
    403 400 404    a hard error
    timeout   no answer for ``hang_s`` seconds
    drop      the connection is closed without a reply
    blocked   promptFeedback.blockReason = SAFETY, no candidates
    empty     a candidate with no text
    safety    a candidate with finishReason SAFETY and no text
    nousage   a normal answer whose reply has no usageMetadata

``reply`` (a function of the request's user text) writes the text of "ok"
answers instead of the canned one: tests script a judge's JSON with it, and
``--rubric`` serves ``rubric_reply``, a crude keyword grader that stands in for
a Gemini rubric judge (it is no judge: it lets a run go end to end).

``port`` (default: a free one) lets a test start the server on a port a client
already tried while it was closed. ``keep_alive=False`` closes each connection
after its reply, so once the server is stopped every new request finds the port
closed while the requests it is still serving finish.

``default_step`` applies to questions without a script (``"403"`` makes every
request fail, as a bad key would). ``requests`` counts requests per question;
``in_flight`` is the number of requests being served now (a request leaves it
just before its reply goes out) and ``max_in_flight``
the most served at once since start (or since ``reset_max_in_flight()``), so a
caller can check that a client really had N requests open together.

Each connection gets its own (daemon) thread, and the listen backlog is
``BACKLOG`` rather than ``socketserver``'s 5, so a client that opens dozens of
connections at once is not refused (a refused connection costs the client a
retry and its back-off, and a benchmark would measure that instead). Replies
go out with TCP_NODELAY: headers and body are two writes, and with Nagle's
algorithm the body waited for the client's delayed ACK, 40 ms on every request.

``python -m meddpo.testing.gemini_server --latency 0.2`` serves from a process of
its own (benchmarks use it so the server's Python does not share the client's
GIL): it prints ``{"base_url": ...}`` once listening, serves until its stdin
closes, then prints ``stats()`` and exits.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import socket
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs

from meddpo.testing.gemini_batches import BatchPlan, BatchStore, ServedBatch
from meddpo.testing.gemini_files import FileStore, Raw, ServedFile
from meddpo.testing.gemini_rubric import rubric_reply

STATUS_NAMES = {
    400: "INVALID_ARGUMENT",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "ALREADY_EXISTS",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
}
_VERSION = r"^/(?P<version>v[^/]+)/"
_ROUTES = [  # (method, name, path)
    ("POST", "generate", re.compile(_VERSION + r"models/(?P<model>[^/:]+):generateContent$")),
    ("POST", "create", re.compile(_VERSION + r"models/(?P<model>[^/:]+):batchGenerateContent$")),
    ("GET", "get", re.compile(_VERSION + r"batches/(?P<id>[^/:]+)$")),
    ("GET", "list", re.compile(_VERSION + r"batches$")),
    ("GET", "model", re.compile(_VERSION + r"models/(?P<model>[^/:]+)$")),
    ("POST", "cancel", re.compile(_VERSION + r"batches/(?P<id>[^/:]+):cancel$")),
    ("POST", "upload", re.compile(r"^/upload/(?P<version>v[^/]+)/files$")),
    ("GET", "file", re.compile(_VERSION + r"files/(?P<id>[^/:]+)$")),
    ("DELETE", "delete_file", re.compile(_VERSION + r"files/(?P<id>[^/:]+)$")),
    ("GET", "download", re.compile(r"^(?:/download)?/(?P<version>v[^/]+)/files/(?P<id>[^/:]+):download$")),
]
_FILE_ROUTES = ("upload", "file", "delete_file", "download")
BACKLOG = 1024  # listen() backlog; the kernel caps it at net.core.somaxconn


class _Server(ThreadingHTTPServer):
    request_queue_size = BACKLOG  # socketserver's default of 5 drops simultaneous connections
    daemon_threads = True  # a hung handler ("timeout" step) never blocks shutdown
    owner: GeminiTestServer


class _Handler(BaseHTTPRequestHandler):
    """One connection's requests, answered by the ``GeminiTestServer`` its server belongs to."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # else each reply's body waits 40 ms for a delayed ACK
    server: _Server

    def do_POST(self):  # noqa: N802 - http.server's naming
        self._serve("POST")

    def do_GET(self):  # noqa: N802 - http.server's naming
        self._serve("GET")

    def do_DELETE(self):  # noqa: N802 - http.server's naming
        self._serve("DELETE")

    def _serve(self, method: str) -> None:
        owner = self.server.owner
        owner._enter()
        try:
            code, payload = owner._handle(self, method)
        except (BrokenPipeError, ConnectionResetError):
            return
        finally:  # before the reply goes out: a client holding its reply never sees its request in flight
            owner._leave()
        self._reply(owner, code, payload)

    def _reply(self, owner: GeminiTestServer, code: int | None, payload: dict | Raw | None) -> None:
        if code is None:  # "drop": close the connection without a reply
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)
            return
        if not isinstance(payload, Raw):
            payload = Raw(json.dumps(payload).encode("utf-8"))
        try:
            self.send_response(code)
            self.send_header("Content-Type", payload.content_type)
            self.send_header("Content-Length", str(len(payload.data)))
            for name, value in payload.headers.items():
                self.send_header(name, value)
            if not owner.keep_alive:
                self.send_header("Connection", "close")
                self.close_connection = True
            self.end_headers()
            self.wfile.write(payload.data)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def log_message(self, *args):  # keep test output clean
        pass


class GeminiTestServer:
    def __init__(
        self,
        *,
        latency_s: float = 0.0,
        default_step: str = "ok",
        hang_s: float = 5.0,
        retry_delay_s: float = 0.01,
        lifetime_s: float = 600.0,
        expected_key: str | None = None,
        reply: Callable[[str], str] | None = None,
        port: int = 0,
        keep_alive: bool = True,
        batch_plans: list[BatchPlan] | None = None,
        list_page_size: int = 50,
        model_versions: dict[str, str] | None = None,
        known_models: set[str] | None = None,
    ):
        self.port = port  # 0: a free one
        self.keep_alive = keep_alive  # False: each reply closes its connection
        self.latency_s = latency_s
        self.default_step = default_step
        self.hang_s = hang_s
        self.retry_delay_s = retry_delay_s
        self.lifetime_s = lifetime_s
        self.expected_key = expected_key
        self.reply = reply
        self.model_versions = dict(model_versions or {})
        self.known_models = known_models
        self.script: dict[str, list[str]] = {}
        self.requests: Counter = Counter()
        self.bodies: list[dict] = []
        self.keys_seen: set[str] = set()
        self.in_flight = 0
        self.max_in_flight = 0
        self._steps_used: dict[str, int] = defaultdict(int)
        self._lock = threading.Lock()
        self.file_store = FileStore(_error)
        self.batch_store = BatchStore(
            self._lock,
            self._batch_answer,
            _error,
            list(batch_plans or []),
            list_page_size,
            files=self.file_store,
        )
        self._server: _Server | None = None
        self._timer: threading.Timer | None = None

    # -- what the handler asks ------------------------------------------------------------
    def _enter(self) -> None:
        with self._lock:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)

    def _leave(self) -> None:
        with self._lock:
            self.in_flight -= 1

    def stats(self) -> dict[str, int]:
        """The requests counted in ``requests`` (all questions), those in flight now, the most at once."""
        with self._lock:
            return {
                "requests": sum(self.requests.values()),
                "in_flight": self.in_flight,
                "max_in_flight": self.max_in_flight,
            }

    def reset_max_in_flight(self) -> None:
        """Start counting ``max_in_flight`` afresh (from the requests open now)."""
        with self._lock:
            self.max_in_flight = self.in_flight

    def _next_step(self, question: str) -> str:
        with self._lock:
            self.requests[question] += 1
            index = self._steps_used[question]
            self._steps_used[question] += 1
        steps = self.script.get(question)
        if steps is None:
            return self.default_step
        return steps[index] if index < len(steps) else "ok"

    def _handle(
        self, handler: BaseHTTPRequestHandler, method: str = "POST"
    ) -> tuple[int | None, dict | Raw | None]:
        path, _, query = handler.path.partition("?")
        raw = handler.rfile.read(int(handler.headers.get("Content-Length") or 0))
        route = _route(method, path)
        if route is None:
            return 404, _error(404, f"no route for {method} {handler.path}")
        name, match = route
        upload_id = (parse_qs(query).get("upload_id") or [None])[0]
        if name == "upload" and upload_id:  # the bytes of an upload: its URL is its credential, no key
            version = match.group("version")
            return self.file_store.upload_chunk(upload_id, handler.headers, raw, self.base_url, version)
        body = json.loads(raw or b"{}")
        key = handler.headers.get("x-goog-api-key", "")
        with self._lock:
            if name == "generate":
                self.bodies.append(body)
            self.keys_seen.add(key)
        if self.expected_key is not None and key != self.expected_key:
            return 400, _error(400, "API key not valid. Please pass a valid API key.")
        if name in ("generate", "model") and not self._exists(match.group("model")):
            return 404, _error(404, f"models/{match.group('model')} is not found for API version v1beta")
        if name == "model":
            model = match.group("model")
            return 200, {"name": f"models/{model}", "displayName": model, "version": "001"}
        if name == "generate":
            return self._generate(body, match.group("model"))
        if name in _FILE_ROUTES:
            file_id = match.group("id") if name != "upload" else None
            return self.file_store.serve(
                name, match.group("version"), file_id, handler.headers, body, self.base_url
            )
        return self._batch_route(name, match, query, body)

    def _exists(self, model: str) -> bool:
        return self.known_models is None or model in self.known_models

    def _generate(self, body: dict, model: str) -> tuple[int | None, dict | None]:
        """One online request: its step, then the reply (or a hang, or a dropped connection)."""
        question = _question(body)
        step = self._next_step(question)
        if self.latency_s:
            time.sleep(self.latency_s)
        if step == "timeout":
            time.sleep(self.hang_s)
            step = "ok"
        if step == "drop":
            return None, None
        return self._answer(step, question, body.get("generationConfig", {}), model)

    def _answer(self, step: str, question: str, config: dict, model: str) -> tuple[int, dict]:
        """The reply to ``question`` for an answering step or an error code: online and in batches."""
        usage = {"promptTokenCount": len(question.split()) + 10, "totalTokenCount": 0}
        thinking = (config.get("thinkingConfig") or {}).get("thinkingBudget") or 0
        if step.isdigit():
            code = int(step)
            return code, _error(
                code, f"injected {code}", retry_delay_s=self.retry_delay_s if code == 429 else None
            )
        if step == "blocked":
            return 200, {"promptFeedback": {"blockReason": "SAFETY"}, "usageMetadata": usage}
        canned = f"A careful answer to: {question} Please see a clinician about your own situation."
        text = {
            "ok": self.reply(question) if self.reply is not None and step == "ok" else canned,
            "nousage": canned,
            "length": f"A long answer to: {question} that was cut",
            "empty": "",
            "safety": "",
        }[step]
        reason = {
            "ok": "STOP",
            "nousage": "STOP",
            "length": "MAX_TOKENS",
            "empty": "STOP",
            "safety": "SAFETY",
        }[step]
        candidate: dict[str, Any] = {"finishReason": reason, "index": 0}
        candidate["content"] = {"role": "model", "parts": [{"text": text}] if text else []}
        output_tokens = len(text.split())
        usage.update(candidatesTokenCount=output_tokens, thoughtsTokenCount=min(thinking, 7))
        usage["totalTokenCount"] = usage["promptTokenCount"] + output_tokens + usage["thoughtsTokenCount"]
        reply = {"candidates": [candidate], "usageMetadata": usage, "modelVersion": self.served(model)}
        if step == "nousage":
            del reply["usageMetadata"]
        return 200, reply

    def served(self, model: str) -> str:
        """The modelVersion the replies to a request for ``model`` name."""
        return self.model_versions.get(model, model)

    # -- the Batch API (gemini_test_batches) ------------------------------------------------------
    @property
    def batch_plans(self) -> list[BatchPlan]:
        return self.batch_store.plans

    @batch_plans.setter
    def batch_plans(self, plans: list[BatchPlan]) -> None:
        self.batch_store.plans = plans

    @property
    def list_page_size(self) -> int:
        return self.batch_store.list_page_size

    @list_page_size.setter
    def list_page_size(self, size: int) -> None:
        self.batch_store.list_page_size = size

    @property
    def batches(self) -> list[ServedBatch]:
        """The batches created so far, oldest first (live objects: state, keys, plan, display_name)."""
        return self.batch_store.all()

    def batch_stats(self) -> dict[str, int]:
        """Batches created, GETs of one batch, list pages served, cancels, uploads started, downloads."""
        return self.batch_store.stats()

    def batch_events(self) -> list[dict]:
        """Every batch call answered, oldest first: ``{time, call, batch, state}`` (gemini_test_batches)."""
        return self.batch_store.log()

    @property
    def batch_faults(self) -> dict[str, list[str]]:
        return self.batch_store.faults

    @batch_faults.setter
    def batch_faults(self, faults: dict[str, list[str]]) -> None:
        self.batch_store.faults = {call: list(steps) for call, steps in faults.items()}

    @property
    def files(self) -> list[ServedFile]:
        """The files held: uploaded ones and batches' responses files, oldest first."""
        return self.file_store.all()

    def _batch_answer(self, request: dict, model: str) -> tuple[int, dict]:
        """One inlined request of a batch being created, counted and scripted like an online one."""
        with self._lock:
            self.bodies.append(request)
        question = _question(request)
        step = self._next_step(question)
        if step in ("timeout", "drop"):  # the batch's own worker gave up on it
            step = "500"
        return self._answer(step, question, request.get("generationConfig", {}), model)

    def _batch_route(
        self, name: str, match: re.Match, query: str, body: dict
    ) -> tuple[int | None, dict | None]:
        return self.batch_store.serve(name, match.groupdict(), parse_qs(query), body, self.retry_delay_s)

    # -- lifecycle ---------------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        assert self._server is not None, "server not started"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> GeminiTestServer:
        self._server = _Server(("127.0.0.1", self.port), _Handler)
        self._server.owner = self
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        self._timer = threading.Timer(self.lifetime_s, self.stop)
        self._timer.daemon = True
        self._timer.start()
        return self

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> GeminiTestServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Serve until stdin closes, then print the stats.")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds before each answer")
    parser.add_argument("--default-step", default="ok")
    parser.add_argument("--lifetime", type=float, default=600.0, help="stop after this many seconds")
    parser.add_argument("--rubric", action="store_true", help="answer rubric requests with rubric_reply")
    args = parser.parse_args(argv)
    server = GeminiTestServer(
        latency_s=args.latency,
        default_step=args.default_step,
        lifetime_s=args.lifetime,
        reply=rubric_reply if args.rubric else None,
    ).start()
    print(json.dumps({"base_url": server.base_url}), flush=True)
    # serve until the parent closes our stdin (or dies) or the lifetime runs out
    reader = threading.Thread(target=sys.stdin.read, daemon=True)
    reader.start()
    reader.join(args.lifetime)
    stats = server.stats()
    server.stop()
    print(json.dumps(stats), flush=True)


def _route(method: str, path: str) -> tuple[str, re.Match] | None:
    """The route's name and the match of its path, or None."""
    for verb, name, pattern in _ROUTES:
        if verb == method and (match := pattern.match(path)):
            return name, match
    return None


def _question(request: dict) -> str:
    """The user text of a generateContent request: the parts of its last content."""
    return "".join(part.get("text", "") for part in request["contents"][-1]["parts"])


def _error(code: int, message: str, retry_delay_s: float | None = None) -> dict:
    error: dict[str, Any] = {"code": code, "message": message, "status": STATUS_NAMES.get(code, "UNKNOWN")}
    if retry_delay_s is not None:
        error["details"] = [
            {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": f"{retry_delay_s}s"}
        ]
    return {"error": error}


if __name__ == "__main__":
    main()
