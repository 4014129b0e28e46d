"""Offline demo only (demo.build_tiny_models: true): build the two tiny checkpoints.

in:  demo.texts, a JSONL of questions the tokenizers are trained on
out: the folders named by rejected.model and teacher.local.model
"""

if config["demo"]["build_tiny_models"]:

    localrules:
        tiny_models,

    rule tiny_models:
        input:
            config["demo"]["texts"],
        output:
            mistral=directory(config["rejected"]["model"]),
            qwen=directory(config["teacher"]["local"]["model"]),
        log:
            f"{LOGS}/tiny_models.log",
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
