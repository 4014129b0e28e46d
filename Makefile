# make demo   create .venv, install, run the offline demo DAG
# make test   create .venv, install, run the test suite
# make lint   ruff (check and format), snakefmt --check, snakemake --lint and dry runs of both configs
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(abspath $(VENV))/bin
# Tests and the demo never touch the network: Hugging Face libraries stay offline.
OFFLINE := HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1
RUN := PATH="$(BIN):$$PATH" $(OFFLINE)

.PHONY: demo test lint dag system-deps clean-demo

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

# Graphviz draws the DAG picture; installed when missing and we may use apt.
system-deps:
	@command -v dot >/dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq graphviz >/dev/null; \
	  else echo "graphviz (dot) is missing: install it to draw the DAG; its test will be skipped"; fi; }

demo: $(VENV)/.installed
	$(RUN) $(BIN)/snakemake --cores 2 --configfile demo/config.yaml
	@echo
	@echo "Pairs:  results/demo/dataset/stage2_med_pairs.jsonl"
	@echo "Stats:  results/demo/dataset/stage2_med_pairs.stats.json"
	@echo "Report: results/demo/dataset/report.md (plots in results/demo/dataset/plots/)"
	@echo "Card:   results/demo/dataset/README.md"

test: $(VENV)/.installed system-deps
	$(RUN) $(BIN)/python -m pytest

lint: $(VENV)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/snakefmt --check Snakefile workflow/rules/
	$(RUN) $(BIN)/snakemake --lint
	$(RUN) $(BIN)/snakemake -n --quiet rules
	$(RUN) $(BIN)/snakemake -n --quiet rules --configfile demo/config.yaml

dag: $(VENV)/.installed system-deps
	$(RUN) $(BIN)/snakemake --configfile demo/config.yaml --dag | dot -Tpng > docs/dag.png

clean-demo:
	rm -rf results/demo
