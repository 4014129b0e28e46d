"""The judge (config `judge`, docs/judge.md): grade both answers of every pair, per shard.

Each judge kind is its own rule, so a cluster profile gives a GPU to the local
models and none to an API client: judge_classifier (a safety classifier, local
engines), judge_rubric_local or judge_rubric_gemini (the rubric, by judge.backend).

in:  {OUT}/pairs/shard-{shard}.jsonl (+ the demo's tiny checkpoint when it builds one)
out: {OUT}/judge/{kind}/shard-{shard}.jsonl       one verdict row per pair {id, kind, judge, keys, chosen, rejected}
     {OUT}/judge/{kind}/shard-{shard}.usage.json  answers and tokens, or Gemini requests and cost
The verdicts join the pairs as meta.judge in merge_pairs (workflow/rules/pairs.smk).
"""

if "judge_classifier" in JUDGE_RULES:

    rule judge_classifier:
        input:
            pairs=PATHS.per_shard("pairs"),
            model=tiny_model_input(config, config["judge"]["classifier"]),
        output:
            **judge_rule_outputs(config, "classifier"),
        log:
            **judge_rule_logs(config, "classifier"),
        benchmark:
            PATHS.benchmark("judge/classifier")
        conda:
            CONDA_ENV
        resources:
            gpu=1,
            runtime=runtime("judge_classifier"),
        params:
            options=judge_options(config, "classifier"),
        shell:
            judge_shell(config, "classifier")


if "judge_rubric_local" in JUDGE_RULES:

    rule judge_rubric_local:
        input:
            pairs=PATHS.per_shard("pairs"),
            model=tiny_model_input(config, config["judge"]["local"]),
        output:
            **judge_rule_outputs(config, "rubric"),
        log:
            **judge_rule_logs(config, "rubric"),
        benchmark:
            PATHS.benchmark("judge/rubric")
        conda:
            CONDA_ENV
        resources:
            gpu=1,
            runtime=runtime("judge_rubric_local"),
        params:
            options=judge_options(config, "rubric"),
        shell:
            judge_shell(config, "rubric")


if "judge_rubric_gemini" in JUDGE_RULES:

    rule judge_rubric_gemini:
        input:
            pairs=PATHS.per_shard("pairs"),
        output:
            **judge_rule_outputs(config, "rubric"),
        log:
            **judge_rule_logs(config, "rubric"),
        benchmark:
            PATHS.benchmark("judge/rubric")
        conda:
            CONDA_ENV
        resources:
            gemini_jobs=gemini_jobs(config["judge"]["gemini"]),
            runtime=runtime("judge_rubric_gemini"),
        params:
            options=judge_options(config, "rubric"),
        shell:
            judge_shell(config, "rubric")
