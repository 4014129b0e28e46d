"""One vLLM OpenAI-compatible server per shard job, started and always stopped by the job.

vLLM lives in an environment of its own (it pins other torch and transformers
releases than this project), so the job never loads it: it starts
``vllm.command`` (by default the api_server module of ``.venv-vllm``) as a
server on 127.0.0.1 and talks HTTP to it. That is the shape datatrove and
NeMo-Skills use, and it keeps the job's own process light (a tokenizer, no model).

* The server listens on a free port of 127.0.0.1 and answers only requests that
  carry a random key made for this job (``VLLM_API_KEY`` in its environment, never
  on a command line): GPU-shared nodes are shared with other users. When the port
  was taken between choosing and binding it, another one is tried.
* The job waits for ``/health`` up to ``startup_timeout_s``; a server that exits or
  never gets ready is a one-line error naming its log and the log's last line.
* The server runs under a guard process (``_guard.py``) in a process group of
  its own. Leaving the ``with`` block, an exception, Ctrl-C, SIGTERM (Slurm's time
  limit), and a ``kill -9`` of the job all stop the whole group (API server, engine
  core, workers), so no orphan keeps a GPU.
"""

from __future__ import annotations

import http.client
import logging
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from meddpo.errors import UserError

log = logging.getLogger(__name__)

GUARD = Path(__file__).with_name("_guard.py")
STOP_GRACE_S = 15.0
PORT_TRIES = 3
PORT_TAKEN = ("address already in use", "errno 98")


BUILD_IT = "build the vLLM environment with `make vllm-env` or set vllm.command (docs/engines.md)"


def missing_command(command: str | Sequence[str]) -> str | None:
    """The one-line problem when ``vllm.command``'s program does not exist, else None."""
    executable = (shlex.split(command) if isinstance(command, str) else list(command))[0]
    if Path(executable).is_file() or shutil.which(executable):
        return None
    return f"vllm.command: {executable} not found; {BUILD_IT}"


