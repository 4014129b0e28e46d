"""The judge (config `judge`, docs/judge.md): grade both answers of every pair, per shard.

Each judge kind is its own rule, so a cluster profile gives a GPU to the local
models and none to an API client: judge_classifier (a safety classifier, local
engines), judge_rubric_local or judge_rubric_gemini (the rubric, by judge.backend); the
Gemini judge in batch mode is one job for every shard (docs/gemini.md).

in:  {OUT}/pairs/shard-{shard}.jsonl (+ the demo's tiny checkpoint when it builds one)
out: {OUT}/judge/{kind}/shard-{shard}.jsonl       one verdict row per pair {id, kind, judge, keys, chosen, rejected}
     {OUT}/judge/{kind}/shard-{shard}.usage.json  answers and tokens, or Gemini requests and cost
log: the job's, and with engine vllm only, the vLLM server's ({OUT}/logs/judge/{kind}/shard-{shard}.vllm.log;
     the `server` entry is empty for other engines: they start no server, and a declared log
     never written makes Snakemake warn); params.options passes it to the job as --server-log
The verdicts join the pairs as meta.judge in merge_pairs (workflow/rules/pairs.smk).
"""

if "judge_classifier" in JUDGE_RULES:

    rule judge_classifier:
        input:
            pairs=PATHS.per_shard("pairs"),
            model=demo_model_input(config, config["judge"]["classifier"]),
        output:
            verdicts=PATHS.judge("classifier"),
            usage=PATHS.judge("classifier", "usage.json"),
        log:
            job=PATHS.shard_log("judge/classifier"),
            server=vllm_server_log(
                judge_local_model(config, "classifier"),
                PATHS.shard_log("judge/classifier", "vllm.log"),
            ),
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
            "python -m meddpo judge --pairs {input.pairs:q} {params.options}"
            " --out {output.verdicts:q} --usage {output.usage:q} 2> {log.job:q}"


if "judge_rubric_local" in JUDGE_RULES:

    rule judge_rubric_local:
        input:
            pairs=PATHS.per_shard("pairs"),
            model=demo_model_input(config, config["judge"]["local"]),
        output:
            verdicts=PATHS.judge("rubric"),
            usage=PATHS.judge("rubric", "usage.json"),
        log:
            job=PATHS.shard_log("judge/rubric"),
            server=vllm_server_log(
                judge_local_model(config, "rubric"),
                PATHS.shard_log("judge/rubric", "vllm.log"),
            ),
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
            "python -m meddpo judge --pairs {input.pairs:q} {params.options}"
            " --out {output.verdicts:q} --usage {output.usage:q} 2> {log.job:q}"


if "judge_rubric_gemini" in JUDGE_RULES and "judge_rubric_gemini" not in BATCH_RULES:

    rule judge_rubric_gemini:
        input:
            pairs=PATHS.per_shard("pairs"),
        output:
            verdicts=PATHS.judge("rubric"),
            usage=PATHS.judge("rubric", "usage.json"),
        log:
            job=PATHS.shard_log("judge/rubric"),
        benchmark:
            PATHS.benchmark("judge/rubric")
        conda:
            CONDA_ENV
        resources:
            gemini_jobs=1,
            runtime=runtime("judge_rubric_gemini"),
        params:
            options=judge_options(config, "rubric"),
        shell:
            "python -m meddpo judge --pairs {input.pairs:q} {params.options}"
            " --out {output.verdicts:q} --usage {output.usage:q} 2> {log.job:q}"


if "judge_rubric_gemini" in BATCH_RULES:

    # Batch mode: one job for every shard's pairs, waiting where Snakemake runs (as chosen_gemini).
    rule judge_rubric_gemini:
        input:
            pairs=expand(PATHS.per_shard("pairs"), shard=SHARDS),
        output:
            verdicts=expand(PATHS.judge("rubric"), shard=SHARDS),
            usage=expand(PATHS.judge("rubric", "usage.json"), shard=SHARDS),
        log:
            job=PATHS.log("judge_rubric_gemini"),
        benchmark:
            PATHS.run_benchmark("judge_rubric_gemini")
        localrule: True
        conda:
            CONDA_ENV
        threads: 0
        params:
            options=judge_options(config, "rubric"),
        shell:
            "python -m meddpo judge --pairs {input.pairs:q} {params.options}"
            " --out {output.verdicts:q} --usage {output.usage:q} 2> {log.job:q}"
