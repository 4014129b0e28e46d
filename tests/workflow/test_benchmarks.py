"""The benchmark scripts run (their figures are recorded in benchmarks/README.md, never asserted)."""

import pytest

from conftest import run_benchmark

pytestmark = pytest.mark.slow  # real Snakemake runs, servers or clusters: seconds to minutes each


def test_gpu_benchmark_script_runs_on_a_tiny_model_on_cpu():
    summary = run_benchmark(
        "gpu_engine.py", "--tiny", "--device", "cpu", "--batch-sizes", "1", "3", "--new-tokens", "5"
    )
    assert [r["new_tokens"] for r in summary["results"]] == [5, 15]
    one, three = summary["results"]
    # three rows share one read of the weights per step: the bound grows with the batch, by at most 3x
    assert 1 < three["bound_tokens_per_s"] / one["bound_tokens_per_s"] <= 3
    for row in (one, three):
        # the script prints the fraction with 3 decimals: a slow run's 0.0008 is printed as 0.001
        assert row["fraction_of_bound"] == pytest.approx(
            row["tokens_per_s"] / row["bound_tokens_per_s"], rel=0.02, abs=0.0005
        )


def test_engine_vs_loop_generates_the_same_token_count_on_both_sides():
    summary = run_benchmark("engine_vs_loop.py", "--questions", "8", "--new-tokens", "4", "--batch-size", "8")
    assert summary["loop_tokens"] == summary["engine_tokens"] == 8 * 4
    # the ratio is a timing (recorded in benchmarks/README.md, never asserted): what is checked is
    # that it is the engine's speed over the loop's, not the other way round (same tokens on both sides)
    speeds = summary["engine_tokens_per_s"] / summary["loop_tokens_per_s"]
    assert summary["ratio"] == pytest.approx(speeds, rel=0.03)


def test_gemini_concurrency_benchmark_measures_the_client():
    summary = run_benchmark(
        "gemini_concurrency.py", "--questions", "16", "--latency", "0.05", "--concurrency", "4"
    )
    # the client really had 4 requests open together, and none was retried (a retry's back-off,
    # not the client, would set the figure)
    assert summary["max_in_flight"] == 4 and summary["sequential_max_in_flight"] == 1
    assert summary["retries"] == 0
    # the speed-up is a timing (~3.3x on a quiet machine, 0.5x once under a loaded CI run): the
    # in-flight counts above are what proves the concurrency; the ratio is checked to be the
    # concurrent client's requests/s over the sequential one's, as printed
    speeds = summary["concurrent_requests_per_s"] / summary["sequential_requests_per_s"]
    assert summary["ratio"] == pytest.approx(speeds, rel=0.05, abs=0.06)


def test_gpu_benchmark_compares_the_engines_and_says_when_vllm_did_not_run(tmp_path):
    missing = tmp_path / "no-vllm" / "bin" / "python"
    summary = run_benchmark(
        "gpu_engine.py", "--engines", "--tiny", "--device", "cpu", "--prompts", "6", "--padded-batch", "4",
        "--vllm-python", str(missing),
    )  # fmt: skip
    assert summary["vllm"] == {"not_run": f"no vLLM environment at {missing} (make vllm-env)"}
    for side in ("rejected", "chosen"):
        padded = summary["padded"][side]
        assert padded["useful_tokens"] == summary["useful_tokens"][side]
        # 6 prompts in batches of 4 and 2: each batch decodes until its longest answer ends
        assert summary["useful_tokens"][side] / 4 <= padded["decode_steps"] <= summary["useful_tokens"][side]
    assert set(summary["padded"]["projected_gpu_hours"]) == {"20_shards", "2_shards"}
