"""Offline demo only (demo.build_tiny_models: true): build the two tiny checkpoints.

in:  demo.texts, a JSONL of questions the tokenizers are trained on
out: {OUT}/models/tiny-mistral and {OUT}/models/tiny-qwen2 (meddpo.planning.paths.DEMO_MODEL_FOLDERS),
     only there: the config's model keys must name these folders (meddpo.planning.checks.check_demo_models),
     so the demo never builds over, or lets Snakemake delete, a checkpoint named in the config
"""

if config["demo"]["build_tiny_models"]:

    rule tiny_models:
        input:
            config["demo"]["texts"],
        output:
            mistral=directory(DEMO_MODELS["mistral"]),
            qwen=directory(DEMO_MODELS["qwen"]),
        log:
            PATHS.log("tiny_models"),
        localrule: True
        conda:
            CONDA_ENV
        params:
            options=cli_options(
                seed=config["demo"]["seed"],
                mistral_eos_rate=config["demo"]["mistral_eos_rate"],
                qwen_eos_rate=config["demo"]["qwen_eos_rate"],
            ),
        shell:
            "python -m meddpo tiny-models --texts {input:q} {params.options}"
            " --mistral-out {output.mistral:q} --qwen-out {output.qwen:q} 2> {log:q}"
