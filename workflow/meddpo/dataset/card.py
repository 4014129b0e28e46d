"""The dataset card (README.md beside the pairs) in the Hugging Face dataset-card format.

The YAML header's ``configs`` entry names the data files, so the dataset folder
can be pushed to the Hub as it is and loaded with ``load_dataset(<repo>)``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import yaml

from meddpo.dataset.report_format import (
    no_margin_line,
    provenance_text,
    revision_text,
    sampling_text,
    share,
)
from meddpo.dataset.rows import ADDED_META, FIELDS, META, RENAMED_ON, old_name
from meddpo.planning.paths import DEMO_MODEL_NOTES

# Terms of the models this project documents, by model id (lower case). Any other
# model gets a pointer to its own model card: the card never claims a licence it does not know.
KNOWN_MODEL_TERMS = {
    "mistralai/mistral-7b-instruct-v0.2": "released under the Apache 2.0 licence",
    "qwen/qwen2.5-7b-instruct": "released under the Apache 2.0 licence",
}
# Question sources this project documents, by ``source.name`` (lower case): who to credit, the
# licence of the questions (a Hugging Face licence id, the card's ``license`` field) and its terms.
# Any other source is credited by its name and gets licence ``unknown``.
KNOWN_SOURCES = {
    "lavita/medquad": {
        "from": "MedQuAD",
        "credit": 'MedQuAD (Ben Abacha & Demner-Fushman, 2019, "A question-entailment approach to question '
        'answering")',
        "license": "cc-by-4.0",
        "terms": "MedQuAD is released under CC BY 4.0; its answers from MedlinePlus, A.D.A.M. and GARD were "
        "removed by its authors for copyright reasons and are not used here (only the questions are)",
    },
    "meddpo-demo": {
        "from": "the offline demo's own file",
        "credit": "questions written for this project in MedQuAD's column layout, none of them taken from "
        "MedQuAD",
        "license": "apache-2.0",
        "terms": "The demo questions were written for this project and are released with it under the "
        "Apache 2.0 licence",
    },
}
GEMINI_TERMS = (
    "answers generated through the Gemini API are subject to its Additional Terms of Service "
    "(including its rules on using outputs to develop models)"
)


def model_terms(models: Sequence[str]) -> list[str]:
    """One card line per model that wrote answers: its known terms, or where to look."""
    lines = []
    for model in dict.fromkeys(m for m in models if m and m != "?"):
        key = model.lower()
        if key in KNOWN_MODEL_TERMS:
            terms = KNOWN_MODEL_TERMS[key]
        elif key.startswith("gemini-"):
            terms = GEMINI_TERMS
        else:
            terms = "terms not known to this workflow: check the model's own card before redistributing"
        lines.append(f"- `{model}`: {terms}.")
    return lines


def source_lines(settings: Mapping) -> dict:
    """Where the questions came from, from the config's ``source.name`` and ``source.dataset``."""
    name = settings.get("source_name") or settings.get("source_dataset")
    dataset = settings.get("source_dataset")
    if not name:
        return {
            "from": "a source not recorded in the settings",
            "questions": "source not recorded",
            "license": "unknown",
            "terms": "- The questions' source was not recorded: check its terms before redistributing them.",
        }
    read_from = f" (read from `{dataset}`)" if dataset and dataset != name else ""
    known = KNOWN_SOURCES.get(name.lower())
    if known:
        return {
            "from": known["from"],
            "questions": f"`{name}`{read_from}: {known['credit']}",
            "license": known["license"],
            "terms": f"- {known['terms']}.",
        }
    return {
        "from": f"`{name}`",
        "questions": f"`{name}`{read_from}",
        "license": "unknown",
        "terms": f"- `{name}`: terms not known to this workflow: check the source's own licence before "
        "redistributing the questions.",
    }


# The datasets library's loader for each data file format the dataset folder holds
LOADERS = {".jsonl": "json", ".parquet": "parquet"}


def loader_of(config: Mapping) -> str:
    """The loader of a ``configs`` entry's files (all of one format)."""
    return LOADERS[Path(config["data_files"][0]["path"]).suffix]


def header_configs(configs: Sequence[Mapping]) -> list[Mapping]:
    """The ``configs`` a folder load can serve: those in the default's format only.

    The datasets library picks one loader for a whole folder from its data files, so a
    Parquet config beside JSON ones fails to load through the header (it is read as
    JSON); the card shows how to load it with its own loader instead.
    """
    if not configs:
        return []
    default = next((c for c in configs if c.get("config_name") == "default"), configs[0])
    return [c for c in configs if loader_of(c) == loader_of(default)]


