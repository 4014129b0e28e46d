"""Concurrent Gemini teacher vs one request at a time, against the local wire-format server.

    python benchmarks/gemini_concurrency.py [--questions 200] [--latency 0.2] [--concurrency 32]

The real google-genai client talks to meddpo's local Gemini server on 127.0.0.1,
which answers every request after --latency seconds (a stand-in for the seconds a
4,000-character answer takes). The server runs in a process of its own, as a
remote one would, so its Python does not take turns with the client's. The same
number of questions is answered twice in one run: one request at a time (what the
old script did) and with --concurrency in flight, each against a fresh server.

Prints requests/s of both and the ratio, the retries each run needed (the client's
requests minus the questions: a retry means a refused or failed request, whose
back-off, not the client, would set the figure) and the most requests the server
had in flight at once; the last line is a JSON summary. Exits 1 if any request
was retried.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

# the teacher imports these on first use: import them here, so that neither timed run includes it
import google.genai  # noqa: F401
import google.genai.errors  # noqa: F401
import tenacity  # noqa: F401

WORKFLOW = Path(__file__).resolve().parents[1] / "workflow"
sys.path.insert(0, str(WORKFLOW))

from meddpo.gemini.client import GeminiSettings  # noqa: E402
from meddpo.gemini.job import answer_with_gemini  # noqa: E402


def timed(questions: list[dict], latency_s: float, concurrency: int) -> dict:
    """Answer ``questions`` against a fresh server process; seconds, retries, the server's stats."""
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(WORKFLOW), os.environ.get("PYTHONPATH")]))
    )
    server = subprocess.Popen(
        [sys.executable, "-m", "meddpo.testing.gemini_server", "--latency", str(latency_s)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        base_url = json.loads(server.stdout.readline())["base_url"]
        # no rate limit: the default 900 requests/min (15/s) would cap the concurrent run
        settings = GeminiSettings(concurrency=concurrency, base_url=base_url, requests_per_minute=1e6)
        started = time.perf_counter()
        rows, failures, usage = asyncio.run(
            answer_with_gemini(questions, "Be careful.", settings, "benchmark-key")
        )
        seconds = time.perf_counter() - started
        server.stdin.close()  # the server stops and prints its stats
        stats = json.loads(server.stdout.readline())
        server.wait(timeout=30)
    finally:
        if server.poll() is None:
            server.kill()
    assert len(rows) == len(questions) and not failures, failures[:3]
    return {
        "seconds": seconds,
        # every attempt the client made, the ones refused before reaching the server included
        "retries": usage["requests"] - len(questions),
        "server_retries": stats["requests"] - len(questions),
        "max_in_flight": stats["max_in_flight"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--questions", type=int, default=200)
    parser.add_argument("--latency", type=float, default=0.2)
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args()
    one = [{"id": f"s{i}", "question": f"Sequential question {i} ?"} for i in range(args.questions)]
    many = [{"id": f"c{i}", "question": f"Concurrent question {i} ?"} for i in range(args.questions)]
    sequential = timed(one, args.latency, 1)
    concurrent = timed(many, args.latency, args.concurrency)
    result = {
        "questions": args.questions,
        "latency_s": args.latency,
        "concurrency": args.concurrency,
        "sequential_requests_per_s": round(args.questions / sequential["seconds"], 2),
        "concurrent_requests_per_s": round(args.questions / concurrent["seconds"], 2),
        "ratio": round(sequential["seconds"] / concurrent["seconds"], 1),
        "retries": sequential["retries"] + concurrent["retries"],
        "sequential_retries": sequential["retries"],
        "concurrent_retries": concurrent["retries"],
        "max_in_flight": concurrent["max_in_flight"],
        "sequential_max_in_flight": sequential["max_in_flight"],
    }
    print(
        f"one at a time:      {result['sequential_requests_per_s']:7.2f} requests/s"
        f"  (retries {sequential['retries']}, at most {sequential['max_in_flight']} in flight)"
    )
    print(
        f"{args.concurrency} in flight:       {result['concurrent_requests_per_s']:7.2f} requests/s"
        f"  (retries {concurrent['retries']}, at most {concurrent['max_in_flight']} in flight)"
    )
    print(f"ratio: {result['ratio']}x")
    print(json.dumps(result))
    if result["retries"]:
        sys.exit(
            f"error: {result['retries']} request(s) were retried (sequential {sequential['retries']}, "
            f"concurrent {concurrent['retries']}; {sequential['server_retries']} + "
            f"{concurrent['server_retries']} reached the server): the figures above include the "
            "client's back-off and do not measure the client"
        )


if __name__ == "__main__":
    main()
