"""Shared fixtures. Tests never reach the network: the Hugging Face libraries
are put in offline mode and their endpoint points at a closed local port."""

import os
import sys
from pathlib import Path

os.environ.update(
    HF_HUB_OFFLINE="1",
    HF_DATASETS_OFFLINE="1",
    TRANSFORMERS_OFFLINE="1",
    HF_ENDPOINT="http://127.0.0.1:9",
    HF_HUB_DISABLE_TELEMETRY="1",
)

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "workflow"))
SHARED_DATA = REPO.parent / "shared" / "data"
MEDQUAD = SHARED_DATA / "medquad" / "train-00000-of-00001.parquet"
DEMO_QUESTIONS = REPO / "demo" / "medquad_demo.jsonl"
# The DPO row layout TRL's DPOTrainer and the training code read, in this order (written out
# here, not taken from the package, so a change to the package's layout fails the tests).
# The jobs Snakemake runs to redo one rejected shard of the demo: that shard, its pairs, and the
# steps after them (written out, so that a change to the DAG shows in the tests).
ONE_REJECTED_SHARD_REDONE = {
    "rejected": 1,
    "pairs": 1,
    "judge_classifier": 1,  # the demo runs both judges: the shard's pairs are judged again
    "judge_rubric_local": 1,
    "merge_pairs": 1,
    "finalize": 1,
    "validate": 1,
    "all": 1,
    "total": 8,
}
DPO_ROW_FIELDS = "id source category question_type question prompt chosen rejected meta".split()


def require_medquad() -> Path:
    if not MEDQUAD.exists():
        pytest.skip(
            f"SKIPPED LOUDLY: reference MedQuAD file {MEDQUAD} is absent; CI requires this test to run"
        )
    return MEDQUAD


@pytest.fixture(scope="session")
def demo_texts() -> list[str]:
    from meddpo.jsonl import read_jsonl

    return [row["question"] for row in read_jsonl(DEMO_QUESTIONS)]


@pytest.fixture(scope="session")
def tiny_mistral(tmp_path_factory, demo_texts) -> Path:
    from meddpo.tiny_models import build_tiny_mistral

    return build_tiny_mistral(demo_texts, tmp_path_factory.mktemp("models") / "tiny-mistral", eos_rate=0.0)


@pytest.fixture(scope="session")
def tiny_qwen(tmp_path_factory, demo_texts) -> Path:
    from meddpo.tiny_models import build_tiny_qwen2

    return build_tiny_qwen2(demo_texts, tmp_path_factory.mktemp("models") / "tiny-qwen2", eos_rate=0.0)