def loading_example(configs: Sequence[Mapping]) -> list[str]:
    """Python that loads the default data files: both splits when there is a split, else the one file.

    Data files in another format than the default's (Parquet) get a line of their own.
    """
    default = next((c for c in configs if c.get("config_name") == "default"), None)
    files = {f["split"]: f["path"] for f in (default or {}).get("data_files", [])}
    lines = ["from datasets import load_dataset", ""]
    if set(files) == {"train"}:
        lines.append(f'pairs = load_dataset("json", data_files={json.dumps(files["train"])}, split="train")')
    elif not files:
        return lines + ['pairs = load_dataset("<this folder or its hub repo>")']
    else:
        lines += [
            "# the split by id: train on pairs['train'] only; the whole-set file holds the test rows too",
            f'pairs = load_dataset("json", data_files={json.dumps(files)})',
        ]
    others = [c for c in configs if c not in header_configs(configs)]
    for config in others:
        files = {f["split"]: f["path"] for f in config["data_files"]}
        shown = json.dumps(files["train"]) if set(files) == {"train"} else json.dumps(files)
        split = ', split="train"' if set(files) == {"train"} else ""
        name = config["config_name"]
        lines += [
            f"# the same pairs as {name}: its own loader (a folder loads through one format only)",
            f'pairs_{name} = load_dataset("{loader_of(config)}", data_files={shown}{split})',
        ]
    return lines


def judge_lines(judge: Mapping | None) -> list[str]:
    """How the pairs were judged, and what the judge could not see."""
    if not judge:
        return ["- **Judge**: none ran; nothing in this set checks that the chosen answer is the safer one."]
    summary = judge["summary"]
    b = summary["with_verdict"]
    who = ", ".join(f"{kind} `{j['model']}` ({j['version']})" for kind, j in sorted(judge["judges"].items()))
    if not b:
        return [
            f"- **Judge**: {who} ran, but no pair has a margin ({no_margin_line(summary)}, of "
            f"{summary['pairs']} pairs): nothing in this set checks that the chosen answer is the safer one.",
            *[f"  {note}" for note in judge.get("notes") or []],
        ]
    lines = [
        f"- **Judge**: {who} graded each answer on its own (never beside the other answer of its pair), at "
        "temperature 0. The margin in `meta.judge` is the chosen answer's score minus the rejected one's "
        f"(-1 to 1); a judge's margin at or below -{judge['min_margin']} makes the pair less safe, and "
        f"under {judge['min_margin']} either way a tie. Of the pairs with a margin, chosen judged safer in "
        f"{share(summary['chosen_safer'], b)}, equal in {share(summary['equal'], b)}, less safe in "
        f"{share(summary['chosen_less_safe'], b)}; pairs without a margin: "
        f"{share(summary['pairs'] - b, summary['pairs'])} ({no_margin_line(summary)}).",
        "  The judge sees only the question and one answer: not the person asking, their history or what "
        "they will do with the answer, and it has no way to check facts beyond what it knows. A judge model "
        "has its own blind spots and biases (towards longer answers, or answers written like its own); its "
        "verdict "
        "is a check on the pairs, not a clinician's review.",
    ]
    lines += [f"  {note}" for note in judge.get("notes") or []]
    return lines


def size_category(n: int) -> str:
    for limit, name in (
        (1_000, "n<1K"),
        (10_000, "1K<n<10K"),
        (100_000, "10K<n<100K"),
        (1_000_000, "100K<n<1M"),
    ):
        if n < limit:
            return name
    return "n>1M"


def _card_header(n_rows: int, configs: Sequence[Mapping], source: Mapping) -> list[str]:
    """The YAML header the Hub reads: licence, tags, size and the ``configs`` a folder load serves."""
    header = {
        "license": source["license"],
        "language": ["en"],
        "task_categories": ["text-generation"],
        "size_categories": [size_category(n_rows)],
        "tags": ["dpo", "preference", "medical", "safety", "synthetic"],
        "pretty_name": "Stage 2 medical-safety DPO pairs",
        "configs": header_configs(configs),
    }
    return ["---", yaml.safe_dump(header, sort_keys=False).rstrip(), "---", ""]


def _card_intro(n_rows: int, settings: Mapping, source: Mapping) -> list[str]:
    """The title, what a row holds, the demo warning (demo runs only) and the medical-advice warning."""
    return [
        "# Stage 2 medical-safety DPO pairs",
        "",
        f"{n_rows} preference pairs for safety fine-tuning with DPO. Each row holds a medical question from "
        f"{source['from']}, a **chosen** answer from a careful teacher model and a **rejected** answer from "
        "a deliberately loose, over-confident model, with the training prompt ready to use.",
        "",
        *_demo_warning(settings.get("demo") or []),
        "> **Not medical advice.** The answers were written by language models, none of them checked by a "
        "clinician; the rejected answers were made to be worse on purpose. Use the data to train and "
        "evaluate models, never to answer a person's health question.",
        "",
    ]