class ServerError(UserError):
    """The vLLM server did not start, or stopped answering; the message names its log."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def last_line(path: Path, start: int = 0) -> str:
    """The last non-empty line of a log written since byte ``start`` (errors first)."""
    try:
        with open(path, "rb") as f:
            f.seek(start)
            lines = [
                line.strip() for line in f.read().decode("utf-8", "replace").splitlines() if line.strip()
            ]
    except OSError:
        return ""
    errors = [line for line in lines if "Error" in line or "error:" in line]
    return (errors or lines or [""])[-1][:300]


def server_arguments(model: Mapping[str, Any], settings: Mapping[str, Any], dtype: str) -> list[str]:
    """The command-line arguments of the server, after ``vllm.command`` (no port, no key)."""
    args = ["--model", model["model"], "--served-model-name", "model", "--dtype", dtype]
    if model.get("revision"):
        args += ["--revision", model["revision"]]
    if model.get("trust_remote_code"):
        args.append("--trust-remote-code")
    args += ["--gpu-memory-utilization", str(settings["gpu_memory_utilization"])]
    if settings["max_model_len"] is not None:
        args += ["--max-model-len", str(settings["max_model_len"])]
    args += ["--max-num-seqs", str(settings["max_num_seqs"])]
    if settings["max_num_batched_tokens"] is not None:
        args += ["--max-num-batched-tokens", str(settings["max_num_batched_tokens"])]
    args.append(
        "--enable-prefix-caching" if settings["enable_prefix_caching"] else "--no-enable-prefix-caching"
    )
    if settings["enforce_eager"]:
        args.append("--enforce-eager")
    return args + list(settings["extra_args"])


class VllmServer:
    """``with VllmServer(command, args, log) as server:`` a ready server; stopped on the way out."""

    def __init__(
        self,
        command: str | Sequence[str],
        arguments: Sequence[str],
        log_path: str | os.PathLike,
        *,
        env: Mapping[str, str] | None = None,
        startup_timeout_s: float = 1200.0,
        stop_grace_s: float = STOP_GRACE_S,
    ):
        self.command = shlex.split(command) if isinstance(command, str) else list(command)
        self.arguments = list(arguments)
        self.log_path = Path(log_path)
        self.env = dict(env or {})
        self.startup_timeout_s = startup_timeout_s
        self.stop_grace_s = stop_grace_s
        self.api_key = secrets.token_urlsafe(24)
        self.port = 0
        self.startup_s = 0.0
        self._guard: subprocess.Popen | None = None
        self._old_sigterm: Any = None

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def __enter__(self) -> VllmServer:
        try:
            self._old_sigterm = signal.signal(signal.SIGTERM, _exit_on_sigterm)
        except ValueError:  # not the main thread: the guard still stops the server when the job dies
            self._old_sigterm = None
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        problem = missing_command(self.command)
        if problem:
            raise ServerError(problem)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        for attempt in range(1, PORT_TRIES + 1):
            self.port = free_port()
            offset = self.log_path.stat().st_size if self.log_path.exists() else 0
            self._launch()
            if self._wait_until_ready(offset, attempt):
                self.startup_s = time.monotonic() - started
                log.info(
                    "vLLM server ready on %s in %.1fs (log %s)", self.host, self.startup_s, self.log_path
                )
                return

    def _launch(self) -> None:
        # the job keeps a connection per request slot open: no closing it after vLLM's default 5 s idle
        keep_alive = {"VLLM_HTTP_TIMEOUT_KEEP_ALIVE": "3600"}
        env = {**os.environ, **keep_alive, **self.env, "VLLM_API_KEY": self.api_key}
        command = [*self.command, *self.arguments, "--host", "127.0.0.1", "--port", str(self.port)]
        log.info("starting the vLLM server: %s (log %s)", shlex.join(command), self.log_path)
        with open(self.log_path, "ab") as server_log:  # the guard's own errors land in the server's log
            self._guard = subprocess.Popen(
                [
                    sys.executable,
                    str(GUARD),
                    str(os.getpid()),
                    str(self.stop_grace_s),
                    str(self.log_path),
                    "--",
                ]
                + command,
                stdin=subprocess.PIPE,
                stdout=server_log,
                stderr=server_log,
                env=env,
                start_new_session=True,
            )

    def _wait_until_ready(self, offset: int, attempt: int) -> bool:
        """True once /health answers; False when the port was taken (try another); else raises."""
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            code = self._guard.poll()
            if code is not None:
                why = last_line(self.log_path, offset)
                if any(mark in why.lower() for mark in PORT_TAKEN) and attempt < PORT_TRIES:
                    log.warning("port %d was taken; trying another", self.port)
                    return False
                raise ServerError(
                    f"the vLLM server exited with status {code} before it was ready; see {self.log_path}"
                    + (f" (last line: {why})" if why else "")
                )
            if self.healthy():
                return True
            time.sleep(0.5)
        self.stop()
        raise ServerError(
            f"the vLLM server was not ready after {self.startup_timeout_s:.0f}s (vllm.startup_timeout_s); "
            f"see {self.log_path} (last line: {last_line(self.log_path, offset)})"
        )

    def healthy(self) -> bool:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        try:
            connection.request("GET", "/health")
            return connection.getresponse().status == 200
        except OSError:
            return False
        finally:
            connection.close()

    def running(self) -> bool:
        guard = self._guard  # read once: the main thread may be stopping it
        return guard is not None and guard.poll() is None

    def stop(self) -> None:
        """Stop the server and every process it started; safe to call twice."""
        guard, self._guard = self._guard, None
        if guard is not None:
            try:
                guard.stdin.close()  # the guard stops the server's whole process group
            except OSError:
                pass
            try:
                guard.wait(timeout=self.stop_grace_s + 10)
            except subprocess.TimeoutExpired:
                _kill_group(guard.pid)
                guard.wait()
            _kill_group(guard.pid)  # anything of the group that outlived the guard
        if self._old_sigterm is not None:
            signal.signal(signal.SIGTERM, self._old_sigterm)
            self._old_sigterm = None


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _exit_on_sigterm(signum: int, frame: object) -> None:
    """SIGTERM (Slurm's time limit, a cancel) unwinds the job, so the server is stopped on the way out.

    Once only: a second SIGTERM while the server is being stopped must not cut that short.
    """
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise SystemExit(128 + signum)
