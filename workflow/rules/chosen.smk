"""Chosen answers: the teacher (config `teacher`) answers each shard.

Each teacher backend is its own rule, so a cluster profile can give a GPU to
the local model and none to an API client.

in:  {OUT}/shards/shard-{shard}.jsonl (+ the demo's tiny checkpoint when it builds one)
out: {OUT}/chosen/shard-{shard}.jsonl  same layout as the rejected answers
"""

if config["teacher"]["backend"] == "local":

    # The local teacher runs the rejected rule's command with another model, prompt and
    # time limit (its own rule: the vLLM server's log is declared by its own engine).
    rule chosen_local:
        input:
            shard=f"{OUT}/shards/shard-{{shard}}.jsonl",
            model=tiny_model_input(config["teacher"]["local"]),
        output:
            f"{OUT}/chosen/shard-{{shard}}.jsonl",
        log:
            **generation_logs("chosen", config["teacher"]["local"]),
        benchmark:
            f"{BENCHMARKS}/chosen/shard-{{shard}}.tsv"
        conda:
            CONDA_ENV
        resources:
            gpu=1,
            runtime=runtime("chosen_local"),
        params:
            options=generation_options(
                config["teacher"]["local"], config["prompts"]["teacher"]
            ),
        shell:
            generation_shell(config["teacher"]["local"])


if config["teacher"]["backend"] == "gemini":

    rule chosen_gemini:
        input:
            f"{OUT}/shards/shard-{{shard}}.jsonl",
        output:
            answers=f"{OUT}/chosen/shard-{{shard}}.jsonl",
            failures=f"{OUT}/chosen/shard-{{shard}}.failures.jsonl",
            usage=f"{OUT}/chosen/shard-{{shard}}.usage.json",
        log:
            f"{LOGS}/chosen/shard-{{shard}}.log",
        benchmark:
            f"{BENCHMARKS}/chosen/shard-{{shard}}.tsv"
        conda:
            CONDA_ENV
        resources:
            gemini_jobs=1,
            runtime=runtime("chosen_gemini"),
        params:
            # the teacher.gemini block as it is (never the key itself: it stays out of command lines)
            options=cli_options(
                **config["teacher"]["gemini"],
                system_prompt=config["prompts"]["teacher"],
                store=ANSWER_STORE,
            ),
        shell:
            "python -m meddpo gemini --shard {input:q} {params.options}"
            " --out {output.answers:q} --failures {output.failures:q} --usage {output.usage:q} 2> {log:q}"
