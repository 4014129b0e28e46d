"""Concurrent Gemini teacher vs one request at a time, against the local wire-format server.

    python benchmarks/gemini_concurrency.py [--questions 200] [--latency 0.2] [--concurrency 32]

The real google-genai client talks to meddpo's local Gemini server on 127.0.0.1,
which answers every request after --latency seconds (a stand-in for the seconds a
4,000-character answer takes). The same questions are answered twice in one run:
one request at a time (what the old script did) and with --concurrency in
flight. Prints requests/s of both and the ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "workflow"))

from meddpo.gemini_teacher import GeminiSettings, answer_with_gemini  # noqa: E402
from meddpo.gemini_test_server import GeminiTestServer  # noqa: E402


def timed(questions, settings) -> float:
    started = time.perf_counter()
    rows, failures, _ = asyncio.run(answer_with_gemini(questions, "Be careful.", settings, "benchmark-key"))
    assert len(rows) == len(questions) and not failures
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--questions", type=int, default=200)
    parser.add_argument("--latency", type=float, default=0.2)
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args()
    with GeminiTestServer(latency_s=args.latency) as server:
        base = dict(base_url=server.base_url, requests_per_minute=1e6)
        one = [{"id": f"s{i}", "question": f"Sequential question {i} ?"} for i in range(args.questions)]
        many = [{"id": f"c{i}", "question": f"Concurrent question {i} ?"} for i in range(args.questions)]
        sequential_s = timed(one, GeminiSettings(concurrency=1, **base))
        concurrent_s = timed(many, GeminiSettings(concurrency=args.concurrency, **base))
    result = {
        "questions": args.questions,
        "latency_s": args.latency,
        "concurrency": args.concurrency,
        "sequential_requests_per_s": round(args.questions / sequential_s, 2),
        "concurrent_requests_per_s": round(args.questions / concurrent_s, 2),
        "ratio": round(sequential_s / concurrent_s, 1),
    }
    print(f"one at a time:      {result['sequential_requests_per_s']:7.2f} requests/s")
    print(f"{args.concurrency} in flight:       {result['concurrent_requests_per_s']:7.2f} requests/s")
    print(f"ratio: {result['ratio']}x")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
