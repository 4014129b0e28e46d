"""Chosen answers: the teacher (config `teacher`) answers each shard.

Each teacher backend is its own rule, so a cluster profile can give a GPU to
the local model and none to an API client. The Gemini teacher in batch mode
(teacher.gemini.mode: batch) is one job for every shard (docs/gemini.md).

in:  {OUT}/shards/shard-{shard}.jsonl (+ the demo's tiny checkpoint when it builds one)
out: {OUT}/chosen/shard-{shard}.jsonl  same layout as the rejected answers
"""

if teacher_rule(config) == "chosen_local":

    # The local teacher runs the rejected rule's command with another model, prompt and
    # time limit.
    rule chosen_local:
        input:
            shard=PATHS.shard(),
            model=demo_model_input(config, config["teacher"]["local"]),
        output:
            PATHS.answers("chosen"),
        log:
            job=PATHS.shard_log("chosen"),
            server=vllm_server_log(
                config["teacher"]["local"], PATHS.shard_log("chosen", "vllm.log")
            ),
        benchmark:
            PATHS.benchmark("chosen")
        conda:
            CONDA_ENV
        resources:
            gpu=1,
            runtime=runtime("chosen_local"),
        params:
            options=generation_options(
                config,
                "chosen",
                config["teacher"]["local"],
                config["prompts"]["teacher"],
            ),
        shell:
            "python -m meddpo generate --shard {input.shard:q} {params.options} --out {output:q} 2> {log.job:q}"


if teacher_rule(config) == "chosen_gemini" and "chosen_gemini" not in BATCH_RULES:

    # Online: one job per shard, one at a time (gemini_jobs: the key's per-minute quota).
    rule chosen_gemini:
        input:
            PATHS.shard(),
        output:
            answers=PATHS.answers("chosen"),
            failures=PATHS.per_shard("chosen", "failures.jsonl"),
            usage=PATHS.per_shard("chosen", "usage.json"),
        log:
            PATHS.shard_log("chosen"),
        benchmark:
            PATHS.benchmark("chosen")
        conda:
            CONDA_ENV
        resources:
            gemini_jobs=1,
            runtime=runtime("chosen_gemini"),
        params:
            # the teacher.gemini block as it is (never the key itself), its price entry, the store
            options=teacher_gemini_options(config),
        shell:
            "python -m meddpo gemini --shard {input:q} {params.options}"
            " --out {output.answers:q} --failures {output.failures:q} --usage {output.usage:q} 2> {log:q}"


if "chosen_gemini" in BATCH_RULES:

    # Batch mode: one job for every shard. It creates every shard's batch at once and waits for
    # them together, where Snakemake runs (localrule: on a cluster, the login node, with no
    # allocation) and claiming no core (threads 0), so the other jobs go on meanwhile.
    rule chosen_gemini:
        input:
            expand(PATHS.shard(), shard=SHARDS),
        output:
            answers=expand(PATHS.answers("chosen"), shard=SHARDS),
            failures=expand(PATHS.per_shard("chosen", "failures.jsonl"), shard=SHARDS),
            usage=expand(PATHS.per_shard("chosen", "usage.json"), shard=SHARDS),
        log:
            PATHS.log("chosen_gemini"),
        benchmark:
            PATHS.run_benchmark("chosen_gemini")
        localrule: True
        conda:
            CONDA_ENV
        threads: 0
        params:
            options=teacher_gemini_options(config),
        shell:
            "python -m meddpo gemini --shard {input:q} {params.options}"
            " --out {output.answers:q} --failures {output.failures:q} --usage {output.usage:q} 2> {log:q}"