def _demo_warning(models: Sequence[str] | bool) -> list[str]:
    """The warning of a demo run's card: which models the demo built, and what that makes of the data."""
    if not models:
        return []
    names = [name for name in DEMO_MODEL_NOTES if name in models] if isinstance(models, list) else []
    noise = not names or all(DEMO_MODEL_NOTES[name].endswith("noise") for name in names)
    made_by = (
        "; ".join(f"`{name}`, {DEMO_MODEL_NOTES[name]}" for name in names) or "tiny random-weight models"
    )
    lead = "the answers are noise" if noise else "a very small model wrote and judged these pairs"
    return [
        f"> **Demo data: {lead}.** The offline demo built the models that made them ({made_by}). The file "
        "shows the workflow's machinery and layout, not a dataset to train on.",
        "",
    ]


def _picked_how(settings: Mapping) -> str:
    """How the questions were picked; a seed only where the selection draws with one."""
    selection = settings.get("selection")
    if selection == "first":
        return "the first in source order"
    if selection is None:
        return "selection not recorded"
    return f"{selection}, seed {settings.get('seed')}"


def _card_how_made(stats: Mapping, settings: Mapping, provenance: Mapping, source: Mapping) -> list[str]:
    """How it was made: questions, both answer models, filters, lengths and the judge."""
    policy = stats.get("policy") or {}
    lengths, trunc = stats["lengths"], stats["truncation"]
    return [
        "## How it was made",
        "",
        f"- **Questions**: {source['questions']}. Cleaned, de-duplicated (case and white space folded), "
        f"{stats['stages'].get('picked') or '?'} picked ({_picked_how(settings)}).",
        f"- **Chosen answers**: `{', '.join(stats['models']['chosen'])}` "
        f"({revision_text(provenance.get('teacher_revision'))}), sampling "
        f"{sampling_text(settings.get('chosen_sampling'))}.",
        *served_lines(stats.get("served_models") or {}),
        f"- **Rejected answers**: `{', '.join(stats['models']['rejected'])}` "
        f"({revision_text(provenance.get('rejected_revision'))}), sampling "
        f"{sampling_text(settings.get('rejected_sampling'))}.",
        "- **Filters**: each pair is checked for empty, truncated, near-identical, refusing and garbled "
        f"answers; the policy was {', '.join(f'{k}: {v}' for k, v in policy.items()) or 'not recorded'}. "
        f"{share(stats['stages'].get('pairs_dropped', 0), stats['stages'].get('pairs_before_filter', 0))} "
        "pairs were dropped (kept aside with their reasons in the "
        "dropped file of the run) and the flags of kept pairs are in `meta.flags`.",
        f"- **Lengths**: chosen answers have a median of {lengths['chosen']['median_chars']} characters, "
        f"rejected {lengths['rejected']['median_chars']} (ratio {lengths['ratio_of_medians_chars']}×); "
        f"{share(trunc['chosen']['truncated'], trunc['chosen']['of'])} chosen and "
        f"{share(trunc['rejected']['truncated'], trunc['rejected']['of'])} rejected answers hit their "
        "token cap.",
        *judge_lines(stats.get("judge")),
        *_cost_line(stats.get("estimate_and_actual")),
        "",
    ]


def _cost_line(costs: Mapping | None) -> list[str]:
    """What the run took against the estimate at its start, in one line (nothing when none was recorded)."""
    if not costs:
        return []
    hours = [r for r in costs["rules"] if "actual_hours" in r]
    dollars = [r for r in costs["rules"] if r.get("actual_usd") is not None]
    parts = []
    if hours:
        parts.append(
            f"{sum(r['actual_hours'] for r in hours):.3f} hours of its model jobs (estimated at its start: "
            f"{sum(r['estimated_hours'] for r in hours):.3f})"
        )
    if dollars:
        parts.append(
            f"${sum(r['actual_usd'] for r in dollars):.4f} of Gemini (estimated: "
            f"${sum(r['estimated_usd'] for r in dollars):.4f})"
        )
    return [f"- **Cost**: this run took {' and '.join(parts)}; the report has it per model."] if parts else []


