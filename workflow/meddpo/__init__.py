"""meddpo: build the Stage 2 medical-safety DPO dataset from MedQuAD.

The package holds all the logic of the workflow; the Snakemake rules under
``workflow/rules/`` only call its command-line interface (``meddpo --help``).
It never imports snakemake.
"""

__version__ = "0.1.0"
