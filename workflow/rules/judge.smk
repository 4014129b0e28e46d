"""The judge (config `judge`, docs/judge.md): grade both answers of every pair, per shard.

Each judge kind is its own rule, so a cluster profile gives a GPU to the local
models and none to an API client: judge_classifier (a safety classifier, local
engines), judge_rubric_local or judge_rubric_gemini (the rubric, by judge.backend).

in:  {OUT}/pairs/shard-{shard}.jsonl (+ the demo's tiny checkpoint when it builds one)
out: {OUT}/judge/{kind}/shard-{shard}.jsonl       one verdict row per pair {id, kind, judge, keys, chosen, rejected}
     {OUT}/judge/{kind}/shard-{shard}.usage.json  answers and tokens, or Gemini requests and cost
The verdicts join the pairs as meta.judge in merge_pairs (workflow/rules/pairs.smk).
"""

if "classifier" in config["judge"]["kinds"]:

    rule judge_classifier:
        input:
            pairs=f"{OUT}/pairs/shard-{{shard}}.jsonl",
            model=tiny_model_input(config["judge"]["classifier"]),
        output:
            **judge_rule_outputs("classifier"),
        log:
            **judge_rule_logs("classifier"),
        benchmark:
            f"{BENCHMARKS}/judge/classifier/shard-{{shard}}.tsv"
        conda:
            CONDA_ENV
        resources:
            gpu=1,
            runtime=runtime("judge_classifier"),
        params:
            options=judge_options("classifier"),
        shell:
            judge_shell("classifier")


if "rubric" in config["judge"]["kinds"] and config["judge"]["backend"] == "local":

    rule judge_rubric_local:
        input:
            pairs=f"{OUT}/pairs/shard-{{shard}}.jsonl",
            model=tiny_model_input(config["judge"]["local"]),
        output:
            **judge_rule_outputs("rubric"),
        log:
            **judge_rule_logs("rubric"),
        benchmark:
            f"{BENCHMARKS}/judge/rubric/shard-{{shard}}.tsv"
        conda:
            CONDA_ENV
        resources:
            gpu=1,
            runtime=runtime("judge_rubric_local"),
        params:
            options=judge_options("rubric"),
        shell:
            judge_shell("rubric")


if "rubric" in config["judge"]["kinds"] and config["judge"]["backend"] == "gemini":

    rule judge_rubric_gemini:
        input:
            pairs=f"{OUT}/pairs/shard-{{shard}}.jsonl",
        output:
            **judge_rule_outputs("rubric"),
        log:
            **judge_rule_logs("rubric"),
        benchmark:
            f"{BENCHMARKS}/judge/rubric/shard-{{shard}}.tsv"
        conda:
            CONDA_ENV
        resources:
            gemini_jobs=1,
            runtime=runtime("judge_rubric_gemini"),
        params:
            options=judge_options("rubric"),
        shell:
            judge_shell("rubric")