def served_lines(served: Mapping[str, Mapping[str, int]]) -> list[str]:
    """A line on the models that served the API answers, as each reply named them, with counts."""
    if not served:
        return []
    parts = [
        f"{who.replace('_', ' ')}: " + ", ".join(f"`{model}` {count}" for model, count in models.items())
        for who, models in served.items()
    ]
    return [f"- **Served by** (the model each Gemini reply names): {'; '.join(parts)}."]


def _card_prompts(settings: Mapping) -> list[str]:
    """The three system prompts: training, teacher and rejected-answer model."""
    prompts = settings.get("prompts", {})
    return [
        "### System prompts",
        "",
        "Training prompt (the start of every `prompt`):",
        "",
        f"> {prompts.get('training', '?')}",
        "",
        "Teacher (chosen):",
        "",
        f"> {prompts.get('teacher', '?')}",
        "",
        "Rejected-answer model:",
        "",
        f"> {prompts.get('rejected', '?')}",
        "",
    ]


def _meaning(key: str, meaning: str) -> str:
    old = old_name(key)
    return f"{meaning} (called `{old}` in files made before {RENAMED_ON})" if old else meaning


def columns_table() -> list[str]:
    """The table of a row's fields and of its meta keys (rows.py), as the card and docs/outputs.md
    show it."""
    return [
        "| column | meaning |",
        "|---|---|",
        *[f"| `{field}` | {meaning} |" for field, meaning in FIELDS.items()],
        "",
        "| `meta` key | meaning |",
        "|---|---|",
        *[f"| `{key}` | {_meaning(key, meaning)} |" for key, meaning in {**META, **ADDED_META}.items()],
    ]


EXAMPLE_CHARS = 700  # an answer longer than this is cut in the card (the file has it whole)


def _card_example(row: Mapping | None) -> list[str]:
    """One row of the data as it is (long answers cut here, never in the file)."""
    if not row:
        return []

    def quoted(text: str) -> list[str]:
        cut = text if len(text) <= EXAMPLE_CHARS else text[:EXAMPLE_CHARS].rstrip() + " [...]"
        return [f"> {line}" if line.strip() else ">" for line in cut.splitlines()]

    flags = (row.get("meta") or {}).get("flags") or []
    return [
        "## An example row",
        "",
        f"`{row['id']}` ({row['category']}; flags: {', '.join(flags) or 'none'}). "
        f"**Question:** {row['question']}",
        "",
        "**Chosen:**",
        "",
        *quoted(row["chosen"]),
        "",
        "**Rejected:**",
        "",
        *quoted(row["rejected"]),
        "",
    ]


def _card_use(configs: Sequence[Mapping]) -> list[str]:
    """How to load the data, and where it goes in training."""
    return [
        "## Use",
        "",
        "```python",
        *loading_example(configs),
        "```",
        "",
        "This folder loads as it is, through the `configs` of the header above (the JSON files): "
        "`load_dataset(<this folder>)`, or `load_dataset(<hub repo>)` once it is pushed.",
        "",
        "The `prompt` / `chosen` / `rejected` strings go to TRL's `DPOTrainer` unchanged.",
        "",
    ]


def _card_terms(stats: Mapping, source: Mapping) -> list[str]:
    """The licences and terms of the questions and of each model that wrote answers."""
    return [
        "## Licences and terms",
        "",
        source["terms"],
        *model_terms([*stats["models"]["chosen"], *stats["models"]["rejected"]]),
        f"- This card's licence field (`{source['license']}`) covers the questions; check the model terms "
        "above before redistributing generated answers.",
        "",
    ]


def _card_provenance(provenance: Mapping) -> list[str]:
    return [
        "## Provenance",
        "",
        "| what | value |",
        "|---|---|",
        *[f"| {key} | {provenance_text(key, value) or f'`{value}`'} |" for key, value in provenance.items()],
        "",
    ]


def render_card(
    *,
    n_rows: int,
    configs: Sequence[Mapping],
    stats: Mapping,
    settings: Mapping,
    provenance: Mapping,
    example: Mapping | None = None,
) -> str:
    """``configs``: the Hugging Face ``configs`` entries (name, data files per split, relative paths);
    ``example``: a kept row to show (none when nothing was kept)."""
    source = source_lines(settings)
    lines = [
        *_card_header(n_rows, configs, source),
        *_card_intro(n_rows, settings, source),
        *_card_how_made(stats, settings, provenance, source),
        *_card_prompts(settings),
        "## Columns",
        "",
        *columns_table(),
        "",
        *_card_example(example),
        *_card_use(configs),
        *_card_terms(stats, source),
        *_card_provenance(provenance),
    ]
    return "\n".join(lines)
