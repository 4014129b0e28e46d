"""meddpo: build the Stage 2 medical-safety DPO dataset from MedQuAD.

The package holds all the logic of the workflow; the Snakemake rules under
``workflow/rules/`` only call its command-line interface (``meddpo --help``).
The folders are the stages, in the order tests/unit/test_architecture.py lists;
docs/development.md draws them.
"""

__version__ = "0.1.0"
