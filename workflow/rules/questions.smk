"""Stage 2A: build the question set.

in:  the MedQuAD source (config `source`: a hub id, or a local file that is then an input)
out: {OUT}/questions/questions.jsonl       one row per picked question
     {OUT}/questions/questions.stats.json  rows read, dropped (empty, short, duplicate), picked
"""


rule questions:
    input:
        local_source(config["source"]),
    output:
        questions=PATHS.questions,
        stats=PATHS.question_stats,
    log:
        PATHS.log("questions"),
    localrule: True
    conda:
        CONDA_ENV
    params:
        options=cli_options(**config["source"], **config["questions"]),
    shell:
        "python -m meddpo questions {params.options} --out {output.questions:q} --stats {output.stats:q} 2> {log:q}"
